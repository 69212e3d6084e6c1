"""BIGRec fine-tuning: exact batching, the loss falls, resume equals an uninterrupted run."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from automr.data import TokenizedExample
from automr.errors import AutomrError
from automr.llm import HFSplitLLM
from automr.llm.loading import load_model
from automr.recommenders.finetune import (
    FinetuneConfig,
    batch_nll,
    collate,
    finetune,
)
from automr.recommenders.runs import FinetunedRun
from automr.testing.synthetic import save_tiny_model, synthetic_dataset
from automr.testing.tiny import TINY_VOCAB

token = st.integers(3, TINY_VOCAB - 1)
example = st.builds(
    lambda p, t: TokenizedExample(tuple(p), tuple(t), 2),
    st.lists(token, min_size=1, max_size=6), st.lists(token, min_size=1, max_size=4),
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {"data": synthetic_dataset(root), "model": save_tiny_model(root / "model"),
            "root": root}


def plain_nll(model, ex: TokenizedExample, loss_on: str) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
    logp = torch.log_softmax(logits, -1)
    start = len(ex.prompt_ids) if loss_on == "target" else 1
    terms = [-logp[j - 1, ex.input_ids[j]] for j in range(start, len(ex.input_ids))]
    return float(sum(terms)), len(terms)


@pytest.mark.parametrize("loss_on", ["target", "sequence"])
@given(examples=st.lists(example, min_size=1, max_size=4), layer=st.integers(0, 3))
def test_batched_loss_equals_one_at_a_time(tiny_models, loss_on, examples, layer):
    model = tiny_models["llama"]
    with torch.no_grad():
        nll, count = batch_nll(HFSplitLLM(model), collate(examples, 2, loss_on), layer)
    expected = [plain_nll(model, ex, loss_on) for ex in examples]
    assert count == sum(n for _, n in expected)
    assert float(nll) == pytest.approx(sum(v for v, _ in expected), rel=1e-4, abs=1e-4)


def quick_config(**overrides) -> FinetuneConfig:
    fields = dict(max_train_samples=32, max_valid_samples=8, batch_size=4, epochs=2,
                  eval_every=4, patience=100, lr=5e-3)
    fields.update(overrides)
    return FinetuneConfig(**fields)


def test_finetune_lowers_validation_loss_and_reloads(workspace):
    loaded = load_model(str(workspace["model"]), device="cpu")
    run = workspace["root"] / "run"
    record = finetune(loaded, workspace["data"], run, quick_config(), progress=False)
    assert record["best_valid_nll"] < record["initial_valid_nll"]
    tuned = FinetunedRun.open(run).load(device="cpu")
    assert tuned.fingerprint() != loaded.fingerprint()
    with pytest.raises(AutomrError, match="already holds a finished"):
        finetune(loaded, workspace["data"], run, quick_config(), progress=False)


def test_lora_from_layer_trains_only_upper_layers(workspace):
    loaded = load_model(str(workspace["model"]), device="cpu")
    run = workspace["root"] / "upper-only"
    finetune(loaded, workspace["data"], run, quick_config(lora_from_layer=2, epochs=1),
             progress=False)
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [2, 3]


def test_resume_equals_uninterrupted_run(workspace, monkeypatch):
    import automr.recommenders.finetune as ft

    data, model = workspace["data"], str(workspace["model"])
    config = quick_config(epochs=1)
    full = finetune(load_model(model, device="cpu"), data, workspace["root"] / "full", config,
                    progress=False)
    calls = {"n": 0}
    original = ft._save_checkpoint

    def crash_after_first_checkpoint(*args):
        original(*args)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_checkpoint", crash_after_first_checkpoint)
    run = workspace["root"] / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    monkeypatch.setattr(ft, "_save_checkpoint", original)
    with pytest.raises(AutomrError, match="different config"):
        finetune(load_model(model, device="cpu"), data, run, quick_config(epochs=1, lr=1e-2),
                 progress=False)
    resumed = finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    assert resumed["step"] == full["step"]
    for ours, theirs in zip(resumed["evaluations"], full["evaluations"], strict=True):
        assert ours["step"] == theirs["step"]
        assert ours["valid_nll"] == pytest.approx(theirs["valid_nll"], abs=1e-5)
