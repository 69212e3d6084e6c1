"""Does a retriever that reads every token state, and learns, find the element that helps?

The eq. 3 retriever scores a pooled prompt state against pooled memory keys, and on ML-100K
it picks the best of a sample's annotated elements no more often than chance
(docs/results.md, "What makes an element help"). This example tries the richer reader those
results point to: a small cross-attention scorer in which each element's layer-L token states
attend over the prompt's layer-L token states (the ones the upper layers see), trained on
eq. 5 gains. It reads two element-gains exports of ``examples/element_gains.py`` (per sample:
the annotated elements and their gains), learns on the first one's samples and picks one
element per sample of the second. Two objectives compete: eq. 6's listwise KL to
``softmax(gain / temperature)`` and a regression on each sample's centred gains; the
objective, temperature and epoch count are chosen by 5-fold cross-validation on the first
export (the mean held-out gain of the pick), then one scorer is trained on all of it. What a
pick is worth is read off the second export, exactly, with no model run: its gain minus the
sample's mean gain (what random retrieval gets in expectation), for ``gain`` and, where the
export has it, ``gain_other`` (the same elements under another fine-tune). Writes one JSON
with the summary, the cross-validation curves and every test sample's scores (keyed by
sample id)::

    python examples/token_scorer.py --data runs/data --memory runs/memory-item-l15 \\
        --train docs/results/automr/element-gains-train.json \\
        --test docs/results/automr/element-gains-test.json \\
        --out docs/results/automr/token-scorer.json

The memory must store token states (``automr memory build --store-token-states``); prompts go
through the base model's lower half, which is what a fine-tune with LoRA above the split
layer (``--lora-from-layer``) leaves as it is.
"""

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch
from torch import nn

import automr
from automr.data.prompts import tokenize_sample
from automr.evaluation import bootstrap_ci
from automr.llm.split import HFSplitLLM

CANDIDATES = ("regression", "listwise@1", "listwise@0.1", "listwise@0.03")
"""Objectives (``listwise@T``: eq. 6 with label temperature T) that cross-validation picks from."""
FOLDS = 5


class CrossScorer(nn.Module):
    """Scores a sample's elements: each element token attends over the prompt's tokens; the
    element's tokens, what they read and their product, pooled, go through a small MLP."""

    def __init__(self, hidden: int, dim: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.query, self.key, self.value = (nn.Linear(hidden, dim) for _ in range(3))
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, prompt: torch.Tensor, elements: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``prompt [P hidden]``, ``elements [E T hidden]`` right-padded, ``mask [E T]`` ->
        ``[E]`` scores."""
        prompt, elements = self.norm(prompt), self.norm(elements)
        keys, values, queries = self.key(prompt), self.value(prompt), self.query(elements)
        attention = (queries @ keys.T / math.sqrt(keys.shape[-1])).softmax(dim=-1)
        read = attention @ values
        weights = (mask / mask.sum(dim=1, keepdim=True)).unsqueeze(-1)
        pooled = torch.cat([(x * weights).sum(dim=1) for x in (queries, read, queries * read)],
                           dim=-1)
        return self.head(pooled).squeeze(-1)


@torch.no_grad()
def prompt_states(export: dict, dataset, layer: int, loaded) -> dict[str, tuple]:
    """Per sample id of ``export``: ``(sample, its prompt's layer-``layer`` token states)``."""
    split_llm = HFSplitLLM(loaded.model)
    splits = {s.id: s for split in ("train", "valid", "test") for s in dataset.samples(split)}
    out = {}
    for sample_id in export["per_sample"]:
        sample = splits[sample_id]
        ids = torch.tensor([tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                            dataset.prompt_config).prompt_ids])
        states = split_llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), layer).hidden
        out[sample_id] = sample, states[0].float()
    return out


