"""BIGRec fine-tuning: exact batching, the loss falls, accumulation and cached lower states equal
the plain loop, the schedule's shape, and resume after any step equals an uninterrupted run
bit for bit."""

import itertools
import json
import math
import re
import warnings

import pytest
import torch
from hypothesis import given, strategies as st
from safetensors.torch import load_file

from automr.data import TokenizedExample
from automr.errors import AutomrError
from automr.llm import HFSplitLLM
from automr.llm.loading import load_model
from automr.recommenders.finetune import (
    FinetuneConfig,
    LowerCache,
    batch_nll,
    collate,
    finetune,
    lr_factor,
    note_processes,
)
from automr.recommenders.runs import FinetunedRun
from automr.testing.synthetic import save_tiny_model, synthetic_dataset
from automr.testing.tiny import TINY_ARCHITECTURES, TINY_VOCAB

token = st.integers(3, TINY_VOCAB - 1)
# (prompt ids, target ids); the examples are built in the test, since beartype's checks of a
# TokenizedExample draw from the `random` module, which hypothesis forbids inside strategies
example_ids = st.tuples(st.lists(token, min_size=1, max_size=6).map(tuple),
                        st.lists(token, min_size=1, max_size=4).map(tuple))


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
@given(ids=st.lists(example_ids, min_size=1, max_size=4), layer=st.integers(0, 3))
def test_batched_loss_equals_one_at_a_time(tiny_models, loss_on, ids, layer):
    model = tiny_models["llama"]
    examples = [TokenizedExample(prompt, target, 2) for prompt, target in ids]
    with torch.no_grad():
        nll, count = batch_nll(HFSplitLLM(model), collate(examples, 2, loss_on), layer)
    expected = [plain_nll(model, ex, loss_on) for ex in examples]
    assert count == sum(n for _, n in expected)
    assert float(nll) == pytest.approx(sum(v for v, _ in expected), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(("arch", "dropout"), [("granite", dict(attention_dropout=0.5)),
                                               ("phi", dict(embd_pdrop=0.5, resid_pdrop=0.5)),
                                               ("gpt_neox", dict(hidden_dropout=0.5))])
def test_the_frozen_lower_half_runs_without_dropout_in_training(arch, dropout):
    """In train mode the layers below L are still frozen feature extractors: their states are
    those of eval mode, as the lower cache (``cache_lower``, computed in eval mode) and layer-L
    memories have them. Granite 3's configs set attention_dropout 0.1: the plain loop dropped
    attention out in the lower layers too, so it trained on other states than the cached one
    (and drew other dropout masks above L). Phi's and GPT-NeoX's embedding dropout is a module
    of the decoder, outside the embeddings and the layers: it dropped out too."""
    from automr.testing.tiny import tiny_config, tiny_model

    model = tiny_model(tiny_config(arch, num_layers=4, **dropout))
    llm = HFSplitLLM(model)
    batch = collate([TokenizedExample((5, 9, 40, 7, 12), (30, 31), 2),
                     TokenizedExample((6, 8), (33,), 2)], 2)
    with torch.no_grad():
        cached = llm.lower(batch.input_ids, batch.mask, 2)
    model.train()
    results = []
    for state in (cached, None):
        torch.manual_seed(0)  # the upper half's dropout masks
        with torch.no_grad():
            results.append(batch_nll(llm, batch, 2, state)[0])
    assert model.training and all(layer.training for layer in llm.decoder.layers)
    torch.testing.assert_close(results[0], results[1])
    torch.manual_seed(1)
    with torch.no_grad():  # the upper half does drop out in training
        assert not torch.equal(batch_nll(llm, batch, 2, cached)[0], results[0])


def quick_config(**overrides) -> FinetuneConfig:
    fields = dict(max_train_samples=32, max_valid_samples=8, batch_size=4, epochs=2,
                  eval_every=4, patience=100, lr=5e-3)
    fields.update(overrides)
    return FinetuneConfig(**fields)


@pytest.mark.parametrize("field", [dict(lora_alpha=0), dict(lora_alpha=-16),
                                   dict(weight_decay=-0.1), dict(max_train_samples=0),
                                   dict(max_train_samples=-2)])
def test_config_refuses_a_scale_that_trains_nothing_or_a_negative_decay(field):
    """LoRA's update is scaled by alpha / r: alpha 0 trained nothing, silently; AdamW refused a
    negative weight decay only once the model and data were loaded, as a raw ValueError; a
    training subset of 0 was refused then too, as 'the dataset has no training samples'."""
    with pytest.raises(ValueError, match=next(iter(field))):
        FinetuneConfig(**field)


@pytest.mark.parametrize("field", [dict(lora_dropout=1.0), dict(lora_r=0), dict(patience=0)])
def test_config_refuses_a_dropout_of_everything_and_zero_counts(field):
    with pytest.raises(ValueError, match=next(iter(field))):
        FinetuneConfig(**field)


@pytest.mark.parametrize("field", ["lr", "weight_decay"])
def test_config_refuses_an_infinite_rate_or_decay(field):
    """lr=inf passed the > 0 check and was refused only once training had run with it, the
    model and data loaded, as a diverged training loss."""
    with pytest.raises(ValueError, match=f"'{field}' must be < inf"):
        FinetuneConfig(**{field: math.inf})


def test_memory_training_refuses_a_share_of_no_examples():
    from automr.recommenders.finetune_config import MemoryTraining

    with pytest.raises(ValueError, match="share"):
        MemoryTraining(share=0.0)


def test_a_config_without_context_or_memory_records_neither():
    """A run's record of a plain BIGRec config must stay as it was, so its checkpoints
    still resume."""
    assert not {"context", "memory"} & set(FinetuneConfig().to_json())


def test_finetune_lowers_validation_loss_and_reloads(workspace):
    loaded = load_model(str(workspace["model"]), device="cpu")
    run = workspace["root"] / "run"
    record = finetune(loaded, workspace["data"], run, quick_config(), progress=False)
    assert record["best_valid_nll"] < record["initial_valid_nll"]
    best = min(record["evaluations"], key=lambda e: e["valid_nll"])  # best/ is the lowest's
    assert (record["best_valid_nll"], record["best_step"]) == (best["valid_nll"], best["step"])
    with warnings.catch_warnings():  # peft's call of a name transformers 5 deprecates is ours
        warnings.simplefilter("error", FutureWarning)
        tuned = FinetunedRun.open(run).load(device="cpu")
    assert tuned.fingerprint() != loaded.fingerprint()
    with pytest.raises(AutomrError, match="already holds a finished"):
        finetune(loaded, workspace["data"], run, quick_config(), progress=False)
    # a fine-tune given to finetune: peft refused part-way, and taking its LoRA off took the
    # run's own adapter off too, under the tuned fingerprint (the public-API review)
    weights = {name: value.clone() for name, value in tuned.model.state_dict().items()}
    with pytest.raises(AutomrError, match="already carries a LoRA adapter"):
        finetune(tuned, workspace["data"], workspace["root"] / "again", quick_config(),
                 progress=False)
    assert tuned.model.state_dict().keys() == weights.keys()
    assert not (workspace["root"] / "again").exists()


def test_finetune_gives_the_callers_model_back_as_it_was(workspace, tmp_path):
    """LoRA stayed on the model given to finetune (its fingerprint still named the base): a
    grounding after it cached the tuned model's title embeddings under the base model's key,
    and a second fine-tune of it failed ('q_proj, v_proj is not a linear module'). A model in
    train mode came back in eval mode, and the caller's global RNG reseeded with the config's
    seed (the host-program review); loading the run drew from it too (peft's initial LoRA)."""
    loaded = load_model(str(workspace["model"]), device="cpu")
    before = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    for run, seed in (("a", 7), ("b", 8)):
        loaded.model.train(run == "b")
        torch.manual_seed(seed)
        expected = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        finetune(loaded, workspace["data"], tmp_path / run,
                 quick_config(lora_from_layer=2, epochs=1), progress=False)
        assert torch.equal(torch.rand(3), expected)  # the caller's draws, not the config's
        after = loaded.model.state_dict()
        assert after.keys() == before.keys()  # no lora_A / base_layer left
        assert all(torch.equal(after[name], value) for name, value in before.items())
        assert all(p.requires_grad for p in loaded.model.parameters())
        assert all(module.training == (run == "b") for module in loaded.model.modules())
    assert json.loads((tmp_path / "b" / "finetune.json").read_text())["done"]
    torch.manual_seed(9)
    FinetunedRun.open(tmp_path / "b").load(device="cpu")
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(9)))


