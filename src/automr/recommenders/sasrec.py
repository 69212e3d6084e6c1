"""SASRec (Kang & McAuley, 2018): the self-attentive sequential baseline of the paper (§5.1.2).

Item ids are ints ``1..n_items``; ``0`` is padding. A history is a list of item ids, oldest
first. The model embeds the last ``max_len`` items (item embedding scaled by sqrt(hidden),
plus a learned positional embedding), runs ``n_blocks`` pre-LayerNorm blocks of causal
multi-head self-attention and a point-wise feed-forward layer (each with dropout and a
residual), and scores item ``i`` at position ``t`` by the dot product of the position's output
with item ``i``'s embedding (shared input/output embeddings, as in the original).

Layout choices:

- Histories are *left*-padded, and positions count back from the most recent item (position 0
  is the newest). This is the original's layout (it left-pads every sequence to ``max_len``
  with positions 1..max_len, so the newest item always has the last position) while letting a
  batch be padded only to its own longest history. Padding keys are masked out of attention,
  so a history's scores do not depend on what it is batched with.
- Pre-LN blocks with a final LayerNorm (the original normalises the query only; pre-LN
  trains more stably and is what later re-implementations use).
- Training: ``loss="bce"`` is the paper's and the original's binary cross-entropy with one
  sampled negative per position, uniform over the items *not in the user's training
  sequence* (the whole sequence, not only the positive); ``loss="ce"`` (the default) is
  softmax cross-entropy over the whole catalog (Klenitskiy & Vasilev, 2023), computed over
  chunks of positions so its memory does not grow with batch x catalog. Adam, and early
  stopping on a validation metric (``monitor``) with ``patience`` validations, restoring the
  best weights.
- BCE's negatives never include the user's own items, so that model is never taught to score
  them down (it often ranks the last input item itself first). Ranking therefore leaves the
  sample's history out (``exclude_seen``, as the original's evaluation, whose candidates are
  unseen items); the target is never left out.
- Items that share a timestamp are put in a new random order every epoch (``shuffle_ties``):
  their order in a source is arbitrary (ML-100K: half the training transitions), and a model
  trained on one fixed order of them learns that order.

Defaults (docs/results/sasrec/): the paper's learning-rate x batch-size search on ML-100K's
validation split (search.json) chose batch 256; CE at lr 1e-2 and BCE at lr 1e-3 are level on
validation (three seeds each), CE wins on test and trains in half the epochs; shuffled ties
are level on validation and lift the test split above co-occurrence counting (ties.json).
The architecture: hidden 64, 2 blocks, 1 head, dropout 0.2, max_len 50 (use ``max_len=100``
to see the paper's whole capped sequence), every position trained (``windows``); the
original's defaults are hidden 50, 2 blocks, 1 head, dropout 0.5, max_len 50 (its ML-1M run:
dropout 0.2, max_len 200).
"""

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, final

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from einops import rearrange
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from automr.checks import beartype, int_field, real_field
from automr.defaults import SASREC_LOSSES
from automr.devices import keeping_rng
from automr.early_stopping import EarlyStopping
from automr.errors import AutomrError
from automr.evaluation.metrics import ndcg_at_k, ranks_from_scores, recall_at_k, seen_mask
from automr.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from automr.storage import load_component, loaded_module, save_component

SASREC_FORMAT: Final = "automr.sasrec/1"
WEIGHTS_FILE: Final = "model.safetensors"
PAD: Final = 0
MONITOR_PATTERN: Final = r"(recall|ndcg)@[1-9][0-9]*"
Loss = Literal["bce", "ce"]
LOSSES: Final = SASREC_LOSSES
CE_CHUNK_LOGITS: Final = 2**24
"""The most logits (positions x catalog items, 64 MiB in float32) that ``loss="ce"`` holds
at once: the positions are taken in chunks of ``CE_CHUNK_LOGITS // n_items`` (at least 1)."""

EvalSample = tuple[Sequence[int], int]
"""An evaluation sample: (history item ids, oldest -> newest; target item id)."""


