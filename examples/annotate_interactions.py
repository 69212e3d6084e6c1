"""Annotate your own interactions: which past item helps most to predict the next one?

From two CSV files (the format ``automr data prepare csv`` reads: interactions
``user,item,timestamp`` and items ``item,title``) this example

1. prepares a dataset with a small protocol (short prompts, a short training period),
2. builds an ``item``-encoder memory at layer L (each past item's title encoded by the lower
   half of the model, pooled into one key),
3. annotates a few training samples with :class:`automr.annotation.UpperAnnotator` directly
   (eq. 5: the target title's log-likelihood without memory and with each element appended
   at layer L; only the upper half runs per element), and
4. prints, per sample, the most helpful memory element by the ``log`` label form (its delta
   ``log P(y | z_t, z_m) - log P(y | z_t)`` and its weight in S' = softmax(delta)).

No fine-tuning is needed: the base model is annotated as it is (AutoMR annotates with the
fine-tuned BIGRec; ``automr annotate --finetuned`` does that for a whole dataset).

Run it on the embedded default model (SmolLM2-135M) with synthetic interactions::

    python examples/annotate_interactions.py --layer 15 --samples 4

or on your own files, keeping what it builds::

    python examples/annotate_interactions.py --interactions my/interactions.csv \\
        --items my/items.csv --out runs/my-annotations --train-months 10

``--model`` takes the embedded name, any Hugging Face id or a local model folder.
"""

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from automr.annotation import UpperAnnotator, deltas, labels
from automr.annotation.run import element_tokens
from automr.combiners import AppendToken
from automr.data import PreparedDataset, ProtocolConfig, prepare_csv, tokenize_sample
from automr.data.subsets import seeded_subset
from automr.defaults import DEFAULT_MODEL
from automr.errors import AutomrError
from automr.llm.loading import load_model
from automr.llm.split import HFSplitLLM
from automr.memory import MemoryConfig, build_memory
from automr.testing.synthetic import write_synthetic_csv


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--interactions", type=Path, default=None,
                        help="user,item,timestamp CSV (default: synthetic interactions)")
    parser.add_argument("--items", type=Path, default=None, help="item,title CSV")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="embedded name, Hugging Face id or model folder")
    parser.add_argument("--layer", type=int, default=15, help="split layer L")
    parser.add_argument("--samples", type=int, default=4,
                        help="training samples to annotate (0 = all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the dataset and memory here (default: a temporary folder)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--cache-dir", type=Path, default=None, help="automr cache (models)")
    parser.add_argument("--recent-k", type=int, default=3, help="items in each prompt")
    parser.add_argument("--max-history", type=int, default=20,
                        help="history cap (the memory is the part older than the prompt)")
    parser.add_argument("--train-months", type=int, default=2,
                        help="calendar months of the training period")
    parser.add_argument("--seed", type=int, default=0, help="which samples")
    args = parser.parse_args(argv)
    if args.interactions is not None and args.items is None:
        parser.error("--interactions needs --items")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="automr-annotate-") as tmp:
            return annotate(args, Path(tmp))
    return annotate(args, args.out)


def annotate(args: argparse.Namespace, out: Path) -> list[dict]:
    interactions, items = args.interactions, args.items
    if interactions is None:
        interactions, items = write_synthetic_csv(out / "raw")
        print(f"no --interactions given: wrote synthetic ones to {interactions}")
    try:
        protocol = ProtocolConfig(start=None, end=None, train_months=args.train_months,
                                  min_item_interactions=1, min_user_interactions=args.recent_k + 2,
                                  max_history=args.max_history, recent_k=args.recent_k)
    except ValueError as error:  # an option out of range: the protocol's own message
        raise AutomrError(str(error.args[0])) from None
    dataset: PreparedDataset = prepare_csv(interactions, items, out / "data", protocol=protocol)

    loaded = load_model(args.model, device=args.device, cache_dir=args.cache_dir)
    store = build_memory(loaded, dataset, args.layer, MemoryConfig(encoder="item"),
                         out / "memory", progress=False)
    combiner = AppendToken()
    annotator = UpperAnnotator(HFSplitLLM(loaded.model), store.layer, combiner)

    candidates = [s for s in dataset.samples("train") if s.memory]
    if not candidates:
        raise AutomrError("no training sample has a memory; lower --recent-k or raise "
                          "--max-history / --train-months")
    samples = seeded_subset(candidates, args.samples or None, args.seed)
    catalog = dataset.catalog
    print(f"{len(dataset.interactions)} interactions, {len(catalog)} items; annotating "
          f"{len(samples)} of {len(candidates)} training samples with {loaded.name} at "
          f"layer {store.layer}")
    rows = []
    for sample in samples:
        example = tokenize_sample(loaded.tokenizer, sample, catalog, dataset.prompt_config)
        response = example.input_ids[len(example.prompt_ids):]  # the quoted title + EOS
        memory = element_tokens(store, sample, combiner.uses_token_states)
        result = annotator.annotate(torch.tensor(example.prompt_ids), torch.tensor(response),
                                    memory)
        delta = deltas(result.base, result.with_element, "log")
        weight = labels(result.base, result.with_element, "log")
        best = int(delta.argmax())
        row = {"user": sample.user, "target": catalog.title(sample.target),
               "memory": len(sample.memory), "best": catalog.title(sample.memory[best]),
               "delta": float(delta[best]), "weight": float(weight[best]),
               "base": result.base}
        rows.append(row)
        print(f"user {row['user']} -> {row['target']!r} (log P = {row['base']:.3f}, "
              f"{row['memory']} memory elements): most helpful {row['best']!r}, "
              f"delta {row['delta']:+.4f}, S' {row['weight']:.3f}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
