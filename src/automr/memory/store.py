"""Reading a memory folder: :class:`MemoryStore`, the :class:`~automr.interfaces.Memory`.

Keys of one user are read with ``safe_open(...).get_slice`` (only those rows, never a whole
file) unless ``preload=True`` keeps every shard's keys in RAM. They come back in the model's
dtype on the requested device whatever the storage dtype. In a shared shard (an item memory,
:mod:`automr.memory.shards`) elements are mapped to their item's stored row first; what comes
back is the same as from one row per element.
"""

import bisect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

import torch
from jaxtyping import Bool, Float, jaxtyped
from safetensors import SafetensorError, safe_open
from torch import Tensor

from automr.checks import beartype
from automr.data.catalog import Catalog
from automr.data.fingerprint import dataset_fingerprint
from automr.data.prepared import PreparedDataset
from automr.data.records import Sample
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.interfaces import MemoryView
from automr.llm.loading import FINGERPRINT_CHANGE, LoadedModel, dtype_name
from automr.memory.config import CONFIG_FILE, MemoryRecord
from automr.memory.encoders import ElementEncoder, LayerEncoder
from automr.memory.shards import INDEX_FILE, MADE_BY, MemoryIndex
from automr.paths import home_path
from automr.storage import files_digest

Request = tuple[str, int] | tuple[str, int, int]
"""``(user, count)`` or ``(user, count, start)``: elements ``start .. start+count-1``."""

SHARED_KEYS_IN_RAM: Final = 256 * 2**20
"""A shared shard's keys (one per distinct item, e.g. 3 MB for MovieLens-100K's 1,341 items)
are read whole and kept once a view needs them, when they take at most this many bytes."""