def test_lora_from_layer_trains_only_upper_layers(workspace):
    loaded = load_model(str(workspace["model"]), device="cpu")
    run = workspace["root"] / "upper-only"
    finetune(loaded, workspace["data"], run, quick_config(lora_from_layer=2, epochs=1),
             progress=False)
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [2, 3]


QWEN3_5_LINEAR = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")
FUSED_QKV = {"phi3": ("qkv_proj",), "gpt_neox": ("query_key_value",),
             "persimmon": ("query_key_value",), "ergo": ("qkv_proj",), "jetmoe": ("kv_proj",),
             "qwen3_5_text": ("q_proj", "v_proj", *QWEN3_5_LINEAR),
             "qwen3_5_moe_text": ("q_proj", "v_proj", *QWEN3_5_LINEAR, "shared_expert_gate"),
             "qwen3_next": ("q_proj", "v_proj", "in_proj_qkvz", "in_proj_ba", "out_proj",
                            "shared_expert_gate"),
             "lfm2": ("q_proj", "v_proj", "in_proj", "out_proj"),
             "lfm2_moe": ("q_proj", "v_proj", "in_proj", "out_proj"),
             "lfm3": ("q_proj", "v_proj", "in_proj", "out_proj"),
             **dict.fromkeys(("deepseek_v3", "glm4_moe_lite", "minicpm3", "youtu"),
                             ("q_b_proj", "kv_b_proj")),
             **dict.fromkeys(("deepseek_v2", "sarvam_mla"), ("q_proj", "kv_b_proj")),
             "mamba2": ("in_proj",),
             **dict.fromkeys(("mamba", "falcon_mamba"), ("in_proj", "x_proj"))}
"""Architectures whose layers have no ``q_proj``/``v_proj`` (BIGRec's targets), and theirs;
and Qwen 3.5's, Qwen3-Next's and LFM2's: their linear-attention (LFM2: short convolution)
layers' own linear modules and their mixtures' gate on the shared expert (all tuned here).
Multi-head latent attention's queries come out of ``q_b_proj`` (``q_proj`` without query
compression), its values (and keys) out of ``kv_b_proj``. Mamba's and Mamba2's layers have no
attention: their mixers' input projections (Mamba1's ``x_proj`` too; peft refuses ``out_proj``
on Mamba types, and Mamba1 reads ``dt_proj``'s weight, never calling it)."""


SLOW_BACKWARD = ("mamba", "falcon_mamba", "ergo")


