"""Weight-only int8 projections (infer/quant.py) on small hand-made shapes."""

import pytest
import torch
import torch.nn.functional as F

from tailor.infer.llama import Dense, Layer
from tailor.infer.quant import (
    Int8Dense,
    dequantize,
    quantize_dense,
    quantize_forward,
    quantize_layers,
    quantize_weight,
)


def _weight(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)  # rows of different ranges


@pytest.mark.parametrize("n,k", [(7, 13), (1, 5), (33, 64)])
def test_quantize_bounds_each_row_error_by_half_a_step(n, k):
    w = _weight(n, k)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == (n, k) and s.shape == (n,)
    assert q.abs().max() <= 127
    err = (dequantize(q, s) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()
    # the scale sits on the bf16 grid, so bf16 inputs apply the scale the weight was rounded with
    assert torch.equal(s.to(torch.bfloat16).float(), s)


def test_round_trip_is_exact_on_the_int8_grid():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (9, 11), generator=g, dtype=torch.int8)
    q[:, 0] = 127  # each row reaches the grid's end, so its scale is recovered exactly
    scale = 2.0 ** -torch.randint(3, 12, (9,), generator=g).float()
    w = q.float() * scale[:, None]
    q2, s2 = quantize_weight(w.to(torch.bfloat16))
    assert torch.equal(q2, q) and torch.equal(s2, scale)
    assert torch.equal(dequantize(q2, s2), w)


def test_negated_weight_quantises_to_the_negated_ints():
    w = _weight(5, 8)
    assert torch.equal(quantize_weight(-w)[0], -quantize_weight(w)[0])


