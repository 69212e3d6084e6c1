"""One directory per saved retriever: ``config.json`` (+ ``retriever.safetensors``).

``config.json`` holds ``format``, ``kind`` (a key of ``RETRIEVERS``), the retriever's own
settings and ``provenance`` (free-form strings such as the model fingerprint, layer and
pooling the keys came from). The safetensors metadata repeats format, kind, hidden size and
provenance, so the weights file alone says what it belongs to.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from beartype import beartype
from safetensors.torch import load_file, save_file
from torch import Tensor

from automr.errors import AutomrError

RETRIEVER_FORMAT: Final = "automr.retriever/1"
CONFIG_FILE: Final = "config.json"
WEIGHTS_FILE: Final = "retriever.safetensors"


@beartype
def write_retriever(
    directory: Path | str, kind: str, settings: Mapping[str, Any],
    provenance: Mapping[str, str], tensors: Mapping[str, Tensor] | None = None,
    hidden_size: int | None = None,
) -> None:
    """Write ``config.json`` and, when there are tensors, ``retriever.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": RETRIEVER_FORMAT, "kind": kind, "hidden_size": hidden_size,
            "settings": dict(settings), "provenance": dict(provenance)}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    weights = directory / WEIGHTS_FILE
    if tensors:
        metadata = {"format": RETRIEVER_FORMAT, "kind": kind, "hidden_size": str(hidden_size),
                    **{f"provenance.{k}": v for k, v in provenance.items()}}
        state = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        save_file(state, weights, metadata=metadata)
    elif weights.exists():
        weights.unlink()  # a stale file from an earlier save would contradict config.json


@beartype
def read_config(directory: Path | str) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved retriever (format checked)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise AutomrError(
            f"{directory} is not a saved retriever: {CONFIG_FILE} is missing (write one with "
            f"the retriever's save method or `automr` training commands)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != RETRIEVER_FORMAT:
        raise AutomrError(
            f"{path} has format {meta.get('format')!r}, expected {RETRIEVER_FORMAT!r}"
        )
    return meta


@beartype
def read_retriever(
    directory: Path | str, kind: str, expect: Mapping[str, str] | None = None,
    hidden_size: int | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Config and tensors of a saved retriever of ``kind``, refusing mismatches.

    ``hidden_size`` (the model's) must equal the saved one when both are known; every key of
    ``expect`` must equal the saved provenance (e.g. the fingerprint of the model in use).
    """
    meta = read_config(directory)
    if meta.get("kind") != kind:
        raise AutomrError(f"{directory} holds a {meta.get('kind')!r} retriever, not {kind!r}")
    saved_hidden = meta.get("hidden_size")
    if hidden_size is not None and saved_hidden is not None and saved_hidden != hidden_size:
        raise AutomrError(
            f"the retriever in {directory} was built for hidden size {saved_hidden}, but the "
            f"model has {hidden_size}: train one for this model"
        )
    provenance = meta.get("provenance", {})
    for key, value in (expect or {}).items():
        if key in provenance and provenance[key] != value:
            raise AutomrError(
                f"the retriever in {directory} was built with {key}={provenance[key]!r}, "
                f"but {value!r} is in use: train one for this setting"
            )
    weights = Path(directory) / WEIGHTS_FILE
    tensors = load_file(weights) if weights.is_file() else {}
    return meta, tensors
