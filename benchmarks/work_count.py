"""Work-count model of the paper's setting: every step's tokens, FLOPs and GPU-hours.

    python benchmarks/work_count.py [--config examples/configs/paper-amazon-book.toml]
        [--stats DIR/stats.json] [--mfu 0.4] [--gpus 8] [--json OUT.json]

Prints markdown (the assumptions, then one row per step of the config's pipeline). Counts come
from the config (samples annotated, batch sizes, beams, methods, RQ2 seeds), the protocol
(K = recent-k prompt items, max-history, 10/1/1 months) and either a prepared dataset's
``stats.json`` (``--stats``, what ``automr data prepare`` writes) or, by default, an *assumed*
Amazon Book 2017 population (the paper gives no dataset statistics): users whose in-year
interaction counts follow a truncated power law, each user's interactions spread evenly over
the year. Every quantity is linear in the counts, so hours scale with (real count / assumed).

Arithmetic: a forward costs 2 x (layer parameters) FLOPs per token and layer, plus the attention
scores and weighted sum (4 x hidden x attended keys), plus 2 x hidden x vocab per position that
gets logits. LoRA training with frozen base weights (no gradient checkpointing) adds a backward
that computes the activations' gradients (one more product per frozen weight matrix, two per
attention product) and no weight gradients but LoRA's (left out): the trained layers x2, their
attention x3, the frozen head x2 at the scored positions. Each step is priced at the dtype its
matrix products run in (the config section's ``dtype``; ``auto`` is bfloat16 on CUDA, float32
for ``automr annotate``, which needs exact log-likelihood differences; ``autocast``: 16-bit):
time = FLOPs / (that dtype's dense peak x MFU) for prefill, encoding and training; a decoding
step reads all weights and the KV cache, so it takes max(FLOPs / (peak x MFU), bytes / (HBM
bandwidth x efficiency)). Float32's peak is the datasheet's plain FP32 (PyTorch leaves TF32 off
for matrix products by default, and automr does not turn it on). MFU and efficiency are
assumptions; on one H200 a random-weight 7B-shaped Llama reached 44% of the bf16 datasheet
peak in prefill-like forwards (benchmarks/model_size.py, docs/scale.md "Measured on a GPU");
float32 and training were not measured.
"""

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # automr depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "configs" / "paper-amazon-book.toml"


@dataclass(frozen=True)
class Shape:
    """Llama-2-7B (meta-llama/Llama-2-7b-hf config.json)."""

    name: str = "Llama-2-7B"
    layers: int = 32
    hidden: int = 4096
    intermediate: int = 11008
    vocab: int = 32000

    @property
    def layer_params(self) -> int:  # q, k, v, o + gate, up, down (norms left out)
        return 4 * self.hidden**2 + 3 * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden

    def layer_flops(self, tokens: float, layers: int, keys: float) -> float:
        """FLOPs of ``tokens`` through ``layers`` layers, each attending to ``keys`` keys."""
        return 2 * tokens * layers * (self.layer_params + 2 * self.hidden * keys)

    def train_layer_flops(self, tokens: float, layers: int, keys: float) -> float:
        """Forward + backward of LoRA layers whose base weights are frozen: the backward
        multiplies each activation gradient by every weight matrix once more (no weight
        gradients; LoRA's rank-r ones left out) and the attention's two products twice."""
        return 2 * tokens * layers * (2 * self.layer_params + 3 * 2 * self.hidden * keys)

    def head_flops(self, positions: float) -> float:
        return 2 * positions * self.hidden * self.vocab

    def kv_bytes(self, tokens: float, dtype: str) -> float:
        """KV cache of ``tokens`` positions over every layer."""
        return 2 * self.layers * self.hidden * BYTES[dtype] * tokens


BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense tensor-core peak, vendor datasheet
    fp32_tflops: float  # plain FP32 peak (no TF32), vendor datasheet
    hbm_tb_s: float

    def peak_flops(self, dtype: str) -> float:
        return 1e12 * (self.fp32_tflops if dtype == "float32" else self.bf16_tflops)


GPUS = {"a100": Gpu("A100 SXM 80GB", 312.0, 19.5, 2.039),
        "h100": Gpu("H100 SXM 80GB", 989.0, 67.0, 3.35)}


