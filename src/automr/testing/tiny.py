"""Tiny, randomly initialised Hugging Face models and a byte-level tokenizer, built offline.

They are for fast tests only: they have the real architectures' code paths (RoPE, GQA,
RMSNorm, tied embeddings) at a size where a forward takes milliseconds.
"""

import math
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AfmoeConfig,
    Apertus1p5TextConfig,
    ApertusConfig,
    ArceeConfig,
    BambaConfig,
    BitNetConfig,
    Cohere2Config,
    Cohere2MoeConfig,
    CohereConfig,
    CwmConfig,
    DeepseekV2Config,
    DeepseekV3Config,
    DiffLlamaConfig,
    ErgoConfig,
    Ernie4_5_MoeConfig,
    Ernie4_5Config,
    Exaone4Config,
    ExaoneConfig,
    ExaoneMoeConfig,
    FalconH1Config,
    FalconMambaConfig,
    FlexOlmoConfig,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    Gemma4Config,
    Gemma4TextConfig,
    Gemma4UnifiedConfig,
    Gemma4UnifiedTextConfig,
    GemmaConfig,
    Glm4Config,
    Glm4MoeConfig,
    Glm4MoeLiteConfig,
    GlmConfig,
    GPTNeoXConfig,
    GptOssConfig,
    GraniteConfig,
    GraniteMoeConfig,
    GraniteMoeHybridConfig,
    GraniteMoeSharedConfig,
    HeliumConfig,
    HunYuanDenseV1Config,
    HunYuanMoEV1Config,
    HYV3Config,
    InternLM3Config,
    IQuestCoderConfig,
    Jais2Config,
    JambaConfig,
    JetMoeConfig,
    Kolibri1Config,
    LagunaConfig,
    Lfm2Config,
    Lfm2MoeConfig,
    Lfm3Config,
    LlamaConfig,
    Mamba2Config,
    MambaConfig,
    MellumConfig,
    MiniCPM3Config,
    MiniMaxM2Config,
    Ministral3Config,
    MinistralConfig,
    Mistral3Config,
    MistralConfig,
    MixtralConfig,
    NanoChatConfig,
    NemotronConfig,
    NemotronHConfig,
    Olmo2Config,
    Olmo3Config,
    OlmoConfig,
    OlmoeConfig,
    Param2MoeConfig,
    PersimmonConfig,
    Phi3Config,
    PhiConfig,
    PhimoeConfig,
    PixtralVisionConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    Qwen3NextConfig,
    SarvamMLAConfig,
    SarvamMoEConfig,
    SeedOssConfig,
    SmolLM3Config,
    SolarOpenConfig,
    StableLmConfig,
    Starcoder2Config,
    VaultGemmaConfig,
    YoutuConfig,
)
from transformers.models.bamba.modeling_bamba import BambaMixer
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import (
    GraniteMoeHybridMambaLayer,
)
from transformers.models.jamba.modeling_jamba import JambaMambaMixer
from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv
from transformers.models.lfm2_moe.modeling_lfm2_moe import Lfm2MoeShortConv
from transformers.models.lfm3.modeling_lfm3 import Lfm3ShortConv
from transformers.models.mamba.modeling_mamba import MambaMixer
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

from automr.llm.loading import auto_class
from automr.llm.split import attention_for

SHORT_CONVS = (Lfm2ShortConv, Lfm2MoeShortConv, Lfm3ShortConv)
"""The short-convolution layers whose weights :func:`tiny_model` draws anew."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def tiny_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (3 special tokens + 256 bytes, no merges): any text round-trips.
    With ``bos``, every encoding with special tokens starts with the BOS, as Llama's and
    Gemma's do (SmolLM2's and Qwen's add none)."""
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(byte_vocab):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{SPECIAL_TOKENS[1]} $A", pair=f"{SPECIAL_TOKENS[1]} $A {SPECIAL_TOKENS[1]} $B",
            special_tokens=[(SPECIAL_TOKENS[1], 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[2],
    )


TINY_VOCAB = len(SPECIAL_TOKENS) + 256


MOE = dict(num_local_experts=4, num_experts_per_tok=2)
GRANITE = dict(embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
               logits_scaling=4.0)

def gemma3_config(**text: object) -> Gemma3Config:
    """Gemma 3 as its 4B-27B models are: the language model (``text``'s fields) beside a
    SigLIP vision tower (toy size) whose layers have the language model's module names."""
    return Gemma3Config(text_config=Gemma3TextConfig(**text), mm_tokens_per_image=4,
                        vision_config=dict(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=3, num_attention_heads=2,
                                           image_size=28, patch_size=14))


def gemma4_text_config(**fields: object) -> Gemma4TextConfig:
    """Gemma 4's language model with a local (sliding) layer before each global one and a
    global one last (the model requires it)."""
    return Gemma4TextConfig(**_gemma4_layers(fields))


def _gemma4_layers(fields: dict[str, object]) -> dict[str, object]:
    layers = int(fields["num_hidden_layers"])  # type: ignore[call-overload]
    return {"layer_types": [
        "full_attention" if index % 2 or index == layers - 1 else "sliding_attention"
        for index in range(layers)], **fields}


def gemma4_config(**text: object) -> Gemma4Config:
    """Gemma 4 as its vision-language checkpoints are: the language model (``text``'s fields)
    beside a vision tower (toy size) whose layers have q/k/v_proj too."""
    return Gemma4Config(text_config=gemma4_text_config(**text), vision_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, patch_size=14, pooling_kernel_size=2))


