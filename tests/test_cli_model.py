"""``automr model fetch|info`` through Typer's CliRunner."""

import json
import re
import shutil
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

import automr.llm.loading as loading
from automr.cli.main import app
from automr.errors import AutomrError
from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

runner = CliRunner()


def info_lines(*args: str) -> dict[str, str]:
    """``automr model info ARGS``'s lines by their first word (it must succeed)."""
    result = runner.invoke(app, ["model", "info", *args])
    assert result.exit_code == 0, result.output
    return dict(line.split(None, 1) for line in result.output.splitlines() if line.strip())


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model(tiny_config(num_layers=4)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_info_on_a_local_folder(tiny_folder):
    lines = info_lines(str(tiny_folder))
    assert lines["layers"] == "4"
    assert lines["hidden_size"] == "32"
    assert len(lines["fingerprint"]) == 64
    assert lines["layer_split"] == "yes" and lines["sliding_window"] == "none"
    assert lines["linear_modules"] == "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj"


def test_info_reads_no_weight_and_says_what_a_load_gives(tiny_folder, monkeypatch):
    """``model info`` builds the model on the meta device (a 7B model would need 28 GB loaded):
    it says what :func:`load_model` with the same options gives, from the config and the
    weight files' digests alone."""
    loaded = loading.load_model(str(tiny_folder), device="cpu", dtype="bfloat16")
    monkeypatch.setattr(loading, "AutoModelForCausalLM", SimpleNamespace(
        from_config=loading.AutoModelForCausalLM.from_config))  # no from_pretrained
    lines = info_lines(str(tiny_folder), "--dtype", "bfloat16")
    assert lines["parameters"] == f"{sum(p.numel() for p in loaded.model.parameters()):,}"
    assert lines["fingerprint"] == loaded.fingerprint()
    assert lines["architecture"] == type(loaded.model).__name__
    assert (lines["dtype"], lines["device"]) == ("bfloat16", "cpu")


def test_info_on_a_hub_id_downloads_no_weight(tiny_folder, tmp_path, monkeypatch):
    """A hub id's config and tokenizer are enough: its weights are not fetched for ``info``
    (the fingerprint waits for them); once cached, the fingerprint is the one every load records."""
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in tiny_folder.iterdir():  # what fetching the config and tokenizer leaves
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, snapshot)
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    config = loading.AutoConfig
    monkeypatch.setattr(loading, "AutoConfig", SimpleNamespace(
        from_pretrained=lambda name, **kw: config.from_pretrained(snapshot)))
    tokenizer = loading.AutoTokenizer
    monkeypatch.setattr(loading, "AutoTokenizer", SimpleNamespace(
        from_pretrained=lambda name, **kw: tokenizer.from_pretrained(snapshot)))
    lines = info_lines("org/tiny")
    assert lines["fingerprint"].startswith("unknown until its weights are downloaded")
    assert lines["layers"] == "4" and lines["layer_split"] == "yes"
    shutil.copytree(tiny_folder, snapshot, dirs_exist_ok=True)  # what a load downloads
    lines = info_lines("org/tiny")
    assert lines["fingerprint"] == loading.load_model(str(snapshot), device="cpu").fingerprint()


