"""``automr annotate``: eq. 5 over a seeded subset of samples, saved in resumable shards.

An annotation folder holds ``config.json`` (model, layer, combiner, memory, samples) and
``shard-NNNNN.safetensors`` files, each with, for ``shard_size`` samples: ``base`` [n]
(log P(y | z_t)), ``element`` [sum of annotated elements] (log P(y | z_t, z_m), concatenated),
``index`` [the same] (each annotated element's position in its sample's memory: all of them,
or a seeded subset with ``element_subset``), ``offsets`` [n + 1] and ``queries`` [n hidden]
(the pooled layer-L prompt, z_t). Labels are derived later (:func:`retrieval_dataset`), so one
annotation serves every label form.

Under a launcher (:mod:`automr.distributed`) each process annotates its round-robin share of
the shards still missing; the folder is the same as a single process's, and resumes per shard
whatever the number of processes before.
"""

import itertools
import json
import re
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs
import torch

from automr import distributed
from automr.annotation.labels import labels
from automr.annotation.likelihood import UpperAnnotator
from automr.annotation.subsets import element_subset
from automr.checks import beartype, int_field
from automr.combiners import COMBINERS, pad_memory
from automr.combiners.names import COMBINER_NAMES
from automr.data import PreparedDataset, Sample, tokenize_sample
from automr.data.subsets import seeded_subset
from automr.errors import AutomrError
from automr.interfaces import Combiner, MemoryTokens, require, require_instance
from automr.llm.loading import LoadedModel, dtype_name, model_fingerprint
from automr.llm.split import HFSplitLLM
from automr.memory import MemoryStore
from automr.paths import home_path
from automr.progress import Progress
from automr.retrievers import RetrievalDataset
from automr.storage import (
    folder_lock,
    read_json,
    read_safetensors,
    safetensors_intact,
    save_safetensors,
    setting_differences,
    write_json_atomic,
)

FORMAT = "automr.annotations/1"
MADE_BY_CONFIG = "`automr annotate` into a new --out"
MADE_BY_SHARD = "`automr annotate` (rerun the same command: it redoes a damaged shard)"
# older folders resume without them
RECORDED_LATER = ("memory_encoder", "dtype", "memory_digest", "combiner_state")


@beartype
@attrs.frozen(kw_only=True)
class AnnotateConfig:
    """Which samples to annotate and how."""

    split: str = "train"
    """The split whose samples are annotated."""
    max_samples: int | None = int_field(attrs.validators.gt(0), default=256, optional=True)
    """A seeded subset of this many of the split's samples (None: all); those among them
    with an empty memory are then left out."""
    seed: int = int_field(default=0)
    """Seed of the sample subset."""
    combiner: str = attrs.field(default="concat", validator=attrs.validators.in_(
        COMBINER_NAMES))
    """The registry combiner (:data:`~automr.combiners.tokens.COMBINERS`) each element is
    inserted with; a retriever trained on the annotations is checked against it at evaluation."""
    element_batch: int = int_field(attrs.validators.gt(0), default=32)
    """Elements run through the upper half together (:class:`UpperAnnotator`)."""
    element_subset: int | None = int_field(attrs.validators.gt(0), default=None, optional=True)
    """Annotate this many seeded elements of each sample's memory (None: all of them)."""
    element_seed: int = int_field(default=0)
    """Seed of the element subsets (with the sample id: :func:`element_subset`)."""
    shard_size: int = int_field(attrs.validators.gt(0), default=16)
    """Samples per ``shard-NNNNN.safetensors`` file: the unit of resuming and of sharing
    among processes."""


def element_tokens(store: MemoryStore, sample: Sample, token_states: bool,
                   index: Sequence[int] | None = None) -> MemoryTokens:
    """One row per memory element of ``sample`` (or per element at ``index``, positions in the
    sample's memory): its pooled key, or its token states."""
    user, count, start = store.request_for(sample)
    chosen = list(range(count)) if index is None else list(index)
    if not token_states:
        keys = store.view(user, count, start).keys[chosen]
        return MemoryTokens(hidden=keys[:, None], mask=torch.ones(len(chosen), 1,
                                                                  dtype=torch.bool))
    if not chosen:
        return MemoryTokens(hidden=torch.zeros(0, 0, store.hidden_size),
                            mask=torch.zeros(0, 0, dtype=torch.bool))
    return pad_memory([store.token_states(user, start + i) for i in chosen])