def gemma4_unified_config(**text: object) -> Gemma4UnifiedConfig:
    """Gemma 4 12B as published (``gemma4_unified``): Gemma 4's dense language model (no
    per-layer embeddings, no experts) beside a patch embedder (toy size)."""
    return Gemma4UnifiedConfig(text_config=Gemma4UnifiedTextConfig(**_gemma4_layers(text)),
                               vision_config=dict(patch_size=2, pooling_kernel_size=2,
                                                  mm_embed_dim=16, mm_posemb_size=8,
                                                  output_proj_dims=32))


def mistral3_config(text_class: Callable[..., PretrainedConfig] = Ministral3Config,
                    **text: object) -> Mistral3Config:
    """Ministral 3 as its hub checkpoints are (``mistral3``): the language model (``text``'s
    fields, a ``ministral3`` or, Mistral Small 3.1's, a ``mistral``) beside a Pixtral vision
    tower (toy size) whose layers have q/k/v_proj too."""
    return Mistral3Config(text_config=text_class(**text),
                          tie_word_embeddings=text.get("tie_word_embeddings", False),
                          vision_config=PixtralVisionConfig(
                              hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                              num_attention_heads=2, head_dim=8, image_size=28, patch_size=14))


def local_and_global(config_class: type[PretrainedConfig]) -> Callable[..., PretrainedConfig]:
    """A config maker for a model with sliding-window layers among full ones (Ministral 8B,
    Trinity, ...): here every other layer slides, the first one first."""
    def make(**fields: object) -> PretrainedConfig:
        layers = int(fields["num_hidden_layers"])  # type: ignore[call-overload]
        return config_class(**{"layer_types": [("sliding_attention", "full_attention")[index % 2]
                                               for index in range(layers)], **fields})
    return make


def hybrid_config(config_class: type[PretrainedConfig],
                  kind: str = "linear_attention") -> Callable[..., PretrainedConfig]:
    """A config maker for Qwen 3.5's or Qwen3-Next's language model (Gated DeltaNet layers among
    gated full attention ones) or Granite 4.0-H (Mamba2 layers among attention ones): both
    ``linear_attention`` layers to transformers; or LFM2's (``kind`` ``conv``: short
    convolutions among attention layers); here layers alternate, a recurrent one first."""
    def make(**fields: object) -> PretrainedConfig:
        layers = int(fields["num_hidden_layers"])  # type: ignore[call-overload]
        return config_class(**{"layer_types": [(kind, "full_attention")[index % 2]
                                               for index in range(layers)], **fields})
    return make


def bamba_config(**fields: object) -> PretrainedConfig:
    """A Bamba config whose layers alternate as :func:`hybrid_config`'s, a Mamba2 one first
    (Bamba's ``layer_types`` are made from ``attn_layer_indices``)."""
    layers = int(fields["num_hidden_layers"])  # type: ignore[call-overload]
    return BambaConfig(**{"attn_layer_indices": list(range(1, layers, 2)), **fields})


def attention_free(config_class: type[PretrainedConfig]) -> Callable[..., PretrainedConfig]:
    """A config maker for a model without attention (Mamba, Mamba2): the toy fields it has no
    use for (attention heads, MLP width, context) left out, as its published configs have
    none."""
    def make(**fields: object) -> PretrainedConfig:
        for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size",
                     "max_position_embeddings"):
            fields.pop(name, None)
        return config_class(**fields)
    return make


def lfm3_config(**fields: object) -> PretrainedConfig:
    """An LFM3 config whose layers cycle a short convolution, a sliding-window attention layer,
    a full one and a convolution again: every kind in 3 layers, and with 4 a convolution on
    either side of a split at 2."""
    kinds = ("conv", "sliding_attention", "full_attention", "conv")
    layers = int(fields["num_hidden_layers"])  # type: ignore[call-overload]
    return Lfm3Config(
        **{"layer_types": [kinds[index % len(kinds)] for index in range(layers)], **fields})


NEMOTRON_H_BLOCKS = ("linear_attention", "moe", "full_attention", "linear_attention", "mlp")


def nemotron_h_config(**fields: object) -> PretrainedConfig:
    """A Nemotron-H config whose blocks (one mixer each) cycle Mamba2, experts, attention,
    Mamba2, MLP: with 4 layers a Mamba2 layer on either side of a split at 2."""
    layers = int(fields["num_hidden_layers"])  # type: ignore[call-overload]
    return NemotronHConfig(**{"layers_block_type": [
        NEMOTRON_H_BLOCKS[index % len(NEMOTRON_H_BLOCKS)] for index in range(layers)], **fields})


