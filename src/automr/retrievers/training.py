"""Retriever training (eq. 6): minimise KL(S' || S) over annotated samples.

Only the retriever learns; the recommender is frozen and absent here (its work is already in
the dataset's keys, queries and labels). Training follows the paper's retriever setting
(Adam, as for SASRec) with early stopping on a validation measure, restoring the best state.

Early stopping watches ``monitor``: ``"kl"`` (default; validation KL(S' || S), lower is
better), ``"top1"`` (validation top-1 agreement, higher is better) or ``"regret"`` (how far
the top-scored element's label lies below the best one's, ``log S'_best - log S'_picked``,
lower is better). KL is the default because it is what training optimises and it is smooth:
with nearly uniform labels (raw eq. 5, DESIGN.md §1) the argmax of S' is close to arbitrary
and top-1 agreement is noise. ``regret`` is the validation eq. 5 gain of what the retriever
would insert at k = 1: with ``log`` labels (``S' = softmax(gain / T)``) it is
``(gain_best - gain_picked) / T`` in nats, so its minimum over epochs is the epoch whose picks
raise the true title's likelihood most. It is read off the stored labels, so a pick whose
label underflows to 0 (over 708 T below the best, in float64; 2.1 nats at T = 0.003) counts
708 however far below it lies: small temperatures cap far-off picks' regret. All three are
recorded every epoch in the history.
"""

import math
from typing import Literal

import attrs
import torch
from attrs import validators as v
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field, real_field
from automr.devices import keeping_rng, resolve_device
from automr.early_stopping import EarlyStopping, epoch_progress
from automr.errors import AutomrError
from automr.interfaces import Retriever
from automr.retrievers.dataset import RetrievalDataset
from automr.retrievers.mlp import ACTIVATIONS, Activation, MLPRetriever, MLPRetrieverConfig
from automr.retrievers.selection import masked_log_softmax, top_k

Monitor = Literal["kl", "top1", "regret"]
MONITORS = ("kl", "top1", "regret")


@jaxtyped(typechecker=beartype)
def kl_loss(
    log_scores: Float[Tensor, "batch mem"], target_probs: Float[Tensor, "batch mem"],
    mask: Bool[Tensor, "batch mem"],
) -> Float[Tensor, ""]:
    """Eq. 6: ``mean_b sum_{m real} S'_bm (log S'_bm - log S_bm)``.

    ``log_scores`` must be log-probabilities over each row's real elements (e.g.
    :meth:`MLPRetriever.log_probs`); terms with ``S' = 0`` count as 0 (so masked elements and
    ``-inf`` log-scores there are harmless). The mean runs over all rows of the batch (a row
    without real elements contributes 0).
    """
    use = mask & (target_probs > 0)
    safe_log = log_scores.masked_fill(~use, 0.0)
    terms = torch.xlogy(target_probs, target_probs) - target_probs * safe_log
    return terms.masked_fill(~use, 0.0).sum(1).mean()


@beartype
@attrs.frozen(kw_only=True)
class RetrieverTrainingConfig:
    """Optimisation, early stopping and MLP settings for :func:`train_mlp_retriever`."""

    lr: float = real_field(v.gt(0.0), v.lt(math.inf), default=1e-3)
    """Adam's learning rate (> 0)."""
    weight_decay: float = real_field(v.ge(0.0), v.lt(math.inf), default=0.0)
    """Adam's ``weight_decay`` (an L2 term added to the gradients; >= 0, default none)."""
    batch_size: int = int_field(v.ge(1), default=256)
    """Training samples per optimiser step; the training set is reshuffled every epoch."""
    max_epochs: int = int_field(v.ge(1), default=200)
    """The most epochs (full passes over the training set) run."""
    patience: int = int_field(v.ge(1), default=10)
    """Stop after this many epochs without a strictly better validation ``monitor``."""
    monitor: Monitor = attrs.field(default="kl", validator=v.in_(MONITORS))
    """The validation value early stopping watches: ``kl`` or ``regret`` (lower is better) or
    ``top1`` (higher is better); see the module docstring. Unused without a validation set."""
    mlp_hidden: int = int_field(v.gt(0), default=256)
    """Width of the MLP's hidden layer (:class:`MLPRetrieverConfig`; the paper's 256)."""
    activation: Activation = attrs.field(default="gelu", validator=v.in_(tuple(ACTIVATIONS)))
    """The MLP's activation between its two linear layers: ``gelu`` or ``relu``."""
    temperature: float = real_field(v.gt(0.0), v.lt(math.inf), default=1.0)
    """The scores are ``MLP(z_t) . m / temperature`` (> 0; the paper's 1)."""
    normalize: bool = False
    """Standardise queries and unit-scale keys before eq. 3 (:class:`MLPRetrieverConfig`)."""
    seed: int = int_field(default=0)
    """Seeds initialisation and shuffling."""
    eval_batch_size: int = int_field(v.ge(1), default=1024)
    """Validation samples per batch when the validation metrics are measured after each
    epoch (a memory and speed setting: it does not change what is measured)."""


