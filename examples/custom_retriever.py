"""Plug your own retriever into AutoMR and evaluate it against memory-free BIGRec.

A retriever is anything with a ``scores(query, keys, mask)`` method of the right shapes: it
implements :class:`automr.Retriever` by shape, with no base class to inherit. This example
writes ``RecencyRetriever`` (it always prefers the user's most recent memory element), checks
it against the Protocol, joins the element it picks to the prompt's layer-L state with
:class:`automr.MemoryRetrieval`, and evaluates BIGRec with and without it on the same test
samples with :func:`automr.evaluate`: Recall/NDCG with bootstrap intervals and the paired
difference against BIGRec. Only public imports (``import automr``) are used.

Run it on the embedded default (SmolLM2-135M, MovieLens-100K) after the demo::

    automr demo --out runs/demo        # writes runs/demo/{data,bigrec,memory,...}
    python examples/custom_retriever.py --samples 32

``--data``, ``--finetuned`` and ``--memory`` default to those folders. ``constrained`` (the
default) runs a beam search restricted to catalog titles; ``likelihood`` scores every catalog
title, exact but one upper-half pass per title: about 200 s a sample and method with the
demo's 1,341 items on a 2-core CPU (a review's run), hours for 32 samples. ``--out DIR`` keeps
the ranks (a rerun reuses them).
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from beartype import beartype
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

import automr


class RecencyRetriever:
    """Scores each memory element by its position in the user's timeline: the newest wins.

    A memory view is ordered oldest -> newest and padded on the right, so the position is a
    recency score. Padding gets ``-inf`` (callers ignore it anyway). The query and the keys'
    contents are not looked at: this is a content-free baseline, like "the last thing you
    watched before your recent history".
    """

    @jaxtyped(typechecker=beartype)
    def scores(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        position = torch.arange(keys.shape[1], dtype=keys.dtype, device=keys.device)
        return position.expand(mask.shape).masked_fill(~mask, -torch.inf)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"),
                        help="prepared dataset folder")
    parser.add_argument("--finetuned", type=Path, default=Path("runs/demo/bigrec"),
                        help="BIGRec fine-tune run folder (automr finetune)")
    parser.add_argument("--memory", type=Path, default=Path("runs/demo/memory"),
                        help="memory folder (automr memory build)")
    parser.add_argument("--samples", type=int, default=32, help="test samples to rank (0 = all)")
    parser.add_argument("--grounder", choices=("constrained", "likelihood"),
                        default="constrained", help="how generations become catalog rankings")
    parser.add_argument("--combiner", choices=("concat", "append-token", "prepend-token"),
                        default="concat")
    parser.add_argument("--num-beams", type=int, default=None,
                        help="beams of the constrained grounder (default 10)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="which test samples")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="automr cache (models, catalog embeddings)")
    parser.add_argument("--out", type=Path, default=None,
                        help="evaluation folder for the ranks and tables (optional)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> automr.Evaluation:
    args = parse_args(argv)
    retriever = RecencyRetriever()
    assert isinstance(retriever, automr.Retriever), "RecencyRetriever must match the Protocol"

    dataset = automr.PreparedDataset.load(args.data)
    samples = automr.seeded_subset(dataset.samples("test"), args.samples or None, args.seed)
    run = automr.FinetunedRun.open(args.finetuned)
    loaded = run.load(device=args.device, cache_dir=args.cache_dir)
    # the memory's keys must be what the tuned model's lower half computes (checked here)
    store = run.open_memory(args.memory, device=str(loaded.model.device))
    grounder = automr.build_grounder(args.grounder, loaded, dataset, run.base_fingerprint,
                                     args.num_beams, args.cache_dir, progress=not args.quiet)
    common = {"batch_size": args.batch_size, "progress": not args.quiet}
    # what decides the ranks: a rerun into --out reuses a method's ranks only if they are equal
    decided_by = {"model": loaded.fingerprint(), "dtype": str(loaded.model.dtype),
                  "data": automr.dataset_fingerprint(dataset), "grounder": args.grounder,
                  "num_beams": args.num_beams}
    retrieval = automr.MemoryRetrieval(store, retriever, automr.COMBINERS[args.combiner](), k=1)
    methods = {
        "bigrec": automr.GenerativeMethod(loaded, dataset, grounder, store.layer, **common,
                                          label="bigrec", settings=decided_by),
        "automr+recency": automr.GenerativeMethod(
            loaded, dataset, grounder, store.layer, retrieval=retrieval, **common,
            label="automr+recency", settings={
                **decided_by, "memory": automr.MemoryStore.digest(args.memory),
                "retriever": "recency", "combiner": args.combiner}),
    }
    evaluation = automr.evaluate(methods, samples, len(dataset.catalog), out=args.out,
                                 ks=(1, 5, 10), seed=args.seed)

    with_memory = sum(1 for s in samples if s.memory)
    print(f"{len(samples)} test samples ({with_memory} with memory), grounder "
          f"{args.grounder}, layer {store.layer}, {len(dataset.catalog)} items")
    print(evaluation.markdown())
    picked = methods["automr+recency"].details().get("retrieved", {}).get(samples[0].id)
    if picked:
        user_items = store.index.users[samples[0].user].items
        print(f"e.g. user {samples[0].user}: recency retrieved "
              f"{', '.join(repr(dataset.catalog.title(user_items[i])) for i in picked)}")
    return evaluation


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