@beartype
@attrs.frozen(kw_only=True)
class SASRecConfig:
    """Architecture and training hyperparameters of SASRec (defaults: see the module docstring)."""

    hidden: int = int_field(v.gt(0), default=64)
    n_blocks: int = int_field(v.ge(1), default=2)
    n_heads: int = int_field(v.ge(1), default=1)
    dropout: float = real_field(v.ge(0.0), v.lt(1.0), default=0.2)
    max_len: int = int_field(v.ge(1), default=50)
    windows: bool = True
    """Train on every position: each user's sequence cut into rows of ``max_len + 1`` items
    (False: only each user's last ``max_len + 1`` items, as the original; on ML-100K's
    validation split windows raise NDCG@5 from 0.048 to 0.062, docs/results/sasrec/)."""
    loss: Loss = attrs.field(default="ce", validator=v.in_(LOSSES))
    """``"bce"``: binary cross-entropy on the positive and one sampled negative per position
    (the paper and the original). ``"ce"``: softmax cross-entropy over the whole catalog at
    every position (Klenitskiy & Vasilev, 2023); see the module docstring."""
    shuffle_ties: bool = True
    """Every epoch, put the items of a training sequence that share a timestamp in a new
    random order (ties come from ``fit_sasrec(times=...)``; without times nothing moves). A
    source's order of ties is arbitrary: on ML-100K half the training-period transitions are
    between items rated in the same second, and training on one fixed order of them teaches
    that order."""
    lr: float = real_field(v.gt(0.0), v.lt(math.inf), default=1e-2)
    weight_decay: float = real_field(v.ge(0.0), v.lt(math.inf), default=0.0)
    batch_size: int = int_field(v.ge(1), default=256)
    max_epochs: int = int_field(v.ge(1), default=200)
    patience: int = int_field(v.ge(1), default=10)
    """Stop after this many validations without a strictly better ``monitor`` value."""
    valid_every: int = int_field(v.ge(1), default=2)
    """Validate after every ``valid_every`` epochs (and after the last one)."""
    monitor: str = attrs.field(default="ndcg@10", validator=v.matches_re(MONITOR_PATTERN))
    """The validation metric early stopping maximises: ``recall@K`` or ``ndcg@K``."""
    exclude_seen: bool = True
    """Rank only items outside the sample's history (its target always stays), in validation
    and in :class:`~automr.methods.SASRecMethod`. Negatives never include the user's items, so
    training never scores them down; the original evaluates the same way (its candidates are
    items the user has not interacted with)."""
    eval_batch_size: int = int_field(v.ge(1), default=512)
    seed: int = int_field(default=0)
    """Seeds initialisation, dropout, shuffling and negative sampling."""

    def __attrs_post_init__(self) -> None:
        if self.hidden % self.n_heads:
            raise AutomrError(
                f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})"
            )


@beartype
@attrs.frozen
class SASRecTrainingLog:
    """What happened during training: per-epoch loss, the validation ``monitor`` value of each
    validation (``valid_epochs`` says after which epochs), and the best epoch.

    ``best_epoch`` is 1-based (0 = no validation samples, the last weights are kept).
    """

    monitor: str
    losses: tuple[float, ...]
    valid: tuple[float, ...]
    valid_epochs: tuple[int, ...]
    best_epoch: int
    best_valid: float
    stopped_early: bool


