"""An exact split of a Hugging Face decoder-only causal LM at layer L.

``lower`` runs the embeddings and layers ``0..L-1``; ``upper`` runs layers ``L..``, the final
norm and the head. The decoder layers are called directly with an explicit 4D additive mask
and rotary embeddings computed from positions derived from the mask, so

* ``upper(lower(x))`` equals the full model for every ``L`` in ``0..num_layers``;
* states may carry inserted positions (memory tokens) with correct positions and masks;
* each half can decode incrementally with its own :class:`KVCache`.

This module and :mod:`automr.llm.recurrent` (the recurrent mixers it runs its own way) are the
only ones that touch transformers' layer internals.
"""

import inspect
import warnings

import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from automr.checks import beartype
from automr.errors import AutomrError
from automr.llm.recurrent import (
    gated_delta_masked,
    mamba2_masked,
    mamba_masked_for,
    short_conv_masked,
)
from automr.state import KVCache, LayerState
from automr.types import Positions, TokenIds, TokenMask, as_bool_mask

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "smollm3", "phi3",
                         "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "olmo3", "granite",
                         "cohere", "cohere2", "exaone4", "ernie4_5", "glm", "glm4", "helium",
                         "stablelm", "nemotron", "arcee", "mixtral", "qwen2_moe", "olmoe",
                         "phimoe", "granitemoe", "granitemoeshared", "glm4_moe", "ernie4_5_moe",
                         "gpt_oss", "exaone_moe", "seed_oss", "apertus", "granitemoehybrid",
                         "ministral3", "ministral", "vaultgemma", "starcoder2", "hunyuan_v1_dense",
                         "nanochat", "jais2", "flex_olmo", "solar_open", "cohere2_moe",
                         "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "bamba",
                         "nemotron_h", "gemma4_text", "falcon_h1", "lfm2", "lfm2_moe", "lfm3",
                         "phi", "gpt_neox", "exaone", "internlm3", "iquestcoder", "param2moe",
                         "sarvam_moe", "bitnet", "minimax_m2", "hunyuan_v1_moe", "afmoe", "cwm",
                         "jetmoe", "persimmon", "diffllama", "mellum", "laguna",
                         "kolibri1", "hy_v3", "apertus1p5_text", "ergo", "deepseek_v3",
                         "deepseek_v2", "glm4_moe_lite", "minicpm3", "youtu", "sarvam_mla",
                         "gemma4_unified_text", "mamba2", "mamba", "falcon_mamba", "jamba")
LANGUAGE_MODELS = {"gemma3": ("gemma3_text",), "gemma4": ("gemma4_text",),
                   "gemma4_unified": ("gemma4_unified_text",),
                   "mistral3": ("ministral3", "mistral")}
"""Each vision-language type whose language model the split runs, and the types that language
model may have: Gemma 3 4B, 12B and 27B (``gemma3_text``); Gemma 4 (``gemma4_text``; 12B:
``gemma4_unified_text``); Ministral
3 3B, 8B and 14B (``ministral3``) and Mistral Small 3.1 and 3.2 (``mistral``), both
``mistral3``. Their classes call the language model on text alone and add nothing to its logits
but Gemma 4's cap (:data:`CAPPING_WRAPPERS`), nor to its input but Gemma 4's placeholder ids
(:data:`PLACEHOLDER_WRAPPERS`); other pairs are refused."""
CAPPING_WRAPPERS = ("gemma4", "gemma4_unified")
"""Vision-language types whose class caps the logits with its text config's
``final_logit_softcapping`` (Gemma 3's applies no cap, whatever its text config says)."""
PLACEHOLDER_WRAPPERS = ("gemma4", "gemma4_unified")
"""Vision-language types whose class embeds its image, video and audio placeholder ids (the
config's ``image_token_id``, ``video_token_id``, ``audio_token_id``, ids of the text
vocabulary) as the text config's ``pad_token_id``, on text alone too."""
VISION_LANGUAGE_TYPES = tuple(LANGUAGE_MODELS)
"""Types whose causal LM holds a language model of a supported type beside a vision tower
(:data:`LANGUAGE_MODELS`): the split, fine-tuning and memory run the language model, on text."""
IMAGE_TEXT_TYPES = ("mistral3",)
"""Vision-language types transformers' ``AutoModelForCausalLM`` does not build (it maps
Gemma 3's, not Mistral 3's): they load with ``AutoModelForImageTextToText``."""
GRANITE_TYPES = ("granite", "granitemoe", "granitemoeshared", "granitemoehybrid")
"""Types that scale embeddings and logits outside the modules the split calls, as Granite."""
MUP_EMBEDDING_TYPES = ("afmoe",)
"""Types that, where their config sets ``mup_enabled`` (Trinity's do), multiply the embeddings
by ``sqrt(hidden_size)`` outside the embedding module."""
HEAD_INPUT_SCALING_TYPES = ("minicpm3",)
"""Types that divide the final hidden states by their config's ``logits_scaling`` before the
head, outside the modules the split calls (MiniCPM3; its embeddings and residual branches are
scaled inside its modules)."""
PARALLEL_TYPES = ("falcon_h1",)
"""Types whose every layer (``hybrid``) runs attention and a Mamba2 mixer side by side on one
norm's output, their scaled sum added to the residual (Falcon-H1); the split runs the mixer
through :func:`mamba2_masked`."""
SUPPORTED_ATTENTION = ("sdpa", "eager")
ATTENTION_LAYERS = {"full_attention", "sliding_attention"}
"""The layer types (a config's ``layer_types``) the split runs."""
LINEAR_ATTENTION_TYPES = ("qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "granitemoehybrid",
                          "bamba", "nemotron_h", "mamba2", "mamba", "falcon_mamba", "jamba")