@final
class MemoryStore:
    """A built memory folder, read lazily. Open it with :meth:`open`.

    Element ``i`` of a user is the user's i-th interaction in time order (its position in
    the user's timeline of the prepared dataset); ``view``, ``token_states`` and
    :meth:`request_for` all use these absolute positions.
    """

    def __init__(self, folder: Path, record: MemoryRecord, index: MemoryIndex,
                 recompute: ElementEncoder | None, device: torch.device,
                 preload: bool) -> None:
        self.folder = folder
        self.record = record
        self.index = index
        self.recompute = recompute
        self.device = device
        self._handles: dict[int, Any] = {}
        self._preloaded: dict[int, Tensor] = {}
        self._rows: dict[int, Tensor] = {}
        self.shared_keys_in_ram = SHARED_KEYS_IN_RAM
        if preload:
            self.preload()

    def preload(self) -> None:
        """Keep every shard's keys in RAM (later views read no file)."""
        for number in range(len(self.index.shards)):
            if number not in self._preloaded:
                self._preloaded[number] = self._handle(number).get_tensor("keys")

    @classmethod
    def open(
        cls, folder: Path | str, *, recompute: ElementEncoder | None = None,
        expect_fingerprint: str | None = None, expect_layer: int | None = None,
        device: str | torch.device = "cpu", preload: bool = False,
    ) -> "MemoryStore":
        """Open a finished memory folder.

        ``expect_fingerprint`` / ``expect_layer`` refuse a memory built with another model or
        layer (:class:`~automr.errors.AutomrError` naming both). ``recompute`` is an element
        encoder with the memory's settings on the memory's model and catalog (another
        catalog, or a model with no fingerprint, is refused); with it, token states that
        were not stored are recomputed on demand (:meth:`token_states`). ``device``: where
        keys are returned, as :func:`~automr.devices.resolve_device` takes it (``auto``,
        ``cpu``, ``mps``, ``cuda[:N]``; one not here is refused) or a ``torch.device``.
        """
        device = resolve_device(device)
        folder = home_path(folder)
        record = MemoryRecord.read(folder)
        record.check(folder, expect_fingerprint, expect_layer)
        index = MemoryIndex.read(folder)
        if not index.complete:
            raise AutomrError(f"the memory in {folder} is incomplete: its build was "
                              f"interrupted. Run the same build again to finish it (finished "
                              f"shards are kept).")
        if recompute is not None:
            check_encoder(folder, record, index, recompute)
        store = cls(folder, record, index, recompute, device, preload=False)
        store._check_shards()
        if preload:
            store.preload()
        return store

    @staticmethod
    def digest(folder: Path | str) -> str:
        """What a memory folder holds, hashed: its config and index, which decide every key
        up to float rounding (a memory built again in the same folder with other settings has
        another; one built again with the same settings in other batches or on another device
        has this one, though its keys may differ in the last bits, and with them a random
        retriever's draws, which hash the keys). The config names the model (its folder
        resolved, or its name): the same weights in another folder give another digest. A
        folder that holds no memory is refused, as :meth:`open` refuses it."""
        MemoryRecord.read(home_path(folder))
        return files_digest(folder, (CONFIG_FILE, INDEX_FILE))

    def check_dataset(self, dataset: PreparedDataset) -> None:
        """Refuse a dataset other than the one the memory was built from, when its build
        recorded one (the fingerprint covers the source files, the prompt domain, the
        protocol and the catalog)."""
        built = self.record.dataset_fingerprint
        if built is not None and built != dataset_fingerprint(dataset):
            raise AutomrError(f"the memory in {self.folder} was built from another dataset "
                              f"(other data, prompt domain, protocol or catalog); build one "
                              f"from this dataset with `automr memory build`")

    def check_model(self, loaded: LoadedModel) -> None:
        """Refuse ``loaded`` unless its layers below the memory's are those of the model
        that built it: that model, or a fine-tune of it whose adapter starts at the memory's
        layer or above."""
        if not loaded.shares_lower_half(self.record.model_fingerprint, self.layer):
            raise AutomrError(
                f"the memory in {self.folder} was built with another model (fingerprint "
                f"{self.record.model_fingerprint[:12]}) than the lower {self.layer} layers of "
                f"{loaded.name!r}: build it with that model (a fine-tune's: its base, the "
                f"adapter from layer {self.layer} up; a fine-tune of your own says so with "
                f"LoadedModel(..., base_fingerprint=, tuned_from_layer=)). "
                f"{FINGERPRINT_CHANGE}")

    # -- the Memory protocol ------------------------------------------------------------
    @property
    def layer(self) -> int:
        """The layer L the keys were taken at (the memory's record)."""
        return self.record.layer

    @property
    def hidden_size(self) -> int:
        """The width of each key (the model's hidden size, from the memory's record)."""
        return self.record.hidden_size

    def users(self) -> Sequence[str]:
        """Every user with elements, sorted."""
        return tuple(sorted(self.index.users))

    def count(self, user: str) -> int:
        """How many elements ``user`` has (0 for an unknown user)."""
        entry = self.index.users.get(user)
        return 0 if entry is None else len(entry.items)

    def view(self, user: str, count: int, start: int = 0) -> MemoryView:
        """``count`` elements of ``user`` from ``start`` (default: the ``count`` oldest).

        A sample's memory is ``view(*request_for(sample))``; its ``start`` is nonzero only when
        the protocol's ``max_history`` cut the user's oldest interactions off its history.
        """
        entry = self._entry(user, count, start)
        stop = start + count
        if entry is None or count == 0:
            empty = torch.empty(0, self.hidden_size, dtype=self.record.torch_dtype,
                                device=self.device)
            return MemoryView(keys=empty, item_ids=(), timestamps=())
        pieces = [self._keys(shard, lo, hi) for shard, lo, hi in entry.rows(start, stop)]
        keys = torch.cat(pieces).to(device=self.device, dtype=self.record.torch_dtype)
        return MemoryView(keys=keys, item_ids=tuple(entry.items[start:stop]),
                          timestamps=tuple(entry.timestamps[start:stop]))

    @jaxtyped(typechecker=beartype)
    def token_states(self, user: str, index: int) -> Float[Tensor, "seq hidden"]:
        """Layer-L states of every token of element ``index``: stored ones if the memory has
        them, else recomputed through the lower half for this element only."""
        entry = self._entry(user, 1, index)
        if entry is None:
            raise AutomrError(f"user {user!r} has no memory")
        if self.record.store_token_states:
            shard, row = entry.locate(index)
            row = self._stored_row(shard, row)
            handle = self._handle(shard)
            first, last = handle.get_slice("offsets")[row: row + 2].tolist()
            states = handle.get_slice("states")[first:last]
        elif self.recompute is not None:
            text = self.recompute.text(entry.items, entry.timestamps, index)
            encoded = self.recompute.base.encode_texts([text], keep_states=True)
            assert encoded.states is not None
            states = encoded.states[0]
        else:
            raise AutomrError(
                f"the memory in {self.folder} stores no token states; open it with "
                f"MemoryStore.open(..., recompute=encoder) to recompute them on demand, or "
                f"build it with store_token_states=True.")
        return states.to(device=self.device, dtype=self.record.torch_dtype)

    # -- samples and batches ----------------------------------------------------------
    def request_for(self, sample: Sample) -> tuple[str, int, int]:
        """``(user, count, start)`` of ``sample``'s memory: its ``len(sample.memory)`` elements
        ending right before its recent items (located by time; the user's stored items and
        times there must be the sample's memory items and times)."""
        count = len(sample.memory)
        entry = self.index.users.get(sample.user)
        if entry is None:
            if count:
                raise AutomrError(f"user {sample.user!r} of a sample is not in the memory "
                                  f"{self.folder}; was it built from this dataset?")
            return sample.user, 0, 0
        prior = bisect.bisect_left(entry.timestamps, sample.timestamp)
        start = prior - len(sample.recent) - count
        stored = (tuple(entry.items[max(start, 0):start + count]),
                  tuple(entry.timestamps[max(start, 0):start + count]))
        if start < 0 or stored != (sample.memory, sample.memory_timestamps):
            raise AutomrError(
                f"the memory of user {sample.user!r} does not hold this sample's history (time "
                f"{sample.timestamp}); the memory in {self.folder} was built from other data.")
        return sample.user, count, start

    def view_sample(self, sample: Sample) -> MemoryView:
        """The memory ``sample`` sees: exactly ``sample.memory``, oldest first."""
        user, count, start = self.request_for(sample)
        return self.view(user, count, start)

    @jaxtyped(typechecker=beartype)
    def padded_keys(
        self, requests: Sequence[Request]
    ) -> tuple[Float[Tensor, "batch mem hidden"], Bool[Tensor, "batch mem"]]:
        """Keys of several views (``(user, count)`` or ``(user, count, start)``), right-padded
        with zeros to the longest, and their mask."""
        views = [self.view(*request).keys for request in requests]
        return pad_keys(views, self.hidden_size)

    # -- internals ----------------------------------------------------------------------
    def _entry(self, user: str, count: int, start: int):
        if count < 0 or start < 0:
            raise AutomrError(f"bad memory request for user {user!r}: count {count}, start "
                              f"{start}")
        entry = self.index.users.get(user)
        have = 0 if entry is None else len(entry.items)
        if start + count > have:
            raise AutomrError(f"user {user!r} has {have} memory elements in {self.folder}, "
                              f"but elements {start}..{start + count - 1} were asked for")
        return entry

    def _handle(self, shard: int) -> Any:
        if shard not in self._handles:
            path = self.index.shard_path(self.folder, shard)
            if not path.is_file():
                raise AutomrError(f"{path} is missing; the memory folder is damaged: rebuild it "
                                  f"with {MADE_BY}.")
            try:
                self._handles[shard] = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError) as error:
                raise AutomrError(f"{path} is not a readable safetensors file ({error}); the "
                                  f"memory folder is damaged: rebuild it with {MADE_BY}.") from None
        return self._handles[shard]

    def _check_shards(self) -> None:
        """Open every shard (headers only) and check its tensors against the index, and every
        user's segments against its items, so a missing, truncated or foreign shard (or a
        damaged index) is refused here rather than mid-run."""
        stored = ("keys", "states", "offsets") if self.record.store_token_states else ("keys",)
        for number, entry in enumerate(self.index.shards):
            handle = self._handle(number)
            path = self.index.shard_path(self.folder, number)
            present = set(handle.keys())
            wanted = stored if entry.distinct is None else (*stored, "rows")
            missing = [name for name in wanted if name not in present]
            shape = handle.get_slice("keys").get_shape() if "keys" in present else None
            rows = handle.get_slice("rows").get_shape() if "rows" in present else None
            if missing or shape != [entry.stored, self.hidden_size] or (
                    entry.distinct is not None and rows != [entry.elements]):
                found = ", ".join(
                    ([] if shape is None else [f"keys of shape {shape}"])
                    + ([] if entry.distinct is None or rows is None else
                       [f"rows of shape {rows}"])
                    + ([f"no {', '.join(missing)}"] if missing else []))
                raise AutomrError(
                    f"{path} holds {found}, but the index expects {entry.stored} keys of "
                    f"size {self.hidden_size} for {entry.elements} elements; the memory folder "
                    f"is damaged: rebuild it with {MADE_BY}.")
            users = (handle.metadata() or {}).get("users")  # older shards may not say
            if users is not None and users != json.dumps(list(entry.users)):
                raise AutomrError(  # another shard's file of the same shape: others' keys
                    f"{path} holds the elements of other users than the index gives it (a "
                    f"shard of another number or build); the memory folder is damaged: "
                    f"rebuild it with {MADE_BY}.")
        for user, entry in self.index.users.items():
            if sum(count for _, _, count in entry.segments) != len(entry.items):
                raise AutomrError(f"{self.folder / INDEX_FILE} is damaged (user {user!r}: its "
                                  f"segments do not cover its items); rebuild it with "
                                  f"{MADE_BY}.")

    def _keys(self, shard: int, lo: int, hi: int) -> Tensor:
        """Keys of the shard's elements ``lo:hi``: rows of ``keys``, or in a shared shard the
        stored rows they map to (its keys are kept in RAM once read when they take at most
        ``shared_keys_in_ram`` bytes, :data:`SHARED_KEYS_IN_RAM` by default; else each
        contiguous run of rows is read once)."""
        rows = self._shard_rows(shard)
        if rows is None:
            if shard in self._preloaded:
                return self._preloaded[shard][lo:hi]
            return self._handle(shard).get_slice("keys")[lo:hi]
        wanted = rows[lo:hi]
        entry = self.index.shards[shard]
        if shard not in self._preloaded and entry.stored * self.hidden_size * \
                self.record.torch_storage_dtype.itemsize <= self.shared_keys_in_ram:
            self._preloaded[shard] = self._handle(shard).get_tensor("keys")
        if shard in self._preloaded:
            return self._preloaded[shard][wanted]
        keys = self._handle(shard).get_slice("keys")
        if not len(wanted):
            return keys[0:0]
        unique, inverse = torch.unique(wanted, sorted=True, return_inverse=True)
        cuts = [0, *((unique[1:] != unique[:-1] + 1).nonzero().flatten() + 1).tolist(),
                len(unique)]
        firsts = unique[cuts[:-1]].tolist()
        lasts = unique[[c - 1 for c in cuts[1:]]].tolist()
        return torch.cat([keys[a: b + 1] for a, b in zip(firsts, lasts, strict=True)])[inverse]

    def _shard_rows(self, shard: int) -> Tensor | None:
        """A shared shard's element -> stored row map (read once; it is small), or None when
        the shard stores one row per element."""
        entry = self.index.shards[shard]
        if entry.distinct is None:
            return None
        if shard not in self._rows:
            rows = self._handle(shard).get_tensor("rows")
            if rows.dtype != torch.int64 or rows.shape != (entry.elements,) or (
                    len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < entry.distinct):
                path = self.index.shard_path(self.folder, shard)
                raise AutomrError(f"{path} maps its elements outside its {entry.distinct} "
                                  f"stored rows; the memory folder is damaged: rebuild it with "
                                  f"{MADE_BY}.")
            self._rows[shard] = rows
        return self._rows[shard]

    def _stored_row(self, shard: int, row: int) -> int:
        """The row of ``keys`` (and ``offsets``) holding the shard's element ``row``."""
        rows = self._shard_rows(shard)
        return row if rows is None else int(rows[row])