class _Block(nn.Module):
    """Pre-LN transformer block: causal self-attention then a point-wise feed-forward layer."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_dropout = dropout
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        q, k, val = rearrange(
            self.qkv(self.attn_norm(x)), "b s (three h d) -> three b h s d", three=3, h=self.n_heads
        )
        attn = F.scaled_dot_product_attention(
            q, k, val, attn_mask=attend, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.out(rearrange(attn, "b h s d -> b s (h d)")))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


@final
class SASRec(nn.Module):
    """A SASRec model over items ``1..n_items`` (see the module docstring for the layout)."""

    def __init__(self, config: SASRecConfig, n_items: int) -> None:
        super().__init__()
        if n_items < 2:
            raise AutomrError(f"SASRec needs at least 2 items, got n_items={n_items}")
        self.config = config
        self.n_items = n_items
        self.provenance: dict[str, str] = {}
        """What it was trained on (e.g. ``dataset``: its fingerprint), saved with it."""
        self.item_emb = nn.Embedding(n_items + 1, config.hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            _Block(config.hidden, config.n_heads, config.dropout) for _ in range(config.n_blocks)
        )
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        for name, param in self.named_parameters():
            if param.dim() == 2:  # xavier-normal weights, as in the reference implementation
                nn.init.xavier_normal_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    @jaxtyped(typechecker=beartype)
    def encode(self, items: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq hidden"]:
        """Output states of left-padded histories (0 = padding); position ``t`` sees items ``<= t``.

        Padded positions attend only to themselves (so nothing is NaN) and are zeroed after
        every block; real positions never attend to padding.
        """
        seq = items.shape[1]
        if seq > self.config.max_len:
            raise AutomrError(f"histories longer than max_len={self.config.max_len}: {seq}")
        real = items != PAD
        if not bool((real[:, 1:] >= real[:, :-1]).all()):
            raise AutomrError("histories must be left-padded (padding id 0 only before items)")
        recency = torch.arange(seq - 1, -1, -1, device=items.device)
        x = self.item_emb(items) * math.sqrt(self.config.hidden) + self.pos_emb(recency)
        keep = real[..., None].to(x.dtype)
        x = self.emb_dropout(x) * keep
        eye = torch.eye(seq, dtype=torch.bool, device=items.device)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=items.device).tril()
        attend = (causal & (real[:, None, :] | eye))[:, None]  # [batch 1 seq seq], True = attend
        for block in self.blocks:
            x = block(x, attend) * keep
        return self.final_norm(x)

    @jaxtyped(typechecker=beartype)
    def forward(self, items: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch items"]:
        """Scores of every catalog column for the next item after each left-padded history.

        Column ``i`` is item id ``i``; column 0 (padding) is ``-inf`` so it never outranks a
        real item. Pass the matrix and the target ids straight to ``ranks_from_scores``.
        """
        last = self.encode(items)[:, -1]
        scores = last @ self.item_emb.weight.T
        scores[:, PAD] = -torch.inf
        return scores

    @jaxtyped(typechecker=beartype)
    def score(self, histories: Sequence[Sequence[int]]) -> Float[Tensor, "batch items"]:
        """Full-ranking scores ``[len(histories), n_items + 1]`` (column = item id, 0 = ``-inf``).

        Runs in eval mode without gradients; histories are truncated to their last ``max_len``
        items and left-padded to the longest one in the batch.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                items = pad_histories(histories, self.config.max_len, self.n_items)
                return self(items.to(self.item_emb.weight.device))
        finally:
            self.train(was_training)

    def save(self, directory: Path | str) -> None:
        """Write ``config.json`` and ``model.safetensors`` (with :attr:`provenance`) into
        ``directory`` (created)."""
        save_component(directory, SASREC_FORMAT,
                       {"n_items": self.n_items, "config": attrs.asdict(self.config)},
                       self.state_dict(), WEIGHTS_FILE, self.provenance)

    @classmethod
    def load(cls, directory: Path | str, device: str | torch.device = "cpu") -> "SASRec":
        """Rebuild a model written by :meth:`save` (in eval mode, on ``device``)."""
        meta, tensors = load_component(directory, SASREC_FORMAT, WEIGHTS_FILE, "SASRec.save")
        if not tensors:
            raise AutomrError(f"{directory} is not a saved SASRec model: {WEIGHTS_FILE} is "
                              f"missing (write it with SASRec.save)")
        model = loaded_module(
            directory, "SASRec model", WEIGHTS_FILE, "save it again with SASRec.save",
            lambda: cls(SASRecConfig(**meta["config"]), n_items=int(meta["n_items"])), tensors)
        model.provenance = dict(meta.get("provenance", {}))
        return model.to(device).eval()


@jaxtyped(typechecker=beartype)
def pad_histories(
    histories: Sequence[Sequence[int]], max_len: int, n_items: int
) -> Int[Tensor, "batch seq"]:
    """Keep each history's last ``max_len`` ids and left-pad with 0 to the longest kept length."""
    if not histories:
        raise AutomrError("no histories to pad")
    kept = [list(h)[-max_len:] for h in histories]
    if any(not h for h in kept):
        raise AutomrError("every history needs at least one item")
    _check_ids(kept, n_items)
    seq = max(len(h) for h in kept)
    return torch.tensor([[PAD] * (seq - len(h)) + h for h in kept], dtype=torch.long)


