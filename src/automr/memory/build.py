"""Building a memory folder (resumable) and appending new interactions to it.

Which interactions become elements: every interaction of the prepared dataset's
``interactions`` (in-window, filtered), per user in timeline order, so every sample's memory
(a slice of its user's timeline) is covered. Users are processed in sorted order, grouped into
shards of whole users (a shard closes once it holds ``shard_elements`` elements); each shard
file carries its index entry, and the index is written atomically once every shard is done. A
rerun of the same build skips the finished shards (found by their files) and computes the rest
exactly as an uninterrupted build would (same shards, same batches).

Under a launcher (``torchrun``, ``accelerate launch``; :mod:`automr.distributed`) each process
encodes its round-robin share of the shards still to do; a shard file is complete once it has
its name (it carries its index entry in its metadata), so a build resumes per shard whatever
the number of processes before. The main process records finished shards in the index, and
the complete index once every process is done: the folder equals a single process's.
"""

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from automr import distributed
from automr.checks import require_int
from automr.data.catalog import Catalog
from automr.data.fingerprint import dataset_fingerprint
from automr.data.prepared import PreparedDataset
from automr.data.records import Interaction
from automr.errors import AutomrError
from automr.interfaces import require_instance
from automr.llm.loading import LoadedModel, canonical_model_name, dtype_name
from automr.memory.config import (
    CONFIG_FILE,
    MEMORY_FORMAT,
    STORAGE_DTYPES,
    MemoryConfig,
    MemoryRecord,
    catalog_fingerprint,
    titles_fingerprint,
)
from automr.memory.encoders import ENCODERS, Backbone, ElementEncoder, LayerEncoder
from automr.memory.shards import (
    INDEX_FILE,
    MemoryIndex,
    ShardEntry,
    UserEntry,
    shard_name,
    write_shard,
)
from automr.memory.store import MemoryStore
from automr.paths import home_path
from automr.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from automr.storage import folder_lock

ShardHook = Callable[[int, int], None]
"""Called as ``hook(shard_number, total_shards)`` after each shard is safely written."""

Timelines = dict[str, tuple[list[str], list[int]]]


def make_record(backbone: Backbone, layer: int, config: MemoryConfig, prompt_config,
                window: int | None, dataset: PreparedDataset | None,
                catalog: Catalog) -> MemoryRecord:
    """The ``config.json`` of a memory built with these settings. Its window and
    ``includes_item`` are what the element encoder of ``config.encoder``, built with them,
    reports in its ``settings()`` (the item encoder: none, True), so a kind of one's own
    that takes a window is rebuilt with it (:func:`memory_encoder`)."""
    llm = backbone.llm
    dtype = dtype_name(llm.dtype)
    storage = STORAGE_DTYPES[config.storage_dtype]
    base = LayerEncoder(backbone, layer, config.pooling, config.share_prefix)
    settings = ENCODERS[config.encoder].build(base, catalog, prompt_config, window or 1,
                                              config.window_includes_item).settings()
    if (not isinstance(settings, dict) or set(settings) != {"kind", "window", "includes_item"}
            or settings["kind"] != config.encoder):
        raise AutomrError(f"the {config.encoder!r} element encoder's settings() gave "
                          f"{settings!r}; it must give {{'kind': {config.encoder!r}, 'window': "
                          f"..., 'includes_item': ...}}, what the memory's config.json records")
    return MemoryRecord(
        # the model as known however typed (./m, m/, /abs/m): the config, so the digest, is one
        model_name=canonical_model_name(backbone.name), model_fingerprint=backbone.fingerprint,
        layer=layer,
        hidden_size=llm.hidden_size, num_layers=llm.num_layers, dtype=dtype,
        encoder=config.encoder, window=settings["window"],
        window_includes_item=settings["includes_item"],
        pooling=config.pooling, store_token_states=config.store_token_states,
        storage_dtype=dtype if storage is None else dtype_name(storage),
        shard_elements=config.shard_elements, share_prefix=config.share_prefix,
        prompt_config=prompt_config,
        dataset_fingerprint=None if dataset is None else dataset_fingerprint(dataset),
        catalog_fingerprint=catalog_fingerprint(catalog),
        titles_fingerprint=None if dataset is None else titles_fingerprint(
            catalog, (row.item for row in dataset.interactions)),
    )


