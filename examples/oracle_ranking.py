"""How far could retrieval lift ranking? AutoMR with the memory element annotation found best.

Annotation (eq. 5) measures, for some of each test sample's memory elements, how much
inserting that element raises the true title's log-likelihood. Inserting the best of them is
the ceiling of retrieval among those elements: it reads the answer, so it is a bound, not a
method. This example ranks the catalog three ways on the annotated test samples, from the
same fine-tune and memory, and pairs them:

- ``bigrec``: no memory;
- ``random``: one of the sample's annotated elements, drawn uniformly (seeded);
- ``oracle``: the annotated element with the largest gain.

Each arm is ranked with BIGRec's L2 grounding and its two injections (``l2-pop``,
``l2-sasrec``); the memory arms reuse BIGRec's injection as it is (prior and gamma, chosen on
validation without memory), so the arms differ only in the element inserted. The arms'
target log-likelihoods are measured too (``--measures``): the oracle's minus BIGRec's
recovers the annotated gains, a check that the intended element went in.

The picks reach :class:`automr.MemoryRetrieval` as an ordinary retriever object
(:class:`PickRetriever`, which scores the element picked for each row), told each batch's picks
by :class:`PickedRetrieval`, an :class:`automr.Retrieval` of its own, which knows the batch's
samples: two samples of a user in the same second share their prompt and memory view, so
nothing a retriever sees tells them apart, and the oracle's pick is the sample's own. Only
public imports (``automr``, ``automr.methods``) are used; the history is excluded from every
ranking, as with ``--exclude-seen``. Run it on the gains that ``examples/element_gains.py``
exported from ``automr annotate`` of the test split::

    python examples/oracle_ranking.py --data runs/data --finetuned runs/bigrec-l15-2k \\
        --memory runs/memory-item-l15 --gains docs/results/automr/element-gains-test.json \\
        --samples 1000 --out runs/oracle-ranking-1000

``--out`` keeps every method's values as it finishes (the same command resumes, and measures
the titles it generated there, BIGRec's validation titles that choose gamma included, instead
of generating them again);
``--export FILE`` then writes the folder as one JSON (``automr export``'s format) with this
command in it.
"""

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import torch
from beartype import beartype
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

import automr
from automr.methods import MethodOptions

GROUNDINGS = ("l2", "l2-pop", "l2-sasrec")
ARMS = ("bigrec", "random", "oracle")


class PickRetriever:
    """Scores 1 for the element picked for each row of the batch (``rows``, set by
    :class:`PickedRetrieval` before each insert), 0 for the others."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    @jaxtyped(typechecker=beartype)
    def scores(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        if len(self.rows) != len(keys):
            raise automr.AutomrError("PickRetriever scores the batch PickedRetrieval set up")
        scores = torch.zeros(mask.shape, dtype=keys.dtype, device=keys.device)
        for row, pick in enumerate(self.rows):
            scores[row, pick] = 1.0
        return scores.masked_fill(~mask, -torch.inf)


@attrs.define
class PickedRetrieval:
    """An :class:`automr.Retrieval` that inserts, for each sample, the element picked for its
    id (an index in its memory view), joined by ``combiner``: a
    :class:`automr.MemoryRetrieval` whose :class:`PickRetriever` is told each batch's picks."""

    store: automr.MemoryStore
    combiner: automr.Combiner
    picks: Mapping[str, int]
    picker: PickRetriever = attrs.field(factory=PickRetriever, init=False)
    retrieval: automr.MemoryRetrieval = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.retrieval = automr.MemoryRetrieval(self.store, self.picker, self.combiner, k=1)

    @property
    def retrieved(self) -> list[list[int]]:
        return self.retrieval.retrieved

    def insert_for(
        self, samples: Sequence[automr.Sample]
    ) -> Callable[[automr.LayerState], automr.LayerState]:
        inner = self.retrieval.insert_for(samples)
        rows = [self.picks[s.id] for s in samples]

        def insert(state: automr.LayerState) -> automr.LayerState:
            self.picker.rows = rows
            return inner(state)

        return insert