@beartype
def fit_sasrec(
    train_sequences: Sequence[Sequence[int]],
    valid_samples: Sequence[EvalSample],
    config: SASRecConfig,
    *,
    times: Sequence[Sequence[int]] | None = None,
    n_items: int | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
) -> tuple[SASRec, SASRecTrainingLog]:
    """Train SASRec on per-user item sequences; return the best model on validation and the
    :class:`SASRecTrainingLog`.

    ``train_sequences``: one time-ordered list of item ids (``1..n_items``) per user; every
    position after the first is a next-item target (with ``config.windows``, the default, each
    once, the sequence cut into windows of ``max_len``; without, only the last ``max_len``, as
    in the original), and ``bce``'s negatives avoid every item of the user's sequence.
    ``times``: the sequences' timestamps (non-decreasing), whose ties ``config.shuffle_ties``
    shuffles (none: every item its own time).
    ``valid_samples``: (history, target) pairs scored with full ranking each epoch for early
    stopping on ``config.monitor`` (empty = train all ``max_epochs`` and keep the last
    weights). ``n_items`` defaults to the largest id seen.
    """
    seen_ids = [i for s in train_sequences for i in s]
    seen_ids += [i for h, t in valid_samples for i in (*h, t)]
    n_items = n_items if n_items is not None else max(seen_ids, default=0)
    data = training_tensors(train_sequences, config.max_len, n_items, windows=config.windows,
                            times=times, negatives=config.loss == "bce")
    if valid_samples:
        _check_ids([[t] for _, t in valid_samples], n_items)
    device = torch.device(device)
    with keeping_rng():
        torch.manual_seed(config.seed)
        model = SASRec(config, n_items).to(device)
        data = TrainingTensors(*(t.to(device) for t in attrs.astuple(data, recurse=False)))
        log = _train_loop(model, data, valid_samples, quiet)
    return model.eval(), log


@attrs.frozen
class TrainingTensors:
    """Left-padded rows: ``inputs`` and next-item ``positives`` ``[rows, max_len]``, ``ties``
    ``[rows, max_len + 1]``, the timestamp group of each of the row's items (the inputs, then
    the last positive; ascending from 0 within a row, -1 on padding; without times every item
    is its own group), and ``users`` ``[rows]``, the row's user; that user's distinct item ids,
    sorted ascending, are ``seen_items[seen_offsets[user] : seen_offsets[user + 1]]`` (users one
    after another, so a heavy user costs only its own items; :func:`seen_table` pads them for a
    batch of rows)."""

    inputs: Tensor
    positives: Tensor
    ties: Tensor
    users: Tensor
    seen_items: Tensor
    seen_offsets: Tensor


