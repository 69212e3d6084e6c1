"""What the runtime shape checks (jaxtyping + beartype) cost on a short real-model run.

    OMP_NUM_THREADS=1 python benchmarks/checks_cost.py --data runs/data --repeats 5

Times, in interleaved rounds after a warm-up, the memory encoder on real window prompts
(SmolLM2-135M, L = 15) and a short greedy decode through the split, each with the checks on
and with them off as ``JAXTYPING_DISABLE=1`` turns them off (jaxtyping reads its switch at
every call, so both ways run in one process on the same inputs; half the rounds run the
checked way first, half second). Reports seconds per round and the ratio checked / unchecked
(median [min, max]); and, as the timing cannot resolve a small difference on a loaded
machine, how many checked calls each way makes and what one checked call costs (a
microbenchmark), so the checks' time is also estimated directly. That time is Python on the
CPU whatever the device, so its share grows as the device gets faster. Writes
``checks-DEVICE.json|md``.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jaxtyping
import jaxtyping._decorator
import torch

from automr.data import PreparedDataset, format_prompt
from automr.defaults import DEFAULT_LAYER
from automr.experiments.bench import interleaved, machine, markdown_table, ratio
from automr.llm.decoding import greedy_generate
from automr.llm.loading import load_model
from automr.llm.split import HFSplitLLM, token_positions
from automr.memory import Pooling
from automr.memory.encoders import Backbone, LayerEncoder, pad_right


def checks(on: bool):
    """The way run with the checks ``on`` or off."""
    def switch(fn):
        def run():
            jaxtyping.config.update("jaxtyping_disable", not on)
            try:
                fn()
            finally:
                jaxtyping.config.update("jaxtyping_disable", False)
        return run
    return switch


def checked_calls(fn) -> int:
    """How many checked (``@jaxtyped``) functions one call of ``fn`` enters."""
    count = 0
    original = jaxtyping._decorator.push_shape_memo

    def counting(*args, **kwargs):
        nonlocal count
        count += 1
        return original(*args, **kwargs)

    jaxtyping._decorator.push_shape_memo = counting
    try:
        checks(True)(fn)()
    finally:
        jaxtyping._decorator.push_shape_memo = original
    return count


def check_overhead_us(calls: int = 3000) -> float:
    """Microseconds one checked call of a typical signature (two tensors in, one out) costs
    over the same call unchecked, median of 5 rounds."""
    mask = torch.ones(8, 200, dtype=torch.bool)
    timings = {True: [], False: []}
    for _ in range(5):
        for on in (True, False):
            jaxtyping.config.update("jaxtyping_disable", not on)
            start = time.perf_counter()
            for _ in range(calls):
                token_positions(mask)
            timings[on].append((time.perf_counter() - start) / calls)
    jaxtyping.config.update("jaxtyping_disable", False)
    return 1e6 * statistics.median(a - b for a, b in zip(timings[True], timings[False],
                                                          strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    loaded = load_model(device=args.device, dtype=args.dtype)
    dataset = PreparedDataset.load(args.data)
    prompts = [format_prompt(dataset.catalog.titles(s.recent), dataset.prompt_config)
               for s in dataset.samples("train")[: args.texts]]
    layer = DEFAULT_LAYER
    encoder = LayerEncoder(Backbone.of(loaded), layer, Pooling(), share_prefix=True)
    token_lists = encoder.tokenize(prompts)
    batches = [token_lists[i : i + args.batch_size]
               for i in range(0, len(token_lists), args.batch_size)]
    llm = HFSplitLLM(loaded.model)
    ids, mask = pad_right(token_lists[: args.batch_size], encoder.pad_id)
    shift = (~mask).sum(1)  # left padding for generation: each row's padding moved first
    order = (torch.arange(ids.shape[1])[None, :] - shift[:, None]) % ids.shape[1]
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    device = llm.device

    def encode() -> None:
        for batch in batches:
            encoder.encode_tokens(batch)

    def decode() -> None:
        greedy_generate(llm, ids.to(device), mask.to(device), layer, args.new_tokens)

    result: dict[str, object] = {
        "benchmark": "checks", "model": loaded.name, "layer": layer, "texts": len(prompts),
        "tokens": sum(map(len, token_lists)), "batch_size": args.batch_size,
        "new_tokens": args.new_tokens, "repeats": 2 * args.repeats, "dtype": str(llm.dtype),
        "device": str(device), "machine": machine()}
    per_check = check_overhead_us()
    result["us_per_checked_call"] = per_check
    for kind, fn in (("encode", encode), ("decode", decode)):
        checked, unchecked = checks(True)(fn), checks(False)(fn)
        # both orders (checked first, then unchecked first), so the order biases neither
        first = interleaved({"checked": checked, "unchecked": unchecked}, args.repeats, device)
        second = interleaved({"unchecked": unchecked, "checked": checked}, args.repeats, device)
        on, off = first["checked"] + second["checked"], first["unchecked"] + second["unchecked"]
        saving = ratio(on, off)
        counted = checked_calls(fn)
        result |= {
            f"{kind}_checked_s": statistics.median(on),
            f"{kind}_unchecked_s": statistics.median(off),
            f"{kind}_checked_over_unchecked": saving["median"],
            f"{kind}_ratio_min_max": [saving["min"], saving["max"]],
            f"{kind}_checked_calls": counted,
            f"{kind}_estimated_check_ms": counted * per_check / 1e3,
            f"{kind}_estimated_check_share": counted * per_check / 1e6 / statistics.median(off),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"checks-{torch.device(device).type}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table = markdown_table(result)
    (args.out / f"{name}.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
