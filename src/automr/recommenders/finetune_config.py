"""The settings of a fine-tune (:func:`~automr.recommenders.finetune.finetune`), apart from its
code so that reading them (the CLI's defaults, a run's ``finetune.json``) needs no torch."""

import math
from typing import Any

import attrs

from automr.checks import beartype, int_field, is_str_tuple, real_field, to_strs
from automr.contexts.spec import ContextSpec

LOSS_KINDS = ("target", "sequence")
SCHEDULES = ("constant", "linear", "cosine")
AUTOCAST_KINDS = ("bf16", "fp16")
RETRIEVALS = ("random", "semantic")
TRAINABLE_COMBINERS = ("concat", "prepend-token")


@beartype
@attrs.frozen(kw_only=True)
class MemoryTraining:
    """How memory joins fine-tuning: the share of examples, which element, which combiner."""

    share: float = real_field(attrs.validators.gt(0.0), attrs.validators.le(1.0), default=0.5)
    """Probability that a training example (with a non-empty memory) gets an element."""
    retrieval: str = attrs.field(default="random", validator=attrs.validators.in_(RETRIEVALS))
    """Which element a chosen example gets: ``random`` (uniform over its memory) or
    ``semantic`` (the one closest to its pooled prompt)."""
    combiner: str = attrs.field(default="concat",
                                validator=attrs.validators.in_(TRAINABLE_COMBINERS))
    """How the element joins the prompt: ``concat`` or ``prepend-token`` (the combiners of
    :data:`TRAINABLE_COMBINERS`)."""

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (``attrs.asdict``)."""
        return attrs.asdict(self)


@beartype
@attrs.frozen(kw_only=True)
class FinetuneConfig:
    """LoRA and optimisation settings (defaults: BIGRec's LoRA, a short CPU-sized run)."""

    lora_r: int = int_field(attrs.validators.gt(0), default=8)
    lora_alpha: int = int_field(attrs.validators.gt(0), default=16)
    """LoRA's update is scaled by ``lora_alpha / lora_r`` (0 would train nothing)."""
    lora_dropout: float = real_field(attrs.validators.ge(0), attrs.validators.lt(1), default=0.05)
    target_modules: tuple[str, ...] = attrs.field(
        converter=to_strs, validator=[is_str_tuple, attrs.validators.min_len(1)],
        default=("q_proj", "v_proj"))
    """The linear modules of each tuned layer that get LoRA (BIGRec's: ``q_proj``, ``v_proj``)."""
    lora_from_layer: int = int_field(attrs.validators.ge(0), default=0)
    """LoRA only on layers ``>= lora_from_layer``; set it to the memory's layer L so that
    layer-L memories of the base model stay valid for the tuned one (0: every layer)."""
    loss_on: str = attrs.field(default="target", validator=attrs.validators.in_(LOSS_KINDS))
    """``target``: the NLL of the target tokens (title + EOS); ``sequence``: of every token
    after the first (BIGRec's whole-sequence variant)."""
    lr: float = real_field(attrs.validators.gt(0), attrs.validators.lt(math.inf), default=1e-3)
    weight_decay: float = real_field(attrs.validators.ge(0), attrs.validators.lt(math.inf),
                                     default=0.0)
    batch_size: int = int_field(attrs.validators.gt(0), default=8)
    epochs: int = int_field(attrs.validators.gt(0), default=1)
    max_train_samples: int | None = int_field(attrs.validators.gt(0), default=512, optional=True)
    """A seeded subset of this many training samples (None: all of them)."""
    max_valid_samples: int = int_field(attrs.validators.gt(0), default=64)
    """A seeded subset of this many validation samples, for the validation NLL."""
    eval_every: int = int_field(attrs.validators.gt(0), default=25)
    """Optimizer steps between validations (and after the last step); ``best/`` is the
    adapter of the best one."""
    patience: int = int_field(attrs.validators.gt(0), default=4)
    """Stop after this many validations in a row without a strictly lower validation NLL."""
    seed: int = int_field(default=0)
    """Seeds the sample subsets, LoRA's initialisation and the batch order."""
    context: ContextSpec | None = None
    """A prompt context (ReLLa, TRSR) put in every prompt; None: the plain BIGRec prompt."""
    grad_accum: int = int_field(attrs.validators.gt(0), default=1)
    """Micro-batches per optimizer step: the effective batch is ``batch_size * grad_accum``."""
    warmup_steps: int = int_field(attrs.validators.ge(0), default=0)
    """Optimizer steps of linear warmup (step s of them uses ``lr * (s + 1) / warmup_steps``)."""
    schedule: str = attrs.field(default="constant", validator=attrs.validators.in_(SCHEDULES))
    """After warmup: ``constant``, or ``linear`` / ``cosine`` decay to 0 at the planned end
    (``epochs`` full epochs of optimizer steps; early stopping may end sooner)."""
    max_grad_norm: float | None = real_field(attrs.validators.gt(0), attrs.validators.lt(math.inf),
                                             default=None, optional=True)
    """Clip the adapter's gradient to this global L2 norm before each step (None: no clipping)."""
    cache_lower: bool = True
    """With ``lora_from_layer > 0``: compute every training and validation example's layer-L
    states once (no_grad) and keep them in CPU memory - examples x tokens x hidden x 4 bytes in
    float32 (2,048 ML-100K prompts of ~205 tokens at hidden 576: ~1 GB) - so epochs and
    validations run the upper half only. Losses equal the uncached path within float rounding."""
    checkpoint_every: int | None = int_field(attrs.validators.gt(0), default=None, optional=True)
    """Optimizer steps between checkpoints (None: at each validation, every ``eval_every``)."""
    autocast: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(AUTOCAST_KINDS)))
    """Mixed precision of the training forward: ``bf16`` or ``fp16`` (with loss scaling) under
    :func:`torch.autocast`, the weights staying in the model's dtype; None: the model's dtype."""

    memory: MemoryTraining | None = None
    """Memory-aware fine-tuning (beyond the paper): a share of the examples get an element of
    their memory at layer ``lora_from_layer`` (:mod:`automr.recommenders.memory_aware`); None:
    BIGRec, frozen to memory as in the paper."""

    def __attrs_post_init__(self) -> None:
        if self.context is not None and self.memory is not None:
            raise ValueError(f"--memory with --context {self.context.kind}: a fine-tune with a "
                             f"prompt context is evaluated as {self.context.kind}:*, whose "
                             f"methods read no memory; give one of them")

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON; ``context`` and ``memory`` only when set (records of runs
        without them stay as they were, so their checkpoints still resume)."""
        data = attrs.asdict(self, recurse=False)
        for name in ("context", "memory"):
            value = data.pop(name)
            if value is not None:
                data[name] = value.to_json()
        return data
