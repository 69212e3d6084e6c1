"""``automr retriever train`` (eq. 6 on annotated samples: KL(S' || S), MLP retriever) and
``automr retriever score`` (what any retriever's pick is worth on annotated held-out samples).

Scoring reads eq. 5 off the annotations, so it is exact and needs no model: on each annotated
sample the gain of an element is ``log P(y | z_t, z_m) - log P(y | z_t)`` (nats), and a
retriever's gain is that of the element it ranks first among the annotated ones (k = 1; all of
the memory, or the seeded subset the annotation was made on). ``oracle`` is the best annotated
element, ``random`` the exact expectation over them, ``random seed S`` one seeded uniform draw
per sample (RQ2's spread, with no model run).
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from automr.annotation.run import Annotations, retrieval_dataset
from automr.data import PreparedDataset
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.evaluation.bootstrap import (
    bootstrap_ci,
    check_resample,
    check_seed,
    groups_for,
    paired_bootstrap,
    resample_field,
)
from automr.experiments.rq2 import Spread
from automr.interfaces import Retriever
from automr.memory import MemoryStore
from automr.retrievers import (
    RandomRetriever,
    RetrievalDataset,
    RetrieverTrainingConfig,
    evaluate_retriever,
    top_k,
    train_mlp_retriever,
)
from automr.retrievers.storage import check_retriever_target
from automr.storage import (
    files_digest,
    folder_lock,
    open_own,
    read_json,
    read_run_records,
    write_json_atomic,
)

SCORES_FORMAT = "automr.retriever-scores/1"
UNFINISHED = ".training-unfinished"
"""Beside a retriever while ``automr retriever train`` saves it and its training.json."""


def annotated_dataset(
    annotations_dir: Path | str, dataset_dir: Path | str, memory_dir: Path | str,
    form: str = "log", temperature: float = 1.0,
) -> tuple[Annotations, RetrievalDataset]:
    """The annotations and their retrieval rows (queries, annotated keys, labels S'), checked
    to come from ``memory_dir``."""
    annotations = Annotations.load(annotations_dir)
    store = MemoryStore.open(memory_dir)
    split = annotations.header["config"]["split"]
    return annotations, retrieval_dataset(annotations, PreparedDataset.load(dataset_dir), store,
                                          split, form, temperature)


def train_retriever(
    annotations_dir: Path | str, dataset_dir: Path | str, memory_dir: Path | str,
    out_dir: Path | str, form: str = "log", temperature: float = 1.0,
    valid_fraction: float = 0.2, config: RetrieverTrainingConfig | None = None,
    progress: bool = True, device: str = "auto",
) -> dict[str, Any]:
    """Train the MLP retriever on ``device`` (``auto``: CUDA when available); ``valid_fraction``
    of the annotated samples (seeded) are held out for early stopping on validation KL (a
    cheap proxy for validation Recall@1)."""
    config = config or RetrieverTrainingConfig()
    check_retriever_target(out_dir)  # not after the epochs
    with folder_lock(Path(out_dir), "retriever train"):  # two at once mixed their files
        return _train_retriever(annotations_dir, dataset_dir, memory_dir, out_dir, form,
                                temperature, valid_fraction, config, progress, device)


def _train_retriever(
    annotations_dir: Path | str, dataset_dir: Path | str, memory_dir: Path | str,
    out_dir: Path | str, form: str, temperature: float, valid_fraction: float,
    config: RetrieverTrainingConfig, progress: bool, device: str,
) -> dict[str, Any]:
    """:func:`train_retriever`'s work, while it holds ``out_dir``."""
    if not 0.0 <= valid_fraction < 1.0:
        raise AutomrError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    annotations, full = annotated_dataset(annotations_dir, dataset_dir, memory_dir, form,
                                          temperature)
    if annotations.header["config"]["split"] == "test":
        raise AutomrError(f"{annotations_dir} annotates test samples: a retriever trained on "
                          f"them would be scored on the samples it learned from; annotate "
                          f"--split train for training (test annotations are for `automr "
                          f"retriever score`)")
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(full), generator=generator)
    n_valid = max(1, round(valid_fraction * len(full))) if valid_fraction else 0  # at least one
    valid = full.select(order[:n_valid]) if n_valid else None
    train = full.select(order[n_valid:])
    if not len(train):
        raise AutomrError(f"--valid-fraction {valid_fraction} holds out all {len(full)} "
                          f"annotated samples: none is left to train on")
    del full  # the split holds its own copies: training needs one copy of the keys, not two
    retriever, history = train_mlp_retriever(train, valid, config,
                                             device=resolve_device(device), quiet=not progress)
    retriever = retriever.cpu()
    record = {
        "annotations": str(annotations_dir), "annotations_digest": annotations_digest(
            annotations_dir), "annotated_samples": list(annotations.header["samples"]),
        "label_form": form, "temperature": temperature,
        "train_samples": len(train), "valid_samples": n_valid,
        "config": attrs.asdict(config), "history": attrs.asdict(history),
        "valid": attrs.asdict(evaluate_retriever(retriever, valid)) if valid else None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unfinished = out / UNFINISHED  # until training.json is written: a cut run's retriever
    open_own(unfinished, "a").close()  # then says so (a first run, cut, has no run record)
    if (out / "training.json").is_file():  # cut before the new one is written, it would
        (out / "training.json").unlink()  # describe (and check_held_out trust) the older one
    retriever.save(out)
    write_json_atomic(out / "training.json", record)
    unfinished.unlink()
    return record


def _written_by_retriever_train(folder: Path) -> bool:
    """Whether ``folder``'s run records name ``automr retriever train`` (which always writes a
    training.json beside the retriever)."""
    return any(str(record.get("command")).endswith(" retriever train")
               for record in read_run_records(folder))


def check_held_out(retriever_dir: Path | str, annotations_dir: Path | str) -> None:
    """Refuse to score a retriever on samples it was trained on (its training.json records
    their ids, and the digest of their annotations): its picks there say what it memorised,
    not what it learned. Another folder annotating some of the same samples is refused too."""
    record = Path(retriever_dir) / "training.json"
    if not record.is_file():
        if (Path(retriever_dir) / UNFINISHED).exists() or _written_by_retriever_train(
                Path(retriever_dir)):
            raise AutomrError(f"{record} is missing though `automr retriever train` wrote "
                              f"{retriever_dir} (a cut run?): which samples it was trained on "
                              f"is unknown; train it again before scoring it")
        return
    training = read_json(record)
    if training.get("annotations_digest") == annotations_digest(annotations_dir):
        raise AutomrError(f"the retriever in {retriever_dir} was trained on {annotations_dir}; "
                          f"score it on held-out annotations (automr annotate --split test), "
                          f"or add --training-annotations to see how well it fits them")
    scored = Annotations.header_of(annotations_dir)["samples"]
    seen = set(training.get("annotated_samples", ())).intersection(scored)
    if seen:
        raise AutomrError(f"{len(seen)} of the {len(scored)} samples annotated in "
                          f"{annotations_dir} were among those the retriever in "
                          f"{retriever_dir} was trained on; score it on held-out annotations "
                          f"(automr annotate --split test), or add --training-annotations to "
                          f"see how well it fits them")


def annotations_digest(folder: Path | str) -> str:
    """What an annotation folder holds, hashed: its header (settings, model fingerprint and
    dtype, memory, sample ids), which decides every value."""
    return files_digest(folder, ("config.json",))


def element_gains(annotations: Annotations) -> list[torch.Tensor]:
    """Per sample, eq. 5's gain of each annotated element (nats, float64)."""
    return [element.double() - float(base)
            for base, element in zip(annotations.base, annotations.element, strict=True)]


@torch.no_grad()
def picked_gains(retriever: Retriever, gains: Sequence[torch.Tensor],
                 data: RetrievalDataset) -> torch.Tensor:
    """Per sample, the gain of the annotated element ``retriever`` ranks first."""
    scores = retriever.scores(data.queries, data.keys, data.mask)
    picked = top_k(scores, data.mask, 1)[0][:, 0].tolist()
    return torch.tensor([float(g[i]) for g, i in zip(gains, picked, strict=True)],
                        dtype=torch.float64)


@attrs.frozen
class RetrieverScores:
    """Per-sample gains (nats) of each scored retriever on the same annotated samples."""

    sample_ids: tuple[str, ...]
    gains: dict[str, torch.Tensor]
    best: torch.Tensor
    best_share: torch.Tensor
    """Per sample, the share of annotated elements that are best (random's chance of it)."""
    helped_share: torch.Tensor
    """Per sample, the share of annotated elements with a positive gain (random's chance of
    helping; not whether its expected gain is positive)."""
    random_seeds: tuple[int, ...]
    n_resamples: int = 1000
    seed: int = 0
    resample: str = resample_field()
    """What the intervals' bootstrap draws: ``samples``, or ``users`` (all of a drawn user's
    samples)."""

    def summary(self) -> dict[str, dict]:
        """Mean gain [95% CI], share helped, share picking the best element, and the paired
        difference against ``random`` (the expectation), for every row."""
        rows = {}
        bootstrap = {"n_resamples": self.n_resamples, "seed": self.seed,
                     "groups": groups_for(self.resample, self.sample_ids)}
        for name, gains in self.gains.items():
            ci = bootstrap_ci(gains, **bootstrap)
            paired = (None if name in ("random", "oracle") else paired_bootstrap(
                gains, self.gains["random"], **bootstrap))
            picked_best = (self.best_share if name == "random"
                           else (gains >= self.best).double())
            helped = self.helped_share if name == "random" else (gains > 0).double()
            rows[name] = {"gain": attrs.asdict(ci), "helped": float(helped.mean()),
                          "picked_best": float(picked_best.mean()),
                          "vs_random": None if paired is None else attrs.asdict(paired)}
        return rows

    def seed_spread(self) -> dict[str, Any] | None:
        """The random seeds' mean gains as RQ2 summarises runs: n, mean, sample sd, min, max."""
        means = [float(self.gains[f"random seed {s}"].mean()) for s in self.random_seeds]
        return attrs.asdict(Spread.of(means)) if means else None

    def markdown(self) -> str:
        users = "" if self.resample == "samples" else " (intervals resample the users)"
        lines = [f"{len(self.sample_ids)} annotated samples{users}; gain = log P(y | prompt, "
                 "element) - log P(y | prompt) of the element each retriever ranks first "
                 "(nats, k = 1); `random` is the exact expectation over the annotated elements "
                 "(its helped and picked best: the chance a uniform pick helps, or is the "
                 "best), `oracle` the best one.", "",
                 "| retriever | gain [95% CI] | helped | picked best | vs random [95% CI] |",
                 "|---|---|---|---|---|"]
        for name, row in self.summary().items():
            if name.startswith("random seed"):
                continue
            g, p = row["gain"], row["vs_random"]
            versus = "-" if p is None else f"{p['mean']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"
            lines.append(f"| {name} | {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] | "
                         f"{row['helped']:.2f} | {row['picked_best']:.2f} | {versus} |")
        spread = self.seed_spread()
        if spread is not None:
            lines += ["", f"Random retrieval over {spread['n']} seeds (one uniform draw per "
                      f"sample each): mean gain {spread['mean']:+.3f} ± {spread['std']:.3f} "
                      f"[{spread['min']:+.3f}, {spread['max']:+.3f}]."]
            for name in self.gains:
                if name in ("oracle", "random") or name.startswith("random seed"):
                    continue
                mean = float(self.gains[name].mean())
                above = sum(float(self.gains[f"random seed {s}"].mean()) < mean
                            for s in self.random_seeds)
                lines.append(f"`{name}` is above {above} of {spread['n']} seeds.")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"format": SCORES_FORMAT, "summary": self.summary(),
                "n_resamples": self.n_resamples, "seed": self.seed,  # the intervals' bootstrap
                "resample": self.resample,
                "random_seeds": list(self.random_seeds), "seed_spread": self.seed_spread(),
                "samples": {sid: {name: float(g[i]) for name, g in self.gains.items()}
                            for i, sid in enumerate(self.sample_ids)}}