def picks_by_sample(
    samples: Sequence[automr.Sample], gains: Mapping[str, Mapping[str, list]], field: str,
    seed: int,
) -> dict[str, dict[str, int]]:
    """Per arm (``random``, ``oracle``): each sample's id -> the index in its memory view of
    the element the arm inserts. ``gains[sample id]`` holds the annotated ``elements``
    (indices in the sample's memory view) and their gains under ``field``."""
    draw = random.Random(seed)
    picks: dict[str, dict[str, int]] = {"random": {}, "oracle": {}}
    for sample in samples:
        entry = gains[sample.id]
        values = entry[field]
        picks["oracle"][sample.id] = entry["elements"][values.index(max(values))]
        picks["random"][sample.id] = draw.choice(entry["elements"])
    return picks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--finetuned", type=Path, required=True,
                        help="BIGRec fine-tune run folder (automr finetune)")
    parser.add_argument("--memory", type=Path, required=True,
                        help="memory folder (automr memory build)")
    parser.add_argument("--gains", type=Path, required=True,
                        help="element-gains export of test annotations "
                             "(examples/element_gains.py)")
    parser.add_argument("--field", default="gain",
                        help="which gains pick the oracle's element (gain: the annotated "
                             "fine-tune's; gain_other: the --other one's)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="seeded test samples (0 = all); those with annotated gains (--field) "
                             "are ranked")
    parser.add_argument("--seed", type=int, default=0,
                        help="which test samples, SASRec's seed and the random arm's draws")
    parser.add_argument("--combiner", default="concat", choices=sorted(automr.COMBINERS),
                        help="how the element joins the prompt (as annotated)")
    parser.add_argument("--measures", default="ranks,likelihood")
    parser.add_argument("--tune-samples", type=int, default=200,
                        help="validation samples on which BIGRec's injections choose gamma")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="evaluation folder (values kept; the same command resumes)")
    parser.add_argument("--export", type=Path, default=None,
                        help="JSON file for the whole evaluation (needs --out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> automr.Evaluation:
    args = parse_args(argv)
    if args.export is not None and args.out is None:
        raise SystemExit("--export needs --out")
    try:
        gains = json.loads(args.gains.read_text(encoding="utf-8"))["per_sample"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--gains {args.gains} is not an element-gains export ({error!r}); "
                         f"write one with examples/element_gains.py") from None
    dataset = automr.PreparedDataset.load(args.data)
    chosen = automr.seeded_subset(dataset.samples("test"), args.samples or None, args.seed)
    samples = [s for s in chosen if args.field in gains.get(s.id, {})]
    if not samples:
        raise SystemExit(f"none of the {len(chosen)} seeded test samples has {args.field!r} "
                         f"gains in {args.gains}")
    run = automr.FinetunedRun.open(args.finetuned)
    loaded = run.load(device=args.device, cache_dir=args.cache_dir)
    store = run.open_memory(args.memory, device=str(loaded.model.device))
    grounder = automr.build_grounder("l2", loaded, dataset, run.base_fingerprint, None,
                                     args.cache_dir, progress=not args.quiet)
    space = automr.Workspace(dataset, options=MethodOptions(
        exclude_seen=True, seed=args.seed, tune_samples=args.tune_samples), device=args.device,
        cache_dir=args.cache_dir, progress=not args.quiet)
    picks = picks_by_sample(samples, gains, args.field, args.seed)
    # what decides the ranks, by content: a fine-tune, memory or gains file made again in its
    # place is not taken for the old one by a resumed --out
    common = {"fine_tune": run.fingerprint(), "memory": automr.MemoryStore.digest(args.memory),
              "data": automr.dataset_fingerprint(dataset), "dtype": str(loaded.model.dtype),
              "layer": store.layer, "exclude_seen": True}

    def plain(arm: str) -> automr.GenerativeMethod:
        retrieval = None if arm == "bigrec" else PickedRetrieval(
            store, automr.COMBINERS[args.combiner](), picks[arm])
        settings = {**common, "grounder": "l2"}
        if retrieval is not None:  # picked by sample id (earlier versions: by memory view)
            settings.update(picks=arm, picked_by="sample", gains=hashlib.sha256(
                args.gains.read_bytes()).hexdigest(), field=args.field,
                combiner=args.combiner, seed=args.seed)
        return automr.GenerativeMethod(loaded, dataset, grounder, store.layer,
                                       retrieval=retrieval, batch_size=args.batch_size,
                                       exclude_seen=True, progress=not args.quiet,
                                       label=f"{arm}:l2", settings=settings)

    plains = {arm: plain(arm) for arm in ARMS}
    if args.out is not None:  # a rerun measures the titles it generated (validation too)
        folder = automr.EvaluationFolder(args.out)
        for arm, method in plains.items():
            method.keep(folder.generations([f"{arm}:{g}" for g in GROUNDINGS], method.settings,
                                           ignore=("grounder", "gamma", "tune_samples")))
    injected = {g: space.injected(g, plains["bigrec"]) for g in GROUNDINGS[1:]}
    methods: dict = {}
    for arm in ARMS:
        methods[f"{arm}:l2"] = plains[arm]
        for g, bigrec in injected.items():
            settings = {**plains[arm].settings, "grounder": g, "gamma": bigrec.gamma,
                        "tune_samples": args.tune_samples}
            methods[f"{arm}:{g}"] = attrs.evolve(bigrec, plain=plains[arm], settings=settings)
    evaluation = automr.evaluate(methods, samples, len(dataset.catalog), out=args.out,
                                 reference="bigrec:l2-sasrec",
                                 measures=tuple(args.measures.split(",")), seed=args.seed)
    print(f"{len(samples)} test samples with annotated gains ({args.gains}), layer "
          f"{store.layer}, {args.combiner}, {len(dataset.catalog)} items")
    print(evaluation.markdown())
    if args.export is not None:
        exported = automr.EvaluationFolder(args.out).export()
        exported["commands"] = [["python", "examples/oracle_ranking.py",
                                 *(sys.argv[1:] if argv is None else argv)]]
        args.export.parent.mkdir(parents=True, exist_ok=True)
        partial = args.export.with_name(args.export.name + ".partial")
        partial.write_text(json.dumps(exported, indent=1), encoding="utf-8")
        partial.replace(args.export)  # a cut run leaves no half-written export
    return evaluation


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
