"""Tiny real models for tests: a byte-level BPE tokenizer trained in milliseconds on a small
corpus, with ChatML special tokens and SmolLM2's chat template, and a 2-layer Llama with random
weights. Real enough to exercise templates, masks, training and serving end to end."""

from __future__ import annotations

from pathlib import Path

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "system user assistant tool developer Hello! How can I help you today?",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } , . ; : ' \" ? !",
    "Ahoy matey, arr! Translate to French: bonjour, merci, s'il vous plait. Ünïcödé ✓ 日本語",
]

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(chat_template: str | None = SMOL_TEMPLATE, extra_special: list[str] = (), vocab_size: int = 512,
                   chatml: bool = True):
    """chatml=False: a base model's vocabulary, with no <|im_start|>/<|im_end|> (<|endoftext|> ends text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = SPECIAL if chatml else SPECIAL[:1]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special + list(extra_special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos, eos = ("<|im_start|>", "<|im_end|>") if chatml else ("<|endoftext|>", "<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos,
                                   unk_token="<|endoftext|>")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def make_model(tokenizer, *, layers: int = 2, hidden: int = 64, seed: int = 0, tie: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=tie,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(folder: Path, **kw) -> Path:
    tok = make_tokenizer(**{k: v for k, v in kw.items() if k in ("chat_template", "extra_special", "chatml")})
    model = make_model(tok, **{k: v for k, v in kw.items() if k in ("layers", "hidden", "seed", "tie")})
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