@pytest.mark.parametrize("arch", [arch for arch in TINY_ARCHITECTURES if arch != "llama"])
def test_every_supported_architecture_fine_tunes_from_a_layer_and_stays_exact(workspace,
                                                                               tmp_path, arch):
    """LoRA on the upper layers only (the module names match), the loss falls, and the reloaded
    run's split still equals its full forward."""
    loaded = load_model(str(save_tiny_model(tmp_path / "model", arch)), device="cpu")
    targets = FUSED_QKV.get(arch, FinetuneConfig().target_modules)
    # 4 steps, not 16, where a CPU backward is slow (Mamba's sequential scan, Ergo's experts)
    steps = dict(max_train_samples=8, eval_every=2) if arch in SLOW_BACKWARD else {}
    record = finetune(loaded, workspace["data"], tmp_path / "run",
                      quick_config(lora_from_layer=2, target_modules=targets, **steps),
                      progress=False)
    assert record["best_valid_nll"] < record["initial_valid_nll"]
    config = json.loads((tmp_path / "run" / "best" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [2, 3] and set(config["target_modules"]) == set(targets)
    tuned = FinetunedRun.open(tmp_path / "run").load(device="cpu")
    ids = torch.tensor([[5, 9, 40, 7, 12]])
    mask = torch.ones_like(ids)
    llm = HFSplitLLM(tuned.model)
    with torch.no_grad():
        full = tuned.model(input_ids=ids).logits
        assert torch.allclose(llm.upper(llm.lower(ids, mask, 2)), full, atol=1e-5)


def test_lora_targets_are_the_linear_modules_of_every_tuned_layer(workspace, tmp_path):
    """A Qwen3-MoE with a dense MLP in layer 3 only (``mlp_only_layers``): its ``down_proj`` is
    listed (only the first tuned layer was looked at). peft adapts the experts' fused
    ``down_proj`` weights of every layer, ignoring ``layers_to_transform``: LoRA in the layers
    under the split, which must stay the base model's, is refused, naming where."""
    from automr.llm.loading import describe_model
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_model(tiny_config("qwen3_moe", 4, mlp_only_layers=[3])).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    assert "down_proj" in describe_model(str(folder))["linear_modules"].split(",")
    loaded = load_model(str(folder), device="cpu")
    with pytest.raises(AutomrError) as refused:
        finetune(loaded, workspace["data"], tmp_path / "run",
                 quick_config(lora_from_layer=2, lora_dropout=0.0,
                              target_modules=("q_proj", "down_proj")), progress=False)
    assert not any("lora_" in name for name, _ in loaded.model.named_parameters())
    assert str(refused.value).startswith(
        "LoRA target(s) q_proj, down_proj put adapters below layer 2 (model.layers.0.mlp."
        "experts, model.layers.1.mlp.experts): peft adapts a mixture of experts' weights")
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.parametrize("arch", ["gemma3", "gemma4", "mistral3"])
def test_lora_beside_a_vision_tower_tunes_the_language_model_only(arch):
    """Gemma 3 4B-27B hold their language model beside a SigLIP vision tower whose layers have
    q/k/v_proj too: layers_to_transform's indexes matched the tower's layers as well (LoRA in
    vision layers 1 and 2 here). Only the language model's tuned layers get adapters, and
    :func:`lora_below` names an adapter in the tower (it read any ``.layers.N``). Ministral 3
    (``mistral3``) has a Pixtral tower with layers of q/k/v_proj likewise, Gemma 4 its own
    (its global layers, whose keys are the values, have no v_proj)."""
    from automr.llm.loading import LoadedModel
    from automr.recommenders.lora import lora_below, lora_model
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    local = dict(layer_types=["sliding_attention"] * 2 + ["full_attention"])
    loaded = LoadedModel(model=tiny_model(tiny_config(arch, 3, **(
        local if arch == "gemma4" else {}))), tokenizer=tiny_tokenizer(), name="tiny")
    tuned = lora_model(loaded, FinetuneConfig(lora_from_layer=1))
    adapted = {name.split(".lora_")[0].removeprefix("base_model.model.")
               for name, _ in tuned.named_parameters() if ".lora_" in name}
    names = {name for name, _ in loaded.model.named_modules()}
    assert adapted == {f"model.language_model.layers.{layer}.self_attn.{kind}_proj"
                       for layer in (1, 2) for kind in "qv"} & names
    assert "model.language_model.layers.1.self_attn.q_proj" in adapted
    assert lora_below(tuned, 1) == []
    tower = loaded.model.model.vision_tower
    assert any(re.search(r"layers\.1\.\w+\.q_proj$", name) for name, _ in tower.named_modules())
    if arch == "gemma4":  # its tower's q_proj wraps a linear: peft refuses it outright
        return
    # adapters in the tower's layers 1 and 2 (LoRA kept to layers 1.. by index alone) lie
    # outside the decoder's layers: lora_below names them, though their index is >= 1
    from peft import LoraConfig, get_peft_model

    from automr.llm.loading import without_peft_deprecation

    with without_peft_deprecation():
        everywhere = get_peft_model(
            tiny_model(tiny_config(arch, 3)),
            LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[1, 2]))
    outside = lora_below(everywhere, 1)
    assert outside and all(".vision_tower." in name for name in outside), outside


def test_a_router_that_subclasses_linear_is_no_lora_target(workspace, tmp_path):
    """Phi-3.5-MoE's ``router`` is an ``nn.Linear`` whose forward returns routing weights and
    experts: it was listed as a LoRA target, and tuning it failed at the first forward with a
    raw AttributeError from peft. It is not listed, and naming it is a one-line refusal."""
    from automr.llm.loading import describe_model

    folder = save_tiny_model(tmp_path / "model", "phimoe")
    assert describe_model(str(folder))["linear_modules"] == "k_proj,o_proj,q_proj,v_proj"
    with pytest.raises(AutomrError, match="LoRA target router is not a linear module"):
        finetune(load_model(str(folder), device="cpu"), workspace["data"], tmp_path / "run",
                 quick_config(lora_from_layer=2, target_modules=("q_proj", "router")),
                 progress=False)


@pytest.mark.parametrize("arch", ["glm4_moe", "ernie4_5_moe", "exaone_moe", "qwen3_next",
                                  "deepseek_v2", "sarvam_mla"])
@pytest.mark.parametrize("targets, dropout, layer, expected", [
    (("gate_proj",), 0.0, 0, "peft refused LoRA target(s) gate_proj on this {arch} model: "
                             "Cannot convert PEFT target(s) gate_proj without also targeting "
                             "up_proj"),
    (("q_proj", "down_proj"), 0.05, 0, "peft refused LoRA target(s) q_proj, down_proj on this "
                                       "{arch} model: lora.ParamWrapper does not work with "
                                       "lora_dropout != 0"),
    (("q_proj", "down_proj"), 0.0, 2, "Leave down_proj out of --lora-targets"),
])
def test_lora_on_an_experts_projection_name_is_one_line(arch, targets, dropout, layer,
                                                         expected):
    """Mixtures of experts with dense or shared MLPs list gate_proj, up_proj and down_proj
    among their layers' linear modules (``model info`` does), but peft takes these names for
    the experts' fused weights too: what peft refuses is one line naming the targets (it was
    peft's raw ValueError), and LoRA it puts below the split says which target to leave out
    (it advised names that include that very target)."""
    from automr.llm.loading import LoadedModel
    from automr.llm.split import layer_linear_modules
    from automr.recommenders.lora import lora_model
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    loaded = LoadedModel(model=tiny_model(tiny_config(arch, 4)), tokenizer=tiny_tokenizer(),
                         name="tiny")
    assert {"gate_proj", "up_proj", "down_proj"} <= set(layer_linear_modules(loaded.model))
    modules = {name: type(module) for name, module in loaded.model.named_modules()}
    trainable = [p.requires_grad for p in loaded.model.parameters()]  # ernie's bias: frozen
    with pytest.raises(AutomrError, match=re.escape(expected.format(arch=arch))):
        lora_model(loaded, FinetuneConfig(lora_from_layer=layer, lora_dropout=dropout,
                                          target_modules=targets))
    # the caller's model as it was, to try again: peft's refusal part-way left LoRA layers on
    # it, and the refusal of adapters below the split left every weight frozen
    assert {name: type(module) for name, module in loaded.model.named_modules()} == modules
    assert [p.requires_grad for p in loaded.model.parameters()] == trainable
    assert not hasattr(loaded.model, "peft_config") and not loaded.model.training


@pytest.mark.parametrize("arch, absent", [("deepseek_v3", "q_proj, v_proj"),
                                           ("deepseek_v2", "v_proj")])
def test_bigrec_targets_on_latent_attention_are_refused_naming_its_modules(arch, absent):
    """Multi-head latent attention (DeepSeek V2 and V3, Kimi K2, GLM-4.7-Flash, MiniCPM3) has
    no ``v_proj``, and no ``q_proj`` where it compresses its queries (V3; V2-Lite does not):
    BIGRec's default targets are refused in one line that names the layers' linear modules,
    before any adapter is attached; its own (``q_b_proj,kv_b_proj``) tune the upper layers."""
    from automr.llm.loading import LoadedModel
    from automr.recommenders.lora import lora_below, lora_layers, lora_model
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    loaded = LoadedModel(model=tiny_model(tiny_config(arch, 4)), tokenizer=tiny_tokenizer(),
                         name="tiny")
    with pytest.raises(AutomrError) as refused:
        lora_model(loaded, FinetuneConfig(lora_from_layer=2))
    message = str(refused.value)
    assert message.startswith(f"LoRA target {absent} is not a linear module") and (
        "\n" not in message)
    assert "kv_a_proj_with_mqa, kv_b_proj, o_proj" in message
    assert not any("lora_" in name for name, _ in loaded.model.named_parameters())
    targets = FUSED_QKV[arch]
    tuned = lora_model(loaded, FinetuneConfig(lora_from_layer=2, target_modules=targets))
    assert lora_layers(tuned) == [2, 3] and lora_below(tuned, 2) == []


def adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


# two micro-batches per step, warmup then cosine decay, clipping, LoRA dropout drawing from the RNG
LOOP = dict(max_train_samples=16, batch_size=2, grad_accum=2, epochs=2, warmup_steps=2,
            schedule="cosine", max_grad_norm=0.5, eval_every=3)


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    """One uninterrupted run per LoRA placement (0: all layers; 2: cached lower states)."""
    runs = {}
    for layer in (0, 2):
        folder = workspace["root"] / f"uninterrupted-{layer}"
        record = finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"],
                          folder, quick_config(**LOOP, lora_from_layer=layer), progress=False)
        runs[layer] = (folder, record)
    return runs


