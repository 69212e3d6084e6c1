"""Bad input never passes silently (issue 15): damaged artifacts, resume by resolved paths, no
blocking half-started folders, device names, unsafe checkpoints, index paths, Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch
from typer.testing import CliRunner

from automr.cli.main import app
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.memory import MemoryConfig, MemoryStore, build_memory
from automr.memory.shards import INDEX_FILE
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

runner = CliRunner()
QUIET = ["--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A prepared dataset, a tiny model, and one of each artifact made by the real commands."""
    root = tmp_path_factory.mktemp("reliability")
    synthetic_dataset(root)
    synthetic_dataset(root / "other", seed=1)  # same user ids, other histories
    save_tiny_model(root / "model", num_layers=4)
    data, model = str(root / "prepared"), str(root / "model")
    for args in (
        ["finetune", "--data", data, "--out", str(root / "ft"), "--model", model,
         "--train-samples", "8", "--valid-samples", "4", "--batch-size", "4",
         "--lora-from-layer", "2", *QUIET],
        ["memory", "build", "--data", data, "--out", str(root / "mem"), "--model", model,
         "--layer", "2", "--encoder", "item", *QUIET],
        ["annotate", "--data", data, "--memory", str(root / "mem"), "--finetuned",
         str(root / "ft"), "--out", str(root / "ann"), "--samples", "6", *QUIET],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return root


def one_line_error(result, *names: object) -> str:
    """Exit code 2, one line, no traceback, naming each of ``names``."""
    text = result.output.strip()
    assert result.exit_code == 2, result.output
    assert "\n" not in text and "Traceback" not in text, text
    assert text.startswith("error: "), text
    for name in names:
        assert str(name) in text, text
    return text


def copy(workspace: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(workspace / name, target)
    return target


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00not what was written{")


CORRUPTIONS = {"truncated": truncate, "garbage": garbage, "missing": Path.unlink}


def annotate_args(workspace: Path, memory: Path, out: Path, data: str = "prepared") -> list[str]:
    return ["annotate", "--data", str(workspace / data), "--memory", str(memory),
            "--finetuned", str(workspace / "ft"), "--out", str(out), "--samples", "6", *QUIET]


# -- item 3: every damaged artifact is one line naming the file ------------------------------
@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("file", ["shard-00000.safetensors", INDEX_FILE])
def test_a_damaged_memory_is_one_line_naming_the_file(workspace, tmp_path, file, how):
    memory = copy(workspace, "mem", tmp_path)
    CORRUPTIONS[how](memory / file)
    result = runner.invoke(app, annotate_args(workspace, memory, tmp_path / "ann"))
    one_line_error(result, memory / file)
    assert not (tmp_path / "ann").exists()


@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("file", ["shard-00000.safetensors", "config.json"])
def test_damaged_annotations_are_one_line_naming_the_file(workspace, tmp_path, file, how):
    annotations = copy(workspace, "ann", tmp_path)
    CORRUPTIONS[how](annotations / file)
    result = runner.invoke(app, [
        "retriever", "train", "--annotations", str(annotations), "--data",
        str(workspace / "prepared"), "--memory", str(workspace / "mem"),
        "--out", str(tmp_path / "ret"), "--quiet"])
    one_line_error(result, annotations / file)


def test_configs_that_are_json_with_a_wrong_or_missing_value_are_one_line(workspace,
                                                                         tmp_path):
    """A memory config whose layer is not a number, an annotation config without its layer:
    valid JSON, so they were a beartype traceback and a KeyError in the memory check."""
    memory = copy(workspace, "mem", tmp_path)
    config = json.loads((memory / "config.json").read_text())
    (memory / "config.json").write_text(json.dumps({**config, "layer": "x"}))
    result = runner.invoke(app, annotate_args(workspace, memory, tmp_path / "ann"))
    assert "is damaged" in one_line_error(result, memory / "config.json")
    annotations = copy(workspace, "ann", tmp_path)
    header = json.loads((annotations / "config.json").read_text())
    del header["layer"]
    (annotations / "config.json").write_text(json.dumps(header))
    result = runner.invoke(app, [
        "retriever", "train", "--annotations", str(annotations), "--data",
        str(workspace / "prepared"), "--memory", str(workspace / "mem"),
        "--out", str(tmp_path / "ret"), "--quiet"])
    assert "'layer'" in one_line_error(result, annotations / "config.json")


@pytest.mark.parametrize("field, value", [("dtype", "bf16"), ("storage_dtype", "model"),
                                          ("dtype", "int8")])
def test_a_memory_config_naming_no_float_dtype_is_one_line(workspace, tmp_path, field, value):
    """Its dtypes were looked up on torch when keys were read: an AttributeError traceback
    mid-run (or int8 keys) instead of the damaged config named."""
    memory = copy(workspace, "mem", tmp_path)
    config = json.loads((memory / "config.json").read_text())
    (memory / "config.json").write_text(json.dumps({**config, field: value}))
    result = runner.invoke(app, annotate_args(workspace, memory, tmp_path / "ann"))
    assert "is damaged" in one_line_error(result, memory / "config.json")
    assert not (tmp_path / "ann").exists()


def test_a_memory_folder_given_as_annotations_is_named(workspace, tmp_path):
    result = runner.invoke(app, [
        "retriever", "train", "--annotations", str(workspace / "mem"), "--data",
        str(workspace / "prepared"), "--memory", str(workspace / "mem"),
        "--out", str(tmp_path / "ret"), "--quiet"])
    text = one_line_error(result, workspace / "mem" / "config.json")
    assert "has format 'automr.memory/" in text and "pass one written by `automr annotate`" in text


def unfinished_finetune(workspace: Path, tmp_path: Path) -> Path:
    """A copy of the fine-tune whose finished record is gone: a rerun resumes the checkpoint."""
    run = copy(workspace, "ft", tmp_path)
    (run / "finetune.json").unlink()
    return run


def finetune_args(workspace: Path, run: Path, model: str | None = None) -> list[str]:
    return ["finetune", "--data", str(workspace / "prepared"), "--out", str(run), "--model",
            model or str(workspace / "model"), "--train-samples", "8", "--valid-samples", "4",
            "--batch-size", "4", "--lora-from-layer", "2", *QUIET]


@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("file", ["adapter_model.safetensors", "state.json", "optimizer.pt",
                                  "rng.pt"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(workspace, tmp_path, file, how):
    run = unfinished_finetune(workspace, tmp_path)
    CORRUPTIONS[how](run / "checkpoint" / file)
    result = runner.invoke(app, finetune_args(workspace, run))
    one_line_error(result, run / "checkpoint" / file)


@pytest.mark.parametrize(("key", "value"), [("step", "1"), ("evaluations", None),
                                          ("best_valid_nll", "5.5"), ("tokens", "100"),
                                          ("train_losses", None), ("best_step", ...)])
def test_a_hand_edited_checkpoint_state_is_one_line_naming_it(workspace, tmp_path, key, value):
    """A field of state.json of another type, or missing, was a raw TypeError, AttributeError
    or KeyError in the resume (the damaged-artifacts review)."""
    run = unfinished_finetune(workspace, tmp_path)
    path = run / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    if value is ...:
        del state[key]
    else:
        state[key] = value
    path.write_text(json.dumps(state))
    result = runner.invoke(app, finetune_args(workspace, run))
    assert f"({key} missing or of another type)" in one_line_error(result, path)


@pytest.mark.parametrize("folder", ["best", "checkpoint"])
def test_a_fine_tune_folder_whose_best_or_checkpoint_is_a_link_is_refused(workspace, tmp_path,
                                                                          folder):
    """A received fine-tune resumed with best/ linked to a user's folder emptied that folder
    (the resume writes best/ at once, replacing what the link points to; the security
    review)."""
    run = unfinished_finetune(workspace, tmp_path)
    thesis = tmp_path / "thesis"
    shutil.move(run / folder, thesis)
    (thesis / "chapter1.tex").write_text("x")
    (run / folder).symlink_to(thesis)
    result = runner.invoke(app, finetune_args(workspace, run))
    assert "follows no link; remove it" in one_line_error(result, run / folder)
    assert (thesis / "chapter1.tex").read_text() == "x"


def test_a_fresh_fine_tune_does_not_replace_a_best_folder_it_did_not_write(workspace, tmp_path):
    """--out a user's folder holding best/ (no checkpoint: not a fine-tune's) was accepted as
    the fine-tune's own and best/ replaced by the adapter (the security review)."""
    mine = tmp_path / "experiments"
    (mine / "best").mkdir(parents=True)
    (mine / "best" / "notes.txt").write_text("x")
    result = runner.invoke(app, finetune_args(workspace, mine))
    assert "write the fine-tune into a new or empty folder" in one_line_error(result,
                                                                                mine / "best")
    assert [p.name for p in (mine / "best").iterdir()] == ["notes.txt"]


def test_a_fine_tune_restarts_as_its_damaged_checkpoint_message_says(workspace, tmp_path):
    """'delete checkpoint/ to restart' left the run's own best/, which the fresh run then
    refused as a user's (the diff review)."""
    run = unfinished_finetune(workspace, tmp_path)
    (run / "checkpoint" / "state.json").unlink()
    refused = runner.invoke(app, finetune_args(workspace, run))
    assert "delete" in one_line_error(refused, run / "checkpoint")
    shutil.rmtree(run / "checkpoint")
    result = runner.invoke(app, finetune_args(workspace, run))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("how", ["other shapes", "a tensor missing"])
def test_a_checkpoint_adapter_of_another_run_is_one_line(workspace, tmp_path, how):
    """Tensors of another rank were a raw RuntimeError from peft; a tensor missing was loaded
    leniently, so it restarted from its initial values without a word."""
    from safetensors.torch import load_file, save_file

    run = unfinished_finetune(workspace, tmp_path)
    path = run / "checkpoint" / "adapter_model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    if how == "other shapes":
        tensors[name] = torch.zeros(*(2 * n for n in tensors[name].shape))
    else:
        del tensors[name]
    save_file(tensors, path)
    result = runner.invoke(app, finetune_args(workspace, run))
    assert "delete" in one_line_error(result, path)


@pytest.mark.parametrize(("where", "key", "value"), [
    ("config", "split", None), ("config", "combiner", ["concat"]), ("config", "combiner", ...),
    (None, "pooling", ...)])
def test_a_hand_edited_annotation_header_is_one_line_naming_it(workspace, tmp_path, where,
                                                              key, value):
    """A split, combiner or pooling of another type, or missing, was a raw beartype
    violation, TypeError or KeyError in retriever train (the damaged-artifacts review)."""
    annotations = copy(workspace, "ann", tmp_path)
    path = annotations / "config.json"
    header = json.loads(path.read_text())
    part = header if where is None else header[where]
    if value is ...:
        del part[key]
    else:
        part[key] = value
    path.write_text(json.dumps(header))
    result = runner.invoke(app, retriever_train(workspace, tmp_path / "ret", annotations))
    assert "is damaged" in one_line_error(result, path)


def test_an_intact_checkpoint_still_resumes(workspace, tmp_path):
    run = unfinished_finetune(workspace, tmp_path)
    result = runner.invoke(app, finetune_args(workspace, run))
    assert result.exit_code == 0, result.output
    assert (run / "finetune.json").is_file()


# -- item 9: a pickle payload in the optimizer state is refused, never run ------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_in_the_checkpoint_is_refused_and_not_run(workspace, tmp_path):
    run = unfinished_finetune(workspace, tmp_path)
    marker = tmp_path / "payload-ran"
    optimizer = run / "checkpoint" / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, optimizer)
    result = runner.invoke(app, finetune_args(workspace, run))
    text = one_line_error(result, optimizer)
    assert "pickled objects" in text
    assert not marker.exists()


def test_checkpoint_files_are_read_with_weights_only(workspace, tmp_path, monkeypatch):
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    run = unfinished_finetune(workspace, tmp_path)
    result = runner.invoke(app, finetune_args(workspace, run))
    assert result.exit_code == 0, result.output
    assert calls and all(flag is True for flag in calls)  # safe on torch < 2.6 too


# -- item 4: resume compares resolved paths ---------------------------------------------------
def test_annotate_resumes_with_the_memory_typed_relative_then_absolute(
        workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace)
    out = tmp_path / "ann"
    first = runner.invoke(app, annotate_args(workspace, Path("mem"), out))
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, annotate_args(workspace, workspace / "mem", out))
    assert again.exit_code == 0, again.output
    header = json.loads((out / "config.json").read_text())
    assert header["memory"] == str((workspace / "mem").resolve())


def test_annotate_resumes_with_its_memory_moved_elsewhere(workspace, tmp_path):
    """The same content (digest) in another folder is the same memory: the resume goes on."""
    out, moved = copy(workspace, "ann", tmp_path), copy(workspace, "mem", tmp_path)
    before = {p.name: p.read_bytes() for p in out.glob("*.*") if p.suffix != ".jsonl"}
    result = runner.invoke(app, annotate_args(workspace, moved, out))
    assert result.exit_code == 0, result.output
    assert before == {p.name: p.read_bytes() for p in out.glob("*.*") if p.name in before}


def test_finetune_resumes_with_the_model_typed_relative_then_absolute(
        workspace, tmp_path, monkeypatch):
    run = unfinished_finetune(workspace, tmp_path)  # started with an absolute --model
    monkeypatch.chdir(workspace)
    result = runner.invoke(app, finetune_args(workspace, run, model="model"))
    assert result.exit_code == 0, result.output


def test_memory_build_resumes_with_the_folder_typed_relative_then_absolute(
        workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["memory", "build", "--data", str(workspace / "prepared"), "--model",
            str(workspace / "model"), "--layer", "2", "--encoder", "item", *QUIET]
    for out in ("mem", str(tmp_path / "mem")):
        result = runner.invoke(app, [*args, "--out", out])
        assert result.exit_code == 0, result.output


# -- item 6: a failed run does not block the corrected one ------------------------------------
def test_annotate_with_the_wrong_dataset_leaves_nothing_behind(workspace, tmp_path):
    out = tmp_path / "ann"
    wrong = runner.invoke(app, annotate_args(workspace, workspace / "mem", out,
                                             data="other/prepared"))
    one_line_error(wrong, workspace / "mem")
    assert not (out / "config.json").exists()
    right = runner.invoke(app, annotate_args(workspace, workspace / "mem", out))
    assert right.exit_code == 0, right.output


def test_an_annotation_folder_without_finished_shards_is_started_over(workspace, tmp_path):
    out = copy(workspace, "ann", tmp_path)
    for shard in out.glob("shard-*.safetensors"):
        shard.unlink()
    header = json.loads((out / "config.json").read_text())
    header["config"]["seed"] = 7  # a start with other settings that wrote no shard
    (out / "config.json").write_text(json.dumps(header))
    result = runner.invoke(app, annotate_args(workspace, workspace / "mem", out))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 0


def test_annotations_with_finished_shards_and_other_settings_are_refused(workspace, tmp_path):
    out = copy(workspace, "ann", tmp_path)
    result = runner.invoke(app, [*annotate_args(workspace, workspace / "mem", out),
                                 "--seed", "3"])
    assert "other settings" in one_line_error(result, out)


def test_annotations_resume_with_another_element_batch(workspace, tmp_path):
    """Elements per forward is a run option: after running out of memory a resume may lower
    it; the folder's config (and so its digest) stays the first run's."""
    out = copy(workspace, "ann", tmp_path)
    shards = sorted(out.glob("shard-*.safetensors"))
    before = (out / "config.json").read_bytes()
    shards[-1].unlink()  # cut before the last shard
    result = runner.invoke(app, [*annotate_args(workspace, workspace / "mem", out),
                                 "--element-batch", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(out.glob("shard-*.safetensors")) == shards
    assert (out / "config.json").read_bytes() == before


def test_annotate_never_writes_into_another_artifact(workspace, tmp_path):
    memory = copy(workspace, "mem", tmp_path)
    before = (memory / "config.json").read_bytes()
    result = runner.invoke(app, annotate_args(workspace, workspace / "mem", memory))
    one_line_error(result, memory)
    assert (memory / "config.json").read_bytes() == before


def test_a_memory_build_that_finished_no_shard_is_started_over(workspace, tmp_path,
                                                               monkeypatch):
    import automr.memory.build as build
    from automr.data import PreparedDataset
    from automr.llm.loading import load_model

    dataset = PreparedDataset.load(workspace / "prepared")
    model = load_model(str(workspace / "model"), device="cpu")
    out, config = tmp_path / "mem", MemoryConfig(encoder="item", shard_elements=64)

    def interrupt(number: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_memory(model, dataset, 1, config, out, progress=False, on_shard=interrupt)
    index = json.loads((out / INDEX_FILE).read_text())
    assert list(out.glob("shard-*")) and not index["complete"]
    with pytest.raises(AutomrError, match="other settings"):  # finished work is kept
        build_memory(model, dataset, 2, config, out, progress=False)
    shutil.rmtree(out)

    def die(*args, **kwargs):
        raise RuntimeError("the run died before its first shard")

    with monkeypatch.context() as patch:
        patch.setattr(build, "_write_shard", die)
        with pytest.raises(RuntimeError):
            build_memory(model, dataset, 1, config, out, progress=False)
    assert (out / "config.json").is_file() and not list(out.glob("shard-*"))
    store = build_memory(model, dataset, 2, config, out, progress=False)  # not refused
    assert store.layer == 2 and store.users()


# -- item 10: index paths never leave the memory folder --------------------------------------
@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/outside.safetensors",
                                  "sub/../../outside.safetensors", "..", ""])
def test_an_index_pointing_outside_the_folder_is_refused(workspace, tmp_path, name):
    memory = copy(workspace, "mem", tmp_path)
    shutil.copy(memory / "shard-00000.safetensors", tmp_path / "outside.safetensors")
    index = json.loads((memory / INDEX_FILE).read_text())
    index["shards"][0]["file"] = name
    (memory / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(AutomrError, match="not a file name inside the memory folder") as error:
        MemoryStore.open(memory)
    assert str(memory / INDEX_FILE) in str(error.value)


def test_an_index_with_segments_beyond_its_shards_is_refused(workspace, tmp_path):
    memory = copy(workspace, "mem", tmp_path)
    index = json.loads((memory / INDEX_FILE).read_text())
    user = next(iter(index["users"]))
    index["users"][user]["segments"][0][0] = 99
    (memory / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(AutomrError, match="outside the 1 listed shards"):
        MemoryStore.open(memory)


def test_a_shard_that_disagrees_with_the_index_is_refused_on_open(workspace, tmp_path):
    from safetensors.torch import save_file

    memory = copy(workspace, "mem", tmp_path)
    shard = memory / "shard-00000.safetensors"
    save_file({"keys": torch.zeros(1, 3), "states": torch.zeros(1, 3),  # token states: the
               "offsets": torch.zeros(2, dtype=torch.int64)}, shard)  # default build has them
    with pytest.raises(AutomrError, match="keys of shape") as error:
        MemoryStore.open(memory)
    assert str(shard) in str(error.value)


# -- item 7: device names ---------------------------------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "", "gpu", "cuda:x", "CPU", "cpu "])
def test_unknown_devices_are_refused_with_the_choices(device):
    with pytest.raises(AutomrError, match=r"auto, cpu, mps or cuda\[:N\]"):
        resolve_device(device)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS works here")
def test_mps_without_the_backend_is_a_clear_error():
    with pytest.raises(AutomrError, match="MPS backend is not available"):
        resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA works here")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(AutomrError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_under_a_launcher_cuda_is_each_processs_own_gpu(monkeypatch):
    """``cuda`` (and ``auto``) is ``cuda:LOCAL_RANK``; a process past the GPUs it sees is told
    how to go on, ``cuda:0`` among the ways (where a scheduler shows each its own GPU alone)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(AutomrError, match="give --device cuda:0 where each process is shown"):
        resolve_device("cuda")


def test_known_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.parametrize("device", ["tpu", ""])
def test_a_bad_device_on_the_command_line_is_one_line(workspace, tmp_path, device):
    result = runner.invoke(app, ["memory", "build", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path / "mem"), "--model",
                                 str(workspace / "model"), "--device", device, "--quiet"])
    assert "auto, cpu, mps or cuda[:N]" in one_line_error(result)
    assert not (tmp_path / "mem").exists()


# -- item 11: Ctrl-C says how to go on -------------------------------------------------------
def test_an_interrupted_command_says_how_to_resume(tmp_path, monkeypatch):
    from automr.data import PreparedDataset

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreparedDataset, "load", interrupted)
    result = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code == 130
    assert "interrupted; rerun the same command to resume" in result.output


@pytest.mark.parametrize(("name", "code", "line"), [
    ("SIGINT", 130, "interrupted; rerun the same command to resume"),
    ("SIGTERM", 143, "terminated; rerun the same command to resume")])
def test_a_signal_ends_a_command_with_the_resume_line_after_its_clean_up(tmp_path, name, code,
                                                                         line):
    """Ctrl-C (SIGINT) and a scheduler's time limit or ``kill`` (SIGTERM, whose default ends
    Python at once): the command's ``finally`` blocks run and the resume line is printed."""
    script = (
        "import os, signal, time\n"
        "from automr.cli.main import app\n"
        "from automr.data import PreparedDataset\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
        "def load(*a, **k):\n"
        "    try:\n"
        f"        os.kill(os.getpid(), signal.{name})\n"
        "        time.sleep(60)  # the handler runs at the next check, at the latest in here\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "PreparedDataset.load = load\n"
        f"app(['data', 'stats', {str(tmp_path)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == code, done.stderr
    assert done.stdout.strip() == "cleaned up"
    assert done.stderr.strip().splitlines()[-1] == line



@pytest.mark.parametrize(("world_size", "handled"), [("1", True), ("2", False)])
def test_sigterm_is_left_to_its_default_under_a_launcher(monkeypatch, world_size, handled):
    """A launcher SIGTERMs every process when one fails; one waiting in a collective for it
    would take a Python handler only when the wait ends: the default ends it at once."""
    from automr.cli.main import _sigterm_raises

    monkeypatch.setenv("WORLD_SIZE", world_size)
    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_raises():
        assert (signal.getsignal(signal.SIGTERM) is not before) == handled


def test_the_sigterm_handler_is_restored_after_a_command(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_handler_set_outside_python_is_put_back_as_the_default(tmp_path,
                                                                          monkeypatch):
    """``signal.signal`` returns None for a handler set in C (a program embedding Python),
    and refuses None when it is put back."""
    import automr.cli.main as cli_main

    real, calls = signal.signal, []

    def recorded(signum, handler):
        calls.append(handler)
        real(signum, handler)
        return None if len(calls) == 1 else signal.SIG_DFL

    monkeypatch.setattr(cli_main.signal, "signal", recorded)
    before = signal.getsignal(signal.SIGTERM)
    try:
        runner.invoke(app, ["data", "stats", str(tmp_path)])
    finally:
        real(signal.SIGTERM, before)
    assert calls[-1] is signal.SIG_DFL and len(calls) == 2


# -- conventions: the fine-tuned adapter folder loads with plain transformers + peft ----------
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft's call
def test_the_best_adapter_folder_loads_with_plain_transformers_and_peft(workspace):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    best = workspace / "ft" / "best"
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert tokenizer.pad_token is not None
    model = AutoPeftModelForCausalLM.from_pretrained(best)
    ids = tokenizer(["hello"], return_tensors="pt")
    assert model(**ids).logits.shape[-1] == model.config.vocab_size


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
@pytest.mark.parametrize("file", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_damaged_fine_tuned_adapter_is_one_line_naming_the_file(workspace, tmp_path, file,
                                                                  how):
    run = copy(workspace, "ft", tmp_path)
    CORRUPTIONS[how](run / "best" / file)
    result = runner.invoke(app, [
        "evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "eval"),
        "--methods", "bigrec:likelihood", "--finetuned", str(run), "--model",
        str(workspace / "model"), "--samples", "2", "--layer", "2", *QUIET])
    one_line_error(result, run / "best" / file)


@pytest.mark.parametrize("text", ["{}", '{"peft_type": "LORA", "r": "x"}'])
def test_an_adapter_config_that_is_json_but_no_adapter_is_one_line_naming_it(workspace,
                                                                             tmp_path, text):
    run = copy(workspace, "ft", tmp_path)
    (run / "best" / "adapter_config.json").write_text(text)
    result = runner.invoke(app, [
        "evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "eval"),
        "--methods", "bigrec:likelihood", "--finetuned", str(run), "--model",
        str(workspace / "model"), "--samples", "2", "--layer", "2", *QUIET])
    assert "fine-tune again" in one_line_error(result, run / "best" / "adapter_config.json")


@pytest.mark.parametrize("artifact", ["mem", "ann", "ft"])
def test_retriever_train_never_writes_into_another_artifact(workspace, tmp_path, artifact,
                                                            monkeypatch):
    import automr.experiments.retriever as experiment

    def trained(*args, **kwargs):
        raise AssertionError("refused only after training")

    monkeypatch.setattr(experiment, "train_mlp_retriever", trained)  # refused before it
    target = copy(workspace, artifact, tmp_path)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    result = runner.invoke(app, [
        "retriever", "train", "--annotations", str(workspace / "ann"), "--data",
        str(workspace / "prepared"), "--memory", str(workspace / "mem"), "--out", str(target),
        "--epochs", "1", *QUIET])
    one_line_error(result, target)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before


def test_a_write_the_disk_refuses_is_one_line_that_says_the_command_resumes(workspace,
                                                                            tmp_path,
                                                                            monkeypatch):
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)  # read when a shard is saved
    build = ["memory", "build", "--data", str(workspace / "prepared"), "--out",
             str(tmp_path / "mem"), "--model", str(workspace / "model"), "--layer", "2",
             "--encoder", "item", *QUIET]
    assert "rerun the same command" in one_line_error(runner.invoke(app, build),
                                                      os.strerror(errno.ENOSPC))
    monkeypatch.undo()
    assert runner.invoke(app, build).exit_code == 0  # and it does

    def quota(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "x.json"))

    monkeypatch.setattr("automr.evaluation.folder.write_json_atomic", quota)
    result = runner.invoke(app, [
        "evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "eval"),
        "--methods", "pop", "--samples", "2", *QUIET])
    one_line_error(result, tmp_path / "x.json", os.strerror(errno.EDQUOT))


def test_a_full_disk_at_the_run_record_or_in_torch_or_tokenizers_writers_is_one_line(
        workspace, tmp_path, monkeypatch):
    """Three writes the disk refused were tracebacks (the environment review): the run record,
    appended after the command's work (every command); torch.save's writer ("unexpected pos",
    a fine-tune's optimizer state) and tokenizers' save ("(os error 28)", best/). The run
    record's says the work is done: "rerun, it resumes" sent a finished fine-tune's rerun
    into a refusal (the mid-command failures review)."""
    import errno

    import automr.cli.record as record

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "runs"))

    monkeypatch.setattr(record, "append_lines", full)
    result = runner.invoke(app, [
        "evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "eval"),
        "--methods", "pop", "--samples", "2", *QUIET])
    last = result.output.strip().splitlines()[-1]  # after the table it printed
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert last.startswith(f"error: the command's work is done in {tmp_path / 'eval'}, but "
                           f"its run record") and os.strerror(errno.ENOSPC) in last
    assert "nothing needs to run again" in last  # a finished fine-tune refuses a rerun
    monkeypatch.undo()
    from automr.cli.common import disk_error

    torch_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 "
                                "vs 0")
    assert "torch.save's writer failed" in disk_error(torch_writer)
    tokenizers = Exception("No space left on device (os error 28)")
    assert os.strerror(errno.ENOSPC) in disk_error(tokenizers)
    assert disk_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_a_cache_on_a_full_disk_is_only_read(workspace, tmp_path, monkeypatch):
    """The catalog-embedding cache is skipped where it cannot be written, as its docstring
    says; safetensors' error on a full disk is no OSError, so a full cache failed evaluate
    (the environment review)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = runner.invoke(app, [
        "evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "eval"),
        "--methods", "base:l2", "--model", str(workspace / "model"), "--samples", "2",
        "--cache-dir", str(tmp_path / "cache"), *QUIET])
    assert result.exit_code == 0, result.output


def test_concat_on_a_memory_without_token_states_is_one_line_naming_the_fix(workspace,
                                                                          tmp_path):
    """concat is the default combiner; a memory built with --no-store-token-states cannot feed
    it, and annotate and evaluate say so before any work."""
    data, lean = str(workspace / "prepared"), tmp_path / "lean"
    built = runner.invoke(app, ["memory", "build", "--data", data, "--out", str(lean),
                                "--model", str(workspace / "model"), "--layer", "2",
                                "--encoder", "item", "--no-store-token-states", *QUIET])
    assert built.exit_code == 0, built.output
    one_line_error(runner.invoke(app, annotate_args(workspace, lean, tmp_path / "ann")),
                   "--store-token-states")
    assert not (tmp_path / "ann").exists()
    refused = runner.invoke(app, [
        "evaluate", "--data", data, "--methods", "random:likelihood", "--finetuned",
        str(workspace / "ft"), "--memory", str(lean), "--model", str(workspace / "model"),
        "--samples", "2", "--measures", "likelihood", "--out", str(tmp_path / "res"), *QUIET])
    one_line_error(refused, "--store-token-states", "--combiner append-token")
    used = runner.invoke(app, [*annotate_args(workspace, lean, tmp_path / "ann"),
                               "--combiner", "append-token"])
    assert used.exit_code == 0, used.output


def test_a_layer_other_than_the_memorys_is_refused_not_recorded(workspace, tmp_path):
    """Issue 15 item 5: --layer used to be ignored by memory methods yet recorded."""
    common = ["evaluate", "--data", str(workspace / "prepared"), "--methods",
              "random:likelihood", "--finetuned", str(workspace / "ft"), "--memory",
              str(workspace / "mem"), "--model", str(workspace / "model"), "--samples", "2",
              "--measures", "likelihood", *QUIET]
    refused = runner.invoke(app, [*common, "--out", str(tmp_path / "a"), "--layer", "3"])
    one_line_error(refused, "--layer 3", "layer 2")
    used = runner.invoke(app, [*common, "--out", str(tmp_path / "b")])
    assert used.exit_code == 0, used.output
    settings = json.loads((tmp_path / "b" / "loglik" / "random-likelihood.settings.json")
                          .read_text())
    assert settings["combiner"] == "concat" and "layer" not in settings
    assert json.loads((tmp_path / "b" / "results.json").read_text())["config"]["layer"] is None


# -- artifacts of one memory stay with it -----------------------------------------------------
def test_the_same_interactions_in_another_prompt_domain_are_not_the_memorys(workspace,
                                                                             tmp_path):
    """The histories match, so only the memory's recorded dataset tells them apart."""
    from automr.data import prepare_csv
    from automr.testing.synthetic import SYNTHETIC_PROTOCOL

    raw = workspace / "raw"
    prepare_csv(raw / "interactions.csv", raw / "items.csv", tmp_path / "movies",
                protocol=SYNTHETIC_PROTOCOL, domain="movies")
    annotate = runner.invoke(app, [*annotate_args(workspace, workspace / "mem",
                                                  tmp_path / "ann"), "--data",
                                   str(tmp_path / "movies")])
    assert "built from another dataset" in one_line_error(annotate, workspace / "mem")
    train = runner.invoke(app, ["retriever", "train", "--annotations", str(workspace / "ann"),
                                "--data", str(tmp_path / "movies"), "--memory",
                                str(workspace / "mem"), "--out", str(tmp_path / "ret"),
                                "--quiet"])
    assert "built from another dataset" in one_line_error(train, workspace / "mem")


def test_annotations_and_retrievers_are_refused_with_a_memory_of_another_encoder(workspace,
                                                                                 tmp_path):
    from automr.memory import MemoryStore
    from automr.recommenders.automr import load_retriever_for

    data = str(workspace / "prepared")
    window = runner.invoke(app, ["memory", "build", "--data", data, "--out",
                                 str(tmp_path / "mem"), "--model", str(workspace / "model"),
                                 "--layer", "2", "--encoder", "window", *QUIET])
    assert window.exit_code == 0, window.output
    train = runner.invoke(app, ["retriever", "train", "--annotations", str(workspace / "ann"),
                                "--data", data, "--memory", str(tmp_path / "mem"), "--out",
                                str(tmp_path / "ret"), "--quiet"])
    assert "(encoder, content differ)" in one_line_error(train, tmp_path / "mem")
    made = runner.invoke(app, ["retriever", "train", "--annotations", str(workspace / "ann"),
                               "--data", data, "--memory", str(workspace / "mem"), "--out",
                               str(tmp_path / "ret"), "--quiet"])
    assert made.exit_code == 0, made.output
    load_retriever_for(MemoryStore.open(workspace / "mem"), tmp_path / "ret")
    with pytest.raises(AutomrError, match="encoder"):
        load_retriever_for(MemoryStore.open(tmp_path / "mem"), tmp_path / "ret")


def test_annotating_samples_without_memory_is_one_line(workspace, tmp_path, monkeypatch):
    import automr.annotation.run as annotation_run

    short = [s for s in annotation_run.PreparedDataset.load(workspace / "prepared")
             .samples("train") if s.memory][:2]
    monkeypatch.setattr(annotation_run, "seeded_subset", lambda samples, n, seed: [
        attrs.evolve(s, memory=(), memory_timestamps=()) for s in short])
    result = runner.invoke(app, annotate_args(workspace, workspace / "mem", tmp_path / "ann"))
    assert "has a memory element to annotate" in one_line_error(result)
    assert not (tmp_path / "ann").exists()


def test_an_annotation_folder_from_before_the_encoder_was_recorded_still_resumes(workspace,
                                                                                 tmp_path):
    out = copy(workspace, "ann", tmp_path)
    header = json.loads((out / "config.json").read_text())
    assert header["dtype"] == "float32"
    del header["memory_encoder"], header["dtype"]
    (out / "config.json").write_text(json.dumps(header))
    result = runner.invoke(app, annotate_args(workspace, workspace / "mem", out))
    assert result.exit_code == 0, result.output


def test_annotations_are_not_resumed_or_used_with_a_memory_rebuilt_in_place(workspace,
                                                                            tmp_path):
    """The memory is named by what it holds: annotations made with the memory that stood in
    the same folder before are not resumed (or trained on) with the rebuilt one."""
    memory, out = tmp_path / "mem", tmp_path / "ann"
    build = ["memory", "build", "--data", str(workspace / "prepared"), "--out", str(memory),
             "--model", str(workspace / "model"), "--layer", "2", "--encoder", "item", *QUIET]
    assert runner.invoke(app, build).exit_code == 0
    assert runner.invoke(app, annotate_args(workspace, memory, out)).exit_code == 0
    shutil.rmtree(memory)
    assert runner.invoke(app, [*build, "--storage-dtype", "float16"]).exit_code == 0
    result = runner.invoke(app, annotate_args(workspace, memory, out))
    assert "other settings" in one_line_error(result, out)
    result = runner.invoke(app, [
        "retriever", "train", "--annotations", str(out), "--data", str(workspace / "prepared"),
        "--memory", str(memory), "--out", str(tmp_path / "ret"), "--epochs", "1", *QUIET])
    assert "content" in one_line_error(result, memory)


def test_a_batch_whose_first_sample_has_no_memory_hands_the_memorys_dtype(workspace,
                                                                          tmp_path):
    """The empty row was float32 on the CPU, and pad_memory takes the first row's dtype and
    device: a bfloat16 memory reached a combiner as float32 when the first sample had none."""
    from automr.combiners import Concat
    from automr.data import PreparedDataset
    from automr.recommenders.automr import MemoryRetrieval
    from automr.retrievers import build_retriever
    from automr.state import LayerState

    result = runner.invoke(app, [
        "memory", "build", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "m"),
        "--model", str(workspace / "model"), "--layer", "2", "--encoder", "item",
        "--dtype", "bfloat16", *QUIET])
    assert result.exit_code == 0, result.output
    store = MemoryStore.open(tmp_path / "m")
    samples = [s for split in ("train", "valid", "test")
               for s in PreparedDataset.load(workspace / "prepared").samples(split)]
    empty, full = (next(s for s in samples if not s.memory), next(s for s in samples
                                                                 if s.memory))
    given = []

    class Spy:
        uses_token_states = True

        def combine(self, query, memory):
            given.append(memory.hidden.dtype)
            return Concat().combine(query, memory)

    retrieval = MemoryRetrieval(store, build_retriever("random", store.hidden_size), Spy())
    state = LayerState(hidden=torch.zeros(2, 3, store.hidden_size, dtype=torch.bfloat16),
                       mask=torch.ones(2, 3, dtype=torch.bool), layer=2)
    for batch in ([full, empty], [empty, full]):
        retrieval.insert_for(batch)(state)
    assert given == [torch.bfloat16, torch.bfloat16]


def test_a_retriever_is_not_asked_to_score_a_batch_without_memory(workspace, tmp_path):
    """Keys of width 0 (every sample of the batch without memory: 154 of ML-100K's test
    samples have none) reached the retriever: one that normalises by a row's best score (and
    passes RetrieverContract, whose memories hold an element) failed with a raw IndexError."""
    from automr.combiners import AppendToken
    from automr.data import PreparedDataset
    from automr.recommenders.automr import MemoryRetrieval
    from automr.state import LayerState

    store = MemoryStore.open(workspace / "mem")
    empty = [s for split in ("train", "valid", "test")
             for s in PreparedDataset.load(workspace / "prepared").samples(split) if not s.memory]

    class ShiftedByBest:
        def scores(self, query, keys, mask):
            scores = torch.einsum("bh,bmh->bm", query, keys)
            return scores - scores.masked_fill(~mask, -torch.inf).max(dim=1).values[:, None]

    retrieval = MemoryRetrieval(store, ShiftedByBest(), AppendToken())
    state = LayerState(hidden=torch.zeros(2, 3, store.hidden_size),
                       mask=torch.ones(2, 3, dtype=torch.bool), layer=store.layer)
    combined = retrieval.insert_for(empty[:2])(state)
    assert torch.equal(combined.hidden, state.hidden) and retrieval.retrieved == [[], []]


@pytest.mark.parametrize(("scores", "said"), [
    (lambda q, k, m: torch.einsum("bh,bmh->bm", q, k)[..., None], r"of shape \(2, \d+, 1\)"),
    (lambda q, k, m: torch.einsum("bh,bmh->mb", q, k), r"of shape \(\d+, 2\) for memories"),
    (lambda q, k, m: torch.full(m.shape, torch.nan), "NaN for a real memory element"),
    (lambda q, k, m: m.long(), "torch.int64 scores")])
def test_a_retrievers_wrong_scores_are_one_line(workspace, scores, said):
    """A user's retriever whose scores had an extra axis, were transposed, NaN or ints failed
    inside top_k with a multi-line shape check's error or a bare ValueError."""
    from automr.combiners import AppendToken
    from automr.data import PreparedDataset
    from automr.recommenders.automr import MemoryRetrieval
    from automr.state import LayerState

    store = MemoryStore.open(workspace / "mem")
    full = [s for split in ("train", "valid", "test")
            for s in PreparedDataset.load(workspace / "prepared").samples(split) if s.memory]

    class Wrong:
        def scores(self, query, keys, mask):
            return scores(query, keys, mask)

    retrieval = MemoryRetrieval(store, Wrong(), AppendToken())
    state = LayerState(hidden=torch.zeros(2, 3, store.hidden_size),
                       mask=torch.ones(2, 3, dtype=torch.bool), layer=store.layer)
    with pytest.raises(AutomrError, match=rf"^Wrong.scores gave .*{said}"):
        retrieval.insert_for(full[:2])(state)


def test_a_retriever_is_not_trained_on_test_annotations(workspace, tmp_path):
    """`automr retriever score` asks for test annotations; given to `retriever train` they
    trained a retriever that evaluate then scored on its own training samples."""
    out = tmp_path / "ann-test"
    result = runner.invoke(app, [*annotate_args(workspace, workspace / "mem", out),
                                 "--split", "test"])
    assert result.exit_code == 0, result.output
    train = runner.invoke(app, ["retriever", "train", "--annotations", str(out), "--data",
                                str(workspace / "prepared"), "--memory", str(workspace / "mem"),
                                "--out", str(tmp_path / "ret"), "--quiet"])
    assert "annotates test samples" in one_line_error(train, out)
    assert not (tmp_path / "ret").exists()


def test_a_retriever_save_cut_before_its_config_is_saved_again_in_place(tmp_path):
    from automr.retrievers import build_retriever

    retriever = build_retriever("mlp", 8, seed=0)
    retriever.save(tmp_path / "ret")
    (tmp_path / "ret" / "config.json").unlink()  # cut between the weights and the config
    retriever.save(tmp_path / "ret")
    assert (tmp_path / "ret" / "config.json").is_file()


# -- paths that cannot be used, damaged shards resumed, weights' permissions -------------------
def retriever_train(workspace: Path, out: Path, annotations: Path | None = None) -> list[str]:
    return ["retriever", "train", "--annotations", str(annotations or workspace / "ann"), "--data",
            str(workspace / "prepared"), "--memory", str(workspace / "mem"), "--out", str(out),
            "--epochs", "1", *QUIET]


def evaluate_pop(workspace: Path, out: Path | str) -> list[str]:
    return ["evaluate", "--data", str(workspace / "prepared"), "--out", str(out), "--methods",
            "pop", "--samples", "2", *QUIET]


def test_a_file_where_a_folder_is_needed_is_one_line_naming_both(workspace, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, retriever_train(workspace, afile))
    assert one_line_error(result).endswith(f"cannot use {afile}: it is a file, not a folder")
    result = runner.invoke(app, evaluate_pop(workspace, afile / "sub"))
    assert f"{afile} is a file, not a folder" in one_line_error(result, afile / "sub")
    assert afile.read_text() == "x"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_an_out_folder_the_system_refuses_is_one_line(workspace):
    out = Path("/sys/automr-not-allowed")  # refused even to root (EPERM, EACCES or EROFS)
    one_line_error(runner.invoke(app, evaluate_pop(workspace, out)), out)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("out", ["/proc/automr-x", "/proc/automr-x/sub"])
def test_an_out_folder_that_cannot_be_created_is_one_line(workspace, tmp_path, out):
    """/proc takes no new entry (ENOENT, even for root): a traceback from both the folder
    evaluate makes and the temporary folder beside it that data prepare makes."""
    from automr.testing.synthetic import write_synthetic_csv

    interactions, items = write_synthetic_csv(tmp_path / "raw")
    prepare = ["data", "prepare", "csv", "--interactions", str(interactions), "--items",
               str(items), "--out", out, "--train-months", "2", "--quiet"]
    for args in (evaluate_pop(workspace, out), prepare):
        assert one_line_error(runner.invoke(app, args)).endswith(
            "cannot use /proc/automr-x: it does not exist and cannot be created there")


def test_an_unwritable_out_is_one_line_naming_it(workspace, tmp_path, monkeypatch):
    import errno

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("automr.evaluation.folder.write_json_atomic", refused)
    result = runner.invoke(app, evaluate_pop(workspace, tmp_path / "eval"))
    assert "permission denied" in one_line_error(result, tmp_path / "eval")


def test_export_onto_a_folder_is_one_line_and_leaves_nothing(workspace, tmp_path,
                                                            monkeypatch):
    assert runner.invoke(app, evaluate_pop(workspace, tmp_path / "eval")).exit_code == 0
    (tmp_path / "o").mkdir()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", str(tmp_path / "eval"), "o"])
    assert one_line_error(result) == "error: cannot use o: it is a folder, not a file"
    for name in (".", "..", "/", "o/.."):  # ValueError ('has an empty name') or EBUSY tracebacks
        result = runner.invoke(app, ["export", str(tmp_path / "eval"), name])
        assert one_line_error(result) == f"error: cannot use {name}: it is a folder, not a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "o"]  # no .o.partial-N


def test_export_writes_over_an_earlier_export_only(workspace, tmp_path):
    """It replaced any file: a fine-tune's finetune.json, or the evaluation's own
    results.json (the folder it read then read back as damaged)."""
    assert runner.invoke(app, evaluate_pop(workspace, tmp_path / "eval")).exit_code == 0
    results = tmp_path / "eval" / "results.json"
    record = tmp_path / "finetune.json"
    record.write_text('{"config": {}}')
    for target in (results, record):
        kept = target.read_bytes()
        result = runner.invoke(app, ["export", str(tmp_path / "eval"), str(target)])
        assert "exists and is not an export" in one_line_error(result, target)
        assert target.read_bytes() == kept
    exported = tmp_path / "e.json"
    for _ in range(2):  # a new file, then the same export again over it
        assert runner.invoke(app, ["export", str(tmp_path / "eval"), str(exported)]
                             ).exit_code == 0


@pytest.mark.parametrize("text", ["{}", "[]", '{"methods": []}'])
def test_export_of_a_results_json_that_is_json_but_no_results_is_one_line(workspace, tmp_path,
                                                                          text):
    assert runner.invoke(app, evaluate_pop(workspace, tmp_path / "eval")).exit_code == 0
    (tmp_path / "eval" / "results.json").write_text(text)
    result = runner.invoke(app, ["export", str(tmp_path / "eval"), str(tmp_path / "e.json")])
    assert "delete it and run the evaluation again" in one_line_error(
        result, tmp_path / "eval" / "results.json")
    again = runner.invoke(app, evaluate_pop(workspace, tmp_path / "eval"))  # as it says
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("size", [100, None])
def test_annotate_redoes_a_damaged_shard_when_resumed(workspace, tmp_path, size):
    annotations = copy(workspace, "ann", tmp_path)
    shard = annotations / "shard-00000.safetensors"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: size or len(whole) // 2])
    result = runner.invoke(app, annotate_args(workspace, workspace / "mem", annotations))
    assert result.exit_code == 0, result.output
    assert shard.read_bytes() == whole


def test_a_damaged_annotation_shard_says_which_command_makes_it(workspace, tmp_path):
    annotations = copy(workspace, "ann", tmp_path)
    truncate(annotations / "shard-00000.safetensors")
    result = runner.invoke(app, retriever_train(workspace, tmp_path / "ret", annotations))
    text = one_line_error(result, annotations / "shard-00000.safetensors")
    assert "with delete" not in text
    assert text.endswith("it comes from `automr annotate` (rerun the same command: it redoes "
                         "a damaged shard)")


def test_every_weights_file_the_commands_write_is_as_readable_as_their_configs(workspace,
                                                                              tmp_path):
    (tmp_path / "plain").write_text("")  # under the umask the fixture ran with
    weights = [p for name in ("mem", "ann", "ft") for p in (workspace / name).rglob(
        "*.safetensors")]
    assert {p.parent.name for p in weights} >= {"mem", "ann", "best", "checkpoint"}
    modes = {p: p.stat().st_mode & 0o777 for p in weights}
    assert modes == dict.fromkeys(weights, (tmp_path / "plain").stat().st_mode & 0o777)


# -- a prepared dataset cut at a line end, or with a damaged stats.json ----------------------
def cut_at_a_line_end(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))


@pytest.mark.parametrize("file", ["samples/test.jsonl", "items.jsonl", "interactions.jsonl"])
def test_a_prepared_file_cut_at_a_line_end_is_one_line_naming_it(workspace, tmp_path, file):
    """Every line left parses: the test split silently lost half its samples (evaluate ranked
    the rest), a cut catalog or timeline was blamed on the samples or the fine-tune."""
    data = copy(workspace, "prepared", tmp_path)
    cut_at_a_line_end(data / file)
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--out", str(tmp_path / "ev"),
                                 "--methods", "pop", "--samples", "0", *QUIET])
    assert "stats.json records" in one_line_error(result, data / file)


