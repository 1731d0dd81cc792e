"""What a JSON schema costs the decode loop: tailor's engine at batch 1 and 8, greedy, the same
prompts and number of new tokens with and without a response_format's grammar (the issue's
target: at most 10% fewer tokens/s). The schema asks for 16 short notes, so the JSON cannot
close before the last token: both sides decode exactly `--new-tokens` steps per request.

    .venv/bin/python bench/structured_speed.py [--model default] [--dtype bfloat16] [--quick]

Prints one JSON line. Runs alternate (plain, JSON, plain, JSON, ...) so that load from other
processes on a shared machine hits both sides alike; each side's best run counts, by the wall
clock and by this process's CPU time (the steadier figure when other work shares the machine).
"""

import argparse
import json
import os
import time

# as tailor's CLI and bench/run.py set it (read when torch loads): OpenMP threads that spin while
# waiting made each small vector op on a busy 2-core machine take milliseconds
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40},
    "notes": {"type": "array", "minItems": 16, "maxItems": 16,
              "items": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                                         "text": {"type": "string", "maxLength": 30}},
                        "required": ["n", "text"], "additionalProperties": False}}},
    "required": ["title", "notes"], "additionalProperties": False}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: 24 new tokens, one run a side")
    a = ap.parse_args()
    if a.quick:
        a.new_tokens, a.reps = 24, 1
    from tailor.infer.engine import Request
    from tailor.infer.loading import embedding_rows, load_engine
    from tailor.infer.sampling import SamplingParams
    from tailor.infer.schema import compile_schema

    loaded = load_engine(a.model, dtype=a.dtype, max_batch=8)
    engine = loaded.engine
    spent = _time_the_grammar_work()
    t = time.perf_counter()
    grammar = compile_schema(SCHEMA, strict=True, tokenizer=loaded.tokenizer, stop_ids=loaded.stop_ids,
                             width=embedding_rows(engine.backend))
    compile_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (a.prompt_tokens,), generator=g).tolist() for _ in range(8)]

    def run(batch: int, constrained: bool) -> tuple[float, float]:
        """(tokens per wall second, tokens per CPU second of this process: less swayed by the
        other processes of a shared machine)."""
        params = SamplingParams(max_new_tokens=a.new_tokens, temperature=0, stop_token_ids=[],
                                grammar=grammar if constrained else None)
        reqs = [Request(p, params) for p in prompts[:batch]]
        start, cpu = time.perf_counter(), time.process_time()
        for r in reqs:
            engine.submit(r)
        while engine.step():
            pass
        made = sum(len(r.tokens) for r in reqs)
        assert made == batch * a.new_tokens, f"a request ended early ({made} tokens)"
        return made / (time.perf_counter() - start), made / (time.process_time() - cpu)

    out = {"what": "structured_decode", "model": a.model, "dtype": a.dtype, "new_tokens": a.new_tokens,
           "threads": torch.get_num_threads(), "compile_s": round(compile_s, 3)}
    for batch in (1, 8):
        run(batch, False), run(batch, True)  # warm-up
        runs = [(run(batch, False), run(batch, True)) for _ in range(a.reps)]
        row = {}
        for i, clock in enumerate(("wall", "cpu")):
            plain, constrained = max(r[0][i] for r in runs), max(r[1][i] for r in runs)
            row[clock] = {"plain_tok_s": round(plain, 1), "json_tok_s": round(constrained, 1),
                          "overhead": round(1 - constrained / plain, 4)}
        row["runs_wall"] = [[round(p[0], 1), round(c[0], 1)] for p, c in runs]
        spent.update(seconds=0.0, steps=0)
        start = time.process_time()
        run(batch, True)
        # the grammar's own CPU time per decode step (masks, advancing) against the whole step's
        # CPU time: the steadiest figure on a busy machine, where waiting for a core inflates walls
        row["grammar_ms_per_step"] = round(1e3 * spent["seconds"] / spent["steps"], 3)
        row["step_ms"] = round(1e3 * (time.process_time() - start) / spent["steps"], 2)
        out[f"batch{batch}"] = row
    print(json.dumps(out))


def _time_the_grammar_work() -> dict:
    """Wrap the engine's shaping and the Shapers' accept with the thread's CPU clock:
    {"seconds", "steps"}."""
    import tailor.infer.engine as engine_module
    from tailor.infer.shaping import Shaper

    spent = {"seconds": 0.0, "steps": 0}
    shape, accept = engine_module.shape, Shaper.accept

    def timed_shape(*args):
        t = time.thread_time()
        shape(*args)
        spent["seconds"] += time.thread_time() - t
        spent["steps"] += 1

    def timed_accept(self, *args):
        t = time.thread_time()
        accept(self, *args)
        spent["seconds"] += time.thread_time() - t

    engine_module.shape, Shaper.accept = timed_shape, timed_accept
    return spent


if __name__ == "__main__":
    main()