def priced_dtype(section: dict, exact: bool = False) -> str:
    """The dtype a step's matrix products run in on CUDA: ``autocast`` (bf16 or fp16) makes
    them 16-bit; else the section's ``dtype``, whose ``auto`` is bfloat16, or float32 where
    the command is ``exact`` (``automr annotate``: eq. 5's small log-likelihood
    differences)."""
    if section.get("autocast", "none") != "none":
        return "bfloat16"
    dtype = section.get("dtype", "auto")
    if dtype == "auto":
        return "float32" if exact else "bfloat16"
    return dtype


@dataclass(frozen=True)
class Tokens:
    """Llama-2 token counts of the BIGRec prompt pieces (assumed: no Llama-2 tokenizer here).

    With SmolLM2-135M's tokenizer the ``books`` template (no titles) is 78 tokens and an
    ML-100K quoted movie title 11.8 on average (measured); Llama-2's SentencePiece splits
    digits and rare words finer, and book titles are longer (subtitles, series)."""

    template: int = 85  # BOS, Alpaca header, instruction, input line, response marker
    shared_prefix: int = 78  # the template before the first title: identical in every prompt
    title: int = 20  # one quoted book title
    separator: int = 1  # ", "
    context_line: int = 10  # "Summary of ...:" / ReLLa's line, beside what they list
    summary: int = 40  # TRSR summary: its max_new_tokens
    trsr_instruction: int = 45  # a TRSR block prompt beside its titles (and previous summary)

    def prompt(self, titles: float) -> float:
        return self.template + titles * self.title + max(titles - 1, 0) * self.separator

    @property
    def target(self) -> int:
        return self.title + 1  # + EOS


@dataclass
class Population:
    """What the work depends on, per split: samples, mean memory length, TRSR blocks."""

    source: str
    users: int
    interactions: int
    items: int
    samples: dict[str, float]
    memory_mean: dict[str, float]
    trsr_blocks: dict[str, float]  # summary calls per sample (recurrent: one per block)
    window_titles: float  # sum over elements of the titles in each element's window
    assumed: bool = True
    notes: list[str] = field(default_factory=list)


def power_law_counts(users: int, alpha: float, low: int, high: int) -> list[int]:
    """Deterministic quantiles of a power law P(n) ~ n^-alpha on [low, high]."""
    a = 1 - alpha
    lo, hi = low**a, high**a
    return [int((lo + (i + 0.5) / users * (hi - lo)) ** (1 / a)) for i in range(users)]


def assumed_population(protocol: dict, users: int = 40_000, alpha: float = 2.5,
                       max_count: int = 1000, items: int = 150_000) -> Population:
    """Users with ``min-user-interactions``..``max_count`` interactions in the year, counts
    ~ n^-alpha; interactions spread evenly over the 12 months (10 train, 1 valid, 1 test); an
    interaction is a sample once ``recent-k`` interactions precede it (protocol.py), its memory
    min(prior, max-history) - recent-k."""
    k, cap = protocol["recent-k"], protocol["max-history"]
    low = protocol["min-user-interactions"]
    train_months = protocol["train-months"]
    months = 12
    counts = power_law_counts(users, alpha, low, max_count)
    samples = dict.fromkeys(("train", "valid", "test"), 0.0)
    memory = dict.fromkeys(samples, 0.0)
    blocks = dict.fromkeys(samples, 0.0)
    window_titles = 0.0
    for n in counts:
        window_titles += k * n - k * (k - 1) / 2  # element p's window: min(p + 1, K) titles
        for p in range(k, n):
            when = (p + 0.5) / n * months
            split = ("train" if when < train_months else
                     "valid" if when < train_months + (months - train_months) / 2 else "test")
            m = min(p, cap) - k
            samples[split] += 1
            memory[split] += m
            blocks[split] += min(5, math.ceil(m / 5))
    return Population(
        source=(f"in-year interaction counts ~ n^-{alpha} on [{low}, {max_count}] per user, "
                "spread evenly over the 12 months"),
        users=users, interactions=sum(counts), items=items, samples=samples,
        memory_mean={s: memory[s] / samples[s] for s in samples},
        trsr_blocks={s: blocks[s] / samples[s] for s in samples},
        window_titles=window_titles, assumed=True)


def stats_population(path: Path, protocol: dict) -> Population:
    """From a prepared dataset's stats.json (``automr data stats``): measured counts."""
    stats = json.loads(path.read_text(encoding="utf-8"))
    k = protocol["recent-k"]
    filtered = stats.get("filtered", stats)
    users, interactions = filtered["users"], filtered["interactions"]
    samples = {s: float(stats["samples"][s]) for s in ("train", "valid", "test")}
    memory = {s: float(stats["memory_length"][s]["mean"]) for s in samples}
    return Population(
        source=f"`{path}`", users=users, interactions=interactions,
        items=filtered["items"], samples=samples, memory_mean=memory,
        trsr_blocks={s: min(5, math.ceil(memory[s] / 5)) for s in samples},
        window_titles=k * interactions - users * k * (k - 1) / 2, assumed=False,
        notes=["TRSR blocks per sample from the mean memory length (stats.json has no "
               "per-sample lengths)"])