@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize(("stop_after", "checkpoint_every", "resumes_at"),
                         [(1, 1, 1), (5, 1, 5), (5, None, 3)])
def test_resume_after_any_step_is_bit_identical(workspace, uninterrupted, monkeypatch, layer,
                                                stop_after, checkpoint_every, resumes_at):
    """Ctrl-C right after optimizer step ``stop_after`` (after its checkpoint with
    checkpoint_every=1; with None the last checkpoint is the validation's at step 3, so the
    rerun repeats steps 4-5), then the same command again."""
    import automr.recommenders.finetune as ft

    data, model = workspace["data"], str(workspace["model"])
    config = quick_config(**LOOP, lora_from_layer=layer, checkpoint_every=checkpoint_every)
    name = "_save_checkpoint" if checkpoint_every else "train_step"
    original, steps = getattr(ft, name), {"n": 0}

    def interrupted(*args, **kwargs):
        result = original(*args, **kwargs)
        steps["n"] = args[2]["step"] if checkpoint_every else steps["n"] + 1
        if steps["n"] == stop_after:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(ft, name, interrupted)
    run = workspace["root"] / f"resumed-{layer}-{stop_after}-{checkpoint_every}"
    with pytest.raises(KeyboardInterrupt):
        finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    monkeypatch.setattr(ft, name, original)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == resumes_at
    resumed = finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    folder, full = uninterrupted[layer]
    assert resumed["step"] == full["step"] == 8
    assert resumed["train_losses"] == full["train_losses"]  # floats compared exactly
    assert resumed["evaluations"] == full["evaluations"]
    for part in ("checkpoint", "best"):
        ours, theirs = adapter(run / part), adapter(folder / part)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_run_killed_while_its_checkpoint_was_replaced_resumes_from_the_older_one(
        workspace, uninterrupted, monkeypatch):
    """A kill between moving checkpoint/ aside and renaming the new one into place (atomic_dir)
    left no checkpoint/ but a whole older one beside it; the rerun started again from step 0
    (here 8 steps instead of 3). It now puts the older one back and resumes from it."""
    import os
    import subprocess
    import sys

    import automr.recommenders.finetune as ft
    from automr.storage import HOST, LOCK_FILE

    data, model = workspace["data"], str(workspace["model"])
    config = quick_config(**LOOP, lora_from_layer=2, checkpoint_every=1)
    original, steps = ft._save_checkpoint, {"n": 0}

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)
        if args[2]["step"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_checkpoint", interrupted)
    run = workspace["root"] / "killed-while-replacing"
    with pytest.raises(KeyboardInterrupt):
        finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.rename(run / "checkpoint", run / f".checkpoint.replaced-{HOST}-{dead}")
    monkeypatch.setattr(ft, "_save_checkpoint", original)
    train_step = ft.train_step

    def counted(*args, **kwargs):
        steps["n"] += 1
        return train_step(*args, **kwargs)

    monkeypatch.setattr(ft, "train_step", counted)
    resumed = finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    assert steps["n"] == 3  # steps 6-8
    full = uninterrupted[2][1]
    assert resumed["train_losses"] == full["train_losses"]
    assert resumed["evaluations"] == full["evaluations"]
    assert sorted(p.name for p in run.iterdir()  # nothing left aside; the lock is its own
                  if p.name != LOCK_FILE) == ["best", "checkpoint", "finetune.json"]


@pytest.mark.parametrize("cut", ["before", "after"])
def test_best_holds_the_adapter_the_record_names_after_a_kill_at_a_new_best(
        workspace, monkeypatch, cut):
    """A new best's best/ was written before its checkpoint: killed between the two, the rerun
    resumed from the older checkpoint, and where its own validation of that step came out no
    better (another number of processes, a GPU's rounding; here made worse), the finished run's
    best/ held the killed run's adapter while finetune.json named an earlier step. Now the
    checkpoint is written first and a resume from a new best's checkpoint (re)writes best/ from
    it. Cut at the first new best after the first validation, before or after its checkpoint."""
    import automr.recommenders.finetune as ft

    data, model = workspace["data"], str(workspace["model"])
    config = quick_config(**LOOP, lora_from_layer=2)
    run = workspace["root"] / f"killed-at-a-best-{cut}"
    original, saved = ft._save_checkpoint, {}

    def recorded(*args, **kwargs):  # the adapter of each checkpointed step
        record = args[2]
        new_best = record["best_step"] == record["step"] > config.eval_every
        if cut == "before" and new_best and not saved.get("cut"):
            saved["cut"] = True
            raise KeyboardInterrupt
        original(*args, **kwargs)
        saved[record["step"]] = adapter(run / "checkpoint")
        if cut == "after" and new_best and not saved.get("cut"):
            saved["cut"] = True
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_checkpoint", recorded)
    with pytest.raises(KeyboardInterrupt):
        finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    mean_nll = ft.mean_nll
    monkeypatch.setattr(ft, "mean_nll", lambda *a, **k: mean_nll(*a, **k) + 1.0)  # no new best
    record = finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    best = adapter(run / "best")
    named = saved[record["best_step"]]
    assert best.keys() == named.keys()
    assert all(torch.equal(best[k], named[k]) for k in best)


def test_a_changed_config_is_refused_on_resume(workspace, cut_at_first_checkpoint):
    data, model = workspace["data"], str(workspace["model"])
    run = workspace["root"] / "changed"
    with cut_at_first_checkpoint():
        finetune(load_model(model, device="cpu"), data, run, quick_config(**LOOP), progress=False)
    for change, says in ((dict(grad_accum=1), f"config.grad_accum was {LOOP['grad_accum']}, "
                                               f"now 1"),
                         (dict(schedule="linear"), "config.schedule was 'cosine', now 'linear'"),
                         (dict(max_grad_norm=1.0), "config.max_grad_norm was 0.5, now 1.0")):
        with pytest.raises(AutomrError, match=f"made with other settings \\({re.escape(says)}\\)"):
            finetune(load_model(model, device="cpu"), data, run,
                     quick_config(**{**LOOP, **change}), progress=False)
    # the model's dtype too: a run cut in float32 does not go on in bfloat16
    with pytest.raises(AutomrError, match="dtype was 'float32', now 'bfloat16'"):
        finetune(load_model(model, device="cpu", dtype="bfloat16"), data, run,
                 quick_config(**LOOP), progress=False)


def test_finetune_never_writes_beside_another_artifact(workspace, tmp_path):
    """A folder holding another artifact's files (here a prepared dataset) is refused before
    any work; a later command that replaces that folder would take the fine-tune with it."""
    import shutil

    folder = tmp_path / "dataset-copy"
    shutil.copytree(workspace["data"].path, folder)
    with pytest.raises(AutomrError, match=r"holds other files .*write the fine-tune into a new"):
        finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"], folder,
                 quick_config(), progress=False)
    assert not (folder / "checkpoint").exists()


