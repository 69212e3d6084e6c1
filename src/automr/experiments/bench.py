"""Throughput measurements (``automr bench ...``), each beside the naive way in the same run.

Tests never time anything; these functions do, on whatever model they are given, and return
plain dicts that the CLI prints and saves as JSON + markdown.

``bench_encode`` and ``bench_annotate`` also run under a launcher (``torchrun``; one process per
GPU, or per share of a CPU's cores): every process measures its own share of the work at the
same time (they start together after a barrier), and each process returns its own rates and
ratios (the CLI writes process 0's) beside what every process shares: the counts of all of
them, the largest differences between the ways, ``processes``, ``per_process`` (each one's
figures) and ``total_*`` (the throughput of all of them together).
"""

import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from automr import distributed
from automr.annotation import UpperAnnotator
from automr.annotation.likelihood import common_prefix
from automr.annotation.subsets import element_subset as element_subset_indices
from automr.combiners import COMBINERS, pad_memory
from automr.defaults import DEFAULT_LAYER
from automr.errors import AutomrError
from automr.interfaces import MemoryTokens
from automr.llm.loading import LoadedModel
from automr.llm.split import ATTENTION_LAYERS, HFSplitLLM, layer_values
from automr.state import LayerState
from automr.storage import write_text_atomic


def machine(device: torch.device | str | None = None) -> dict[str, object]:
    """Where a measurement ran: with ``device``, the GPU's name only where it ran on one
    (that GPU's: ``--device cuda:1`` recorded cuda:0's, a CPU run the machine's GPU); without,
    the current GPU's name, if any."""
    info: dict[str, object] = {"platform": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads()}
    device = None if device is None else torch.device(device)
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        info["cuda"] = torch.cuda.get_device_name(device)
    return info


def _at_least(least: int, **options: int) -> None:
    """One line for a count below ``least``, named as its command-line option."""
    for name, value in options.items():
        if value < least:
            raise AutomrError(f"--{name.replace('_', '-')} {value}: give at least {least}")


def _sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a bare synchronize waits for the current GPU only:
    ``--device cuda:1`` timed against cuda:0)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def naive_log_likelihoods(
    llm: HFSplitLLM, layer: int, combiner, prompt: torch.Tensor, target: torch.Tensor,
    memory: MemoryTokens,
) -> torch.Tensor:
    """The naive way: per element, the whole model (lower over prompt + target, upper over the
    combined sequence) with the head at every position, as a plain forward would. ``llm`` is a
    split LM (or a :class:`WorkCounter` around one)."""
    out = []
    ids = torch.cat([prompt, target])[None].to(llm.device)
    for m in range(memory.hidden.shape[0]):
        lowered = llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), layer)
        n = prompt.shape[0]
        query = LayerState(hidden=lowered.hidden[:, :n], mask=lowered.mask[:, :n], layer=layer)
        element = MemoryTokens(hidden=memory.hidden[m : m + 1], mask=memory.mask[m : m + 1])
        combined = combiner.combine(query, element)
        full = LayerState(hidden=torch.cat([combined.hidden, lowered.hidden[:, n:]], 1),
                          mask=torch.cat([combined.mask, lowered.mask[:, n:]], 1), layer=layer)
        logits = llm.upper(full)[0].float()
        start = combined.seq_len - 1
        logp = torch.log_softmax(logits[start : start + target.shape[0]], -1)
        out.append(logp.gather(1, target.to(llm.device)[:, None]).sum())
    return torch.stack(out).cpu()