def memory_encoder(
    memory: MemoryRecord | Path | str, model: LoadedModel | Backbone, catalog: Catalog
) -> ElementEncoder:
    """The element encoder a memory was built with, on ``model`` (e.g. for
    ``MemoryStore.open(dir, recompute=...)``). Refuses another model or layer, and a model
    with no fingerprint to compare where the memory records one."""
    record = memory if isinstance(memory, MemoryRecord) else MemoryRecord.read(Path(memory))
    if record.encoder not in ENCODERS:  # a kind of one's own, registered in another process
        raise AutomrError(f"the memory was built with the element encoder {record.encoder!r}, "
                          f"which automr.memory.ENCODERS lacks in this process (it has "
                          f"{', '.join(ENCODERS)}): register that kind again before using it")
    backbone = Backbone.of(model)
    record.check_backbone("its folder" if memory is record else memory, backbone.fingerprint)
    base = LayerEncoder(backbone, record.layer, record.pooling, record.share_prefix)
    return ENCODERS[record.encoder].build(base, catalog, record.prompt_config,
                                          record.window or 1, record.window_includes_item)


def build_memory(
    model: LoadedModel | Backbone,
    dataset: PreparedDataset,
    layer: int,
    config: MemoryConfig,
    out_dir: Path | str,
    batch_size: int = 16,
    progress: bool = True,
    on_shard: ShardHook | None = None,
) -> MemoryStore:
    """Encode every interaction of ``dataset`` into a memory folder at ``out_dir``.

    Resumable: if ``out_dir`` holds an interrupted build with the same settings, finished
    shards are kept and the rest is built. A folder holding a memory built with other
    settings (model, layer, encoder, dataset, ...) is refused. Returns the opened memory
    (with the encoder attached for token-state recomputation). ``batch_size``: prompts per
    lower-half forward; ``on_shard``: called after each shard is written (:data:`ShardHook`).
    Under a launcher (:mod:`automr.distributed`) each process encodes its share of the
    missing shards. A second build into ``out_dir`` while one runs there is refused
    (:func:`~automr.storage.folder_lock`).
    """
    batch_size = require_int(batch_size, "the batch size (--batch-size)", 1)
    layer = require_int(layer, "a memory's layer")
    require_instance(dataset, PreparedDataset, "dataset", "automr.PreparedDataset.load(folder)")
    require_instance(config, MemoryConfig, "config", "automr.MemoryConfig(...)")
    backbone = Backbone.of(model)
    layers = backbone.llm.num_layers
    if not 0 <= layer < layers:  # at the last boundary no layer above it would read it
        raise AutomrError(f"a memory's layer is one of 0..{layers - 1} for {backbone.name} "
                          f"(a layer above it reads it), got {layer}")
    window = config.window or dataset.protocol.recent_k
    record = make_record(backbone, layer, config, dataset.prompt_config, window, dataset,
                         dataset.catalog)
    encoder = memory_encoder(record, backbone, dataset.catalog)
    folder = home_path(out_dir)
    timelines = user_timelines(dataset.interactions)
    users = sorted(timelines)
    plan = plan_shards(users, {u: len(timelines[u][0]) for u in users}, config.shard_elements)

    lock = ExitStack()  # held by the main process from its checks to the complete index

    def prepare() -> list[int]:  # the folder is written only after the checks above
        lock.enter_context(folder_lock(folder, "memory build"))  # a second build at once
        index = _start(folder, record)  # (other settings) took the folder over, shards mixed
        for number, entry in enumerate(index.shards):
            if number >= len(plan) or entry.users != plan[number]:
                raise AutomrError(f"{folder} holds shards of a different build (shard "
                                  f"{number} has other users); delete the folder or pick "
                                  f"another one.")
        return [n for n in range(len(index.shards), len(plan))
                if _finished_shard(folder, n, plan[n]) is None]

    with lock:
        todo_shards = distributed.on_main(prepare)
        mine = distributed.mine(todo_shards)
        total = sum(len(items) for items, _ in timelines.values())
        elements = [sum(len(timelines[u][0]) for u in users) for users in plan]
        done = total - sum(elements[n] for n in todo_shards)
        progress = progress and distributed.is_main()
        with _progress(progress, done + sum(elements[n] for n in mine), done) as report:
            for number in mine:
                todo = {u: (timelines[u], range(len(timelines[u][0]))) for u in plan[number]}
                _write_shard(folder, number, encoder, record, todo, batch_size, report)
                if on_shard is not None:
                    on_shard(number, len(plan))
        distributed.barrier()
        distributed.on_main(lambda: _record_shards(folder, plan, timelines, complete=True))
    return MemoryStore.open(folder, recompute=encoder)


