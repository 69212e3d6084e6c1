"""``automr finetune``: BIGRec LoRA fine-tuning on a prepared dataset."""

from pathlib import Path
from typing import Annotated, Any

import typer

from automr.cli.common import (
    DEFAULT_LORA_TARGETS,
    LoraTargetsOption,
    ModelOption,
    Runtime,
    option_error,
    option_group,
    parse_lora_targets,
    runtime_options,
    user_errors,
    zero_is,
)
from automr.contexts.spec import CONTEXT_KINDS, TRSR_MODES, ContextSpec
from automr.defaults import DEFAULT_MODEL
from automr.errors import AutomrError
from automr.recommenders.finetune_config import (
    AUTOCAST_KINDS,
    LOSS_KINDS,
    RETRIEVALS,
    SCHEDULES,
    TRAINABLE_COMBINERS,
    FinetuneConfig,
    MemoryTraining,
)

defaults = FinetuneConfig()
memory_defaults = MemoryTraining()
context_defaults = ContextSpec(kind="trsr")

TrsrOptions = dict[str, Any]
"""The TRSR options as :class:`ContextSpec` fields (``block_size``, ...)."""
TRSR_OPTIONS = {
    "trsr_block_size": (Annotated[int, typer.Option(
        help="TRSR: long-term items per summarised block.")], context_defaults.block_size),
    "trsr_max_blocks": (Annotated[int, typer.Option(
        help="TRSR: most recent blocks summarised.")], context_defaults.max_blocks),
    "trsr_mode": (Annotated[str, typer.Option(
        help=f"TRSR: {' or '.join(TRSR_MODES)} summaries.")], context_defaults.mode),
    "trsr_max_new_tokens": (Annotated[int, typer.Option(
        help="TRSR: tokens per written summary.")], context_defaults.max_new_tokens),
}
CONTEXT_OPTION_NAMES = {name.removeprefix("trsr_"): name for name in TRSR_OPTIONS}
MEMORY_OPTION_NAMES = {name: f"memory_{name}" for name in ("share", "retrieval", "combiner")}
FINETUNE_OPTION_NAMES = {"max_train_samples": "train_samples",
                         "max_valid_samples": "valid_samples", "target_modules": "lora_targets",
                         **MEMORY_OPTION_NAMES}
"""Fields of the configs these options build, by the option each comes from."""
trsr_options = option_group(
    "trsr", TRSR_OPTIONS,
    lambda **options: {name.removeprefix("trsr_"): value for name, value in options.items()})
"""Gives a command the ``--trsr-*`` options, received as one ``trsr`` (:data:`TrsrOptions`)."""