def test_a_hub_model_transformers_cannot_build_is_one_line(tiny_folder, tmp_path, monkeypatch):
    """A hub id whose config names a model type this transformers does not know (a newer
    architecture) failed as transformers' ValueError traceback, in ``info`` and every load; a
    local folder's was one line already."""
    snapshot = tmp_path / "hub" / "models--org--odd" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_folder, snapshot)
    config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    (snapshot / "config.json").write_text(json.dumps({**config, "model_type": "foobar_lm"}),
                                          encoding="utf-8")
    (tmp_path / "hub" / "models--org--odd" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--odd" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "hub_unreachable", lambda name: None)  # the hub answers
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        real = getattr(loading, name)
        monkeypatch.setattr(loading, name, SimpleNamespace(
            from_pretrained=lambda source, *args, real=real, **kw: real.from_pretrained(
                snapshot, *args, **kw), from_config=getattr(real, "from_config", None)))
    result = runner.invoke(app, ["model", "info", "org/odd"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: could not load model 'org/odd': The checkpoint you "
                                    "are trying to load has model type `foobar_lm`")
    with pytest.raises(AutomrError, match=r"^could not load model 'org/odd': The checkpoint"):
        loading.load_model("org/odd", device="cpu")


def test_info_says_why_the_split_refuses_a_model_and_which_modules_lora_can_target(tmp_path):
    """``model info`` answers "can I use this model, and with which --lora-targets?" before a
    fine-tune fails: a type the split lacks is named, a fused projection is listed."""
    from transformers import GPT2Config

    gpt2 = tmp_path / "gpt2"
    tiny_model(GPT2Config(vocab_size=259, n_embd=32, n_layer=2, n_head=4)).save_pretrained(gpt2)
    tiny_tokenizer().save_pretrained(gpt2)
    phi3 = tmp_path / "phi3"
    tiny_model(tiny_config("phi3")).save_pretrained(phi3)
    tiny_tokenizer().save_pretrained(phi3)
    lines = {folder.name: info_lines(str(folder)) for folder in (gpt2, phi3)}
    assert lines["gpt2"]["layer_split"].startswith("no: model type 'gpt2' is not supported")
    assert lines["gpt2"]["linear_modules"] == "unknown"
    assert lines["gpt2"]["sliding_window"] == "unknown"  # 'none' would say every layer sees all
    assert lines["phi3"]["layer_split"] == "yes"
    assert lines["phi3"]["linear_modules"] == "down_proj,gate_up_proj,o_proj,qkv_proj"


def test_info_on_gemma3_with_a_vision_tower_reads_its_language_model(tmp_path):
    """Gemma 3 4B-27B's config.json holds its language model's sizes in text_config (beside
    a vision tower's): model info read the top-level config, which has none of them."""
    from automr.testing.synthetic import save_tiny_model

    gemma3 = save_tiny_model(tmp_path / "gemma3", "gemma3", num_layers=3)
    lines = info_lines(str(gemma3))
    assert lines["model_type"] == "gemma3 (language model: gemma3_text)"
    assert (lines["layers"], lines["hidden_size"], lines["vocab_size"]) == ("3", "32", "259")
    assert lines["layer_split"] == "yes" and lines["sliding_window"] == "4"


def test_info_on_gemma4_reads_heads_by_layer_and_names_what_the_split_refuses(tmp_path):
    """Gemma 4's config varies key/value heads by layer and refuses to give one value: model
    info failed on it. It says each value; an E2B/E4B-shaped model (per-layer embeddings)
    loads and is described, its split refused with the reason."""
    from automr.testing.synthetic import save_tiny_model

    gemma4 = save_tiny_model(tmp_path / "gemma4", "gemma4", num_layers=3)
    lines = info_lines(str(gemma4))
    assert lines["model_type"] == "gemma4 (language model: gemma4_text)"
    assert lines["kv_heads"] == "1 or 2" and lines["attention_heads"] == "4"
    assert lines["layer_split"] == "yes" and lines["sliding_window"] == "4"
    folder = tmp_path / "e2b"
    tiny_model(tiny_config("gemma4_text", 2, hidden_size_per_layer_input=4)).save_pretrained(
        folder)
    tiny_tokenizer().save_pretrained(folder)
    lines = info_lines(str(folder))
    assert lines["layer_split"].startswith("no: this gemma4_text model feeds every layer "
                                           "per-layer embeddings")


def test_ministral3_checkpoints_load_and_are_described(tmp_path):
    """Ministral 3's hub checkpoints are ``mistral3`` (a language model beside a vision
    tower), a type transformers' AutoModelForCausalLM does not build: they failed to load
    ("Unrecognized configuration class") though the split runs them. They load as their
    image-text-to-text class, and model info reads their language model."""
    from automr.llm.loading import load_model
    from automr.testing.synthetic import save_tiny_model

    folder = save_tiny_model(tmp_path / "ministral3", "mistral3", num_layers=3)
    loaded = load_model(str(folder), device="cpu")
    assert type(loaded.model).__name__ == "Mistral3ForConditionalGeneration"
    lines = info_lines(str(folder))
    assert lines["model_type"] == "mistral3 (language model: ministral3)"
    assert (lines["layers"], lines["hidden_size"], lines["vocab_size"]) == ("3", "32", "259")
    assert lines["layer_split"] == "yes" and lines["sliding_window"] == "none"


def test_info_says_none_where_a_window_is_set_but_no_layer_slides(tmp_path):
    """A config may set ``sliding_window`` while every layer is a full-attention one
    (``layer_types``: VaultGemma's, Qwen's below ``max_window_layers``): the split gives no
    layer a window, and model info said the window all the same ("8"), not ``none``."""
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    folder = tmp_path / "vaultgemma"
    config = tiny_config("vaultgemma", 3, sliding_window=8, layer_types=["full_attention"] * 3)
    tiny_model(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    lines = info_lines(str(folder))
    assert lines["layer_split"] == "yes" and lines["sliding_window"] == "none"


@pytest.mark.parametrize("name", ["ABS", "./w/nope", "w/nope", "../here/w/nope"])
def test_missing_model_folder_is_a_one_line_error(tmp_path, monkeypatch, name):
    """A name that can only be a path (absolute, ./, ../, or under a folder that exists here)
    is not asked of the hub: it names a missing folder."""
    (tmp_path / "here" / "w").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    missing = tmp_path / "nope" if name == "ABS" else tmp_path / "here" / "w" / "nope"
    result = runner.invoke(app, ["model", "info", str(missing) if name == "ABS" else name])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no model folder at {missing}"


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_id_with_no_folder_and_no_hub_is_a_one_line_error(tmp_path, monkeypatch, offline):
    """Not a folder here, not in the hub cache and the hub is unreachable: said at once (no
    download retries), naming both."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    monkeypatch.setattr(loading, "AutoTokenizer", None)  # nothing is downloaded
    result = runner.invoke(app, ["model", "info", "org/nothere"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert f"no model folder 'org/nothere' here ({tmp_path})" in result.output
    assert "hub could not be reached" in result.output
    assert ("HF_HUB_OFFLINE" if offline else "Name or service not known") in result.output


def not_a_model(folder, tiny_folder):
    folder.mkdir()
    return folder


def dataset_like(folder, tiny_folder):
    folder.mkdir()
    (folder / "config.json").write_text('{"format": "automr.prepared-dataset/1"}')
    return folder


def finetune_run(folder, tiny_folder):
    (folder / "best").mkdir(parents=True)
    (folder / "finetune.json").write_text("{}")
    return folder


def damaged_weights(folder, tiny_folder):
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    return folder


def truncated_weights(folder, tiny_folder):
    shutil.copytree(tiny_folder, folder)
    whole = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(whole[: len(whole) - 100])
    return folder


def no_weights(folder, tiny_folder):
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").unlink()
    return folder


def no_tokenizer(folder, tiny_folder):
    shutil.copytree(tiny_folder, folder)
    for path in folder.glob("*token*"):
        path.unlink()
    return folder


def no_eos(folder, tiny_folder):
    """A tokenizer with a pad token but no EOS (its eos_token taken out of the config)."""
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def missing_bin_shard(folder, tiny_folder):
    """A sharded ``.bin`` checkpoint whose index names a shard never downloaded."""
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
    return folder


@pytest.mark.parametrize("make, expected", [
    (not_a_model, "{folder} holds no model (no config.json with a model_type)"),
    (dataset_like, "{folder} holds no model (no config.json with a model_type)"),
    (finetune_run, "{folder} holds no model (no config.json with a model_type): it is an "
                   "`automr finetune` run, give it as --finetuned"),
    (damaged_weights, "could not load the model in {folder}: "),
    (truncated_weights, "could not load the model in {folder}: "),
    (no_weights, "could not load the model in {folder}: no model.safetensors or "
                 "pytorch_model.bin"),
    (no_tokenizer, "could not load the model in {folder}: "),  # info said it was fine
    (missing_bin_shard, "could not load the model in {folder}: "),  # info: a traceback
    # a fine-tune failed with a TypeError on its padding (before that, trained no stop)
    (no_eos, "could not load the model in {folder}: its tokenizer has no EOS token"),
])
def test_a_folder_without_a_loadable_model_is_a_one_line_error(tmp_path, tiny_folder, make,
                                                               expected):
    """``model info`` refuses what a load refuses, though it reads no weight."""
    folder = make(tmp_path / "folder", tiny_folder)
    result = runner.invoke(app, ["model", "info", str(folder)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {expected.format(folder=folder)}")
    with pytest.raises(AutomrError, match="^" + re.escape(expected.format(folder=folder)[:40])):
        loading.load_model(str(folder), device="cpu")


def test_a_finetune_records_its_base_model_folder_as_an_absolute_path(tmp_path, monkeypatch):
    """``--model m`` typed relative is recorded absolute, so the run loads from any folder;
    once the folder is gone, loading says so, naming the run's record."""
    from automr.recommenders.finetune import FinetuneConfig, finetune
    from automr.recommenders.runs import FinetunedRun
    from automr.testing.synthetic import save_tiny_model, synthetic_dataset

    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "m")
    config = FinetuneConfig(max_train_samples=4, max_valid_samples=2, batch_size=2, epochs=1,
                            lora_from_layer=2)
    record = finetune(loaded := loading.load_model("m", device="cpu"),
                      synthetic_dataset(tmp_path), tmp_path / "run", config, progress=False)
    assert record["model"] == str(tmp_path / "m")
    adapter = json.loads((tmp_path / "run" / "best" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tmp_path / "m")
    assert loaded.name == "m"
    monkeypatch.chdir(tmp_path / "run")
    FinetunedRun.open(tmp_path / "run").load(device="cpu")
    (tmp_path / "m").rename(tmp_path / "moved")
    with pytest.raises(AutomrError) as refused:
        FinetunedRun.open(tmp_path / "run").load(device="cpu")
    assert str(refused.value) == (f"the base model folder {tmp_path / 'm'} recorded in "
                                  f"{tmp_path / 'run' / 'finetune.json'} is missing; put the "
                                  f"model back there")


def test_fetch_refuses_other_models():
    result = runner.invoke(app, ["model", "fetch", "gpt2"])
    assert result.exit_code == 2
    assert result.output.startswith("error: only the embedded model 'smollm2-135m' can be "
                                    "fetched, not 'gpt2'") and result.output.count("\n") == 1


@pytest.mark.real_model
def test_fetch_and_info_on_the_embedded_default():
    fetched = runner.invoke(app, ["model", "fetch"])
    assert fetched.exit_code == 0, fetched.output
    result = runner.invoke(app, ["model", "info"])
    assert result.exit_code == 0, result.output
    assert "layers" in result.output and " 30" in result.output
    assert "576" in result.output


def test_a_hub_model_has_one_fingerprint_from_its_first_download_on(tiny_folder, tmp_path,
                                                                     monkeypatch):
    """The first load of a hub id (downloaded then) is named as every later, cached load."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))

    def download(name: str):  # what a real download leaves in the hub cache
        repo = hub / f"models--{name.replace('/', '--')}"
        snapshot = repo / "snapshots" / ("0" * 40)
        if not snapshot.is_dir():
            shutil.copytree(tiny_folder, snapshot)
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text("0" * 40)
        return snapshot

    def from_hub(auto):
        return SimpleNamespace(from_pretrained=lambda name, **kw: auto.from_pretrained(
            download(name), **kw))

    monkeypatch.setattr(loading, "hub_unreachable", lambda name: None)  # the hub answers
    monkeypatch.setattr(loading, "AutoTokenizer", from_hub(loading.AutoTokenizer))
    monkeypatch.setattr(loading, "AutoModelForCausalLM", from_hub(loading.AutoModelForCausalLM))
    first = loading.load_model("org/tiny", device="cpu", cache_dir=tmp_path / "cache")
    again = loading.load_model("org/tiny", device="cpu", cache_dir=tmp_path / "cache")
    assert first.fingerprint() == again.fingerprint()


def test_a_cached_hub_model_loads_from_its_snapshot_while_the_hub_cannot_be_reached(
        tiny_folder, tmp_path, monkeypatch):
    """Cached, but no network (HF_HUB_OFFLINE unset): by its id transformers asked the hub for
    each file with 5 retries (190 s to load a tiny model); its snapshot folder is read at once.
    Cached without its weights (what ``model info`` fetches), a load is one line at once and
    ``info`` asks for it by its id."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(loading, "hub_unreachable", lambda name: "Name or service not known")
    repo = hub / "models--org--tiny"
    snapshot = shutil.copytree(tiny_folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert loading.model_source("org/tiny") == snapshot
    loaded = loading.load_model("org/tiny", device="cpu", cache_dir=tmp_path / "cache")
    assert loaded.fingerprint() == loading.load_model(str(tiny_folder), device="cpu").fingerprint()
    for weights in loading.weight_files(snapshot):
        weights.unlink()
    with pytest.raises(AutomrError, match=r"in the Hugging Face cache without its weights .* "
                                          r"could not be reached .*Name or service not known"):
        loading.load_model("org/tiny", device="cpu")
    assert loading.model_source("org/tiny", weights=False) == "org/tiny"


@pytest.mark.parametrize("kind", ["qwen3_5", "qwen3_5_moe"])
def test_a_checkpoint_without_weights_for_its_head_is_refused(tmp_path, kind):
    """A Qwen 3.5 vision-language checkpoint (dense, or Qwen3.5-35B-A3B's mixture of experts)
    that ties its head to the embeddings at the top of its config only saves no head;
    transformers' causal LM (its text model, untied by the text config) then started the head
    at random, with no error: now refused in one line."""
    import transformers

    from automr.llm import HFSplitLLM
    from automr.llm.loading import load_model

    name = {"qwen3_5": "Qwen3_5", "qwen3_5_moe": "Qwen3_5Moe"}[kind]
    text = tiny_config(f"{kind}_text", num_layers=2).to_dict()
    text["tie_word_embeddings"] = False
    config = getattr(transformers, f"{name}Config")(
        text_config=text, tie_word_embeddings=True, vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32))
    folder = tmp_path / kind
    getattr(transformers, f"{name}ForConditionalGeneration")(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(AutomrError, match=r"no weights for its output head \(lm_head.weight\)"):
        load_model(str(folder), device="cpu")
    # model info (which reads no weight) refuses it too, not "layer_split yes"
    result = runner.invoke(app, ["model", "info", str(folder)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "no weights for its output head (lm_head.weight)" in result.output
    config.text_config.tie_word_embeddings = True
    config.save_pretrained(folder)
    assert info_lines(str(folder))["layer_split"] == "yes"
    loaded = load_model(str(folder), device="cpu")
    head = loaded.model.get_output_embeddings().weight
    assert head is loaded.model.get_input_embeddings().weight
    # its language model alone, which the split runs (the vision tower is not loaded)
    assert type(loaded.model).__name__ == f"{name}ForCausalLM"
    assert HFSplitLLM(loaded.model).num_layers == 2


@pytest.mark.parametrize("kind", ["qwen3_5_moe", "qwen3_next"])
def test_qwen3_5_moe_and_qwen3_next_checkpoints_load_and_split(tmp_path, kind):
    """Qwen3.5-35B-A3B as published (``qwen3_5_moe``: its language model beside a vision
    tower, an untied head here) and Qwen3-Next (``qwen3_next``) load through load_model as
    their causal LM with every weight the checkpoint holds, and model info says the split
    takes them: the loaded model, and the split at every layer, give the published class's
    logits on text."""
    import torch
    import transformers

    from automr.llm import HFSplitLLM
    from automr.llm.loading import load_model

    text = tiny_config(f"{kind}_text" if kind == "qwen3_5_moe" else kind, num_layers=4,
                       tie_word_embeddings=False)
    if kind == "qwen3_5_moe":
        config = transformers.Qwen3_5MoeConfig(
            text_config=text.to_dict(), tie_word_embeddings=False, vision_config=dict(
                depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                out_hidden_size=32))
        torch.manual_seed(0)
        published = transformers.Qwen3_5MoeForConditionalGeneration(config).eval()
        with torch.no_grad():  # its norms start as the identity
            for name, weight in published.named_parameters():
                if name.endswith("norm.weight"):
                    weight.normal_(0.0, 0.3)
    else:
        published = tiny_model(text)
    folder = tmp_path / kind
    published.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    lines = info_lines(str(folder))
    assert lines["layer_split"] == "yes"
    assert lines["model_type"] == ("qwen3_5_moe (language model: qwen3_5_moe_text)"
                                   if kind == "qwen3_5_moe" else "qwen3_next")
    assert ("in_proj_qkv" if kind == "qwen3_5_moe" else "in_proj_qkvz") in lines["linear_modules"]
    loaded = load_model(str(folder), device="cpu").model
    assert type(loaded).__name__ == {"qwen3_5_moe": "Qwen3_5MoeForCausalLM",
                                     "qwen3_next": "Qwen3NextForCausalLM"}[kind]
    ids = torch.tensor([[5, 9, 40, 7, 12, 33, 8]])
    llm = HFSplitLLM(loaded)
    with torch.no_grad():
        expected = published(input_ids=ids).logits
        # not bitwise: with two threads the two classes' kernels may add in another order
        assert (loaded(input_ids=ids).logits - expected).abs().max() < 1e-5
        for layer in range(5):
            split = llm.upper(llm.lower(ids, torch.ones_like(ids), layer))
            assert (split - expected).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["mamba2", "mamba"])
def test_info_on_a_model_without_attention_says_it_has_no_attention_heads(tmp_path, arch):
    """A Mamba or Mamba2 config has no attention heads at all: model info failed reading them.
    It says 0, the split takes the model, and the mixers' projections are LoRA's targets."""
    from automr.testing.synthetic import save_tiny_model

    lines = info_lines(str(save_tiny_model(tmp_path / arch, arch, num_layers=2)))
    assert (lines["attention_heads"], lines["kv_heads"], lines["layer_split"]) == ("0", "0", "yes")
    assert "in_proj" in lines["linear_modules"].split(",")


def test_info_reads_a_head_saved_under_another_name_than_the_models(tmp_path):
    """GPT-NeoX's checkpoints (Pythia) hold its head as ``embed_out``, which transformers loads
    into ``lm_head``: model info looked for ``lm_head.weight`` on disk and refused every one
    ("no weights for its output head"). It reads the names a load gives the checkpoint's."""
    from safetensors import safe_open

    from automr.testing.synthetic import save_tiny_model

    folder = save_tiny_model(tmp_path / "neox", "gpt_neox", num_layers=2)
    saved = safe_open(folder / "model.safetensors", "pt").keys()
    assert "embed_out.weight" in saved and "lm_head.weight" not in saved
    lines = info_lines(str(folder))
    assert (lines["model_type"], lines["layer_split"]) == ("gpt_neox", "yes")


def test_a_tokenizer_that_does_not_know_the_models_context_is_told_it(tmp_path):
    """The tiny tokenizer (like the embedded model's) knows no length: a prompt past the
    model's max_position_embeddings ran with no word; transformers warns once it knows."""
    tiny_model(tiny_config(num_layers=2)).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    loaded = loading.load_model(str(tmp_path / "m"), device="cpu")
    assert loaded.tokenizer.model_max_length == loaded.model.config.max_position_embeddings
    short = tiny_tokenizer()
    short.model_max_length = 7  # one that knows a shorter length keeps it
    short.save_pretrained(tmp_path / "m")
    assert loading.load_model(str(tmp_path / "m"), device="cpu").tokenizer.model_max_length == 7


def test_a_model_folder_given_as_a_path_loads_under_its_name_as_a_str(tiny_folder, tmp_path):
    """load_model(Path(folder)) kept the Path as the model's name: building a memory on it
    failed naming an internal class (Backbone.__init__() parameter name=PosixPath(...)) and
    annotating it with 'Object of type PosixPath is not JSON serializable'; load_model(123)
    was a bare TypeError (the typed-user review)."""
    from pathlib import Path

    from automr.errors import WrongTypeError
    from automr.llm.loading import load_model

    loaded = load_model(Path(tiny_folder), device="cpu")
    assert loaded.name == str(tiny_folder) and isinstance(loaded.name, str)
    assert loaded.fingerprint() == load_model(str(tiny_folder), device="cpu").fingerprint()
    with pytest.raises(WrongTypeError, match=r"load_model's name is a model's name, hub id or "
                                             r"folder .*got 123"):
        load_model(123)