@pytest.mark.parametrize("how", ["folder replaced", "files copied in"])
def test_a_loaded_dataset_refuses_a_split_of_a_folder_prepared_again_since(workspace, tmp_path,
                                                                           how):
    """Splits are read when first asked for: a folder prepared again meanwhile (the same
    sample counts, another protocol) gave the loaded dataset the new folder's samples. A new
    folder may take the old one's freed inode, and files copied in keep it."""
    import shutil

    from automr.data import PreparedDataset

    data = copy(workspace, "prepared", tmp_path)
    loaded = PreparedDataset.load(data)
    train = loaded.samples("train")
    shutil.copytree(data, tmp_path / "again")  # another preparation's files: written anew
    for split in ("train", "valid", "test"):
        written = tmp_path / "again" / "samples" / f"{split}.jsonl"
        written.write_text(written.read_text())
    if how == "folder replaced":
        shutil.rmtree(data)
        (tmp_path / "again").rename(data)
    else:
        shutil.copytree(tmp_path / "again", data, dirs_exist_ok=True)
    assert loaded.samples("train") == train  # read before: kept
    with pytest.raises(AutomrError, match=r"changed since this dataset was loaded \(prepared "
                                          r"again, moved or removed\), so its test samples"):
        loaded.samples("test")
    assert PreparedDataset.load(data).samples("test")  # loaded again: read