class WorkCounter:
    """A split LM that tallies the multiply-adds it is asked for, then runs them.

    Per token and layer: the layer's linear modules (attention or mixer projections and the
    MLP, padding included: it is computed; a mixture's routed experts, fused weights, are left
    out); per query-key pair and attention layer: the attention scores and the weighted sum;
    per logit position: the head. Norms, rotary embeddings, convolutions, recurrent scans and
    softmaxes are left out; figures that differ by layer are their mean over the layers. The
    ratio of two ways' counts (``work_ratio``) is the speed-up their multiply-adds alone
    allow, what a measured ratio is read against: a measured ratio above it comes from what is
    not counted (the naive way's batches of one element and its softmax over the vocabulary at
    every position), one far below it from overheads of the fast way."""

    def __init__(self, llm: HFSplitLLM) -> None:
        self.llm = llm
        config = llm.config
        layers = llm.decoder.layers
        self.per_token = sum(module.weight.numel() for layer in layers
                             for module in layer.modules()
                             if isinstance(module, nn.Linear)) / len(layers)
        heads = getattr(config, "num_attention_heads", None) or 0  # none: Mamba
        types = getattr(config, "layer_types", None) or ["full_attention"] * len(layers)
        self.per_pair = 2 * heads * sum(
            head_dim or config.hidden_size // heads
            for head_dim, kind in zip(layer_values(config, "head_dim"), types, strict=True)
            if kind in ATTENTION_LAYERS | {"hybrid"}) / len(layers)
        self.per_logit = config.hidden_size * llm.vocab_size
        self.macs = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.llm, name)

    def _layers(self, batch: int, seq: int, past: int, layers: int) -> None:
        self.macs += layers * (batch * seq * self.per_token
                               + batch * seq * (past + seq) * self.per_pair)

    def lower(self, input_ids, attention_mask, layer, cache=None):
        self._layers(*input_ids.shape, 0 if cache is None else cache.past_len, layer)
        return self.llm.lower(input_ids, attention_mask, layer, cache)

    def upper(self, state, cache=None, logits_at=None):
        self._layers(*state.hidden.shape[:2], 0 if cache is None else cache.past_len,
                     self.llm.num_layers - state.layer)
        positions = state.mask.numel() if logits_at is None else logits_at.numel()
        self.macs += positions * self.per_logit
        return self.llm.upper(state, cache, logits_at)


def bench_memory(
    loaded: LoadedModel, layer: int, elements: int, token_states: bool,
    generator: torch.Generator, prefix: int = 1,
) -> MemoryTokens:
    """Realistic memory for the annotation benchmark: layer-L states of random token windows.

    Pooled keys (one vector per element, for the token combiners) are the mean of 12-token
    windows. Token states (for concat) are every token of ``prefix`` tokens common to all
    elements followed by 5-14 random ones, encoded in batches of 16 by the memory's own
    :class:`~automr.memory.encoders.LayerEncoder` (which runs a common prefix of 8 tokens or
    more once and copies its states, as for a window memory's template header; a 1-token
    prefix is like an item memory's opening quote), right-padded into one row per element."""
    from automr.memory.encoders import Backbone, LayerEncoder

    llm = HFSplitLLM(loaded.model)
    vocab = llm.vocab_size
    with torch.no_grad():
        if not token_states:
            windows = torch.randint(100, vocab, (elements, 12), generator=generator)
            windows = windows.to(llm.device)
            keys = llm.lower(windows, torch.ones_like(windows, dtype=torch.bool),
                             layer).hidden.mean(1)
            return MemoryTokens(hidden=keys[:, None], mask=torch.ones(
                elements, 1, dtype=torch.bool, device=keys.device))
    head = torch.randint(100, vocab, (prefix,), generator=generator).tolist()
    lengths = torch.randint(5, 15, (elements,), generator=generator).tolist()
    token_lists = [head + torch.randint(100, vocab, (n,), generator=generator).tolist()
                   for n in lengths]
    encoder = LayerEncoder(Backbone(llm, loaded.tokenizer, loaded.name), layer)
    states = [state for start in range(0, elements, 16) for state in encoder.encode_tokens(
        token_lists[start : start + 16], keep_states=True).states]
    return pad_memory(states)


