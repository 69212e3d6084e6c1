"""Tiny, randomly initialised Hugging Face models and a byte-level tokenizer, built offline.

They are for fast tests only: they have the real architectures' code paths (RoPE, GQA,
RMSNorm, tied embeddings) at a size where a forward takes milliseconds.
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (3 special tokens + 256 bytes, no merges): any text round-trips."""
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(byte_vocab):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[2],
    )


TINY_VOCAB = len(SPECIAL_TOKENS) + 256


def tiny_llama_config(num_layers: int = 3, **overrides: object) -> LlamaConfig:
    """A SmolLM2-shaped Llama config (GQA, tied embeddings) at toy size."""
    fields: dict[str, object] = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def tiny_qwen2_config(num_layers: int = 3, **overrides: object) -> Qwen2Config:
    """A Qwen2 config (q/k/v biases, untied head) at toy size."""
    fields: dict[str, object] = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    fields.update(overrides)
    return Qwen2Config(**fields)


def tiny_model(config: LlamaConfig | Qwen2Config, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM in eval mode, float32, with eager-equivalent SDPA."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.eval()