def test_a_loaded_dataset_saves_into_its_own_folder(workspace, tmp_path):
    """save() read the splits not read yet after writing config.json: its own write was taken
    for another preparation's."""
    from automr.data import PreparedDataset

    data = copy(workspace, "prepared", tmp_path)
    loaded = PreparedDataset.load(data)
    loaded.save(data)
    again = PreparedDataset.load(data)
    assert all(again.samples(split) == loaded.samples(split)
               for split in ("train", "valid", "test"))


def test_a_save_cut_part_way_leaves_the_dataset_it_was_saving_over_whole(workspace, tmp_path,
                                                                          monkeypatch):
    """save() wrote the JSON lines files in place: Ctrl-C while it wrote interactions.jsonl
    left 100 of its 288 lines, and a dataset that loaded fine (and that other artifacts point
    to) was damaged (the leftovers review)."""
    import json

    from automr.data import PreparedDataset

    data = copy(workspace, "prepared", tmp_path)
    loaded = PreparedDataset.load(data)
    before = {p.name: p.read_bytes() for p in data.rglob("*.jsonl")}
    real_encoder = json.JSONEncoder

    class CutAfter100(real_encoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rows = 0

        def encode(self, row):
            self.rows += 1
            if self.rows > 100 and "timestamp" in row and "item" in row and "user" in row \
                    and len(row) == 3:
                raise KeyboardInterrupt
            return super().encode(row)

    monkeypatch.setattr(json, "JSONEncoder", CutAfter100)
    with pytest.raises(KeyboardInterrupt):
        loaded.save(data)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in data.rglob("*.jsonl")} == before
    assert not [p.name for p in data.rglob(".*partial*")]
    assert PreparedDataset.load(data).interactions == loaded.interactions


