"""Is it the user's own history? Memory from another user, as a control for random retrieval.

With a barely tuned BIGRec, a random element of the user's memory raises the true title's
likelihood by almost a nat (docs/results.md, "Memory at power"). That may be the user's taste,
or only the shape of a title inserted before the prompt. This example inserts, into each
sample's prompt, a random element of *another* user's memory (a seeded donor: another user's
sample of the same evaluation), with the same retriever (random), combiner, layer and
fine-tune, and scores the sample's own true title. The sample's prompt is unchanged (checked
token for token); only the memory is the donor's. A reference export of ``automr evaluate``
with ``bigrec:likelihood`` and ``random:likelihood`` on the same samples gives the paired
differences: donor's element minus no memory, and own element minus donor's::

    python examples/foreign_memory.py --data runs/data --finetuned runs/bigrec-l15-32 \\
        --memory runs/memory-item-l15 \\
        --reference docs/results/automr/weak-bigrec-memory-1000.json \\
        --samples 1000 --out docs/results/automr/foreign-memory-1000.json

Samples without a memory of their own are left out (random retrieval inserts nothing there).
"""

import argparse
import json
import random
import sys
from pathlib import Path

import attrs
import torch

import automr
from automr.data.prompts import tokenize_sample
from automr.evaluation import bootstrap_ci, paired_bootstrap


def donors(samples: list, seed: int) -> dict[str, object]:
    """Per sample id: a sample of another user, each sample a donor once (a seeded shuffle,
    each paired with the next; a pair of one user swaps donors with another pair)."""
    order = list(samples)
    random.Random(seed).shuffle(order)
    given = order[1:] + order[:1]
    for i, sample in enumerate(order):
        if given[i].user == sample.user:
            j = next(j for j in range(len(order)) if given[j].user != sample.user
                     and given[i].user != order[j].user)
            given[i], given[j] = given[j], given[i]
    return {sample.id: donor for sample, donor in zip(order, given, strict=True)}


def hybrid(sample, donor):
    """``sample``'s prompt and target with ``donor``'s memory (and the times that locate it)."""
    return attrs.evolve(sample, user=donor.user, timestamp=donor.timestamp,
                        recent_timestamps=donor.recent_timestamps, memory=donor.memory,
                        memory_timestamps=donor.memory_timestamps)


def interval(values: list[float]) -> dict[str, float]:
    found = bootstrap_ci(torch.tensor(values, dtype=torch.float64))
    return {"mean": found.mean, "low": found.low, "high": found.high}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--memory", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True,
                        help="export with bigrec:likelihood and random:likelihood")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="as automr evaluate --seed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    dataset = automr.PreparedDataset.load(args.data)
    run = automr.FinetunedRun.open(args.finetuned)
    loaded = run.load(device="cpu")
    store = run.open_memory(args.memory)
    chosen = [s for s in automr.seeded_subset(dataset.samples("test"), args.samples, args.seed)
              if s.memory]
    pairs = donors(chosen, args.seed)
    mixed = {s.id: hybrid(s, pairs[s.id]) for s in chosen}
    assert len({m.id for m in mixed.values()}) == len(mixed)  # values are kept by id
    for s in chosen:  # the prompt and the true title are the sample's own
        assert tokenize_sample(loaded.tokenizer, s, dataset.catalog,
                               dataset.prompt_config).input_ids == tokenize_sample(
            loaded.tokenizer, mixed[s.id], dataset.catalog, dataset.prompt_config).input_ids
    retrieval = automr.MemoryRetrieval(
        store, automr.build_retriever("random", store.hidden_size, seed=args.seed),
        automr.Concat())
    method = automr.GenerativeMethod(
        loaded, dataset, automr.build_grounder("likelihood", loaded, dataset,
                                               run.base_fingerprint, progress=False),
        store.layer, retrieval=retrieval, batch_size=args.batch_size)
    values = method.target_log_likelihoods([mixed[s.id] for s in chosen])

    reference = json.loads(args.reference.read_text())["loglik"]
    own, plain = reference["random:likelihood"], reference["bigrec:likelihood"]
    ids = [s.id for s in chosen if s.id in own]
    foreign = {s.id: v for s, (v, _) in zip(chosen, values, strict=True)}
    pick = {name: torch.tensor([table[i][0] for i in ids], dtype=torch.float64)
            for name, table in (("own", own), ("none", plain))}
    theirs = torch.tensor([foreign[i] for i in ids], dtype=torch.float64)
    summary = {"samples": len(ids), "donor_minus_none": interval((theirs - pick["none"]).tolist()),
               "own_minus_none": interval((pick["own"] - pick["none"]).tolist())}
    difference = paired_bootstrap(pick["own"], theirs)
    summary["own_minus_donor"] = {"mean": difference.mean, "low": difference.low,
                                  "high": difference.high}
    command = ["python", "examples/foreign_memory.py", *(sys.argv[1:] if argv is None else argv)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "format": "automr.foreign-memory/1", "commands": [command], "summary": summary,
        "per_sample": {s.id: {"donor": pairs[s.id].id, "loglik": foreign[s.id], "tokens": n}
                       for s, (_, n) in zip(chosen, values, strict=True)}}) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