def annotate_dataset(
    loaded: LoadedModel, dataset: PreparedDataset, store: MemoryStore, out_dir: Path | str,
    config: AnnotateConfig = AnnotateConfig(), progress: bool = True,
    combiner: Combiner | None = None,
) -> Path:
    """Annotate ``config.max_samples`` seeded samples of ``config.split`` into ``out_dir``.

    Samples with an empty memory are skipped (nothing to label). Rerunning with the same
    settings resumes: it annotates the shards that are missing or damaged (as a resumed
    memory build does). ``combiner``: an object (your own :class:`~automr.interfaces.Combiner`)
    in place of the registry's ``config.combiner``; the folder records it as
    ``module.ClassName`` (a built-in one by its registry name), and so does a retriever
    trained on it. (The built-in layouts share
    the prompt's upper-half work among elements where they can; another combiner takes the
    plain path, one upper-half pass per element: exact, slower.) A second annotation into
    ``out_dir`` while one runs there is refused (:func:`~automr.storage.folder_lock`).
    """
    require_instance(loaded, LoadedModel, "model", "automr.load_model or FinetunedRun.load")
    require_instance(dataset, PreparedDataset, "dataset", "automr.PreparedDataset.load(folder)")
    require_instance(store, MemoryStore, "memory", "automr.MemoryStore.open(folder)")
    require_instance(config, AnnotateConfig, "config", "automr.AnnotateConfig(...)")
    out = Path(out_dir)
    samples = [s for s in seeded_subset(dataset.samples(config.split), config.max_samples,
                                        config.seed) if s.memory]
    if not samples:
        raise AutomrError(f"no {config.split} sample among the {config.max_samples or 'all'} "
                          f"chosen has a memory element to annotate (every history fits in "
                          f"the recent items)")
    store.check_dataset(dataset)
    store.check_model(loaded)
    if combiner is not None:
        require(combiner, Combiner, "combiner",
                "a built-in one by name is AnnotateConfig(combiner=name)")
    named = config.combiner if combiner is None else next(
        (name for name, built_in in COMBINERS.items() if type(combiner) is built_in),
        f"{type(combiner).__module__}.{type(combiner).__qualname__}")
    combiner = COMBINERS[config.combiner]() if combiner is None else combiner
    check_inputs(store, samples, combiner.uses_token_states)
    annotator = UpperAnnotator(HFSplitLLM(loaded.model), store.layer, combiner,
                               element_batch=config.element_batch)
    header = {"format": FORMAT, "config": {**attrs.asdict(config), "combiner": named},
              "model": loaded.name,
              "model_fingerprint": loaded.fingerprint(), "dtype": dtype_name(loaded.model.dtype),
              "layer": store.layer,
              "memory": str(store.folder.resolve()),
              "memory_digest": MemoryStore.digest(store.folder), "memory_model_fingerprint":
              store.record.model_fingerprint, "pooling": attrs.asdict(store.record.pooling),
              "memory_encoder": store.record.encoder_settings(),
              **({} if named in COMBINERS else {"combiner_state": _state_of(combiner)}),
              "samples": [s.id for s in samples]}
    pool = store.record.pooling
    shards = [samples[i : i + config.shard_size]
              for i in range(0, len(samples), config.shard_size)]

    lock = ExitStack()  # held by the main process from its checks to the last shard

    def prepare() -> list[int]:
        lock.enter_context(folder_lock(out, "annotation"))  # a second one at once (other
        _start(out, header)  # settings) took the folder over; written once the inputs are checked
        return [n for n in range(len(shards)) if not safetensors_intact(_shard_path(out, n))]

    with lock:
        todo = distributed.on_main(prepare)
        mine = distributed.mine(todo)
        done = len(samples) - sum(len(shards[n]) for n in todo)  # annotated by an earlier run
        with Progress(disable=not (progress and distributed.is_main())) as bar:
            task = bar.add_task("annotating", total=done + sum(len(shards[n]) for n in mine),
                                completed=done)
            for number in mine:
                shard, path = shards[number], _shard_path(out, number)
                base, element, offsets, queries, indices = [], [], [0], [], []
                for sample in shard:
                    example = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                              dataset.prompt_config)
                    index = element_subset(len(sample.memory), config.element_subset,
                                           config.element_seed, sample.id)
                    memory = element_tokens(store, sample, combiner.uses_token_states, index)
                    response = example.input_ids[len(example.prompt_ids):]  # title + EOS
                    result = annotator.annotate(torch.tensor(example.prompt_ids),
                                                torch.tensor(response), memory)
                    base.append(result.base)
                    element.append(result.with_element)
                    indices.append(torch.tensor(index, dtype=torch.int64))
                    offsets.append(offsets[-1] + result.with_element.shape[0])
                    prompt = result.query[None]
                    queries.append(pool(prompt, torch.ones(prompt.shape[:2], dtype=torch.bool,
                                                           device=prompt.device))[0].float().cpu())
                    bar.advance(task)
                save_safetensors(path, {"base": torch.tensor(base),
                                        "element": torch.cat(element),
                                        "index": torch.cat(indices),
                                        "offsets": torch.tensor(offsets),
                                        "queries": torch.stack(queries)})
        distributed.barrier()  # every shard is written when any process returns
    return out


