"""What the eq. 5 gain of a memory element goes with, read off two annotation folders.

Within each annotated sample, the gain of every annotated element (log P(y | prompt, element)
- log P(y | prompt)) is set beside what a retriever could and could not know: the cosine
similarity of the element's title to the recent items' (what the query sees) and to the true
next title's (what no retriever sees), in the base model's title embeddings (the ones BIGRec's
L2 grounding uses); and, with a second annotation of the same elements under another
fine-tune, how stable the gains are across recommenders. With ``--memory``, also a retriever
that reads token states instead of two pooled vectors: each element scored by late interaction
(for each of its layer-L token states, the best cosine to any of the prompt's layer-L token
states, averaged), and the gain of the element it ranks first against the sample's mean.
Writes one JSON with the summary and every sample's values (keyed by sample id) so each figure
can be recomputed::

    python examples/element_gains.py --data runs/data --annotations runs/annot-concat-1000 \\
        --other runs/annot-mem-train-1000 --out docs/results/automr/element-gains-train.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import automr
from automr.annotation.run import Annotations
from automr.data.prompts import tokenize_sample
from automr.experiments.retriever import element_gains
from automr.grounding.catalog import catalog_embeddings, dataset_targets
from automr.llm.split import HFSplitLLM


def within_sample_correlation(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Pearson correlation of the two values after removing each sample's means (so only how
    elements differ *within* a sample counts, as for a retriever choosing among them)."""
    xs, ys = [], []
    for x, y in pairs:
        if len(x) > 1 and float(x.std()) > 0 and float(y.std()) > 0:
            xs.append(x - x.mean())
            ys.append(y - y.mean())
    if not xs:
        raise SystemExit("no sample has two annotated elements whose values differ: annotate "
                         "more elements per sample (automr annotate --element-subset 2 or more)")
    x, y = torch.cat(xs), torch.cat(ys)
    return float((x * y).sum() / (x.norm() * y.norm()))


@torch.no_grad()
def late_interaction(split_llm, store, loaded, dataset, sample, index) -> torch.Tensor:
    """Per annotated element: the mean over its layer-L token states of the best cosine to any
    of the prompt's layer-L token states (no learning; reads what a pooled key throws away)."""
    prompt = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                             dataset.prompt_config).prompt_ids
    ids = torch.tensor([prompt])
    query = split_llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), store.layer).hidden[0]
    query = torch.nn.functional.normalize(query.double(), dim=-1)
    user, _, start = store.request_for(sample)
    scores = []
    for i in index.tolist():
        element = torch.nn.functional.normalize(
            store.token_states(user, start + i).double(), dim=-1)
        scores.append(float((element @ query.T).max(dim=1).values.mean()))
    return torch.tensor(scores, dtype=torch.float64)


