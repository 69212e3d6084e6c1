"""Where the shared paths' time goes: the annotator's concat fast path against its plain path
(and against an older copy of the annotator, when given) and the memory encoder with and
without prefix sharing, on a random-weight model of benchmarks/model_size.py.

    python benchmarks/profile_paths.py DEVICE DTYPE SHAPE TOKENIZER DATA OUT.json [OLD.py]

Per way: five wall times after a warm-up, then one call under torch.profiler: kernels
launched, their total time, host synchronisations, memory copies, nonzero calls (a read back
each) and aten ops. Wall times of the ways after the first are measured after an earlier
way's profiler session; compare them with benchmarks/model_size.py's interleaved ratios, not
with each other. The committed results/profile-135m-cuda.json ran as `python
benchmarks/profile_paths.py cuda bfloat16 smollm2-135m .dev/tok runs/data OUT.json
.dev/old_likelihood.py`, the old file being `git show
aaa9ad6:src/automr/annotation/likelihood.py` (this file then had the same steps, less tidy).
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from model_size import SHAPES, random_model

from automr.annotation.likelihood import UpperAnnotator
from automr.combiners import COMBINERS
from automr.data import PreparedDataset, format_prompt
from automr.experiments.bench import bench_memory, machine
from automr.llm import HFSplitLLM
from automr.memory import Pooling
from automr.memory.encoders import Backbone, LayerEncoder


def profiled(call, device: torch.device) -> dict[str, object]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()
    sync()
    times = []
    for _ in range(5):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        call()
        sync()
    events = prof.key_averages()
    kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    return {"wall_s_sorted": sorted(times),
            "kernels": sum(e.count for e in kernels),
            "kernel_ms": sum(getattr(e, "self_device_time_total", 0) for e in kernels) / 1e3,
            "syncs": sum(e.count for e in events if "Synchronize" in e.key),
            "memcpy": sum(e.count for e in events if "Memcpy" in e.key),
            "nonzero": sum(e.count for e in events if e.key == "aten::nonzero"),
            "cpu_ops": sum(e.count for e in events if e.key.startswith("aten::"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("device", metavar="DEVICE", help="cpu, cuda, ...")
    parser.add_argument("dtype", metavar="DTYPE", choices=("float32", "bfloat16", "float16"),
                        help="float32, bfloat16 or float16")
    parser.add_argument("shape", metavar="SHAPE", choices=tuple(SHAPES),
                        help=f"benchmarks/model_size.py's: {', '.join(SHAPES)}")
    parser.add_argument("tokenizer", metavar="TOKENIZER",
                        help="a folder holding the embedded model's tokenizer")
    parser.add_argument("data", metavar="DATA", type=Path, help="prepared dataset")
    parser.add_argument("out", metavar="OUT.json", type=Path, help="the JSON file to write")
    parser.add_argument("old", metavar="OLD.py", nargs="?", type=Path,
                        help="an older copy of automr/annotation/likelihood.py to profile too")
    args = parser.parse_args()
    device, dtype, shape = torch.device(args.device), getattr(torch, args.dtype), args.shape
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset, out = PreparedDataset.load(args.data), args.out
    old = None
    if args.old is not None:
        spec = importlib.util.spec_from_file_location("old_likelihood", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    loaded = random_model(shape, tokenizer, device, dtype)
    layer = loaded.model.config.num_hidden_layers // 2
    llm = HFSplitLLM(loaded.model)
    generator = torch.Generator().manual_seed(0)
    vocab = loaded.model.config.vocab_size
    prompt = torch.randint(100, vocab, (150,), generator=generator)
    target = torch.randint(100, vocab, (10,), generator=generator)
    memory = bench_memory(loaded, layer, 90, True, generator, 1)
    concat = COMBINERS["concat"]()
    prompts = [format_prompt(dataset.catalog.titles(s.recent), dataset.prompt_config)
               for s in dataset.samples("train")[:128]]
    backbone = Backbone(llm, tokenizer, loaded.name, "random")
    shared = LayerEncoder(backbone, layer, Pooling(), share_prefix=True)
    unshared = LayerEncoder(backbone, layer, Pooling(), share_prefix=False)
    tokens = shared.tokenize(prompts)
    batches = [tokens[i : i + 64] for i in range(0, len(tokens), 64)]
    ways = {
        "annotate_fast_new": lambda: UpperAnnotator(llm, layer, concat).annotate(
            prompt, target, memory),
        **({} if old is None else {"annotate_fast_old": lambda: old.UpperAnnotator(
            llm, layer, concat).annotate(prompt, target, memory)}),
        "annotate_plain": lambda: UpperAnnotator(llm, layer, concat, share_prompt=False
                                                 ).annotate(prompt, target, memory),
        "encode_shared": lambda: [shared.encode_tokens(b) for b in batches],
        "encode_unshared": lambda: [unshared.encode_tokens(b) for b in batches],
    }
    result: dict[str, object] = {"shape": shape, "dtype": str(dtype), "layer": layer,
                                 "device": str(device), "machine": machine(device),
                                 "command": "python " + " ".join(sys.argv)}
    for name, call in ways.items():
        result[name] = profiled(call, device)
        print(name, json.dumps(result[name]), flush=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
