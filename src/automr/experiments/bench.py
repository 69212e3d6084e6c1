"""Throughput measurements (``automr bench ...``), each beside the naive way in the same run.

Tests never time anything; these functions do, on whatever model they are given, and return
plain dicts that the CLI prints and saves as JSON + markdown.
"""

import platform
import time

import torch

from automr.annotation import UpperAnnotator
from automr.combiners import COMBINERS
from automr.interfaces import MemoryTokens
from automr.llm.loading import LoadedModel
from automr.llm.split import HFSplitLLM
from automr.llm.state import LayerState


def machine() -> dict[str, object]:
    """Where a measurement ran."""
    info: dict[str, object] = {"platform": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def naive_log_likelihoods(
    llm: HFSplitLLM, layer: int, combiner, prompt: torch.Tensor, target: torch.Tensor,
    memory: MemoryTokens,
) -> torch.Tensor:
    """The naive way: per element, the whole model (lower over prompt + target, upper over the
    combined sequence) with the head at every position, as a plain forward would."""
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


def bench_annotate(
    loaded: LoadedModel, layer: int = 15, prompt_tokens: int = 150, target_tokens: int = 10,
    elements: int = 90, combiner: str = "append-token", element_batch: int = 32,
    repeats: int = 1, seed: int = 0,
) -> dict[str, object]:
    """Annotation samples/s of :class:`UpperAnnotator` vs the naive way, and label agreement."""
    llm = HFSplitLLM(loaded.model)
    generator = torch.Generator().manual_seed(seed)
    vocab = loaded.model.config.vocab_size
    prompt = torch.randint(100, vocab, (prompt_tokens,), generator=generator)
    target = torch.randint(100, vocab, (target_tokens,), generator=generator)
    with torch.no_grad():  # realistic memory: pooled layer-L states of random token windows
        windows = torch.randint(100, vocab, (elements, 12), generator=generator).to(llm.device)
        keys = llm.lower(windows, torch.ones_like(windows, dtype=torch.bool), layer).hidden.mean(1)
    memory = MemoryTokens(hidden=keys[:, None], mask=torch.ones(elements, 1, dtype=torch.bool,
                                                                 device=keys.device))
    combine = COMBINERS[combiner]()
    annotator = UpperAnnotator(llm, layer, combine, element_batch=element_batch)
    annotator.annotate(prompt, target, memory)  # warm-up
    _sync(llm.device)
    start = time.perf_counter()
    for _ in range(repeats):
        fast = annotator.annotate(prompt, target, memory).with_element
    _sync(llm.device)
    fast_s = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        naive = naive_log_likelihoods(llm, layer, combine, prompt, target, memory)
    _sync(llm.device)
    naive_s = (time.perf_counter() - start) / repeats
    return {
        "benchmark": "annotate", "model": loaded.name, "layer": layer, "combiner": combiner,
        "prompt_tokens": prompt_tokens, "target_tokens": target_tokens, "elements": elements,
        "element_batch": element_batch, "repeats": repeats, "dtype": str(llm.dtype),
        "device": str(llm.device), "machine": machine(),
        "automr_s_per_sample": fast_s, "naive_s_per_sample": naive_s,
        "automr_samples_per_s": 1 / fast_s, "naive_samples_per_s": 1 / naive_s,
        "speedup": naive_s / fast_s,
        "max_abs_logprob_diff": float((fast - naive).abs().max()),
    }
