"""BIGRec fine-tuning: LoRA (peft) on prompt -> target title, resumable, with early stopping.

The loss is the mean negative log-likelihood of the target tokens (title + EOS) or, as an
option, of every token after the first (BIGRec's whole-sequence variant). It runs through the
split: with ``lora_from_layer = L > 0`` LoRA sits only on layers ``>= L`` and the lower half
runs under ``no_grad``, so layer-L memories built with the base model stay valid for the tuned
model and each step is cheaper; logits are computed only where a loss term needs them.

A run folder holds ``checkpoint/`` (last state: adapter, optimizer, RNG, progress),
``best/`` (the adapter with the best validation loss) and, once finished, ``finetune.json``.
Running again with the same folder and configuration resumes from ``checkpoint/``.
"""

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from beartype import beartype
from peft import LoraConfig, PeftModel, get_peft_model

from automr.contexts import ContextSpec, build_context
from automr.data import PreparedDataset, Sample, TokenizedExample, tokenize_sample
from automr.data.fingerprint import dataset_fingerprint
from automr.data.subsets import seeded_subset
from automr.errors import AutomrError
from automr.llm.loading import LoadedModel, canonical_model_name
from automr.llm.split import HFSplitLLM
from automr.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from automr.recommenders.runs import RESULT_FILE
from automr.storage import atomic_dir, read_json, read_safetensors, write_json_atomic

LOSS_KINDS = ("target", "sequence")


