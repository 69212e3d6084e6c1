"""The target-likelihood measure with the prompts' common opening run once, against without.

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --data runs/data --samples 32 --repeats 3

``automr evaluate --measures likelihood`` scores each test sample's true title teacher-forced
after its prompt (:func:`~automr.grounding.likelihood.target_log_likelihoods`). Every prompt
of a batch starts with the same template opening; run once (``share_prefix``, the default)
or per prompt (the way it was before), on the same seeded test samples and batches of the
embedded model (the base LM: a fine-tune's adapter changes no amount of work), interleaved
rounds after a warm-up (ratio: median [min, max]). Both ways must give the same values within
float rounding (the largest difference is reported).

Writes ``likelihood-cpu.json`` and ``likelihood-cpu.md`` to ``--out``.
"""

import argparse
import statistics
from pathlib import Path

import torch

from automr.data import PreparedDataset, tokenize_sample
from automr.data.subsets import seeded_subset
from automr.defaults import DEFAULT_LAYER, DEFAULT_MODEL
from automr.experiments.bench import interleaved, machine, ratio, write_result
from automr.grounding.likelihood import target_log_likelihoods
from automr.llm import HFSplitLLM, load_model
from automr.llm.decoding import MIN_SHARED, common_prefix
from automr.methods.generative import left_padded_prompts


def run_once(llm: HFSplitLLM, rows: list[list[int]]) -> int:
    """The opening tokens :func:`~automr.llm.decoding.prefill` runs once for a batch of
    ``rows``: their common prefix, or 0 where it shares none (one prompt, fewer than
    ``MIN_SHARED`` tokens, or a prompt crossing the longrope switch after them)."""
    shared = common_prefix(rows)
    switch = getattr(llm, "longrope_switch", None)
    crosses = switch is not None and shared <= switch < max(map(len, rows))
    return shared if shared >= MIN_SHARED and len(rows) > 1 and not crosses else 0


def bench_likelihood(data: Path, samples: int, batch_size: int, layer: int, repeats: int,
                     model: str = DEFAULT_MODEL, seed: int = 0) -> dict[str, object]:
    loaded = load_model(model, device="cpu")
    dataset = PreparedDataset.load(data)
    chosen = seeded_subset(dataset.samples("test"), samples, seed)
    llm = HFSplitLLM(loaded.model)
    batches = []
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start: start + batch_size]
        ids, mask = left_padded_prompts(loaded, dataset, batch)
        targets = []
        for sample in batch:
            example = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                      dataset.prompt_config)
            targets.append(example.input_ids[len(example.prompt_ids):])
        batches.append((ids, mask, targets))
    values: dict[str, torch.Tensor] = {}

    def way(share: bool) -> None:
        values[str(share)] = torch.cat([
            target_log_likelihoods(llm, ids, mask, layer, targets, share_prefix=share)
            for ids, mask, targets in batches])

    seconds = interleaved({"per_prompt": lambda: way(False), "shared_opening": lambda: way(True)},
                          repeats, loaded.model.device)
    spread = ratio(seconds["per_prompt"], seconds["shared_opening"])
    opening = [run_once(llm, [row[real].tolist() for row, real in zip(ids, mask.bool(),
                                                                   strict=True)])
               for ids, mask, _ in batches]
    return {
        "benchmark": "likelihood", "model": loaded.name, "samples": len(chosen),
        "batch_size": batch_size, "layer": layer, "repeats": repeats, "device": "cpu",
        "dtype": str(loaded.model.dtype), "machine": machine(),
        "prompt_tokens_mean": sum(int(mask.sum()) for _, mask, _ in batches) / len(chosen),
        "shared_opening_tokens": statistics.median(opening),
        "per_prompt_samples_per_s": len(chosen) / statistics.median(seconds["per_prompt"]),
        "shared_samples_per_s": len(chosen) / statistics.median(seconds["shared_opening"]),
        "speedup": spread["median"], "speedup_min_max": [spread["min"], spread["max"]],
        "max_abs_diff_nats": float((values["True"] - values["False"]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = bench_likelihood(args.data, args.samples, args.batch_size, args.layer,
                              args.repeats)
    print(write_result(result, args.out, "likelihood-cpu"))


if __name__ == "__main__":
    main()
