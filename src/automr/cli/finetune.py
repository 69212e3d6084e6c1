"""``automr finetune``: BIGRec LoRA fine-tuning on a prepared dataset."""

from pathlib import Path
from typing import Annotated

import typer

from automr.cli.common import CacheDirOption, user_errors
from automr.data import PreparedDataset
from automr.llm.loading import DEFAULT_MODEL, load_model
from automr.recommenders.finetune import LOSS_KINDS, FinetuneConfig, finetune

defaults = FinetuneConfig()


@user_errors
def finetune_command(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (automr data prepare).")],
    out: Annotated[Path, typer.Option(help="Run folder; rerunning with it resumes.")],
    model: Annotated[str, typer.Option(help="Embedded name, HF id or folder.")] = DEFAULT_MODEL,
    train_samples: Annotated[int, typer.Option(
        help="Seeded subset of training samples (0 = all).")] = defaults.max_train_samples or 0,
    valid_samples: Annotated[int, typer.Option(
        help="Validation samples for early stopping (mean target NLL).")] =
        defaults.max_valid_samples,
    epochs: int = defaults.epochs,
    batch_size: int = defaults.batch_size,
    lr: float = defaults.lr,
    lora_r: int = defaults.lora_r,
    lora_alpha: int = defaults.lora_alpha,
    lora_from_layer: Annotated[int, typer.Option(
        help="Put LoRA only on layers >= L and freeze the lower half (0 = all layers).")] =
        defaults.lora_from_layer,
    loss_on: Annotated[str, typer.Option(
        help=f"Which tokens the loss covers: {' or '.join(LOSS_KINDS)}.")] = defaults.loss_on,
    eval_every: Annotated[int, typer.Option(help="Steps between validations.")] =
        defaults.eval_every,
    patience: Annotated[int, typer.Option(
        help="Stop after this many validations without improvement.")] = defaults.patience,
    seed: int = defaults.seed,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    cache_dir: CacheDirOption = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Fine-tune the LM with LoRA to generate the next item's title (BIGRec).

    Writes OUT/best (adapter), OUT/checkpoint (resumable state) and OUT/finetune.json.
    """
    config = FinetuneConfig(
        max_train_samples=train_samples or None, max_valid_samples=valid_samples,
        epochs=epochs, batch_size=batch_size, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_from_layer=lora_from_layer, loss_on=loss_on, eval_every=eval_every,
        patience=patience, seed=seed,
    )
    dataset = PreparedDataset.load(data)
    loaded = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
    record = finetune(loaded, dataset, out, config, progress=not quiet)
    typer.echo(f"validation NLL {record.get('initial_valid_nll', float('nan')):.4f} -> "
               f"{record['best_valid_nll']:.4f} (best at step {record['best_step']} of "
               f"{record['step']}); adapter in {Path(out) / 'best'}")