def test_a_second_fine_tune_into_a_folder_in_use_is_refused(workspace, tmp_path,
                                                            monkeypatch):
    """A fine-tune started while another ran into the same --out, before the first had written
    a checkpoint, found nothing to resume or refuse: it trained with its own settings (another
    --lr) into the same checkpoint/, best/ and finetune.json as the first."""
    import automr.recommenders.finetune as module

    attach, refusals = module.lora_model, []

    def second_starts(*args, **kwargs):  # the first has passed its checks
        if not refusals:
            refusals.append("started")
            try:
                finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"],
                         tmp_path / "run", quick_config(lr=1e-2, epochs=1), progress=False)
                refusals.append("none")
            except AutomrError as error:
                refusals.append(str(error))
        return attach(*args, **kwargs)

    monkeypatch.setattr(module, "lora_model", second_starts)
    record = finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"],
                      tmp_path / "run", quick_config(), progress=False)
    assert "is in use by another automr command (process" in refusals[1]
    assert record["config"]["lr"] == 5e-3


@pytest.mark.parametrize("split", ["train", "valid"])
def test_a_split_without_samples_is_refused(workspace, tmp_path, monkeypatch, split):
    """No validation samples gave a validation NLL of 0.0 that never improved: the run stopped
    early after --patience validations and kept the first one's adapter as best/, silently."""
    data = workspace["data"]
    samples = type(data).samples
    monkeypatch.setattr(type(data), "samples",
                        lambda self, which: [] if which == split else samples(self, which))
    name = {"train": "training", "valid": "validation"}[split]
    with pytest.raises(AutomrError, match=f"the dataset has no {name} samples"):
        finetune(load_model(str(workspace["model"]), device="cpu"), data, tmp_path / "run",
                 quick_config(patience=1, eval_every=1), progress=False)
    assert not (tmp_path / "run" / "best").exists()