"""Types whose ``linear_attention`` layers the split runs too, exactly, with masked positions
anywhere: the Gated DeltaNet of Qwen 3.5, dense and mixture of experts, and Qwen3-Next
(:func:`gated_delta_masked`), the Mamba2 mixers of Granite 4.0-H, Bamba, Nemotron-H and pure
Mamba2 models (Mamba-Codestral; :func:`mamba2_masked`) and the Mamba1 mixers of Mamba,
FalconMamba and Jamba (:func:`mamba1_masked`; transformers names them all ``linear_attention``
too); other types' are refused."""
SHORT_CONV_TYPES = ("lfm2", "lfm2_moe", "lfm3")
"""Types whose ``conv`` layers the split runs too, exactly, with masked positions anywhere: the
gated short convolutions of LFM2, dense and mixture of experts, and LFM3
(:func:`short_conv_masked`)."""
TOKENWISE_LAYERS = {"nemotron_h": {"mlp", "moe"}}
"""Layer types of a model type that mix nothing across positions: Nemotron-H's blocks with an MLP
or experts alone (norm, MLP, residual), run as the model runs them."""
EAGER_ONLY_TYPES = ("gemma2", "gpt_oss", "vaultgemma")
"""Types whose attention transformers runs eager only (Gemma 2 and VaultGemma cap their
attention scores, gpt-oss adds a learned sink to each head's softmax)."""


ATTENTION_FREE_TYPES = ("mamba2", "mamba", "falcon_mamba")
"""Types without attention, every layer a Mamba mixer: transformers refuses to load them with
``sdpa`` (they load ``eager``, which nothing uses)."""


def attention_for(model_type: str) -> str:
    """The attention implementation a model of ``model_type`` is loaded with: ``sdpa``, or
    ``eager`` for :data:`EAGER_ONLY_TYPES` (both take the split's explicit masks) and
    :data:`ATTENTION_FREE_TYPES`."""
    return "eager" if model_type in EAGER_ONLY_TYPES + ATTENTION_FREE_TYPES else "sdpa"


