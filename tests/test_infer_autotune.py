"""The engine's decode precision: chosen by measuring on this CPU (tailor.infer.autotune), cached
per CPU, overridable by --dtype; and each precision plan's forward against the plain one."""

import json
import logging

import pytest
import torch

from infer_kit import save_lively, save_lora

PROMPT = [5, 9, 31, 200, 7, 7, 64, 300, 2, 18]


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    root = tmp_path_factory.mktemp("autotune")
    base = save_lively(root / "base")
    return base, save_lora(base, root / "lora")


@pytest.fixture(scope="module")
def hf(lively):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(lively[0]), dtype=torch.float32).eval()


def _forward(hf, **kw):
    from tailor.infer.llama import LlamaForward

    return LlamaForward(hf, 64, **kw)


def _decode_logits(fw, prompts, steps=6):
    """Greedy decode of each prompt in its own slot, all slots in one batch per step: the
    tokens fed at each step ([steps][slots]) and the logits every step returned [steps, slots, V]."""
    fed, logits = [], []
    last = [int(fw.prefill(s, p).argmax()) for s, p in enumerate(prompts)]
    pos = [len(p) for p in prompts]
    for _ in range(steps):
        fed.append(last)
        out = fw.decode(list(range(len(prompts))), last, pos)
        logits.append(out)
        last = out.argmax(-1).tolist()
        pos = [p + 1 for p in pos]
    return fed, torch.stack(logits)


def test_both_copies_decode_one_sequence_exactly_in_fp32(hf):
    """fp32+bf16 (both weight copies): a one-row step runs entirely in fp32, so a one-token
    prompt and its greedy continuation equal the plain fp32 forward's, token for token."""
    both = _forward(hf, dtype=torch.bfloat16, single=torch.float32)
    plain = _forward(hf)
    assert both.layers[0].qkv.dtype == torch.bfloat16 and both.cache.kv[0].dtype == torch.float32
    got_tokens, got = _decode_logits(both, [[77]])
    want_tokens, want = _decode_logits(plain, [[77]])
    assert got_tokens == want_tokens
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_both_copies_decode_a_batch_in_bf16_over_an_fp32_residual(hf):
    """Several rows run the bf16 copy over the fp32 residual: the same numbers as a forward that
    only has that precision (bf16 matmuls, fp32 residual: training's), not fp32's."""
    both = _forward(hf, dtype=torch.bfloat16, single=torch.float32)
    mixed = _forward(hf, dtype=torch.bfloat16, residual=torch.float32)
    prompts = [PROMPT, PROMPT[:4]]
    got_tokens, got = _decode_logits(both, prompts)
    want_tokens, want = _decode_logits(mixed, prompts)
    assert got_tokens == want_tokens
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fp32 = _forward(hf).decode([0, 1], [3, 4], [0, 0])
    assert (both.decode([0, 1], [3, 4], [0, 0]) - fp32).abs().max() > 1e-3  # the bf16 copy ran, not fp32's


def test_fp16_weights_over_an_fp32_residual_stay_close_to_fp32(hf):
    """The fp16 plan (torch's fp16 GEMV, fp32 accumulation; residual, cache and attention fp32):
    the same greedy tokens as fp32 and logits within fp16's rounding of the matmul inputs; its
    two-copy form (fp16+bf16) decodes one sequence exactly as the fp16 plan does."""
    fp16 = _forward(hf, dtype=torch.float16, residual=torch.float32)
    both = _forward(hf, dtype=torch.bfloat16, residual=torch.float32, single=torch.float16)
    fed, got = _decode_logits(fp16, [PROMPT])
    want_fed, want = _decode_logits(_forward(hf), [PROMPT])
    assert fed == want_fed
    torch.testing.assert_close(got, want, rtol=0.01, atol=0.01 * float(want.abs().max()))
    assert _decode_logits(both, [PROMPT[:1]])[0] == _decode_logits(fp16, [PROMPT[:1]])[0]
    torch.testing.assert_close(both.prefill(0, [77]), fp16.prefill(0, [77]), rtol=1e-5, atol=1e-5)


def test_bf16_decode_equals_its_own_prefill(hf):
    """The bf16 decode step (grouped-query heads as query rows of their kv head) gives the
    logits a bf16 prefill of the whole sequence gives at that position: the one-row attention
    path against plain causal attention, in the dtype where the kernels differ."""
    fw = _forward(hf, dtype=torch.bfloat16)
    fed, logits = _decode_logits(fw, [PROMPT], steps=4)
    seq = PROMPT + [step[0] for step in fed]
    whole = fw.prefill(1, seq, all_logits=True).rows(len(PROMPT), len(seq))
    scale = float(whole.abs().max())
    torch.testing.assert_close(logits[:, 0], whole, rtol=0.02, atol=0.02 * scale)
    assert logits[:, 0].argmax(-1).tolist() == whole.argmax(-1).tolist()


