"""Chat templates: render a GGUF's Jinja chat template as Hugging Face transformers does.

The template comes from the model file, so it is untrusted code: it runs in Jinja's
immutable sandbox, and any failure inside it becomes a FormatError naming the file.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import FormatError

# Used when the GGUF has no template (llama.cpp's fallback too).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateRaised(jinja2.TemplateError):
    """The template called raise_exception(), e.g. because roles do not alternate."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' version: unlike Jinja's built-in it does not HTML-escape.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}`, which transformers uses only to
    mark assistant tokens for training; the body renders as usual."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Fails at once on unsafe attributes (`__class__`, ...), where Jinja would only
    return an undefined value and so let a probing template render silently."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")


def _environment() -> jinja2.Environment:
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template and the special-token strings it is rendered with."""

    def __init__(self, template: str, source: str, special_tokens: dict[str, str]) -> None:
        self.source = source
        self._special_tokens = special_tokens
        try:
            self._template = _environment().from_string(template)
        except jinja2.TemplateSyntaxError as e:
            raise FormatError(f"{source}: chat template is not valid Jinja (line {e.lineno}): {e.message}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> str:
        # The same variables transformers passes: tools and documents are defined, as None.
        context = {"tools": None, "documents": None, **self._special_tokens, **variables,
                   "messages": messages, "add_generation_prompt": add_generation_prompt}
        try:
            return self._template.render(**context)
        except TemplateRaised as e:
            raise FormatError(f"{self.source}: chat template refused the messages: {e}") from None
        except SecurityError as e:
            raise FormatError(f"{self.source}: chat template tried something the sandbox forbids: {e}") from None
        except Exception as e:  # untrusted template code: any failure in it is the file's problem
            raise FormatError(f"{self.source}: chat template failed: {type(e).__name__}: {e}") from None