def test_a_checkpoint_of_an_older_version_resumes(workspace, cut_at_first_checkpoint):
    """state.json without the loop's newer fields (and rng.pt with the CPU state alone) resumes
    as the defaults; run options (cache_lower, checkpoint_every) may change on resume."""
    import automr.recommenders.finetune as ft

    data, model = workspace["data"], str(workspace["model"])
    config = quick_config(epochs=1, lora_from_layer=2)
    run = workspace["root"] / "older"
    with cut_at_first_checkpoint():
        finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    state_file = run / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    for key in ft.ADDED_FIELDS:
        del state["config"][key]
    del state["train_losses"], state["dtype"]
    state_file.write_text(json.dumps(state))
    rng = run / "checkpoint" / "rng.pt"
    torch.save(torch.load(rng, weights_only=True)["cpu"], rng)
    record = finetune(load_model(model, device="cpu"), data, run,
                      quick_config(epochs=1, lora_from_layer=2, cache_lower=False),
                      progress=False)
    assert record["step"] == 8 and record["train_losses"][:4] == [None] * 4
    written = json.loads((run / "finetune.json").read_text())["config"]
    assert written["grad_accum"] == 1 and written["cache_lower"] is False
    assert FinetunedRun.open(run).lora_from_layer == 2


def same_run(a: dict, b: dict, folder_a, folder_b, tolerance: float) -> None:
    assert a["step"] == b["step"]
    assert a["train_losses"] == pytest.approx(b["train_losses"], abs=tolerance, rel=0)
    assert [e["valid_nll"] for e in a["evaluations"]] == pytest.approx(
        [e["valid_nll"] for e in b["evaluations"]], abs=tolerance, rel=0)
    ours, theirs = adapter(folder_a / "checkpoint"), adapter(folder_b / "checkpoint")
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=tolerance, rtol=0)


def test_cached_lower_states_equal_the_plain_path(workspace):
    """Same batches, per-step losses and final adapter within float rounding; the cache's size
    is examples x tokens x hidden x 4 bytes."""
    data, model = workspace["data"], str(workspace["model"])
    runs = {}
    for cached in (True, False):
        folder = workspace["root"] / f"cache-{cached}"
        config = quick_config(**LOOP, lora_from_layer=2, cache_lower=cached)
        runs[cached] = folder, finetune(load_model(model, device="cpu"), data, folder, config,
                                        progress=False)
    (cached_dir, cached), (plain_dir, plain) = runs[True], runs[False]
    same_run(cached, plain, cached_dir, plain_dir, 1e-5)
    assert "lower_cache_bytes" not in plain
    loaded = load_model(model, device="cpu")
    tokens = sum(len(ex.input_ids) for split, n in (("train", 16), ("valid", 8))
                 for ex in ft_examples(loaded, data, split, n))
    assert cached["lower_cache_bytes"] == tokens * loaded.model.config.hidden_size * 4


def test_cached_lower_states_keep_the_states_dtype_ergos_float32_in_bfloat16():
    """Ergo keeps its residual stream in float32 in a bfloat16 model (its embeddings and norms
    stay float32, its head is bfloat16): the cache kept the states in the head's dtype, so
    the upper half trained on states rounded to bfloat16, not the model's own."""
    from transformers import AutoModelForCausalLM

    from automr.testing.tiny import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("ergo"), attn_implementation="sdpa",
                                             dtype=torch.bfloat16).eval()
    llm = HFSplitLLM(model)
    assert llm.dtype == torch.bfloat16
    examples = [TokenizedExample(prompt_ids=(5, 9, 40, 7), target_ids=(12, 3)),
                TokenizedExample(prompt_ids=(8, 11), target_ids=(30,))]
    cache = LowerCache.build(llm, examples, 2, batch_size=2, pad_id=2)
    state = cache.state([0, 1], torch.device("cpu"))
    batch = collate(examples, 2)
    with torch.no_grad():
        expected = llm.lower(batch.input_ids, batch.mask, 2)
    assert cache.hidden.dtype == torch.float32
    torch.testing.assert_close(state.hidden[state.mask], expected.hidden[expected.mask],
                               rtol=0, atol=0)


def ft_examples(loaded, data, split: str, n: int):
    from automr.data.subsets import seeded_subset
    from automr.recommenders.finetune import encode_samples

    return encode_samples(loaded, data, seeded_subset(data.samples(split), n, 0))


def test_accumulation_equals_one_large_batch(workspace):
    """2 micro-batches of 2 = one batch of 4 (the loss is the mean over all their tokens);
    without dropout both draw nothing from the RNG, so they match within float rounding."""
    data, model = workspace["data"], str(workspace["model"])
    runs = []
    for batch_size, grad_accum in ((2, 2), (4, 1)):
        folder = workspace["root"] / f"accumulate-{batch_size}x{grad_accum}"
        config = quick_config(max_train_samples=16, batch_size=batch_size, grad_accum=grad_accum,
                              lora_dropout=0.0, eval_every=2)
        runs.append((folder, finetune(load_model(model, device="cpu"), data, folder, config,
                                      progress=False)))
    (a_dir, a), (b_dir, b) = runs
    assert a["step"] == 8 and a["tokens"] == b["tokens"]
    same_run(a, b, a_dir, b_dir, 1e-5)


