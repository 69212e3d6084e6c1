"""What a memory is built with (:class:`MemoryConfig`) and what its folder records
(:class:`MemoryRecord`, the ``config.json``), with the checks that refuse a mismatched model."""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import attrs
import torch

from automr.checks import beartype, int_field, is_int, to_int
from automr.data.catalog import Catalog
from automr.data.prompts import PromptConfig
from automr.errors import AutomrError
from automr.llm.loading import FINGERPRINT_CHANGE
from automr.memory.encoders import ENCODERS
from automr.memory.pooling import Pooling
from automr.storage import write_json_atomic

MEMORY_FORMAT: Final = "automr.memory/2"
"""The folder format written. ``/2`` stores an item memory's distinct items once per shard
(keys and token states) with a per-element row map (:mod:`automr.memory.shards`); ``/1``
stored one row per element for every encoder and is still read (its shards have no row map)."""
READABLE_FORMATS: Final = ("automr.memory/1", MEMORY_FORMAT)
CONFIG_FILE: Final = "config.json"

STORAGE_DTYPES: Final[dict[str, torch.dtype | None]] = {
    "model": None, "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""How keys (and token states) are stored; ``model`` keeps the model's dtype. On read they
are always cast back to the model's dtype."""


def _float_dtype(instance: object, attribute: attrs.Attribute, value: str) -> None:
    """A record's dtypes (its model's, its keys' on disk) name a torch floating dtype."""
    dtype = getattr(torch, value, None)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{attribute.name} {value!r} is no floating torch dtype")


def _known_encoder(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in ENCODERS:
        raise ValueError(f"unknown encoder {value!r}; choose one of {', '.join(ENCODERS)}")


def _known_storage(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {value!r}; choose one of "
                         f"{', '.join(STORAGE_DTYPES)}")


@beartype
@attrs.frozen
class MemoryConfig:
    """How to build a memory.

    - ``encoder``: a key of :data:`~automr.memory.encoders.ENCODERS` (``window`` = eq. 2,
      ``item`` = the title alone);
    - ``pooling``: how a sequence's layer-L states become one key;
    - ``window``: K, the window encoder's history length (``None``: the dataset's
      ``recent_k``, i.e. exactly the prompt length of the samples; an encoder kind of your
      own gets it, and ``window_includes_item``, too);
    - ``window_includes_item``: element m's window ends with item m (default) or is the K
      items strictly before m (the paper's literal ``x_{u,h_m}``), see
      :class:`~automr.memory.encoders.WindowEncoder`;
    - ``store_token_states``: also store every element's layer-L token states (what the
      concat combiner inserts; ``automr memory build`` stores them unless
      ``--no-store-token-states``, this class does not by default). Otherwise they are
      recomputed on demand for the retrieved element only by a store that has the encoder
      (the one :func:`~automr.memory.build.build_memory` returns, or
      ``MemoryStore.open(dir, recompute=memory_encoder(...))``); a store opened without it,
      as ``FinetunedRun.open_memory`` opens one, refuses the concat combiner;
    - ``storage_dtype``: ``model``, ``float32``, ``float16`` or ``bfloat16`` on disk;
    - ``shard_elements``: a shard is closed once it holds at least this many elements (shards
      hold whole users, so a build resumes at user granularity). Default: 2048 for the window
      encoder; 200,000 for the item encoder, which encodes each distinct item once per shard,
      so small shards would encode the catalog again and again;
    - ``share_prefix``: compute the tokens all prompts of a batch start with once, not per
      prompt, and remember them across batches (:class:`~automr.memory.encoders.LayerEncoder`:
      a build computes the template header once); same keys up to float rounding, about half
      the work for BIGRec prompts.
    """

    encoder: str = attrs.field(default="window", validator=_known_encoder)
    pooling: Pooling = attrs.field(factory=Pooling)
    window: int | None = int_field(attrs.validators.ge(1), default=None, optional=True)
    window_includes_item: bool = True
    store_token_states: bool = False
    storage_dtype: str = attrs.field(default="model", validator=_known_storage)
    shard_elements: int = int_field(attrs.validators.ge(1), default=attrs.Factory(
        lambda self: 200_000 if self.encoder == "item" else 2048, takes_self=True))
    share_prefix: bool = True


@beartype
@attrs.frozen
class MemoryRecord:
    """The ``config.json`` of a memory folder: everything the keys depend on, but for float
    rounding (the batch size of a build, a run option a resume may change, pads texts
    otherwise).

    ``window`` is resolved (never ``None`` for the window encoder); ``dtype`` is the model's
    dtype (keys are returned in it) and ``storage_dtype`` the dtype on disk.
    """

    model_name: str
    model_fingerprint: str | None
    layer: int = attrs.field(converter=to_int, validator=is_int)
    hidden_size: int = attrs.field(converter=to_int, validator=is_int)
    num_layers: int = attrs.field(converter=to_int, validator=is_int)
    dtype: str = attrs.field(validator=_float_dtype)
    encoder: str
    window: int | None = attrs.field(converter=attrs.converters.optional(to_int),
                                     validator=attrs.validators.optional(is_int))
    window_includes_item: bool
    pooling: Pooling
    store_token_states: bool
    storage_dtype: str = attrs.field(validator=_float_dtype)
    shard_elements: int = attrs.field(converter=to_int, validator=is_int)
    share_prefix: bool
    prompt_config: PromptConfig
    dataset_fingerprint: str | None = None
    catalog_fingerprint: str | None = None
    titles_fingerprint: str | None = None
    format: str = MEMORY_FORMAT

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype`` (the model's: keys are returned in it)."""
        return getattr(torch, self.dtype)

    @property
    def torch_storage_dtype(self) -> torch.dtype:
        """``storage_dtype`` as a ``torch.dtype`` (the keys' dtype on disk)."""
        return getattr(torch, self.storage_dtype)

    def encoder_settings(self) -> dict[str, Any]:
        """The element encoder: ``{"kind", "window", "includes_item"}``."""
        return {"kind": self.encoder, "window": self.window,
                "includes_item": self.window_includes_item}

    def provenance(self) -> dict[str, str]:
        """What keys from this memory depend on, as a retriever trained on them records it
        (and is checked against on load): model, layer, encoder and pooling."""
        return {"model_fingerprint": str(self.model_fingerprint), "layer": str(self.layer),
                "encoder": json.dumps(self.encoder_settings(), sort_keys=True),
                "pooling": json.dumps(attrs.asdict(self.pooling), sort_keys=True)}

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON (``attrs.asdict``: pooling and prompt config as dicts)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MemoryRecord":
        """The record of a :meth:`to_json` dict (pooling and prompt config rebuilt)."""
        values = dict(data)
        values["pooling"] = Pooling(**values["pooling"])
        values["prompt_config"] = PromptConfig(**values["prompt_config"])
        return cls(**values)

    def write(self, folder: Path) -> None:
        """Write :meth:`to_json` to ``folder/config.json`` atomically."""
        write_json_atomic(folder / CONFIG_FILE, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> "MemoryRecord":
        """The record in ``folder/config.json``; an :class:`~automr.errors.AutomrError` when
        it is missing, not JSON, of another (or a newer) format, or damaged."""
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise AutomrError(f"{folder} is not a memory folder ({CONFIG_FILE} is missing). "
                              f"Build one with `automr memory build` "
                              f"(automr.memory.build_memory in Python).")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise AutomrError(f"{path} is not valid JSON ({error}); rebuild the memory.") from None
        found = data.get("format") if isinstance(data, dict) else None
        if found not in READABLE_FORMATS:
            newer = isinstance(found, str) and found.startswith("automr.memory/")
            raise AutomrError(
                f"{path} is not a memory config (format {found!r}, expected one of "
                f"{', '.join(READABLE_FORMATS)})"
                + ("; it was written by a newer automr: upgrade automr, or rebuild the memory "
                   "with `automr memory build` into a new folder." if newer else "."))
        from beartype.roar import BeartypeCallHintViolation

        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError, BeartypeCallHintViolation,
                AutomrError) as error:  # AutomrError: a refusal of the pooling's checks
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise AutomrError(f"{path} is damaged ({reason}); rebuild the memory.") from None

    def check_titles(self, folder: Path | str, catalog: Catalog, items: Iterable[str]) -> None:
        """Refuse a ``catalog`` that gives ``items`` (those the memory holds) other titles than
        the ones its texts were made of, or lacks one: the states an encoder with it computes
        would be of other texts. A catalog that only adds items passes. A memory recorded
        before automr kept its titles is not checked."""
        if self.titles_fingerprint is not None and \
                titles_fingerprint(catalog, items) != self.titles_fingerprint:
            raise AutomrError(
                f"the catalog gives items the memory in {folder} holds other titles than the "
                f"ones it was built with (or lacks some): states computed with it would be of "
                f"other texts. Give the catalog of the dataset the memory was built from (one "
                f"that only adds items is fine).")

    def check_backbone(self, folder: Path | str, fingerprint: str | None,
                       layer: int | None = None) -> None:
        """:meth:`check` for a model about to compute states of this memory: one without a
        fingerprint (a :class:`~automr.memory.Backbone` made by hand) cannot be compared with
        the one the memory records, so it is refused, not let through."""
        if fingerprint is None and self.model_fingerprint is not None:
            raise AutomrError(
                f"the memory in {folder} records its model's fingerprint, but the model in use "
                f"has none to compare (a Backbone made without one): make it with "
                f"Backbone.of(load_model({self.model_name!r})), the model the memory was "
                f"built with (Backbone.from_model fingerprints weights in memory instead, "
                f"which fits only a memory built from such a Backbone)")
        self.check(folder, fingerprint, layer)

    def check(self, folder: Path | str, expect_fingerprint: str | None = None,
              expect_layer: int | None = None) -> None:
        """Refuse a memory built with another model or layer than the one in use."""
        if expect_fingerprint is not None and expect_fingerprint != self.model_fingerprint:
            raise AutomrError(
                f"the memory in {folder} was built with model {self.model_name!r} (fingerprint "
                f"{_short(self.model_fingerprint)}) at layer {self.layer}, but a model with "
                f"fingerprint {_short(expect_fingerprint)} is in use. Its keys are meaningless "
                f"for this model: build a new memory with it. {FINGERPRINT_CHANGE}")
        if expect_layer is not None and expect_layer != self.layer:
            raise AutomrError(
                f"the memory in {folder} holds layer-{self.layer} states of {self.model_name!r}, "
                f"but layer {expect_layer} was asked for. Build a memory at layer "
                f"{expect_layer} or use layer {self.layer}.")


def _short(fingerprint: str | None) -> str:
    return "unknown" if fingerprint is None else fingerprint[:12]


def titles_fingerprint(catalog: Catalog, items: Iterable[str]) -> str:
    """sha256 over the ``id<TAB>title`` lines of ``items`` (each once, sorted) in ``catalog``:
    the titles a memory's texts are made of (an item the catalog lacks: no title)."""
    digest = hashlib.sha256()
    for item in sorted(set(items)):
        digest.update(f"{item}\t{catalog.title(item) if item in catalog else ''}\n".encode())
    return digest.hexdigest()


def catalog_fingerprint(catalog: Catalog) -> str:
    """sha256 over the catalog's ``id<TAB>title`` lines (what encoded texts depend on)."""
    digest = hashlib.sha256()
    for item in catalog:
        digest.update(f"{item.id}\t{item.title}\n".encode())
    return digest.hexdigest()