def training_tensors(
    sequences: Sequence[Sequence[int]], max_len: int, n_items: int, *, windows: bool = False,
    times: Sequence[Sequence[int]] | None = None, negatives: bool = True,
) -> TrainingTensors:
    """Rows for users with >= 2 items, and every item of the user's *whole* sequence as the
    row's seen items (what negatives must avoid).

    ``windows=False`` (the original): one row per user, its last ``max_len + 1`` items.
    ``windows=True``: the sequence cut from its end into rows of up to ``max_len + 1`` items
    that overlap by one, so every position after the first is a target exactly once (with
    :func:`shuffled_ties`, each row is shuffled apart: a group of equal times across a row
    boundary may then give one of its items as a target twice in an epoch, another not).
    ``times``: the sequences' timestamps, which give ``ties`` (:func:`shuffled_ties`).
    ``negatives``: whether negatives are sampled from outside the seen items (the ``bce``
    loss): a user who has seen every item is then refused (``ce`` scores the whole catalog).
    """
    keep = [i for i, s in enumerate(sequences) if len(s) >= 2]
    users = [list(sequences[i]) for i in keep]
    if times is not None:
        if len(times) != len(sequences) or any(len(times[i]) != len(sequences[i]) for i in keep):
            raise AutomrError("times must give one timestamp per item of every sequence")
        if any(b < a for i in keep for a, b in itertools.pairwise(times[i])):
            raise AutomrError("every sequence's times must be non-decreasing")
    groups = [_time_groups(times[i] if times is not None else range(len(sequences[i])))
              for i in keep]
    if not users:
        raise AutomrError("SASRec needs at least one training sequence with 2 or more items")
    _check_ids(users, n_items)
    distinct = [sorted(set(s)) for s in users]
    full = [i for i, d in enumerate(distinct) if len(d) >= n_items]
    if full and negatives:
        raise AutomrError(f"training sequence {full[0]} contains every one of the {n_items} "
                          f"items, so no negative can be sampled for it")
    rows: list[tuple[int, int, int]] = []  # (user, first kept index, end)
    for user, sequence in enumerate(users):
        end = len(sequence)
        while end >= 2:
            rows.append((user, max(0, end - max_len - 1), end))
            end = end - max_len if windows else 0
    inputs = torch.zeros(len(rows), max_len, dtype=torch.long)
    positives = torch.zeros(len(rows), max_len, dtype=torch.long)
    ties = torch.full((len(rows), max_len + 1), -1, dtype=torch.long)
    for row, (user, start, end) in enumerate(rows):
        kept, offset = users[user][start:end], max_len - (end - start - 1)
        inputs[row, offset:] = torch.tensor(kept[:-1])
        positives[row, offset:] = torch.tensor(kept[1:])
        row_groups = groups[user][start:end]
        ties[row, offset:] = torch.tensor(row_groups) - row_groups[0]
    return TrainingTensors(
        inputs, positives, ties,
        users=torch.tensor([user for user, _, _ in rows], dtype=torch.long),
        seen_items=torch.tensor(list(itertools.chain.from_iterable(distinct)), dtype=torch.long),
        seen_offsets=torch.tensor([0, *itertools.accumulate(map(len, distinct))],
                                  dtype=torch.long),
    )


@jaxtyped(typechecker=beartype)
def seen_table(
    data: TrainingTensors, rows: Int[Tensor, " batch"], n_items: int
) -> Int[Tensor, "batch longest"]:
    """The seen items of ``rows``' users as :func:`sample_negatives` takes them: each row's
    distinct ids sorted ascending, right-padded with ``n_items + 1`` to the longest of them."""
    users = data.users[rows]
    start = data.seen_offsets[users]
    length = data.seen_offsets[users + 1] - start
    column = torch.arange(int(length.max()), device=rows.device)
    index = (start[:, None] + column).clamp_(max=data.seen_items.shape[0] - 1)
    return torch.where(column < length[:, None], data.seen_items[index], n_items + 1)


def _time_groups(times: Sequence[int]) -> list[int]:
    """0, 1, 2, ...: a new group wherever the time changes."""
    return [0, *itertools.accumulate(int(b != a) for a, b in itertools.pairwise(times))]


def shuffled_ties(data: TrainingTensors, generator: torch.Generator) -> TrainingTensors:
    """``data`` with each row's items put in a random order within every group of ``ties``
    (groups keep their order; padding stays on the left); consumes ``generator``."""
    items = torch.cat([data.inputs, data.positives[:, -1:]], dim=1)
    device = data.ties.device  # MPS has no float64 (SASRec failed there): float32 keys
    dtype = torch.float32 if device.type == "mps" else torch.float64
    keys = data.ties.to(dtype) + torch.rand(data.ties.shape, generator=generator, dtype=dtype,
                                            device=device)
    items = items.gather(1, keys.argsort(dim=1))
    inputs = items[:, :-1].contiguous()
    return attrs.evolve(data, inputs=inputs, positives=items[:, 1:] * (inputs != PAD))


