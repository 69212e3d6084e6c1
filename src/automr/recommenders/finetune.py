"""BIGRec fine-tuning: LoRA (peft) on prompt -> target title, resumable, with early stopping.

The loss is the mean negative log-likelihood of the target tokens (title + EOS) or, as an
option, of every token after the first (BIGRec's whole-sequence variant). It runs through the
split: with ``lora_from_layer = L > 0`` LoRA sits only on layers ``>= L`` and the lower half
runs under ``no_grad`` in eval mode (no dropout), so layer-L memories built with the base
model stay valid for the tuned model and each step is cheaper; logits are computed only where
a loss term needs them. Since those layers never change, their states are computed once per
example (``cache_lower``, on by default there) and every epoch and validation runs the upper
half only.

An optimizer step covers ``grad_accum`` micro-batches of ``batch_size`` (its loss is the mean
over all their scored tokens, so it equals one batch of ``batch_size * grad_accum``), clips the
gradient norm (``max_grad_norm``) and uses a learning rate that follows ``schedule`` (constant,
or linear / cosine decay to 0 over the planned steps) after ``warmup_steps`` of linear warmup.

A run folder holds ``checkpoint/`` (last state: adapter, optimizer, RNG, progress),
``best/`` (the adapter with the best validation loss) and, once finished, ``finetune.json``.
Running again with the same folder and configuration resumes from ``checkpoint/``, exactly:
the schedule is a function of the step, the batches of the epoch's seed, and the checkpoint holds
the RNG states, so an interrupted run ends bit-identical to one that never stopped.

Under a launcher (``torchrun``, ``accelerate launch``; :mod:`automr.distributed`) the adapter is
trained with DDP (:mod:`automr.recommenders.parallel`): every effective batch of
``batch_size * grad_accum`` samples is shared among the N processes (each runs its share in
micro-batches of at most ``batch_size``), so the optimizer steps and the loss curve are those of
one process within float rounding (LoRA dropout draws its masks per process); validation is
shared too. The main process writes ``best/``, checkpoints (with every process's RNG states)
and ``finetune.json``; a run resumes with any number of processes (``finetune.json`` says how
many ran from which step).
"""

import itertools
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, final

import attrs
import torch
from jaxtyping import Float
from peft import PeftModel
from torch import Tensor

from automr import distributed
from automr.checks import beartype
from automr.contexts import TRSRContext, build_context
from automr.data import PreparedDataset, Sample, TokenizedExample, tokenize_sample
from automr.data.fingerprint import dataset_fingerprint
from automr.data.subsets import seeded_subset
from automr.devices import keeping_rng
from automr.errors import AutomrError
from automr.interfaces import Insert, require_instance
from automr.llm.decoding import apply_insert
from automr.llm.loading import (
    LoadedModel,
    canonical_model_name,
    dtype_name,
)
from automr.llm.split import HFSplitLLM
from automr.memory import MemoryStore
from automr.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from automr.recommenders.finetune_config import SCHEDULES, FinetuneConfig
from automr.recommenders.lora import (
    check_lora_layers,
    has_lora,
    lora_layers,
    lora_model,
    take_lora_off,
)
from automr.recommenders.memory_aware import MemoryInserts
from automr.recommenders.parallel import NLLModule, StepRunner
from automr.recommenders.runs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RESULT_FILE
from automr.state import LayerState
from automr.storage import (
    atomic_dir,
    check_own_folder,
    folder_lock,
    read_json,
    read_safetensors,
    restore_replaced,
    setting_differences,
    write_json_atomic,
)

ADDED_FIELDS = ("grad_accum", "warmup_steps", "schedule", "max_grad_norm", "cache_lower",
                "checkpoint_every", "autocast")
"""Config fields newer than some run folders: a checkpoint without them had their defaults."""
RUN_OPTIONS = ("cache_lower", "checkpoint_every")
"""Fields that say how a run computes, not what: they may change when it resumes."""
RECORDED_LATER = ("dtype",)
"""Identity keys checkpoints of older versions lack: such a checkpoint resumes as before."""
MEMORY_RECORDED_LATER = ("digest",)
"""The same, of a memory-aware run's memory identity (:func:`memory_identity`)."""
OWN_FILES = ("best", "checkpoint", RESULT_FILE)
"""What a fine-tune writes into its folder (beside run records and temporary names)."""