@dataclass
class Step:
    name: str
    command: str
    what: str
    tokens: float  # tokens that run through layers (any number of them), in units of tokens
    flops: float
    decode_flops: float = 0.0  # the part of ``flops`` spent in decoding steps
    decode_steps: float = 0.0  # batched decoding steps (each reads the weights)
    decode_kv_tokens: float = 0.0  # summed over steps: cached positions read per step
    dtype: str = "bfloat16"  # what its matrix products run in (:func:`priced_dtype`)
    unsharded_flops: float = 0.0  # work every process (or node) repeats
    max_processes: float = math.inf  # units that can be shared out
    storage_bytes: float = 0.0
    note: str = ""


def seed_count(seeds: str) -> int:
    """How many seeds ``rq2 --seeds`` names: comma-separated integers or ranges."""
    count = 0
    for part in seeds.split(","):
        low, _, high = part.strip().partition("-")
        count += int(high or low) - int(low) + 1
    return count


def build_steps(config: dict, pop: Population, shape: Shape, tok: Tokens) -> list[Step]:
    def chosen(section: dict, key: str, split: str, default: int = 0) -> float:
        """A command's seeded subset of a split: ``0`` (or a number beyond it) is all of it."""
        count = section.get(key, default)
        return pop.samples[split] if not count else min(count, pop.samples[split])

    protocol = config["data"]["prepare"]["amazon"]
    k = protocol["recent-k"]
    L = config["memory"]["build"]["layer"]
    upper = shape.layers - L
    prompt, target = tok.prompt(k), tok.target
    steps: list[Step] = []

    # -- fine-tuning (BIGRec, ReLLa, TRSR): LoRA on layers >= L, lower half under no_grad
    ft = config["finetune"]
    train = chosen(ft, "train-samples", "train")
    epochs, batch = ft["epochs"], ft["batch-size"]
    optimizer_steps = epochs * math.ceil(train / batch)
    valid_samples = optimizer_steps / ft["eval-every"] * chosen(ft, "valid-samples", "valid", 64)
    rella_extra = tok.context_line + 5 * (tok.title + tok.separator)  # k = 5 long-term items
    trsr_extra = tok.context_line + tok.summary
    for name, extra, command in (("BIGRec", 0, "finetune"),
                                 ("ReLLa", rella_extra, "finetune --context rella"),
                                 ("TRSR", trsr_extra, "finetune --context trsr")):
        seq = prompt + extra + target
        trained = epochs * train * seq
        flops = (shape.layer_flops(trained, L, seq / 2)  # lower: forward only (no_grad)
                 + shape.train_layer_flops(trained, upper, seq / 2)  # upper: + backward
                 + 2 * shape.head_flops(epochs * train * target)  # logits at the target only
                 + shape.layer_flops(valid_samples * seq, shape.layers, seq / 2)
                 + shape.head_flops(valid_samples * target))
        steps.append(Step(
            f"fine-tune {name}", command,
            f"{epochs} epochs x {train:,.0f} samples x {seq:.0f} tokens (upper {upper} layers "
            f"x2: forward + activation gradients, frozen weights get none; lower {L} x1); "
            f"{optimizer_steps:,.0f} optimizer steps of {batch}",
            trained, flops, dtype=priced_dtype(ft), max_processes=batch,
            note="DDP: each effective batch of 32 shared, so at most 32 processes"))

    # -- TRSR summaries (context trsr, every split): recurrent, greedy, 40 new tokens per block
    trsr_batch = config["context"]["trsr"]["batch-size"]
    calls = sum(pop.samples[s] * pop.trsr_blocks[s] for s in pop.samples)
    block_prompt = tok.trsr_instruction + 5 * (tok.title + tok.separator) + tok.summary / 2
    new = tok.summary
    prefill = calls * block_prompt
    decoded = calls * new
    decode_flops = (shape.layer_flops(decoded, shape.layers, block_prompt + new / 2)
                    + shape.head_flops(decoded))
    flops = (shape.layer_flops(prefill, shape.layers, block_prompt / 2)
             + shape.head_flops(calls) + decode_flops)
    steps.append(Step(
        "TRSR summaries", "context trsr --split S --samples 0",
        f"{calls:,.0f} block summaries ({sum(pop.samples.values()):,.0f} samples x "
        f"{calls / sum(pop.samples.values()):.1f} blocks), {block_prompt:.0f}-token prompts, "
        f"{new} tokens generated greedily each",
        prefill + decoded, flops, decode_flops=decode_flops,
        dtype=priced_dtype(config["context"]["trsr"]), decode_steps=calls / trsr_batch * new,
        decode_kv_tokens=calls / trsr_batch * new * trsr_batch * (block_prompt + new / 2),
        max_processes=calls / trsr_batch))

    # -- memory build: every interaction's window through the lower L layers
    mem = config["memory"]["build"]
    mem_batch = mem.get("batch-size", 16)
    elements = pop.interactions
    window_tokens = (elements * (tok.template - tok.separator)
                     + pop.window_titles * (tok.title + tok.separator))
    # the shared template prefix is memoised by the encoder: computed once per process
    encoded = window_tokens - tok.shared_prefix * elements
    stored_states = mem.get("store-token-states", True)
    mem_dtype = priced_dtype(mem)
    storage = elements * shape.hidden * BYTES[mem_dtype] * (
        1 + (window_tokens / elements if stored_states else 0))
    steps.append(Step(
        "memory build", "memory build",
        f"{elements:,.0f} elements (every interaction) x {window_tokens / elements:.0f}-token "
        f"window prompts in batches of {mem_batch}, lower {L} layers; the "
        f"{tok.shared_prefix}-token template prefix computed once per process (memoised)",
        encoded, shape.layer_flops(encoded, L, window_tokens / elements / 2), dtype=mem_dtype,
        max_processes=elements / mem.get("shard-elements", 2048), storage_bytes=storage,
        note=("token states stored (concat): "
              f"{window_tokens / elements:.0f} x {shape.hidden} {mem_dtype} per element"
              if stored_states else "keys only")))

    # -- annotation (concat): per element, upper half over element + prompt + target
    ann = config["annotate"]
    annotated = chosen(ann, "samples", "train", 256)
    per_sample = ann.get("element-subset") or pop.memory_mean["train"]
    element = tok.prompt(k)  # a window element: a full K-title prompt
    seq = element + prompt + target
    naive_upper = annotated * per_sample * seq
    shared = annotated * (per_sample - 1) * tok.shared_prefix
    upper_tokens = naive_upper - shared
    lower_tokens = annotated * (prompt + target)
    flops = (shape.layer_flops(lower_tokens, L, (prompt + target) / 2)
             + shape.layer_flops(annotated * (prompt + target), upper, (prompt + target) / 2)
             + shape.layer_flops(upper_tokens, upper, seq / 2)
             + shape.head_flops(annotated * (per_sample + 1) * target))
    steps.append(Step(
        "annotate", "annotate",
        f"{annotated:,.0f} samples x {per_sample:.1f} elements x ({element:.0f} element + "
        f"{prompt:.0f} prompt + {target} target) tokens, upper {upper} layers; shared prefix "
        f"saves {100 * shared / naive_upper:.1f}%",
        lower_tokens + upper_tokens, flops, dtype=priced_dtype(ann, exact=True),
        max_processes=annotated / 16,
        note=f"all {pop.samples['train']:,.0f} training samples: x"
             f"{pop.samples['train'] / annotated:.0f}"))

    # -- evaluation (Table 1) and RQ2: prefill + beam search + L2 grounding per LM method
    ev = config["evaluate"]
    exact_eval = "likelihood" in ev.get("measures", "")  # evaluate's auto is float32 then
    methods = [m.strip() for m in ev["methods"].split(",") if ":" in m]
    extra = {"rella": rella_extra, "trsr": trsr_extra, "automr": element, "random": element}
    beams = 4
    rq2 = config["rq2"]
    rq2_runs = ["bigrec", "automr"] + ["random"] * seed_count(rq2.get("seeds", "0-9"))
    catalog_tokens = pop.items * target
    for name, runs, command, section, dtype in (
            ("evaluate (Table 1)", [m.split(":")[0] for m in methods], "evaluate", ev,
             priced_dtype(ev, exact=exact_eval)),
            ("RQ2", rq2_runs, "rq2", rq2, priced_dtype(rq2))):
        # each command's own --samples (200 unless given; 0 = all) and --batch-size
        test, eval_batch = chosen(section, "samples", "test", 200), section.get("batch-size", 8)
        prefill = decoded = kv = flops = decode_flops = 0.0
        for method in runs:
            seq = prompt + extra.get(method, 0)
            prefill += test * seq
            decoded += test * beams * target
            decoding = (shape.layer_flops(test * beams * target, shape.layers, seq + target / 2)
                        + shape.head_flops(test * beams * target))
            decode_flops += decoding
            flops += (shape.layer_flops(test * seq, shape.layers, seq / 2)
                      + shape.head_flops(test) + decoding
                      + shape.layer_flops(test * target, shape.layers, target / 2))  # L2 embed
            kv += test / eval_batch * target * eval_batch * beams * (seq + target / 2)
        decode_steps = len(runs) * test / eval_batch * target
        steps.append(Step(
            name, command,
            f"{len(runs)} LM runs ({', '.join(sorted(set(runs)))}) x {test:,.0f} test samples: "
            f"prefill {prompt:.0f}+ tokens, {beams} beams x {target} steps, batch {eval_batch}",
            prefill + decoded, flops, decode_flops=decode_flops, decode_steps=decode_steps,
            decode_kv_tokens=kv, dtype=dtype,
            unsharded_flops=shape.layer_flops(catalog_tokens, shape.layers, target / 2),
            max_processes=test / 64 if command == "evaluate" else 1,
            note=(f"shards of 64 samples; the {pop.items:,}-title catalog embedded once (L2)"
                  if command == "evaluate" else "one process today: no launcher")))
    return steps