def test_lora_on_both_copies_equals_the_fp32_adapter(hf, lively):
    """An adapter on a fp32+bf16 forward is held in fp32: one sequence decodes as plain fp32 does."""
    from tailor.infer.loading import read_lora

    pairs = read_lora(lively[1]).pairs
    both, plain = _forward(hf, dtype=torch.bfloat16, single=torch.float32), _forward(hf)
    for fw in (both, plain):
        fw.add_lora(1, pairs)
    a = both.prefill(0, [77], adapter=1)
    b = plain.prefill(0, [77], adapter=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    mixed = both.decode([0, 1], [3, 4], [1, 0], adapters=[1, 0])  # two rows: the bf16 copy, adapter in fp32
    assert torch.isfinite(mixed).all()


# -- choosing ------------------------------------------------------------------------------

def _plans(*names):
    from tailor.infer import autotune

    table = {p.name: p for p in autotune.candidates(None)}
    table.setdefault("bf16-unpacked", autotune.Plan("bf16-unpacked", "bfloat16", "bfloat16", pack=False))
    return [table[n] for n in names]


def test_decide_takes_the_fastest_at_several_rows_among_the_fastest_at_one():
    from tailor.infer.autotune import decide

    amd = {"fp32": {"1": 30, "8": 120}, "bf16": {"1": 20, "8": 40}, "fp32+bf16": {"1": 30, "8": 41}}
    assert decide(_plans("fp32", "bf16", "fp32+bf16"), amd).name == "bf16"
    # Intel AMX: fp32 wins one sequence, bf16 several rows; both copies serve both. The two-copy
    # plan's one-row timing caught more noise than fp32's (20.9 vs 20): it runs fp32's kernels there
    amx = {"fp32": {"1": 20, "8": 100}, "bf16": {"1": 40, "8": 30}, "fp32+bf16": {"1": 20.9, "8": 31}}
    assert decide(_plans("fp32", "bf16", "fp32+bf16"), amx).name == "fp32+bf16"
    # both copies do not fit: one sequence keeps its guarantee, never slower than fp32
    assert decide(_plans("fp32", "bf16"), amx).name == "fp32"
    # within the noise of the best at one row, the faster at several rows; beyond it, not
    close = {"fp32": {"1": 20, "8": 100}, "bf16": {"1": 20.4, "8": 30}}
    assert decide(_plans("fp32", "bf16"), close).name == "bf16"
    slower = {"fp32": {"1": 20, "8": 100}, "bf16": {"1": 21, "8": 30}}
    assert decide(_plans("fp32", "bf16"), slower).name == "fp32"
    # fp16's GEMV wins one row but its GEMM loses: its two-copy form takes bf16 for prompts and batches
    here = {"fp32": {"1": 50, "8": 120}, "bf16": {"1": 30, "8": 35}, "fp16": {"1": 24, "8": 75},
            "fp16+bf16": {"1": 25, "8": 34}}
    assert decide(_plans("fp32", "bf16", "fp16", "fp16+bf16"), here).name == "fp16+bf16"


def _fake_times(winner):
    """Timings under which `winner` is fastest at one row and at 8 (per plan, per row count)."""
    from tailor.infer import autotune

    out = {}
    for p in autotune.candidates(None):
        fast = p.name == winner
        out[p.name] = {"1": {"head_ms": 1.0, "layer_ms": 0.5 if fast else 1.0},
                       "8": {"head_ms": 1.0, "layer_ms": 0.5 if fast else 2.0}}
    return out


def test_choice_is_cached_per_cpu_and_logged(tmp_path, monkeypatch, lively, caplog):
    from transformers import AutoConfig

    from tailor import cpu
    from tailor.infer import autotune

    monkeypatch.setenv("TAILOR_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(autotune, "measure", lambda config, plans, rows: calls.append(rows) or _fake_times("bf16"))
    config = AutoConfig.from_pretrained(str(lively[0]))
    with caplog.at_level(logging.INFO, logger="tailor.infer.autotune"):
        first = autotune.choose(config)
    assert first.plan.name == "bf16" and first.measured_now and calls == [8]
    assert "decode precision bf16" in caplog.text and cpu.name() in caplog.text
    record = json.loads(first.path.read_text())
    assert record["key"]["cpu"] == cpu.name() and record["key"]["flags"] == sorted(cpu.flags() or ())
    again = autotune.choose(config)
    assert calls == [8] and not again.measured_now and again.plan == first.plan  # read, not measured
    monkeypatch.setattr(cpu, "name", lambda: "Another CPU")
    other = autotune.choose(config)
    assert calls == [8, 8] and other.path != first.path


def test_the_measured_model_outgrows_the_cache(monkeypatch, lively):
    """Enough layers that their weights stream from memory as a real decode step's do."""
    from types import SimpleNamespace

    from tailor import cpu
    from tailor.infer import autotune

    monkeypatch.setattr(cpu, "last_level_cache", lambda: 32 << 20)
    smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                           head_dim=64, num_hidden_layers=30)
    layers = autotune._layers_to_measure(smol)  # 3.5M parameters a layer, 7 MB in bf16
    assert layers * 2 * autotune._layer_params(smol) >= 2 * (32 << 20) and layers == 10
    big = SimpleNamespace(**{**vars(smol), "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                             "num_key_value_heads": 8, "head_dim": 128})
    assert autotune._layers_to_measure(big) == 1


def test_measure_times_every_plan_on_the_real_kernels(monkeypatch, lively):
    """The measurement itself, on the model's shapes: every plan gets a batch-1 figure, and the
    plans near the best at batch 1 get one at the batch size."""
    from transformers import AutoConfig

    from tailor.infer import autotune

    monkeypatch.setattr(autotune, "ROUNDS", 2)
    monkeypatch.setattr(autotune, "REPS", 1)
    config = AutoConfig.from_pretrained(str(lively[0]))
    plans = autotune.candidates(None)
    times = autotune.measure(config, plans, 3)
    assert set(times) == {p.name for p in plans}
    assert all(t["1"]["head_ms"] > 0 and t["1"]["layer_ms"] > 0 for t in times.values())
    assert any("3" in t for t in times.values())


def test_load_engine_auto_takes_the_measured_plan_and_dtype_overrides_it(tmp_path, monkeypatch, lively):
    from tailor.infer import autotune
    from tailor.infer.loading import load_engine

    monkeypatch.setenv("TAILOR_HOME", str(tmp_path))
    monkeypatch.setattr(autotune, "measure", lambda config, plans, rows: _fake_times("fp32+bf16"))
    monkeypatch.setattr(autotune, "_both_copies_fit", lambda config: True)
    loaded = load_engine(str(lively[0]), dtype="auto", max_batch=1)
    fw = loaded.engine.backend
    assert fw.single == torch.float32 and fw.dtype == torch.bfloat16 and fw.plan.name == "fp32+bf16"
    assert "fp32 for one sequence" in fw.precision
    adapter = load_engine(str(lively[1]), dtype="auto", max_batch=4)  # an adapter's base gets the plan too
    assert adapter.engine.backend.single == torch.float32 and adapter.adapter == 1

    def refuse(*a):
        raise AssertionError("an explicit dtype must not measure")

    monkeypatch.setattr(autotune, "measure", refuse)
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "empty"))
    fixed = load_engine(str(lively[0]), dtype="float32", max_batch=4).engine.backend
    assert fixed.dtype == torch.float32 and fixed.single is None


def test_bf16_stored_weights_load_as_bf16_for_any_plan(tmp_path, monkeypatch, hf):
    """A folder stored in bf16 (the default model's cache) loads in bf16 even for a plan with
    fp32 parts, and the forward it makes equals the one made from an fp32 load of those weights."""
    from tailor.infer import autotune
    from tailor.infer.loading import engine_precision, load_hf_model

    folder = tmp_path / "bf16"
    hf.to(torch.bfloat16).save_pretrained(folder)
    hf.float()
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(autotune, "measure", lambda config, plans, rows: _fake_times("fp16+bf16"))
    monkeypatch.setattr(autotune, "_both_copies_fit", lambda config: True)
    load_dtype, plan = engine_precision(folder, "auto", "cpu", None)
    assert plan.name == "fp16+bf16" and plan.load_dtype == "float32" and load_dtype == "bfloat16"
    small, wide = (plan.forward(load_hf_model(folder, d, "cpu"), 64) for d in (load_dtype, "float32"))
    torch.testing.assert_close(small.prefill(0, PROMPT), wide.prefill(0, PROMPT), rtol=0, atol=0)
    step = ([0], [3], [len(PROMPT)])
    torch.testing.assert_close(small.decode(*step), wide.decode(*step), rtol=0, atol=0)