def bench_annotate(
    loaded: LoadedModel, layer: int = DEFAULT_LAYER, prompt_tokens: int = 150,
    target_tokens: int = 10,
    elements: int = 90, combiner: str = "concat", element_batch: int = 32,
    repeats: int = 3, seed: int = 0, element_subset: int | None = None, element_prefix: int = 1,
) -> dict[str, object]:
    """Annotation samples/s of :class:`UpperAnnotator` vs the naive way (interleaved rounds)
    on one sample of ``elements`` (at least 1) memory elements,
    label agreement, and each way's multiply-adds (:class:`WorkCounter`), whose ratio is the
    speed-up the layout's work allows.

    Also timed: the plain path (``share_prompt=False``: every element over the whole combined
    sequence, in memory order, batched) and, with ``element_subset``, the fast path on a seeded
    subset of that many elements (what ``automr annotate --element-subset`` does), its labels
    compared with the naive way's on the same elements. ``element_prefix``: concat elements
    start with that many common tokens (:func:`bench_memory`); how many of them the annotator
    finds bit-identical is reported, and whether it caches them (``min_shared`` or more)."""
    if combiner not in COMBINERS:
        raise AutomrError(f"--combiner {combiner!r}: choose one of {', '.join(COMBINERS)}")
    _at_least(1, elements=elements, prompt_tokens=prompt_tokens, target_tokens=target_tokens,
              repeats=repeats)
    _at_least(0, element_prefix=element_prefix)
    llm = HFSplitLLM(loaded.model)
    generator = torch.Generator().manual_seed(seed + distributed.rank())  # a sample each
    vocab = llm.vocab_size
    prompt = torch.randint(100, vocab, (prompt_tokens,), generator=generator)
    target = torch.randint(100, vocab, (target_tokens,), generator=generator)
    combine = COMBINERS[combiner]()
    memory = bench_memory(loaded, layer, elements, combine.uses_token_states, generator,
                          element_prefix)
    subset = element_subset_indices(elements, element_subset, seed, "bench")
    sub_memory = MemoryTokens(hidden=memory.hidden[subset], mask=memory.mask[subset])
    counted = {name: WorkCounter(llm) for name in ("automr", "plain", "naive", "subset")}

    def annotator(target_llm: HFSplitLLM | WorkCounter, share: bool = True) -> UpperAnnotator:
        return UpperAnnotator(target_llm, layer, combine, element_batch=element_batch,
                              share_prompt=share)

    fast = annotator(counted["automr"]).annotate(prompt, target, memory).with_element
    plain = annotator(counted["plain"], share=False).annotate(
        prompt, target, memory).with_element
    naive = naive_log_likelihoods(counted["naive"], layer, combine, prompt, target, memory)
    ways = {
        "automr": lambda: annotator(llm).annotate(prompt, target, memory),
        "plain": lambda: annotator(llm, share=False).annotate(prompt, target, memory),
        "naive": lambda: naive_log_likelihoods(llm, layer, combine, prompt, target, memory),
    }
    if element_subset is not None:
        sub = annotator(counted["subset"]).annotate(prompt, target, sub_memory)
        ways["subset"] = lambda: annotator(llm).annotate(prompt, target, sub_memory)
    distributed.barrier()  # every process measures at the same time
    seconds = interleaved(ways, repeats, llm.device)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    shared = common_prefix(memory)
    result: dict[str, object] = {
        "benchmark": "annotate", "model": loaded.name, "layer": layer, "combiner": combiner,
        "prompt_tokens": prompt_tokens, "target_tokens": target_tokens, "elements": elements,
        "element_tokens_mean": float(memory.mask.sum(1).float().mean()),
        "element_prefix": element_prefix if combine.uses_token_states else 0,
        "shared_prefix_tokens": shared,
        "prefix_cached": shared >= annotator(llm).min_shared,
        "element_batch": element_batch, "repeats": repeats, "dtype": str(llm.dtype),
        "device": str(llm.device), "machine": machine(llm.device),
        "automr_s_per_sample": median["automr"], "naive_s_per_sample": median["naive"],
        "plain_s_per_sample": median["plain"],
        "automr_samples_per_s": 1 / median["automr"], "naive_samples_per_s": 1 / median["naive"],
        "plain_samples_per_s": 1 / median["plain"],
    }
    for name, over in (("speedup", "naive"), ("speedup_over_plain", "plain")):
        spread = ratio(seconds[over], seconds["automr"])
        result.update({name: spread["median"], f"{name}_min": spread["min"],
                       f"{name}_max": spread["max"],
                       f"{name.replace('speedup', 'work_ratio')}":
                           counted[over].macs / counted["automr"].macs})
    result.update({
        "automr_gmacs_per_sample": counted["automr"].macs / 1e9,
        "plain_gmacs_per_sample": counted["plain"].macs / 1e9,
        "naive_gmacs_per_sample": counted["naive"].macs / 1e9,
        "max_abs_logprob_diff": float((fast - naive).abs().max()),
        "max_abs_logprob_diff_plain": float((plain - naive).abs().max()),
    })
    if element_subset is not None:
        spread = ratio(seconds["naive"], seconds["subset"])
        result.update({
            "element_subset": len(subset), "element_seed": seed,
            "subset_s_per_sample": median["subset"],
            "subset_samples_per_s": 1 / median["subset"],
            "subset_speedup": spread["median"], "subset_speedup_min": spread["min"],
            "subset_speedup_max": spread["max"],
            "subset_work_ratio": counted["naive"].macs / counted["subset"].macs,
            "max_abs_logprob_diff_subset": float((sub.with_element - naive[subset]).abs().max()),
        })
    rates = [k for k in result if k.endswith("_samples_per_s")]
    differences = [k for k in result if k.startswith("max_abs_logprob_diff")]
    result.update(_processes({k: result[k] for k in (*rates, *differences)}, rates))
    result.update({k: max(p[k] for p in result["per_process"])  # over every process's
                   for k in differences})
    return result