def memory_of(header: dict) -> dict:
    """The memory an annotation used (its model, layer and, when recorded, content): what a
    script reading the gains' element indices checks its own memory against."""
    return {"model_fingerprint": header["memory_model_fingerprint"], "layer": header["layer"],
            "digest": header.get("memory_digest")}


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(v, 5) for v in values.tolist()]  # the file stays small; the summary is exact


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--annotations", type=Path, required=True)
    parser.add_argument("--other", type=Path, help="the same elements under another fine-tune")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m", help="base model of the fine-tunes")
    parser.add_argument("--cache-dir", type=Path, help="automr's cache (title embeddings)")
    parser.add_argument("--memory", type=Path, help="the memory folder the annotation used "
                                                    "(with token states): adds late interaction")
    args = parser.parse_args(argv)

    dataset = automr.PreparedDataset.load(args.data)
    annotations = Annotations.load(args.annotations)
    loaded = automr.load_model(args.model, device="cpu")
    embeddings = catalog_embeddings(loaded, dataset_targets(loaded, dataset),
                                    loaded.fingerprint(), args.cache_dir, progress=False
                                    ).double()
    embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)
    row = {item: n for n, item in enumerate(dataset.catalog.ids)}
    split = annotations.header["config"]["split"]
    by_id = {s.id: s for s in dataset.samples(split)}
    other = Annotations.load(args.other) if args.other else None
    if other is not None and memory_of(other.header) != memory_of(annotations.header):
        raise SystemExit(f"{args.other} annotated another memory than {args.annotations}: "
                         f"their elements are not the same")
    other_gains = {} if other is None else dict(zip(
        other.header["samples"], zip(element_gains(other), other.index, strict=True),
        strict=True))

    if loaded.fingerprint() != annotations.header["memory_model_fingerprint"]:
        raise SystemExit(f"{args.annotations} annotated a memory of another model than "
                         f"{args.model}: give the base model of its fine-tune (--model)")
    store = automr.MemoryStore.open(args.memory) if args.memory else None
    if store is not None:
        annotations.check_memory(store)  # its keys and token states are those annotated
        store.check_dataset(dataset)
    split_llm = HFSplitLLM(loaded.model) if store else None
    per_sample, to_target, to_recent, across, late = {}, [], [], [], []
    for sample_id, gains, index in zip(annotations.header["samples"],
                                       element_gains(annotations), annotations.index,
                                       strict=True):
        if len(gains) < 2:
            continue
        sample = by_id.get(sample_id)
        if sample is None or int(index.max()) >= len(sample.memory):
            raise SystemExit(f"{args.annotations} annotated sample {sample_id}, which --data "
                             f"{args.data} does not hold as annotated (another dataset?)")
        elements = embeddings[[row[sample.memory[int(i)]] for i in index]]
        recent = embeddings[[row[i] for i in sample.recent]].mean(0)
        target_sim = elements @ embeddings[row[sample.target]]
        recent_sim = elements @ (recent / recent.norm())
        values = {"elements": index.tolist(), "gain": _rounded(gains),
                  "cos_target": _rounded(target_sim), "cos_recent": _rounded(recent_sim)}
        to_target.append((gains, target_sim))
        to_recent.append((gains, recent_sim))
        if store is not None:
            scores = late_interaction(split_llm, store, loaded, dataset, sample, index)
            values["late_interaction"] = _rounded(scores)
            late.append((gains, scores))
        if sample_id in other_gains and torch.equal(other_gains[sample_id][1], index):
            values["gain_other"] = _rounded(other_gains[sample_id][0])
            across.append((gains, other_gains[sample_id][0]))
        per_sample[sample_id] = values

    best_same = sum(int(a.argmax() == b.argmax()) for a, b in across)
    best_target_like = sum(int(g.argmax() == s.argmax()) for g, s in to_target)
    summary = {
        "samples": len(per_sample),
        "elements": sum(len(v["gain"]) for v in per_sample.values()),
        "corr_gain_cos_target": within_sample_correlation(to_target),
        "corr_gain_cos_recent": within_sample_correlation(to_recent),
        "best_is_most_target_like": best_target_like,
        "chance_best_is_most_target_like": sum(1 / len(g) for g, _ in to_target),
    }
    if late:
        picked = torch.tensor([float(g[s.argmax()] - g.mean()) for g, s in late],
                              dtype=torch.float64)
        summary |= {"corr_gain_late_interaction": within_sample_correlation(late),
                    "late_interaction_pick_minus_random": float(picked.mean()),
                    "late_interaction_pick_minus_random_sem": float(
                        picked.std() / len(picked) ** 0.5),
                    "late_interaction_picks_best": sum(int(g.argmax() == s.argmax())
                                                       for g, s in late)}
    if across:
        summary |= {"compared_samples": len(across),
                    "corr_gain_across_finetunes": within_sample_correlation(across),
                    "same_best_element": best_same,
                    "chance_same_best_element": sum(1 / len(a) for a, _ in across)}
    command = ["python", "examples/element_gains.py",
               *(sys.argv[1:] if argv is None else argv)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"format": "automr.element-gains/1", "commands": [command],
                                    "memory": memory_of(annotations.header),
                                    "summary": summary, "per_sample": per_sample}) + "\n",
                        encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