@user_errors
@trsr_options
@runtime_options()
def finetune_command(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (automr data prepare).")],
    out: Annotated[Path, typer.Option(help="Run folder; rerunning with it resumes.")],
    model: ModelOption = DEFAULT_MODEL,
    train_samples: Annotated[int, typer.Option(
        help="Seeded subset of training samples (0 = all).")] = defaults.max_train_samples or 0,
    valid_samples: Annotated[int, typer.Option(
        help="Validation samples for early stopping (mean target NLL).")] =
        defaults.max_valid_samples,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = defaults.epochs,
    batch_size: Annotated[int, typer.Option(help="Samples per micro-batch (one forward).")] =
        defaults.batch_size,
    grad_accum: Annotated[int, typer.Option(
        help="Micro-batches per optimizer step: effective batch = batch-size x grad-accum "
             "(BIGRec: 128), shared among the processes under torchrun.")] =
        defaults.grad_accum,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = defaults.lr,
    warmup_steps: Annotated[int, typer.Option(
        help="Optimizer steps of linear warmup.")] = defaults.warmup_steps,
    schedule: Annotated[str, typer.Option(
        help=f"Learning rate after warmup: {', '.join(SCHEDULES)} (decay to 0 at the planned "
             f"last step).")] = defaults.schedule,
    max_grad_norm: Annotated[float, typer.Option(
        help="Clip the gradient to this L2 norm (0 = no clipping).")] =
        defaults.max_grad_norm or 0.0,
    lora_r: Annotated[int, typer.Option(help="LoRA rank r.")] = defaults.lora_r,
    lora_alpha: Annotated[int, typer.Option(
        help="LoRA alpha (the update is scaled by alpha / r).")] = defaults.lora_alpha,
    lora_dropout: Annotated[float, typer.Option(
        help="LoRA dropout (BIGRec's 0.05; 0 makes a run under a launcher reproduce one "
             "process's within float rounding).")] = defaults.lora_dropout,
    lora_targets: LoraTargetsOption = DEFAULT_LORA_TARGETS,
    lora_from_layer: Annotated[int, typer.Option(
        help="Put LoRA only on layers >= L and freeze the lower half (0 = all layers).")] =
        defaults.lora_from_layer,
    loss_on: Annotated[str, typer.Option(
        help=f"Which tokens the training loss covers: {' or '.join(LOSS_KINDS)}; validation "
             f"scores the target either way.")] = defaults.loss_on,
    cache_lower: Annotated[bool, typer.Option(
        help="With --lora-from-layer L > 0: compute each example's layer-L states once and "
             "train on the upper half only (CPU memory: samples x tokens x hidden x 4 bytes).")] =
        defaults.cache_lower,
    eval_every: Annotated[int, typer.Option(help="Optimizer steps between validations.")] =
        defaults.eval_every,
    checkpoint_every: Annotated[int, typer.Option(
        help="Optimizer steps between checkpoints (0 = at each validation).")] =
        defaults.checkpoint_every or 0,
    autocast: Annotated[str, typer.Option(
        help="Mixed-precision training forward: bf16 or fp16 (with loss scaling) under "
             "torch.autocast, or none (the model's --dtype).")] = "none",
    patience: Annotated[int, typer.Option(
        help="Stop after this many validations without improvement.")] = defaults.patience,
    seed: Annotated[int, typer.Option(
        help="Seed of the sample subsets, the adapter's initialisation and batch order.")] =
        defaults.seed,
    context: Annotated[str | None, typer.Option(
        help=f"Prompt context of a baseline: {' or '.join(CONTEXT_KINDS)} (none: BIGRec).",
        show_default=False)] = None,
    context_k: Annotated[int, typer.Option(
        help="ReLLa: long-term items listed in the prompt.")] = context_defaults.k,
    *, trsr: TrsrOptions,
    memory: Annotated[Path | None, typer.Option(
        help="Memory-aware fine-tuning (beyond the paper): join elements of this memory "
             "(automr memory build, at layer --lora-from-layer) to a share of the examples, so "
             "the upper layers learn to read it.", show_default=False)] = None,
    memory_share: Annotated[float, typer.Option(
        help="With --memory: the probability that an example gets an element.")] =
        memory_defaults.share,
    memory_retrieval: Annotated[str, typer.Option(
        help=f"With --memory: which element, {' or '.join(RETRIEVALS)} (closest to the "
             f"prompt).")] = memory_defaults.retrieval,
    memory_combiner: Annotated[str, typer.Option(
        help=f"With --memory: {' or '.join(TRAINABLE_COMBINERS)} (memory before the "
             f"prompt).")] = memory_defaults.combiner,
    runtime: Runtime,
) -> None:
    """Fine-tune the LM with LoRA to generate the next item's title (BIGRec).

    Writes OUT/best (adapter), OUT/checkpoint (resumable state) and OUT/finetune.json.
    """
    spec = context_spec_option(context, context_k, trsr)
    targets = parse_lora_targets(lora_targets)
    if autocast not in ("none", *AUTOCAST_KINDS):
        raise AutomrError(f"--autocast {autocast!r}: choose one of none, "
                          f"{', '.join(AUTOCAST_KINDS)}")
    max_train_samples = zero_is(train_samples, "--train-samples", "every training sample")
    clip = zero_is(max_grad_norm, "--max-grad-norm", "no clipping")
    checkpoints = zero_is(checkpoint_every, "--checkpoint-every", "at each validation")
    try:
        memory_training = MemoryTraining(  # checked without --memory too: a typo is an error
            share=memory_share, retrieval=memory_retrieval, combiner=memory_combiner)
        config = FinetuneConfig(
            max_train_samples=max_train_samples, max_valid_samples=valid_samples,
            epochs=epochs, batch_size=batch_size, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_dropout=lora_dropout, lora_from_layer=lora_from_layer, loss_on=loss_on,
            target_modules=targets,
            eval_every=eval_every,
            patience=patience, seed=seed, grad_accum=grad_accum, warmup_steps=warmup_steps,
            schedule=schedule, max_grad_norm=clip, cache_lower=cache_lower,
            checkpoint_every=checkpoints, context=spec,
            memory=None if memory is None else memory_training,
            autocast=None if autocast == "none" else autocast,
        )
    except ValueError as error:  # attrs' validators: name the option and the allowed values
        raise AutomrError(f"invalid fine-tune options: "
                          f"{option_error(error, FINETUNE_OPTION_NAMES)}") from None
    from automr.data import PreparedDataset
    from automr.llm.split import text_config
    from automr.memory import MemoryStore
    from automr.recommenders.finetune import finetune

    dataset = PreparedDataset.load(data)
    loaded = runtime.load_model(model)
    store = None if memory is None else MemoryStore.open(memory)
    record = finetune(loaded, dataset, out, config, progress=runtime.progress,
                      cache_dir=runtime.cache_dir, memory=store)
    typer.echo(f"validation NLL {record.get('initial_valid_nll', float('nan')):.4f} -> "
               f"{record['best_valid_nll']:.4f} (best at step {record['best_step']} of "
               f"{record['step']}); adapter in {Path(out) / 'best'}")
    tuned = range(lora_from_layer, text_config(loaded.model).num_hidden_layers)
    if missing := [layer for layer in tuned if layer not in record["lora_layers"]]:
        reached = ", ".join(map(str, record["lora_layers"]))
        typer.echo(f"note: LoRA reached {len(tuned) - len(missing)} of the {len(tuned)} "
                   f"tuned layers ({reached}); layer{'s' if len(missing) > 1 else ''} "
                   f"{', '.join(map(str, missing))} {'have' if len(missing) > 1 else 'has'} "
                   f"none of the targets {', '.join(targets)} (`automr model info` lists "
                   f"every linear module --lora-targets may name)")


def context_spec_option(kind: str | None, k: int, trsr: TrsrOptions,
                        kind_option: str = "context") -> ContextSpec | None:
    """The :class:`ContextSpec` the context options describe (None without ``--context``, the
    option ``kind_option`` names); the values are checked without it too."""
    try:
        spec = ContextSpec(kind="trsr" if kind in (None, "none") else kind, k=k, **trsr)
    except ValueError as error:
        names = {"kind": kind_option, "k": "context_k", **CONTEXT_OPTION_NAMES}
        raise AutomrError(f"invalid context options: {option_error(error, names)}") from None
    return None if kind in (None, "none") else spec