def _record_shards(folder: Path, plan: list[list[str]], timelines: Timelines,
                   complete: bool) -> None:
    """Rewrite the index with the finished shards that follow its last one, in order, once
    every process is done. Not after each shard: the index names every user's items, and
    rewriting it per shard made a build quadratic (870 shards of a 98.7k-item catalog: a 66
    MB index, 16 s per rewrite at the end); a resumed build finds its finished shards by
    their files, which carry their own entries."""
    index = MemoryIndex.read(folder)
    while len(index.shards) < len(plan):
        number = len(index.shards)
        entry = _finished_shard(folder, number, plan[number])
        if entry is None:
            if complete:
                raise AutomrError(f"shard {number} of {folder} is missing after every process "
                                  f"finished; rerun the same command to build it")
            break
        index.shards.append(entry)
        row = 0
        for user in plan[number]:
            items, times = timelines[user]
            index.users[user] = UserEntry(list(items), list(times), [(number, row, len(items))])
            row += len(items)
    index.complete = complete
    index.write(folder)


def _finished_shard(folder: Path, number: int, users: list[str]) -> ShardEntry | None:
    """The index entry a finished shard file carries, or None when the file is not there
    (or predates entries in the metadata: it is built again). A finished shard of other users
    is refused."""
    path = folder / shard_name(number)
    if not path.is_file():
        return None
    try:
        with safe_open(path, "pt") as file:
            meta = file.metadata() or {}
    except (SafetensorError, OSError):
        return None
    if "users" not in meta:
        return None
    if json.loads(meta["users"]) != users:
        raise AutomrError(f"{folder} holds shards of a different build (shard {number} has "
                          f"other users); delete the folder or pick another one.")
    distinct = int(meta["distinct"]) if "distinct" in meta else None
    return ShardEntry(file=path.name, elements=int(meta["elements"]), tokens=int(meta["tokens"]),
                      users=list(users), distinct=distinct)


