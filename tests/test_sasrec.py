"""SASRec: padding invariance, causality, negative sampling, learning a pattern, save/load."""

import functools
import itertools
import json
import math
import random

import attrs
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from automr.errors import AutomrError
from automr.evaluation import ranks_from_scores
from automr.evaluation.metrics import mean_metrics, seen_mask
from automr.recommenders import SASRec, SASRecConfig, fit_sasrec, sasrec as sasrec_module
from automr.recommenders.sasrec import (
    PAD,
    pad_histories,
    rank_targets,
    sample_negatives,
    seen_table,
    shuffled_ties,
    training_loss,
    training_tensors,
    validation_metric,
)

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
    assert SASRecConfig(monitor="recall@1").monitor == "recall@1"
    for bad in ("ndcg@0", "map@5", "ndcg10", "recall@-1"):
        with pytest.raises(ValueError):
            SASRecConfig(monitor=bad)
    with pytest.raises(AutomrError, match="divisible"):
        SASRecConfig(hidden=10, n_heads=3)
    for field in ("lr", "weight_decay"):  # trained every epoch, then 'scores contain NaN'
        with pytest.raises(ValueError, match=f"'{field}' must be < inf"):
            SASRecConfig(**{field: float("inf")})
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


def _sorted_seen(rows: list[set[int]], n_items: int) -> torch.Tensor:
    """Each row's ids sorted ascending, right-padded with n_items + 1."""
    width = max(1, *(len(r) for r in rows))
    return torch.tensor([sorted(r) + [n_items + 1] * (width - len(r)) for r in rows])


@given(data=st.data(), n_items=st.integers(2, 12), seed=st.integers(0, 2**31))
def test_negatives_avoid_the_positive_and_every_seen_item(
    data: st.DataObject, n_items: int, seed: int
) -> None:
    rows = data.draw(st.integers(1, 4), label="rows")
    seen = [data.draw(st.sets(st.integers(1, n_items), max_size=n_items - 2), label="seen")
            for _ in range(rows)]
    length = data.draw(st.integers(1, 12), label="length")
    positives = torch.tensor([data.draw(st.lists(st.integers(1, n_items), min_size=length,
                                                 max_size=length), label="positives")
                              for _ in range(rows)])
    negatives = sample_negatives(positives, _sorted_seen(seen, n_items), n_items,
                                 torch.Generator().manual_seed(seed))
    assert negatives.shape == positives.shape
    assert torch.all(negatives != positives)
    assert torch.all((negatives >= 1) & (negatives <= n_items))
    for row, items in enumerate(seen):
        assert not set(negatives[row].tolist()) & items


def test_negatives_are_uniform_over_the_allowed_items() -> None:
    pos = torch.full((1, 6000), 3)
    seen = _sorted_seen([{2, 3, 6}], 7)  # allowed: 1, 4, 5, 7
    neg = sample_negatives(pos, seen, 7, torch.Generator().manual_seed(0))
    counts = torch.bincount(neg[0], minlength=8)
    assert counts[[0, 2, 3, 6]].sum() == 0
    assert torch.all((counts[[1, 4, 5, 7]] > 1350) & (counts[[1, 4, 5, 7]] < 1650))


def test_negatives_are_seeded() -> None:
    pos, seen = torch.tensor([[1, 2, 3, 4]] * 3), _sorted_seen([{1, 5}, set(), {2, 3, 4}], 9)
    first = sample_negatives(pos, seen, 9, torch.Generator().manual_seed(7))
    assert torch.equal(first, sample_negatives(pos, seen, 9, torch.Generator().manual_seed(7)))


def test_no_allowed_negative_is_an_error() -> None:
    with pytest.raises(AutomrError, match="whole catalog"):
        sample_negatives(torch.tensor([[3]]), _sorted_seen([{1, 2}], 3), 3, torch.Generator())
    with pytest.raises(AutomrError, match="every one of the 3 items"):
        training_tensors([[1, 2, 3, 1]], 4, 3)


