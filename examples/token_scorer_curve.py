"""Would more annotated samples make the token-level scorer pick better? A learning curve.

``examples/token_scorer.py`` trains its cross-attention scorer on the eq. 5 gains of about a
thousand annotated samples and finds a sliver over random retrieval. This example asks whether
annotation is the bottleneck: it trains the same scorer, chosen the same way (objective and
epochs by 5-fold cross-validation), on nested seeded subsets of the training samples, of
several sizes and for several seeds, and reads each pick's worth off the test export exactly
(its gain minus the sample's mean gain, as there). The training exports of
``examples/element_gains.py`` are merged by sample id, so annotations made in several runs
(different ``automr annotate --seed``) count together. Per size, each test sample's pick value
is averaged over the seeds and summarised with a bootstrap interval; the largest size minus
the smallest is paired per sample. Writes one JSON with the curve and every run's pick per
test sample (keyed by sample id; with the test export, every value is recomputable), after
every run, so an interrupted call keeps what it finished and the same command resumes (on the
same exports and memory: their digests are recorded)::

    python examples/token_scorer_curve.py --data runs/data --memory runs/memory-item-l15 \\
        --train docs/results/automr/element-gains-train.json \\
        --test docs/results/automr/element-gains-test.json \\
        --sizes 245,490,980 --seeds 0,1,2 --objectives regression \\
        --out docs/results/automr/token-scorer-curve.json

Prompt states are computed once and shared by every run.
"""

import argparse
import hashlib
import importlib.util
import json
import random
import sys
from pathlib import Path

import torch

import automr
from automr.evaluation import paired_bootstrap
from automr.storage import write_json_atomic


def _sibling(name: str):
    """``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None  # a .py file always has both
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


token_scorer = _sibling("token_scorer")


def merge(exports: list[dict]) -> dict:
    """One export whose samples are every export's; a sample in several must have been
    annotated on the same elements, and the first export's gains are kept."""
    per_sample: dict[str, dict] = {}
    for export in exports:
        for sample_id, values in export["per_sample"].items():
            if sample_id in per_sample and per_sample[sample_id]["elements"] != values["elements"]:
                raise SystemExit(f"sample {sample_id} was annotated on different elements")
            per_sample.setdefault(sample_id, values)
    return {"per_sample": per_sample}