def _processes(mine: dict[str, float], rates: Sequence[str]) -> dict[str, object]:
    """``processes``, ``per_process`` (every process's ``mine``) and ``total_RATE``: the sum
    of each rate over the processes, which ran at the same time. A result's other rates and
    ratios are its own process's (rank 0's in the files written)."""
    per_process = distributed.gather(mine)
    return {"processes": len(per_process), "per_process": per_process,
            **{f"total_{rate}": sum(p[rate] for p in per_process) for rate in rates}}


def interleaved(
    ways: Mapping[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each way, measured in ``repeats`` interleaved rounds.

    Every way runs once as a warm-up, then each round calls every way once, in order (plain,
    split, plain, split, ...), so a slow spell of a noisy machine hits all ways alike; compare
    them with :func:`ratio` over the rounds, never with one repeat.
    """
    if repeats < 1:
        raise AutomrError(f"repeats must be at least 1, got {repeats}")
    for fn in ways.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            _sync(device)
            start = time.perf_counter()
            result = fn()
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
            del result  # freed outside the timing (a large result's teardown is not its way's)
    return seconds


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median, min and max over rounds of ``numerator[i] / denominator[i]``."""
    values = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def speedup_of(ways: Mapping[str, Callable[[], object]], fast: str, slow: str, repeats: int,
               device: str = "cpu") -> dict[str, float]:
    """:func:`interleaved` seconds of ``ways`` and how many times faster ``fast`` ran than
    ``slow``: ``FAST_s`` and ``SLOW_s`` (medians), ``speedup`` (median of the rounds' ratios),
    ``speedup_min`` and ``speedup_max``."""
    seconds = interleaved(ways, repeats, torch.device(device))
    speedup = ratio(seconds[slow], seconds[fast])
    return {f"{fast}_s": statistics.median(seconds[fast]),
            f"{slow}_s": statistics.median(seconds[slow]), "speedup": speedup["median"],
            "speedup_min": speedup["min"], "speedup_max": speedup["max"]}


def bench_encode(
    loaded: LoadedModel, dataset, layer: int = DEFAULT_LAYER, texts: int = 32,
    batch_size: int = 16, repeats: int = 3,
) -> dict[str, object]:
    """Memory-encoding tokens/s (window prompts of real samples, shared-prefix encoder) beside
    a raw lower-half forward of the same padded batches and beside the same encoder without
    prefix sharing (what sharing itself buys), and the split's overhead: ``upper(lower(x))``
    against the model's own forward at equal work.

    The encoder memoises each batch's shared prefix (:class:`LayerEncoder`, up to
    ``PREFIX_CACHE_SIZE`` distinct ones): the warm-up computes it, the timed rounds do not
    (``encoder_prefix_tokens`` counts those tokens, every row's copy, and ``encoder_prefixes``
    the distinct prefixes). How far the ways' outputs are apart comes from one more, untimed
    pass: the keys with and without sharing (``max_abs_key_diff_sharing``) and the split's
    logits against the model's own at every real token (``max_abs_diff_split``)."""
    from automr.data import format_prompt
    from automr.memory import Pooling
    from automr.memory.encoders import Backbone, LayerEncoder, pad_right

    _at_least(1, batch_size=batch_size, repeats=repeats)
    llm = HFSplitLLM(loaded.model)
    if texts < distributed.world_size():
        raise AutomrError(f"--texts {texts} leaves a process without work; give at least one "
                          f"per process ({distributed.world_size()})")
    samples = distributed.mine(dataset.samples("train")[:texts])  # this process's share
    prompts = [format_prompt(dataset.catalog.titles(s.recent), dataset.prompt_config)
               for s in samples]
    backbone = Backbone.of(loaded)
    encoder = LayerEncoder(backbone, layer, Pooling(), share_prefix=True)
    unshared = LayerEncoder(backbone, layer, Pooling(), share_prefix=False)
    token_lists = encoder.tokenize(prompts)
    n_tokens = sum(map(len, token_lists))
    batches = [token_lists[i : i + batch_size] for i in range(0, len(token_lists), batch_size)]
    padded = [pad_right(batch, encoder.pad_id) for batch in batches]
    prefixes = [tuple(batch[0][: encoder.shared_tokens(batch)]) for batch in batches]
    device = llm.device

    def encode() -> None:
        for batch in batches:
            encoder.encode_tokens(batch)

    def encode_unshared() -> None:
        for batch in batches:
            unshared.encode_tokens(batch)

    @torch.no_grad()
    def raw_lower() -> None:
        for ids, mask in padded:
            llm.lower(ids.to(device), mask.to(device), layer)

    @torch.no_grad()
    def split_full() -> None:
        for ids, mask in padded:
            llm.upper(llm.lower(ids.to(device), mask.to(device), layer))

    @torch.no_grad()
    def plain_full() -> None:
        for ids, mask in padded:
            loaded.model(input_ids=ids.to(device), attention_mask=mask.to(device).long(),
                         use_cache=False)  # as the split's: no KV cache kept

    distributed.barrier()  # every process measures at the same time
    seconds = interleaved({"encode": encode, "encode_unshared": encode_unshared,
                           "raw_lower": raw_lower, "split_full": split_full,
                           "plain_full": plain_full}, repeats, device)
    encode_s, lower_s, split_s, plain_s = (
        statistics.median(seconds[k]) for k in ("encode", "raw_lower", "split_full",
                                                "plain_full"))
    speedup = ratio(seconds["raw_lower"], seconds["encode"])
    sharing = ratio(seconds["encode_unshared"], seconds["encode"])
    overhead = ratio(seconds["split_full"], seconds["plain_full"])
    agreement = _encode_agreement(loaded.model, llm, layer, encoder, unshared, batches, padded)
    shared = {"encoder_prefix_tokens": sum(len(p) * len(b) for p, b in zip(prefixes, batches,
                                                                            strict=True)),
              "encoder_prefixes": len(set(prefixes) - {()})}
    processes = _processes({"texts": len(prompts), "tokens": n_tokens, **shared,
                            "encoder_tokens_per_s": n_tokens / encode_s,
                            "raw_lower_tokens_per_s": n_tokens / lower_s, **agreement},
                           ("encoder_tokens_per_s", "raw_lower_tokens_per_s"))
    agreement = {k: max(p[k] for p in processes["per_process"]) for k in agreement}
    shared = {k: sum(p[k] for p in processes["per_process"]) for k in shared}
    return {  # texts, tokens and prefix counts of every process; rates and ratios of this
        # one; the differences are the largest over the processes
        "benchmark": "encode", "model": loaded.name, "layer": layer,
        "texts": sum(p["texts"] for p in processes["per_process"]),
        "tokens": sum(p["tokens"] for p in processes["per_process"]),
        "batch_size": batch_size, "repeats": repeats,
        "dtype": str(llm.dtype), "device": str(device), "machine": machine(device),
        "encoder_tokens_per_s": n_tokens / encode_s,
        "raw_lower_tokens_per_s": n_tokens / lower_s,
        "encoder_speedup_over_raw_lower": speedup["median"],
        "encoder_speedup_min": speedup["min"], "encoder_speedup_max": speedup["max"],
        "unshared_tokens_per_s": n_tokens / statistics.median(seconds["encode_unshared"]),
        "sharing_speedup": sharing["median"], "sharing_speedup_min": sharing["min"],
        "sharing_speedup_max": sharing["max"],
        **shared, **agreement,
        "split_full_s": split_s, "plain_full_s": plain_s,
        "split_overhead": overhead["median"] - 1, "split_overhead_min": overhead["min"] - 1,
        "split_overhead_max": overhead["max"] - 1, **processes,
    }


@torch.no_grad()
def _encode_agreement(model, llm: HFSplitLLM, layer: int, encoder, unshared, batches,
                      padded) -> dict[str, float]:
    """The largest absolute differences between :func:`bench_encode`'s ways, one untimed
    pass: keys with and without prefix sharing; ``upper(lower(x))``'s logits against the
    model's own forward's, at the real tokens."""
    keys = split = 0.0
    for batch, (ids, mask) in zip(batches, padded, strict=True):
        apart = encoder.encode_tokens(batch).keys - unshared.encode_tokens(batch).keys
        keys = max(keys, float(apart.abs().max()))
        ids, mask = ids.to(llm.device), mask.to(llm.device)
        ours = llm.upper(llm.lower(ids, mask, layer))
        theirs = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits
        for row, real in enumerate(mask):
            split = max(split, float((ours[row, real].float() - theirs[row, real].float())
                                     .abs().max()))
    return {"max_abs_key_diff_sharing": keys, "max_abs_diff_split": split}


def bench_finetune(
    model: str, dataset, layer: int = DEFAULT_LAYER, steps: int = 8, batch_size: int = 8,
    device: str = "auto", dtype: str = "auto", cache_dir=None, seed: int = 0, repeats: int = 3,
) -> dict[str, object]:
    """LoRA training seconds per step three ways, on the same seeded batches of real training
    samples, interleaved over ``repeats`` rounds: LoRA on all layers; on layers >= ``layer``
    with the lower half run under no_grad each step (plain); and the same with the lower half's
    states computed once beforehand (cached, :class:`LowerCache`; its build time is reported
    apart: one no-grad lower pass, paid once for all epochs). Each way's first call (the
    warm-up) starts from the same adapter and seed, so the per-step losses of cached and plain
    are compared there."""
    from automr.data.subsets import seeded_subset
    from automr.llm.loading import load_model
    from automr.recommenders.finetune import (
        FinetuneConfig,
        LowerCache,
        collate,
        encode_samples,
        train_step,
    )
    from automr.recommenders.lora import lora_model

    _at_least(1, steps=steps, batch_size=batch_size, layer=layer, repeats=repeats)
    ways = {"all_layers": (0, False), "upper_layers": (layer, False),
            "upper_cached": (layer, True)}
    result: dict[str, object] = {"benchmark": "finetune", "model": model, "layer": layer,
                                 "steps": steps, "batch_size": batch_size, "repeats": repeats}
    calls, first_losses = {}, {}
    examples = chunks = batches = None
    for name, (from_layer, cached) in ways.items():
        loaded = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
        pad_id = loaded.tokenizer.pad_token_id
        if examples is None:  # the same batches for every way
            examples = encode_samples(loaded, dataset, seeded_subset(
                dataset.samples("train"), steps * batch_size, seed))
            chunks = [range(i, min(i + batch_size, len(examples)))
                      for i in range(0, len(examples), batch_size)]
            batches = [collate([examples[i] for i in chunk], pad_id) for chunk in chunks]
        config = FinetuneConfig(lora_from_layer=from_layer, batch_size=batch_size, seed=seed)
        torch.manual_seed(seed)  # the same initial adapter for both upper-layer ways
        peft = lora_model(loaded, config)
        llm = HFSplitLLM(peft)
        optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad],
                                      lr=config.lr)
        cache = None
        if cached:
            start = time.perf_counter()
            cache = LowerCache.build(llm, examples, from_layer, batch_size, pad_id)
            result.update(lower_cache_build_s=time.perf_counter() - start,
                          lower_cache_bytes=cache.nbytes)

        def run(name=name, llm=llm, peft=peft, optimizer=optimizer, cache=cache,
                from_layer=from_layer, lr=config.lr, batches=batches, chunks=chunks) -> None:
            torch.manual_seed(seed)  # LoRA dropout draws the same masks in every way
            peft.train()
            losses = [train_step(llm, [(batch, None if cache is None else cache.state(
                chunk, llm.device))], from_layer, optimizer, lr)
                for batch, chunk in zip(batches, chunks, strict=True)]
            peft.eval()
            first_losses.setdefault(name, losses)

        calls[name] = run
        result.update({
            f"{name}_lora_parameters": sum(p.numel() for p in peft.parameters()
                                           if p.requires_grad),
            "tokens": sum(int(batch.mask.sum()) for batch in batches),
            "dtype": str(loaded.model.dtype), "device": str(loaded.model.device),
        })
    seconds = interleaved(calls, repeats, torch.device(result["device"]))
    n_steps = len(first_losses["all_layers"])
    for name in ways:
        per_step = statistics.median(seconds[name]) / n_steps
        result[f"{name}_s_per_step"] = per_step
        result[f"{name}_tokens_per_s"] = result["tokens"] / n_steps / per_step
    for key, slow, fast in (("upper_layers_speedup", "all_layers", "upper_layers"),
                            ("cached_speedup_over_plain", "upper_layers", "upper_cached"),
                            ("cached_speedup_over_all_layers", "all_layers", "upper_cached")):
        spread = ratio(seconds[slow], seconds[fast])
        result[key] = spread["median"]
        result[f"{key}_min_max"] = [spread["min"], spread["max"]]
    result["max_abs_loss_diff_cached_vs_plain"] = max(abs(a - b) for a, b in zip(
        first_losses["upper_cached"], first_losses["upper_layers"], strict=True))
    result["machine"] = machine(result["device"])
    return result


