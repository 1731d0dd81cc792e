"""`tailor eval`: answer every question greedily with tailor's engine, score the answers, and
the loss of the reference answer, without and (with an index) with retrieval.

The prompt is built exactly as chat and the server build it (rag.context.add_context for the
retrieved chunks), and the reference loss renders the reference as the assistant reply with the
training renderer (data.render), so its tokens are exactly the ones a fine-tune was trained on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tailor.errors import TailorError, UsageError
from tailor.evaluate.questions import QA, read_qa
from tailor.evaluate.scoring import contains, exact_match

# Answers decoded together: on a 2-core CPU 8 rows cost little more per step than 1.
BATCH = 8


@dataclass
class EvalConfig:
    model: str = "default"
    """Model: a folder, a hub id, a LoRA adapter folder, or 'default' (SmolLM2-135M-Instruct)."""
    qa: str = ""
    """JSONL file of {"question": ..., "answer": ...} lines."""
    index: str | None = None
    """A `tailor index` folder: also run every question with retrieval (model+RAG), as chat and serve do."""
    k: int = 4
    """Chunks retrieved per question with --index."""
    rag_style: str = "system"
    """Where the chunks go: system (a system message, the default everywhere) or user (before the question)."""
    system: str | None = None
    """System prompt for every question (retrieved chunks are added after it)."""
    max_new_tokens: int = 64
    """Most tokens per answer (greedy decoding, so results are deterministic)."""
    name: str | None = None
    """Label for this model in the table and plot (default: the model folder's name)."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""
    chat_template: str | None = None
    """For a model without a chat template: chatml (default), llama3, alpaca, or a .jinja file."""
    judge_url: str | None = None
    """OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) whose model judges each answer."""
    judge_model: str | None = None
    """The judge's model id on --judge-url."""
    grader: str | None = None
    """A grader JSON file in OpenAI's shape (string_check, text_similarity, python, score_model, multi...): every
    answer is graded with it, item = the question's JSON line; its mean reward joins the table."""


@dataclass
class Condition:
    """One way of asking: the model alone, or with retrieved chunks."""

    name: str
    retrieval: bool


def label(cfg: EvalConfig) -> str:
    if cfg.name:
        return cfg.name
    path = Path(cfg.model)
    # runs/x/final -> x: a fine-tune's folder is named for its run, not "final"
    return (path.parent.name if path.name == "final" else path.name) or cfg.model


def evaluate(cfg: EvalConfig, progress=None) -> dict:
    """Every condition's per-question rows and mean scores, as one JSON-able dict."""
    from tailor.evaluate.report import summarize

    items = read_qa(cfg.qa)
    if cfg.judge_url and not cfg.judge_model:
        raise TailorError("--judge-url needs --judge-model (the judge's model id on that server).")
    retriever = _open_retriever(cfg)
    judge = _judge(cfg)
    grader = None
    if cfg.grader:
        from tailor.evaluate.graded import load_grader

        grader = load_grader(cfg.grader)  # a bad grader fails before the model loads
    model = Scorer.load(cfg)
    conditions = [Condition(label(cfg), False)] + ([Condition(label(cfg) + "+RAG", True)] if retriever is not None else [])
    out = {"model": cfg.model, "qa": str(cfg.qa), "index": cfg.index, "k": cfg.k, "rag_style": cfg.rag_style,
           "max_new_tokens": cfg.max_new_tokens, "conditions": []}
    try:
        for cond in conditions:
            rows = _condition(model, items, retriever if cond.retrieval else None, cfg, judge,
                              lambda text, name=cond.name: progress and progress(f"\r{name}: {text}"))
            if grader is not None:
                from tailor.evaluate.graded import grade_rows

                grade_rows(grader, rows, [item.fields for item in items], cfg.judge_url)
            if progress:
                progress("\n")
            out["conditions"].append({"name": cond.name, "retrieval": cond.retrieval, "rows": rows,
                                      "summary": summarize(rows)})
    finally:
        if retriever is not None:
            retriever.close()
    return out


def _open_retriever(cfg: EvalConfig):
    """The retriever chat and the server use: same search, same prompt format."""
    if not cfg.index:
        return None
    from tailor.rag.retrieve import Retriever, check_k

    if check_k(cfg.k, "--k") == 0:
        raise UsageError("--k 0 retrieves nothing; give 1 or more (or leave out --index).")
    return Retriever.open(cfg.index, k=cfg.k, style=cfg.rag_style)


def _judge(cfg: EvalConfig):
    if not cfg.judge_url:
        return None
    from tailor.evaluate.judge import Judge

    return Judge(cfg.judge_url, cfg.judge_model)


def messages_for(item: QA, cfg: EvalConfig) -> list[dict]:
    """The conversation the model answers, before retrieval adds its chunks."""
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else [])
    return messages + [{"role": "user", "content": item.question}]