def test_a_user_who_has_seen_every_item_trains_under_cross_entropy() -> None:
    """CE samples no negative: the default loss refused a user whose items cover the catalog
    (a small catalog), which only BCE cannot train."""
    assert training_tensors([[1, 2, 3, 1]], 4, 3, negatives=False).inputs.shape[0] == 1
    sequences = [[1, 2, 3, 4, 5], [2, 3, 1], [4, 5, 2]]
    config = SASRecConfig(hidden=8, n_blocks=1, max_len=4, max_epochs=1)
    assert config.loss == "ce"
    _, log = fit_sasrec(sequences, [], config, n_items=5, quiet=True)
    assert len(log.losses) == 1 and all(math.isfinite(v) for v in log.losses)
    with pytest.raises(AutomrError, match="every one of the 5 items"):
        fit_sasrec(sequences, [], attrs.evolve(config, loss="bce"), n_items=5, quiet=True)


def test_training_rows_keep_the_last_max_len_steps_and_see_the_whole_sequence() -> None:
    data = training_tensors([[5, 1, 2, 3, 4, 6], [7], [2, 7]], max_len=3, n_items=9)
    assert data.inputs.tolist() == [[2, 3, 4], [0, 0, 2]]  # the 1-item user has no target
    assert data.positives.tolist() == [[3, 4, 6], [0, 0, 7]]
    assert seen_table(data, torch.arange(2), 9).tolist() == [[1, 2, 3, 4, 5, 6],
                                                             [2, 7, 10, 10, 10, 10]]
    windows = training_tensors([[5, 1, 2, 3, 4, 6], [7], [2, 7]], 3, 9, windows=True)
    assert windows.inputs.tolist() == [[2, 3, 4], [0, 5, 1], [0, 0, 2]]
    assert windows.positives.tolist() == [[3, 4, 6], [0, 1, 2], [0, 0, 7]]
    assert seen_table(windows, torch.arange(3), 9).tolist() == (
        [[1, 2, 3, 4, 5, 6]] * 2 + [[2, 7, 10, 10, 10, 10]])
    assert seen_table(windows, torch.tensor([2]), 9).tolist() == [[2, 7]]  # the batch's longest


@settings(max_examples=30, deadline=None)
@given(sequences=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=12), min_size=1,
                          max_size=8),
       heavy=st.sets(st.integers(1, 40), min_size=2, max_size=39), data=st.data())
