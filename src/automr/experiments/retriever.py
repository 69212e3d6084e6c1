"""``automr retriever train``: eq. 6 on annotated samples (KL(S' || S), MLP retriever)."""

import json
from pathlib import Path

import attrs
import torch

from automr.annotation.run import Annotations, retrieval_dataset
from automr.data import PreparedDataset
from automr.errors import AutomrError
from automr.llm.loading import resolve_device
from automr.memory import MemoryStore
from automr.retrievers import RetrieverTrainingConfig, evaluate_retriever, train_mlp_retriever


def train_retriever(
    annotations_dir: Path | str, dataset_dir: Path | str, memory_dir: Path | str,
    out_dir: Path | str, form: str = "log", temperature: float = 1.0,
    valid_fraction: float = 0.2, config: RetrieverTrainingConfig | None = None,
    progress: bool = True, device: str = "auto",
) -> dict:
    """Train the MLP retriever on ``device`` (``auto``: CUDA when available); ``valid_fraction``
    of the annotated samples (seeded) are held out for early stopping on validation KL (a
    cheap proxy for validation Recall@1)."""
    config = config or RetrieverTrainingConfig()
    annotations = Annotations.load(annotations_dir)
    dataset = PreparedDataset.load(dataset_dir)
    store = MemoryStore.open(memory_dir)
    if annotations.header["memory_model_fingerprint"] != store.record.model_fingerprint or \
            annotations.header["layer"] != store.layer:
        raise AutomrError(f"the annotations in {annotations_dir} were made with another memory "
                          f"(model or layer differ from {memory_dir})")
    split = annotations.header["config"]["split"]
    full = retrieval_dataset(annotations, dataset, store, split, form, temperature)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(full), generator=generator)
    n_valid = round(valid_fraction * len(full))
    valid = full.select(order[:n_valid]) if n_valid else None
    train = full.select(order[n_valid:])
    retriever, history = train_mlp_retriever(train, valid, config,
                                             device=resolve_device(device), quiet=not progress)
    retriever = retriever.cpu()
    out = Path(out_dir)
    retriever.save(out)
    record = {
        "annotations": str(annotations_dir), "label_form": form, "temperature": temperature,
        "train_samples": len(train), "valid_samples": n_valid,
        "config": attrs.asdict(config), "history": attrs.asdict(history),
        "valid": attrs.asdict(evaluate_retriever(retriever, valid)) if valid else None,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