@pytest.mark.parametrize("text", ["[]", "null", '{"users": 1}'])
def test_a_damaged_stats_json_is_one_line_naming_it(workspace, tmp_path, text):
    data = copy(workspace, "prepared", tmp_path)
    (data / "stats.json").write_text(text)
    result = runner.invoke(app, ["data", "stats", str(data)])
    one_line_error(result, data / "stats.json")


@pytest.mark.parametrize("field,value", [("memory_length", []), ("memory_length", {"x": [1]}),
                                         ("loaded", [1, 2])])
def test_a_stats_json_field_of_another_type_is_one_line_naming_it(workspace, tmp_path, field,
                                                                   value):
    """memory_length written as a list was a raw AttributeError (the mypy review)."""
    data = copy(workspace, "prepared", tmp_path)
    stats = json.loads((data / "stats.json").read_text())
    stats[field] = value
    (data / "stats.json").write_text(json.dumps(stats))
    result = runner.invoke(app, ["data", "stats", str(data)])
    one_line_error(result, data / "stats.json")


def test_a_retriever_saved_again_in_place_and_cut_before_its_config_is_not_loaded(tmp_path,
                                                                                  monkeypatch):
    """The new weights stood beside the older save's config.json: loaded with its provenance
    (another model, layer or memory) and passed every check."""
    import automr.storage as storage
    from automr.retrievers import build_retriever, load_retriever

    old = build_retriever("mlp", 8, seed=0)
    old.provenance = {"layer": "2"}
    old.save(tmp_path / "ret")
    new = build_retriever("mlp", 8, seed=1)
    new.provenance = {"layer": "3"}

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "write_json_atomic", cut)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "ret")
    monkeypatch.undo()
    with pytest.raises(AutomrError, match=r"config\.json is missing"):
        load_retriever(tmp_path / "ret", expect={"layer": "2"})
    new.save(tmp_path / "ret")  # saved again in place
    assert load_retriever(tmp_path / "ret", expect={"layer": "3"}).provenance == {"layer": "3"}