def test_seen_table_is_each_rows_users_item_set(
    sequences: list[list[int]], heavy: set[int], data: st.DataObject
) -> None:
    """Against the plain per-user sets, with one heavy user (many items, many rows) among
    light ones; the stored items are only each user's distinct ids, not rows x heaviest."""
    sequences = [*sequences, sorted(heavy) * 2]
    n_items, max_len = 41, data.draw(st.integers(1, 6), label="max_len")
    data_ = training_tensors(sequences, max_len, n_items, windows=True)
    owners = [s for s in sequences if len(s) >= 2]
    assert data_.seen_items.numel() == sum(len(set(s)) for s in owners)
    user_of_row = [u for u, s in enumerate(owners) for _ in range(-(-(len(s) - 1) // max_len))]
    assert data_.users.tolist() == user_of_row
    n_rows = len(user_of_row)
    rows = data.draw(st.lists(st.integers(0, n_rows - 1), min_size=1, max_size=n_rows),
                     label="rows")
    width = max(len(set(owners[user_of_row[r]])) for r in rows)
    expected = [sorted(set(owners[user_of_row[r]])) for r in rows]
    expected = [e + [n_items + 1] * (width - len(e)) for e in expected]
    assert seen_table(data_, torch.tensor(rows), n_items).tolist() == expected


@given(data=st.data(), n_items=st.integers(2, 12), extra=st.integers(1, 5),
       seed=st.integers(0, 2**31))
def test_negatives_do_not_depend_on_how_wide_the_seen_table_is_padded(
    data: st.DataObject, n_items: int, extra: int, seed: int
) -> None:
    """A batch's table is padded to its own longest row: the same draws as a wider table."""
    rows = data.draw(st.integers(1, 4), label="rows")
    seen = [data.draw(st.sets(st.integers(1, n_items), max_size=n_items - 2), label="seen")
            for _ in range(rows)]
    positives = torch.tensor(data.draw(st.lists(st.lists(st.integers(1, n_items), min_size=5,
                                                         max_size=5),
                                                min_size=rows, max_size=rows), label="pos"))
    table = _sorted_seen(seen, n_items)
    wider = F.pad(table, (0, extra), value=n_items + 1)
    draws = [sample_negatives(positives, t, n_items, torch.Generator().manual_seed(seed))
             for t in (table, wider)]
    assert torch.equal(*draws)


@given(sequence=st.lists(st.integers(1, 30), min_size=2, max_size=40), max_len=st.integers(1, 9))
def test_windows_make_every_position_a_target_once(sequence: list[int], max_len: int) -> None:
    data = training_tensors([sequence], max_len, 31, windows=True)
    pairs = sorted((i, p) for row_in, row_pos in zip(data.inputs.tolist(),
                                                      data.positives.tolist(), strict=True)
                   for i, p in zip(row_in, row_pos, strict=True) if p)
    assert pairs == sorted(itertools.pairwise(sequence))
    assert len(data.inputs) == -(-(len(sequence) - 1) // max_len)


def test_ties_are_the_rows_timestamp_groups() -> None:
    data = training_tensors([[1, 2, 3, 4, 5, 6]], 6, 9, times=[[1, 1, 2, 2, 2, 3]])
    assert data.ties.tolist() == [[-1, 0, 0, 1, 1, 1, 2]]
    cut = training_tensors([[1, 2, 3, 4, 5, 6]], 3, 9, windows=True, times=[[1, 1, 2, 2, 2, 3]])
    assert cut.inputs.tolist() == [[3, 4, 5], [0, 1, 2]]
    assert cut.ties.tolist() == [[0, 0, 0, 1], [-1, 0, 0, 1]]  # from each row's first item
    plain = training_tensors([[1, 2, 3, 4, 5, 6]], 6, 9)
    assert plain.ties.tolist() == [[-1, 0, 1, 2, 3, 4, 5]]  # no times: every item alone
    with pytest.raises(AutomrError, match="non-decreasing"):
        training_tensors([[1, 2, 3]], 6, 9, times=[[2, 1, 3]])
    with pytest.raises(AutomrError, match="one timestamp per item"):
        training_tensors([[1, 2, 3]], 6, 9, times=[[1, 2]])


@settings(max_examples=50)
@given(gaps=st.lists(st.lists(st.integers(0, 2), min_size=2, max_size=30), min_size=1,
                     max_size=4),
       max_len=st.integers(1, 12), windows=st.booleans(), seed=st.integers(0, 2**31))
def test_shuffled_ties_permute_items_only_within_their_timestamp(
    gaps: list[list[int]], max_len: int, windows: bool, seed: int
) -> None:
    """Each row's items keep their positions' timestamps (a permutation inside every group),
    padding stays on the left, positives are the next inputs; without ties nothing moves."""
    first = itertools.accumulate([0] + [len(g) for g in gaps])
    sequences = [list(range(a + 1, a + len(g) + 1)) for a, g in zip(first, gaps, strict=False)]
    times = [list(itertools.accumulate(g)) for g in gaps]
    time_of = {i: t for s, ts in zip(sequences, times, strict=True)
               for i, t in zip(s, ts, strict=True)}
    n_items = sum(map(len, sequences)) + 1
    data = training_tensors(sequences, max_len, n_items, windows=windows, times=times)
    shuffled = shuffled_ties(data, torch.Generator().manual_seed(seed))
    before = torch.cat([data.inputs, data.positives[:, -1:]], dim=1).tolist()
    after = torch.cat([shuffled.inputs, shuffled.positives[:, -1:]], dim=1).tolist()
    for old, new in zip(before, after, strict=True):
        assert [time_of.get(i) for i in old] == [time_of.get(i) for i in new]
        assert sorted(old) == sorted(new)
    real = shuffled.inputs != PAD
    assert torch.equal(real, data.inputs != PAD)
    items = torch.tensor(after)
    assert torch.equal(shuffled.positives, torch.where(real, items[:, 1:], PAD))
    plain = training_tensors(sequences, max_len, n_items, windows=windows)
    unmoved = shuffled_ties(plain, torch.Generator().manual_seed(seed))
    assert torch.equal(unmoved.inputs, plain.inputs)
    assert torch.equal(unmoved.positives, plain.positives)


def test_shuffled_ties_draw_every_order() -> None:
    data = training_tensors([[1, 2, 3, 4]], 3, 9, times=[[5, 7, 7, 7]])
    generator = torch.Generator().manual_seed(0)
    orders = {tuple(shuffled_ties(data, generator).positives[0].tolist()) for _ in range(200)}
    assert orders == {tuple(p) for p in itertools.permutations([2, 3, 4])}


def test_training_with_shuffled_ties_learns_what_follows_a_timestamp() -> None:
    """Each user rates a pair of items at once, in a random order, then the next pair: the
    model trained on shuffled ties ranks the next pair first after either order."""
    n, rng = 30, random.Random(0)  # pair p is items 3p + 1 and 3p + 2; p + 1 follows p

    def user(length: int) -> tuple[list[int], list[int]]:
        start, items, times = rng.randrange(n // 3), [], []
        for step in range(length):
            pair = (start + step) % (n // 3)
            items += rng.sample([3 * pair + 1, 3 * pair + 2], 2)
            times += [step, step]
        return items, times

    users = [user(rng.randint(3, 6)) for _ in range(200)]
    config = SASRecConfig(hidden=32, n_blocks=1, max_len=12, lr=1e-2, batch_size=64,
                          max_epochs=30, shuffle_ties=True)
    model, _ = fit_sasrec([u for u, _ in users], [], config, times=[t for _, t in users],
                          n_items=n, quiet=True)
    tests = [user(3) for _ in range(50)]
    samples = [(items[:4], items[4 + rng.randrange(2)]) for items, _ in tests]
    assert (rank_targets(model, samples, exclude_seen=True) < 2).double().mean() >= 0.9


@settings(max_examples=10, deadline=None)
@given(sequences=st.lists(st.lists(st.integers(1, 12), min_size=2, max_size=14),
                          min_size=1, max_size=6),
       seed=st.integers(0, 1000))
def test_training_never_samples_an_item_of_the_users_sequence(
    sequences: list[list[int]], seed: int
) -> None:
    """End to end: every negative fit_sasrec draws avoids its user's *whole* sequence (not only
    the kept last max_len + 1 items). Users are told apart by a private first item."""
    n_items = 14 + len(sequences)  # one more than any user holds
    users = [[12 + u + 1, *items] for u, items in enumerate(sequences)]
    drawn: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(positives, seen, n, generator):
        negatives = sample_negatives(positives, seen, n, generator)
        drawn.append((seen, positives, negatives))
        return negatives

    config = SASRecConfig(hidden=8, n_blocks=1, max_len=4, batch_size=2, max_epochs=2,
                          seed=seed, loss="bce")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sasrec_module, "sample_negatives", recording)
        fit_sasrec(users, [], config, n_items=n_items, quiet=True)
    assert drawn
    for seen, positives, negatives in drawn:
        for row in range(len(seen)):
            owner = [u for u in users if set(u) == set(seen[row].tolist()) - {n_items + 1}]
            assert owner  # the row's seen set is exactly one user's whole sequence
            real = positives[row] != 0
            assert set(positives[row][real].tolist()) <= set(owner[0])
            assert not set(negatives[row][real].tolist()) & set(owner[0])


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_learns_a_sequential_pattern_and_restores_the_best_epoch(loss: str) -> None:
    n = 40
    rng = random.Random(0)
    train = [_cycle_sequence(rng, n, rng.randint(5, 15)) for _ in range(300)]
    valid = [(s[:-1], s[-1]) for s in (_cycle_sequence(rng, n, rng.randint(2, 10))
                                       for _ in range(60))]
    test = [(s[:-1], s[-1]) for s in (_cycle_sequence(rng, n, rng.randint(2, 10))
                                      for _ in range(60))]
    config = SASRecConfig(hidden=32, n_blocks=1, max_len=16, lr=1e-2, batch_size=64,
                          dropout=0.1, max_epochs=40, patience=3, monitor="recall@1",
                          loss=loss)
    rng_state = torch.get_rng_state()
    model, log = fit_sasrec(train, valid, config, n_items=n, quiet=True)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is left alone

    # Negatives never include the user's items, so seen items are left out of the ranking.
    assert (rank_targets(model, test, exclude_seen=True) < 1).double().mean() >= 0.9
    # Early stopping keeps the best validation epoch's weights, not the last epoch's.
    assert validation_metric(model, valid, "recall@1") == log.best_valid
    assert log.best_valid == max(log.valid)
    assert log.valid[log.valid_epochs.index(log.best_epoch)] == log.best_valid
    assert len(log.losses) <= log.best_epoch + config.patience * config.valid_every
    assert log.losses[-1] < log.losses[0]


@settings(max_examples=20, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4), seq=st.integers(1, MAX_LEN))
def test_ce_loss_is_cross_entropy_over_the_catalog_at_real_positions(
    data: st.DataObject, batch: int, seq: int
) -> None:
    """CE = F.cross_entropy on the full [batch seq n_items + 1] logits (padding column -inf),
    padding positions ignored; gradients agree too."""
    items = st.lists(st.integers(1, N_ITEMS), min_size=seq, max_size=seq)
    inputs = torch.tensor([data.draw(items, label="inputs") for _ in range(batch)])
    positives = torch.tensor([data.draw(items, label="positives") for _ in range(batch)])
    for row in range(batch):  # left padding, shared by a row's inputs and positives
        pad = data.draw(st.integers(0, seq - 1), label="padding")
        inputs[row, :pad] = positives[row, :pad] = PAD
    model = SASRec(attrs.evolve(_model().config, loss="ce"), N_ITEMS)
    model.load_state_dict(_model().state_dict())
    model.eval()  # no dropout: both computations see the same states
    loss = training_loss(model, inputs, positives, positives, torch.Generator())
    (ours,) = torch.autograd.grad(loss, model.item_emb.weight)
    logits = model.encode(inputs) @ model.item_emb.weight.T
    logits[..., PAD] = -torch.inf
    plain = F.cross_entropy(logits.flatten(0, 1), positives.flatten(), ignore_index=PAD)
    (expected,) = torch.autograd.grad(plain, model.item_emb.weight)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(ours, expected)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4), seq=st.integers(1, MAX_LEN),
       n_items=st.integers(2, 40), chunk_logits=st.integers(1, 200), seed=st.integers(0, 99))
def test_chunked_ce_equals_the_dense_loss_and_every_gradient(
    data: st.DataObject, batch: int, seq: int, n_items: int, chunk_logits: int, seed: int
) -> None:
    """CE over chunks of positions (recomputed in the backward pass) = the dense
    [positions n_items] computation: the loss and every parameter's gradient, with dropout
    on (the same seed for both) and padding positions left out."""
    items = st.lists(st.integers(1, n_items), min_size=seq, max_size=seq)
    inputs = torch.tensor([data.draw(items, label="inputs") for _ in range(batch)])
    positives = torch.tensor([data.draw(items, label="positives") for _ in range(batch)])
    for row in range(batch):
        pad = data.draw(st.integers(0, seq - 1), label="padding")
        inputs[row, :pad] = positives[row, :pad] = PAD
    config = SASRecConfig(hidden=8, n_blocks=2, n_heads=2, max_len=MAX_LEN, dropout=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SASRec(config, n_items)
        state = torch.get_rng_state()
        loss = training_loss(model, inputs, positives, positives, torch.Generator(),
                             chunk_logits=chunk_logits)
        ours = torch.autograd.grad(loss, list(model.parameters()))
        torch.set_rng_state(state)  # the same dropout masks
        states = model.encode(inputs)[positives != PAD]
        logits = states @ model.item_emb.weight[PAD + 1 :].T
        dense = F.cross_entropy(logits, positives[positives != PAD] - 1)
        expected = torch.autograd.grad(dense, list(model.parameters()))
    torch.testing.assert_close(loss, dense)
    for (name, _), got, want in zip(model.named_parameters(), ours, expected, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")


@settings(max_examples=20, deadline=None)
@given(sequences=st.lists(st.lists(st.integers(1, N_ITEMS), min_size=2, max_size=MAX_LEN + 3),
                          min_size=1, max_size=7),
       batch_size=st.integers(1, 7), seed=st.integers(0, 99))
def test_training_batches_drop_only_all_padding_columns_and_lose_nothing(
    sequences: list[list[int]], batch_size: int, seed: int
) -> None:
    """An epoch trims each batch to its real columns before the forward: every batch it feeds
    training_loss is some of the data's rows less their leading all-padding columns (none of
    which is kept), and its states, logits, loss and gradients at the real positions equal
    those of the same rows left max_len wide. Rows of 1..max_len items (sequences of up to
    max_len + 3 items, cut into windows), dropout 0 and lr 0: every forward sees one model."""
    config = SASRecConfig(hidden=8, n_blocks=2, n_heads=2, max_len=MAX_LEN, dropout=0.0,
                          batch_size=batch_size, shuffle_ties=False, loss="ce")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SASRec(config, N_ITEMS)
    data = training_tensors(sequences, MAX_LEN, N_ITEMS, windows=True)
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(model, inputs, positives, seen, generator, **kwargs):
        batches.append((inputs, positives))
        return training_loss(model, inputs, positives, seen, generator, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sasrec_module, "training_loss", recording)
        epoch_loss = sasrec_module._train_epoch(
            model, torch.optim.SGD(model.parameters(), lr=0.0), data,
            torch.Generator().manual_seed(seed))
    model.eval()
    params = list(model.parameters())
    rows: list[list[int]] = []
    for inputs, positives in batches:
        width = inputs.shape[1]
        assert bool((inputs[:, 0] != PAD).any())  # no all-padding column is left
        wide_in = F.pad(inputs, (MAX_LEN - width, 0), value=PAD)
        wide_pos = F.pad(positives, (MAX_LEN - width, 0), value=PAD)
        rows += torch.cat([wide_in, wide_pos], dim=1).tolist()
        real = inputs != PAD
        states = model.encode(inputs)
        wide_states = model.encode(wide_in)[:, -width:]
        torch.testing.assert_close(states[real], wide_states[real])
        torch.testing.assert_close(states[real] @ model.item_emb.weight.T,
                                   wide_states[real] @ model.item_emb.weight.T)
        trimmed = training_loss(model, inputs, positives, positives, torch.Generator())
        wide = training_loss(model, wide_in, wide_pos, wide_pos, torch.Generator())
        torch.testing.assert_close(trimmed, wide)
        for got, want in zip(torch.autograd.grad(trimmed, params),
                             torch.autograd.grad(wide, params), strict=True):
            torch.testing.assert_close(got, want)
    # Together the batches are the data's rows, each once, with only padding dropped.
    assert sorted(rows) == sorted(torch.cat([data.inputs, data.positives], dim=1).tolist())
    plain = training_loss(model, data.inputs, data.positives, data.positives, torch.Generator())
    assert epoch_loss == pytest.approx(float(plain.detach()), rel=1e-5)


def test_validation_metric_is_the_mean_full_ranking_metric() -> None:
    model = _model()
    rng = random.Random(3)
    samples = [([rng.randint(1, N_ITEMS) for _ in range(rng.randint(1, 12))],
                rng.randint(1, N_ITEMS)) for _ in range(50)]
    scores = model.score([h for h, _ in samples])
    targets = torch.tensor([t for _, t in samples])
    for exclude_seen in (False, True):
        exclude = seen_mask([h for h, _ in samples], N_ITEMS + 1) if exclude_seen else None
        ranks = ranks_from_scores(scores, targets, exclude)
        assert torch.equal(rank_targets(model, samples, exclude_seen, batch_size=7), ranks)
        expected = mean_metrics(ranks, (1, 5, 10))
        for name in ("recall@5", "ndcg@10", "ndcg@1"):
            assert validation_metric(model, samples, name, batch_size=7,
                                     exclude_seen=exclude_seen) == pytest.approx(expected[name])
    # Leaving seen items out never worsens a rank, and the target is never left out.
    assert torch.all(rank_targets(model, samples, True) <= rank_targets(model, samples, False))


def test_validation_every_n_epochs() -> None:
    rng = random.Random(4)
    train = [_cycle_sequence(rng, 10, 6) for _ in range(20)]
    valid = [([1, 2], 3), ([4], 5)]
    config = SASRecConfig(hidden=8, n_blocks=1, max_len=6, max_epochs=7, valid_every=3,
                          patience=5)
    _, log = fit_sasrec(train, valid, config, quiet=True)
    assert log.valid_epochs == (3, 6, 7) and len(log.valid) == 3 and len(log.losses) == 7
    assert log.monitor == "ndcg@10" and log.best_epoch in log.valid_epochs


def test_weight_decay_shrinks_the_trained_weights() -> None:
    """``weight_decay`` reaches the optimizer: the same seeded run ends with smaller weights."""
    rng = random.Random(4)
    train = [_cycle_sequence(rng, 10, 6) for _ in range(20)]

    def norm(decay: float) -> float:
        config = SASRecConfig(hidden=8, n_blocks=1, max_len=6, max_epochs=4, lr=5e-2,
                              weight_decay=decay)
        model, _ = fit_sasrec(train, [], config, n_items=10, quiet=True)
        return float(sum(p.detach().square().sum() for p in model.parameters()))

    assert norm(1.0) < 0.75 * norm(0.0)


def test_early_stopping_restores_the_best_weights() -> None:
    """On noise the validation recall falls after its peak; the returned model is the peak's."""
    rng = random.Random(2)
    train = [[rng.randint(1, 15) for _ in range(rng.randint(3, 10))] for _ in range(40)]
    valid = [([rng.randint(1, 15) for _ in range(4)], rng.randint(1, 15)) for _ in range(40)]
    checked = 0
    for seed in range(6):
        config = SASRecConfig(hidden=8, n_blocks=1, max_len=8, batch_size=16, lr=3e-2,
                              max_epochs=12, patience=3, seed=seed, monitor="recall@1")
        model, log = fit_sasrec(train, valid, config, n_items=15, quiet=True)
        assert log.stopped_early == (len(log.losses) < config.max_epochs)
        assert validation_metric(model, valid, "recall@1") == log.best_valid
        checked += log.valid[-1] < log.best_valid
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


def test_a_model_saved_under_the_home_folder_loads_from_there(tmp_path, monkeypatch) -> None:
    """``load`` read ``~/sasrec`` in the home folder, ``save`` wrote a folder named ``~`` in
    the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model = _model()
    model.save("~/sasrec")
    assert (tmp_path / "home" / "sasrec" / "config.json").is_file()
    assert not (tmp_path / "~").exists()
    assert SASRec.load("~/sasrec").config == model.config


def test_a_bfloat16_model_loads_in_bfloat16_with_its_scores(tmp_path) -> None:
    model = _model().to(torch.bfloat16)
    model.save(tmp_path / "sasrec")
    loaded = SASRec.load(tmp_path / "sasrec")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
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


def test_sasrec_method_takes_a_device_as_a_model_load_does(tmp_path):
    """SASRecMethod(dataset, device="auto") (load_model's default) was taken and failed when
    it first ranked, a bare RuntimeError from torch; now "auto" resolves and an unknown or
    missing device is refused at construction."""
    from automr.devices import resolve_device
    from automr.methods import SASRecMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    config = SASRecConfig(hidden=8, n_blocks=1, n_heads=1, max_len=8, max_epochs=1)
    method = SASRecMethod(dataset, config, device="auto")
    samples = dataset.samples("test")[:2]
    assert len(method.rank(samples)) == 2
    # a generator of samples, as GenerativeMethod and PriorWeightedMethod take: it was refused
    assert method.rank(iter(samples)) == method.rank(samples)
    assert torch.equal(method.scores(s for s in samples), method.scores(samples))
    assert method.device == resolve_device("auto")
    with pytest.raises(AutomrError, match="unknown device 'gpu'"):
        SASRecMethod(dataset, config, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(AutomrError, match="CUDA is not available"):
            SASRecMethod(dataset, config, device="cuda")


def test_sasrec_method_refuses_a_saved_model_of_another_config_or_dataset(tmp_path):
    """SASRecMethod(saved=DIR) loaded whatever DIR held: another seed or size, or another
    dataset, pointed at the same folder ranked with the first model while its settings named
    its own config."""
    from automr.methods import SASRecMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    config = SASRecConfig(hidden=8, n_blocks=1, n_heads=1, max_len=8, max_epochs=1)
    samples = dataset.samples("test")[:3]
    first = SASRecMethod(dataset, config, saved=tmp_path / "sasrec").rank(samples)
    again = SASRecMethod(dataset, config, saved=str(tmp_path / "sasrec"))  # a str: a Path
    assert again.rank(samples) == first  # its own config: loaded, not trained again
    # a str folder failed at the first rank ('str' / 'str'); a folder for the dataset or a
    # dict for the config failed there too, with an AttributeError (the public-API review)
    for wrong in (dict(dataset=str(tmp_path)), dict(config={"max_epochs": 1})):
        with pytest.raises(AutomrError, match=f"parameter {next(iter(wrong))}="):
            SASRecMethod(**{"dataset": dataset, "config": config, **wrong})
    other = SASRecMethod(dataset, attrs.evolve(config, seed=1, hidden=16),
                         saved=tmp_path / "sasrec")
    with pytest.raises(AutomrError, match=r"another SASRec than this one's: hidden 8 \(not "
                                          r"16\), seed 0 \(not 1\); give"):
        other.rank(samples)
    batch = SASRecMethod(dataset, attrs.evolve(config, eval_batch_size=3),
                         saved=tmp_path / "sasrec")
    assert batch.rank(samples) == first  # the ranking batch size is no other model
    elsewhere = SASRecMethod(synthetic_dataset(tmp_path / "b", seed=1), config,
                             saved=tmp_path / "sasrec")  # another dataset, as many items
    with pytest.raises(AutomrError, match=r"this one's: trained on another dataset; give"):
        elsewhere.rank(elsewhere.dataset.samples("test")[:3])


def test_sasrec_methods_saved_folder_reads_a_tilde_as_home(tmp_path, monkeypatch):
    """saved="~/sasrec" was saved under the home folder but looked for under a folder named
    "~": every run trained again, past the check of another config's model (the diff
    review)."""
    from automr.methods import SASRecMethod
    from automr.testing.synthetic import synthetic_dataset

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    method = SASRecMethod(synthetic_dataset(tmp_path), saved="~/sasrec")
    assert method.saved == tmp_path / "home" / "sasrec"


def test_popularity_ranks_no_samples_as_the_other_floors_do(tmp_path):
    """PopularityMethod.rank([]) failed a shape check (an empty target list became floats)."""
    from automr.methods import CooccurrenceMethod, PopularityMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    assert PopularityMethod(dataset).rank([]) == CooccurrenceMethod(dataset).rank([]) == []