def decode_seconds(step: Step, shape: Shape, gpu: Gpu, mfu: float, bw_eff: float) -> float:
    """Decoding steps: each reads every weight and its batch's KV cache, or computes, whichever
    takes longer."""
    compute = step.decode_flops / (gpu.peak_flops(step.dtype) * mfu)
    read = (step.decode_steps * shape.params * BYTES[step.dtype]
            + shape.kv_bytes(step.decode_kv_tokens, step.dtype)) / (gpu.hbm_tb_s * 1e12 * bw_eff)
    return max(compute, read)


def hours(step: Step, shape: Shape, gpu: Gpu, mfu: float, bw_eff: float) -> float:
    """GPU-hours: everything but decoding at ``mfu`` of the step's dtype's peak, decoding per
    :func:`decode_seconds`, plus the work every process repeats."""
    compute = (step.flops - step.decode_flops + step.unsharded_flops) / (
        gpu.peak_flops(step.dtype) * mfu)
    return (compute + decode_seconds(step, shape, gpu, mfu, bw_eff)) / 3600


def wall_hours(step: Step, shape: Shape, gpu: Gpu, mfu: float, bw_eff: float, n: int) -> float:
    unsharded = step.unsharded_flops / (gpu.peak_flops(step.dtype) * mfu) / 3600
    shared = hours(step, shape, gpu, mfu, bw_eff) - unsharded
    return shared / min(n, step.max_processes) + unsharded


