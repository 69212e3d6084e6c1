"""Shared fixtures: tiny offline models (fast) and the real embedded model (one download)."""

import contextlib
import os
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, settings

from automr.testing.tiny import TINY_ARCHITECTURES, tiny_config, tiny_model, tiny_tokenizer

settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=25)
PROFILE = "ci" if os.environ.get("CI") else "dev"
settings.register_profile(f"{PROFILE}-unshrunk", settings.get_profile(PROFILE),
                          phases=(Phase.explicit, Phase.reuse, Phase.generate))
settings.load_profile(PROFILE)

# pytest -n N (pytest-xdist) runs N workers: the cores are shared out between them, as two
# jobs that each take all of them slow each other far more than twofold
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, torch.get_num_threads() // WORKERS))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module, restored afterwards: tiny tensors gain nothing from
    threads (spinning threads on a busy machine cost ~100x), and a result compared with a
    worker process's (``OMP_NUM_THREADS=1``) is computed as the worker computes it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unshrunk():
    """For a test that expects a property to fail (a contract catching a faulty component): the
    first failing example is enough, and shrinking it took most of such a test's time."""
    settings.load_profile(f"{PROFILE}-unshrunk")
    yield
    settings.load_profile(PROFILE)


@pytest.fixture
def cut_at_first_checkpoint(monkeypatch):
    """``with cut_at_first_checkpoint(): finetune(...)``: the run stops (KeyboardInterrupt,
    expected) once its first checkpoint is written, as a run killed there would."""
    import automr.recommenders.finetune as ft

    @contextlib.contextmanager
    def cut():
        original = ft._save_checkpoint

        def crash(*args):
            original(*args)
            raise KeyboardInterrupt

        monkeypatch.setattr(ft, "_save_checkpoint", crash)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(ft, "_save_checkpoint", original)

    return cut


@pytest.fixture(scope="session")
def left_by_a_killed_write():
    """``left_by_a_killed_write(folder, "config.json", text)``: what a process SIGKILLed while
    writing ``folder/config.json`` leaves, its temporary ``.config.json.partial-HOST-PID``
    holding ``text``, with the PID of a process that has ended."""
    import subprocess
    import sys

    from automr.storage import HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()

    def leave(folder: Path, name: str, text: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".{name}.partial-{HOST}-{dead}").write_text(text)
        return folder

    return leave


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    """One tiny randomly initialised model (3 layers) per supported architecture."""
    return {arch: tiny_model(tiny_config(arch, num_layers=3), seed=seed)
            for seed, arch in enumerate(TINY_ARCHITECTURES)}


def save_writing_model(folder: Path) -> Path:
    """A tiny llama (4 layers) + byte tokenizer saved in ``folder``, whose replies to the
    synthetic prompts differ from sample to sample. ``save_tiny_model``'s (weights of std
    0.02) writes one text for every sample (the prompts end alike), so every L2 distance row
    is the same and a test of whose row or text a sample got cannot fail; weights of std 0.5
    make the reply depend on the history."""
    tiny_model(tiny_config("llama", num_layers=4, initializer_range=0.5)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def writing_model():
    """:func:`save_writing_model`, for the tests of L2 grounding on synthetic data."""
    return save_writing_model


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M (fetched into the cache on first use, ~90 MB)."""
    from automr.llm.loading import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def ml100k():
    """The real MovieLens-100K from the RecBole wheel (fetched into the cache once, ~2 MB)."""
    from automr.data import load_movielens_100k

    return load_movielens_100k()


@pytest.fixture(scope="session")
def ml100k_prepared(ml100k, tmp_path_factory):
    """ML-100K prepared under its preset protocol, as `automr data prepare ml-100k` does:
    ``(dataset, folder)``."""
    from automr.data import ProtocolConfig, prepare_dataset

    out: Path = tmp_path_factory.mktemp("ml") / "prepared"
    return prepare_dataset(ml100k, ProtocolConfig.movielens_100k(), out), out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the real model is a ``real_model`` test (``-m "not real_model"``
    leaves it out) whether or not it says so."""
    for item in items:
        if "real_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_model)