@torch.no_grad()
def features(export: dict, dataset, store, loaded) -> dict[str, tuple]:
    """Per sample id: ``(prompt states, padded element states, their mask, gains by key)``."""
    out = {}
    for sample_id, (sample, prompt) in prompt_states(export, dataset, store.layer,
                                                     loaded).items():
        values = export["per_sample"][sample_id]
        user, _, start = store.request_for(sample)
        states = [store.token_states(user, start + i).float() for i in values["elements"]]
        width = max(len(s) for s in states)
        elements = torch.zeros(len(states), width, prompt.shape[-1])
        mask = torch.zeros(len(states), width)
        for row, s in enumerate(states):
            elements[row, : len(s)], mask[row, : len(s)] = s, 1.0
        gains = {key: torch.tensor(values[key], dtype=torch.float64)
                 for key in ("gain", "gain_other") if key in values}
        out[sample_id] = (prompt, elements, mask, gains)
    return out


def pick_values(model: CrossScorer, data: dict, key: str = "gain") -> dict[str, float]:
    """Per sample: the gain of the element scored first minus the sample's mean gain."""
    model.eval()
    with torch.no_grad():
        return {sample_id: float(g[key][model(p, e, m).argmax()] - g[key].mean())
                for sample_id, (p, e, m, g) in data.items() if key in g}


def worth(picks: dict[str, int], data: dict, key: str = "gain") -> dict[str, float]:
    """Per sample with ``key``: the picked element's gain minus the sample's mean gain."""
    return {i: float(g[key][picks[i]] - g[key].mean())
            for i, (*_, g) in data.items() if key in g}