def append_memory(
    out_dir: Path | str,
    model: LoadedModel | Backbone,
    interactions: Sequence[Interaction],
    catalog: Catalog,
    batch_size: int = 16,
    progress: bool = True,
    on_shard: ShardHook | None = None,
    dataset: PreparedDataset | None = None,
) -> MemoryStore:
    """Add elements for new ``interactions`` (existing or new users) in new shards.

    Old rows are never rewritten. A user's new interactions must not be older than its last
    stored one (ties are fine); they are taken in time order, ties in input order. One that
    repeats a stored interaction or another new one (the same user, item and second: one event,
    which a prepared dataset holds once) is taken once. Windows of
    the new elements reach back into the user's stored items. ``catalog`` must name every item
    involved (it may be larger than the one the memory was built with). The index is replaced
    only once every new shard and the record are written, so an interrupted append adds no
    element, and running it again appends each once. An
    ``automr.memory/1`` folder is upgraded to the current format (its old shards stay as
    they are and are read as before).

    The grown memory no longer holds the dataset it was built from: pass ``dataset``, the one
    it now holds (the old interactions and the new), to record its fingerprint, so that
    ``evaluate``/``annotate``/``recommend`` take that dataset and refuse others. Without it the
    record names no dataset and none is refused. Appending nothing changes nothing. A second
    append (or build) into the folder while one runs there is refused
    (:func:`~automr.storage.folder_lock`).
    """
    if distributed.launched():  # every process would append the same interactions again
        raise AutomrError("append_memory runs in one process: call it without a launcher "
                          "(under torchrun each process appended the new interactions, and a "
                          "process that read the index after another had appended added "
                          "them a second time)")
    folder = home_path(out_dir)
    if not folder.is_dir():  # refused below, with no folder made for a lock
        MemoryRecord.read(folder)
    with folder_lock(folder, "memory append"):  # two at once wrote one shard N
        record = MemoryRecord.read(folder)
        index = MemoryIndex.read(folder)
        if not index.complete:
            raise AutomrError(f"the memory in {folder} is incomplete; finish its build before "
                              f"appending to it.")
        encoder = memory_encoder(folder, model, catalog)
        held = {item for entry in index.users.values() for item in entry.items}
        interactions = list(interactions)
        for interaction in interactions:
            require_instance(interaction, Interaction, "interactions' item",
                             "automr.Interaction(user, item, timestamp)")
        new = user_timelines(_unrepeated(sorted(interactions, key=lambda i: i.timestamp),
                                         index))
        grown = held | {item for items, _ in new.values() for item in items}
        if record.titles_fingerprint is None or record.titles_fingerprint != (
                titles_fingerprint(catalog, grown)):  # else: the record of this very append,
            record.check_titles(folder, catalog, held)  # cut before its index (a rerun)
        if (dtype := dtype_name(encoder.base.backbone.llm.dtype)) != record.dtype:
            # one fingerprint in every dtype: the record's check above lets it through
            raise AutomrError(f"the memory in {folder} was built in {record.dtype}, but the model "
                              f"is loaded in {dtype} here: its new keys would not be the ones a "
                              f"build computes. Load it in {record.dtype} "
                              f"(load_model(..., dtype={record.dtype!r})) to append.")
        timelines: Timelines = {}
        todo = {}
        for user in sorted(new):
            old = index.users.get(user, UserEntry())
            items, times = new[user]
            if old.timestamps and times[0] < old.timestamps[-1]:
                raise AutomrError(
                    f"user {user!r}: new interaction at {times[0]} is older than the last one in "
                    f"the memory ({old.timestamps[-1]}); only later interactions can be appended.")
            unknown = [i for i in items if i not in catalog]
            if unknown:
                raise AutomrError(f"items {unknown[:5]} of user {user!r} are not in the catalog")
            timelines[user] = (old.items + items, old.timestamps + times)
            todo[user] = range(len(old.items), len(old.items) + len(items))
        plan = plan_shards(sorted(todo), {u: len(todo[u]) for u in todo}, record.shard_elements)
        total = sum(len(r) for r in todo.values())
        with _progress(progress, total, 0) as report:
            for offset, users in enumerate(plan):
                number = len(index.shards)
                shard_todo = {u: (timelines[u], todo[u]) for u in users}
                entry, segments = _write_shard(folder, number, encoder, record, shard_todo,
                                               batch_size, report)
                index.shards.append(entry)
                for user in users:
                    items, times = timelines[user]
                    previous = index.users.get(user, UserEntry())
                    index.users[user] = UserEntry(list(items), list(times),
                                                  [*previous.segments, segments[user]])
                if on_shard is not None:
                    on_shard(offset, len(plan))
        if plan:  # new shards may be shared (the format says so) and other data is held; the
            # record goes first: an append cut between the two leaves the old index, which a rerun
            # grows (cut after a new index, the old record let a rerun add every element twice)
            titles = (None if record.titles_fingerprint is None
                      else titles_fingerprint(catalog, grown))
            attrs.evolve(record, format=MEMORY_FORMAT, catalog_fingerprint=catalog_fingerprint(
                catalog), titles_fingerprint=titles, dataset_fingerprint=None if dataset is None
                else dataset_fingerprint(dataset)).write(folder)
        index.write(folder)
        return MemoryStore.open(folder, recompute=encoder)


def _unrepeated(interactions: Sequence[Interaction], index: MemoryIndex) -> list[Interaction]:
    """``interactions`` without those that repeat a stored one or an earlier one of them (the
    same user, item and timestamp): appending "everything since the last stored time" sends
    that time's interactions again, which stored twice shifted every later sample's memory by
    one."""
    seen = {(user, item, time) for user, entry in index.users.items()
            for item, time in zip(entry.items, entry.timestamps, strict=True)
            if time == entry.timestamps[-1]}  # new ones are no older than a user's last
    kept = []
    for inter in interactions:
        if (key := (inter.user, inter.item, inter.timestamp)) not in seen:
            seen.add(key)
            kept.append(inter)
    return kept


