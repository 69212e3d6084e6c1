"""What an L2 grounding generated: how often the title the LM writes is a catalog title, the true
next one, one already in the user's history, and which titles it writes most (with each
one's rank by training-period popularity).

BIGRec's L2 grounding ranks the catalog by the distance of each title to the text the LM
generated (beam search); `automr evaluate` keeps that text per sample (`generated/` in the
evaluation folder, `generated` in an export). This reads it with the prepared dataset::

    automr evaluate --data runs/data --finetuned runs/bigrec-l15-2k --methods bigrec:l2 \\
        --samples 1000 --exclude-seen --out runs/generated-1000
    python examples/generated_titles.py --results runs/generated-1000 --data runs/data

``--results`` is an evaluation folder or an exported one (`automr export`, e.g. under
docs/results/). Prints one block per method that generated; ``--json FILE`` writes the same
numbers, with the per-sample classes keyed by sample id.
"""

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import automr
from automr.data import format_target
from automr.data.popularity import popularity

FORMAT = "automr.generated-titles/1"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--results", type=Path, required=True,
                        help="evaluation folder (automr evaluate --out) or its export")
    parser.add_argument("--data", type=Path, required=True,
                        help="the prepared dataset it was evaluated on")
    parser.add_argument("--split", default="test", help="the split its samples come from")
    parser.add_argument("--top", type=int, default=5, help="most generated titles to show")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    return parser.parse_args(argv)


def generated_texts(results: Path) -> dict[str, dict[str, str]]:
    """Method -> sample id -> generated text of the ranked samples, from a folder or an export
    (which also keeps the titles generated for the validation samples a prior's weight was
    tuned on, e.g. ``l2-pop``'s: they are left out here)."""
    exported = (json.loads(results.read_text(encoding="utf-8")) if results.is_file() else
                automr.EvaluationFolder(results).export())
    ranked = exported.get("ranks", {})
    return {method: {i: text for i, text in texts.items()
                     if method not in ranked or i in ranked[method]}
            for method, texts in exported.get("generated", {}).items()}


def classify(texts: Mapping[str, str], dataset: automr.PreparedDataset, split: str,
             top: int) -> dict:
    """Each sample's generated text as ``target`` (the true next title), ``history`` (a title
    the user had seen: in the prompt or in memory), ``catalog`` (another catalog title) or
    ``other`` (no catalog title); the shares, the distinct texts and the most generated, each
    with its rank by training-period popularity (1 + the titles with more interactions, those of
    the items sharing a title added up; None: not a catalog title)."""
    samples = {s.id: s for s in dataset.samples(split)}
    if missing := [i for i in texts if i not in samples]:
        raise SystemExit(f"{len(missing)} of the {len(texts)} samples (e.g. {missing[0]}) are "
                         f"not in the {split} split of this dataset; give the --data and "
                         f"--split they were evaluated on")
    response = {item.id: format_target(item.title, dataset.prompt_config)
                for item in dataset.catalog}
    titles = set(response.values())
    classes = {}
    for sample_id, text in texts.items():
        sample = samples[sample_id]
        seen = {response[item] for item in (*sample.memory, *sample.recent)}
        classes[sample_id] = ("target" if text == response[sample.target] else
                              "history" if text in seen else
                              "catalog" if text in titles else "other")
    counts = Counter(classes.values())
    interactions: Counter[str] = Counter()  # items sharing a title share its text's count
    for text, count in zip(response.values(), popularity(dataset).tolist(), strict=True):
        interactions[text] += count

    def rank(text: str) -> int | None:  # 1 + the titles with more training interactions
        if text not in interactions:
            return None
        return 1 + sum(n > interactions[text] for n in interactions.values())

    most = [[text, n, rank(text)] for text, n in Counter(texts.values()).most_common(top)]
    return {"samples": len(texts),
            "shares": {k: counts[k] / len(texts) for k in ("target", "history", "catalog",
                                                             "other")},
            "distinct": len(set(texts.values())),
            "most_generated": most, "per_sample": classes}


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    dataset = automr.PreparedDataset.load(args.data)
    found = generated_texts(args.results)
    if not found:
        raise SystemExit(f"{args.results} holds no generated titles (an L2 method's, evaluated "
                         f"by this automr or later)")
    report = {method: classify(texts, dataset, args.split, args.top)
              for method, texts in found.items()}
    for method, numbers in report.items():
        shares = ", ".join(f"{k} {v:.1%}" for k, v in numbers["shares"].items())
        print(f"{method}: {numbers['samples']} samples; the generated text is {shares}; "
              f"{numbers['distinct']} distinct texts")
        for text, n, rank in numbers["most_generated"]:
            where = "not a catalog title" if rank is None else f"popularity rank {rank}"
            print(f"  {n:>5}  {text}  ({where})")
    if args.json is not None:
        given = list(sys.argv[1:] if argv is None else argv)
        command = ["python", "examples/generated_titles.py", *given]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"format": FORMAT, "command": command,
                                         "results": str(args.results), "methods": report},
                                        indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
