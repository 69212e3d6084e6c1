"""What the split's exact recurrent mixers cost beside transformers' own.

    OMP_NUM_THREADS=1 python benchmarks/linear_attention.py --batch 4 --seq 128 --repeats 3

One mixer at its configuration's default width (seeded random weights, float32): Qwen 3.5's
Gated DeltaNet ``linear_attn`` (hidden 4,096; 16 key and 32 value heads of 128; kernel 4) and
Granite 4.0-H's Mamba2 ``mamba`` (hidden 4,096; 128 heads of 64, state 256, kernel 4), on a
left-padded batch (row ``i`` has ``seq - 16 i`` real tokens), each run two ways on the same
inputs:

* ``split``: :func:`automr.llm.recurrent.gated_delta_masked` / :func:`~automr.llm.recurrent.
  mamba2_masked`, exact with masked positions anywhere (the causal convolution over each row's
  real positions, no decay and no write where masked);
* ``transformers``: the module's own ``forward`` with the attention mask, which is exact for
  left padding only (it zeroes masked inputs, and the recurrence runs over them).

On left padding both must agree at the real positions (the largest difference is reported);
on a masked block in mid-sequence (memory inserted and masked off) transformers' way is not
exact, and its largest difference from the split's there is reported too. Interleaved rounds
after a warm-up: the ratio is the median [min, max] over rounds.

Writes ``linear-attention-cpu.json`` and ``linear-attention-cpu.md`` to ``--out``: a section
per mixer.
"""

import argparse
import statistics
from pathlib import Path

import torch
from transformers import GraniteMoeHybridConfig, Qwen3_5TextConfig
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import (
    GraniteMoeHybridMambaLayer,
)
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

from automr.experiments.bench import interleaved, machine, ratio, write_result
from automr.llm.recurrent import gated_delta_masked, mamba2_masked

MIXERS = {
    "gated_deltanet": lambda: (
        Qwen3_5GatedDeltaNet(Qwen3_5TextConfig(num_hidden_layers=1,
                                               layer_types=["linear_attention"]), layer_idx=0),
        gated_delta_masked, "Qwen3_5TextConfig() defaults: hidden 4096, 16 key and 32 value "
                            "heads of 128, kernel 4"),
    "mamba2": lambda: (
        GraniteMoeHybridMambaLayer(GraniteMoeHybridConfig(num_hidden_layers=1), layer_idx=0),
        mamba2_masked, "GraniteMoeHybridConfig() defaults: hidden 4096, 128 heads of 64, "
                       "state 256, kernel 4, chunks of 256"),
}


def left_padded(batch: int, seq: int) -> torch.Tensor:
    """Row ``i`` holds ``seq - 16 i`` real tokens at its end (at least one)."""
    lengths = [max(1, seq - 16 * row) for row in range(batch)]
    return torch.stack([torch.arange(seq) >= seq - length for length in lengths])


def bench_mixer(kind: str, batch: int, seq: int, repeats: int, seed: int = 0
                ) -> dict[str, object]:
    """The split's way and transformers' of the mixer ``kind`` (:data:`MIXERS`)."""
    torch.manual_seed(seed)
    mixer, masked, sizes = MIXERS[kind]()
    mixer.eval()
    hidden = torch.randn(batch, seq, mixer.hidden_size)
    mask = left_padded(batch, seq)
    block = mask.clone()
    block[:, seq // 2 : seq // 2 + 8] = False  # a masked block after the prompt's start

    with torch.no_grad():
        def split(m: torch.Tensor = mask) -> torch.Tensor:
            return masked(mixer, hidden, m)[0]

        def own(m: torch.Tensor = mask) -> torch.Tensor:
            return mixer(hidden, attention_mask=m.long())

        left = (split() - own())[mask].abs().max().item()
        middle = (split(block) - own(block))[block].abs().max().item()
        seconds = interleaved({"split": split, "transformers": own}, repeats,
                              torch.device("cpu"))
    cost = ratio(seconds["split"], seconds["transformers"])
    return {
        "sizes": sizes, "split_ms": 1e3 * statistics.median(seconds["split"]),
        "transformers_ms": 1e3 * statistics.median(seconds["transformers"]),
        "split_over_transformers": cost["median"], "split_over_transformers_min": cost["min"],
        "split_over_transformers_max": cost["max"],
        "max_abs_diff_left_padding": left, "transformers_max_abs_diff_masked_block": middle}


def bench_linear_attention(batch: int, seq: int, repeats: int) -> dict[str, object]:
    result: dict[str, object] = {
        "benchmark": "linear_attention", "batch": batch, "seq": seq,
        "real_tokens": int(left_padded(batch, seq).sum()), "repeats": repeats,
        "device": "cpu", "dtype": "float32", "machine": machine()}
    for kind in MIXERS:
        result[kind] = bench_mixer(kind, batch, seq, repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = bench_linear_attention(args.batch, args.seq, args.repeats)
    print(write_result(result, args.out, "linear-attention-cpu"))


if __name__ == "__main__":
    main()