def test_a_retriever_trained_again_in_place_and_cut_keeps_no_older_record(
        workspace, tmp_path, monkeypatch):
    import automr.experiments.retriever as experiment

    out = tmp_path / "ret"
    assert runner.invoke(app, retriever_train(workspace, out)).exit_code == 0

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "write_json_atomic", cut)  # training.json, written last
    assert runner.invoke(app, retriever_train(workspace, out)).exit_code == 130
    assert not (out / "training.json").exists()
    with pytest.raises(AutomrError, match=r"training\.json is missing though `automr "
                                          r"retriever train` wrote"):  # samples unknown
        experiment.check_held_out(out, workspace / "ann")
    monkeypatch.undo()
    monkeypatch.setattr("automr.storage.write_json_atomic", cut)  # config.json, after weights
    assert runner.invoke(app, retriever_train(workspace, out)).exit_code == 130
    assert not (out / "config.json").exists() and (out / "automr-runs.jsonl").is_file()
    monkeypatch.undo()
    again = runner.invoke(app, retriever_train(workspace, out))  # not refused for its record
    assert again.exit_code == 0, again.output
    assert (out / "training.json").is_file()


def test_a_first_retriever_training_cut_before_its_record_is_not_scored(workspace, tmp_path,
                                                                       monkeypatch):
    """Killed between saving the retriever and writing its training.json, a first training
    left a loadable retriever and no run record (one is appended only when a command
    finishes): check_held_out took it for a hand-saved one, and `automr retriever score` on
    the very annotations it was trained on scored it."""
    import automr.experiments.retriever as experiment

    out = tmp_path / "ret"

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "write_json_atomic", cut)  # training.json, written last
    assert runner.invoke(app, retriever_train(workspace, out)).exit_code == 130
    assert (out / "config.json").is_file() and not (out / "automr-runs.jsonl").exists()
    with pytest.raises(AutomrError, match=r"training\.json is missing though `automr "
                                          r"retriever train` wrote"):
        experiment.check_held_out(out, workspace / "ann")
    monkeypatch.undo()
    assert runner.invoke(app, retriever_train(workspace, out)).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [  # and the lock a training holds
        ".automr-lock", "automr-runs.jsonl", "config.json", "retriever.safetensors",
        "training.json"]


