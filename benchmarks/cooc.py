"""The co-occurrence floor's counts at the paper's scale: "followed within 10 steps" pairs.

    OMP_NUM_THREADS=1 python benchmarks/cooc.py --users 20000 --length 100 --items 150000

Builds the sparse count matrix of :class:`~automr.methods.CooccurrenceMethod` from seeded
training sequences the way it is built now (:func:`~automr.methods.baselines.follow_pairs`:
all sequences at once, one gap at a time, in tensors; counted by one sort of the pairs' keys)
and, as the reference, the way it was before (automr commit 0e1860c: Python lists extended
per sequence and gap, a COO tensor coalesced; :func:`list_counts` below). Both must give the
same matrix. Interleaved rounds after a warm-up
(ratio: median [min, max]). The defaults are about Amazon Book 2017's training period in
docs/scale.md (2 M interactions, 150,000 items).

Writes ``cooc-cpu.json`` and ``cooc-cpu.md`` to ``--out``.
"""

import argparse
import statistics
import warnings
from pathlib import Path

import torch

from automr.experiments.bench import interleaved, machine, ratio, write_result
from automr.methods.baselines import _csr_counts, follow_pairs


def list_counts(sequences: list[list[int]], window: int, shape: tuple[int, int]
                ) -> torch.Tensor:
    """The reference, the code it replaced: Python lists extended per sequence and gap, then
    a COO tensor coalesced into CSR."""
    rows: list[int] = []
    cols: list[int] = []
    for items in sequences:
        for gap in range(1, window + 1):
            rows += items[:-gap]
            cols += items[gap:]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_coo_tensor(
            torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
            torch.ones(len(rows), dtype=torch.float64), shape,
            check_invariants=True).coalesce().to_sparse_csr()


def bench_cooc(users: int, length: int, items: int, window: int, repeats: int,
               seed: int = 0) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, 2 * length, (users,), generator=generator).tolist()
    sequences = [torch.randint(0, items, (n,), generator=generator).tolist() for n in lengths]
    shape = (items, items)
    ways = {
        "tensors": lambda: _csr_counts(*follow_pairs(sequences, window), shape),
        "lists": lambda: list_counts(sequences, window, shape),
    }
    built, reference = ways["tensors"](), ways["lists"]()  # CSR: one layout per matrix
    if not all(torch.equal(part(built), part(reference)) for part in (
            torch.Tensor.crow_indices, torch.Tensor.col_indices, torch.Tensor.values)):
        raise AssertionError("the two ways count differently")
    seconds = interleaved(ways, repeats, torch.device("cpu"))
    speedup = ratio(seconds["lists"], seconds["tensors"])
    return {
        "benchmark": "cooc", "users": users, "interactions": sum(lengths), "items": items,
        "window": window, "pairs": int(built.values().sum()), "repeats": repeats,
        "device": "cpu", "tensors_s": statistics.median(seconds["tensors"]),
        "lists_s": statistics.median(seconds["lists"]), "speedup": speedup["median"],
        "speedup_min": speedup["min"], "speedup_max": speedup["max"], "equal_counts": True,
        "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--items", type=int, default=150_000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = bench_cooc(args.users, args.length, args.items, args.window, args.repeats)
    print(write_result(result, args.out, "cooc-cpu"))


if __name__ == "__main__":
    main()
