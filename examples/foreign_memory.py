"""Is it the user's own history? Memory from another user, as a control for random retrieval.

With a barely tuned BIGRec, a random element of the user's memory raises the true title's
likelihood by almost a nat (docs/results.md, "Memory at power"). That may be the user's taste,
or only the shape of a title inserted before the prompt. This example inserts, into each
sample's prompt, a random element of *another* user's memory (a seeded donor: another user's
sample of the same evaluation whose memory does not hold the sample's true title), with the
same retriever (random), combiner, layer and fine-tune, and scores the sample's own true
title. The sample's prompt is unchanged (checked token for token); only the memory is the
donor's. A reference export of ``automr evaluate`` with ``bigrec:likelihood`` and
``random:likelihood`` on the same samples gives the paired differences: donor's element minus
no memory, and own element minus donor's::

    python examples/foreign_memory.py --data runs/data --finetuned runs/bigrec-l15-32 \\
        --memory runs/memory-item-l15 \\
        --reference docs/results/automr/weak-bigrec-memory-1000.json \\
        --samples 1000 --out docs/results/automr/foreign-memory-1000.json

Samples without a memory of their own are left out (random retrieval inserts nothing there).
"""

import argparse
import collections
import json
import random
import sys
from pathlib import Path

import attrs
import torch

import automr
from automr.data.prompts import tokenize_sample
from automr.evaluation import bootstrap_ci, paired_bootstrap


def donors(samples: list[automr.Sample], seed: int, title) -> dict[str, automr.Sample]:
    """Per sample id: a sample of another user whose memory does not hold the sample's true
    title (else a random element of it could be the answer itself), each sample a donor once.
    In a seeded shuffle each sample takes the next as donor where it fits; the rest are matched
    along augmenting paths (a perfect matching when one exists). ``title``: item id -> title."""
    order = list(samples)
    random.Random(seed).shuffle(order)
    held = [{title(item) for item in sample.memory} for sample in order]
    n = len(order)
    candidates = []
    for i, sample in enumerate(order):
        others = [(i + 1 + k) % n for k in range(n - 1)]  # the next first, then on round
        candidates.append([j for j in others if order[j].user != sample.user
                           and title(sample.target) not in held[j]])
    donor: list[int | None] = [None] * n
    taker: list[int | None] = [None] * n
    for i in range(n):
        if candidates[i] and candidates[i][0] == (i + 1) % n:
            donor[i], taker[(i + 1) % n] = (i + 1) % n, i
    for i in range(n):
        if donor[i] is None and not _augment(i, candidates, donor, taker):
            raise SystemExit(f"no donor fits sample {order[i].id} (another user's, without its "
                             f"true title): take more samples, or samples of more users")
    matched = [j for j in donor if j is not None]  # every sample has its donor now
    return {sample.id: order[j] for sample, j in zip(order, matched, strict=True)}


def _augment(start: int, candidates: list[list[int]], donor: list, taker: list) -> bool:
    """Give ``start`` a donor, moving others' along one alternating path (breadth first)."""
    reached, queue = {}, collections.deque([start])
    while queue:
        sample = queue.popleft()
        for j in candidates[sample]:
            if j in reached:
                continue
            reached[j] = sample
            if taker[j] is None:
                while j is not None:  # flip the path back to start
                    sample = reached[j]
                    j_before = donor[sample]
                    donor[sample], taker[j] = j, sample
                    j = j_before
                return True
            queue.append(taker[j])
    return False


def hybrid(sample, donor):
    """``sample``'s prompt and target with ``donor``'s memory (and the times that locate it)."""
    return attrs.evolve(sample, user=donor.user, timestamp=donor.timestamp,
                        recent_timestamps=donor.recent_timestamps, memory=donor.memory,
                        memory_timestamps=donor.memory_timestamps)


def interval(values: list[float]) -> dict[str, float]:
    found = bootstrap_ci(torch.tensor(values, dtype=torch.float64))
    return {"mean": found.mean, "low": found.low, "high": found.high}


def read_reference(path: Path, seed: int) -> dict:
    """The per-sample log-likelihoods of an export of ``automr evaluate``, refused in one line
    unless it holds bigrec:likelihood and random:likelihood of test samples ranked with this
    script's random arm: concat, one element, the retrieval seed ``seed`` (else each own
    element would be paired with a donor's of another set-up)."""
    if not path.is_file():
        raise SystemExit(f"--reference {path} is not a file: give the export of an automr "
                         f"evaluate (automr export FOLDER FILE)")
    exported = json.loads(path.read_text(encoding="utf-8"))
    values = exported.get("loglik", {}) if isinstance(exported, dict) else {}
    missing = [m for m in ("bigrec:likelihood", "random:likelihood") if m not in values]
    if missing:
        raise SystemExit(f"--reference {path} holds no target log-likelihoods of "
                         f"{', '.join(missing)}: evaluate them with --measures likelihood")
    config = exported.get("results", {}).get("config", {})
    drawn = config.get("retrieval_seed")
    found = {"combiner": config.get("combiner"), "k": config.get("k"),
             "split": config.get("split", "test"),
             "retrieval seed": config.get("seed") if drawn is None else drawn}
    asked = {"combiner": "concat", "k": 1, "split": "test", "retrieval seed": seed}
    other = [f"{key} {found[key]!r} (not {value!r})" for key, value in asked.items()
             if found[key] != value]
    if other:
        raise SystemExit(f"--reference {path} was evaluated with {', '.join(other)}; give one "
                         f"evaluated as this script's random arm (or pass its --seed)")
    return values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--memory", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True,
                        help="export with bigrec:likelihood and random:likelihood")
    parser.add_argument("--samples", type=int, default=1000, help="0 = all")
    parser.add_argument("--seed", type=int, default=0, help="as automr evaluate --seed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    dataset = automr.PreparedDataset.load(args.data)
    chosen = [s for s in automr.seeded_subset(dataset.samples("test"), args.samples or None,
                                               args.seed) if s.memory]
    reference = read_reference(args.reference, args.seed)
    own, plain = reference["random:likelihood"], reference["bigrec:likelihood"]
    ids = [s.id for s in chosen if s.id in own]
    if len(ids) < 2:  # before the model runs: a reference of other samples or another --seed
        raise SystemExit(f"{args.reference} holds {len(ids)} of these {len(chosen)} samples; "
                         f"give the --samples and --seed of its automr evaluate")
    pairs = donors(chosen, args.seed, dataset.catalog.title)
    run = automr.FinetunedRun.open(args.finetuned)
    loaded = run.load(device="cpu")
    store = run.open_memory(args.memory)
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
                       for s, (_, n) in zip(chosen, values, strict=True)}}) + "\n",
        encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