@pytest.mark.parametrize("how", ["missing", "garbage"])
def test_a_damaged_details_file_says_how_to_write_it_again(workspace, tmp_path, how):
    """A rerun reuses the saved values and never writes the details again: "delete it and
    run the evaluation again" left it missing for good."""
    from automr.evaluation.folder import EvaluationFolder

    args = ["evaluate", "--data", str(workspace / "prepared"), "--methods",
            "random:likelihood", "--finetuned", str(workspace / "ft"), "--memory",
            str(workspace / "mem"), "--model", str(workspace / "model"), "--samples", "2",
            "--measures", "likelihood", "--out", str(tmp_path / "ev"), *QUIET]
    assert runner.invoke(app, args).exit_code == 0
    folder = EvaluationFolder(tmp_path / "ev")
    details = folder.details_file("retrieved", "random:likelihood", "loglik")
    whole = details.read_bytes()
    CORRUPTIONS[how](details)
    with pytest.raises(AutomrError) as error:
        folder.details("retrieved", "random:likelihood", "loglik")
    settings = folder.settings_file("random:likelihood", "loglik")
    assert str(details) in str(error.value) and f"delete {settings}" in str(error.value)
    settings.unlink()  # as it says
    assert runner.invoke(app, args).exit_code == 0
    assert details.read_bytes() == whole