@jaxtyped(typechecker=beartype)
def pad_keys(
    rows: Sequence[Float[Tensor, "_ hidden"]], hidden_size: int
) -> tuple[Float[Tensor, "batch mem hidden"], Bool[Tensor, "batch mem"]]:
    """Per-view keys of different lengths, right-padded with zeros, and the mask of real ones.

    (Kept apart from :meth:`MemoryStore.padded_keys`: building several ``MemoryView`` objects
    inside one ``@jaxtyped`` call would bind their ``mem`` sizes to each other.)
    """
    width = max((r.shape[0] for r in rows), default=0)
    dtype = rows[0].dtype if rows else torch.float32
    device = rows[0].device if rows else None
    keys = torch.zeros(len(rows), width, hidden_size, dtype=dtype, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for row, values in enumerate(rows):
        keys[row, : values.shape[0]] = values
        mask[row, : values.shape[0]] = True
    return keys, mask


def check_encoder(folder: Path, record: MemoryRecord, index: MemoryIndex,
                  encoder: ElementEncoder) -> None:
    """Refuse an encoder that would compute different states than the memory holds."""
    base = getattr(encoder, "base", None)
    if not isinstance(base, LayerEncoder):
        raise AutomrError(f"recompute is an element encoder, not a {type(encoder).__name__}: "
                          f"make it with automr.memory.memory_encoder({folder}, model, "
                          f"catalog)")
    record.check_backbone(folder, base.backbone.fingerprint, base.layer)
    catalog = getattr(encoder, "catalog", None)  # the titles it encodes (built-in kinds)
    if isinstance(catalog, Catalog):
        record.check_titles(folder, catalog, {item for entry in index.users.values()
                                              for item in entry.items})
    mismatches = []
    if encoder.settings() != record.encoder_settings():
        mismatches.append(f"encoder {encoder.settings()} vs {record.encoder_settings()}")
    if base.pooling != record.pooling:
        mismatches.append(f"pooling {base.pooling} vs {record.pooling}")
    # one fingerprint in every dtype: check_backbone above let it through
    if (dtype := dtype_name(base.backbone.llm.dtype)) != record.dtype:
        raise AutomrError(f"the memory in {folder} was built in {record.dtype}, but the "
                          f"encoder's model is loaded in {dtype}: its states would not be the "
                          f"ones the build computed. Load the model in {record.dtype} "
                          f"(load_model(..., dtype={record.dtype!r})) for its encoder.")
    prompt_config = getattr(encoder, "prompt_config", None)
    if prompt_config is not None and prompt_config != record.prompt_config:
        mismatches.append("prompt config")
    if mismatches:
        raise AutomrError(f"the encoder differs from the one the memory in {folder} was built "
                          f"with: {'; '.join(mismatches)}. Make it with "
                          f"automr.memory.memory_encoder({folder}, model, catalog), which "
                          f"rebuilds it from the memory's config.")
