"""automr called from several threads of one process: what it shares across threads is
guarded (loading, tokenizing); docs/api/index.md says what is not (one model per thread)."""

import sys
import threading
from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel

from automr.data.prompts import encode_texts
from automr.llm.loading import load_model
from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer


@pytest.fixture
def often_switching():
    """Threads switch every few microseconds: interleavings a test must see come often."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _together(calls: list[Callable[[], object]]) -> list[object]:
    """Each call in its own thread, started at once; the results (or what each raised)."""
    barrier = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            out[i] = call()
        except Exception as error:  # the test reads it
            out[i] = error

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def test_models_loaded_in_two_threads_at_once_leave_transformers_as_it_was(
        tmp_path, often_switching):
    """transformers swaps ``PreTrainedModel.tie_weights`` and ``torch.nn.init``'s functions for
    the length of a load; two loads at once left them swapped: every later load of a model
    with tied embeddings (SmolLM2) was refused with advice about its config, and every later
    initialisation (a retriever's, SASRec's) did nothing."""
    tiny_model(tiny_config("llama", num_layers=2)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    normal, tie = torch.nn.init.normal_, PreTrainedModel.tie_weights
    for _ in range(4):
        loads = _together([lambda: load_model(str(tmp_path), device="cpu")] * 2)
        assert not [r for r in loads if isinstance(r, Exception)], loads
        assert torch.nn.init.normal_ is normal and PreTrainedModel.tie_weights is tie
    load_model(str(tmp_path), device="cpu")


def test_a_model_described_beside_a_load_leaves_torchs_default_dtype_as_it_was(
        tmp_path, often_switching):
    """describe_model (`automr model info`) built its meta model by from_config outside the
    load lock: beside a load, its bfloat16 default dtype stayed torch's for the rest of the
    process (every later tensor bfloat16), or its tied head was refused (the threads
    review)."""
    from automr.llm.loading import describe_model

    tiny_model(tiny_config("llama", num_layers=2)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    for _ in range(4):
        done = _together([lambda: describe_model(str(tmp_path), dtype="bfloat16"),
                          lambda: load_model(str(tmp_path), device="cpu", dtype="float32")])
        assert not [r for r in done if isinstance(r, Exception)], done
        assert torch.get_default_dtype() == torch.float32


def test_a_padded_encoding_in_another_thread_leaves_this_ones_ids_alone(often_switching):
    """A fast tokenizer's padding is a setting each call makes on its backend: one thread
    embedding titles (padded) made another's unpadded target ids come out padded."""
    tokenizer = tiny_tokenizer()
    titles = [f"Title {k} " + "x" * (k % 7) for k in range(12)]
    expected = encode_texts(tokenizer, titles, add_special_tokens=False)["input_ids"]
    padded = [f"a longer text {'y' * k}" for k in range(9)]

    def padding() -> None:
        for _ in range(400):
            encode_texts(tokenizer, padded, padding=True, return_tensors="pt")

    def targets() -> int:
        return sum(encode_texts(tokenizer, titles, add_special_tokens=False)["input_ids"] !=
                   expected for _ in range(400))

    results = _together([padding, targets])
    assert results == [None, 0]


def test_a_summary_prompt_in_another_thread_leaves_a_padded_batch_padded(tiny_models,
                                                                        often_switching):
    """TRSR's summary prompts were tokenized beside the lock: a padded batch in another thread
    came out ragged (a ValueError making its tensor)."""
    from automr.contexts.summaries import SummaryWriter

    tokenizer = tiny_tokenizer()
    writer = SummaryWriter(tiny_models["llama"], tokenizer)
    padded = [f"a longer text {'y' * k}" for k in range(9)]

    def padding() -> None:
        for _ in range(400):
            encode_texts(tokenizer, padded, padding=True, return_tensors="pt")

    def summaries() -> None:
        for k in range(400):
            writer.encode(f"Summarise the items {'z' * (k % 5)}")

    assert _together([padding, summaries]) == [None, None]


def test_two_threads_writing_one_file_each_write_it_whole(tmp_path, often_switching):
    """Both wrote one temporary sibling (named by the process), each removing the other's
    before its rename: a FileNotFoundError in one of them (two evaluations of one folder)."""
    from automr.storage import write_text_atomic

    target = tmp_path / "results.json"

    def write(text: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(300):
                write_text_atomic(target, text * 2000)
        return run

    assert _together([write("a"), write("b")]) == [None, None]
    assert target.read_text() in ("a" * 2000, "b" * 2000)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