def _train_loop(
    model: SASRec, data: TrainingTensors, valid: Sequence[EvalSample], quiet: bool
) -> SASRecTrainingLog:
    config = model.config
    generator = torch.Generator(device=data.inputs.device).manual_seed(config.seed)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    losses: list[float] = []
    values: list[float] = []
    valid_epochs: list[int] = []
    stopping = EarlyStopping(config.patience)
    columns = (TextColumn("SASRec {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task("training", total=config.max_epochs)
        for epoch in range(1, config.max_epochs + 1):
            losses.append(_train_epoch(model, optimizer, data, generator))
            status = f"epoch {epoch} loss {losses[-1]:.4f}"
            if valid and (epoch % config.valid_every == 0 or epoch == config.max_epochs):
                values.append(validation_metric(model, valid, config.monitor,
                                                config.eval_batch_size,
                                                exclude_seen=config.exclude_seen))
                valid_epochs.append(epoch)
                stopping.update(-values[-1], epoch, model)
                status += (f" valid {config.monitor} {values[-1]:.4f}"
                           f" (best {-stopping.best:.4f} @ {stopping.best_epoch})")
            progress.update(task, advance=1, description=status)
            if stopping.should_stop:
                break
    stopping.restore(model)
    return SASRecTrainingLog(
        monitor=config.monitor,
        losses=tuple(losses),
        valid=tuple(values),
        valid_epochs=tuple(valid_epochs),
        best_epoch=stopping.best_epoch,
        best_valid=max(values, default=0.0),
        stopped_early=len(losses) < config.max_epochs,
    )


def _train_epoch(
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    data: TrainingTensors,
    generator: torch.Generator,
) -> float:
    """One shuffled pass of :func:`training_loss` over the rows; the mean loss per position."""
    model.train()
    if model.config.shuffle_ties:
        data = shuffled_ties(data, generator)
    order = torch.randperm(data.inputs.shape[0], generator=generator, device=data.inputs.device)
    total, count = 0.0, 0
    for start in range(0, len(order), model.config.batch_size):
        rows = order[start : start + model.config.batch_size]
        batch_in, batch_pos = data.inputs[rows], data.positives[rows]
        first = int((batch_in != PAD).any(dim=0).nonzero()[0])  # drop all-padding columns
        batch_in, batch_pos = batch_in[:, first:], batch_pos[:, first:]
        seen = seen_table(data, rows, model.n_items)
        loss = training_loss(model, batch_in, batch_pos, seen, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        real = int((batch_pos != PAD).sum())
        total += float(loss.detach()) * real
        count += real
    return total / max(count, 1)


@jaxtyped(typechecker=beartype)
def training_loss(
    model: SASRec,
    inputs: Int[Tensor, "batch seq"],
    positives: Int[Tensor, "batch seq"],
    seen: Int[Tensor, "batch seen"],
    generator: torch.Generator,
    *,
    chunk_logits: int = CE_CHUNK_LOGITS,
) -> Float[Tensor, ""]:
    """Mean ``model.config.loss`` over the real positions (``positives != 0``) of a batch.

    ``"bce"``: binary cross-entropy with logits on the positive and one negative per position
    drawn by :func:`sample_negatives` (avoiding the row's ``seen``; consumes ``generator``).
    ``"ce"``: softmax cross-entropy of the positive against every item ``1..n_items`` (the
    padding column is not a class; ``seen`` and ``generator`` are unused), by
    :func:`catalog_cross_entropy` on chunks of at most ``chunk_logits`` logits. In training
    mode dropout applies, as in any forward pass.
    """
    states = model.encode(inputs)
    real = positives != PAD
    if model.config.loss == "ce":
        return catalog_cross_entropy(states[real], model.item_emb.weight[PAD + 1 :],
                                     positives[real] - 1, max(1, chunk_logits // model.n_items))
    negatives = sample_negatives(positives, seen, model.n_items, generator)
    pos_logit = (states * model.item_emb(positives)).sum(-1)[real]
    neg_logit = (states * model.item_emb(negatives)).sum(-1)[real]
    return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()  # BCE with logits


@jaxtyped(typechecker=beartype)
def catalog_cross_entropy(
    states: Float[Tensor, "positions hidden"],
    items: Float[Tensor, "n_items hidden"],
    targets: Int[Tensor, " positions"],
    chunk: int,
) -> Float[Tensor, ""]:
    """Mean softmax cross-entropy of each position's ``targets`` row of ``items`` against all
    of them (logits ``states @ items.T``), ``F.cross_entropy`` on ``chunk`` positions at a
    time. Each chunk's logits are recomputed in the backward pass (``checkpoint``), so either
    pass holds only a few ``chunk x n_items`` buffers (logits, log-probabilities and their
    gradients), never ``positions x n_items``; the loss and gradients are the dense
    computation's up to float rounding."""
    summed = [checkpoint(_summed_cross_entropy, part, items, part_targets, use_reentrant=False)
              for part, part_targets in zip(states.split(chunk), targets.split(chunk), strict=True)]
    return sum(summed, start=states.new_zeros(())) / targets.shape[0]  # no positions: NaN


def _summed_cross_entropy(states: Tensor, items: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(states @ items.T, targets, reduction="sum")


@jaxtyped(typechecker=beartype)
def sample_negatives(
    positives: Int[Tensor, "batch seq"],
    seen: Int[Tensor, "batch seen"],
    n_items: int,
    generator: torch.Generator,
) -> Int[Tensor, "batch seq"]:
    """One negative per position, uniform over items ``1..n_items`` that are neither the
    position's positive nor in its row's ``seen`` (the user's items, sorted ascending per row;
    distinct ids, padded on the right with any value > ``n_items``), as in the original SASRec.

    Exact rejection sampling, like the original: draw uniformly from ``1..n_items`` and redraw
    the positions whose draw is excluded until none is. A position with no allowed item is an
    :class:`AutomrError`. (Padding positions, positive 0, get some allowed id; they are unused.)
    """
    seen = seen.contiguous()

    def in_seen(values: Tensor) -> Tensor:
        at = torch.searchsorted(seen, values.contiguous()).clamp_(max=seen.shape[1] - 1)
        return seen.gather(1, at) == values

    forbidden = ((seen >= 1) & (seen <= n_items)).sum(dim=1, keepdim=True)
    forbidden = forbidden + ((positives >= 1) & ~in_seen(positives)).long()
    if bool((forbidden >= n_items).any()):
        raise AutomrError("no negative can be sampled: a user's items cover the whole catalog")
    draws = torch.randint(1, n_items + 1, positives.shape, generator=generator,
                          device=positives.device)
    bad = in_seen(draws) | (draws == positives)
    while bool(bad.any()):  # ends: every position has an allowed item (checked above)
        draws[bad] = torch.randint(1, n_items + 1, (int(bad.sum()),), generator=generator,
                                   device=positives.device)
        bad = in_seen(draws) | (draws == positives)
    return draws


@jaxtyped(typechecker=beartype)
def rank_targets(
    model: SASRec, samples: Sequence[EvalSample], exclude_seen: bool, batch_size: int = 512
) -> Int[Tensor, " batch"]:
    """0-based full-ranking rank of each sample's target among the ``n_items`` items
    (pessimistic ties); with ``exclude_seen`` the history's items other than the target are
    left out of the ranking."""
    ranks: list[Tensor] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        histories = [h for h, _ in chunk]
        scores = model.score(histories)
        targets = torch.tensor([t for _, t in chunk], dtype=torch.long, device=scores.device)
        exclude = seen_mask(histories, model.n_items + 1) if exclude_seen else None
        ranks.append(ranks_from_scores(scores, targets, exclude).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


@beartype
def validation_metric(
    model: SASRec, samples: Sequence[EvalSample], monitor: str, batch_size: int = 512,
    *, exclude_seen: bool = True,
) -> float:
    """Mean full-ranking ``monitor`` (``recall@K`` or ``ndcg@K``) of ``model`` on
    (history, target) samples (ranked as :func:`rank_targets` does)."""
    name, k = monitor.split("@")
    metric = recall_at_k if name == "recall" else ndcg_at_k
    ranks = rank_targets(model, samples, exclude_seen, batch_size)
    return float(metric(ranks, int(k)).mean())


def _check_ids(sequences: Sequence[Sequence[int]], n_items: int) -> None:
    bad = [i for s in sequences for i in s if not 1 <= i <= n_items]
    if bad:
        raise AutomrError(
            f"item ids must lie in 1..{n_items} (0 is padding); found e.g. {bad[:5]}"
        )
