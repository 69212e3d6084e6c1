"""Does the eq. 3 retriever learn better when its inputs are normalised?

A model's layer-L states are long (on ML-100K with SmolLM2 at layer 15, pooled prompts have
norms of about 110 and memory keys about 140), so the paper's scores ``MLP(z_t) . m`` start
nearly one-hot. This example trains the retriever both ways, the paper's (``raw``) and with
``MLPRetrieverConfig(normalize=True)`` (the query standardised, keys of unit length), on the
annotated samples of one element-gains export of ``examples/element_gains.py``, as ``automr
retriever train`` does (eq. 6 with ``log`` labels at temperature 1, a seeded 20% held out,
early stopping), for several seeds. It records how the scores start (mean top probability,
held-out KL against the KL of equal scores), where training stops, and what each retriever's
first pick is worth on a second export, exactly, with no model run: the picked element's gain
minus the sample's mean gain (what random retrieval gets in expectation). Writes one JSON with
the summary and every test sample's pick values per variant and seed::

    python examples/retriever_normalize.py --data runs/data --memory runs/memory-item-l15 \\
        --train docs/results/automr/element-gains-train.json \\
        --test docs/results/automr/element-gains-test.json \\
        --out docs/results/automr/retriever-normalize.json

Queries are pooled from the base model's lower half, which a fine-tune with LoRA above the
split layer (``--lora-from-layer``) leaves as it is.
"""

import json
import sys
from pathlib import Path

import attrs
import torch

import automr
from automr.evaluation import bootstrap_ci, paired_bootstrap
from automr.retrievers import (
    MLPRetriever,
    MLPRetrieverConfig,
    RetrievalSample,
    RetrieverTrainingConfig,
    collate,
    evaluate_retriever,
    train_mlp_retriever,
)

sys.path.insert(0, str(Path(__file__).parent))  # a sibling script's prompt states
from token_scorer import gains_parser, memory_model, prompt_states, read_gains

VARIANTS = {"raw": False, "normalized": True}
VALID_FRACTION = 0.2


@torch.no_grad()
def samples(export: dict, dataset, store, loaded) -> dict[str, RetrievalSample]:
    """Per sample id: the pooled layer-L prompt, the annotated elements' keys, S' of eq. 6."""
    return {sample_id: retrieval_sample(store, sample, export["per_sample"][sample_id], prompt)
            for sample_id, (sample, prompt) in prompt_states(export, dataset, store.layer,
                                                             loaded).items()}


def retrieval_sample(store, sample, values: dict, prompt: torch.Tensor) -> RetrievalSample:
    """One sample's pooled prompt, its annotated elements' keys and ``softmax(gain)``."""
    query = store.record.pooling(prompt[None], torch.ones(1, len(prompt), dtype=torch.bool))[0]
    keys = store.view_sample(sample).keys[torch.tensor(values["elements"])]
    gains = torch.tensor(values["gain"], dtype=torch.float64)
    return RetrievalSample(query=query.float(), keys=keys.float(),
                           targets=gains.softmax(0).float())


def train(learn: list[RetrievalSample], normalize: bool, seed: int) -> tuple[MLPRetriever, dict]:
    """The retriever as ``automr retriever train --seed SEED [--normalize]`` trains it."""
    full = collate(learn)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(VALID_FRACTION * len(full)))  # at least one, as the command
    valid, rest = full.select(order[:n_valid]), full.select(order[n_valid:])
    config = RetrieverTrainingConfig(seed=seed, normalize=normalize)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        start = MLPRetriever(MLPRetrieverConfig(hidden_size=full.hidden_size,
                                                normalize=normalize)).eval()
    with torch.no_grad():
        top = start.log_probs(valid.queries, valid.keys, valid.mask).exp().amax(1).mean()
    retriever, history = train_mlp_retriever(rest, valid, config, quiet=True)
    return retriever, {"start_top_probability": float(top),
                       "start": attrs.asdict(evaluate_retriever(start, valid)),
                       "best_epoch": history.best_epoch,
                       "end": attrs.asdict(evaluate_retriever(retriever, valid))}


@torch.no_grad()
def pick_values(retriever: MLPRetriever, test: dict[str, RetrievalSample],
                gains: dict[str, list[float]]) -> dict[str, float]:
    """Per test sample: the gain of the element scored first minus the sample's mean gain."""
    out = {}
    for sample_id, sample in test.items():
        scores = retriever.scores(sample.query[None], sample.keys[None],
                                  torch.ones(1, len(sample.keys), dtype=torch.bool))[0]
        gain = gains[sample_id]
        out[sample_id] = gain[int(scores.argmax())] - sum(gain) / len(gain)
    return out


def interval(values: torch.Tensor) -> dict[str, float]:
    found = bootstrap_ci(values)
    return {"mean": found.mean, "low": found.low, "high": found.high}


def main(argv: list[str] | None = None) -> dict:
    parser = gains_parser(__doc__, "the memory annotated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds):  # a repeat would count one draw as two seeds
        parser.error(f"--seeds repeats a seed: {args.seeds}")

    dataset = automr.PreparedDataset.load(args.data)
    store = automr.MemoryStore.open(args.memory)
    store.check_dataset(dataset)  # its timelines are the samples' (else a raw IndexError)
    loaded = memory_model(args.model, store)
    test_export = read_gains(args.test, store)
    learn = samples(read_gains(args.train, store), dataset, store, loaded)
    test = samples(test_export, dataset, store, loaded)
    gains = {i: v["gain"] for i, v in test_export["per_sample"].items()}

    runs, picks = {}, {}
    for name, normalize in VARIANTS.items():
        for seed in seeds:
            retriever, runs[f"{name}/{seed}"] = train(list(learn.values()), normalize, seed)
            picks[f"{name}/{seed}"] = pick_values(retriever, test, gains)
            runs[f"{name}/{seed}"]["test_pick_minus_mean"] = interval(
                torch.tensor(list(picks[f"{name}/{seed}"].values()), dtype=torch.float64))
    ids = list(test)
    averaged = {name: torch.tensor([sum(picks[f"{name}/{s}"][i] for s in seeds) / len(seeds)
                                    for i in ids], dtype=torch.float64) for name in VARIANTS}
    difference = paired_bootstrap(averaged["normalized"], averaged["raw"])
    summary = {"train_samples": len(learn), "test_samples": len(test), "seeds": seeds,
               "runs": runs,
               "seeds_averaged": {name: interval(v) for name, v in averaged.items()},
               "normalized_minus_raw": {"mean": difference.mean, "low": difference.low,
                                        "high": difference.high}}
    command = ["python", "examples/retriever_normalize.py",
               *(sys.argv[1:] if argv is None else argv)]
    per_sample = {i: {run: round(values[i], 5) for run, values in picks.items()} for i in ids}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "format": "automr.retriever-normalize/1", "commands": [command], "summary": summary,
        "per_sample": per_sample}) + "\n", encoding="utf-8")
    print(json.dumps(summary | {"runs": {k: {"best_epoch": v["best_epoch"],
                                             "valid_kl": v["end"]["kl"]}
                                         for k, v in runs.items()}}, indent=1))
    return summary


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
