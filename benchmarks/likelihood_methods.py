"""The target-likelihood measure of several methods of one model: the lower half run once per
batch for all of them, against once per method.

    OMP_NUM_THREADS=1 python benchmarks/likelihood_methods.py --data runs/data \
        --finetuned runs/bigrec-l15-32 --memory runs/memory-item-l15 --samples 32 --repeats 3

``automr evaluate --measures likelihood`` with BIGRec, AutoMR and random retrieval scores each
sample's true title once per method. The lower half never sees memory, so its work on a batch
is the same for all of them: the methods of one model keep it
(:class:`~automr.grounding.likelihood.LoweredBatches`) and only the first runs it. Here BIGRec
and random and semantic retrieval (the concat combiner, k = 1: no trained retriever needed)
score the same seeded test samples both ways, fresh methods each round, interleaved after a
warm-up (ratio: median [min, max]). Both ways must give the same values (the largest
difference is reported).

Writes ``likelihood-methods-cpu.json`` and ``.md`` to ``--out``.
"""

import argparse
import statistics
from pathlib import Path

import torch

import automr
from automr.data.subsets import seeded_subset
from automr.experiments.bench import interleaved, machine, ratio, write_result
from automr.grounding import LikelihoodGrounder, dataset_targets
from automr.grounding.likelihood import LoweredBatches

RETRIEVERS = ("random", "semantic")


def bench_likelihood_methods(data: Path, finetuned: Path, memory: Path, samples: int,
                             batch_size: int, repeats: int, seed: int = 0) -> dict[str, object]:
    dataset = automr.PreparedDataset.load(data)
    run = automr.FinetunedRun.open(finetuned)
    loaded = run.load(device="cpu")
    store = run.open_memory(memory)
    chosen = seeded_subset([s for s in dataset.samples("test") if s.memory], samples, seed)
    grounder = LikelihoodGrounder(dataset_targets(loaded, dataset))
    retrievals = [automr.MemoryRetrieval(store, automr.build_retriever(kind, store.hidden_size),
                                         automr.Concat()) for kind in RETRIEVERS]
    values: dict[str, list[list[tuple[float, int]]]] = {}

    def way(name: str, lowered: LoweredBatches | None) -> None:
        methods = [automr.GenerativeMethod(  # all made first: a pass is kept for the others
            loaded, dataset, grounder, store.layer, retrieval=retrieval, batch_size=batch_size,
            lowered=lowered) for retrieval in (None, *retrievals)]
        values[name] = [method.target_log_likelihoods(chosen) for method in methods]

    seconds = interleaved({"per_method": lambda: way("per_method", None),
                           "kept": lambda: way("kept", LoweredBatches())},
                          repeats, loaded.model.device)
    spread = ratio(seconds["per_method"], seconds["kept"])
    differences = [abs(a[0] - b[0]) for kept, own in zip(values["kept"], values["per_method"],
                                                         strict=True)
                   for a, b in zip(kept, own, strict=True)]
    methods = 1 + len(RETRIEVERS)
    return {
        "benchmark": "likelihood-methods", "model": loaded.name, "finetuned": str(finetuned),
        "memory": str(memory), "methods": ["bigrec", *RETRIEVERS], "combiner": "concat",
        "samples": len(chosen), "batch_size": batch_size, "layer": store.layer,
        "repeats": repeats, "device": "cpu", "dtype": str(loaded.model.dtype),
        "machine": machine(),
        "per_method_samples_per_s": methods * len(chosen) / statistics.median(
            seconds["per_method"]),
        "kept_samples_per_s": methods * len(chosen) / statistics.median(seconds["kept"]),
        "speedup": spread["median"], "speedup_min_max": [spread["min"], spread["max"]],
        "max_abs_diff_nats": max(differences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--finetuned", type=Path, required=True, help="automr finetune run")
    parser.add_argument("--memory", type=Path, required=True, help="automr memory build folder")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    result = bench_likelihood_methods(args.data, args.finetuned, args.memory, args.samples,
                                      args.batch_size, args.repeats)
    print(write_result(result, args.out, "likelihood-methods-cpu"))


if __name__ == "__main__":
    main()
