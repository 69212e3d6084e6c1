"""Plug your own retriever into AutoMR and compare it with memory-free BIGRec.

A retriever is anything with a ``scores(query, keys, mask)`` method of the right shapes: it
implements :class:`automr.interfaces.Retriever` by shape, with no base class to inherit. This
example writes ``RecencyRetriever`` (it always prefers the user's most recent memory element),
checks it against the Protocol, joins the element it picks to the prompt's layer-L state with
:class:`automr.recommenders.automr.MemoryRetrieval`, and ranks the same test samples with and
without memory. It prints Recall@1, Recall@5 and NDCG@5 of both.

Run it on the embedded default (SmolLM2-135M, MovieLens-100K) after the demo::

    automr demo --out runs/demo        # writes runs/demo/{data,bigrec,memory,...}
    python examples/custom_retriever.py --samples 32 --grounder likelihood

``--data``, ``--finetuned`` and ``--memory`` default to those folders. ``likelihood`` scores
every catalog title (exact, slower on big catalogs); ``constrained`` runs a beam search
restricted to catalog titles.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from beartype import beartype
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

from automr.combiners import COMBINERS
from automr.data import PreparedDataset
from automr.data.subsets import seeded_subset
from automr.evaluation.metrics import mean_metrics
from automr.experiments.generative import (
    build_grounder,
    catalog_embeddings,
    dataset_targets,
    rank_samples,
)
from automr.interfaces import Retriever
from automr.memory import MemoryStore
from automr.recommenders.automr import MemoryRetrieval
from automr.recommenders.finetune import base_fingerprint, check_memory_compatible, load_finetuned

KS = (1, 5)
COLUMNS = ("recall@1", "recall@5", "ndcg@5")


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"),
                        help="prepared dataset folder")
    parser.add_argument("--finetuned", type=Path, default=Path("runs/demo/bigrec"),
                        help="BIGRec fine-tune run folder (automr finetune)")
    parser.add_argument("--memory", type=Path, default=Path("runs/demo/memory"),
                        help="memory folder (automr memory build)")
    parser.add_argument("--samples", type=int, default=32, help="test samples to rank")
    parser.add_argument("--grounder", choices=("likelihood", "constrained"),
                        default="likelihood", help="how generations become catalog rankings")
    parser.add_argument("--combiner", choices=tuple(COMBINERS), default="append-token")
    parser.add_argument("--num-beams", type=int, default=None,
                        help="beams of the constrained grounder (default 10)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="which test samples")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="automr cache (models, catalog embeddings)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    retriever = RecencyRetriever()
    assert isinstance(retriever, Retriever), "RecencyRetriever must match the Protocol"

    dataset = PreparedDataset.load(args.data)
    samples = seeded_subset(dataset.samples("test"), args.samples, args.seed)
    loaded = load_finetuned(args.finetuned, device=args.device, cache_dir=args.cache_dir)
    device = str(loaded.model.device)
    store = MemoryStore.open(args.memory, device=device)
    # The memory's keys must be what the tuned model's lower half computes (LoRA from L up).
    check_memory_compatible(args.finetuned, store.record.model_fingerprint, store.layer)

    targets = dataset_targets(loaded, dataset)
    embeddings = (catalog_embeddings(loaded, targets, base_fingerprint(args.finetuned),
                                     args.cache_dir, progress=not args.quiet)
                  if args.grounder == "constrained" else None)
    grounder = build_grounder(args.grounder, loaded, targets, embeddings, args.num_beams)
    retrieval = MemoryRetrieval(store, retriever, COMBINERS[args.combiner](), k=1)

    common = {"batch_size": args.batch_size, "progress": not args.quiet}
    ranks = {
        "bigrec": rank_samples(loaded, dataset, samples, grounder, store.layer,
                               label="bigrec", **common),
        "automr+recency": rank_samples(loaded, dataset, samples, grounder, store.layer,
                                       insert_for=retrieval.insert_for,
                                       label="automr+recency", **common),
    }
    metrics = {name: mean_metrics(torch.tensor(r), ks=KS) for name, r in ranks.items()}

    with_memory = sum(1 for s in samples if s.memory)
    print(f"{len(samples)} test samples ({with_memory} with memory), grounder "
          f"{args.grounder}, layer {store.layer}, {len(dataset.catalog)} items")
    print(f"{'method':<16}" + "".join(f"{c:>10}" for c in COLUMNS))
    for name, values in metrics.items():
        print(f"{name:<16}" + "".join(f"{values[c]:>10.4f}" for c in COLUMNS))
    if samples and samples[0].memory:
        picked = retrieval.retrieved[0]
        user_items = store.index.users[samples[0].user].items
        print(f"e.g. user {samples[0].user}: recency retrieved "
              f"{', '.join(repr(dataset.catalog.title(user_items[i])) for i in picked)}")
    return metrics


if __name__ == "__main__":
    main()