@pytest.mark.parametrize("text", ["[]", "null"])
def test_settings_that_are_json_but_not_settings_are_measured_again(workspace, tmp_path, text):
    """An L2 grounding's kept titles were looked up through them: an AttributeError."""
    args = ["evaluate", "--data", str(workspace / "prepared"), "--methods", "bigrec:l2",
            "--finetuned", str(workspace / "ft"), "--model", str(workspace / "model"),
            "--layer", "2", "--samples", "2", "--num-beams", "2", "--out", str(tmp_path / "ev"),
            *QUIET]
    assert runner.invoke(app, args).exit_code == 0
    settings = tmp_path / "ev" / "ranks" / "bigrec-l2.settings.json"
    whole = settings.read_bytes()
    settings.write_text(text)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert settings.read_bytes() == whole


def test_a_demo_step_whose_output_is_gone_is_run_again_or_named(workspace, tmp_path):
    """The step was marked done, so a rerun skipped it and the summary read the missing
    results.md: a FileNotFoundError traceback."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--model", str(workspace / "model"), "--data",
            str(workspace / "prepared"), "--layer", "2", "--train-samples", "8",
            "--annotate-samples", "6", "--test-samples", "2", "--likelihood-samples", "2",
            *QUIET]
    assert runner.invoke(app, args).exit_code == 0
    table = (out / "results" / "results.md").read_text()
    (out / "results" / "results.md").unlink()
    result = runner.invoke(app, args)  # its steps' lines, then the error's
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {out / 'results' / 'results.md'} is missing; delete {out / '.done-results'} "
        f"and rerun the same demo (that step runs again, the others are kept)")
    shutil.rmtree(out / "results")  # a deleted step folder: the step runs again
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "results" / "results.md").read_text() == table


@pytest.mark.parametrize("component", ["sasrec", "mlp"])
@pytest.mark.parametrize("how", ["weights of another", "no settings"])
def test_weights_and_config_that_do_not_match_are_one_error_naming_the_folder(tmp_path,
                                                                            component, how):
    """A weights file copied from another save (another catalog size or MLP width), or a
    config.json without its settings: a RuntimeError or KeyError from the loader."""
    from automr.recommenders.sasrec import SASRec, SASRecConfig
    from automr.retrievers import load_retriever
    from automr.retrievers.mlp import MLPRetriever, MLPRetrieverConfig

    if component == "sasrec":
        make = lambda n: SASRec(SASRecConfig(hidden=8), n_items=n)  # noqa: E731
        weights, key, load = "model.safetensors", "config", SASRec.load
    else:
        make = lambda n: MLPRetriever(MLPRetrieverConfig(hidden_size=8, mlp_hidden=n))  # noqa: E731
        weights, key, load = "retriever.safetensors", "settings", load_retriever
    make(5).save(tmp_path / "a")
    make(6).save(tmp_path / "b")
    if how == "weights of another":
        shutil.copy(tmp_path / "b" / weights, tmp_path / "a" / weights)
    else:
        config = json.loads((tmp_path / "a" / "config.json").read_text())
        del config[key]
        (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(AutomrError, match="do not match") as error:
        load(tmp_path / "a")
    assert str(tmp_path / "a") in str(error.value)


@pytest.mark.parametrize("text", ["[]", "3", "{}", '{"format": "automr.metric_report/1"}'])
def test_a_json_file_of_another_kind_is_one_line_naming_it_and_its_format(tmp_path, text):
    """Every artifact read with its format (a saved report, an export, an RQ2 result, ...) is
    refused the same way when the JSON is valid but no such artifact; an RQ2 result given a
    list was an AttributeError traceback."""
    from automr.experiments.rq2 import RQ2_FORMAT, RQ2Result
    from automr.storage import read_json

    path = tmp_path / "rq2.json"
    path.write_text(text)
    with pytest.raises(AutomrError, match=r"rq2\.json has format .*, expected 'automr\.rq2/1': "
                                          r"it is another kind of file; pass one written by "
                                          r"`automr rq2`"):
        RQ2Result.load(path)
    assert read_json(path) == json.loads(text)  # without a format: any valid JSON
    path.write_text(json.dumps({"format": RQ2_FORMAT}))
    assert read_json(path, "x", RQ2_FORMAT) == {"format": RQ2_FORMAT}


def test_a_retriever_trained_into_a_folder_whose_marker_is_a_link_writes_nothing_outside(
        workspace, tmp_path):
    """`.training-unfinished` planted as a link to a missing path: `retriever train --out` made
    that file outside the folder (the received-folders review)."""
    out = tmp_path / "ret"
    out.mkdir()
    outside = tmp_path / "elsewhere" / "made-by-automr"
    outside.parent.mkdir()
    (out / ".training-unfinished").symlink_to(outside)
    result = runner.invoke(app, [
        "retriever", "train", "--annotations", str(workspace / "ann"), "--data",
        str(workspace / "prepared"), "--memory", str(workspace / "mem"), "--out", str(out),
        "--quiet"])
    assert "follows no link" in one_line_error(result, out / ".training-unfinished")
    assert not outside.exists()


def test_a_loop_of_links_or_a_link_to_nothing_is_one_line(workspace, tmp_path):
    """--out or --data a loop of links was a raw RuntimeError or OSError (ELOOP); memory build
    into a link to a missing folder said 'file exists' (the environment review)."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing" / "mem")
    loop = "leads back to itself (a loop of links)"
    for args in (["evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "a"),
                  "--methods", "pop", "--samples", "2", *QUIET],
                 ["evaluate", "--data", str(tmp_path / "a"), "--out", str(tmp_path / "e"),
                  "--methods", "pop", "--samples", "2", *QUIET],
                 ["data", "prepare", "csv", "--interactions", str(workspace / "raw" /
                                                                  "interactions.csv"),
                  "--items", str(workspace / "raw" / "items.csv"), "--train-months", "2",
                  "--min-item-interactions", "1", "--out", str(tmp_path / "a")]):
        result = runner.invoke(app, args)  # (data prepare prints its reading first)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert loop in result.output.strip().splitlines()[-1]
    result = runner.invoke(app, ["memory", "build", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path / "dangling"), "--model",
                                 str(workspace / "model"), "--layer", "2", *QUIET])
    assert "which does not exist" in one_line_error(result, tmp_path / "dangling")


