"""Catalog title embeddings (the L2 and constrained grounders'), batched shortest first.

    OMP_NUM_THREADS=1 python benchmarks/embed_texts.py --data runs/data --repeats 3

Embeds every catalog response text of a prepared dataset with the base model (the embedded
default unless ``--model``) the way :func:`automr.grounding.embedding.embed_texts` does now
(batches of texts sorted by token count, rows put back in catalog order) and, as the
reference, the way it did before (automr commit 5a7f977: batches in catalog order;
:func:`in_catalog_order` below). Interleaved rounds after a warm-up (ratio: median [min,
max]); reports the padded tokens of each way over the real ones and how far apart the two
ways' vectors are (padding other rows changes float rounding only).

Writes ``embed-texts-DEVICE.json`` and ``.md`` to ``--out``.
"""

import argparse
import statistics
from pathlib import Path

import torch

import automr
from automr.experiments.bench import interleaved, machine, ratio, write_result
from automr.grounding.catalog import dataset_targets
from automr.grounding.embedding import base_model, embed_texts
from automr.llm.split import HFSplitLLM


@torch.no_grad()
def in_catalog_order(model: torch.nn.Module, tokenizer, texts: list[str],
                     batch_size: int = 32) -> torch.Tensor:
    """The reference: batches of consecutive texts (the code the sorted batching replaced)."""
    llm = HFSplitLLM(model)
    vectors = []
    with base_model(model):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True,
                              return_tensors="pt")
            state = llm.lower(batch["input_ids"].to(llm.device),
                              batch["attention_mask"].to(llm.device), 0)
            hidden = llm.final_hidden(state)
            last = state.last_positions()
            vectors.append(hidden.gather(1, last[..., None].expand(-1, -1, hidden.shape[-1]))[:, 0])
    return torch.cat(vectors).float()


def padded_tokens(lengths: list[int], order: list[int], batch_size: int) -> int:
    """Tokens the batches of ``order`` hold, padding included."""
    return sum(max(lengths[i] for i in order[s : s + batch_size]) * len(order[s : s + batch_size])
               for s in range(0, len(order), batch_size))


def bench_embed_texts(loaded, dataset, batch_size: int, repeats: int) -> dict[str, object]:
    texts = list(dataset_targets(loaded, dataset).texts)
    lengths = [len(ids) for ids in loaded.tokenizer(texts)["input_ids"]]
    ways = {"catalog_order": lambda: in_catalog_order(loaded.model, loaded.tokenizer, texts,
                                                      batch_size),
            "sorted": lambda: embed_texts(loaded.model, loaded.tokenizer, texts, batch_size)}
    difference = float((ways["catalog_order"]() - ways["sorted"]()).abs().max())
    seconds = interleaved(ways, repeats, loaded.model.device)
    speedup = ratio(seconds["catalog_order"], seconds["sorted"])
    shortest_first = sorted(range(len(texts)), key=lengths.__getitem__)
    return {
        "benchmark": "embed_texts", "model": loaded.name, "texts": len(texts),
        "tokens": sum(lengths), "batch_size": batch_size,
        "padded_over_real_catalog_order":
            padded_tokens(lengths, list(range(len(texts))), batch_size) / sum(lengths),
        "padded_over_real_sorted": padded_tokens(lengths, shortest_first, batch_size) /
            sum(lengths),
        "catalog_order_s": statistics.median(seconds["catalog_order"]),
        "sorted_s": statistics.median(seconds["sorted"]),
        "speedup": speedup["median"], "speedup_min": speedup["min"],
        "speedup_max": speedup["max"], "max_abs_diff": difference,
        "dtype": str(loaded.model.dtype), "device": str(loaded.model.device),
        "repeats": repeats, "machine": machine(loaded.model.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--model", default=automr.DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    loaded = automr.load_model(args.model, device=args.device, dtype=args.dtype)
    result = bench_embed_texts(loaded, automr.PreparedDataset.load(args.data), args.batch_size,
                               args.repeats)
    device = str(result["device"]).split(":")[0]
    print(write_result(result, args.out, f"embed-texts-{device}"))


if __name__ == "__main__":
    main()
