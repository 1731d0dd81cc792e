"""What model graders need from whoever serves models: one chat completion. The graders
package knows no server and no HTTP; the caller hands in a Sampler (tailor's server gives one
over the models a project may see, plus the operator's external endpoint if configured)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Sampled:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    refusal: str | None = None


class SamplerError(Exception):
    """The model could not answer: unknown, overloaded, unreachable. The message is for the
    client, so it never holds a server path or a credential."""


class Sampler(Protocol):
    def knows(self, model: str) -> bool:
        """Whether `model` can be sampled (served here, or on the operator's endpoint)."""

    def sample(self, model: str, messages: list[dict], params: dict) -> Sampled:
        """One reply to `messages`. `params`: temperature, top_p, seed, max_tokens, response_format
        (each optional). Raises SamplerError."""


@dataclass
class FixedSampler:
    """A sampler that always answers `reply` (for tests and for trying a grader's parsing)."""

    reply: str
    models: tuple[str, ...] = ("fixed",)

    def knows(self, model: str) -> bool:
        return model in self.models

    def sample(self, model: str, messages: list[dict], params: dict) -> Sampled:
        if model not in self.models:
            raise SamplerError(f"The model `{model}` does not exist or you do not have access to it.")
        return Sampled(self.reply, model, sum(len(str(m.get("content", ""))) for m in messages), len(self.reply))