@attrs.frozen
class Batch:
    """Right-padded token ids and, per sequence, the positions whose next token is scored."""

    input_ids: torch.Tensor  # [batch seq]
    mask: torch.Tensor  # [batch seq] bool
    logits_at: torch.Tensor  # [batch k] positions whose logits predict ``labels``
    labels: torch.Tensor  # [batch k] next-token ids
    label_mask: torch.Tensor  # [batch k] bool
    insert: Insert | None = None
    """Memory joined to the batch's layer-L states before the prompt (memory-aware
    fine-tuning, :mod:`automr.recommenders.memory_aware`); the scored positions shift with it."""


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


@contextmanager
def _eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """``modules`` in eval mode within the block; each submodule's mode is restored after."""
    modes = [(module, module.training) for root in modules for module in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        _set_modes(modes)


def _set_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """Each module back in the train or eval mode it was in."""
    for module, training in modes:
        module.training = training


def _lower_modules(llm: HFSplitLLM, layer: int) -> list[torch.nn.Module]:
    """What the lower half runs: the embeddings, their dropout module (GPT-NeoX's, Phi's) and
    the layers below ``layer``."""
    dropout = llm.embedding_dropout_module
    return [llm.decoder.get_input_embeddings(), *([] if dropout is None else [dropout]),
            *llm.decoder.layers[:layer]]


def batch_nll(llm: HFSplitLLM, batch: Batch, layer: int,
              state: LayerState | None = None) -> tuple[torch.Tensor, int]:
    """Summed NLL of the batch's scored tokens and their count (lower half frozen if layer>0).

    ``state``: the batch's layer-``layer`` states computed beforehand (a :class:`LowerCache`);
    then only the upper half runs. The frozen lower half runs in eval mode even in training (no
    dropout: Granite 3's configs set attention_dropout 0.1), so its states are the cache's.
    """
    device = llm.device
    if state is None:
        ids, mask = batch.input_ids.to(device), batch.mask.to(device)
        if layer > 0:
            with torch.no_grad(), _eval_mode(*_lower_modules(llm, layer)):
                state = llm.lower(ids, mask, layer)
        else:
            state = llm.lower(ids, mask, 0)
    logits_at = batch.logits_at.to(device)
    if batch.insert is not None:  # memory before the prompt: every position moves right
        width = state.seq_len
        state = apply_insert(batch.insert, state)
        logits_at = logits_at + (state.seq_len - width)
    logits = llm.upper(state, logits_at=logits_at).float()
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.labels.to(device).flatten(), reduction="none"
    )
    label_mask = batch.label_mask.to(device).flatten()
    return (nll * label_mask).sum(), int(label_mask.sum())