def test_clipping_is_applied_each_step(workspace, monkeypatch):
    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    for norm in (None, 0.25):
        config = quick_config(max_train_samples=8, epochs=1, max_grad_norm=norm)
        finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"],
                 workspace["root"] / f"clip-{norm}", config, progress=False)
    assert seen == [0.25, 0.25]


def test_each_optimizer_step_uses_the_scheduled_learning_rate(workspace, monkeypatch):
    """Step s of the run (over all its epochs) runs at ``lr * lr_factor(s, total, ...)``, the
    rate the optimizer holds when it steps."""
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    config = quick_config(max_train_samples=8, batch_size=2, epochs=2, warmup_steps=2,
                          schedule="linear", eval_every=100)
    finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"],
             workspace["root"] / "schedule", config, progress=False)
    total = 8  # 4 steps of 2 samples per epoch
    assert seen == pytest.approx([config.lr * lr_factor(s, total, 2, "linear")
                                  for s in range(total)])


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_warms_up_then_decays_to_zero(schedule):
    total, warmup = 20, 4
    factors = [lr_factor(s, total, warmup, schedule) for s in range(total)]
    assert factors[:warmup] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    after = factors[warmup:]
    assert after[0] == 1.0 and all(a >= b for a, b in itertools.pairwise(after))
    if schedule == "constant":
        assert set(after) == {1.0}
    else:
        assert 0 < after[-1] < 0.1 and lr_factor(total, total, warmup, schedule) == 0
    if schedule == "cosine":
        assert lr_factor(12, total, warmup, schedule) == pytest.approx(0.5)
    assert lr_factor(0, 1, 0, "cosine") == 1.0 and not math.isnan(lr_factor(5, 5, 5, "linear"))


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_exactly(workspace, monkeypatch, autocast):
    """bf16 / fp16 autocast (fp16 with a loss scaler, saved in the checkpoint): the loss is
    close to float32's, and a run cut after step 2 resumes bit-identical."""
    import automr.recommenders.finetune as ft

    data, model = workspace["data"], str(workspace["model"])
    fields = dict(max_train_samples=8, batch_size=2, epochs=1, eval_every=2, lora_dropout=0.0,
                  lora_from_layer=2, checkpoint_every=1)
    plain = finetune(load_model(model, device="cpu"), data, workspace["root"] / f"fp32-{autocast}",
                     quick_config(**fields), progress=False)
    config = quick_config(**fields, autocast=autocast)
    whole = finetune(load_model(model, device="cpu"), data, workspace["root"] / f"{autocast}-a",
                     config, progress=False)
    assert whole["train_losses"] == pytest.approx(plain["train_losses"], rel=0.05)
    assert whole["train_losses"] != plain["train_losses"]  # it did run in lower precision
    original = ft._save_checkpoint

    def cut(model_, optimizer, record, out, scaler=None):
        original(model_, optimizer, record, out, scaler)
        assert (scaler is not None) == (autocast == "fp16")
        if record["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_checkpoint", cut)
    run = workspace["root"] / f"{autocast}-b"
    with pytest.raises(KeyboardInterrupt):
        finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    monkeypatch.setattr(ft, "_save_checkpoint", original)
    assert (run / "checkpoint" / "scaler.pt").is_file() == (autocast == "fp16")
    resumed = finetune(load_model(model, device="cpu"), data, run, config, progress=False)
    assert resumed["train_losses"] == whole["train_losses"]
    assert resumed["evaluations"] == whole["evaluations"]


def test_the_record_says_how_many_processes_trained_from_which_step():
    """A run resumes on any number of processes; finetune.json keeps each count with the step
    it took over at, not only the last (a record of an older version starts from its count)."""
    record = {"step": 0}
    note_processes(record, 2)
    record["step"] = 40
    note_processes(record, 2)  # resumed on as many: nothing new
    assert record["processes_from_step"] == [[0, 2]] and record["processes"] == 2
    record["step"] = 90
    note_processes(record, 8)
    assert record["processes_from_step"] == [[0, 2], [90, 8]] and record["processes"] == 8
    older = {"step": 12, "processes": 4}
    note_processes(older, 1)
    assert older["processes_from_step"] == [[0, 4], [12, 1]] and older["processes"] == 1


def test_a_diverging_run_stops_in_one_line_and_keeps_its_best_adapter(workspace, tmp_path):
    """A NaN loss went on for every remaining step (the weights are lost with it) and ended
    as a finished fine-tune; a NaN validation NLL was taken for the best and written to
    best/. Now the first non-finite loss ends the run in one line naming the best kept."""
    loaded = load_model(str(workspace["model"]), device="cpu")
    run = tmp_path / "run"
    with pytest.raises(AutomrError, match=r"the training loss at step (\d+) is nan: training "
                                          r"diverged \(learning rate 1e\+08\); best/ holds "
                                          r"step 2's adapter"):
        finetune(loaded, workspace["data"], run, quick_config(
            max_train_samples=16, epochs=1, eval_every=2, lr=1e8, max_grad_norm=1e30),
            progress=False)
    assert not (run / "finetune.json").exists()
    weights = load_file(run / "best" / "adapter_model.safetensors")
    assert all(bool(torch.isfinite(value).all()) for value in weights.values())


@pytest.mark.parametrize(("calls", "message"), [
    (0, "the validation NLL before training is nan: the model's outputs are not finite in "
        "float32"),
    (1, "the validation NLL at step 2 is nan: training diverged .*; no adapter was kept")])
def test_a_nan_validation_is_never_the_best(workspace, tmp_path, monkeypatch, calls, message):
    import automr.recommenders.finetune as ft

    original, seen = ft.mean_nll, []

    def nan_after(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs) if len(seen) <= calls else math.nan

    monkeypatch.setattr(ft, "mean_nll", nan_after)
    run = tmp_path / "run"
    with pytest.raises(AutomrError, match=message):
        finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"], run,
                 quick_config(max_train_samples=8, epochs=1, eval_every=2), progress=False)
    assert not (run / "best").exists() and not (run / "finetune.json").exists()