# -- planning --------------------------------------------------------------------------------
def user_timelines(interactions: Sequence[Interaction]) -> Timelines:
    """user -> (items, timestamps) in the given order (a prepared dataset's is time order)."""
    out: Timelines = {}
    for inter in interactions:
        items, times = out.setdefault(inter.user, ([], []))
        items.append(inter.item)
        times.append(inter.timestamp)
    return out


def plan_shards(users: Sequence[str], sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Whole users, in order, grouped into shards closed once they reach ``limit`` elements."""
    plan: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for user in users:
        if not sizes[user]:
            continue
        current.append(user)
        filled += sizes[user]
        if filled >= limit:
            plan.append(current)
            current, filled = [], 0
    if current:
        plan.append(current)
    return plan


def _start(folder: Path, record: MemoryRecord) -> MemoryIndex:
    """Prepare ``folder`` for a build with ``record``: resume a matching one, refuse others.

    A folder whose build with other settings finished no shard (a run that failed early)
    holds no work; it is started over rather than blocking the corrected command. The config
    is written before the index: a build cut between the two resumes without one (its
    finished shards carry their entries). Hidden files are no stranger's: a build killed
    while it wrote its config left only ``.config.json.partial-*`` there.
    """
    if (folder / CONFIG_FILE).is_file():
        existing = MemoryRecord.read(folder)
        index = MemoryIndex.read(folder) if (folder / INDEX_FILE).is_file() else MemoryIndex()
        # the model typed otherwise (a relative name, as before it was recorded resolved), not
        # the same weights in another folder: its fingerprint does not cover the tokenizer
        if canonical_model_name(existing.model_name) == canonical_model_name(record.model_name):
            existing = attrs.evolve(existing, model_name=record.model_name)
        if existing.titles_fingerprint is None:  # recorded before automr kept its titles
            existing = attrs.evolve(existing, titles_fingerprint=record.titles_fingerprint)
        if existing == record:
            if not (folder / INDEX_FILE).is_file():  # cut before its first index
                index.write(folder)
            return index
        if existing.format != record.format and (
                index.shards or any(folder.glob("shard-*.safetensors"))):
            raise AutomrError(
                f"{folder} holds a memory in the older format {existing.format!r} (still "
                f"readable as it is); a build cannot continue into it. Delete it or pick "
                f"another folder to build a {record.format!r} memory.")
        if index.shards or any(folder.glob("shard-*.safetensors")):
            differ = [f.name for f in attrs.fields(MemoryRecord)
                      if getattr(existing, f.name) != getattr(record, f.name)]
            raise AutomrError(f"{folder} holds a memory built with other settings "
                              f"({', '.join(differ)} differ); delete it or pick another folder.")
    elif folder.exists() and (not folder.is_dir() or any(
            not p.name.startswith(".") for p in folder.iterdir())):
        raise AutomrError(f"{folder} exists and is not a memory folder; refusing to write into "
                          f"it. Pick a new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    record.write(folder)  # first: a folder holding only the index was refused as a stranger's
    index = MemoryIndex()
    index.write(folder)
    return index


# -- encoding --------------------------------------------------------------------------------
def _write_shard(
    folder: Path, number: int, encoder: ElementEncoder, record: MemoryRecord,
    todo: dict[str, tuple[tuple[list[str], list[int]], range]], batch_size: int,
    report: Callable[[int], None],
) -> tuple[ShardEntry, dict[str, tuple[int, int, int]]]:
    """Encode the elements ``todo[user][1]`` of each user and write them as shard ``number``."""
    texts: list[str] = []
    segments: dict[str, tuple[int, int, int]] = {}
    for user, ((items, times), indices) in todo.items():
        segments[user] = (number, len(texts), len(indices))
        texts.extend(encoder.text(items, times, i) for i in indices)
    keys, states, lengths, rows = encode_all(encoder.base, texts, batch_size,
                                             record.store_token_states, encoder.reuses_texts,
                                             report)
    storage = record.torch_storage_dtype
    offsets = None
    keys = keys.to(storage)
    if states is not None:
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
        states = states.to(storage)
    _check_finite(folder, number, record, keys, states)
    distinct = None if rows is None else len(lengths)
    metadata = {"model_fingerprint": str(record.model_fingerprint), "layer": str(record.layer),
                "users": json.dumps(list(todo)), "elements": str(len(texts)),
                "tokens": str(sum(lengths)),  # no timing: a rebuild writes the same bytes
                **({} if distinct is None else {"distinct": str(distinct)})}
    name = write_shard(folder, number, keys, states, offsets, metadata, rows)
    entry = ShardEntry(file=name, elements=len(texts), tokens=sum(lengths), users=list(todo),
                       distinct=distinct)
    return entry, segments


def _check_finite(folder: Path, number: int, record: MemoryRecord, keys: Tensor,
                  states: Tensor | None) -> None:
    """Refuse a shard whose stored keys or token states are not finite: a storage dtype
    narrower than the model's states (float16's largest value is 65504) overflows to inf, which
    every later read would hand on as a key."""
    for what, values in (("keys", keys), ("token states", states)):
        if values is not None and not all(bool(torch.isfinite(rows).all())  # a shard's states
                                          for rows in values.split(4096)):  # take GBs: by parts
            narrower = record.storage_dtype == "float16" != record.dtype  # bf16: fp32's range
            raise AutomrError(
                f"the layer-{record.layer} {what} of shard {number} of {folder} are not finite "
                f"in {record.storage_dtype}" + (
                    f" (the model's {record.dtype} states overflow it): build with "
                    f"--storage-dtype model or float32" if narrower else
                    ": the model computes them so (an overflow or NaN); use another --dtype or "
                    "--layer"))


def encode_all(
    base: LayerEncoder, texts: Sequence[str], batch_size: int, keep_states: bool,
    dedupe: bool, report: Callable[[int], None] = lambda elements: None,
) -> tuple[Tensor, Tensor | None, list[int], Tensor | None]:
    """Encode ``texts`` in batches of similar length (longest first).

    Returns keys ``[R hidden]``, optionally the concatenated token states ``[T hidden]``, the
    token count of each of the R rows, and ``rows``: ``None`` without ``dedupe`` (R = one row
    per text, in order); with ``dedupe``, each distinct text is encoded and returned once (in
    order of first occurrence) and ``rows[i]`` ``[n]`` is the row of ``texts[i]``. The batches
    depend only on ``texts``, so equal inputs give bit-identical outputs.
    """
    distinct = list(dict.fromkeys(texts)) if dedupe else list(texts)
    tokens = base.tokenize(distinct)
    order = sorted(range(len(distinct)), key=lambda i: (-len(tokens[i]), i))
    keys = torch.empty(len(distinct), base.hidden_size, dtype=base.backbone.llm.dtype)
    states: list[Tensor | None] = [None] * len(distinct)
    uses: dict[str, int] = {}
    if dedupe:
        for text in texts:
            uses[text] = uses.get(text, 0) + 1
    for first in range(0, len(order), batch_size):
        batch = order[first: first + batch_size]
        encoded = base.encode_tokens([tokens[i] for i in batch], keep_states)
        keys[batch] = encoded.keys.to(keys.dtype).cpu()  # Mamba: float32 states, bf16 model
        for row, i in enumerate(batch):
            if encoded.states is not None:
                states[i] = encoded.states[row].to(keys.dtype).cpu()
        elements = sum(uses[distinct[i]] for i in batch) if dedupe else len(batch)
        report(elements)
    rows = None
    if dedupe:
        position = {text: i for i, text in enumerate(distinct)}
        rows = torch.tensor([position[t] for t in texts], dtype=torch.int64)
    lengths = [len(t) for t in tokens]
    stacked = None
    if keep_states:
        stacked = torch.cat([s for s in states if s is not None]) if distinct else \
            torch.empty(0, base.hidden_size, dtype=keys.dtype)
    return keys, stacked, lengths, rows


@contextmanager
def _progress(enabled: bool, total: int, done: int) -> Iterator[Callable[[int], None]]:
    """A rich bar over elements with elements/s (of this run); yields ``report(elements)``."""
    if not enabled:
        yield lambda elements: None
        return
    columns = (TextColumn("[bold]memory elements"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    counted = [0]
    with Progress(*columns) as bar:
        task = bar.add_task("memory", total=total, completed=done, speed="")

        def report(elements: int) -> None:
            counted[0] += elements
            rate = counted[0] / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=elements, speed=f"{rate:,.0f} elements/s")

        yield report
