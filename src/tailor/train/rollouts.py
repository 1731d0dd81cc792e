"""GRPO's rollout phase: every reply of a step sampled in one engine batch with the policy's
current weights (train.generate.LiveBackend), each graded the moment it ends (train.rewards).

Sampling is seeded per reply from (run seed, epoch, prompt, reply number): a resumed run, and
any number of processes sharing a step, sample exactly the replies one uninterrupted process
would, with no generator state to save.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from tailor.train.rewards import Rewards, Score


@dataclass
class Rollout:
    """One sampled reply to a prompt, and its score."""

    prompt: np.ndarray  # the prompt's ids (chat template applied)
    completion: list[int]  # the reply's ids: the stop token last when one ended it (it is trained too)
    text: str  # the reply as the grader read it
    truncated: bool  # cut at --max-completion-tokens
    score: Score

    def __len__(self) -> int:
        return len(self.prompt) + len(self.completion)

    @property
    def input_ids(self) -> np.ndarray:
        return np.concatenate([self.prompt, np.asarray(self.completion, dtype=np.int64)])

    @property
    def labels(self) -> np.ndarray:
        """The reply's tokens are trained, the prompt is context (train.batches' convention)."""
        out = self.input_ids.copy()
        out[:len(self.prompt)] = -100
        return out


def seed(*parts: int) -> int:
    """A 63-bit sampling seed from small non-negative integers, the same on every machine."""
    a, b = np.random.SeedSequence(list(parts)).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


class Roller:
    """Samples and grades replies for one run."""

    def __init__(self, model, tokenizer, cfg, *, stop_ids: list[int], max_len: int, dtype, say=print):
        from tailor.train.generate import LiveBackend

        self.tokenizer, self.cfg, self.stop_ids, self.say = tokenizer, cfg, list(stop_ids), say
        self.live = LiveBackend(model, max_len, dtype)
        self.rewards = Rewards(cfg)
        self.grammar = _grammar(cfg, tokenizer, stop_ids, model)
        self.timing: dict[str, float] = {}
        self._warned = False

    def roll(self, prompts: list, seeds: list[int]) -> list[Rollout]:
        """One reply per (prompt, seed), sampled together; graded while the others are sampled."""
        from tailor.infer.sampling import SamplingParams
        from tailor.train.generate import sample_replies

        c = self.cfg
        params = [SamplingParams(max_new_tokens=c.max_completion_tokens, temperature=c.temperature, top_p=c.top_p,
                                 seed=s, stop_token_ids=self.stop_ids, grammar=self.grammar) for s in seeds]
        futures: list = [None] * len(prompts)
        texts: list = [None] * len(prompts)

        def graded(i, reply):
            texts[i] = self._text(reply.tokens)
            futures[i] = self.rewards.submit(texts[i], prompts[i].item)

        t0 = time.perf_counter()
        self.live.sync()
        replies = sample_replies(self.live, [p.input_ids.tolist() for p in prompts], params, on_done=graded)
        t1 = time.perf_counter()
        scores = self.rewards.collect(futures)
        t2 = time.perf_counter()
        tokens = sum(len(r.tokens) for r in replies)
        self.timing = {"sampling_s": t1 - t0, "grading_wait_s": t2 - t1,
                       "rollout_tokens_per_s": tokens / max(t1 - t0, 1e-9)}
        self._say_first_error()
        return [Rollout(p.input_ids, r.tokens, t, r.finish_reason == "length", s)
                for p, r, t, s in zip(prompts, replies, texts, scores)]

    def close(self) -> None:
        self.rewards.close()

    def _text(self, tokens: list[int]) -> str:
        body = tokens[:-1] if tokens and tokens[-1] in self.stop_ids else tokens
        return self.tokenizer.decode(body, skip_special_tokens=True)

    def _say_first_error(self) -> None:
        if self.rewards.first_error and not self._warned:
            self._warned = True
            self.say(f"warning: the reward failed on a reply (it scores 0; counted as grader_errors in "
                     f"metrics.jsonl): {self.rewards.first_error}")


def _grammar(cfg, tokenizer, stop_ids, model):
    """The grammar of --response-format's replies (None for free text)."""
    if cfg.response_format is None:
        return None
    from tailor.infer import schema

    found = schema.response_schema(json.loads(cfg.response_format))
    if found is None:
        return None
    width = model.get_output_embeddings().weight.shape[0]
    return schema.compile_schema(found[0], strict=found[1], tokenizer=tokenizer, stop_ids=list(stop_ids), width=width)