def test_the_record_names_the_layers_lora_reached(workspace, tmp_path):
    """Qwen 3.5's linear-attention layers have no ``q_proj``/``v_proj``: BIGRec's default
    targets tune its full-attention layers only, which nothing said. The record lists the
    layers that hold LoRA weights, and ``automr finetune`` says when some tuned ones have none."""
    from typer.testing import CliRunner

    from automr.cli.main import app
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_model(tiny_config("qwen3_5_text", 4)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    args = ["finetune", "--data", str(workspace["root"] / "prepared"), "--model", str(folder),
            "--train-samples", "4", "--valid-samples", "2", "--batch-size", "2",
            "--lora-from-layer", "1", "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "finetune.json").read_text())["lora_layers"] == [1, 3]
    assert ("note: LoRA reached 2 of the 3 tuned layers (1, 3); layer 2 has none of the "
            "targets q_proj, v_proj (`automr model info` lists every linear module "
            "--lora-targets may name)") in result.output.replace("\n", " ")
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--lora-targets",
                                      "q_proj,v_proj,in_proj_qkv"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "finetune.json").read_text())["lora_layers"] == [1, 2, 3]
    assert "LoRA reached" not in result.output


@pytest.mark.parametrize("context", [{"kind": "rella", "k": 0}, {"kind": "rella", "kk": 3},
                                     {"kind": "foo"}, "rella", {"kind": "rella", "k": "3"},
                                     {"kind": "trsr", "mode": 5}, {"kind": None}])
def test_a_run_refuses_a_context_it_cannot_read_in_one_line(tmp_path, context):
    """A damaged or foreign context in finetune.json failed evaluate with a raw ValueError,
    TypeError or beartype violation where the run was first used."""
    record = {"model": "m", "model_fingerprint": "a" * 64,
              "config": {"lora_from_layer": 2, "context": context}}
    (tmp_path / "finetune.json").write_text(json.dumps(record))
    with pytest.raises(AutomrError, match=r"finetune.json records a context automr cannot read "
                                          r"\(.+\); run `automr finetune` again$"):
        FinetunedRun.open(tmp_path)
    record["config"]["context"] = {"kind": "rella", "k": 3}
    (tmp_path / "finetune.json").write_text(json.dumps(record))
    assert FinetunedRun.open(tmp_path).context.k == 3


def test_a_run_refuses_a_non_record_and_memories_or_data_it_was_not_made_with(tmp_path):
    """Only the record is read: the checks need no model."""
    from types import SimpleNamespace

    for record in ({"model": "m", "config": {}},  # no model_fingerprint; a config not a dict
                   {"model": "m", "model_fingerprint": "a", "config": []}):
        (tmp_path / "finetune.json").write_text(json.dumps(record))
        with pytest.raises(AutomrError, match="is not a fine-tune record"):
            FinetunedRun.open(tmp_path)
    for key, value in (("model", None), ("model", 3), ("model_fingerprint", None)):  # by
        record = {"model": "m", "model_fingerprint": "a" * 64, "config": {}, key: value}
        (tmp_path / "finetune.json").write_text(json.dumps(record))  # hand: raw TypeErrors
        with pytest.raises(AutomrError, match=rf"is damaged \({key} is {value!r}, not a str"):
            FinetunedRun.open(tmp_path)
    record = {"model": "m", "model_fingerprint": "a" * 64, "data_fingerprint": "d",
              "config": {"lora_from_layer": 2}}
    (tmp_path / "finetune.json").write_text(json.dumps(record))
    run = FinetunedRun.open(tmp_path)
    run.check_memory("a" * 64, 2)  # the adapter starts at the memory's layer: its keys hold
    with pytest.raises(AutomrError, match=r"changes layers 2\.\.2 below it"):
        run.check_memory("a" * 64, 3)
    with pytest.raises(AutomrError, match="built with another model"):
        run.check_memory("b" * 64, 2)
    run.check_dataset(None, "d")
    with pytest.raises(AutomrError, match="tuned on another dataset"):
        run.check_dataset(SimpleNamespace(path="elsewhere"), "e")
    run.check_plain()


def test_a_large_seed_trains(workspace):
    """The batch order's seed (seed * 1000 + epoch) left torch's 64 bits for any --seed over
    about 1.8e16: a raw overflow at the first step, after all the set-up. Derived seeds wrap
    as torch wraps a negative one, so every seed that worked draws what it drew."""
    record = finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"],
                      workspace["root"] / "large-seed",
                      quick_config(epochs=1, max_train_samples=8, eval_every=2,
                                   seed=2 * 10**16), progress=False)
    assert record["step"] == 2 and record["done"]
    wrapped, negative = torch.Generator().manual_seed(2**64 - 5000), torch.Generator()
    assert torch.equal(torch.randperm(9, generator=wrapped),
                       torch.randperm(9, generator=negative.manual_seed(-5 * 1000)))


def test_a_checkpoint_of_more_gpus_resumes_on_fewer(tmp_path, monkeypatch):
    """rng.pt holds one CUDA state per GPU the run saw: resumed where fewer are visible (the
    documented resume with another number of processes) it was a raw IndexError (the GPU
    review). The states of the GPUs there are restored; simulated with CUDA calls recorded."""
    from automr.recommenders import finetune as finetune_module

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter])
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    states = [torch.Generator().manual_seed(seed).get_state() for seed in (1, 2)]
    rng = {"cpu": torch.get_rng_state(), "cuda": states}  # saved where 2 GPUs were seen
    torch.save({**rng, "ranks": [rng]}, tmp_path / "rng.pt")
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((device, state)))

    def every_state(states):  # torch's, with one GPU: its second index does not exist
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_state)
    finetune_module._restore(optimizer, None, tmp_path)
    assert len(restored) == 1 and restored[0][0] == 0
    assert torch.equal(restored[0][1], states[0])