# Ministral 3's RoPE, scaled to this size: yarn (16 x its original context, as 262,144 of
# 16,384), and queries scaled by 1 + beta * log(1 + position // original) (Llama 4's)
MINISTRAL3 = dict(head_dim=8, max_position_embeddings=128, rope_parameters=dict(
    rope_type="yarn", rope_theta=1000000.0, factor=16.0, original_max_position_embeddings=8,
    beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0, llama_4_scaling_beta=0.1))
# Qwen 3.5's Gated DeltaNet (kernel 3, 2 key heads, 4 value heads) and gated attention with
# RoPE on half a head (interleaved over its three position sections, all text positions)
QWEN3_5 = dict(head_dim=8, linear_conv_kernel_dim=3, linear_key_head_dim=8,
               linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
               rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                    partial_rotary_factor=0.5, mrope_section=[1, 1, 0],
                                    mrope_interleaved=True))
GEMMA4_UNIFIED = dict(head_dim=8, global_head_dim=16, num_global_key_value_heads=1,
                      attention_k_eq_v=True, sliding_window=4, final_logit_softcapping=10.0)
GEMMA4 = dict(GEMMA4_UNIFIED, hidden_size_per_layer_input=0)
QWEN_MOE4 = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
GLM_MOE = dict(head_dim=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
               first_k_dense_replace=1, n_group=1, topk_group=1, use_qk_norm=True)
QWEN_MOE = dict(QWEN_MOE4, shared_expert_intermediate_size=16)
# Multi-head latent attention (DeepSeek V2's): queries through a low-rank bottleneck (q_a_proj,
# a norm, q_b_proj; q_proj where q_lora_rank is None), keys and values from one compressed latent
# (kv_a_proj_with_mqa, a norm, kv_b_proj) and one rotary key shared by all heads; every head its
# own keys (as many key/value heads as queries), values narrower than queries and keys
MLA = dict(num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
           qk_nope_head_dim=8, v_head_dim=8)
# DeepSeek's experts: 4 routed (2 per token) and a shared one, after a dense first layer
MLA_MOE = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
               first_k_dense_replace=1)


def deepseek_yarn(mscale: float) -> dict[str, object]:
    """DeepSeek's yarn RoPE scaled to this size (4 x an original context of 128, as V3's 40 x
    4,096), with ``mscale`` and ``mscale_all_dim`` as its configs set them (V2: 0.707, V3: 1):
    equal, so the rotary embedding keeps its scale, and the attention's softmax scale grows by
    ``(1 + 0.1 * mscale * ln 4) ** 2``."""
    return dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                original_max_position_embeddings=128, beta_fast=32.0, beta_slow=1.0,
                mscale=mscale, mscale_all_dim=mscale)

