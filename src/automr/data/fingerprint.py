"""A content fingerprint of a prepared dataset, for the metadata of artifacts built from it."""

import hashlib
import json

import attrs

from automr.data.prepared import PreparedDataset
from automr.errors import AutomrError


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
    payload = {
        "source": [dataset.source.kind, dataset.source.domain, dict(dataset.source.fingerprints)],
        "protocol": dataset.protocol.to_json(),
        "boundaries": attrs.asdict(dataset.boundaries),
        "catalog": [[item.id, item.title] for item in dataset.catalog],
        "interactions": len(dataset.interactions),
    }
    if "columns" in dataset.source.options:
        payload["columns"] = dataset.source.options["columns"]
    if not dataset.source.fingerprints:  # built in Python, no file: the interactions themselves
        digest = hashlib.sha256()
        for row in dataset.interactions:
            digest.update(f"{row.user}\t{row.item}\t{row.timestamp}\n".encode())
        payload["interactions_sha256"] = digest.hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
