"""The OpenAI-compatible HTTP server and its chat page (`llamaherd serve`)."""

from .app import create_app

__all__ = ["create_app"]