@beartype
@attrs.frozen(kw_only=True)
class FinetuneConfig:
    """LoRA and optimisation settings (defaults: BIGRec's LoRA, a short CPU-sized run)."""

    lora_r: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    lora_alpha: int = 16
    lora_dropout: float = attrs.field(
        default=0.05, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lora_from_layer: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    loss_on: str = attrs.field(default="target", validator=attrs.validators.in_(LOSS_KINDS))
    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    weight_decay: float = 0.0
    batch_size: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    epochs: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    max_train_samples: int | None = 512
    max_valid_samples: int = attrs.field(default=64, validator=attrs.validators.gt(0))
    eval_every: int = attrs.field(default=25, validator=attrs.validators.gt(0))
    patience: int = attrs.field(default=4, validator=attrs.validators.gt(0))
    seed: int = 0
    context: ContextSpec | None = None
    """A prompt context (ReLLa, TRSR) put in every prompt; None: the plain BIGRec prompt."""

    def to_json(self) -> dict:
        """The fields as JSON; ``context`` only when set (records of runs without one stay
        as they were, so their checkpoints still resume)."""
        data = attrs.asdict(self, recurse=False)
        context = data.pop("context")
        return data if context is None else {**data, "context": context.to_json()}


@attrs.frozen
class Batch:
    """Right-padded token ids and, per sequence, the positions whose next token is scored."""

    input_ids: torch.Tensor  # [batch seq]
    mask: torch.Tensor  # [batch seq] bool
    logits_at: torch.Tensor  # [batch k] positions whose logits predict ``labels``
    labels: torch.Tensor  # [batch k] next-token ids
    label_mask: torch.Tensor  # [batch k] bool


def collate(examples: Sequence[TokenizedExample], pad_id: int, loss_on: str = "target") -> Batch:
    """Pad a batch on the right and list the scored positions (target tokens + EOS)."""
    ids = [ex.input_ids for ex in examples]
    first = [len(ex.prompt_ids) if loss_on == "target" else 1 for ex in examples]
    width = max(map(len, ids))
    k = max(len(seq) - start for seq, start in zip(ids, first, strict=True))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    logits_at = torch.zeros(len(ids), k, dtype=torch.long)
    labels = torch.zeros(len(ids), k, dtype=torch.long)
    label_mask = torch.zeros(len(ids), k, dtype=torch.bool)
    for row, (seq, start) in enumerate(zip(ids, first, strict=True)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
        n = len(seq) - start
        logits_at[row, :n] = torch.arange(start - 1, len(seq) - 1)
        labels[row, :n] = torch.tensor(seq[start:])
        label_mask[row, :n] = True
    return Batch(input_ids, mask, logits_at, labels, label_mask)


def batch_nll(llm: HFSplitLLM, batch: Batch, layer: int) -> tuple[torch.Tensor, int]:
    """Summed NLL of the batch's scored tokens and their count (lower half frozen if layer>0)."""
    device = llm.device
    ids, mask = batch.input_ids.to(device), batch.mask.to(device)
    if layer > 0:
        with torch.no_grad():
            state = llm.lower(ids, mask, layer)
    else:
        state = llm.lower(ids, mask, 0)
    logits = llm.upper(state, logits_at=batch.logits_at.to(device)).float()
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.labels.to(device).flatten(), reduction="none"
    )
    label_mask = batch.label_mask.to(device).flatten()
    return (nll * label_mask).sum(), int(label_mask.sum())


def encode_samples(
    loaded: LoadedModel, dataset: PreparedDataset, samples: Sequence[Sample],
    contexts: Sequence[str | None] | None = None,
) -> list[TokenizedExample]:
    """Tokenized prompt + target of each sample (with its prompt context, if given)."""
    contexts = [None] * len(samples) if contexts is None else contexts
    return [tokenize_sample(loaded.tokenizer, s, dataset.catalog, dataset.prompt_config,
                            context=c) for s, c in zip(samples, contexts, strict=True)]


@torch.no_grad()
def mean_nll(llm: HFSplitLLM, examples: Sequence[TokenizedExample], pad_id: int,
             batch_size: int, loss_on: str = "target") -> float:
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        nll, n = batch_nll(llm, collate(examples[start : start + batch_size], pad_id, loss_on), 0)
        total, count = total + float(nll), count + n
    return total / max(count, 1)


def finetune(
    loaded: LoadedModel, dataset: PreparedDataset, out_dir: Path | str,
    config: FinetuneConfig = FinetuneConfig(), progress: bool = True,
    cache_dir: Path | str | None = None,
) -> dict:
    """Fine-tune ``loaded`` with LoRA on ``dataset``'s training samples into ``out_dir``.

    Resumes from ``out_dir/checkpoint`` when it was written with the same configuration,
    model and data. Returns the run record also written to ``out_dir/finetune.json``.
    With ``config.context`` every prompt carries that context, computed with the base model
    before LoRA is attached (cached in ``cache_dir``).
    """
    out = Path(out_dir)
    n_layers = loaded.model.config.num_hidden_layers
    if config.lora_from_layer >= n_layers:
        raise AutomrError(f"lora_from_layer={config.lora_from_layer} leaves no layer to tune "
                          f"(the model has {n_layers})")
    identity = json.loads(json.dumps({  # as it reads back from state.json
        "config": config.to_json(), "model": loaded.name,
        "model_fingerprint": loaded.fingerprint(), "data_fingerprint": dataset_fingerprint(dataset),
    }))
    state = _load_checkpoint(out, identity)
    train_samples = seeded_subset(dataset.samples("train"), config.max_train_samples,
                                  config.seed)
    valid_samples = seeded_subset(dataset.samples("valid"), config.max_valid_samples,
                                  config.seed)
    train_contexts = valid_contexts = None
    if config.context is not None:
        context = build_context(config.context, loaded, dataset, loaded.fingerprint(),
                                cache_dir, batch_size=config.batch_size, progress=progress)
        train_contexts, valid_contexts = (context.texts(train_samples),
                                          context.texts(valid_samples))
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM",
        layers_to_transform=list(range(config.lora_from_layer, n_layers)),
    )
    model = get_peft_model(loaded.model, lora)
    if state is not None:
        _load_adapter(model, out / "checkpoint")
    llm = HFSplitLLM(model)
    pad_id = loaded.tokenizer.pad_token_id
    train = encode_samples(loaded, dataset, train_samples, train_contexts)
    valid = encode_samples(loaded, dataset, valid_samples, valid_contexts)
    if not train:
        raise AutomrError("the dataset has no training samples; check the protocol's split")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    record = state or {**identity, "step": 0, "best_valid_nll": None, "best_step": 0,
                       "evaluations": [], "bad_evaluations": 0, "tokens": 0, "train_seconds": 0.0,
                       "done": False}
    if state is not None:
        checkpoint = out / "checkpoint"
        try:
            optimizer.load_state_dict(_load_tensors(checkpoint / "optimizer.pt"))
            torch.set_rng_state(_load_tensors(checkpoint / "rng.pt"))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise AutomrError(f"{checkpoint} does not fit this fine-tune ({error}); delete it "
                              f"to restart from step 0") from None
    if record["step"] == 0 and record["best_valid_nll"] is None:
        record["initial_valid_nll"] = mean_nll(llm, valid, pad_id, config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    columns = [TextColumn("finetune"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("finetune", total=total_steps, completed=record["step"], status="")
        while record["step"] < total_steps and not record["done"]:
            epoch, index = divmod(record["step"], steps_per_epoch)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
                config.seed * 1000 + epoch)).tolist()
            chunk = [train[i] for i in order[index * config.batch_size:][: config.batch_size]]
            started = time.perf_counter()
            model.train()
            batch = collate(chunk, pad_id, config.loss_on)
            nll, count = batch_nll(llm, batch, config.lora_from_layer)
            (nll / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
            record["train_seconds"] = record.get("train_seconds", 0.0) + (
                time.perf_counter() - started)  # optimisation only, not validation
            record["step"] += 1
            record["tokens"] += int(batch.mask.sum())
            bar.update(task, advance=1, status=f"loss {nll.item() / count:.3f}")
            if record["step"] % config.eval_every == 0 or record["step"] == total_steps:
                _evaluate(model, loaded.tokenizer, llm, valid, pad_id, config, record, out)
                _save_checkpoint(model, optimizer, record, out)
    record["done"] = True
    final = {k: v for k, v in record.items() if k != "bad_evaluations"}
    write_json_atomic(out / RESULT_FILE, final, indent=2)
    return final


def _evaluate(model, tokenizer, llm, valid, pad_id, config, record, out: Path) -> None:
    """Validate; on a new best, write ``best/``: the adapter and the tokenizer (with its pad
    token), so the folder loads with plain transformers + peft."""
    valid_nll = mean_nll(llm, valid, pad_id, config.batch_size)
    record["evaluations"].append({"step": record["step"], "valid_nll": valid_nll})
    best = record["best_valid_nll"]
    if best is None or valid_nll < best:
        record.update(best_valid_nll=valid_nll, best_step=record["step"], bad_evaluations=0)
        with atomic_dir(out / "best") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    else:
        record["bad_evaluations"] += 1
        if record["bad_evaluations"] >= config.patience:
            record["done"] = True  # early stop; best/ holds the best adapter


def _save_checkpoint(model, optimizer, record: dict, out: Path) -> None:
    with atomic_dir(out / "checkpoint") as tmp:
        model.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        write_json_atomic(tmp / "state.json", record, indent=2)


def _load_tensors(path: Path) -> object:
    """A checkpoint's torch file read with ``weights_only=True``: tensors and plain containers
    only, so a pickled object in it is refused, never run (whatever torch's default)."""
    import pickle

    remedy = f"delete {path.parent} to restart the fine-tune from step 0"
    if not path.is_file():
        raise AutomrError(f"{path} is missing; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise AutomrError(f"{path} was refused by torch's weights-only loader: it is damaged "
                          f"or holds pickled objects, not only tensors (loading those could run "
                          f"code), and automr never writes such a file: {remedy}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AutomrError(f"{path} is damaged ({first}); {remedy}") from None


def _load_checkpoint(out: Path, identity: dict) -> dict | None:
    state_file = out / "checkpoint" / "state.json"
    if (out / RESULT_FILE).exists():
        raise AutomrError(f"{out} already holds a finished fine-tune; choose another --out or "
                          f"delete it to start over")
    if not state_file.exists():
        if state_file.parent.exists():  # written atomically: without state.json it is damaged
            raise AutomrError(f"{state_file} is missing, so {state_file.parent} cannot be "
                              f"resumed; delete {state_file.parent} to restart the fine-tune")
        out.mkdir(parents=True, exist_ok=True)
        return None
    state = read_json(state_file, f"`automr finetune` (delete {state_file.parent} to restart)")
    if not isinstance(state, dict) or not {"step", "evaluations"} <= set(state):
        raise AutomrError(f"{state_file} is not a fine-tune checkpoint; delete "
                          f"{state_file.parent} to restart")
    differs = [key for key in identity if state.get(key) != identity[key] and not (
        key == "model" and isinstance(state.get(key), str)
        and canonical_model_name(state[key]) == canonical_model_name(identity[key]))]
    if differs:
        raise AutomrError(f"{out} holds an unfinished fine-tune with a different "
                          f"{', '.join(differs)}; use another --out, or delete {out} to restart")
    return state


def _load_adapter(model: PeftModel, folder: Path) -> None:
    from peft.utils import set_peft_model_state_dict

    weights = read_safetensors(folder / "adapter_model.safetensors",
                               f"`automr finetune` (delete {folder} to restart)")
    set_peft_model_state_dict(model, weights)