def _state_of(combiner: Combiner) -> str:
    """What tells two of a user's combiners of one class apart (a resume refuses another):
    its ``repr`` where its class writes one (attrs and dataclass fields, a module's layout;
    objects' addresses left out) and a module's weights."""
    shown = (re.sub(r" at 0x[0-9a-fA-F]+", "", repr(combiner))  # an address is per process
             if type(combiner).__repr__ is not object.__repr__ else "")
    if isinstance(combiner, torch.nn.Module):
        shown += " " + model_fingerprint(combiner, type(combiner).__qualname__)
    return shown


def _shard_path(out: Path, number: int) -> Path:
    return out / f"shard-{number:05d}.safetensors"


def check_inputs(store: MemoryStore, samples: Sequence[Sample], token_states: bool) -> None:
    """Refuse, before anything is written, a memory that does not hold these samples'
    histories (another dataset) or lacks the token states the combiner needs."""
    for sample in samples:
        store.request_for(sample)
    if token_states and samples and not store.record.store_token_states and (
            store.recompute is None):
        raise AutomrError(f"the combiner needs token states, but the memory in {store.folder} "
                          f"stores none; build it with --store-token-states or pick a "
                          f"*-token combiner")


def _start(out: Path, header: dict) -> None:
    """Resume ``out`` when it was started with ``header`` (memory paths compared resolved);
    refuse a folder with finished shards of other settings; start over one without any.
    Hidden files are no stranger's: a run killed while it wrote its config left only
    ``.config.json.partial-*`` there."""
    config_file = out / "config.json"
    if config_file.exists():
        previous = read_json(config_file, MADE_BY_CONFIG)
        if not isinstance(previous, dict) or previous.get("format") != FORMAT:
            raise AutomrError(f"{out} is not an annotation folder ({config_file} is another "
                              f"artifact's); refusing to write into it. Pick a new --out.")
        current = {k: v for k, v in header.items() if k in previous or k not in RECORDED_LATER}
        old, new = _comparable(previous), _comparable(json.loads(json.dumps(current)))
        if old == new:
            return
        if any(out.glob("shard-*.safetensors")):
            raise AutomrError(f"{out} holds annotations made with other settings "
                              f"({'; '.join(setting_differences(old, new))}); use another --out or "
                              f"delete it")
    elif out.exists() and (not out.is_dir() or any(
            not p.name.startswith(".") for p in out.iterdir())):
        raise AutomrError(f"{out} exists and is not an annotation folder; refusing to write "
                          f"into it. Pick a new --out.")
    write_json_atomic(config_file, header)


def _comparable(header: dict) -> dict:
    """``header`` with its memory path resolved (typed relative once, absolute once), or
    without it where the memory's content digest says which memory it is (one moved or
    copied elsewhere is the same memory), and without the run option ``element_batch``
    (elements per forward: a resume may lower it after running out of memory; the values stay
    the same, up to float rounding)."""
    if not isinstance(header.get("memory"), str):
        return header
    config = header.get("config")
    if isinstance(config, dict):  # folders started before element subsets annotate them all
        config = {"element_subset": None, "element_seed": 0, **config}
        config.pop("element_batch", None)
    if "memory_digest" in header:
        return {k: v for k, v in {**header, "config": config}.items() if k != "memory"}
    return {**header, "config": config,
            "memory": str(home_path(header["memory"]).resolve())}


