"""Evaluation: perplexity over a text file (the same method as llama.cpp's perplexity tool)."""

from .perplexity import PerplexityResult, perplexity, perplexity_of_tokens

__all__ = ["PerplexityResult", "perplexity", "perplexity_of_tokens"]