def fmt(x: float, digits: int = 1) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if x >= 0.1 else f"{x:.2f}"


def report(config_path: Path, stats: Path | None, mfu: float, bw_eff: float,
           gpus: tuple[int, ...] = (8, 64)) -> tuple[str, dict]:
    config = tomllib.loads(config_path.read_text(encoding="utf-8"))
    protocol = config["data"]["prepare"]["amazon"]
    shape, tok = Shape(), Tokens()
    pop = stats_population(stats, protocol) if stats else assumed_population(protocol)
    steps = build_steps(config, pop, shape, tok)
    a100, h100 = GPUS["a100"], GPUS["h100"]
    rows = []
    for s in steps:
        rows.append({
            **{k: v for k, v in asdict(s).items()},
            "a100_gpu_hours": hours(s, shape, a100, mfu, bw_eff),
            "h100_gpu_hours": hours(s, shape, h100, mfu, bw_eff),
            **{f"h100_wall_hours_{n}": wall_hours(s, shape, h100, mfu, bw_eff, n)
               for n in gpus},
            "h100_gpu_hours_in_bfloat16": hours(replace(s, dtype="bfloat16"), shape, h100,
                                                mfu, bw_eff),
        })
    walls = [f"h100_wall_hours_{n}" for n in gpus]
    total = {key: sum(r[key] for r in rows) for key in
             ("tokens", "flops", "a100_gpu_hours", "h100_gpu_hours", *walls)}
    where = "assumed" if pop.assumed else "measured"
    derived = "derived from the assumed population" if pop.assumed else "measured"
    shown = config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path
    lines = [
        f"Config `{shown}`, {shape.name} ({shape.params / 1e9:.2f} B parameters), split at "
        f"L = {config['memory']['build']['layer']} of {shape.layers} layers.",
        "",
        "| quantity | value | source |",
        "| --- | --- | --- |",
        f"| users | {pop.users:,} | {where} ({pop.source}) |",
        f"| interactions (= memory elements) | {pop.interactions:,} | {derived} |",
        f"| catalog items | {pop.items:,} | {where} |",
        "| samples train / valid / test | "
        + " / ".join(f"{pop.samples[s]:,.0f}" for s in pop.samples) + f" | {derived} |",
        "| mean memory elements per sample, train / valid / test | "
        + " / ".join(f"{pop.memory_mean[s]:.1f}" for s in pop.samples) + f" | {derived} |",
        f"| tokens: prompt (K = {protocol['recent-k']}) / target (title + EOS) / shared "
        f"template prefix | {tok.prompt(protocol['recent-k']):.0f} / {tok.target} / "
        f"{tok.shared_prefix} | assumed: {tok.title} tokens per quoted title, "
        f"{tok.template}-token template (`Tokens`) |",
        f"| bf16 dense peak (tensor cores), HBM bandwidth | A100 {a100.bf16_tflops:.0f} "
        f"TFLOP/s, {a100.hbm_tb_s} TB/s; H100 {h100.bf16_tflops:.0f} TFLOP/s, "
        f"{h100.hbm_tb_s} TB/s | vendor datasheets (SXM) |",
        f"| float32 peak (plain FP32: PyTorch's default leaves TF32 off for matrix products) | "
        f"A100 {a100.fp32_tflops:g} TFLOP/s; H100 {h100.fp32_tflops:g} TFLOP/s | vendor "
        "datasheets (SXM) |",
        f"| MFU (of the step's dtype's peak); decoding's share of HBM bandwidth | {mfu:.0%}; "
        f"{bw_eff:.0%} | assumed; a random-weight 7B-shaped Llama on one H200 reached 44% of "
        "the H100 datasheet's bf16 peak in a lower-half forward and 38% in concat annotation "
        "(bf16; [Measured on a GPU](#measured-on-a-gpu)); float32, training and decoding not "
        "measured |",
        "",
        "| step | command | dtype | work | tokens (G) | PFLOP | A100 GPU-h | H100 GPU-h | "
        + "".join(f"H100 wall h, {n} GPUs | " for n in gpus) + "note |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | " + "---: | " * len(gpus)
        + "--- |",
    ]
    for r in rows:
        note = r["note"]
        if r["storage_bytes"]:
            note = f"writes {r['storage_bytes'] / 1e12:.1f} TB; " + note
        if r["dtype"] == "float32":
            note = (f"in bfloat16 (`--dtype bfloat16`): "
                    f"{fmt(r['h100_gpu_hours_in_bfloat16'])} H100 GPU-h; " + note)
        lines.append(
            f"| {r['name']} | `{r['command']}` | {r['dtype']} | {r['what']} | "
            f"{r['tokens'] / 1e9:,.2f} | "
            f"{r['flops'] / 1e15:,.0f} | {fmt(r['a100_gpu_hours'])} | "
            f"{fmt(r['h100_gpu_hours'])} | "
            + "".join(f"{fmt(r[w])} | " for w in walls) + f"{note} |")
    lines.append(
        f"| **total** | | | | {total['tokens'] / 1e9:,.2f} | {total['flops'] / 1e15:,.0f} | "
        f"**{fmt(total['a100_gpu_hours'])}** | **{fmt(total['h100_gpu_hours'])}** | "
        + "".join(f"**{fmt(total[w])}** | " for w in walls) + " |")
    result = {"config": str(config_path), "population": asdict(pop), "tokens": asdict(tok),
              "shape": asdict(shape), "mfu": mfu, "decode_bandwidth_efficiency": bw_eff,
              "gpus": gpus, "steps": rows, "total": total}
    return "\n".join(lines) + "\n", result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--stats", type=Path, default=None,
                        help="a prepared dataset's stats.json instead of the assumed counts")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--bandwidth-efficiency", type=float, default=0.6)
    parser.add_argument("--gpus", default="8,64",
                        help="comma-separated GPU counts for the wall-time columns")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    gpus = tuple(int(n) for n in args.gpus.split(",") if n.strip())
    table, result = report(args.config, args.stats, args.mfu, args.bandwidth_efficiency, gpus)
    print(table, end="")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