@beartype
@attrs.frozen
class RetrievalMetrics:
    """How well a retriever's distribution matches the labels on a dataset.

    ``kl``: mean KL(S' || softmax(scores)). ``top1``: share of samples whose top-scored
    element has the largest label (ties in S' count as agreement with any maximal element).
    ``regret``: mean ``log S'_best - log S'_picked`` of the top-scored element (0 = always
    the best; for ``log`` labels, the eq. 5 gain given up, in nats times 1/T; a pick whose
    label underflowed to 0 counts ``-log`` of the labels' smallest normal number, 708 in
    float64).
    ``uniform_kl``: the KL of equal scores on the same samples, what ``kl`` must beat for
    the scores to say more than "any element".
    """

    kl: float
    top1: float
    regret: float
    uniform_kl: float


@beartype
@attrs.frozen
class RetrieverTrainingHistory:
    """Per-epoch training KL and validation metrics; ``best_epoch`` is 1-based (0 = no
    validation set, the last state is kept)."""

    train_kl: tuple[float, ...]
    valid_kl: tuple[float, ...]
    valid_top1: tuple[float, ...]
    valid_regret: tuple[float, ...]
    monitor: Monitor
    best_epoch: int
    stopped_early: bool


@torch.no_grad()
@beartype
def evaluate_retriever(
    retriever: Retriever, dataset: RetrievalDataset, batch_size: int = 1024
) -> RetrievalMetrics:
    """KL, top-1 agreement and regret of any retriever's scores against the dataset's labels
    (means over its samples; an empty dataset is refused)."""
    if len(dataset) == 0:
        raise AutomrError("evaluate_retriever needs at least one annotated sample; the "
                          "dataset is empty")
    if isinstance(retriever, MLPRetriever) and retriever.config.hidden_size != dataset.hidden_size:
        raise AutomrError(f"the MLP retriever scores keys of size {retriever.config.hidden_size}"
                          f", but the dataset's are of size {dataset.hidden_size}")
    kl_total, uniform_total, hits, regret = 0.0, 0.0, 0, 0.0
    for batch in dataset.batches(batch_size):
        scores = retriever.scores(batch.queries, batch.keys, batch.mask)
        targets = batch.targets.float()
        log_s = masked_log_softmax(scores.float(), batch.mask)
        kl_total += float(kl_loss(log_s, targets, batch.mask)) * len(batch)
        log_uniform = masked_log_softmax(torch.zeros_like(log_s), batch.mask)
        uniform_total += float(kl_loss(log_uniform, targets, batch.mask)) * len(batch)
        best, _ = top_k(scores, batch.mask, 1)
        picked = batch.targets.gather(1, best)[:, 0]
        best_label = batch.targets.amax(1)
        hits += int((picked >= best_label).sum())
        tiny = torch.finfo(batch.targets.dtype).tiny
        regret += float((best_label.clamp_min(tiny).log()
                         - picked.clamp_min(tiny).log()).sum())
    n = len(dataset)
    return RetrievalMetrics(kl=kl_total / n, top1=hits / n, regret=regret / n,
                            uniform_kl=uniform_total / n)


