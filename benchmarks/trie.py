"""Build time and memory of the constrained-decoding trie on a synthetic catalog.

    OMP_NUM_THREADS=1 python benchmarks/trie.py --titles 100000 --repeats 3

builds :class:`automr.llm.trie.TokenTrie` (flat node and edge arrays) and, as the reference,
the trie it replaced (:class:`PrefixTupleTrie` below: every prefix of every title stored as its
own tuple, in dicts of tuples and sets, then the same tensors) on the same synthetic titles:
seeded token ids with Zipf-like frequencies (so titles share first tokens, as real ones do),
8-30 tokens each plus EOS. Build times come from interleaved rounds after a warm-up (ratio:
median [min, max]); memory from ``tracemalloc`` in a separate build of each (peak during the
build and what the finished trie keeps), plus the bytes of torch tensors, which tracemalloc
does not see (the old trie's tensors are torch allocations; the new one's share numpy's
memory, which it does see). Both tries must answer ``allowed`` and ``value`` alike on the
prefixes of a sample of titles; ``allowed`` is also timed per call, as transformers'
``generate`` and the reference search call it once per beam and step.

Writes ``trie-cpu.json`` and ``trie-cpu.md`` to ``--out``.
"""

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from automr.experiments.bench import interleaved, machine, markdown_table, ratio
from automr.llm.trie import TokenTrie


