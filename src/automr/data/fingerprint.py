"""A content fingerprint of a prepared dataset, for the metadata of artifacts built from it."""

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs

from automr.data.catalog import Catalog
from automr.data.prepared import PreparedDataset, SourceInfo, read_header
from automr.data.protocol import ProtocolConfig, SplitBoundaries
from automr.errors import AutomrError
from automr.paths import home_path


def dataset_fingerprint(dataset: PreparedDataset) -> str:
    """sha256 over the source (kind, prompt domain, its files' hashes, the CSV column
    mapping when one was given), the protocol, the split times, the catalog (ids and titles)
    and the number of interactions (and the interactions themselves for a source read from
    no file, whose files' hashes say nothing).

    Input paths are left out, so the same data prepared from two places has one fingerprint.
    The column mapping is in it because it picks what is read from the same files (another
    ``--column timestamp=...`` is other timelines); a dataset prepared without one keeps the
    fingerprint it always had.
    """
    if not isinstance(dataset, PreparedDataset):
        raise AutomrError(f"dataset_fingerprint takes a PreparedDataset (automr.PreparedDataset"
                          f".load(folder)), not a {type(dataset).__name__}")
    payload = _payload(dataset.source, dataset.protocol, dataset.boundaries, dataset.catalog,
                       len(dataset.interactions))
    if not dataset.source.fingerprints:  # built in Python, no file: the interactions themselves
        digest = hashlib.sha256()
        for row in dataset.interactions:
            digest.update(f"{row.user}\t{row.item}\t{row.timestamp}\n".encode())
        payload["interactions_sha256"] = digest.hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def folder_fingerprint(folder: Path | str) -> str:
    """``dataset_fingerprint(PreparedDataset.load(folder))``, without reading the interactions
    where the source's file hashes stand for them (their number is the one stats.json records,
    which a load checks): a run record's fingerprint of ``--data`` loaded a dataset of
    millions of interactions again, minutes and GiBs after the command's work."""
    folder = home_path(folder)
    header = read_header(folder)
    count = header["stats"].filtered.interactions
    if not header["source"].fingerprints or count is None:
        return dataset_fingerprint(PreparedDataset.load(folder))
    payload = _payload(header["source"], header["protocol"], header["boundaries"],
                       header["catalog"], count)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _payload(source: SourceInfo, protocol: ProtocolConfig, boundaries: SplitBoundaries,
             catalog: Catalog, interactions: int) -> dict[str, Any]:
    """What the fingerprint hashes of a dataset with ``interactions`` interactions."""
    payload = {
        "source": [source.kind, source.domain, dict(source.fingerprints)],
        "protocol": protocol.to_json(),
        "boundaries": attrs.asdict(boundaries),
        "catalog": [[item.id, item.title] for item in catalog],
        "interactions": interactions,
    }
    if "columns" in source.options:
        payload["columns"] = source.options["columns"]
    return payload