def test_the_link_scan_of_path_error_survives_a_folder_it_cannot_look_into(monkeypatch):
    """The scan for links to nothing raised PermissionError inside the error handler: a
    traceback where 'permission denied' was one line, for a folder the user cannot enter
    (the diff review; as root every folder opens, so the scan's OSError is made here)."""
    import errno

    from automr.cli.common import path_error

    def no_permission(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_symlink", no_permission)
    error = PermissionError(errno.EACCES, "Permission denied", "noperm/sub/out")
    assert path_error(error, [Path("noperm/sub/out")]) == \
        "cannot use noperm/sub/out: permission denied"
    error = FileNotFoundError(errno.ENOENT, "No such file", "noperm/sub/out")
    assert "does not exist" in path_error(error, [Path("noperm/sub/out")])


def test_a_path_that_is_not_utf8_is_one_line(workspace, tmp_path):
    """A folder named with a Latin-1 byte: evaluate's results.json was a raw UnicodeEncodeError,
    memory build wrote every file and then said a shard was missing, annotate called an intact
    memory damaged (the environment review)."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    shutil.copytree(workspace / "prepared", odd)
    result = runner.invoke(app, ["evaluate", "--data", str(odd), "--out", str(tmp_path / "e"),
                                 "--methods", "pop", "--samples", "2", *QUIET])
    assert "not a valid UTF-8 path" in one_line_error(result)
    result = runner.invoke(app, ["memory", "build", "--data", str(workspace / "prepared"),
                                 "--out", str(odd / "mem"), "--model", str(workspace / "model"),
                                 "--layer", "2", *QUIET])
    assert "not a valid UTF-8 path" in one_line_error(result)
    assert not (odd / "mem").exists()