@final
@beartype
@attrs.frozen
class LowerCache:
    """Layer-``layer`` states of a fixed list of examples, computed once and kept in CPU memory
    as one ``[tokens, hidden]`` tensor: examples x tokens x hidden x 4 bytes in float32.

    Valid while layers below ``layer`` do not change (LoRA only on layers ``>= layer``).
    """

    hidden: Float[Tensor, "tokens hidden"]
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    layer: int = attrs.field(validator=attrs.validators.gt(0))

    def __attrs_post_init__(self) -> None:
        if len(self.offsets) != len(self.lengths) or sum(self.lengths) != self.hidden.shape[0]:
            raise ValueError("LowerCache: offsets, lengths and hidden disagree")

    @classmethod
    @torch.no_grad()
    def build(cls, llm: HFSplitLLM, examples: Sequence[TokenizedExample], layer: int,
              batch_size: int, pad_id: int, progress: bool = False) -> "LowerCache":
        """Run the lower half over ``examples`` (eval mode, batches of similar length), keeping
        the states in their own dtype (Ergo's residual stream is float32 in a bfloat16
        model, whose head, ``llm.dtype``, is bfloat16)."""
        lengths = [len(ex.input_ids) for ex in examples]
        offsets = [0, *itertools.accumulate(lengths)][:-1]
        hidden = None  # made at the first batch, in the states' dtype (Ergo's: float32)
        by_length = sorted(range(len(examples)), key=lengths.__getitem__)
        llm.model.eval()
        columns = [TextColumn("layer-L states"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn()]
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("layer-L states", total=len(examples))
            for start in range(0, len(by_length), batch_size):
                chunk = by_length[start : start + batch_size]
                batch = collate([examples[i] for i in chunk], pad_id)
                state = llm.lower(batch.input_ids.to(llm.device), batch.mask.to(llm.device),
                                  layer)
                if hidden is None:
                    hidden = state.hidden.new_empty((sum(lengths), llm.hidden_size),
                                                    device="cpu")
                for row, i in enumerate(chunk):
                    hidden[offsets[i] : offsets[i] + lengths[i]] = state.hidden[
                        row, : lengths[i]].cpu()
                bar.update(task, advance=len(chunk))
        if hidden is None:  # no examples
            hidden = torch.empty(0, llm.hidden_size, dtype=llm.dtype)
        return cls(hidden, tuple(offsets), tuple(lengths), layer)

    @property
    def nbytes(self) -> int:
        """The bytes ``hidden`` takes: total tokens x hidden size x the element size."""
        return self.hidden.numel() * self.hidden.element_size()

    def state(self, indices: Sequence[int], device: torch.device) -> LayerState:
        """The states of examples ``indices`` right-padded (with zeros) as :func:`collate` pads
        their token ids."""
        width = max(self.lengths[i] for i in indices)
        hidden = torch.zeros(len(indices), width, self.hidden.shape[1], dtype=self.hidden.dtype)
        mask = torch.zeros(len(indices), width, dtype=torch.bool)
        for row, i in enumerate(indices):
            n = self.lengths[i]
            hidden[row, :n] = self.hidden[self.offsets[i] : self.offsets[i] + n]
            mask[row, :n] = True
        return LayerState(hidden=hidden.to(device), mask=mask.to(device), layer=self.layer)


def with_memory(batch: Batch, memory: MemoryInserts | None, indices: Sequence[int],
                epoch: int) -> Batch:
    """``batch`` (of examples ``indices``) with the memory ``memory`` draws for it in
    ``epoch`` (unchanged without ``memory``)."""
    if memory is None:
        return batch
    return attrs.evolve(batch, insert=memory.insert(indices, epoch))


@beartype
def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based) of ``total_steps``.

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then, with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` in ``[0, 1)``: ``constant``
    1, ``linear`` ``1 - p``, ``cosine`` ``(1 + cos(pi p)) / 2`` - 0 is reached at step
    ``total_steps``, just after the last one.
    """
    if schedule not in SCHEDULES:
        raise AutomrError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(progress, 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_step(
    llm: HFSplitLLM, micro_batches: Sequence[tuple[Batch, LayerState | None]], layer: int,
    optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float | None = None, *,
    runner: StepRunner | None = None, count: int | None = None, weight: float = 1.0,
) -> float:
    """One optimizer step over ``micro_batches`` (each with its cached layer-L states or None):
    gradients of the mean NLL over *all* their scored tokens are accumulated, so the step equals
    one batch of all of them; then clipping to ``max_grad_norm``, and the step at ``lr``.
    Returns that mean NLL.

    Data-parallel (:class:`~automr.recommenders.parallel.StepRunner`): ``micro_batches`` are
    this process's share, ``count`` the scored tokens of the whole effective batch, ``weight``
    0 for a process without a share; the returned NLL is the whole batch's."""
    if count is None:
        count = sum(int(batch.label_mask.sum()) for batch, _ in micro_batches)
    runner = runner or StepRunner(NLLModule(llm.model, layer), llm.device)
    return runner.step(micro_batches, count, optimizer, lr, max_grad_norm, weight)


def scored_tokens(example: TokenizedExample, loss_on: str = "target") -> int:
    """How many of ``example``'s tokens the loss scores (as :func:`collate` marks them)."""
    first = len(example.prompt_ids) if loss_on == "target" else 1
    return len(example.input_ids) - first


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
             batch_size: int, loss_on: str = "target", cache: LowerCache | None = None,
             memory: MemoryInserts | None = None, layer: int = 0) -> float:
    """Mean NLL per scored token over ``examples`` (upper half only when ``cache`` holds their
    layer-L states; with ``memory``, its fixed validation draw joined at ``layer``, the
    cache's when there is one). Under a launcher each process scores its round-robin share
    of the batches (collective: every process calls it)."""
    total, count = 0.0, 0
    for start in distributed.mine(range(0, len(examples), batch_size)):
        indices = range(start, min(start + batch_size, len(examples)))
        batch = with_memory(collate(examples[start : start + batch_size], pad_id, loss_on),
                            memory, indices, epoch=0)
        state = None if cache is None else cache.state(indices, llm.device)
        nll, n = batch_nll(llm, batch, layer if cache is None else cache.layer, state)
        total, count = total + float(nll), count + n
    total, count = distributed.all_sum([total, count])
    return total / max(count, 1)


def note_processes(record: dict[str, Any], world: int) -> None:
    """Record that ``world`` processes train from ``record["step"]`` on: ``processes`` is the
    latest count, ``processes_from_step`` every ``[step, count]`` since the run began (a record
    of an older version, which kept the latest count only, starts from that count)."""
    legs = record.setdefault("processes_from_step", [[0, record.get("processes", world)]])
    if legs[-1][1] != world:
        legs.append([record["step"], world])
    record["processes"] = world


def finetune(
    loaded: LoadedModel, dataset: PreparedDataset, out_dir: Path | str,
    config: FinetuneConfig = FinetuneConfig(), progress: bool = True,
    cache_dir: Path | str | None = None, memory: MemoryStore | None = None,
) -> dict[str, Any]:
    """Fine-tune ``loaded`` with LoRA on ``dataset``'s training samples into ``out_dir``.

    Resumes from ``out_dir/checkpoint`` when it was written with the same configuration,
    model and data. Returns the run record also written to ``out_dir/finetune.json``;
    ``loaded`` is the base model again afterwards (the tuned one is
    :meth:`FinetunedRun.load <automr.recommenders.runs.FinetunedRun.load>` of ``out_dir``).
    With ``config.context`` every prompt carries that context, computed with the base model
    before LoRA is attached (cached in ``cache_dir``). With ``config.memory``, ``memory`` is
    the store whose elements join the examples (built from this model at layer
    ``config.lora_from_layer``). A second fine-tune into ``out_dir`` while one runs there is
    refused (:func:`~automr.storage.folder_lock`).
    """
    require_instance(loaded, LoadedModel, "model", "automr.load_model(name)")
    require_instance(dataset, PreparedDataset, "dataset", "automr.PreparedDataset.load(folder)")
    require_instance(config, FinetuneConfig, "config", "automr.FinetuneConfig(...)")
    if loaded.tuned_from_layer is not None or has_lora(loaded.model):
        # taking the new adapter off would take its own off too, under an unchanged fingerprint
        raise AutomrError(f"{loaded.name!r} already carries a LoRA adapter (a fine-tune's): "
                          f"fine-tune its base model, automr.load_model(FinetunedRun.open("
                          f"folder).base_model)")
    out = Path(out_dir)
    cleanup = ExitStack()  # the lock (main process's) from the resume's checks to the record,
    distributed.on_main(lambda: cleanup.enter_context(folder_lock(out, "fine-tune")))
    with cleanup:  # and the caller's model (and global RNG) given back as they were
        cleanup.enter_context(keeping_rng())
        cleanup.enter_context(loaded.weights_kept())  # LoRA comes off; DDP rewrites weights
        return _finetune(loaded, dataset, out, config, progress, cache_dir, memory, cleanup)


def _finetune(loaded: LoadedModel, dataset: PreparedDataset, out: Path, config: FinetuneConfig,
              progress: bool, cache_dir: Path | str | None, memory: MemoryStore | None,
              cleanup: ExitStack) -> dict:
    """:func:`finetune` once its folder is locked."""
    check_lora_layers(loaded, config)
    _check_memory(loaded, dataset, config, memory)
    identity = json.loads(json.dumps({  # as it reads back from state.json
        "config": config.to_json(), "model": canonical_model_name(loaded.name),
        "model_fingerprint": loaded.fingerprint(), "dtype": dtype_name(loaded.model.dtype),
        "data_fingerprint": dataset_fingerprint(dataset),
        **({} if config.memory is None else {"memory": memory_identity(memory)}),
    }))
    state = _load_checkpoint(out, identity)
    train_samples = seeded_subset(dataset.samples("train"), config.max_train_samples,
                                  config.seed)
    valid_samples = seeded_subset(dataset.samples("valid"), config.max_valid_samples,
                                  config.seed)
    if not train_samples:
        raise AutomrError("the dataset has no training samples; check the protocol's split")
    if not valid_samples:  # a validation NLL of 0.0 would never improve: early stop, silently
        raise AutomrError("the dataset has no validation samples, which the fine-tune's "
                          "validation NLL (early stopping, best/) needs; check the protocol's "
                          "split (a longer window or fewer --train-months)")
    train_contexts = valid_contexts = None
    if config.context is not None:
        context = build_context(config.context, loaded, dataset, loaded.fingerprint(),
                                cache_dir, batch_size=config.batch_size, progress=progress)
        if isinstance(context, TRSRContext):  # each process writes its share of summaries
            context.precompute([*train_samples, *valid_samples])
        train_contexts, valid_contexts = (context.texts(train_samples),
                                          context.texts(valid_samples))
    torch.manual_seed(config.seed)
    trainable = [parameter.requires_grad for parameter in loaded.model.parameters()]
    modes = [(module, module.training) for module in loaded.model.modules()]
    cleanup.callback(_set_modes, modes)  # after LoRA is off (take_lora_off leaves eval mode)
    model = lora_model(loaded, config)
    cleanup.callback(take_lora_off, loaded.model, trainable)
    if state is not None:
        _load_adapter(model, out / "checkpoint")
        if state["best_valid_nll"] is not None and state["best_step"] == state["step"]:
            _save_best(model, loaded.tokenizer, out)  # killed before its best/ was written
    rank, world = distributed.rank(), distributed.world_size()
    if rank > 0:  # LoRA dropout: other masks in each process (process 0 draws one's masks)
        torch.manual_seed(_wrapped(config.seed * 1_000_003 + rank))
    llm = HFSplitLLM(model)
    progress = progress and rank == 0
    pad_id = loaded.tokenizer.pad_token_id
    train = encode_samples(loaded, dataset, train_samples, train_contexts)
    valid = encode_samples(loaded, dataset, valid_samples, valid_contexts)
    train_memory = valid_memory = None
    if config.memory is not None:
        train_memory, valid_memory = (
            MemoryInserts(memory, config.memory, samples, [len(ex.prompt_ids) for ex in examples],
                          seed=config.seed)
            for samples, examples in ((train_samples, train), (valid_samples, valid)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(train) / per_step)
    record = state or {**identity, "step": 0, "best_valid_nll": None, "best_step": 0,
                       "evaluations": [], "bad_evaluations": 0, "tokens": 0, "train_seconds": 0.0,
                       "done": False}
    # per optimizer step; checkpoints of older versions had none (None for their steps)
    record.setdefault("train_losses", [None] * record["step"])
    layer = config.lora_from_layer
    runner = StepRunner.build(model, layer, config.autocast)
    if state is not None:
        _restore(optimizer, runner.scaler, out / "checkpoint")
    note_processes(record, world)
    record["lora_layers"] = lora_layers(model)
    caches = (None, None)
    if config.cache_lower and layer > 0:  # these layers never change: their states, once
        started = time.perf_counter()
        caches = tuple(LowerCache.build(llm, examples, layer, config.batch_size, pad_id,
                                        progress=progress) for examples in (train, valid))
        record["lower_cache_bytes"] = sum(cache.nbytes for cache in caches)
        record["lower_cache_seconds"] = record.get("lower_cache_seconds", 0.0) + (
            time.perf_counter() - started)
    train_cache, valid_cache = caches
    if record["step"] == 0 and record["best_valid_nll"] is None:
        record["initial_valid_nll"] = _finite(mean_nll(
            llm, valid, pad_id, config.batch_size, cache=valid_cache, memory=valid_memory,
            layer=layer),
            "the validation NLL before training", record, lr=None, dtype=model.dtype)
    total_steps = steps_per_epoch * config.epochs
    columns = [TextColumn("finetune"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("finetune", total=total_steps, completed=record["step"], status="")
        while record["step"] < total_steps and not record["done"]:
            step = record["step"]
            epoch, index = divmod(step, steps_per_epoch)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
                _wrapped(config.seed * 1000 + epoch))).tolist()
            group = order[index * per_step :][:per_step]
            started = time.perf_counter()
            model.train()
            share, weight = group[rank::world], 1.0
            if not share:  # fewer samples than processes: a zero-weight batch joins the reduction
                share, weight = group[:1], 0.0
            micro = [share[i : i + config.batch_size]
                     for i in range(0, len(share), config.batch_size)]
            batches = [(with_memory(collate([train[i] for i in ids], pad_id, config.loss_on),
                                    train_memory, ids, epoch),
                        None if train_cache is None else train_cache.state(ids, llm.device))
                       for ids in micro]
            lr = config.lr * lr_factor(step, total_steps, config.warmup_steps, config.schedule)
            count = sum(scored_tokens(train[i], config.loss_on) for i in group)
            loss = train_step(llm, batches, layer, optimizer, lr, config.max_grad_norm,
                              runner=runner, count=count, weight=weight)
            if runner.scaler is None:  # fp16's loss scaler skips such a step instead
                _finite(loss, f"the training loss at step {record['step'] + 1}", record, lr,
                        model.dtype)
            model.eval()
            record["train_seconds"] = record.get("train_seconds", 0.0) + (
                time.perf_counter() - started)  # optimisation only, not validation
            record["step"] += 1
            record["tokens"] += sum(len(train[i].input_ids) for i in group)
            record["train_losses"].append(loss)
            bar.update(task, advance=1, status=f"loss {loss:.3f}")
            if record["step"] % config.eval_every == 0 or record["step"] == total_steps:
                improved = _evaluate(model, llm, valid, pad_id, config, record, valid_cache,
                                     lr, valid_memory)
                _save_checkpoint(model, optimizer, record, out, runner.scaler)
                if improved:  # after the checkpoint that names it: see _save_best
                    _save_best(model, loaded.tokenizer, out)
            elif config.checkpoint_every and record["step"] % config.checkpoint_every == 0:
                _save_checkpoint(model, optimizer, record, out, runner.scaler)
    record["done"] = True
    final = {k: v for k, v in record.items() if k != "bad_evaluations"}
    distributed.on_main(lambda: write_json_atomic(out / RESULT_FILE, final, indent=2))
    return final


def _check_memory(loaded: LoadedModel, dataset: PreparedDataset, config: FinetuneConfig,
                  memory: MemoryStore | None) -> None:
    """Refuse a memory that memory-aware fine-tuning cannot use: none or an unwanted one,
    another layer than the tuned layers', another model's, or another dataset's."""
    if config.memory is None:
        if memory is not None:
            raise AutomrError("a memory was given but the config has no memory training "
                              "(FinetuneConfig.memory)")
        return
    if memory is None:
        raise AutomrError("memory-aware fine-tuning needs the memory folder (--memory DIR)")
    if memory.layer != config.lora_from_layer:
        raise AutomrError(f"memory-aware fine-tuning joins memory where the tuned layers begin: "
                          f"the memory holds layer-{memory.layer} states, so use "
                          f"--lora-from-layer {memory.layer}")
    if memory.record.model_fingerprint != loaded.fingerprint():
        raise AutomrError(f"the memory in {memory.folder} was built with another model than "
                          f"{loaded.name!r}; build it with that model")
    memory.check_dataset(dataset)  # its elements are other prompts (another prompt domain)


def _wrapped(seed: int) -> int:
    """A seed derived from ``--seed`` in torch's 64 bits, as torch itself wraps a negative one
    (``-5`` seeds as ``2**64 - 5``): a large ``--seed``'s ``seed * 1000 + epoch`` overflowed
    at the first step."""
    return seed % 2**64


def memory_identity(memory: MemoryStore) -> dict:
    """What a memory-aware run's checkpoint must match: the memory's model, layer, encoder,
    whether it stores token states, and what it holds (:meth:`MemoryStore.digest`: another
    pooling, window or storage dtype gives other elements)."""
    record = memory.record
    return {"model_fingerprint": record.model_fingerprint, "layer": record.layer,
            "encoder": record.encoder, "store_token_states": record.store_token_states,
            "digest": MemoryStore.digest(memory.folder)}


def _evaluate(model, llm, valid, pad_id, config, record, cache: LowerCache | None,
              lr: float, memory: MemoryInserts | None) -> bool:
    """Validate and record it; whether it is a new best (the record names it, and the caller
    writes ``best/``)."""
    valid_nll = _finite(mean_nll(llm, valid, pad_id, config.batch_size, cache=cache,
                                 memory=memory, layer=config.lora_from_layer),
                        f"the validation NLL at step {record['step']}", record, lr, model.dtype)
    previous = record["evaluations"][-1]["step"] if record["evaluations"] else 0
    recent = [v for v in record["train_losses"][previous:] if v is not None]
    record["evaluations"].append({
        "step": record["step"], "valid_nll": valid_nll, "lr": lr,
        "train_loss": sum(recent) / len(recent) if recent else None})
    best = record["best_valid_nll"]
    if best is None or valid_nll < best:
        record.update(best_valid_nll=valid_nll, best_step=record["step"], bad_evaluations=0)
        return True
    record["bad_evaluations"] += 1
    if record["bad_evaluations"] >= config.patience:
        record["done"] = True  # early stop; best/ holds the best adapter
    return False


def _save_best(model, tokenizer, out: Path) -> None:
    """``best/``: the adapter and the tokenizer (with its pad token), so the folder loads with
    plain transformers + peft. Written after the checkpoint whose record names this step the
    best, and again on a resume from that checkpoint, so it always holds the adapter the record
    names (written before it, a run killed between the two resumed from the checkpoint before,
    and a rerun that validated the step no better - on another number of processes, or with a
    GPU's rounding - finished with a ``best/`` its record did not name). Collective under a
    launcher, as :func:`_save_checkpoint`."""
    def write() -> None:
        with atomic_dir(out / "best") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

    distributed.on_main(write)


def _finite(value: float, what: str, record: dict, lr: float | None,
            dtype: torch.dtype) -> float:
    """``value``, or one line saying what a NaN or infinite one means: the model's outputs
    overflow in ``dtype`` (float16 on Gemma) or training diverged at learning rate ``lr``
    (None: before training); the weights cannot recover either way. A NaN validation NLL was
    taken for the best, and ``best/`` replaced by the broken adapter."""
    if math.isfinite(value):
        return value
    half = dtype == torch.float16
    if lr is None:
        raise AutomrError(f"{what} is {value}: the model's outputs are not finite in "
                          f"{str(dtype).removeprefix('torch.')}"
                          + ("; use --dtype bfloat16 or float32" if half else ""))
    best = (f"best/ holds step {record['best_step']}'s adapter (validation NLL "
            f"{record['best_valid_nll']:.4f})" if record["best_valid_nll"] is not None
            else "no adapter was kept")
    raise AutomrError(f"{what} is {value}: training diverged (learning rate {lr:.3g})"
                      + (" or the outputs overflow in float16" if half else "")
                      + f"; {best}. Fine-tune again into a new --out with a lower --lr or "
                        f"--max-grad-norm" + (", or --dtype bfloat16" if half else ""))


def _rng_state() -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _save_checkpoint(model, optimizer, record: dict, out: Path, scaler=None) -> None:
    """The state after ``record["step"]`` optimizer steps: adapter, optimizer (AdamW moments),
    the RNG states (LoRA dropout; CUDA's too; every process's), the fp16 loss scaler's and the
    record (the schedule is a function of the step, so it needs no state of its own).
    Collective under a launcher: the main process writes it, and every process returns once
    it is written."""
    states = distributed.gather(_rng_state())
    rng = {**states[0], "ranks": states}  # top level: process 0's (what older versions read)

    def write() -> None:
        with atomic_dir(out / "checkpoint") as tmp:
            model.save_pretrained(tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng, tmp / "rng.pt")
            if scaler is not None:
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            write_json_atomic(tmp / "state.json", record, indent=2)

    distributed.on_main(write)


def _restore(optimizer: torch.optim.Optimizer, scaler, checkpoint: Path) -> None:
    """Optimizer, loss-scaler and RNG states from ``checkpoint`` (``rng.pt`` of older
    versions: the CPU state alone; this process's own when the checkpoint has one per
    process; a process it did not have keeps its own seed). Tensors are read onto the CPU
    (``map_location``) and the optimizer moves its state to its parameters' device."""
    try:
        optimizer.load_state_dict(_load_tensors(checkpoint / "optimizer.pt"))
        if scaler is not None and (checkpoint / "scaler.pt").is_file():
            scaler.load_state_dict(_load_tensors(checkpoint / "scaler.pt"))
        rng = _load_tensors(checkpoint / "rng.pt")
        rng = rng if isinstance(rng, dict) else {"cpu": rng}
        ranks = rng.get("ranks") or [rng]
        if distributed.rank() >= len(ranks):
            return  # a process the checkpoint did not have keeps its own seed
        rng = ranks[distributed.rank()]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():  # the GPUs it has (a resume with
            for device, state in enumerate(rng["cuda"][:torch.cuda.device_count()]):  # fewer
                torch.cuda.set_rng_state(state, device)  # was a raw IndexError)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise AutomrError(f"{checkpoint} does not fit this fine-tune ({error}); delete it "
                          f"to restart from step 0") from None


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
    for folder in ("checkpoint", "best"):
        if (out / folder).is_symlink():  # replaced in place, it would empty what it links to
            raise AutomrError(f"{out / folder} is a link: a fine-tune writes its own "
                              f"{folder}/ there and follows no link; remove it")
        restore_replaced(out / folder)  # killed while it was replaced: the older one back
    if (out / RESULT_FILE).exists():
        raise AutomrError(f"{out} already holds a finished fine-tune; choose another --out or "
                          f"delete it to start over")
    if not state_file.exists():
        if state_file.parent.exists():  # written atomically: without state.json it is damaged
            raise AutomrError(f"{state_file} is missing, so {state_file.parent} cannot be "
                              f"resumed; delete {state_file.parent} to restart the fine-tune")
        check_own_folder(out, "fine-tune", OWN_FILES)  # never beside another artifact
        if (out / "best").exists() and not (out / "best" / ADAPTER_CONFIG).is_file():
            raise AutomrError(f"{out / 'best'} is not a fine-tune's (no adapter in it) and a "
                              f"fine-tune would replace it; write the fine-tune into a new or "
                              f"empty folder")
        out.mkdir(parents=True, exist_ok=True)
        return None
    state = read_json(state_file, f"`automr finetune` (delete {state_file.parent} to restart)")
    if not isinstance(state, dict) or not {"step", "evaluations"} <= set(state):
        raise AutomrError(f"{state_file} is not a fine-tune checkpoint; delete "
                          f"{state_file.parent} to restart")
    wrong = [key for key, kinds in CHECKPOINT_FIELDS.items()
             if (key in state or key in CHECKPOINT_REQUIRED) and (
                 isinstance(state.get(key), bool) or not isinstance(state.get(key), kinds))]
    if wrong:  # edited by hand or damaged: a raw TypeError, KeyError or AttributeError later
        raise AutomrError(f"{state_file} is damaged ({', '.join(wrong)} missing or of another "
                          f"type); delete {state_file.parent} to restart")
    if isinstance(state.get("config"), dict):  # fields added since: their defaults then
        defaults = FinetuneConfig().to_json()
        state["config"] = {**{key: defaults[key] for key in ADDED_FIELDS}, **state["config"]}
    if isinstance(state.get("memory"), dict) and isinstance(identity.get("memory"), dict):
        identity = {**identity, "memory": {  # keys an older checkpoint lacks: as before
            k: v for k, v in identity["memory"].items()
            if k in state["memory"] or k not in MEMORY_RECORDED_LATER}}
    ours, theirs = _comparable(identity), _comparable(state)
    differs = [key for key in ours if theirs.get(key) != ours[key] and not (
        key == "model" and isinstance(theirs.get(key), str)
        and canonical_model_name(theirs[key]) == canonical_model_name(ours[key]))
        and not (key in RECORDED_LATER and key not in theirs)]
    if differs:
        named = setting_differences({k: theirs.get(k) for k in differs},
                                    {k: ours[k] for k in differs})
        raise AutomrError(f"{out} holds an unfinished fine-tune made with other settings "
                          f"({'; '.join(named)}); use another --out, or delete {out} to restart")
    return {**state, "config": identity["config"]}  # run options as given now, all fields


CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int, "best_step": int, "bad_evaluations": int, "tokens": int,
    "evaluations": list, "train_losses": list, "processes_from_step": list,
    "best_valid_nll": (int, float, type(None)), "train_seconds": (int, float)}
"""What a checkpoint's state.json holds, by type (the last three a checkpoint of an older
version may lack)."""
CHECKPOINT_REQUIRED = ("step", "best_step", "bad_evaluations", "tokens", "evaluations",
                       "best_valid_nll")


def _comparable(identity: dict) -> dict:
    """``identity`` without the run options (they may differ between a run and its resume)."""
    config = identity.get("config")
    if not isinstance(config, dict):
        return identity
    return {**identity, "config": {k: v for k, v in config.items() if k not in RUN_OPTIONS}}


def _load_adapter(model: PeftModel, folder: Path) -> None:
    from peft.utils import set_peft_model_state_dict

    weights = read_safetensors(folder / ADAPTER_WEIGHTS,
                               f"`automr finetune` (delete {folder} to restart)")
    try:
        loaded = set_peft_model_state_dict(model, weights)
    except RuntimeError as error:  # shapes of another adapter (another rank)
        raise AutomrError(f"{folder / ADAPTER_WEIGHTS} does not fit this run's adapter "
                          f"({str(error).strip().splitlines()[-1].strip()}); delete {folder} "
                          f"to restart") from None
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if missing:  # loaded leniently, these would start from their initial values
        raise AutomrError(f"{folder / ADAPTER_WEIGHTS} lacks {len(missing)} of the adapter's "
                          f"tensors (e.g. {missing[0]}); delete {folder} to restart")
