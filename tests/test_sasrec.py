"""SASRec: padding invariance, causality, negative sampling, learning a pattern, save/load."""

import functools
import json
import random

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automr.errors import AutomrError
from automr.evaluation import ranks_from_scores
from automr.recommenders import SASRec, SASRecConfig, fit_sasrec
from automr.recommenders.sasrec import pad_histories, sample_negatives, validation_recall

N_ITEMS = 30
MAX_LEN = 8


@functools.cache
def _model() -> SASRec:
    """A small random SASRec with 2 blocks and 2 heads, in eval mode (shared, read-only)."""
    config = SASRecConfig(hidden=16, n_blocks=2, n_heads=2, max_len=MAX_LEN, dropout=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SASRec(config, N_ITEMS).eval()


history_strategy = st.lists(st.integers(1, N_ITEMS), min_size=1, max_size=MAX_LEN + 4)


def _cycle_sequence(rng: random.Random, n_items: int, length: int) -> list[int]:
    """Items follow each other in a fixed cycle: i -> i + 1, n_items -> 1."""
    start = rng.randint(1, n_items)
    return [(start - 1 + step) % n_items + 1 for step in range(length)]


def test_config_validation() -> None:
    assert SASRecConfig().lr == 1e-3
    with pytest.raises(AutomrError, match="divisible"):
        SASRecConfig(hidden=10, n_heads=3)
    with pytest.raises(ValueError):
        SASRecConfig(dropout=1.0)
    with pytest.raises(ValueError):
        SASRecConfig(patience=0)


@settings(max_examples=20)
@given(history=history_strategy, others=st.lists(history_strategy, min_size=1, max_size=4),
       slot=st.integers(0, 4))
def test_scores_do_not_depend_on_batch_padding(
    history: list[int], others: list[list[int]], slot: int
) -> None:
    model = _model()
    alone = model.score([history])
    batch = [*others]
    batch.insert(min(slot, len(batch)), history)
    together = model.score(batch)[min(slot, len(others))]
    torch.testing.assert_close(together, alone[0])
    assert alone.shape == (1, N_ITEMS + 1)
    assert alone[0, 0] == -torch.inf  # the padding column never outranks an item


@settings(max_examples=20)
@given(
    sequence=st.lists(st.integers(1, N_ITEMS), min_size=2, max_size=MAX_LEN),
    data=st.data(),
)
def test_outputs_are_causal(sequence: list[int], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(sequence) - 2), label="cut")
    tail = data.draw(
        st.lists(st.integers(1, N_ITEMS), min_size=len(sequence) - cut - 1,
                 max_size=len(sequence) - cut - 1),
        label="tail",
    )
    changed = sequence[: cut + 1] + tail
    model = _model()
    with torch.no_grad():
        states = model.encode(torch.tensor([sequence, changed]))
    torch.testing.assert_close(states[0, : cut + 1], states[1, : cut + 1])


def test_histories_are_truncated_to_their_most_recent_items() -> None:
    model = _model()
    long = list(range(1, MAX_LEN + 6))
    torch.testing.assert_close(model.score([long]), model.score([long[-MAX_LEN:]]))
    padded = pad_histories([[3], [1, 2, 3]], MAX_LEN, N_ITEMS)
    assert padded.tolist() == [[0, 0, 3], [1, 2, 3]]


@given(
    positives=st.lists(st.integers(1, 6), min_size=1, max_size=40),
    n_items=st.integers(6, 9),
    seed=st.integers(0, 2**31),
)
def test_negatives_are_never_the_positive(positives: list[int], n_items: int, seed: int) -> None:
    pos = torch.tensor([positives])
    neg = sample_negatives(pos, n_items, torch.Generator().manual_seed(seed))
    assert torch.all(neg != pos)
    assert torch.all((neg >= 1) & (neg <= n_items))


def test_negatives_cover_every_other_item() -> None:
    pos = torch.full((1, 4000), 3)
    neg = sample_negatives(pos, 5, torch.Generator().manual_seed(0))
    counts = torch.bincount(neg[0], minlength=6)
    assert counts[0] == 0 and counts[3] == 0
    assert torch.all((counts[[1, 2, 4, 5]] > 850) & (counts[[1, 2, 4, 5]] < 1150))