@beartype
def train_mlp_retriever(
    train: RetrievalDataset, valid: RetrievalDataset | None, config: RetrieverTrainingConfig,
    *, device: str | torch.device = "cpu", quiet: bool = False,
) -> tuple[MLPRetriever, RetrieverTrainingHistory]:
    """Train the eq. 3 retriever on ``train`` with KL(S' || S); early-stop on ``valid``, on
    ``device`` (``auto``, ``cpu``, ``mps``, ``cuda[:N]`` or a ``torch.device``).

    Returns the retriever (eval mode, best validation state restored; the last state when
    ``valid`` is None) and the history. The retriever's provenance is ``train.metadata``.
    Seeded by ``config.seed``; the caller's global RNG is left untouched.
    """
    if len(train) == 0:
        raise AutomrError("train_mlp_retriever: the training set is empty")
    if valid is not None and valid.hidden_size != train.hidden_size:
        raise AutomrError(f"validation hidden size {valid.hidden_size} differs from training "
                          f"hidden size {train.hidden_size}")
    if valid is not None and len(valid) == 0:
        valid = None
    device = resolve_device(device)
    retriever_config = MLPRetrieverConfig(
        hidden_size=train.hidden_size, mlp_hidden=config.mlp_hidden,
        activation=config.activation, temperature=config.temperature,
        normalize=config.normalize,
    )
    with keeping_rng():
        torch.manual_seed(config.seed)
        retriever = MLPRetriever(retriever_config, provenance=train.metadata).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    optimizer = torch.optim.Adam(retriever.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    train = train.to(device)
    valid = None if valid is None else valid.to(device)
    history = _fit(retriever, optimizer, train, valid, config, generator, quiet)
    return retriever.eval(), history


def _fit(
    retriever: MLPRetriever, optimizer: torch.optim.Optimizer, train: RetrievalDataset,
    valid: RetrievalDataset | None, config: RetrieverTrainingConfig,
    generator: torch.Generator, quiet: bool,
) -> RetrieverTrainingHistory:
    train_kl: list[float] = []
    valid_kl: list[float] = []
    valid_top1: list[float] = []
    valid_regret: list[float] = []
    stopping = EarlyStopping(config.patience)
    with epoch_progress("retriever", config.max_epochs, quiet) as end_epoch:
        for epoch in range(1, config.max_epochs + 1):
            train_kl.append(_train_epoch(retriever, optimizer, train, config, generator))
            status = f"epoch {epoch} KL {train_kl[-1]:.4f}"
            if valid is not None:
                retriever.eval()
                metrics = evaluate_retriever(retriever, valid, config.eval_batch_size)
                valid_kl.append(metrics.kl)
                valid_top1.append(metrics.top1)
                valid_regret.append(metrics.regret)
                value = {"kl": metrics.kl, "top1": -metrics.top1,
                         "regret": metrics.regret}[config.monitor]
                stopping.update(value, epoch, retriever)
                status += (f" valid KL {metrics.kl:.4f} top-1 {metrics.top1:.3f}"
                           f" regret {metrics.regret:.4f}"
                           f" (best @ {stopping.best_epoch})")
            end_epoch(status)
            if stopping.should_stop:
                break
    stopping.restore(retriever)
    return RetrieverTrainingHistory(
        train_kl=tuple(train_kl), valid_kl=tuple(valid_kl), valid_top1=tuple(valid_top1),
        valid_regret=tuple(valid_regret),
        monitor=config.monitor, best_epoch=stopping.best_epoch,
        stopped_early=len(train_kl) < config.max_epochs,
    )


def _train_epoch(
    retriever: MLPRetriever, optimizer: torch.optim.Optimizer, train: RetrievalDataset,
    config: RetrieverTrainingConfig, generator: torch.Generator,
) -> float:
    """One shuffled pass; returns the sample-weighted mean training KL."""
    retriever.train()
    total = 0.0
    for batch in train.batches(config.batch_size, shuffle=True, generator=generator):
        log_s = retriever.log_probs(batch.queries, batch.keys, batch.mask)
        loss = kl_loss(log_s, batch.targets.to(log_s.dtype), batch.mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    return total / len(train)