def base_model_of(model: PreTrainedModel | nn.Module) -> PreTrainedModel | nn.Module:
    """``model`` without a peft wrapper (itself if it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_config(model: PreTrainedModel | nn.Module) -> PretrainedConfig:
    """The configuration of ``model``'s language model: its own config, or the ``text_config``
    of a model that wraps one beside a vision tower (Gemma 3 4B-27B, whose causal LM class is
    ``Gemma3ForConditionalGeneration``; Ministral 3's ``Mistral3ForConditionalGeneration``).
    Its sizes (layers, width, vocabulary) are the ones the split, fine-tuning and memory use."""
    return base_model_of(model).config.get_text_config()


def layer_values(config: PretrainedConfig, name: str) -> list[object]:
    """Field ``name`` of each layer of ``config``: the layer's own where a config varies it
    (Gemma 4's global layers have wider heads and fewer key/value heads; reading one value
    for the model fails there), else the config's one value; None where it has none."""
    per_layer = getattr(config, "per_layer_config", None)
    return [getattr(per_layer[index], name, None) if per_layer is not None
            else getattr(config, name, None) for index in range(config.num_hidden_layers)]


def supported_text_config(base: nn.Module) -> PretrainedConfig:
    """The config of ``base``'s language model (:func:`text_config`), refused in one line
    unless the layer split supports it (:data:`SUPPORTED_MODEL_TYPES`, or a wrapper of
    :data:`LANGUAGE_MODELS` around one it names)."""
    config = text_config(base)
    kind = base.config.model_type
    wrapped = config is not base.config
    if config.model_type not in SUPPORTED_MODEL_TYPES or (
            wrapped and config.model_type not in LANGUAGE_MODELS.get(kind, ())):
        around = f" with a {config.model_type} language model" if wrapped else ""
        wrappers = [f"{wrapper} (around {' or '.join(inner)})"
                    for wrapper, inner in LANGUAGE_MODELS.items()]
        raise AutomrError(
            f"model type {kind!r} is not supported by the layer split{around}; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES + tuple(wrappers))}"
        )
    return config


def decoder_layers_name(model: PreTrainedModel | nn.Module) -> str:
    """The qualified name of the decoder layers among the base model's modules: ``model.layers``,
    or ``model.language_model.layers`` beside a vision tower (whose own ``layers`` LoRA must
    not touch); a model the split does not support is refused."""
    base = base_model_of(model)
    supported_text_config(base)
    layers = base.get_decoder().layers
    return next(name for name, module in base.named_modules() if module is layers)


def layer_linear_modules(model: PreTrainedModel | nn.Module, first_layer: int = 0) -> list[str]:
    """The names of the linear modules (``q_proj``, ...) of decoder layers ``first_layer..``:
    what LoRA can target there (``automr finetune --lora-targets``). Layers may differ (dense
    MLPs between mixtures of experts): a name any of them has is listed, but not a model's own
    subclass of ``nn.Linear`` with another ``forward`` (Phi-3.5-MoE's ``router`` returns
    routing weights and chosen experts, no tensor LoRA can add to: peft failed at the first
    forward). A model the split does not support is refused."""
    base = base_model_of(model)
    supported_text_config(base)
    return sorted({name.rsplit(".", 1)[-1]
                   for block in base.get_decoder().layers[first_layer:]
                   for name, module in block.named_modules() if _lora_linear(module)})


def _lora_linear(module: nn.Module) -> bool:
    """Whether LoRA can wrap ``module``: an ``nn.Linear`` whose forward gives the linear map
    (quantised linears of transformers' integrations are kept; a model's router is not)."""
    kind = type(module)
    return isinstance(module, nn.Linear) and (
        kind.forward is nn.Linear.forward or not kind.__module__.startswith("transformers.models."))


class HFSplitLLM:
    """A :class:`~automr.interfaces.SplitLLM` over a transformers causal LM (also peft-wrapped).

    The model must use ``sdpa`` or ``eager`` attention (explicit 4D masks); dtype and device
    follow the model.
    """

    def __init__(self, model: PreTrainedModel | nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise AutomrError(f"HFSplitLLM splits a model (an nn.Module: loaded.model of a "
                              f"LoadedModel), not a {type(model).__name__}")
        base = base_model_of(model)
        config = supported_text_config(base)
        kind = base.config.model_type
        kinds = set(getattr(config, "layer_types", None) or ()) - ATTENTION_LAYERS
        if config.model_type in LINEAR_ATTENTION_TYPES:
            kinds.discard("linear_attention")
        if config.model_type in SHORT_CONV_TYPES:
            kinds.discard("conv")
        kinds -= TOKENWISE_LAYERS.get(config.model_type, set())
        if config.model_type in PARALLEL_TYPES:
            kinds.discard("hybrid")
        if kinds:
            raise AutomrError(
                f"this {config.model_type} model has {', '.join(sorted(kinds))} layers (Mamba "
                f"or linear attention: a recurrent state, not attention over a mask); the layer "
                f"split runs attention layers, and the linear attention of Qwen 3.5 and "
                f"Qwen3-Next, the Mamba layers of Granite 4.0-H, Bamba, Nemotron-H, "
                f"Falcon-H1, Mamba, Mamba2, FalconMamba and Jamba and the short convolutions of "
                f"LFM2 and LFM3, only")
        if getattr(config, "use_bidirectional_attention", None) in (True, "all"):
            raise AutomrError(  # Gemma 4's "vision": image tokens only, text stays causal
                f"this {config.model_type} model attends bidirectionally (an encoder such as "
                f"EmbeddingGemma); the layer split is for causal LMs"
            )
        if getattr(config, "hidden_size_per_layer_input", None):
            raise AutomrError(
                f"this {config.model_type} model feeds every layer per-layer embeddings of the "
                f"token ids (Gemma 4 E2B and E4B's PLE), which the soft tokens a combiner "
                f"inserts at layer L do not have; the layer split runs models without them "
                f"(Gemma 4 26B-A4B and 31B)")
        attention = config._attn_implementation
        if attention not in SUPPORTED_ATTENTION:
            raise AutomrError(
                f"attention implementation {attention!r} cannot take the split's explicit masks; "
                f"load the model with attn_implementation='sdpa' (or 'eager')"
            )
        self.model = model
        self.config = config
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        self.final_norm: nn.Module = next(getattr(self.decoder, name) for name in (
            "final_layernorm", "final_layer_norm", "norm_f", "norm", "embedding_norm")
            if hasattr(self.decoder, name))
        """The norm before the head (Bamba's and Phi's ``final_layernorm``, GPT-NeoX's
        ``final_layer_norm``, Nemotron-H's, Mamba's and Mamba2's ``norm_f``, LFM2's
        ``embedding_norm`` (applied last, despite its name), every other type's ``norm``)."""
        self.sliding_window = getattr(config, "sliding_window", None) if getattr(
            config, "use_sliding_window", True) else None
        """How many positions a sliding-window layer sees (itself and the nearest earlier
        ones), or None where the model has none."""
        types = getattr(config, "layer_types", None)
        self.linear_layers = frozenset(
            index for index, kind in enumerate(types or ()) if kind in ("linear_attention", "conv"))
        """The layers with a recurrent state (Gated DeltaNet, Mamba2, Mamba1, LFM2's short
        convolution) instead of attention."""
        self.parallel_layers = frozenset(
            index for index, kind in enumerate(types or ()) if kind == "hybrid")
        """The layers with attention and a Mamba2 mixer side by side (Falcon-H1)."""
        self.layer_windows: list[int | None] = [
            self.sliding_window if types is None or types[index] == "sliding_attention" else None
            for index in range(config.num_hidden_layers)]
        """Each layer's window: every layer's (Mistral, Phi-3) or its type's (Gemma 2 and 3's
        local layers, Qwen's upper ones where set); None: full attention."""
        forward = inspect.signature(self.decoder.layers[0].forward).parameters
        self.cache_argument = next(
            (name for name in ("cache", "layer_past") if name in forward), "past_key_values")
        """What a decoder layer's forward calls its KV cache: ``cache`` from transformers 5.24,
        ``past_key_values`` before, GPT-NeoX's ``layer_past`` (a layer takes any keyword: a
        wrong name was dropped)."""
        self.shares_kv = "shared_kv_states" in forward
        """Whether layers pass keys and values on to later ones (Gemma 4: the last layers of a
        type may reuse the last earlier one's instead of their own): each half's call gives its
        layers one place for them."""
        self.kv_sources = kv_sources(config)
        """Each layer that reuses another's keys and values, and that layer."""
        self.rotary = getattr(self.decoder, "rotary_emb", None) or getattr(
            self.decoder, "pos_emb", None)
        """The rotary embedding (LFM2-MoE's ``pos_emb``), or None where the model has none
        (Granite 4: no positions)."""
        self.rotary_types = (list(config.layer_types)
                             if hasattr(self.rotary, "layer_types") else None)
        """Each layer's type where the rotary embedding depends on it (Gemma 3), else None."""
        self.embedding_multiplier = (
            config.embedding_multiplier if config.model_type in GRANITE_TYPES + PARALLEL_TYPES
            else config.hidden_size ** 0.5 if config.model_type in MUP_EMBEDDING_TYPES
            and getattr(config, "mup_enabled", False) else None)
        """What Granite and Falcon-H1 multiply their embeddings by, outside the embedding
        module (and Trinity, with ``mup_enabled``, by the square root of its width)."""
        self.residual_dtype = (self.head.weight.dtype
                               if getattr(config, "residual_in_fp32", False) else None)
        """The dtype the final norm's output is cast to before the head where the residual
        stream runs in float32 whatever the model's dtype (Mamba's and Mamba2's
        ``residual_in_fp32``: a bfloat16 model's states are float32 past its first layer)."""
        self.embedding_dropout = (config.embedding_dropout
                                  if config.model_type == "starcoder2" else 0.0)
        """The dropout StarCoder 2 applies to its embeddings in training, outside any module
        (in training mode of the embedding module: a frozen lower half runs in eval mode)."""
        self.embedding_norm = config.model_type == "nanochat"
        """Whether the embeddings go through the final norm before layer 0 (nanochat's)."""
        self.logit_scale = (config.logit_scale if config.model_type.startswith("cohere") else
                            config.lm_head_multiplier if config.model_type in PARALLEL_TYPES
                            else None)
        self.logits_scaling = (config.logits_scaling
                               if config.model_type in GRANITE_TYPES else None)
        """What Cohere and Falcon-H1 multiply their logits by and Granite divides them by
        (outside the head)."""
        self.head_input_scaling = (config.logits_scaling
                                   if config.model_type in HEAD_INPUT_SCALING_TYPES else None)
        """What MiniCPM3 divides the final norm's output by before the head, outside it
        (``hidden_size / dim_model_base``: 10 in MiniCPM3-4B)."""
        self.logit_cap = (getattr(config, "final_logit_softcapping", None)
                          if config is base.config or kind in CAPPING_WRAPPERS else None)
        """The cap on the logits (``cap * tanh(logits / cap)``) where the config sets one
        (Gemma 2's and 4's; Gemma 3's configs leave it unset, and its vision-language class
        applies none whatever its text config says)."""
        self.placeholders = tuple(
            value for name in ("image_token_id", "video_token_id", "audio_token_id")
            if (value := getattr(base.config, name, None)) is not None
        ) if kind in PLACEHOLDER_WRAPPERS and config.pad_token_id is not None else ()
        """The ids the vision-language class embeds as the pad token (Gemma 4's placeholders
        for images, video and audio), none for other models."""
        rope = getattr(config, "rope_parameters", None) or {}
        self.longrope_switch = (rope.get("original_max_position_embeddings")
                                if rope.get("rope_type") == "longrope" else None)
        """Longrope's original context (Phi-3 128k, Phi-3.5 mini, Phi-4 mini: 4,096): up to it
        every position of a sequence is rotated with the short factors, past it with the long
        ones; in a batch, each row by its own length (as the model on that row alone)."""
        kinds = getattr(self.rotary, "rope_type", None)
        kinds = kinds.values() if isinstance(kinds, dict) else (kinds,)
        self.dynamic_limit = (getattr(self.rotary, "original_max_seq_len", None)
                              or config.max_position_embeddings) if any(
            isinstance(kind, str) and "dynamic" in kind for kind in kinds) else None
        """Where the rotary embedding is dynamic NTK (InternLM3-8B's), the positions it rotates
        as configured (``max_position_embeddings``): past them it rescales the rotation of
        every position by the longest sequence of the batch (and keeps that scale for later
        calls), which no row alone would get; None for other rotary embeddings (Hunyuan's
        ``dynamic`` with a fixed ``alpha`` is static)."""
        context = getattr(config, "max_position_embeddings", None)
        self.context = context if isinstance(context, int) and context > 0 else None
        """The positions the model was trained on (``max_position_embeddings``; None where the
        config says none): a longer sequence is warned of once (:meth:`_check_context`)."""
        self._warned_context = False

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """The number of decoder layers (the config's ``num_hidden_layers``)."""
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        """The width of the layer states (the config's ``hidden_size``)."""
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """The width of the logits: the output head's ``out_features``."""
        return self.head.out_features

    @property
    def device(self) -> torch.device:
        """The device of the output head's weight."""
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the output head's weight."""
        return self.head.weight.dtype

    def new_cache(self) -> KVCache:
        """An empty cache for one half (use one for ``lower`` and another for ``upper``)."""
        return KVCache(DynamicCache())  # every layer keeps all its keys: windows are masks

    @jaxtyped(typechecker=beartype)
    def embed(self, input_ids: TokenIds) -> Float[Tensor, "batch seq hidden"]:
        """Token embeddings (the state entering layer 0)."""
        table = self.decoder.get_input_embeddings()  # embed_tokens (Nemotron-H: embeddings)
        if self.placeholders:
            placeholder = torch.isin(input_ids, input_ids.new_tensor(self.placeholders))
            input_ids = input_ids.masked_fill(placeholder, self.config.pad_token_id)
        embeddings = table(input_ids)
        if self.embedding_multiplier is not None:
            embeddings = embeddings * self.embedding_multiplier
        if self.embedding_dropout:
            embeddings = nn.functional.dropout(embeddings, self.embedding_dropout,
                                               training=table.training)
        dropout = self.embedding_dropout_module
        if dropout is not None:
            embeddings = dropout(embeddings)
        if self.embedding_norm:
            embeddings = self.decoder.norm(embeddings)
        return embeddings

    @property
    def embedding_dropout_module(self) -> nn.Module | None:
        """The decoder's dropout module on the embeddings (GPT-NeoX's ``emb_dropout``, Phi's
        ``embed_dropout``; active in training), or None."""
        return getattr(self.decoder, "emb_dropout", None) or getattr(
            self.decoder, "embed_dropout", None)

    # -- the two halves --------------------------------------------------------------------
    @jaxtyped(typechecker=beartype)
    def lower(
        self, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        cache: KVCache | None = None,
    ) -> LayerState:
        """Embeddings and layers ``0..layer-1``: the state entering layer ``layer``."""
        self._check_layer(layer)
        mask = as_bool_mask(attention_mask)
        hidden = self._run_layers(self.embed(input_ids), mask, range(layer), cache)
        return LayerState(hidden=hidden, mask=mask, layer=layer)

    @jaxtyped(typechecker=beartype)
    def upper(
        self, state: LayerState, cache: KVCache | None = None,
        logits_at: Positions | None = None,
    ) -> Float[Tensor, "batch k vocab"]:
        """Layers ``state.layer..``, the final norm and the head at ``logits_at`` (default: all)."""
        self._check_layer(state.layer)
        if logits_at is not None and len(logits_at) != state.batch_size:
            raise AutomrError(f"logits_at has {len(logits_at)} rows for a state of "
                              f"{state.batch_size}: one row of positions per sequence")
        layers = range(state.layer, self.num_layers)
        hidden = self._run_layers(state.hidden, state.mask, layers, cache)
        if logits_at is not None:
            index = logits_at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            hidden = hidden.gather(1, index)
        hidden = self.final_norm(hidden)
        if self.head_input_scaling is not None:
            hidden = hidden / self.head_input_scaling
        logits = self.head(hidden.to(self.residual_dtype) if self.residual_dtype else hidden)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logits_scaling is not None:
            logits = logits / self.logits_scaling
        if self.logit_cap is None:
            return logits
        return self.logit_cap * torch.tanh(logits / self.logit_cap)

    @jaxtyped(typechecker=beartype)
    def final_hidden(self, state: LayerState) -> Float[Tensor, "batch seq hidden"]:
        """Layers ``state.layer..`` and the final norm (no head): the model's last hidden state."""
        hidden = self._run_layers(state.hidden, state.mask, range(state.layer, self.num_layers))
        return self.final_norm(hidden)

    # -- internals ---------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer <= self.num_layers:
            raise AutomrError(f"layer {layer} is outside 0..{self.num_layers} for this model")
        crossing = sorted(reuse for reuse, source in self.kv_sources.items()
                          if source < layer <= reuse)
        if crossing:
            raise AutomrError(
                f"layer {layer} splits this model between layers that share keys and values "
                f"(layer {crossing[0]} reuses layer {self.kv_sources[crossing[0]]}'s); split "
                f"at or below layer {min(self.kv_sources.values())}, or at or above "
                f"{max(self.kv_sources) + 1}")

    def _check_context(self, positions: Tensor, bound: int | None) -> None:
        """Warn once of a sequence past :attr:`context`: transformers warns of a tokenized
        text past it, not of one that memory joined at layer L makes longer (``concat``'s
        elements beside the prompt), where the upper layers run positions the model was not
        trained on. ``bound``: the most positions the masks' widths allow (None: unknown);
        within the context the positions are not read (on CUDA a read waits for the device,
        at every decoding step)."""
        if self.context is None or self._warned_context or not positions.numel() or (
                bound is not None and bound <= self.context):
            return
        longest = int(positions.max()) + 1
        if longest > self.context:
            self._warned_context = True
            warnings.warn(f"a sequence of {longest} positions is past this model's context of "
                          f"{self.context} (max_position_embeddings): its results there are "
                          f"not the model's as trained (with memory joined to the prompt, a "
                          f"smaller --k or a combiner that adds one token per element keeps "
                          f"it within)", stacklevel=3)

    def _run_layers(
        self, hidden: Tensor, mask: Bool[Tensor, "batch seq"], layers: range,
        cache: KVCache | None = None,
    ) -> Tensor:
        positions = token_positions(mask, None if cache is None else cache.next_positions())
        past_mask = None if cache is None else cache.past_mask
        if self.longrope_switch is not None and cache is not None and past_mask is not None:
            self._check_longrope(cache.next_positions(), positions)
        if self.dynamic_limit is not None and int(positions.max()) >= self.dynamic_limit:
            raise AutomrError(
                f"a sequence of {int(positions.max()) + 1} positions is past this "
                f"{self.config.model_type} model's {self.dynamic_limit}, past which its dynamic "
                f"NTK rotary embedding rotates every position by the batch's longest sequence; "
                f"the layer split runs it within {self.dynamic_limit} positions")
        self._check_context(positions, None if cache is not None and past_mask is None else
                            mask.shape[1] + (0 if past_mask is None else past_mask.shape[1]))
        biases = {window: attention_bias(mask, past_mask, hidden.dtype, window)
                  for window in {self.layer_windows[index] for index in layers}}
        rotary = self._rotary(hidden, positions, layers)
        shared = {"shared_kv_states": {}} if self.shares_kv else {}
        for index in layers:
            if index in self.linear_layers:
                hidden = self._linear_layer(index, hidden, mask, cache)
                continue
            if index in self.parallel_layers:
                hidden = self._parallel_layer(index, hidden, mask,
                                              biases[self.layer_windows[index]], positions,
                                              rotary[index], cache)
                continue
            hidden = self.decoder.layers[index](
                hidden,
                attention_mask=biases[self.layer_windows[index]],
                position_ids=positions,
                position_embeddings=rotary[index],
                use_cache=cache is not None,
                **{self.cache_argument: None if cache is None else cache.layers},
                **shared,
            )
            if isinstance(hidden, tuple):  # Bamba's layers add their attention weights
                hidden = hidden[0]
        if cache is not None:
            cache.extend(mask)
        return hidden

    def _linear_layer(self, index: int, hidden: Tensor, mask: Tensor,
                      cache: KVCache | None) -> Tensor:
        """Decoder layer ``index`` with a Gated DeltaNet, Mamba2, Mamba1 or short convolution
        mixer, as the model runs it (norm, mixer, residual, norm, MLP, residual; a block of
        Nemotron-H, Mamba or Mamba2: norm, mixer, residual, the residual in float32 where the
        block keeps it so), the mixer through :func:`gated_delta_masked`,
        :func:`mamba2_masked`, :func:`mamba1_masked` or :func:`short_conv_masked` with this
        half's state of the layer (updated in ``cache``)."""
        layer = self.decoder.layers[index]
        state = None if cache is None else cache.recurrent.get(index)
        if hasattr(layer, "mixer"):  # a block: norm, mixer, residual, no MLP (Nemotron-H, Mamba)
            normed = layer.norm(hidden.to(layer.norm.weight.dtype))
            mixed, state = mamba_masked_for(layer.mixer)(layer.mixer, normed, mask, state)
            if cache is not None:
                cache.recurrent[index] = state
            if getattr(layer, "residual_in_fp32", False):  # Mamba's and Mamba2's blocks
                hidden = hidden.to(torch.float32)
            return hidden + mixed
        if hasattr(layer, "conv"):  # LFM2's names; LFM3's norms after both sublayers
            mixed, state = short_conv_masked(layer.conv, layer.operator_norm(hidden), mask, state)
            if cache is not None:
                cache.recurrent[index] = state
            after_mixer, after_mlp = (getattr(layer, name, nn.Identity())
                                      for name in ("post_operator_norm", "post_ffn_norm"))
            hidden = hidden + after_mixer(mixed)
            return hidden + after_mlp(layer.feed_forward(layer.ffn_norm(hidden)))
        mamba = getattr(layer, "mamba", None)
        if mamba is not None:
            mixed, state = mamba_masked_for(mamba)(mamba, layer.input_layernorm(hidden), mask,
                                                   state)
        else:
            mixed, state = gated_delta_masked(layer.linear_attn, layer.input_layernorm(hidden),
                                              mask, state)
        if cache is not None:
            cache.recurrent[index] = state
        if hasattr(layer, "shared_mlp"):
            return self._granite_mlp(layer, hidden + mixed * layer.residual_multiplier)
        hidden = hidden + mixed
        if hasattr(layer, "feed_forward"):  # Bamba's names
            return hidden + layer.feed_forward(layer.pre_ff_layernorm(hidden))
        out = layer.mlp(layer.post_attention_layernorm(hidden))
        if isinstance(out, tuple):  # a mixture of experts may add its router's logits
            out = out[0]
        return hidden + out

    def _parallel_layer(self, index: int, hidden: Tensor, mask: Tensor, bias: Tensor,
                        positions: Tensor, rotary: object, cache: KVCache | None) -> Tensor:
        """A Falcon-H1 layer as the model runs it: one norm; the Mamba2 mixer through
        :func:`mamba2_masked` (its state in ``cache``) and the attention (of the scaled input,
        over the split's mask) side by side, each output scaled, their sum added to the
        residual; norm, MLP, residual."""
        layer = self.decoder.layers[index]
        normed = layer.input_layernorm(hidden)
        state = None if cache is None else cache.recurrent.get(index)
        mixed, state = mamba2_masked(layer.mamba, normed, mask, state)
        if cache is not None:
            cache.recurrent[index] = state
        attended, _ = layer.self_attn(
            hidden_states=normed * layer.attention_in_multiplier, attention_mask=bias,
            position_ids=positions, position_embeddings=rotary, use_cache=cache is not None,
            **{self.cache_argument: None if cache is None else cache.layers})
        hidden = hidden + (mixed * layer.ssm_out_multiplier
                           + attended * layer.attn_out_multiplier)
        return hidden + layer.feed_forward(layer.pre_ff_layernorm(hidden))

    @staticmethod
    def _granite_mlp(layer: nn.Module, hidden: Tensor) -> Tensor:
        """The rest of a Granite 4 decoder layer after its mixer's residual: norm, experts
        (where it has them) plus the shared MLP, scaled residual."""
        normed = layer.post_attention_layernorm(hidden)
        out = layer.shared_mlp(normed)
        if layer.has_experts:
            out = layer.block_sparse_moe(normed) + out
        return hidden + out * layer.residual_multiplier

    def _rotary(self, hidden: Tensor, positions: Tensor, layers: range) -> dict[int, object]:
        """Each layer's rotary embeddings (cos, sin): one for all layers or, where the model has
        a rotary per layer type (Gemma 3: local and global layers), its layer type's (None for a
        type it has none for: LFM3's ``conv``, Ergo's global layers); None where the model has
        no rotary embedding."""
        rotary = self.rotary
        if rotary is None:
            return dict.fromkeys(layers)
        if self.longrope_switch is not None:  # longrope picks its factors by a row's length
            long = positions.amax(1) + 1 > self.longrope_switch
            if bool(long.any()) and not bool(long.all()):  # rows on both sides of the switch
                short, far = (self._rotary(hidden[rows], positions[rows], layers)
                              for rows in (~long, long))
                return {index: _merge_rows(short[index], far[index], long) for index in layers}
        if self.rotary_types is None:
            return dict.fromkeys(layers, rotary(hidden, position_ids=positions))
        rotated = rotary.rope_type if isinstance(getattr(rotary, "rope_type", None), dict) else (
            rotary.layer_types)  # the types with rotary parameters
        by_type = {kind: rotary(hidden, positions, kind)
                   for kind in {self.rotary_types[index] for index in layers} if kind in rotated}
        return {index: by_type.get(self.rotary_types[index]) for index in layers}

    def _check_longrope(self, seen: Tensor, positions: Tensor) -> None:
        """Refuse to continue a cache across longrope's switch: the model then rotates every
        position with the long factors, and the cached keys were rotated with the short ones
        (transformers' ``generate`` recomputes its cache there; each half here has its own)."""
        before, after = seen[:, 0], positions.amax(1) + 1
        crossing = ((before <= self.longrope_switch) & (after > self.longrope_switch)).nonzero()
        if len(crossing):  # a row whose cached keys have the short factors, the new the long
            row = int(crossing[0, 0])
            before, after = int(before[row]), int(after[row])
            raise AutomrError(
                f"continuing a cache of {before} positions to {after} positions crosses the "
                f"model's original context of {self.longrope_switch}, past which its longrope "
                f"rotary embedding uses the long factors for every position: the cached keys "
                f"have the short ones. Keep prompt, memory and generated tokens within "
                f"{self.longrope_switch} positions, or pass the whole prompt (past it) at once"
            )


def _merge_rows(short: tuple[Tensor, ...] | None, far: tuple[Tensor, ...] | None,
                long: Bool[Tensor, " batch"]) -> tuple[Tensor, ...] | None:
    """One layer's rotary embeddings (cos, sin) for a batch from those of its rows within
    longrope's original context (``short``) and those past it (``far``, the rows ``long``)."""
    if short is None or far is None:
        return None
    merged = []
    for within, past in zip(short, far, strict=True):
        both = within.new_empty((len(long), *within.shape[1:]))
        both[~long], both[long] = within, past
        merged.append(both)
    return tuple(merged)


@jaxtyped(typechecker=beartype)
def token_positions(
    mask: Bool[Tensor, "batch seq"], offset: Int[Tensor, "batch 1"] | None = None
) -> Int[Tensor, "batch seq"]:
    """Rotary position of each token: the number of real tokens before it (plus ``offset``).

    Padding positions get the position of the previous real token (they are never attended).
    """
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return positions if offset is None else positions + offset


@jaxtyped(typechecker=beartype)
def attention_bias(
    mask: Bool[Tensor, "batch seq"], past_mask: Bool[Tensor, "batch past"] | None,
    dtype: torch.dtype, window: int | None = None,
) -> Float[Tensor, "batch 1 seq total"]:
    """Additive 4D mask: query i sees real keys up to itself (past keys included) and, with a
    ``window``, only those fewer than ``window`` real tokens back (a sliding-window layer's
    view; counted in real tokens, as the positions are, so padding and masked insertions
    never shift it).

    A padding query also sees itself, so no row is fully masked (no NaNs); its output is
    never used.
    """
    batch, seq = mask.shape
    past = 0 if past_mask is None else past_mask.shape[1]
    keys = mask if past_mask is None else torch.cat([past_mask, mask], 1)
    query_index = torch.arange(seq, device=mask.device).unsqueeze(1) + past
    key_index = torch.arange(past + seq, device=mask.device).unsqueeze(0)
    causal = key_index <= query_index
    allowed = causal.unsqueeze(0) & keys.unsqueeze(1)
    if window is not None:  # query - key < window, compared without the int64 differences
        key_positions = token_positions(keys)
        allowed &= key_positions[:, past:].unsqueeze(2) < key_positions.unsqueeze(1) + window
    allowed |= (key_index == query_index).unsqueeze(0)
    bias = torch.zeros(batch, 1, seq, past + seq, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)


def kv_sources(config: PretrainedConfig) -> dict[int, int]:
    """Each layer of ``config`` that reuses keys and values (Gemma 4's last
    ``num_kv_shared_layers``), and the layer whose it reuses: the last earlier layer of its type
    that keeps its own."""
    modes = getattr(config, "kv_sharing_modes", None)
    if not modes:
        return {}
    types = config.layer_types
    return {index: max(source for source, mode in enumerate(modes)
                       if mode != "reuse" and types[source] == types[index] and source < index)
            for index, mode in enumerate(modes) if mode == "reuse"}