# Each architecture the split supports, at toy size, with what sets it apart from Llama.
TINY_ARCHITECTURES: dict[str, tuple[Callable[..., PretrainedConfig], dict[str, object]]] = {
    "llama": (LlamaConfig, dict(rms_norm_eps=1e-5)),  # SmolLM2-shaped
    "qwen2": (Qwen2Config, dict(tie_word_embeddings=False)),  # q/k/v biases, untied head
    "mistral": (MistralConfig, dict(tie_word_embeddings=False, sliding_window=4)),  # every layer
    "qwen3": (Qwen3Config, dict(head_dim=8)),  # q/k norms, an explicit head size
    "smollm3": (SmolLM3Config, dict(no_rope_layer_interval=2)),  # every 2nd layer without RoPE
    # fused qkv, RoPE on half a head, a sliding window in every layer
    "phi3": (Phi3Config, dict(partial_rotary_factor=0.5, sliding_window=5)),
    "gemma": (GemmaConfig, dict(head_dim=8)),  # embeddings scaled by sqrt(hidden), (1 + w) norms
    # eager attention with capped scores, local (sliding) and global layers, capped logits
    "gemma2": (Gemma2Config, dict(head_dim=8, sliding_window=4, attn_logit_softcapping=5.0,
                                  final_logit_softcapping=10.0)),
    # q/k norms, a local (sliding, own RoPE base) layer before each global one; a logit cap
    # (Gemma 2 has one, real Gemma 3 configs none) tests the split applying one
    "gemma3_text": (Gemma3TextConfig, dict(head_dim=8, sliding_window=4, layer_types=None,
                                           sliding_window_pattern=2,
                                           final_logit_softcapping=10.0)),
    # Gemma 3's language model (as above) beside a vision tower with 3 layers of q/k/v_proj;
    # this class applies no logit cap, whatever its text config says
    "gemma3": (gemma3_config, dict(head_dim=8, sliding_window=4, layer_types=None,
                                   sliding_window_pattern=2, final_logit_softcapping=10.0)),
    # q/k norms and a weightless v norm, local layers (RoPE) then a global one with wider heads,
    # fewer key/value heads whose keys are the values, and RoPE on a quarter of a head
    # ("proportional"); norms after sublayers, a scalar per layer, capped logits; no per-layer
    # embeddings (PLE: refused)
    "gemma4_text": (gemma4_text_config, GEMMA4),
    # Gemma 4 26B-A4B-shaped: the above with a mixture of experts beside every MLP, the language
    # model of a vision-language class that caps the logits too
    "gemma4": (gemma4_config, dict(GEMMA4, enable_moe_block=True, num_experts=4, top_k_experts=2,
                                   moe_intermediate_size=16)),
    # Gemma 4 12B: Gemma 4's dense layers (image tokens attend both ways, text causally)
    "gemma4_unified_text": (lambda **fields: Gemma4UnifiedTextConfig(**_gemma4_layers(fields)),
                            GEMMA4_UNIFIED),
    # and the vision-language class it is published in, which caps the logits and embeds its
    # placeholder ids as padding, as Gemma 4's does
    "gemma4_unified": (gemma4_unified_config, GEMMA4_UNIFIED),
    "olmo": (OlmoConfig, dict(clip_qkv=0.5)),  # norms without weights, q/k/v clipped
    "olmo2": (Olmo2Config, dict(tie_word_embeddings=False)),  # norms after attention and MLP
    "olmo3": (Olmo3Config, dict(sliding_window=4)),  # OLMo 2's layers, 3 local : 1 global
    # mixture-of-experts MLPs (4 experts, 2 per token), Qwen3's attention
    "qwen3_moe": (Qwen3MoeConfig, dict(head_dim=8, num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=16)),
    # scaled embeddings, residuals and attention; logits divided, outside the head
    "granite": (GraniteConfig, GRANITE),
    # attention and MLP in parallel from one LayerNorm, q/k norms, logits scaled
    "cohere": (CohereConfig, dict(head_dim=8, use_qk_norm=True, logit_scale=0.5)),
    # Cohere's layers, 1 local (sliding, with RoPE) : 1 global (no RoPE) here
    "cohere2": (Cohere2Config, dict(head_dim=8, sliding_window=4, sliding_window_pattern=2,
                                    logit_scale=0.5)),
    # q/k norms, norms after attention and MLP, local layers with RoPE, global ones without
    "exaone4": (Exaone4Config, dict(head_dim=8, sliding_window=4, sliding_window_pattern=2)),
    "ernie4_5": (Ernie4_5Config, dict(head_dim=8, use_bias=True)),  # biases everywhere
    # RoPE on half a head (interleaved pairs), q/k/v biases; GLM 4 adds norms after sublayers
    "glm": (GlmConfig, dict(head_dim=8)),
    "glm4": (Glm4Config, dict(head_dim=8)),
    "helium": (HeliumConfig, dict(head_dim=8)),
    # LayerNorm, RoPE on a quarter of a head, q/k LayerNorms per head, parallel residual
    "stablelm": (StableLmConfig, dict(qk_layernorm=True, use_parallel_residual=True,
                                      use_qkv_bias=True)),
    # LayerNorm with (1 + w), squared-ReLU MLP without a gate, RoPE on half a head
    "nemotron": (NemotronConfig, dict(head_dim=8)),
    "arcee": (ArceeConfig, dict(head_dim=8)),  # squared-ReLU MLP without a gate
    # mixtures of experts (4 experts, 2 per token) over the dense types' attention
    "mixtral": (MixtralConfig, dict(sliding_window=4, **MOE)),
    "qwen2_moe": (Qwen2MoeConfig, dict(num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=16,
                                       shared_expert_intermediate_size=16)),  # + a shared one
    "olmoe": (OlmoeConfig, dict(num_experts=4, num_experts_per_tok=2)),  # q/k norms
    "phimoe": (PhimoeConfig, dict(sliding_window=5, **MOE)),  # LayerNorm, a window everywhere
    "granitemoe": (GraniteMoeConfig, dict(GRANITE, **MOE)),
    "granitemoeshared": (GraniteMoeSharedConfig, dict(GRANITE, **MOE,
                                                      shared_intermediate_size=16)),
    # dense first layer, then experts with a shared one; partial RoPE, q/k/v biases
    "glm4_moe": (Glm4MoeConfig, dict(head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
                                     moe_intermediate_size=16, first_k_dense_replace=1,
                                     n_group=1, topk_group=1)),
    "ernie4_5_moe": (Ernie4_5_MoeConfig, dict(head_dim=8, moe_num_experts=4, moe_k=2,
                                              moe_intermediate_size=16, moe_layer_start_index=1,
                                              moe_num_shared_experts=1)),
    # eager attention with a learned sink per head, local and global layers, biased q/k/v/o
    # (yarn RoPE, scaled to this size)
    "gpt_oss": (GptOssConfig, dict(head_dim=8, sliding_window=4, **MOE, rope_parameters=dict(
        rope_type="yarn", factor=4.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
        original_max_position_embeddings=128, rope_theta=150000.0))),
    # EXAONE 4's attention, a dense first layer, then experts with a shared one
    "exaone_moe": (ExaoneMoeConfig, dict(head_dim=8, sliding_window=4, sliding_window_pattern=2,
                                         num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=16, layer_types=None,
                                         mlp_layer_types=None)),
    "seed_oss": (SeedOssConfig, dict(head_dim=8)),  # q/k/v biases without an o one
    # Granite 4.0-H: Mamba2 layers (2 groups; chunks of 8 positions, so prompts cross them)
    # between attention ones without positions (NoPE), experts + a shared MLP
    "granitemoehybrid": (hybrid_config(GraniteMoeHybridConfig), dict(
        GRANITE, **MOE, shared_intermediate_size=16, position_embedding_type=None,
        mamba_n_heads=4, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=8)),
    # Bamba: Mamba2 layers (2 groups, chunks of 8) between attention ones with RoPE on half a
    # head (Bamba's config sets it); a final_layernorm, a pre_ff_layernorm and feed_forward
    "bamba": (bamba_config, dict(mamba_n_heads=4, mamba_n_groups=2, mamba_d_state=8,
                                 mamba_chunk_size=8)),
    # Nemotron-H: blocks of one mixer each (Mamba2 with 2 groups and chunks of 8, attention
    # without positions, experts with a shared one; a relu2 MLP from 5 layers), an untied
    # head, norm_f
    "nemotron_h": (nemotron_h_config, dict(
        head_dim=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=2, ssm_state_size=8,
        chunk_size=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=16, tie_word_embeddings=False)),
    # Falcon-H1: attention and a Mamba2 mixer (2 groups, chunks of 8) side by side in every
    # layer, muP multipliers everywhere (embeddings, logits, each branch's input and output,
    # the mixer's projections per channel, keys, MLP), here each set apart from 1
    "falcon_h1": (FalconH1Config, dict(
        head_dim=8, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8,
        mamba_chunk_size=8, mamba_d_ssm=64, mamba_rms_norm=True, embedding_multiplier=3.0,
        lm_head_multiplier=0.5, attention_in_multiplier=0.7, attention_out_multiplier=0.8,
        ssm_in_multiplier=1.3, ssm_out_multiplier=0.9, ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.05],
        mlp_multipliers=[0.9, 1.1], key_multiplier=0.6)),
    # Phi-1 to Phi-2: attention and a gateless MLP in parallel from one LayerNorm, biases,
    # RoPE on half a head, q/k LayerNorms (set), embedding dropout, final_layernorm
    "phi": (PhiConfig, dict(qk_layernorm=True, partial_rotary_factor=0.5)),
    # Pythia: fused query_key_value, RoPE on a quarter of a head, attention and MLP in parallel
    # (use_parallel_residual), a cache named layer_past, embed_in / embed_out / final_layer_norm
    "gpt_neox": (GPTNeoXConfig, dict(rotary_pct=0.25, use_parallel_residual=True,
                                     tie_word_embeddings=False)),
    # EXAONE 3 and 3.5, InternLM3 and IQuest-Coder: transformers builds them with Llama's classes
    "exaone": (ExaoneConfig, dict(head_dim=8)),
    "internlm3": (InternLM3Config, dict(head_dim=8)),
    "iquestcoder": (IQuestCoderConfig, dict(head_dim=8)),
    # Param-2 MoE and Sarvam MoE: built with GLM-4.5's mixture-of-experts classes (q/k norms set)
    "param2moe": (Param2MoeConfig, GLM_MOE),
    "sarvam_moe": (SarvamMoEConfig, GLM_MOE),
    # BitNet b1.58: norms inside attention and MLP before their output projections, squared ReLU
    "bitnet": (BitNetConfig, dict()),
    # MiniMax-M2: q/k norms over all heads at once, experts (4, 2 per token) in every layer
    "minimax_m2": (MiniMaxM2Config, dict(head_dim=8, **MOE)),
    # Hunyuan-A13B: q/k LayerNorms after RoPE, experts with a shared MLP
    "hunyuan_v1_moe": (HunYuanMoEV1Config, dict(head_dim=8, num_experts=4, moe_topk=2)),
    # Trinity (Arcee's AFMoE): gated attention heads, q/k norms, norms around the MLP, local and
    # global layers, a dense first layer, then experts with a shared one; embeddings scaled by
    # sqrt(hidden_size) outside their module (mup_enabled, as Trinity's configs set it)
    "afmoe": (local_and_global(AfmoeConfig), dict(head_dim=8, sliding_window=4, **QWEN_MOE4,
                                                 num_dense_layers=1, num_shared_experts=1,
                                                 mup_enabled=True)),
    # Code World Model: a global layer then local ones, Llama 3's RoPE scaling
    "cwm": (CwmConfig, dict(head_dim=8, sliding_window=4)),
    # JetMoE: mixtures of attention heads (queries and outputs per expert) and of MLP experts
    "jetmoe": (JetMoeConfig, dict(**MOE)),
    # Persimmon: fused query_key_value, q/k LayerNorms, RoPE on half a head, squared-ReLU MLP
    "persimmon": (PersimmonConfig, dict()),
    # Differential attention: two softmax maps subtracted (a learned lambda), a group norm
    "diffllama": (DiffLlamaConfig, dict(head_dim=8)),
    # Mellum 2: Qwen3 MoE's attention, local and global layers with a RoPE base each
    "mellum": (local_and_global(MellumConfig), dict(head_dim=8, sliding_window=4, **QWEN_MOE4)),
    # Laguna: gated heads, q/k norms, local and global layers (RoPE on half of a global head),
    # a dense first MLP then experts with a shared one
    "laguna": (local_and_global(LagunaConfig), dict(head_dim=8, sliding_window=4, **QWEN_MOE)),
    # Kolibri 1: EXAONE 4's attention (q/k norms), norms after attention and MLP, local and
    # global layers, experts with a shared one
    "kolibri1": (local_and_global(Kolibri1Config), dict(head_dim=8, sliding_window=4,
                                                       **QWEN_MOE)),
    # Hunyuan v3: q/k norms, experts with a shared one
    "hy_v3": (HYV3Config, dict(head_dim=8, **QWEN_MOE4, num_shared_experts=1)),
    # Apertus 1.5: q/k norms, norms named for their sublayers, Llama 3's RoPE scaling
    "apertus1p5_text": (Apertus1p5TextConfig, dict()),
    # Ergo: fused qkv_proj, q/k norms, gated residuals, norms around every sublayer, local
    # layers with RoPE and global ones without, a dense first MLP then experts
    "ergo": (local_and_global(ErgoConfig), dict(sliding_window=4, **QWEN_MOE4)),
    # xIELU MLP without a gate, q/k norms, Llama 3's RoPE scaling (scaled to this size)
    "apertus": (ApertusConfig, dict(head_dim=8, qk_norm=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=12000000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=128))),
    "ministral3": (Ministral3Config, MINISTRAL3),
    # Ministral 3 3B-14B as on the hub: the language model above beside a vision tower
    "mistral3": (mistral3_config, MINISTRAL3),
    # local and global layers
    "ministral": (local_and_global(MinistralConfig), dict(head_dim=8, sliding_window=4)),
    # Gemma 2's eager attention with capped scores and capped logits, no norms after sublayers
    "vaultgemma": (VaultGemmaConfig, dict(head_dim=8, sliding_window=4,
                                          attn_logit_softcapping=5.0,
                                          final_logit_softcapping=10.0)),
    # LayerNorm, biases everywhere, an MLP without a gate (c_fc, c_proj), a window everywhere
    "starcoder2": (Starcoder2Config, dict(sliding_window=4, use_bias=True)),
    # q/k norms after RoPE; RoPE's base stretched by a fixed NTK alpha
    "hunyuan_v1_dense": (HunYuanDenseV1Config, dict(head_dim=8, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, alpha=1000.0, factor=1.0))),
    # weightless norms, one before layer 0 too, q/k norms, squared-ReLU MLP, capped logits
    "nanochat": (NanoChatConfig, dict(final_logit_softcapping=15.0)),
    "jais2": (Jais2Config, dict(head_dim=8)),  # LayerNorm, biased squared-ReLU MLP, no gate
    # OLMo 2's norms after sublayers around experts (4, 2 per token)
    "flex_olmo": (FlexOlmoConfig, dict(num_experts=4, num_experts_per_tok=2)),
    # Llama's attention, GLM 4 MoE's experts (with a shared one)
    "solar_open": (SolarOpenConfig, dict(head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=16, n_group=1, topk_group=1)),
    # Cohere 2's local (RoPE) and global (none) layers, here a dense first one (global, with
    # RoPE) then experts (4, 2 per token) with a shared MLP; logits scaled
    "cohere2_moe": (Cohere2MoeConfig, dict(head_dim=8, sliding_window=4, sliding_window_pattern=2,
                                           first_k_dense_replace=1, num_experts=4,
                                           prefix_dense_intermediate_size=16,
                                           num_experts_per_tok=2, num_shared_experts=1,
                                           logit_scale=0.5)),
    # Gated DeltaNet layers (a causal convolution and a recurrent state) between gated
    # attention ones with q/k norms and RoPE on half a head; (1 + w) norms, set non-zero
    "qwen3_5_text": (hybrid_config(Qwen3_5TextConfig), QWEN3_5),
    # Qwen 3.5's layers over experts (4, 2 per token) with a gated shared one
    "qwen3_5_moe_text": (hybrid_config(Qwen3_5MoeTextConfig), dict(QWEN3_5, **QWEN_MOE)),
    # Qwen3-Next: its Gated DeltaNet projects q, k, v, z and b, a fused, interleaved per key
    # head; a dense MLP on layer 0, experts with a gated shared one after
    "qwen3_next": (hybrid_config(Qwen3NextConfig), dict(
        QWEN3_5, **QWEN_MOE, mlp_only_layers=[0], rope_parameters=dict(
            rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5))),
    # LFM2: gated short convolutions (kernel 3) between attention layers with q/k norms and an
    # out_proj; an MLP of w1, w2, w3 at the configured width, the final norm embedding_norm
    "lfm2": (hybrid_config(Lfm2Config, "conv"), dict(block_auto_adjust_ff_dim=False)),
    # LFM2-8B-A1B: LFM2's layers, a dense MLP on layer 0, then experts (4, 2 per token; sigmoid
    # router with an expert bias); the rotary embedding is pos_emb
    "lfm2_moe": (hybrid_config(Lfm2MoeConfig, "conv"), dict(
        num_dense_layers=1, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
    # LFM3: LFM2's convolutions (kernel 7 here, as LFM3's) between sliding-window attention
    # layers (RoPE) and full ones (proportional RoPE on half a head); its attention gates each
    # head's output (g_proj) and names its output o_proj; norms after both sublayers
    "lfm3": (lfm3_config, dict(head_dim=8, sliding_window=4)),
    # DeepSeek-V3 and R1 (Moonlight's and Kimi K2's layers too): multi-head latent attention (MLA
    # above), its rotary part in interleaved pairs (rope_interleave), yarn with mscale (softmax
    # scale grown); sigmoid routing with a bias (noaux_tc) within the better of 2 groups; a dense
    # layer 0
    "deepseek_v3": (DeepseekV3Config, dict(MLA, **MLA_MOE, n_group=2, topk_group=1,
                                           rope_parameters=deepseek_yarn(1.0))),
    # DeepSeek-V2: MLA rotating interleaved pairs as complex numbers, here with V2-Lite's
    # uncompressed queries (q_proj); yarn with V2's mscale 0.707; softmax routing, V2's
    # group-limited greedy (within the better of 2 groups), 2 shared experts; a dense layer 0
    "deepseek_v2": (DeepseekV2Config, dict(MLA, **MLA_MOE, q_lora_rank=None, n_shared_experts=2,
                                           topk_method="group_limited_greedy", n_group=2,
                                           topk_group=1, rope_parameters=deepseek_yarn(0.707))),
    # GLM-4.7-Flash: DeepSeek-V3's MLA and experts (without groups), values as wide as queries
    # and keys; dense and sparse MLPs by mlp_layer_types (a dense first layer)
    "glm4_moe_lite": (Glm4MoeLiteConfig, dict(MLA, **MLA_MOE, v_head_dim=12, n_group=1,
                                              topk_group=1)),
    # MiniCPM3: MLA rotating half-heads (not interleaved), longrope up to its whole context (as
    # 32,768 of 32,768); embeddings scaled inside their module (scale_emb), residual branches
    # by scale_depth / sqrt(layers), the final hidden states divided by hidden / dim_model_base
    # before the head (outside it: here by 4)
    "minicpm3": (MiniCPM3Config, dict(MLA, scale_emb=3.0, scale_depth=1.4, dim_model_base=8,
                                      rope_parameters=dict(
                                          rope_type="longrope", rope_theta=10000.0,
                                          original_max_position_embeddings=512,
                                          short_factor=[1.0, 1.3], long_factor=[1.1, 2.0]))),
    # Youtu-LLM: DeepSeek-V3's MLA over a dense MLP in every layer, tied embeddings
    "youtu": (YoutuConfig, dict(MLA)),
    # Sarvam's MLA models (sarvam-105b): DeepSeek-V3's classes without query compression
    # (q_proj), routing over all experts at once (1 group), yarn; weights drawn as the others'
    # (its default 0.006, for width 4,096, leaves positions under the tests' tolerance here)
    "sarvam_mla": (SarvamMLAConfig, dict(MLA, **MLA_MOE, q_lora_rank=None,
                                         rope_parameters=deepseek_yarn(1.0),
                                         initializer_range=0.02)),
    # Mamba2 alone (Mamba-Codestral): blocks of an RMS norm and a Mamba2 mixer (4 heads of 16,
    # 2 groups, chunks of 8), no attention, no positions; the residual stream in float32
    # (residual_in_fp32), embeddings, norm_f
    "mamba2": (attention_free(Mamba2Config), dict(num_heads=4, head_dim=16, n_groups=2,
                                                  state_size=8, chunk_size=8)),
    # Mamba (state-spaces/mamba-130m..2.8b): blocks of an RMS norm and a Mamba1 mixer (a
    # causal convolution on x, x_proj to dt's rank-4 input, B and C, dt_proj, the selective
    # scan over a state of 8 per channel, D, a silu gate), the residual in float32
    "mamba": (attention_free(MambaConfig), dict(state_size=8, time_step_rank=4)),
    # FalconMamba: Mamba's blocks, RMS norms without weights on dt's input, B and C
    "falcon_mamba": (attention_free(FalconMambaConfig), dict(state_size=8, time_step_rank=4)),
    # Jamba: Mamba1 layers (RMS norms with weights on dt's input, B and C) between attention ones
    # without positions (attn_layer_period 2, offset 1), experts (4, 2 per token) in the Mamba
    # layers and dense MLPs in the attention ones; final_layernorm, an untied head
    "jamba": (JambaConfig, dict(mamba_d_state=8, mamba_dt_rank=4, attn_layer_period=2,
                                attn_layer_offset=1, expert_layer_period=2,
                                expert_layer_offset=0, num_experts=4, num_experts_per_tok=2,
                                tie_word_embeddings=False)),
}
NONZERO_NORMS = ("qwen3_5_text", "qwen3_5_moe_text", "qwen3_next")
"""Types whose norms start as the identity (weights of ``1 + w`` at zero): their tiny models get
random norm weights, so a norm the split skipped or misplaced changes the output."""


def tiny_config(arch: str = "llama", num_layers: int = 3,
                **overrides: object) -> PretrainedConfig:
    """A config of ``arch`` (a key of :data:`TINY_ARCHITECTURES`) at toy size: GQA (4 query,
    2 key/value heads), hidden 32, tied embeddings unless the architecture's entry says."""
    if arch not in TINY_ARCHITECTURES:
        raise ValueError(f"no tiny {arch!r} model; choose one of {', '.join(TINY_ARCHITECTURES)}")
    config_class, own = TINY_ARCHITECTURES[arch]
    fields: dict[str, object] = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    fields.update(own)
    fields.update(overrides)
    return config_class(**fields)


def tiny_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM in eval mode, float32, with SDPA attention (eager for
    :data:`~automr.llm.split.EAGER_ONLY_TYPES`)."""
    torch.manual_seed(seed)
    model = auto_class(config.model_type).from_config(
        config, attn_implementation=attention_for(config.model_type))
    if config.model_type in NONZERO_NORMS:
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if name.endswith("norm.weight"):
                    weight.normal_(0.0, 0.3)
    for module in model.modules():
        if isinstance(module, (GraniteMoeHybridMambaLayer, BambaMixer, NemotronHMamba2Mixer,
                               FalconH1Mixer, Mamba2Mixer)):
            _mamba2_init(module)
        if isinstance(module, (MambaMixer, FalconMambaMixer, JambaMambaMixer)):
            _mamba1_init(module)
        if isinstance(module, SHORT_CONVS):
            _short_conv_init(module)
    return model.eval()


@torch.no_grad()
def _short_conv_init(mixer: torch.nn.Module) -> None:
    """An LFM2 short convolution whose every tap matters at this size: its input projection
    (gates ``B``, ``C`` and values ``x``) at unit scale and the kernel at unit scale over its
    taps (transformers' 0.02 leaves ``B * x`` convolved and gated by ``C`` a thousandth of the
    residual stream); its biases, where it has them (``conv_bias``), random too (transformers
    zeroes them). A masked position the convolution saw, or one that shifted its window, then
    changes the logits."""
    mixer.in_proj.weight.normal_(0.0, mixer.in_proj.in_features ** -0.5)
    mixer.conv.weight.normal_(0.0, mixer.conv.kernel_size[0] ** -0.5)
    for module in (mixer.in_proj, mixer.conv, mixer.out_proj):
        if module.bias is not None:
            module.bias.normal_(0.0, 0.5)


@torch.no_grad()
def _mamba2_init(mixer: torch.nn.Module) -> None:
    """A Mamba2 mixer whose state matters at this size (transformers initialises ``A`` to
    ``1..heads`` and ``dt_bias`` to 1, a state forgotten within a few positions, and the input
    projection small, which leaves the output to the ``D`` skip): ``A`` uniform in 1..16 (as
    Mamba2's), the time step log-uniform in 0.01..0.5 (Mamba2's is 0.001..0.1), the input
    projection at unit scale, ``D`` and the gated norm random. A masked position that decayed
    or wrote the state, or a convolution that saw it, then changes the logits."""
    heads = mixer.num_heads
    mixer.A_log.copy_(torch.log(1 + 15 * torch.rand(heads)))
    dt = torch.exp(math.log(0.01) + torch.rand(heads) * (math.log(0.5) - math.log(0.01)))
    mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
    mixer.in_proj.weight.normal_(0.0, mixer.in_proj.in_features ** -0.5)
    mixer.D.normal_()
    if hasattr(mixer.norm, "weight"):  # Falcon-H1's may be none (mamba_rms_norm False)
        mixer.norm.weight.normal_(1.0, 0.3)


@torch.no_grad()
def _mamba1_init(mixer: torch.nn.Module) -> None:
    """A Mamba1 mixer whose state matters at this size, as :func:`_mamba2_init`'s: ``A`` per
    channel and state entry uniform in 1..16, the time step log-uniform in 0.01..0.5, the input
    projection, ``x_proj`` and ``dt_proj`` at unit scale (transformers' small ones leave the
    output to the ``D`` skip), ``D`` random. A masked position that decayed or wrote the
    state, or a convolution that saw it, then changes the logits."""
    channels, size = mixer.A_log.shape
    mixer.A_log.copy_(torch.log(1 + 15 * torch.rand(channels, size)))
    dt = torch.exp(math.log(0.01) + torch.rand(channels) * (math.log(0.5) - math.log(0.01)))
    mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
    for linear in (mixer.in_proj, mixer.x_proj, mixer.dt_proj):
        linear.weight.normal_(0.0, linear.in_features ** -0.5)
    mixer.D.normal_()