def test_learns_a_sequential_pattern_and_restores_the_best_epoch() -> None:
    n = 20
    rng = random.Random(0)
    train = [_cycle_sequence(rng, n, rng.randint(5, 20)) for _ in range(200)]
    valid = [(s[:-1], s[-1]) for s in (_cycle_sequence(rng, n, rng.randint(2, 10))
                                       for _ in range(60))]
    test = [(s[:-1], s[-1]) for s in (_cycle_sequence(rng, n, rng.randint(2, 10))
                                      for _ in range(60))]
    config = SASRecConfig(hidden=32, n_blocks=1, max_len=16, lr=1e-2, batch_size=64,
                          dropout=0.1, max_epochs=25, patience=3)
    rng_state = torch.get_rng_state()
    model, log = fit_sasrec(train, valid, config, n_items=n, quiet=True)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is left alone

    scores = model.score([h for h, _ in test])
    ranks = ranks_from_scores(scores, torch.tensor([t for _, t in test]))
    assert (ranks < 1).double().mean() >= 0.9
    # Early stopping keeps the best validation epoch's weights, not the last epoch's.
    assert validation_recall(model, valid, k=1) == log.best_valid_recall
    assert log.best_valid_recall == max(log.valid_recall)
    assert log.valid_recall[log.best_epoch - 1] == log.best_valid_recall
    assert len(log.losses) <= log.best_epoch + config.patience
    assert log.losses[-1] < log.losses[0]


def test_early_stopping_restores_the_best_weights() -> None:
    """On noise the validation recall falls after its peak; the returned model is the peak's."""
    rng = random.Random(2)
    train = [[rng.randint(1, 15) for _ in range(rng.randint(3, 10))] for _ in range(40)]
    valid = [([rng.randint(1, 15) for _ in range(4)], rng.randint(1, 15)) for _ in range(40)]
    checked = 0
    for seed in range(6):
        config = SASRecConfig(hidden=8, n_blocks=1, max_len=8, batch_size=16, lr=3e-2,
                              max_epochs=12, patience=3, seed=seed)
        model, log = fit_sasrec(train, valid, config, n_items=15, quiet=True)
        assert log.stopped_early == (len(log.losses) < config.max_epochs)
        assert validation_recall(model, valid, k=1) == log.best_valid_recall
        checked += log.valid_recall[-1] < log.best_valid_recall
    assert checked > 0  # at least one run where the last epoch was worse than the best


def test_training_is_seeded() -> None:
    rng = random.Random(1)
    train = [_cycle_sequence(rng, 12, 8) for _ in range(20)]
    config = SASRecConfig(hidden=8, n_blocks=1, max_len=8, batch_size=8, max_epochs=2, seed=4)
    first = fit_sasrec(train, [], config, quiet=True)[0]
    second = fit_sasrec(train, [], config, quiet=True)[0]
    other = fit_sasrec(train, [], attrs.evolve(config, seed=5), quiet=True)[0]
    torch.testing.assert_close(first.score([[1, 2, 3]]), second.score([[1, 2, 3]]))
    assert not torch.equal(first.score([[1, 2, 3]]), other.score([[1, 2, 3]]))
    assert first.n_items == 12  # inferred from the largest id


def test_save_load_round_trip(tmp_path) -> None:
    model = _model()
    model.save(tmp_path / "sasrec")
    meta = json.loads((tmp_path / "sasrec" / "config.json").read_text())
    assert meta["n_items"] == N_ITEMS and meta["config"]["max_len"] == MAX_LEN
    loaded = SASRec.load(tmp_path / "sasrec")
    assert loaded.config == model.config
    histories = [[1, 2, 3], [30], list(range(5, 17))]
    assert torch.equal(loaded.score(histories), model.score(histories))


def test_bad_inputs_are_refused(tmp_path) -> None:
    model = _model()
    with pytest.raises(AutomrError, match=r"1\.\.30"):
        model.score([[N_ITEMS + 1]])
    with pytest.raises(AutomrError, match="at least one item"):
        model.score([[]])
    with pytest.raises(AutomrError, match="left-padded"):
        model.encode(torch.tensor([[1, 2, 0]]))
    with pytest.raises(AutomrError, match="not a saved sasrec"):
        SASRec.load(tmp_path)
    with pytest.raises(AutomrError, match="2 or more items"):
        fit_sasrec([[1], [2]], [], SASRecConfig(), n_items=5, quiet=True)
