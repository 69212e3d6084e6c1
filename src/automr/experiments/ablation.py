"""``automr ablate``: which memory encoder, split layer L, combiner and retriever help.

Ranking metrics on a CPU-sized test set move by one or two hits, so the ablation scores every
configuration by the quantity eq. 5 is built on, measured on held-out test samples: the gain
in log-likelihood of the true next title when the retrieved element is inserted,
``log P(y | z_t, z_m) - log P(y | z_t)`` (nats, k = 1). Every memory element of every test
sample is annotated once per cell (encoder, L, combiner), so each retriever's gain is exact
and comes from the same annotations:

- ``mlp``: the retriever trained (eq. 6) on annotated *training* samples of the same cell;
- ``semantic``: cosine similarity of the pooled prompt and the memory keys;
- ``random``: the expectation over a uniformly random element (the mean gain, no seed noise);
- ``oracle``: the best element (an upper bound for any retriever with k = 1).

Every step writes its own folder under the output folder and resumes when rerun.
"""

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch

from automr.annotation.labels import LABEL_FORMS, LABEL_TEMPERATURE
from automr.annotation.run import AnnotateConfig, Annotations, annotate_dataset, retrieval_dataset
from automr.checks import (
    beartype,
    int_field,
    is_int_tuple,
    is_str_tuple,
    real_field,
    subset_of,
    to_ints,
    to_strs,
)
from automr.combiners.names import COMBINER_NAMES
from automr.data import PreparedDataset
from automr.defaults import DEFAULT_LAYER
from automr.errors import AutomrError
from automr.evaluation.bootstrap import (
    bootstrap_ci,
    groups_for,
    paired_bootstrap,
    resample_field,
)
from automr.experiments.retriever import annotations_digest, picked_gains, train_retriever
from automr.llm.loading import LoadedModel, dtype_used, load_model
from automr.memory import MemoryConfig, build_memory
from automr.memory.encoders import ENCODERS
from automr.recommenders.runs import FinetunedRun
from automr.retrievers import (
    RetrievalDataset,
    RetrieverTrainingConfig,
    build_retriever,
    load_retriever,
)
from automr.storage import (
    check_own_folder,
    read_json,
    setting_differences,
    write_text_atomic,
)

ABLATION_RETRIEVERS = ("mlp", "semantic", "random", "oracle")