def score_retrievers(
    annotations_dir: Path | str, dataset_dir: Path | str, memory_dir: Path | str,
    retrievers: Mapping[str, Retriever], *, random_seeds: Sequence[int] = range(10),
    form: str = "log", n_resamples: int = 1000, seed: int = 0, resample: str = "samples",
) -> RetrieverScores:
    """The gain of each retriever's first pick on annotated held-out samples (module
    docstring), beside ``oracle``, ``random`` and one row per random seed; the intervals
    resample ``resample``: ``samples`` or ``users``."""
    reserved = [n for n in retrievers if n in ("oracle", "random") or n.startswith("random seed")]
    if reserved:
        raise AutomrError(f"the names {', '.join(reserved)} are the reference rows' (oracle, "
                          f"random, random seed S); name the retrievers otherwise")
    check_resample(resample)
    check_seed(seed)
    random_seeds = list(random_seeds)
    if len(set(random_seeds)) != len(random_seeds):  # one draw counted as several seeds
        raise AutomrError(f"the random retrieval seeds must be distinct, got {random_seeds}")
    annotations, data = annotated_dataset(annotations_dir, dataset_dir, memory_dir, form)
    gains = element_gains(annotations)
    best = torch.tensor([float(g.max()) for g in gains], dtype=torch.float64)
    rows = {"oracle": best,
            "random": torch.tensor([float(g.mean()) for g in gains], dtype=torch.float64)}
    rows |= {name: picked_gains(r, gains, data) for name, r in retrievers.items()}
    rows |= {f"random seed {s}": picked_gains(RandomRetriever(seed=s), gains, data)
             for s in random_seeds}
    def share(picked: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return torch.tensor([float(picked(g).double().mean()) for g in gains],
                            dtype=torch.float64)

    return RetrieverScores(sample_ids=tuple(annotations.header["samples"]), gains=rows,
                           best=best, best_share=share(lambda g: g == g.max()),
                           helped_share=share(lambda g: g > 0),
                           random_seeds=tuple(random_seeds),
                           n_resamples=n_resamples, seed=seed, resample=resample)