def loss_of(objective: str, scores: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """One sample's loss: listwise KL (eq. 6, up to the labels' entropy) or squared error on
    the centred gains (scores centred too: only differences within a sample matter)."""
    if objective == "regression":
        centred = (gains - gains.mean()).float()
        return ((scores - scores.mean() - centred) ** 2).mean()
    labels = (gains / float(objective.removeprefix("listwise@"))).softmax(dim=0).float()
    return -(labels * scores.log_softmax(dim=0)).sum()


def train(data: dict, objective: str, epochs: int, seed: int,
          held_out: dict | None = None) -> tuple[CrossScorer, list[float]]:
    """``epochs`` passes over ``data``; with ``held_out``, its mean pick value after each."""
    torch.manual_seed(seed)
    model = CrossScorer(next(iter(data.values()))[0].shape[-1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    order, curve = sorted(data), []
    for epoch in range(1, epochs + 1):
        model.train()
        random.Random(seed + epoch).shuffle(order)
        for sample_id in order:
            prompt, elements, mask, gains = data[sample_id]
            loss = loss_of(objective, model(prompt, elements, mask), gains["gain"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if held_out:
            curve.append(sum(pick_values(model, held_out).values()) / len(held_out))
    return model, curve


def cross_validate(data: dict, epochs: int, seed: int,
                   objectives: tuple[str, ...] = CANDIDATES) -> dict[str, list[float]]:
    """Per objective: the held-out pick value after each epoch, averaged over the folds."""
    if len(data) < FOLDS:
        raise SystemExit(f"{len(data)} samples with two or more elements: too few for "
                         f"{FOLDS}-fold cross-validation")
    ids = sorted(data)
    random.Random(seed).shuffle(ids)
    folds = [set(ids[k::FOLDS]) for k in range(FOLDS)]
    curves = {}
    for objective in objectives:
        runs = [train({i: data[i] for i in ids if i not in fold}, objective, epochs, seed,
                      {i: data[i] for i in fold})[1] for fold in folds]
        curves[objective] = [sum(values) / FOLDS for values in zip(*runs, strict=True)]
    return curves


def fit(data: dict, epochs: int, seed: int, objectives: tuple[str, ...] = CANDIDATES,
        ) -> tuple[CrossScorer, str, int, dict[str, list[float]]]:
    """The objective and epoch count with the best cross-validated pick value, and a scorer
    trained with them on all of ``data``; also the cross-validation curves."""
    curves = cross_validate(data, epochs, seed, objectives)
    objective, best = max(((o, e + 1) for o, curve in curves.items() for e in range(len(curve))),
                          key=lambda pair: curves[pair[0]][pair[1] - 1])
    return train(data, objective, best, seed)[0], objective, best, curves


def score(model: CrossScorer, data: dict) -> dict[str, dict]:
    """Per sample id: every element's score and the index of the one scored first."""
    model.eval()
    with torch.no_grad():
        scores = {sample_id: model(prompt, elements, mask)
                  for sample_id, (prompt, elements, mask, _) in data.items()}
    return {sample_id: {"scores": [round(v, 5) for v in s.tolist()], "picked": int(s.argmax())}
            for sample_id, s in scores.items()}


def summarize(values: dict[str, float]) -> dict[str, float]:
    interval = bootstrap_ci(torch.tensor(list(values.values()), dtype=torch.float64))
    return {"samples": len(values), "pick_minus_mean": interval.mean, "low": interval.low,
            "high": interval.high}


def memory_model(name: str, store: automr.MemoryStore) -> automr.LoadedModel:
    """The model ``name`` on the CPU, refused unless the memory was built with it: its prompt
    states are read against the memory's keys and token states."""
    loaded = automr.load_model(name, device="cpu")
    store.record.check(store.folder, loaded.fingerprint())
    return loaded


def read_gains(path: Path, store: automr.MemoryStore) -> dict:
    """An element-gains export, refused unless its annotation used ``store`` (exports of older
    versions, which do not say, are taken as they are)."""
    try:
        export = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path} cannot be read as an element-gains export ({error})") from None
    if not isinstance(export, dict) or not isinstance(export.get("per_sample"), dict):
        raise SystemExit(f"{path} is not an element-gains export (no per_sample): write one "
                         f"with examples/element_gains.py")
    made = export.get("memory")
    given = {"model_fingerprint": store.record.model_fingerprint, "layer": store.layer,
             "digest": automr.MemoryStore.digest(store.folder)}
    if made is not None and any(made[k] != given[k] for k in made if made[k] is not None):
        raise SystemExit(f"{path} annotated another memory than {store.folder} (model, layer "
                         f"or content differ); give the memory its annotation used")
    return export


def gains_parser(doc: str | None, memory_help: str) -> argparse.ArgumentParser:
    """The options of a script that learns on one element-gains export and picks on another."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--memory", type=Path, required=True, help=memory_help)
    parser.add_argument("--train", type=Path, required=True,
                        help="element-gains export to learn on")
    parser.add_argument("--test", type=Path, required=True,
                        help="element-gains export to pick on")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m", help="base model of the fine-tunes")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = gains_parser(__doc__, "the memory the annotations used (with token states)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12,
                        help="the most epochs cross-validation considers")
    args = parser.parse_args(argv)

    dataset = automr.PreparedDataset.load(args.data)
    store = automr.MemoryStore.open(args.memory)
    store.check_dataset(dataset)  # its timelines are the samples' (else a raw IndexError)
    loaded = memory_model(args.model, store)
    learn = features(read_gains(args.train, store), dataset, store, loaded)
    test = features(read_gains(args.test, store), dataset, store, loaded)

    model, objective, epochs, curves = fit(learn, args.epochs, args.seed)
    summary = {"train_samples": len(learn), "folds": FOLDS, "objective": objective,
               "epochs": epochs, "cv_pick_minus_mean": curves[objective][epochs - 1]}
    per_sample = score(model, test)
    for key in ("gain", "gain_other"):
        gains = {i: g[key] for i, (*_, g) in test.items() if key in g}
        if gains:
            picked = {i: per_sample[i]["picked"] for i in gains}
            summary[f"test_{key}"] = summarize(worth(picked, test, key)) | {
                "picks_best": sum(int(g.argmax() == picked[i]) for i, g in gains.items()),
                "picks_worst": sum(int(g.argmin() == picked[i]) for i, g in gains.items()),
                "chance_each": sum(1 / len(g) for g in gains.values())}
    command = ["python", "examples/token_scorer.py", *(sys.argv[1:] if argv is None else argv)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "format": "automr.token-scorer/1", "commands": [command], "summary": summary,
        "cv_curves": curves, "per_sample": per_sample}) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    try:
        main()
    except automr.AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
