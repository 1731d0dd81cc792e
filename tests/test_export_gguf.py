"""`tailor export --gguf`: the file's metadata, and round trips through tailor's own GGUF reader
(transformers') and through llama.cpp (llama-cpp-python, optional)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infer_kit import save_lively, save_lora
from tiny import SMOL_TEMPLATE

PROMPTS = ["The quick brown fox", "What is the capital of France?", "0 1 2 3 4 5 6 7 8 9",
           "Ahoy matey, arr! Ünïcödé ✓ 日本語", "You are a helpful AI assistant", "Hello! How can I help"]


@pytest.fixture(scope="module")
def lively(tmp_path_factory) -> Path:
    return save_lively(tmp_path_factory.mktemp("lively") / "model")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))


def _export(src, out: Path, quant: str = "f16") -> Path:
    from tailor.export.gguf import export_gguf

    return export_gguf(str(src), out, quant=quant)


def _fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = field.contents()
    out["_tensors"] = {t.name: t for t in reader.tensors}
    return out


def _logits(folder, prompts=PROMPTS):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        return [model(torch.tensor([tok(p)["input_ids"]])).logits[0] for p in prompts]


def _reloaded(path: Path) -> Path:
    from tailor import models

    return models.local_folder(str(path))


# ---------------------------------------------------------------------------------------------
# metadata


def test_metadata_tokenizer_and_template(lively, tmp_path):
    from transformers import AutoTokenizer

    out = _export(lively, tmp_path / "m.gguf")
    f = _fields(out)
    tok = AutoTokenizer.from_pretrained(str(lively))
    cfg = json.loads((lively / "config.json").read_text())
    assert f["general.architecture"] == "llama"
    assert f["general.file_type"] == 1  # MOSTLY_F16
    assert f["llama.block_count"] == cfg["num_hidden_layers"]
    assert f["llama.embedding_length"] == cfg["hidden_size"]
    assert f["llama.feed_forward_length"] == cfg["intermediate_size"]
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.context_length"] == 1024
    assert f["llama.vocab_size"] == cfg["vocab_size"]
    assert f["tokenizer.ggml.model"] == "gpt2"
    # the tiny tokenizer's hash is nobody's, but its pre-tokenizer is GPT-2's plain ByteLevel regex
    assert f["tokenizer.ggml.pre"] == "gpt-2"
    assert len(f["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert f["tokenizer.ggml.tokens"][tok.convert_tokens_to_ids("<|im_end|>")] == "<|im_end|>"
    assert f["tokenizer.ggml.token_type"][tok.convert_tokens_to_ids("<|im_end|>")] == 3  # CONTROL
    assert len(f["tokenizer.ggml.merges"]) > 100
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert f["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert f["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == SMOL_TEMPLATE
    # tied embeddings: llama.cpp reuses token_embd, so no output.weight
    assert "output.weight" not in f["_tensors"]
    assert f["_tensors"]["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert f["_tensors"]["blk.0.attn_q.weight"].tensor_type.name == "F16"


def _byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def test_pre_tokenizer_names_by_shape_then_hash(tiny_model_dir):
    from transformers import AutoTokenizer

    from tailor.errors import TailorError
    from tailor.export.gguf_vocab import _LLAMA3_SPLIT, _QWEN2_SPLIT, pre_tokenizer_name

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))

    def split(regex):
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            _byte_level(False)]}

    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)]}
    assert pre_tokenizer_name(tok, {"pre_tokenizer": smollm}) == "smollm"
    assert pre_tokenizer_name(tok, {"pre_tokenizer": split(_LLAMA3_SPLIT)}) == "llama-bpe"
    assert pre_tokenizer_name(tok, {"pre_tokenizer": split(_QWEN2_SPLIT)}) == "qwen2"
    assert pre_tokenizer_name(tok, {"pre_tokenizer": _byte_level(True)}) == "gpt-2"
    # an unknown layout falls to the hash, and the tiny vocabulary's hash is nobody's
    with pytest.raises(TailorError, match="not one llama.cpp knows.*hash"):
        pre_tokenizer_name(tok, {"pre_tokenizer": split(r"\\s+")})


def test_q_and_k_are_permuted_for_llama_rope(lively, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    out = _export(lively, tmp_path / "m.gguf", quant="f32")
    sd = AutoModelForCausalLM.from_pretrained(str(lively), dtype=torch.float32).state_dict()
    tensors = _fields(out)["_tensors"]
    q = sd["model.layers.0.self_attn.q_proj.weight"].numpy()
    got = np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(q.shape)
    # head 0, first row pair: llama.cpp wants rows (0, half) of each head next to each other
    half = q.shape[0] // 4 // 2
    assert np.array_equal(got[0], q[0]) and np.array_equal(got[1], q[half])
    assert not np.array_equal(got, q)
    v = sd["model.layers.0.self_attn.v_proj.weight"].numpy()
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight"].data).reshape(v.shape), v)


def test_untied_model_writes_output_weight(tmp_path):
    import torch

    from tiny import make_model, make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 2)
    src = tmp_path / "untied"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    tensors = _fields(_export(src, tmp_path / "u.gguf"))["_tensors"]
    assert "output.weight" in tensors


# ---------------------------------------------------------------------------------------------
# round trip a): tailor reads the file back


def test_f16_round_trip_logits_match(lively, tmp_path):
    import torch

    out = _export(lively, tmp_path / "m.gguf", quant="f16")
    back = _reloaded(out)
    for a, b in zip(_logits(lively), _logits(back)):
        assert a.shape == b.shape
        scale = a.abs().max().item()
        assert torch.allclose(a, b, atol=2e-3 * scale + 1e-3), (a - b).abs().max()


def test_q8_0_round_trip_top1_agrees(tmp_path):
    # Weights x2, not x8: at x4-x8 the random model is chaotic enough that even a perfect Q8_0
    # round trip (quantise + dequantise with gguf.quants, bit-exact with ggml) flips 1.5-7% of the
    # argmaxes; measured, so not the export's doing. The real model's agreement is checked in
    # test_real_model_q8_0_top1 (integration).
    src = save_lively(tmp_path / "src", scale=2.0)
    out = _export(src, tmp_path / "m.gguf", quant="q8_0")
    assert _fields(out)["_tensors"]["blk.0.ffn_up.weight"].tensor_type.name == "Q8_0"
    back = _reloaded(out)
    same = total = 0
    for a, b in zip(_logits(src, PROMPTS + STRINGS), _logits(back, PROMPTS + STRINGS)):
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    assert same / total >= 0.99, f"{same}/{total}"


def test_full_fine_tuning_reads_a_quantized_gguf_exactly(tmp_path):
    """A quantized GGUF is cached in bf16 for serving and LoRA's frozen base, and in fp32 for full
    fine-tuning: from weights on the bf16 grid, bf16 matmuls would not see an update under half a
    bf16 step (models._storage_dtype). The exact copy holds the dequantised values bit for bit."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tailor import models
    from tailor.train import TrainConfig
    from tailor.train.setup import load_model, precision

    def stored(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118

    src = save_lively(tmp_path / "src", scale=2.0)
    gguf = _export(src, tmp_path / "m.gguf", quant="q8_0")
    rounded, exact = models.local_folder(str(gguf)), models.local_folder(str(gguf), exact=True)
    assert rounded != exact and models.local_folder(str(gguf), exact=True) == exact
    assert stored(rounded) == {"BF16"} and stored(exact) == {"F32"}
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf.name, dtype=torch.float32).state_dict()
    got = AutoModelForCausalLM.from_pretrained(str(exact), dtype=torch.float32).state_dict()
    assert all(torch.equal(v, direct[k]) for k, v in got.items())
    assert not all(torch.equal(v, v.bfloat16().float()) for v in got.values())  # off the grid: the copy matters
    tok = models.load_tokenizer(str(gguf))
    for method, want in (("full", exact), ("lora", rounded)):
        cfg = TrainConfig(model=str(gguf), method=method, data="unused.jsonl", dtype="bfloat16")
        model, base = load_model(cfg, tok, precision(cfg), None)
        assert base.folder == want.resolve(), method
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}  # LoRA's frozen base
    f16 = _export(src, tmp_path / "f16.gguf")  # a float file's one conversion is already exact
    assert models.local_folder(str(f16), exact=True) == models.local_folder(str(f16))


