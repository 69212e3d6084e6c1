"""MLP retriever training (eq. 6) on a large annotated set: what the dataset checks cost.

    OMP_NUM_THREADS=1 python benchmarks/retriever_epochs.py --samples 2000 --repeats 3

Trains :func:`~automr.retrievers.training.train_mlp_retriever` for ``--epochs`` epochs on a
seeded synthetic :class:`~automr.retrievers.dataset.RetrievalDataset` (``--samples`` x 90
elements x 576, SmolLM2-135M's width; a paper-sized memory) with validation on a fifth of it,
the way it runs now (a batch or device copy of a checked dataset is not checked again; real
keys checked finite 256 samples at a time) and, as the reference, the way it did before
(automr commit 42878f2: every batch, split and copy built through ``attrs.evolve`` and checked
in full, the real keys copied out by the mask for the finiteness check; patched in below).
Interleaved rounds after a warm-up (ratio: median [min, max]); both ways must train
bit-equal retrievers with the same history.

Writes ``retriever-epochs-cpu.json`` and ``retriever-epochs-cpu.md`` to ``--out``.
"""

import argparse
from pathlib import Path

import attrs
import torch

from automr.experiments.bench import machine, speedup_of, write_result
from automr.retrievers import dataset as dataset_module
from automr.retrievers.dataset import RetrievalDataset
from automr.retrievers.training import RetrieverTrainingConfig, train_mlp_retriever


def synthetic_set(samples: int, mem: int, hidden: int, seed: int) -> RetrievalDataset:
    """Queries, keys with memories of 10..mem real elements and softmax labels, seeded."""
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(samples, hidden, generator=generator)
    keys = torch.randn(samples, mem, hidden, generator=generator)
    sizes = torch.randint(10, mem + 1, (samples,), generator=generator)
    mask = torch.arange(mem)[None] < sizes[:, None]
    scores = torch.randn(samples, mem, generator=generator).masked_fill(~mask, -torch.inf)
    return RetrievalDataset(queries=queries, keys=keys, mask=mask,
                            targets=torch.softmax(scores, 1))


def checked_every_time():
    """The way before, as patches: evolve (every check) and the masked copy of the keys."""
    return {"_derived": lambda self, **tensors: attrs.evolve(self, **tensors),
            "_real_keys_finite": lambda keys, mask, rows=256: bool(
                torch.isfinite(keys[mask]).all())}


def train(data: RetrievalDataset, epochs: int, before: bool):
    saved = {"_derived": RetrievalDataset._derived,
             "_real_keys_finite": dataset_module._real_keys_finite}
    if before:
        patches = checked_every_time()
        RetrievalDataset._derived = patches["_derived"]
        dataset_module._real_keys_finite = patches["_real_keys_finite"]
    try:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        n_valid = len(data) // 5
        valid, rest = data.select(order[:n_valid]), data.select(order[n_valid:])
        config = RetrieverTrainingConfig(max_epochs=epochs, patience=epochs, seed=0)
        return train_mlp_retriever(rest, valid, config, quiet=True)
    finally:
        RetrievalDataset._derived = saved["_derived"]
        dataset_module._real_keys_finite = saved["_real_keys_finite"]


def bench_epochs(samples: int, epochs: int, repeats: int, mem: int = 90, hidden: int = 576,
                 seed: int = 0) -> dict[str, object]:
    data = synthetic_set(samples, mem, hidden, seed)
    (now, now_history), (old, old_history) = train(data, epochs, False), train(data, epochs, True)
    if now_history != old_history or any(
            not torch.equal(a, b) for a, b in zip(now.state_dict().values(),
                                                  old.state_dict().values(), strict=True)):
        raise AssertionError("the two ways trained differently")
    ways = {"now": lambda: train(data, epochs, False),
            "checked_every_time": lambda: train(data, epochs, True)}
    return {"benchmark": "retriever-epochs", "samples": samples, "mem": mem, "hidden": hidden,
            "keys_mb": round(data.keys.numel() * data.keys.element_size() / 2**20, 1),
            "epochs": epochs, "repeats": repeats, "device": "cpu", "machine": machine(),
            **speedup_of(ways, "now", "checked_every_time", repeats), "equal_training": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    print(write_result(bench_epochs(args.samples, args.epochs, args.repeats), args.out,
                       "retriever-epochs-cpu"))


if __name__ == "__main__":
    main()