def _condition(model: Scorer, items: list[QA], retriever, cfg: EvalConfig, judge, progress) -> list[dict]:
    """One row per question: all answers generated together (the engine batches them), then the
    reference loss and the judge's verdict question by question."""
    conversations, hits = [messages_for(item, cfg) for item in items], [None] * len(items)
    if retriever is not None:
        conversations, hits = map(list, zip(*(retriever.augment(m) for m in conversations)))
    progress(f"answering {len(items)} questions")
    outputs = model.answers(conversations)
    rows = []
    for i, (item, messages, output) in enumerate(zip(items, conversations, outputs), start=1):
        progress(f"scoring {i}/{len(items)}      ")
        loss, tokens = model.reference_loss(messages, item.answer)
        row = {"line": item.line, "question": item.question, "reference": item.answer, "output": output,
               "exact": exact_match(output, item.answer), "contains": contains(output, item.answer),
               "ref_loss": loss, "ref_tokens": tokens}
        if judge is not None:
            row["judge"] = judge.verdict(item.question, item.answer, output)
        if retriever is not None:
            from tailor.rag.context import sources

            row["sources"] = sources(hits[i - 1])
        rows.append(row)
    return rows


class Scorer:
    """A model on tailor's engine, answering greedily and scoring reference answers."""

    def __init__(self, loaded, max_new_tokens: int = 64):
        from tailor.data.render import Renderer

        self.loaded = loaded
        self.max_new_tokens = max_new_tokens
        self.renderer = Renderer(loaded.tokenizer)

    @classmethod
    def load(cls, cfg: EvalConfig) -> Scorer:
        from transformers.utils import logging as hf_logging

        from tailor.infer.loading import load_engine

        hf_logging.disable_progress_bar()
        loaded = load_engine(cfg.model, dtype=cfg.dtype, max_batch=BATCH, chat_template=cfg.chat_template)
        if loaded.warning:
            print(f"warning: {loaded.warning}", file=sys.stderr)
        return cls(loaded, cfg.max_new_tokens)

    def answers(self, conversations: list[list[dict]]) -> list[str]:
        """Greedy replies to every conversation, submitted at once: the engine decodes up to its
        batch size of them per step, several times faster on a CPU than one after another."""
        from tailor.data.templates import render_prompt
        from tailor.infer.engine import Request
        from tailor.infer.sampling import SamplingParams

        engine, texts, requests = self.loaded.engine, [], []
        for i, messages in enumerate(conversations):
            prompt = render_prompt(self.loaded.tokenizer, messages)
            if len(prompt) >= engine.max_len:
                raise TailorError(f"question {i + 1}'s prompt is {len(prompt)} tokens; this model's context is "
                                  f"{engine.max_len}. Retrieve fewer chunks (--k) or index smaller ones.")
            params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0,
                                    stop_token_ids=list(self.loaded.stop_ids))
            texts.append([])
            requests.append(engine.submit(Request(prompt, params, self.loaded.adapter,
                                                  on_event=lambda e, out=texts[-1]: out.append(e))))
        while not all(r.done for r in requests):
            engine.step()
        for events in texts:
            failed = next((e.error for e in events if e.error), None)
            if failed:
                raise RuntimeError(failed)
        return ["".join(e.text for e in events).strip() for events in texts]

    def reference_loss(self, messages: list[dict], reference: str) -> tuple[float | None, int]:
        """(mean negative log-likelihood per trained token, trained tokens) of `reference` as the
        assistant's reply: the tokens training would learn (the answer and its end-of-turn marker).
        (None, 0) when the conversation does not fit the model's context."""
        import numpy as np

        from tailor.data.formats import Conversation, Message
        from tailor.infer.engine import Request
        from tailor.infer.sampling import SamplingParams

        conv = Conversation([Message(m["role"], m["content"]) for m in messages]
                            + [Message("assistant", reference, train=True)], line=0)
        rendered = self.renderer.render(conv)
        ids = rendered.ids.tolist()
        engine = self.loaded.engine
        if len(ids) >= engine.max_len or not rendered.mask.any():
            return None, 0
        params = SamplingParams(max_new_tokens=1, temperature=0.0, prompt_logprobs=True)
        req = engine.submit(Request(ids, params, self.loaded.adapter))
        while not req.done:
            engine.step()
        if req.prompt_logprobs is None:
            raise RuntimeError(f"scoring the reference failed: {req.finish_reason}")
        trained = np.flatnonzero(rendered.mask)
        nll = [-req.prompt_logprobs[t].logprob for t in trained]
        return float(np.mean(nll)), len(nll)