def _layers(instance: object, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if not value or len(set(value)) < len(value) or min(value) < 0:
        raise AutomrError(f"layers must be split layers >= 0, each named once; got "
                          f"{', '.join(map(str, value))}")


@beartype
@attrs.frozen(kw_only=True)
class AblationConfig:
    """The grid (every combination is one cell) and the sample sizes."""

    encoders: tuple[str, ...] = attrs.field(
        converter=to_strs, validator=[is_str_tuple, subset_of(tuple(ENCODERS))],
        default=("item",))
    layers: tuple[int, ...] = attrs.field(converter=to_ints, validator=[is_int_tuple, _layers],
                                          default=(DEFAULT_LAYER,))
    combiners: tuple[str, ...] = attrs.field(
        converter=to_strs, validator=[is_str_tuple, subset_of(COMBINER_NAMES)],
        default=("append-token", "prepend-token", "concat"))
    retrievers: tuple[str, ...] = attrs.field(
        converter=to_strs, validator=[is_str_tuple, subset_of(ABLATION_RETRIEVERS)],
        default=ABLATION_RETRIEVERS)
    train_samples: int = int_field(attrs.validators.gt(0), default=128)
    test_samples: int = int_field(attrs.validators.gt(0), default=64)
    label_form: str = attrs.field(default="log", validator=attrs.validators.in_(LABEL_FORMS))
    temperature: float = real_field(*LABEL_TEMPERATURE, default=1.0)
    seed: int = int_field(default=0)
    n_resamples: int = int_field(attrs.validators.gt(0), default=1000)
    resample: str = resample_field()
    """What the intervals' bootstrap draws: ``samples``, or ``users`` (all of a drawn user's
    samples)."""


@beartype
@attrs.frozen(kw_only=True)
class AblationRow:
    """One retriever in one cell: its per-sample gains (nats) and their summary."""

    encoder: str
    layer: int
    combiner: str
    retriever: str
    gains: tuple[float, ...]
    best_picked: float
    """Share of samples where the retriever picked the best element (``random``: the chance a
    uniform pick does, averaged over the samples)."""
    helped: float | None = None
    """Share of samples where the retrieved element raised the likelihood (``random``: the
    chance a uniform pick does, averaged over the samples; not whether the mean gain is
    positive). None: read off ``gains``."""
    samples: tuple[str, ...] = ()
    """The test samples' ids, in the order of ``gains`` (every cell scores the same ones)."""

    @property
    def cell(self) -> str:
        return f"{self.encoder}-L{self.layer}-{self.combiner}"


def pick_gains(kind: str, gains: Sequence[torch.Tensor], data: RetrievalDataset,
               retriever_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per test sample: the gain of the element ``kind`` retrieves, whether it was the best
    element and whether it raised the likelihood (for ``random``, the expected gain and the
    probabilities of both)."""
    best = torch.tensor([float(g.max()) for g in gains])
    if kind == "oracle":
        return best, torch.ones(len(gains)), (best > 0).float()
    if kind == "random":
        return (torch.tensor([float(g.mean()) for g in gains]),
                torch.tensor([float((g == g.max()).float().mean()) for g in gains]),
                torch.tensor([float((g > 0).double().mean()) for g in gains]))
    retriever = (load_retriever(retriever_dir, hidden_size=data.hidden_size) if kind == "mlp"
                 else build_retriever(kind, data.hidden_size))
    chosen = picked_gains(retriever, gains, data).float()
    return chosen, (chosen >= best).float(), (chosen > 0).float()


ABLATION_FILES = ("memory-", "annotations-", "retriever-", "ablation.")
"""What an ablation folder holds: its cells' folders (by prefix) and its table."""


def run_ablation(
    dataset_dir: Path | str, finetuned: Path | str, out_dir: Path | str,
    config: AblationConfig = AblationConfig(), device: str = "auto", dtype: str = "float32",
    cache_dir: Path | str | None = None, progress: bool = True,
    say: Callable[[str], None] = print,
) -> list[AblationRow]:
    """Build, annotate, train and score every cell of the grid into ``out_dir``; write
    ``ablation.json`` and ``ablation.md``. Models are loaded on ``device`` in ``dtype``
    (float32 by default, as ``automr ablate``'s: bfloat16 moves eq. 5's labels; ``auto`` is
    bfloat16 on CUDA); the retrievers train on ``device``."""
    dataset = PreparedDataset.load(dataset_dir)
    run = FinetunedRun.open(finetuned)
    run.check_plain()  # as annotate: labels from the model AutoMR is evaluated with
    run.check_dataset(dataset)
    out = Path(out_dir)
    check_own_folder(out, "ablation", ABLATION_FILES)  # a resumed one, or new
    for layer in config.layers:  # before any memory is built (a window memory takes hours)
        if run.lora_from_layer < layer:  # named as ablate's options, not as a built memory
            raise AutomrError(
                f"--layers {layer}: the fine-tune in {run.path} changes layers "
                f"{run.lora_from_layer}..{layer - 1} below it, so its lower half would not "
                f"compute the base model's layer-{layer} keys a memory holds; give --layers "
                f"at most {run.lora_from_layer}, or a fine-tune made with --lora-from-layer "
                f"{max(config.layers)}")
        run.check_memory(run.base_fingerprint, layer)
    made_by = {"model_fingerprint": run.fingerprint(),  # what reused annotations must match
               "dtype": dtype_used(dtype, device)}
    models: dict[str, LoadedModel] = {}

    def model(kind: str) -> LoadedModel:  # loaded once, and only when a step needs it
        if kind not in models:
            models[kind] = (
                load_model(run.base_model, device=device, dtype=dtype, cache_dir=cache_dir)
                if kind == "base" else run.load(device=device, dtype=dtype, cache_dir=cache_dir))
        return models[kind]

    rows: list[AblationRow] = []
    for encoder in config.encoders:
        for layer in config.layers:
            memory_dir = out / f"memory-{encoder}-L{layer}"
            say(f"[memory {encoder} L={layer}] {memory_dir}")
            store = build_memory(model("base"), dataset, layer, MemoryConfig(encoder=encoder),
                                 memory_dir, progress=progress)
            run.check_memory(store.record.model_fingerprint, layer)
            for combiner in config.combiners:
                rows += _score_cell(out, dataset, dataset_dir, store, memory_dir, encoder, layer,
                                    combiner, config, lambda: model("tuned"), made_by,
                                    progress, say, device)
    write_ablation(rows, out, config, {"dataset": str(dataset_dir),
                                       "finetuned": str(finetuned)})
    return rows


def _score_cell(out, dataset, dataset_dir, store, memory_dir, encoder, layer, combiner,
                config: AblationConfig, tuned: Callable[[], LoadedModel],
                made_by: dict[str, str], progress: bool, say: Callable[[str], None],
                device: str = "auto") -> list[AblationRow]:
    cell = f"{encoder}-L{layer}-{combiner}"
    folders = {split: out / f"annotations-{cell}-{split}" for split in ("train", "test")}
    sizes = {"train": config.train_samples, "test": config.test_samples}
    for split, folder in folders.items():
        needed = split == "test" or "mlp" in config.retrievers
        settings = AnnotateConfig(split=split, max_samples=sizes[split], seed=config.seed,
                                  combiner=combiner)
        if needed and not _finished(folder, settings, made_by):  # else resumed or refused
            say(f"[annotate {cell}, {split}] {folder}")
            annotate_dataset(tuned(), dataset, store, folder, settings, progress=progress)
    retriever_dir = out / f"retriever-{cell}"
    training = RetrieverTrainingConfig(seed=config.seed)
    if "mlp" in config.retrievers and not _trained(retriever_dir, folders["train"], config,
                                                   training):
        say(f"[train retriever {cell}] {retriever_dir}")
        train_retriever(folders["train"], dataset_dir, memory_dir, retriever_dir,
                        config.label_form, config.temperature, config=training,
                        progress=progress, device=device)
    test = Annotations.load(folders["test"])
    data = retrieval_dataset(test, dataset, store, "test", config.label_form, config.temperature)
    gains = [element - base for base, element in zip(test.base, test.element, strict=True)]
    rows = []
    for kind in config.retrievers:
        chosen, best, helped = pick_gains(kind, gains, data, retriever_dir)
        rows.append(AblationRow(encoder=encoder, layer=layer, combiner=combiner, retriever=kind,
                                gains=tuple(chosen.tolist()), best_picked=float(best.mean()),
                                helped=float(helped.double().mean()),
                                samples=tuple(test.header["samples"])))
    return rows


def _finished(folder: Path, settings: AnnotateConfig, made_by: dict[str, str]) -> bool:
    """The annotations in ``folder`` are complete and were made with ``settings`` by the
    model (fingerprint) and dtype of ``made_by``."""
    try:
        header = Annotations.load(folder).header
    except AutomrError:
        return False
    return (header["config"] == json.loads(json.dumps(attrs.asdict(settings)))
            and all(header.get(key, value) == value  # the dtype was recorded later
                    for key, value in made_by.items()))


def _trained(folder: Path, annotations: Path, config: AblationConfig,
             training: RetrieverTrainingConfig) -> bool:
    """A retriever in ``folder`` trained on ``annotations`` with these labels and settings;
    one trained otherwise is refused (a rerun must not score it as this configuration's)."""
    record_file = folder / "training.json"
    if not record_file.exists():
        return False
    record = read_json(record_file, f"`automr retriever train` (delete {folder} and rerun "
                                    f"the ablation to train it again)")
    made = {"label_form": record.get("label_form"), "temperature": record.get("temperature"),
            "config": record.get("config")}
    wanted = {"label_form": config.label_form, "temperature": config.temperature,
              "config": json.loads(json.dumps(attrs.asdict(training)))}
    differ = setting_differences(made, wanted)
    if not _same_annotations(record_file, record, annotations):
        differ.append(f"annotations other than those now in {annotations}")
    if differ:
        raise AutomrError(f"{folder} holds a retriever trained with other settings "
                          f"({'; '.join(differ)}); use another --out")
    return True


def _same_annotations(record_file: Path, record: dict, annotations: Path) -> bool:
    """The retriever of ``record`` was trained on the annotations now in ``annotations``: the
    same digest, or, for records from before it was kept, the same folder with annotations
    older than the retriever."""
    if "annotations_digest" in record:
        return record["annotations_digest"] == annotations_digest(annotations)
    return (Path(str(record.get("annotations"))).resolve() == annotations.resolve()
            and (annotations / "config.json").stat().st_mtime <= record_file.stat().st_mtime)


def write_ablation(rows: Sequence[AblationRow], out: Path, config: AblationConfig,
                   sources: dict) -> None:
    """``ablation.json`` (every per-sample gain) and ``ablation.md`` (mean gain with a
    bootstrap 95% interval, share of samples helped, share picking the best element, and the
    paired difference against random retrieval in the same cell)."""
    by_cell = {(r.cell, r.retriever): r for r in rows}
    lines = ["| encoder | L | combiner | retriever | samples | gain (nats) [95% CI] | helped | "
             "picked best | vs random [95% CI] |", "|---" * 9 + "|"]
    payload_rows = []
    for row in rows:
        gains = torch.tensor(row.gains, dtype=torch.float64)
        bootstrap = {"n_resamples": config.n_resamples, "seed": config.seed,
                     "groups": groups_for(config.resample, row.samples)}
        interval = bootstrap_ci(gains, **bootstrap)
        random = by_cell.get((row.cell, "random"))
        paired = (paired_bootstrap(gains, torch.tensor(random.gains, dtype=torch.float64),
                                   **bootstrap)
                  if random is not None and row.retriever != "random" else None)
        helped = (float((gains > 0).double().mean()) if row.helped is None else row.helped)
        versus = (f"{paired.mean:+.3f} [{paired.low:+.3f}, {paired.high:+.3f}]" if paired
                  else "-")
        lines.append(f"| {row.encoder} | {row.layer} | {row.combiner} | {row.retriever} | "
                     f"{len(row.gains)} | {interval.mean:+.3f} [{interval.low:+.3f}, "
                     f"{interval.high:+.3f}] | {helped:.2f} | {row.best_picked:.2f} | {versus} |")
        payload_rows.append({**attrs.asdict(row), "gain": attrs.asdict(interval),
                             "helped": helped,
                             "vs_random": attrs.asdict(paired) if paired else None})
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "ablation.json", json.dumps(
        {"config": attrs.asdict(config), **sources, "rows": payload_rows}, indent=1) + "\n")
    header = ("Gain = log P(true title | prompt, retrieved element) - log P(true title | "
              "prompt), in nats, on held-out test samples (k = 1); `random` is the exact "
              "expectation over the sample's elements (its helped and picked best: the chance "
              "a uniform pick helps, or is the best), `oracle` the best element" +
              ("" if config.resample == "samples" else "; intervals resample the users") +
              ".\n\n")
    write_text_atomic(out / "ablation.md", header + "\n".join(lines) + "\n")