def test_rejects_a_non_matrix():
    with pytest.raises(ValueError, match="2-D float"):
        quantize_weight(torch.ones(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("k", [37, 48])  # 37: padded to the kernel's multiple of 16
def test_matches_linear_on_the_dequantised_weight(dtype, lead, with_bias, k):
    n = 19
    w = _weight(n, k)
    bias = torch.randn(n) if with_bias else None
    d = Int8Dense(w.to(dtype), None if bias is None else bias.to(dtype))
    x = torch.randn(*lead, k).to(dtype)
    y = d(x)
    assert y.dtype == dtype and y.shape == (*lead, n)
    ref = F.linear(x.float(), dequantize(d.weight, d.scale), None if bias is None else bias.to(dtype).float())
    tight = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.float(), ref, atol=tight, rtol=tight)
    # against the original float weight: the error is bounded by half a step per weight
    orig = F.linear(x.float(), w.to(dtype).float(), None if bias is None else bias.to(dtype).float())
    bound = (x.float().abs() @ (d.scale[:, None] / 2).expand(n, k).T) + tight * (1 + orig.abs())
    assert ((y.float() - orig).abs() <= bound).all()


def test_non_contiguous_input():
    d = Int8Dense(_weight(6, 10))
    x = torch.randn(10, 4).T  # rows are strided
    torch.testing.assert_close(d(x), d(x.contiguous()))


def test_quantize_dense_accepts_a_dense_or_a_tensor_and_keeps_the_bias():
    w, b = _weight(4, 6), torch.randn(4)
    from_dense = quantize_dense(Dense(w, b))
    from_tensor = quantize_dense(w, b)
    x = torch.randn(3, 6)
    torch.testing.assert_close(from_dense(x), from_tensor(x))
    assert from_dense.bias is not None and quantize_dense(from_dense) is from_dense


def test_quantize_layers_and_forward_replace_projections_only():
    def layer(seed):
        return Layer(ln1=torch.ones(8), qkv=Dense(_weight(12, 8, seed)), o=Dense(_weight(8, 8, seed + 1)),
                     ln2=torch.ones(8), gate_up=Dense(_weight(10, 8, seed + 2)), down=Dense(_weight(8, 5, seed + 3)))

    class Fwd:
        def __init__(self):
            self.layers, self.lm_head = [layer(0), layer(10)], Dense(_weight(20, 8, 99))

    fwd = Fwd()
    x = torch.randn(2, 8)
    before = fwd.layers[0].qkv(x)
    assert quantize_forward(fwd) == 9
    for lay in fwd.layers:
        assert all(isinstance(getattr(lay, n), Int8Dense) for n in ("qkv", "o", "gate_up", "down"))
        assert isinstance(lay.ln1, torch.Tensor) and lay.lora == {}
    assert isinstance(fwd.lm_head, Int8Dense)
    torch.testing.assert_close(fwd.layers[0].qkv(x), before, atol=0.05, rtol=0.05)
    assert quantize_layers(fwd.layers) == 0  # already int8: nothing left to replace


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_quantized_engine_forward_equals_hf_on_the_dequantised_weights(family):
    """quantize_forward on the engine's forward serves exactly the model whose Linear weights
    are the dequantised ones: prefill (many rows) and decode (one row), q/k/v biases included."""
    import transformers as tf

    from tailor.infer.llama import LlamaForward

    common = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    torch.manual_seed(0)
    model = (tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, use_sliding_window=False)) if family == "qwen2"
             else tf.LlamaForCausalLM(tf.LlamaConfig(**common))).float().eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.5)
    forward = LlamaForward(model, 32)
    assert quantize_forward(forward) == 2 * 4 + 1
    ids = [3, 60, 17, 99, 5, 5, 127, 40]
    served = forward.prefill(0, ids, all_logits=True).rows(0, len(ids))
    step = forward.decode([0], [11], [len(ids)])[0]
    with torch.no_grad():
        for mod in list(model.modules()):
            if isinstance(mod, torch.nn.Linear):
                mod.weight = torch.nn.Parameter(dequantize(*quantize_weight(mod.weight)))
        want = model(torch.tensor([ids + [11]])).logits[0]
    torch.testing.assert_close(served, want[:-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step, want[-1], rtol=1e-4, atol=1e-4)


# -- the opt-in flag: tailor generate / chat / serve --quantize int8 ---------------------------------
def test_load_engine_quantize_int8_puts_int8_weights_in_the_engine(tmp_path):
    from tiny import save_tiny

    from tailor.infer.loading import load_engine
    from tailor.infer.quant import Int8Dense

    folder = save_tiny(tmp_path / "tiny")
    plain = load_engine(str(folder), dtype="float32").engine.backend
    int8 = load_engine(str(folder), dtype="float32", quantize="int8").engine.backend
    assert not isinstance(plain.lm_head, Int8Dense)
    assert isinstance(int8.lm_head, Int8Dense)
    kinds = {type(v).__name__ for layer in int8.layers for v in vars(layer).values() if hasattr(v, "weight")}
    assert kinds == {"Int8Dense"}, kinds


def test_generate_quantize_int8_answers_and_refuses_what_it_cannot_do(tmp_path, capsys):
    from tiny import make_tokenizer, save_tiny
    from transformers import GPT2Config, GPT2LMHeadModel

    from tailor.cli import main

    folder = save_tiny(tmp_path / "tiny")
    argv = ["generate", "--model", str(folder), "--temperature", "0", "--max-new-tokens", "6", "Hello"]
    assert main(argv + ["--quantize", "int8"]) == 0
    assert capsys.readouterr().out  # a random tiny model may well answer in newlines
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quantize", "int4"])
    assert exit_.value.code == 2 and "int8" in capsys.readouterr().err

    tok = make_tokenizer()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    argv[2] = str(tmp_path / "gpt2")
    assert main(argv + ["--quantize", "int8"]) == 1
    err = capsys.readouterr().err
    assert "--quantize int8" in err and "gpt2" in err and "Traceback" not in err


def test_a_packed_projection_is_refused_not_left_in_float():
    """A bf16 Dense packed for oneDNN keeps no plain weight: quantizing it says so instead of
    skipping it (a forward made for int8 is built unpacked)."""
    from tailor.infer.llama import Dense, _onednn_ok
    from tailor.infer.quant import quantize_layers

    if not _onednn_ok():
        pytest.skip("this CPU has no fast bf16: nothing is packed")
    layer = type("L", (), {})()
    layer.qkv = Dense(torch.randn(32, 16).bfloat16())
    assert layer.qkv.weight is None and layer.qkv.packed is not None
    with pytest.raises(ValueError, match="pack=False"):
        quantize_layers([layer])
    layer.qkv = Dense(torch.randn(32, 16).bfloat16(), pack=False)
    assert quantize_layers([layer]) == 1