@attrs.frozen
class Annotations:
    """Annotations read back: per sample, the base and per-element log-likelihoods, and the
    positions in the sample's memory of the elements annotated (``index``; all of them unless
    the header's ``config.element_subset`` is set)."""

    header: dict[str, Any]
    base: torch.Tensor
    element: list[torch.Tensor]
    queries: torch.Tensor
    index: list[torch.Tensor]

    @staticmethod
    def header_of(folder: Path | str) -> dict[str, Any]:
        """An annotation folder's config.json (settings, model, memory, the annotated
        samples' ids), checked; a missing, damaged or foreign one is one clear error."""
        folder = Path(folder)
        path = folder / "config.json"
        if not path.is_file():
            raise AutomrError(f"{folder} holds no annotations ({path} is missing); run "
                              f"`automr annotate` first")
        header = read_json(path, MADE_BY_CONFIG, FORMAT)
        try:
            if not isinstance(header["samples"], list):
                raise TypeError("samples is not a list")
            shard_size = int(header["config"]["shard_size"])
            for key in ("model", "memory_model_fingerprint", "layer"):  # read by
                if key not in header:  # retrieval_dataset and the memory check
                    raise KeyError(key)
            if not isinstance(header["layer"], int):
                raise TypeError("layer is not an integer")
            for key, value in (("split", header["config"]["split"]),  # read by retriever
                               ("combiner", header["config"]["combiner"])):  # train, score
                if not isinstance(value, str):
                    raise TypeError(f"{key} is not a string")
            if not isinstance(header["pooling"], dict):  # the memory check compares it
                raise TypeError("pooling is not an object")
            if shard_size < 1:
                raise ValueError(f"shard_size {shard_size}")
        except (KeyError, TypeError, ValueError) as error:
            raise AutomrError(f"{path} is damaged ({error!r} is wrong or missing); annotate "
                              f"again with {MADE_BY_CONFIG}") from None
        return header

    @classmethod
    def load(cls, folder: Path | str) -> "Annotations":
        """A finished annotation folder; a missing, damaged or foreign one is one clear error
        naming the file."""
        folder = Path(folder)
        header = cls.header_of(folder)
        count, shard_size = len(header["samples"]), int(header["config"]["shard_size"])
        expected = -(-count // shard_size)
        shards = [folder / f"shard-{n:05d}.safetensors" for n in range(expected)]
        missing = [shard for shard in shards if not shard.is_file()]
        if missing:
            raise AutomrError(f"{folder} is unfinished ({expected - len(missing)} of {expected} "
                              f"shards; {missing[0]} is missing): rerun the same `automr "
                              f"annotate` command to finish it")
        base, element, queries, index = [], [], [], []
        for number, shard in enumerate(shards):
            data = read_safetensors(shard, MADE_BY_SHARD)
            size = min(shard_size, count - number * shard_size)
            try:
                offsets = data["offsets"].tolist()
                pieces = [data["element"][a:b] for a, b in itertools.pairwise(offsets)]
                positions = ([data["index"][a:b] for a, b in itertools.pairwise(offsets)]
                             if "index" in data else  # written before element subsets: all
                             [torch.arange(len(p)) for p in pieces])
                if "index" in data and data["index"].shape != data["element"].shape:
                    raise ValueError("index and element disagree")
                if (data["base"].shape != (size,) or len(data["queries"]) != size
                        or len(pieces) != size or offsets[0] != 0
                        or offsets[-1] != data["element"].shape[0]):
                    raise ValueError(f"expected {size} samples")
            except (KeyError, ValueError, IndexError) as error:
                raise AutomrError(f"{shard} is damaged ({error!r}); it is not what "
                                  f"`automr annotate` writes: delete it and rerun the same "
                                  f"`automr annotate` command to redo it") from None
            base.append(data["base"])
            queries.append(data["queries"])
            element += pieces
            index += positions
        return cls(header, torch.cat(base), element, torch.cat(queries), index)

    def check_memory(self, store: MemoryStore) -> None:
        """Refuse a memory other than the one annotated with: its model, layer, pooling and
        (when recorded) encoder and content (:meth:`MemoryStore.digest`) must be the
        annotation's, as its keys pair with these queries and labels."""
        header, record = self.header, store.record
        made = {"model": header["memory_model_fingerprint"], "layer": header["layer"],
                "pooling": header["pooling"],
                "encoder": header.get("memory_encoder", record.encoder_settings())}
        given = {"model": record.model_fingerprint, "layer": record.layer,
                 "pooling": attrs.asdict(record.pooling), "encoder": record.encoder_settings()}
        if "memory_digest" in header:  # what it holds: one rebuilt in place is another
            made["content"], given["content"] = header["memory_digest"], MemoryStore.digest(
                store.folder)
        differ = [k for k in made if json.loads(json.dumps(made[k])) != json.loads(
            json.dumps(given[k]))]
        if differ:
            raise AutomrError(f"the annotations were made with another memory than the one in "
                              f"{store.folder} ({', '.join(differ)} differ); use the memory "
                              f"they were made with")

    def labels(self, form: str, temperature: float) -> list[torch.Tensor]:
        """Each sample's labels S' over its annotated elements
        (:func:`~automr.annotation.labels.labels` with ``form`` and ``temperature``)."""
        return [labels(float(b), e, form, temperature) for b, e in zip(self.base, self.element,
                                                                        strict=True)]


def retrieval_dataset(
    annotations: Annotations, dataset: PreparedDataset, store: MemoryStore,
    split: str | None = None, form: str = "log", temperature: float = 1.0,
) -> RetrievalDataset:
    """Queries, padded memory keys and labels S' for retriever training (eq. 6).

    Each row holds the sample's annotated elements only, in memory order (all of them, or the
    seeded subset the annotation was made on: eq. 6's KL is then over that subset). ``split``:
    where the annotated samples are (default: the split the annotation recorded). ``form``
    (:data:`~automr.annotation.labels.LABEL_FORMS`: ``log`` or ``paper``) and
    ``temperature`` make the labels S' = softmax(delta / temperature). Refuses (an
    :class:`~automr.errors.AutomrError`) a memory other than the annotated one
    (:meth:`Annotations.check_memory`) or a dataset other than its own.
    """
    require_instance(annotations, Annotations, "annotations", "automr.Annotations.load(folder)")
    require_instance(dataset, PreparedDataset, "dataset", "automr.PreparedDataset.load(folder)")
    require_instance(store, MemoryStore, "memory", "automr.MemoryStore.open(folder)")
    split = split or annotations.header["config"]["split"]
    annotations.check_memory(store)
    store.check_dataset(dataset)
    by_key = {s.id: s for s in dataset.samples(split)}
    missing = [k for k in annotations.header["samples"] if k not in by_key]
    if missing:
        raise AutomrError(f"{len(missing)} annotated samples are not in the {split} split of "
                          f"this dataset (e.g. {missing[0]}); use the dataset they came from")
    samples: Sequence[Sample] = [by_key[k] for k in annotations.header["samples"]]
    width = max((len(i) for i in annotations.index), default=0)
    keys = torch.zeros(len(samples), width, store.hidden_size,  # filled one sample's memory
                       dtype=store.record.torch_dtype)  # at a time, on the CPU as the rest
    # (a store opened on the GPU put keys there beside the CPU's mask: a device mismatch)
    mask = torch.zeros(len(samples), width, dtype=torch.bool)
    targets = torch.zeros(mask.shape, dtype=torch.float64)  # as the labels: see labels()
    for row, (index, label) in enumerate(zip(annotations.index, annotations.labels(
            form, temperature), strict=True)):
        if len(index) and int(index.max()) >= len(samples[row].memory):
            raise AutomrError(f"the annotation of sample {samples[row].id} names memory "
                              f"element {int(index.max())}, but its memory has "
                              f"{len(samples[row].memory)}: annotated with another dataset")
        keys[row, : len(index)] = store.view_sample(samples[row]).keys[index.long()].cpu()
        mask[row, : len(index)] = True
        targets[row, : label.shape[0]] = label
    subset = annotations.header["config"].get("element_subset")
    metadata = {"label_form": form, "temperature": str(temperature),
                "model": annotations.header["model"], **store.record.provenance(),
                "combiner": annotations.header["config"]["combiner"],
                "element_subset": "all" if subset is None else str(subset),
                "element_seed": str(annotations.header["config"].get("element_seed", 0))}
    return RetrievalDataset(queries=annotations.queries.to(keys.dtype), keys=keys, mask=mask,
                            targets=targets, metadata=metadata)
