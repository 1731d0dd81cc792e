"""OpenAI request bodies as pydantic models. Unknown fields are ignored, as OpenAI's API does;
ranges follow OpenAI's documented limits so a bad value is a 400 naming its `param`."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from tailor.rag.retrieve import MAX_K

MAX_STOPS = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ChatMessage(_Body):
    """Checked further by training's own conversion (data.convert.chat_conversation)."""

    role: Literal["developer", "system", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Sampling(_Body):
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but vLLM and others accept it
    n: int = Field(1, ge=1, le=128)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-2**63, lt=2**63)  # a signed 64-bit integer, as OpenAI's
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id (as a string, JSON's keys) -> -100..100; see stream.py

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatOptions(BaseModel):
    """tailor's own request options (`extra_body={"tailor": {...}}`). Unlike OpenAI's fields, an
    unknown key here is a 400: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")
    rag: StrictBool | None = None  # false: no retrieval; true: a 400 if the model has no index
    k: StrictInt | None = Field(None, ge=0, le=MAX_K)  # chunks to retrieve (0: none); default: --rag-k


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None  # see serve/tools.py
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None  # checked and compiled by serve/structured.py
    tailor: ChatOptions | None = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=0)  # 0 with echo: the prompt's log-probabilities only
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