def nested_subsets(ids: list[str], sizes: list[int], seed: int) -> dict[int, list[str]]:
    """Per size, the first ``size`` ids of one seeded shuffle (a smaller subset lies inside
    every larger one)."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    if max(sizes) > len(order):
        raise SystemExit(f"--sizes asks for {max(sizes)} samples; the exports have {len(order)}")
    return {size: order[:size] for size in sizes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--memory", type=Path, required=True,
                        help="the memory the annotations used (with token states)")
    parser.add_argument("--train", type=Path, required=True, nargs="+",
                        help="element-gains exports to learn on (merged by sample id)")
    parser.add_argument("--test", type=Path, required=True,
                        help="element-gains export to pick on")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", required=True,
                        help="comma-separated numbers of training samples")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--objectives", default=",".join(token_scorer.CANDIDATES),
                        help="comma-separated objectives cross-validation picks from")
    parser.add_argument("--model", default="smollm2-135m", help="base model of the fine-tunes")
    parser.add_argument("--epochs", type=int, default=12,
                        help="the most epochs cross-validation considers")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(v) for v in args.sizes.split(",")})
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--sizes and --seeds take comma-separated whole numbers, got "
                     f"{args.sizes!r} and {args.seeds!r}")
    if len(set(seeds)) != len(seeds):  # a repeat would count one draw as two seeds
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    objectives = tuple(args.objectives.split(","))
    if unknown := set(objectives) - set(token_scorer.CANDIDATES):
        raise SystemExit(f"unknown objectives {sorted(unknown)}; "
                         f"choose from {', '.join(token_scorer.CANDIDATES)}")

    dataset = automr.PreparedDataset.load(args.data)
    store = automr.MemoryStore.open(args.memory)
    store.check_dataset(dataset)  # its timelines are the samples' (else a raw IndexError)
    loaded = token_scorer.memory_model(args.model, store)
    learn = token_scorer.features(merge([token_scorer.read_gains(p, store)
                                         for p in args.train]), dataset, store, loaded)
    test = token_scorer.features(token_scorer.read_gains(args.test, store), dataset, store,
                                 loaded)

    command = ["python", "examples/token_scorer_curve.py",
               *(sys.argv[1:] if argv is None else argv)]
    inputs = {"train": [file_digest(p) for p in args.train], "test": file_digest(args.test),
              "memory": automr.MemoryStore.digest(args.memory)}
    done = {(r["seed"], r["train_samples"]): r
            for r in finished_runs(args.out, command, inputs)}
    runs: list[dict] = []

    def report() -> dict:
        return {"format": "automr.token-scorer-curve/1", "commands": [command], "inputs": inputs,
                "finished": len(runs) == len(seeds) * len(sizes),
                "train_samples_available": len(learn), "folds": token_scorer.FOLDS,
                **summarize_runs(runs, test), "runs": runs}

    for seed in seeds:
        for size, ids in nested_subsets(list(learn), sizes, seed).items():
            if (seed, size) not in done:
                model, objective, epochs, curves = token_scorer.fit(
                    {i: learn[i] for i in ids}, args.epochs, seed, objectives)
                picks = {i: s["picked"] for i, s in token_scorer.score(model, test).items()}
                done[seed, size] = {"seed": seed, "train_samples": size, "objective": objective,
                                    "epochs": epochs,
                                    "cv_pick_minus_mean": curves[objective][epochs - 1],
                                    "picks": picks}
                print(json.dumps({k: v for k, v in done[seed, size].items() if k != "picks"}),
                      flush=True)
            runs.append(done[seed, size])
            write_json_atomic(args.out, report(), indent=None)
    result = report()
    print(json.dumps({k: result[k] for k in ("curve", "largest_minus_smallest")}, indent=1))
    return result


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_runs(out: Path, command: list[str], inputs: dict) -> list[dict]:
    """The runs an earlier, interrupted call with the same command already wrote to ``out``,
    from the same ``inputs`` (the exports' and memory's digests: an export written again at
    its path is other gains)."""
    if not out.exists():
        return []
    earlier = json.loads(out.read_text(encoding="utf-8"))
    same = earlier["commands"] == [command] and earlier.get("inputs") == inputs
    return earlier["runs"] if same else []


def summarize_runs(runs: list[dict], test: dict) -> dict:
    """Per size (and gain key): each test sample's pick value averaged over that size's runs,
    bootstrapped; and the largest size minus the smallest, paired per sample."""
    sizes = sorted({r["train_samples"] for r in runs})

    def averaged(size: int, key: str) -> dict[str, float]:
        values = [token_scorer.worth(r["picks"], test, key)
                  for r in runs if r["train_samples"] == size]
        return {i: sum(v[i] for v in values) / len(values) for i in values[0]}

    curve, largest_minus_smallest = [], {}
    for key in ("gain", "gain_other"):
        if not any(key in g for *_, g in test.values()):
            continue
        by_size = {size: averaged(size, key) for size in sizes}
        curve += [{"train_samples": size, "key": key,
                   "seeds": sorted(r["seed"] for r in runs if r["train_samples"] == size),
                   **token_scorer.summarize(by_size[size])} for size in sizes]
        if len(sizes) > 1:
            ids = list(by_size[sizes[0]])  # the export's order, as every other interval
            diff = paired_bootstrap(*(torch.tensor([by_size[s][i] for i in ids],
                                                   dtype=torch.float64)
                                      for s in (sizes[-1], sizes[0])))
            largest_minus_smallest[key] = {"samples": len(ids), "difference": diff.mean,
                                           "low": diff.low, "high": diff.high}
    return {"curve": curve, "largest_minus_smallest": largest_minus_smallest}


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
