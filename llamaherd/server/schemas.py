"""Request bodies of the OpenAI-compatible API, as pydantic models.

They are what /openapi.json describes and what FastAPI validates; anything they reject
becomes a 400 in OpenAI's error shape (see errors.py). Unknown fields are ignored, as
OpenAI-compatible servers usually do, so clients that send extras keep working.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

MAX_INT32 = 2**31 - 1  # larger max_tokens are refused; anything up to it is clamped to what fits
MAX_STOP_STRINGS = 4
MAX_N = 16

Stop = Union[Annotated[str, Field(max_length=1000)], Annotated[list[Annotated[str, Field(max_length=1000)]], Field(max_length=MAX_STOP_STRINGS)], None]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: Annotated[str, Field(max_length=512)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: Annotated[str, Field(max_length=512)] | None = None
    # extensions shared with llama.cpp's and vLLM's servers
    top_k: Annotated[StrictInt, Field(ge=0, le=MAX_INT32)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(SamplingFields):
    prompt: Union[
        Annotated[str, Field(max_length=1_000_000)],
        Annotated[list[Annotated[str, Field(max_length=1_000_000)]], Field(min_length=1, max_length=MAX_N)],
        Annotated[list[StrictInt], Field(min_length=1, max_length=1_000_000)],
        Annotated[list[Annotated[list[StrictInt], Field(min_length=1, max_length=1_000_000)]], Field(min_length=1, max_length=MAX_N)],
    ]
    max_tokens: Annotated[StrictInt, Field(ge=0, le=MAX_INT32)] | None = 16  # OpenAI's default
    echo: StrictBool | None = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=0)] | None = None  # not supported: only null or 0
    suffix: None = None  # not supported


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: Annotated[str, Field(max_length=1_000_000)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Annotated[str, Field(max_length=1_000_000)], Annotated[list[TextPart], Field(max_length=1000)], None] = None
    name: Annotated[str, Field(max_length=256)] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]  # json_object / json_schema are not supported


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=10_000)]
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_INT32)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_INT32)] | None = None
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None  # not supported

    @field_validator("messages")
    @classmethod
    def _no_empty_conversation(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.text() for m in messages):
            raise ValueError("the messages hold no text")
        return messages