def write_result(result: dict[str, object], out: Path, name: str) -> str:
    """``OUT/NAME.json`` (every field) and ``OUT/NAME.md`` (:func:`markdown_table`); returns
    the table."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{name}.json", json.dumps(result, indent=1) + "\n")
    table = markdown_table(result)
    write_text_atomic(out / f"{name}.md", table)
    return table


def markdown_table(result: dict[str, object]) -> str:
    """A two-column markdown table of a benchmark result (nested dicts flattened)."""
    rows = ["| field | value |", "|---|---|"]
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        rows.append(f"| {key} | {value} |")
    return "\n".join(rows) + "\n"


def bench_ground(
    loaded: LoadedModel, dataset, grounders: tuple[str, ...] = ("constrained", "l2"),
    samples: int = 8, batch_size: int = 8, layer: int = DEFAULT_LAYER, seed: int = 0,
    cache_dir=None, repeats: int = 3, engines: tuple[str, ...] = ("reference", "generate"),
) -> dict[str, object]:
    """Generation + grounding samples/s of each grounder over real test prompts (whole catalog
    ranked per sample), interleaved in the same run; ratios against the first grounder.

    Each constrained grounder also runs with the other search ``engines`` (``reference``:
    the plain implementation the fast one replaced; ``generate``: transformers' ``generate``
    with the trie) as ``KIND-ENGINE``, reported with the fast one's speed-up over each and
    how many samples' target ranks differ."""
    import attrs

    from automr.data.subsets import seeded_subset
    from automr.grounding import build_grounder
    from automr.methods import GenerativeMethod

    _at_least(1, samples=samples, batch_size=batch_size, repeats=repeats)
    chosen = seeded_subset(dataset.samples("test"), samples, seed)
    result: dict[str, object] = {
        "benchmark": "ground", "model": loaded.name, "samples": len(chosen),
        "batch_size": batch_size, "catalog_items": len(dataset.catalog), "layer": layer,
        "dtype": str(loaded.model.dtype), "device": str(loaded.model.device),
        "repeats": repeats, "machine": machine(loaded.model.device),
    }
    methods = {kind: GenerativeMethod(loaded, dataset, build_grounder(
        kind, loaded, dataset, loaded.fingerprint(), cache_dir=cache_dir, progress=False),
        layer, batch_size=batch_size) for kind in grounders}
    variants = {f"{kind}-{engine}": (kind, attrs.evolve(
        methods[kind], grounder=attrs.evolve(methods[kind].grounder, engine=engine)))
        for kind in grounders if kind.startswith("constrained") for engine in engines}
    methods.update({name: method for name, (_, method) in variants.items()})
    ranks: dict[str, list[int]] = {}
    # a fresh copy each repeat: an L2 method keeps the distances it computed (and would not
    # generate again)
    seconds = interleaved({name: lambda m=m, name=name: ranks.__setitem__(
        name, attrs.evolve(m).rank(chosen)) for name, m in methods.items()}, repeats,
        loaded.model.device)
    first = grounders[0]
    for kind in methods:
        result[f"{kind}_samples_per_s"] = len(chosen) / statistics.median(seconds[kind])
        if kind != first:
            spread = ratio(seconds[first], seconds[kind])
            result[f"{kind}_speed_vs_{first}"] = spread["median"]
            result[f"{kind}_speed_vs_{first}_min_max"] = [spread["min"], spread["max"]]
    for name, (kind, _) in variants.items():
        engine = name.removeprefix(f"{kind}-")
        spread = ratio(seconds[name], seconds[kind])
        result[f"{kind}_speedup_vs_{engine}"] = spread["median"]
        result[f"{kind}_speedup_vs_{engine}_min_max"] = [spread["min"], spread["max"]]
        result[f"{kind}_rank_differences_vs_{engine}"] = sum(
            a != b for a, b in zip(ranks[kind], ranks[name], strict=True))
    return result
