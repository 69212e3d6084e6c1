"""The shared-prefix paths at several model sizes: where the work they save pays, and where the
kernels they add cost more.

    python benchmarks/model_size.py --data runs/data --device cuda
        [--shapes smollm2-135m,tinyllama-1.1b,llama-2-7b] [--dtype bfloat16]
        [--tokenizer FOLDER] [--out benchmarks/results/model-size]

Each shape is a Llama model of that size with random weights (speed does not depend on their
values), built on the device, with the embedded model's tokenizer (so every shape has its
49,152-token vocabulary) and split at half its layers. On each, the functions `automr bench
encode` and `automr bench annotate` run: the memory encoder's shared template prefix against
the same encoder without sharing and against a raw lower half (prompts of real samples), and
the annotator's concat fast path (90 elements sharing one token) against its plain path and the
naive way. Writes OUT-DEVICE.json (every result) and OUT-DEVICE.md (one row per shape).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from automr.data import PreparedDataset
from automr.experiments.bench import bench_annotate, bench_encode
from automr.llm import LoadedModel
from automr.llm.loading import fetch_embedded, resolve_device, resolve_dtype

SHAPES = {  # hidden, intermediate, layers, attention heads, key-value heads
    "tiny": (64, 128, 4, 4, 2),  # a seconds-long check of this script on a CPU
    "smollm2-135m": (576, 1536, 30, 9, 3),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4),
    "llama-2-7b": (4096, 11008, 32, 32, 32),
}


def random_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype
                 ) -> LoadedModel:
    hidden, intermediate, layers, heads, kv_heads = SHAPES[shape]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         tie_word_embeddings=shape == "smollm2-135m")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    # a fixed fingerprint: hashing random weights would only cost time
    return LoadedModel(model, tokenizer, f"random-{shape}", fingerprint=f"random-{shape}")


def row(shape: str, loaded: LoadedModel, encode: dict, annotate: dict) -> str:
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e9
    cells = [
        shape, f"{params:.2f}", str(encode["layer"]),
        f"{encode['sharing_speedup']:.2f}x [{encode['sharing_speedup_min']:.2f}, "
        f"{encode['sharing_speedup_max']:.2f}]",
        f"{encode['encoder_speedup_over_raw_lower']:.2f}x",
        f"{encode['encoder_tokens_per_s']:,.0f}",
        f"{annotate['speedup_over_plain']:.2f}x [{annotate['speedup_over_plain_min']:.2f}, "
        f"{annotate['speedup_over_plain_max']:.2f}] ({annotate['work_ratio_over_plain']:.2f}x)",
        f"{annotate['speedup']:.1f}x ({annotate['work_ratio']:.2f}x)",
        f"{annotate['automr_samples_per_s']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset")
    parser.add_argument("--shapes", default="smollm2-135m,tinyllama-1.1b,llama-2-7b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokenizer", type=Path, help="default: the embedded model's")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model-size"))
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        sys.exit(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or fetch_embedded())
    dataset = PreparedDataset.load(args.data)
    name = f"{args.out.name}-{device.type}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    header = ("| shape | parameters (B) | layer | encoder: sharing vs none | encoder vs raw "
              "lower | encoder tokens/s | annotate: fast vs plain (work) | fast vs naive (work) "
              "| fast samples/s |\n|---|---|---|---|---|---|---|---|---|\n")
    results, rows = {}, []
    for shape in shapes:  # the files are rewritten after each shape
        loaded = random_model(shape, tokenizer, device, dtype)
        layer = loaded.model.config.num_hidden_layers // 2
        encode = bench_encode(loaded, dataset, layer, args.texts, args.batch_size, args.repeats)
        annotate = bench_annotate(loaded, layer, combiner="concat", repeats=args.repeats)
        results[shape] = {"encode": encode, "annotate": annotate}
        rows.append(row(shape, loaded, encode, annotate))
        print(rows[-1], flush=True)
        args.out.with_name(f"{name}.json").write_text(
            json.dumps({"command": command, "shapes": results}, indent=1) + "\n", encoding="utf-8")
        args.out.with_name(f"{name}.md").write_text(
            f"`{command}` ({dtype}, {device}; ratios median [min, max] of {args.repeats} "
            f"interleaved rounds)\n\n" + header + "\n".join(rows) + "\n", encoding="utf-8")
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
