"""One directory per saved retriever: ``config.json`` (+ ``retriever.safetensors``).

``config.json`` holds ``format``, ``kind`` (a key of ``RETRIEVERS``), ``hidden_size``, the
retriever's own ``settings`` and ``provenance`` (free-form strings such as the model
fingerprint, layer and pooling the keys came from). The safetensors metadata repeats format
and provenance, so the weights file alone says what it belongs to. Written and read by
:func:`automr.storage.save_component` / :func:`~automr.storage.load_component`.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError
from automr.storage import (
    CONFIG_FILE,
    check_provenance,
    check_save_target,
    files_digest,
    load_component,
    save_component,
)

RETRIEVER_FORMAT: Final = "automr.retriever/1"
WEIGHTS_FILE: Final = "retriever.safetensors"
MADE_BY: Final = "`automr retriever train` or the retriever's save method"


@beartype
def write_retriever(
    directory: Path | str, kind: str, settings: Mapping[str, Any],
    provenance: Mapping[str, str], tensors: Mapping[str, Tensor] | None = None,
    hidden_size: int | None = None,
) -> None:
    """Write ``config.json`` and, when there are tensors, ``retriever.safetensors``."""
    save_component(directory, RETRIEVER_FORMAT,
                   {"kind": kind, "hidden_size": hidden_size, "settings": dict(settings)},
                   tensors, WEIGHTS_FILE, provenance)


def check_retriever_target(directory: Path | str) -> None:
    """Refuse, before any training, a folder :func:`write_retriever` would refuse."""
    check_save_target(Path(directory), RETRIEVER_FORMAT, WEIGHTS_FILE)


@beartype
def read_config(directory: Path | str) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved retriever (format checked)."""
    return load_component(directory, RETRIEVER_FORMAT, None, MADE_BY)[0]


@beartype
def read_retriever(
    directory: Path | str, kind: str, expect: Mapping[str, str] | None = None,
    hidden_size: int | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Config and tensors of a saved retriever of ``kind``, refusing mismatches.

    ``hidden_size`` (the model's) must equal the saved one when both are known; every key of
    ``expect`` must equal the saved provenance (e.g. the fingerprint of the model in use).
    """
    meta, tensors = load_component(directory, RETRIEVER_FORMAT, WEIGHTS_FILE, MADE_BY)
    if meta.get("kind") != kind:
        raise AutomrError(f"{directory} holds a {meta.get('kind')!r} retriever, not {kind!r}")
    for part in ("settings", "provenance"):
        if not isinstance(meta.get(part, {}), dict):
            raise AutomrError(f"{directory}'s {CONFIG_FILE} is damaged: its {part} is "
                              f"{meta[part]!r}, not an object; save the retriever again")
    saved_hidden = meta.get("hidden_size")
    if saved_hidden is not None and (isinstance(saved_hidden, bool) or not isinstance(
            saved_hidden, int)):
        raise AutomrError(f"{directory}'s {CONFIG_FILE} is damaged: its hidden_size is "
                          f"{saved_hidden!r}, not a number; save the retriever again")
    if hidden_size is not None and saved_hidden is not None and saved_hidden != hidden_size:
        raise AutomrError(
            f"the retriever in {directory} was built for hidden size {saved_hidden}, but the "
            f"model has {hidden_size}: train one for this model"
        )
    check_provenance(f"the retriever in {directory}", meta.get("provenance", {}), expect,
                     "use the setting it was built with (e.g. --combiner), or train one for "
                     "this setting")
    return meta, tensors


def saved_setting(directory: Path | str, meta: Mapping[str, Any], name: str,
                  kind: type) -> Any:
    """The ``name`` setting of a retriever's config (:func:`read_retriever`'s ``meta``) when it
    is a ``kind`` (a whole number for a float too), else refused in one line naming the
    folder: a damaged config failed with a raw KeyError or ValueError, or took ``2.7`` as
    seed 2."""
    value = meta.get("settings", {}).get(name)
    number = kind is float and isinstance(value, int)
    if isinstance(value, bool) or not (isinstance(value, kind) or number):
        raise AutomrError(f"{directory}'s {CONFIG_FILE} is damaged: settings.{name} is "
                          f"{value!r}, not a {'whole number' if kind is int else 'number'}; "
                          f"save the retriever again")
    return kind(value)


@beartype
def retriever_digest(directory: Path | str) -> str:
    """What a saved retriever holds, hashed: its config and weights (a retriever trained again
    in the same folder has another)."""
    return files_digest(directory, (CONFIG_FILE, WEIGHTS_FILE))