def test_qwen2_with_attention_biases(tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(8.0) if p.dim() == 2 else (p.normal_(0, 0.5) if name.endswith("bias") else None)
    src = tmp_path / "qwen2"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = _export(src, tmp_path / "q.gguf")
    f = _fields(out)
    assert f["general.architecture"] == "qwen2"
    assert "blk.0.attn_q.bias" in f["_tensors"] and "blk.1.attn_v.bias" in f["_tensors"]
    for a, b in zip(_logits(src), _logits(_reloaded(out))):
        assert torch.allclose(a, b, atol=2e-3 * a.abs().max().item() + 1e-3)


def test_mistral_exports_as_llama(tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from tiny import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        tie_word_embeddings=False, sliding_window=None)
    src = tmp_path / "mistral"
    MistralForCausalLM(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    f = _fields(_export(src, tmp_path / "mi.gguf"))
    assert f["general.architecture"] == "llama"
    assert "output.weight" in f["_tensors"]


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tailor.errors import TailorError
    from tiny import make_tokenizer

    tok = make_tokenizer()
    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(src)
    tok.save_pretrained(src)
    with pytest.raises(TailorError, match="not supported yet"):
        _export(src, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()


def test_run_folder_with_lora_adapter_is_merged(tiny_model_dir, tmp_path):
    import torch

    from tailor.train.lora import merge

    run = tmp_path / "run"
    save_lora(tiny_model_dir, run / "final")
    out = _export(run, tmp_path / "a.gguf")
    merged = merge(run / "final", tmp_path / "merged")
    for a, b in zip(_logits(merged, PROMPTS[:2]), _logits(_reloaded(out), PROMPTS[:2])):
        assert torch.allclose(a, b, atol=2e-3 * a.abs().max().item() + 1e-3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_export(lively, tmp_path, capsys):
    from tailor.cli import main

    out = tmp_path / "cli.gguf"
    assert main(["export", str(lively), "--gguf", str(out), "--quant", "q8_0"]) == 0
    assert out.is_file()
    assert str(out) in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope"), "--gguf", str(out)]) == 1
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# round trip b): llama.cpp reads the file (needs the optional `gguf` extra: llama-cpp-python)

STRINGS = ["Hello world", "  two  spaces", "\n\n\tTabs\tand\nnewlines\n", "3.14159 and 1234567890",
           "Ünïcödé ✓ 日本語 🦙", "What is the capital of France?", "<|im_start|>user\nhi<|im_end|>",
           "I've been 'told he's there", "a" * 40, "      ", "x = [1, 2, 3]; y = {'a': 1}"]


@pytest.mark.needs("llama_cpp")
def test_llama_cpp_loads_tiny_and_tokenises_like_hf(lively, tmp_path):
    import llama_cpp
    import numpy as np
    from transformers import AutoTokenizer

    out = _export(lively, tmp_path / "m.gguf", quant="f32")
    tok = AutoTokenizer.from_pretrained(str(lively))
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    for text in STRINGS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
    # the permutation is right only if llama.cpp's logits are HF's
    ids = tok(PROMPTS[1])["input_ids"]
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    want = _logits(lively, [PROMPTS[1]])[0].numpy()
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max() + 1e-3


CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "How are you today?"}],
         [{"role": "user", "content": "Write a haiku about the sea."}]]


def _llama_cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy continuation: the argmax of its logits, fed back, n times."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    got = []
    for _ in range(n):
        got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([got[-1]])
    return got


def _tailor_greedy(folder, prompts: list[list[int]], n: int) -> list[list[int]]:
    """tailor's engine (what `tailor serve` and `chat` run), greedy, n tokens, no stop tokens."""
    from tailor.infer.engine import generate_ids
    from tailor.infer.loading import load_engine
    from tailor.infer.sampling import SamplingParams

    engine = load_engine(str(folder), dtype="float32", device="cpu").engine
    return [list(generate_ids(engine, ids, SamplingParams(max_new_tokens=n, temperature=0))) for ids in prompts]


@pytest.mark.needs("llama_cpp")
def test_llama_cpp_greedy_equals_tailors_engine(lively, tmp_path):
    """The exported file, run by llama.cpp, continues chats as tailor's engine does, token for token.
    (The closest top-2 call on these 72 steps is 0.003 apart in logits of ~4; f32 llama.cpp and
    torch differ by ~1e-5.)"""
    import llama_cpp

    from tailor.export.ollama import render_jinja

    out = _export(lively, tmp_path / "m.gguf", quant="f32")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    prompts = [llm.tokenize(render_jinja(llm.metadata["tokenizer.chat_template"], chat).encode(), add_bos=False,
                            special=True) for chat in CHATS]
    want = _tailor_greedy(lively, prompts, 24)
    assert all(len(set(w)) > 12 for w in want)  # the lively model wanders: a wrong token shows
    assert [_llama_cpp_greedy(llm, ids, 24) for ids in prompts] == want


# ---------------------------------------------------------------------------------------------
# the real default model (integration): tailor's q8_0 round trip, and llama.cpp against tailor

def _strings(n: int = 200) -> list[str]:
    """Seeded mixes of words, digits, unicode, punctuation and whitespace runs."""
    import random

    rng = random.Random(0)
    parts = ["Hello", " world", "the", " quick", "3", "33", "333", "12345678", "3.14", "1,000", "  ", "   ",
             "\t", "\n", "\n\n", " \n ", "日本語", "Ünïcödé", "✓", "🦙", "😀😀", "ΑΒΓ", "нещо", "I've", "'RE",
             "don't", "...", "!!!", "?", "``", "\"quoted\"", "a-b_c", "(x)", "[1, 2]", "{'k': 1}", "$5.00", "café"]
    return [STRINGS[i % len(STRINGS)] if i < len(STRINGS) else "".join(rng.choice(parts) for _ in range(rng.randint(1, 12)))
            for i in range(n)]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from tailor import models
    from tailor.export.gguf import export_gguf

    folder = models.local_folder("default")
    return folder, export_gguf(str(folder), tmp_path_factory.mktemp("real") / "smollm2-f16.gguf", quant="f16")


@pytest.mark.integration
def test_real_model_q8_0_top1(real, tmp_path):
    """Q8_0 costs SmolLM2-135M about 3% of its top-1 choices on these prompts (84/87 measured, the
    same with gguf.quants' reference quantiser applied in memory), so the issue's 99% is out of
    reach for this model; what the export must guarantee is that it adds nothing to Q8_0's own
    rounding: the reloaded file picks exactly what the reference-quantised model picks."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    folder, _ = real
    prompts = PROMPTS + [c[-1]["content"] for c in CHATS]
    back = _reloaded(_export(folder, tmp_path / "q8.gguf", quant="q8_0"))
    reference = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for p in reference.parameters():
            if p.dim() == 2:
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q8), q8)))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    same = total = 0
    for text, a, b in zip(prompts, _logits(folder, prompts), _logits(back, prompts)):
        with torch.no_grad():
            r = reference(torch.tensor([tok(text)["input_ids"]])).logits[0]
        assert torch.equal(b.argmax(-1), r.argmax(-1)), text
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    assert same / total >= 0.95, f"{same}/{total}"


@pytest.mark.integration
@pytest.mark.needs("llama_cpp")
def test_real_model_llama_cpp_tokenises_like_hf(real):
    import llama_cpp
    from transformers import AutoTokenizer

    folder, gguf_path = real
    tok = AutoTokenizer.from_pretrained(str(folder))
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, n_threads=2, vocab_only=True, verbose=False)
    bad = [s for s in _strings() if llm.tokenize(s.encode(), add_bos=False, special=True) != tok(s)["input_ids"]]
    assert not bad, bad[:5]


@pytest.mark.integration
@pytest.mark.needs("llama_cpp")
def test_real_model_llama_cpp_greedy_equals_tailor(real):
    """SmolLM2 exported f16: llama.cpp's greedy answers are tailor's engine's, for 32 tokens, with
    the GGUF's own chat template rendering tailor's prompt ids."""
    import llama_cpp

    from tailor import models
    from tailor.export.ollama import render_jinja

    folder, gguf_path = real
    tok = models.load_tokenizer(str(folder))
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    assert template == tok.chat_template
    prompts = []
    for chat in CHATS:
        ids = llm.tokenize(render_jinja(template, chat).encode(), add_bos=False, special=True)  # the GGUF's own template
        assert ids == tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        prompts.append(ids)
    for ids, want in zip(prompts, _tailor_greedy(folder, prompts, 32)):
        got = _llama_cpp_greedy(llm, ids, 32)
        assert got == want, (tok.decode(got), tok.decode(want))


@pytest.mark.integration
def test_real_model_modelfile(real, tmp_path):
    import re

    from tailor.export.ollama import ollama_values, render_go, write_modelfile

    _, gguf_path = real
    text = write_modelfile(gguf_path, tmp_path).read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<|im_end|>"]
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    chat = CHATS[0]
    assert render_go(template, ollama_values(chat, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")) \
        == "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" \
           "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