class PrefixTupleTrie:
    """The trie as it was before (automr commit abf00d8, ``automr.llm.beam.TokenTrie``): the
    reference for build time, memory and answers; not used anywhere else."""

    root = 0

    def __init__(self, sequences: Sequence[Sequence[int]], values: Sequence[int]) -> None:
        self._children: dict[tuple[int, ...], set[int]] = {}
        self._values: dict[tuple[int, ...], int] = {}
        nodes: dict[tuple[int, ...], int] = {(): self.root}
        passing, through = [0], [0]
        for index, (sequence, value) in enumerate(zip(sequences, values, strict=True)):
            key = tuple(sequence)
            if key in self._values:
                raise ValueError(f"TokenTrie: sequence {key} stored twice")
            self._values[key] = value
            passing[self.root] += 1
            for end in range(len(key)):
                self._children.setdefault(key[:end], set()).add(key[end])
                node = nodes.setdefault(key[: end + 1], len(nodes))
                if node == len(passing):
                    passing.append(0)
                    through.append(index)
                passing[node] += 1
        edges = sorted((nodes[prefix[:-1]], prefix[-1], node)
                       for prefix, node in nodes.items() if prefix)
        self.dead = len(nodes)
        width = max((token for _, token, _ in edges), default=0) + 1
        parents = torch.tensor([p for p, _, _ in edges], dtype=torch.long)
        counts = torch.bincount(parents, minlength=len(nodes) + 1)
        longest = max(map(len, sequences), default=0)
        padded = torch.full((len(sequences), longest), -1, dtype=torch.long)
        for index, row in enumerate(sequences):
            padded[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        self.tensors = {
            "child_start": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
            "edge_token": torch.tensor([t for _, t, _ in edges], dtype=torch.long),
            "edge_child": torch.tensor([c for _, _, c in edges], dtype=torch.long),
            "edge_key": torch.tensor([p * width + t for p, t, _ in edges], dtype=torch.long),
            "passing": torch.tensor([*passing, 0], dtype=torch.long),
            "through": torch.tensor([*through, 0], dtype=torch.long),
            "depth": torch.tensor([*(len(prefix) for prefix in nodes), 0], dtype=torch.long),
            "sequences": padded,
            "lengths": torch.tensor([len(s) for s in sequences], dtype=torch.long),
        }

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        return sorted(self._children.get(tuple(prefix), ()))

    def value(self, sequence: Sequence[int]) -> int | None:
        return self._values.get(tuple(sequence))


def synthetic_titles(count: int, vocab: int = 49_152, shortest: int = 8, longest: int = 30,
                     eos: int = 2, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` distinct titles of ``shortest``-``longest`` tokens (uniform) + EOS, tokens
    drawn with probability ~ 1 / rank (a few frequent tokens, a long tail)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab - 2)
    cumulative = np.cumsum(weights / weights.sum())
    titles: dict[tuple[int, ...], None] = {}
    while len(titles) < count:
        lengths = rng.integers(shortest, longest + 1, size=count)
        tokens = 3 + np.searchsorted(cumulative, rng.random(int(lengths.sum())))
        for row in np.split(tokens, np.cumsum(lengths)[:-1]):
            titles.setdefault((*row.tolist(), eos), None)
            if len(titles) == count:
                break
    return list(titles)


def _tensor_bytes(trie) -> int:
    tensors = trie.tensors.values() if isinstance(trie, PrefixTupleTrie) else [
        getattr(trie._cpu, field.name) for field in attrs.fields(type(trie._cpu))]
    return sum(t.numel() * t.element_size() for t in tensors)


def traced_build(build: Callable[[], object]) -> dict[str, int]:
    """Peak and retained bytes tracemalloc sees while ``build()`` runs and after, and the
    bytes of the result's tensors."""
    gc.collect()
    tracemalloc.start()
    trie = build()
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"traced_peak_bytes": peak, "traced_retained_bytes": retained,
            "tensor_bytes": _tensor_bytes(trie), "nodes": trie.dead}


def same_answers(new: TokenTrie, old: PrefixTupleTrie, titles: list[tuple[int, ...]],
                 sample: int, seed: int = 0) -> int:
    """Prefixes checked (every prefix of ``sample`` titles, and each with a wrong last token);
    raises if the tries disagree on ``allowed`` or ``value``."""
    rng = np.random.default_rng(seed)
    checked = 0
    for index in rng.choice(len(titles), size=min(sample, len(titles)), replace=False):
        title = titles[int(index)]
        for cut in range(len(title) + 1):
            for prefix in (title[:cut], (*title[:cut], 1)):
                if new.allowed(prefix) != old.allowed(prefix) or \
                        new.value(prefix) != old.value(prefix):
                    raise AssertionError(f"the tries differ at prefix {prefix}")
                checked += 1
    return checked


def per_call_seconds(fn: Callable[[Sequence[int]], object], prefixes: list, repeats: int
                     ) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for prefix in prefixes:
            fn(prefix)
        times.append((time.perf_counter() - start) / len(prefixes))
    return statistics.median(times)


def bench_trie(titles: int, repeats: int, check: int, seed: int = 0,
               long_title: int = 0) -> dict[str, object]:
    catalog = synthetic_titles(titles, seed=seed)
    if long_title:  # a junk title among short ones (Amazon metadata has them)
        catalog[-1] = (*synthetic_titles(1, shortest=long_title, longest=long_title,
                                         seed=seed + 1)[0],)
    values = list(range(len(catalog)))
    lengths = [len(t) for t in catalog]
    ways = {"node_arrays": lambda: TokenTrie(catalog, values),
            "prefix_tuples": lambda: PrefixTupleTrie(catalog, values)}
    seconds = interleaved(ways, repeats, torch.device("cpu"))
    memory = {name: traced_build(build) for name, build in ways.items()}
    new, old = (build() for build in ways.values())
    checked = same_answers(new, old, catalog, check, seed)
    rng = np.random.default_rng(seed + 1)
    prefixes = [catalog[int(i)][: int(rng.integers(0, len(catalog[int(i)]) + 1))]
                for i in rng.integers(0, len(catalog), size=20_000)]
    speedup = ratio(seconds["prefix_tuples"], seconds["node_arrays"])

    def total(name: str, key: str) -> int:  # the old trie's tensors are outside tracemalloc
        extra = memory[name]["tensor_bytes"] if name == "prefix_tuples" else 0
        return memory[name][key] + extra

    return {
        "benchmark": "trie", "titles": len(catalog), "long_title": long_title,
        "tokens": sum(lengths),
        "title_tokens_min_mean_max": [min(lengths), statistics.mean(lengths), max(lengths)],
        "nodes": memory["node_arrays"]["nodes"], "repeats": repeats, "device": "cpu",
        "machine": machine(),
        "new_build_s": statistics.median(seconds["node_arrays"]),
        "old_build_s": statistics.median(seconds["prefix_tuples"]),
        "build_speedup": speedup["median"], "build_speedup_min_max": [speedup["min"],
                                                                       speedup["max"]],
        "new_peak_mb": total("node_arrays", "traced_peak_bytes") / 2**20,
        "old_peak_mb": total("prefix_tuples", "traced_peak_bytes") / 2**20,
        "new_retained_mb": total("node_arrays", "traced_retained_bytes") / 2**20,
        "old_retained_mb": total("prefix_tuples", "traced_retained_bytes") / 2**20,
        "old_tensor_mb_outside_tracemalloc": memory["prefix_tuples"]["tensor_bytes"] / 2**20,
        "memory": memory,
        "new_allowed_us_per_call": 1e6 * per_call_seconds(new.allowed, prefixes, repeats),
        "old_allowed_us_per_call": 1e6 * per_call_seconds(old.allowed, prefixes, repeats),
        "prefixes_with_equal_answers": checked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=2_000,
                        help="titles whose prefixes both tries must answer alike")
    parser.add_argument("--long-title", type=int, default=0,
                        help="make the last title this many tokens long (0: none); the "
                             "results are then trie-long-title-cpu.*")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    for name in ("titles", "repeats", "check"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.long_title < 0:
        parser.error(f"--long-title must be >= 0, got {args.long_title}")
    result = bench_trie(args.titles, args.repeats, args.check, long_title=args.long_title)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "trie-long-title-cpu" if args.long_title else "trie-cpu"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table = markdown_table({k: v for k, v in result.items() if k != "memory"})
    (args.out / f"{name}.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
