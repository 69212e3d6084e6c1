"""Score a trained retriever on annotated samples it did not train on, beside two baselines.

The annotations (eq. 5) say, for each annotated sample, how much every memory element raises
the likelihood of the true next item; as labels S' = softmax(delta / temperature) they are
what the retriever learns to match (eq. 6). Given the annotations the retriever trained on,
this example rebuilds the seeded fraction ``automr retriever train`` held out of training
(from the retriever's ``training.json``) with
:func:`automr.annotation.run.retrieval_dataset`; those samples chose the epoch training
stopped at, so the MLP's numbers on them lean optimistic. Given other annotations (``automr
annotate --split test``, as ``automr retriever score`` takes), it scores every sample and
refuses any the retriever trained on. It compares, with
:func:`automr.retrievers.evaluate_retriever`:

- the trained MLP retriever (eq. 3),
- ``RandomRetriever`` (seeded hash scores: what chance gives),
- ``SemanticRetriever`` (cosine of layer-L states, untrained), plain and centred on the mean
  memory key (LLM states share a large common direction that centring removes).

KL is KL(S' || S) averaged over samples (lower is better); top-1 is how often the retriever's
best element is a best element by the labels (higher is better).

Run it on the embedded default after the demo::

    automr demo --out runs/demo        # writes runs/demo/{data,memory,annotations,retriever,...}
    python examples/score_retriever.py

(the folders default to those). ``--all`` scores every annotated sample instead (the training
ones included, so the MLP's numbers are then optimistic).
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from automr.annotation import LABEL_FORMS
from automr.annotation.run import Annotations, retrieval_dataset
from automr.data import PreparedDataset
from automr.errors import AutomrError
from automr.experiments.retriever import annotations_digest
from automr.memory import MemoryStore
from automr.retrievers import (
    RandomRetriever,
    RetrievalDataset,
    SemanticRetriever,
    evaluate_retriever,
    load_retriever,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--annotations", type=Path, default=Path("runs/demo/annotations"),
                        help="annotation folder (automr annotate)")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"),
                        help="the prepared dataset the annotations came from")
    parser.add_argument("--memory", type=Path, default=Path("runs/demo/memory"),
                        help="the memory the annotations were made with")
    parser.add_argument("--retriever", type=Path, default=Path("runs/demo/retriever"),
                        help="trained retriever folder (automr retriever train)")
    parser.add_argument("--label-form", choices=LABEL_FORMS, default=None,
                        help="label form of S' (default: the one the retriever was trained on)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="label temperature (default: the retriever's training one)")
    parser.add_argument("--all", action="store_true",
                        help="score every annotated sample, the training ones too (optimistic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random retriever")
    return parser.parse_args(argv)


def held_out(full: RetrievalDataset, annotations: Annotations, folder: Path,
             training: dict | None) -> tuple[RetrievalDataset, str]:
    """The rows to score, and what they are: every row of annotations the retriever did not
    train on, else the validation rows ``automr retriever train`` held out (same seeded
    permutation)."""
    if training is None:
        return full, "annotated (no training.json: which trained the retriever is unknown)"
    digest = training.get("annotations_digest")  # absent in records of older versions
    if digest is not None and digest != annotations_digest(folder):
        seen = set(training.get("annotated_samples", ())) & set(annotations.header["samples"])
        if seen:
            raise AutomrError(f"{len(seen)} samples of {folder} were among those the retriever "
                              f"trained on; give the annotations it trained on (their "
                              f"validation rows are scored) or held-out ones")
        return full, "held-out (annotated apart from the retriever's training)"
    if not training.get("valid_samples"):
        return full, "annotated (the retriever trained on all of them: optimistic)"
    if training["train_samples"] + training["valid_samples"] != len(full):
        raise AutomrError(f"the retriever was trained on {training['train_samples']} + "
                          f"{training['valid_samples']} samples, but these annotations hold "
                          f"{len(full)}; pass the annotations it was trained on")
    generator = torch.Generator().manual_seed(training["config"]["seed"])
    order = torch.randperm(len(full), generator=generator)
    return (full.select(order[: training["valid_samples"]]),
            "validation (held out of training; they chose its stopping epoch)")


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    args = parse_args(argv)
    record_file = args.retriever / "training.json"
    training = (json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file()
                else None)
    form = args.label_form or (training or {}).get("label_form", "log")
    temperature = args.temperature or (training or {}).get("temperature", 1.0)

    annotations = Annotations.load(args.annotations)
    dataset = PreparedDataset.load(args.data)
    store = MemoryStore.open(args.memory)
    annotations.check_memory(store)
    split = annotations.header["config"]["split"]
    full = retrieval_dataset(annotations, dataset, store, split, form, temperature)
    scored, which = ((full, "annotated") if args.all
                     else held_out(full, annotations, args.annotations, training))

    retrievers = {
        "mlp (trained)": load_retriever(args.retriever, hidden_size=store.hidden_size),
        "random": RandomRetriever(seed=args.seed),
        "semantic": SemanticRetriever(),
        "semantic (centred)": SemanticRetriever.centered(full.keys, full.mask),
    }
    results = {}
    for name, retriever in retrievers.items():
        with torch.no_grad():
            metrics = evaluate_retriever(retriever, scored)
        results[name] = (metrics.kl, metrics.top1)

    sizes = scored.mask.sum(1).float()
    best = (scored.targets >= scored.targets.amax(1, keepdim=True)) & scored.mask
    chance = float((best.sum(1) / sizes).mean())  # a uniformly random pick's top-1
    print(f"{len(scored)} samples, {which}; label form {form}, temperature {temperature}, "
          f"{sizes.mean():.1f} memory elements on average, chance top-1 {chance:.3f}")
    print(f"{'retriever':<20}{'KL':>10}{'top-1':>10}")
    for name, (kl, top1) in results.items():
        print(f"{name:<20}{kl:>10.4f}{top1:>10.3f}")
    return results


if __name__ == "__main__":
    try:
        main()
    except AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
