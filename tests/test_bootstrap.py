"""Bootstrap intervals: invariants on drawn data, calibration against the normal approximation."""

import math
from fractions import Fraction
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings, strategies as st

from automr.errors import AutomrError
from automr.evaluation import bootstrap
from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap, users_of

values_strategy = st.lists(
    st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False), min_size=1, max_size=60
)


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@settings(max_examples=60)
@given(values=values_strategy, seed=st.integers(0, 2**31))
def test_interval_contains_the_mean(values: list[float], seed: int) -> None:
    interval = bootstrap_ci(_t(values), n_resamples=400, seed=seed)
    assert interval.mean == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert interval.low - 1e-12 <= interval.mean <= interval.high + 1e-12
    assert 0.0 <= interval.low <= interval.high <= 1.0


@given(value=st.floats(-10, 10, allow_nan=False), n=st.integers(1, 50))
def test_constant_data_collapses_to_a_point(value: float, n: int) -> None:
    interval = bootstrap_ci(_t([value] * n), n_resamples=200)
    assert interval.mean == pytest.approx(value, abs=1e-12)
    assert interval.high - interval.low <= 1e-12
    assert interval.low == pytest.approx(value, abs=1e-12)


@given(values=values_strategy, seed=st.integers(0, 2**31))
def test_paired_bootstrap_with_itself_is_zero(values: list[float], seed: int) -> None:
    diff = paired_bootstrap(_t(values), _t(values), n_resamples=200, seed=seed)
    assert (diff.mean, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert diff.share_leq_zero == 1.0  # every resample's difference is 0, i.e. <= 0
    assert diff.n_samples == len(values)


@given(values=values_strategy, shift=st.floats(0.01, 1.0))
def test_paired_bootstrap_of_a_uniform_improvement(values: list[float], shift: float) -> None:
    better = [v + shift for v in values]
    diff = paired_bootstrap(_t(better), _t(values), n_resamples=200)
    assert diff.mean == pytest.approx(shift, abs=1e-9)
    assert diff.low == pytest.approx(shift, abs=1e-9)
    assert diff.high == pytest.approx(shift, abs=1e-9)
    assert diff.share_leq_zero == 0.0
    reverse = paired_bootstrap(_t(values), _t(better), n_resamples=200)
    assert reverse.share_leq_zero == 1.0


def test_seeded_and_reproducible() -> None:
    values = _t([float(i % 5 == 0) for i in range(100)])
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_width_matches_the_normal_approximation() -> None:
    """For Bernoulli(0.3) data the 95% interval is about mean +- 1.96 * sd / sqrt(n)."""
    n = 2000
    values = (torch.rand(n, generator=torch.Generator().manual_seed(1)) < 0.3).double()
    interval = bootstrap_ci(values, n_resamples=2000, seed=0)
    p = float(values.mean())
    half_width = 1.96 * math.sqrt(p * (1 - p) / n)
    assert interval.high - interval.low == pytest.approx(2 * half_width, rel=0.12)
    assert (interval.low + interval.high) / 2 == pytest.approx(p, abs=0.2 * half_width)


def test_pairing_removes_shared_sample_difficulty() -> None:
    """Two methods that share per-sample difficulty differ with a much tighter paired interval."""
    gen = torch.Generator().manual_seed(0)
    difficulty = torch.rand(500, generator=gen, dtype=torch.float64)
    a = difficulty + 0.02 + 0.01 * torch.rand(500, generator=gen, dtype=torch.float64)
    b = difficulty
    paired = paired_bootstrap(a, b, n_resamples=500)
    separate = bootstrap_ci(a, n_resamples=500)
    assert paired.high - paired.low < 0.1 * (separate.high - separate.low)
    assert paired.share_leq_zero == 0.0


@pytest.mark.parametrize("block", [1, 7, 64, 150])
def test_blocked_resamples_equal_one_block(monkeypatch, block) -> None:
    """Large sample counts are resampled in row blocks (a row may not fit one: then one row
    per block); the blocks continue one generator stream, so the numbers are exactly those of
    a single block, for single and paired intervals alike, of samples or of users (the last
    block, shorter, fills the start of the buffers the blocks reuse)."""
    values = _t([float(i % 4 == 0) + 0.01 * (i % 7) for i in range(50)])
    other = _t([float(i % 3 == 0) for i in range(50)])
    groups = [f"u{i % 13}" for i in range(50)]
    whole = bootstrap_ci(values, n_resamples=301, seed=5)
    paired = paired_bootstrap(values, other, n_resamples=301, seed=5)
    by_user = paired_bootstrap(values, other, n_resamples=301, seed=5, groups=groups)
    monkeypatch.setattr(bootstrap, "_BLOCK_ELEMENTS", block)
    blocked = bootstrap_ci(values, n_resamples=301, seed=5)
    assert blocked == whole
    assert blocked.low < blocked.mean < blocked.high
    assert paired_bootstrap(values, other, n_resamples=301, seed=5) == paired
    assert paired_bootstrap(values, other, n_resamples=301, seed=5, groups=groups) == by_user


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(AutomrError, match="zero samples"):
        bootstrap_ci(_t([]))
    with pytest.raises(AutomrError, match="n_resamples"):
        bootstrap_ci(_t([1.0]), n_resamples=0)
    with pytest.raises(AutomrError, match="confidence"):
        bootstrap_ci(_t([1.0]), confidence=1.0)
    with pytest.raises(Exception, match="batch"):  # different sample counts
        paired_bootstrap(_t([1.0, 2.0]), _t([1.0]))


@settings(max_examples=20)
@given(levels=st.lists(st.sampled_from([0.0, 1.0, 0.5, 1 / math.log2(3), 1 / math.log2(5)]),
                       min_size=4, max_size=40), seed=st.integers(0, 2**16))
def test_share_leq_zero_counts_resamples_as_exact_sums_would(levels, seed) -> None:
    """NDCG-like values: a resample whose differences cancel exactly counts as <= 0 (a
    float mean leaves a few ulps either side of 0); checked against Fraction sums over the
    same resample indices."""
    half = len(levels) // 2
    a = torch.tensor(levels[:half], dtype=torch.float64)
    b = torch.tensor(levels[half : 2 * half], dtype=torch.float64)
    resamples = 200
    got = paired_bootstrap(a, b, n_resamples=resamples, seed=seed)
    index = torch.randint(0, half, (resamples, half), generator=torch.Generator().manual_seed(
        seed))
    exact = [Fraction(x) - Fraction(y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    expected = sum(sum(exact[i] for i in row) <= 0 for row in index.tolist()) / resamples
    assert got.share_leq_zero == expected


def _plain_percentile(sorted_means: list[float], q: float) -> float:
    """Linear interpolation between the order statistics around ``q * (R - 1)``."""
    position = q * (len(sorted_means) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_means) - 1)
    return sorted_means[below] + (position - below) * (sorted_means[above] - sorted_means[below])


@settings(max_examples=30)
@given(a=values_strategy, data=st.data(), seed=st.integers(0, 2**16),
       resamples=st.integers(1, 120), confidence=st.sampled_from([0.5, 0.9, 0.95]))
def test_intervals_are_the_plain_loop_over_the_same_resamples(a, data, seed, resamples,
                                                              confidence) -> None:
    """The vectorised resampling: each resample's mean and the percentile bounds as a Python
    loop over the rows of the same index matrix computes them, single and paired."""
    b = data.draw(st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=len(a),
                           max_size=len(a)))
    index = torch.randint(0, len(a), (resamples, len(a)),
                          generator=torch.Generator().manual_seed(seed)).tolist()
    tail = (1 - confidence) / 2
    for got, values in ((bootstrap_ci(_t(a), n_resamples=resamples, confidence=confidence,
                                      seed=seed), a),
                        (paired_bootstrap(_t(a), _t(b), n_resamples=resamples,
                                          confidence=confidence, seed=seed),
                         [x - y for x, y in zip(a, b, strict=True)])):
        means = sorted(math.fsum(values[i] for i in row) / len(row) for row in index)
        assert got.mean == pytest.approx(math.fsum(values) / len(values), abs=1e-12)
        assert got.low == pytest.approx(_plain_percentile(means, tail), abs=1e-12)
        assert got.high == pytest.approx(max(_plain_percentile(means, 1 - tail), got.low),
                                         abs=1e-12)


@settings(max_examples=30)
@given(a=values_strategy, data=st.data(), seed=st.integers(0, 2**16),
       resamples=st.integers(1, 120))
def test_one_sample_per_group_is_the_sample_bootstrap(a, data, seed, resamples) -> None:
    """Resampling groups of one sample each draws the same indices as resampling samples."""
    b = data.draw(st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=len(a),
                           max_size=len(a)))
    groups = [f"u{i}" for i in range(len(a))]
    for plain, grouped in (
            (bootstrap_ci(_t(a), n_resamples=resamples, seed=seed),
             bootstrap_ci(_t(a), n_resamples=resamples, seed=seed, groups=groups)),
            (paired_bootstrap(_t(a), _t(b), n_resamples=resamples, seed=seed),
             paired_bootstrap(_t(a), _t(b), n_resamples=resamples, seed=seed, groups=groups))):
        for field in ("mean", "low", "high"):
            assert getattr(grouped, field) == pytest.approx(getattr(plain, field), abs=1e-12)
        assert getattr(grouped, "share_leq_zero", 0) == getattr(plain, "share_leq_zero", 0)


@settings(max_examples=30)
@given(a=values_strategy, data=st.data(), seed=st.integers(0, 2**16),
       resamples=st.integers(1, 120))
def test_group_intervals_are_the_plain_loop_over_drawn_groups(a, data, seed,
                                                              resamples) -> None:
    """The cluster bootstrap: each resample draws G of the G groups (first-appearance order)
    with replacement and averages every sample of every drawn group."""
    groups = data.draw(st.lists(st.sampled_from("abcde"), min_size=len(a), max_size=len(a)))
    labels = list(dict.fromkeys(groups))
    members = [[x for x, g in zip(a, groups, strict=True) if g == label] for label in labels]
    index = torch.randint(0, len(labels), (resamples, len(labels)),
                          generator=torch.Generator().manual_seed(seed)).tolist()
    means = sorted(math.fsum(x for i in row for x in members[i])
                   / sum(len(members[i]) for i in row) for row in index)
    got = bootstrap_ci(_t(a), n_resamples=resamples, seed=seed, groups=groups)
    assert got.mean == pytest.approx(math.fsum(a) / len(a), abs=1e-12)
    assert got.low == pytest.approx(_plain_percentile(means, 0.025), abs=1e-12)
    assert got.high == pytest.approx(max(_plain_percentile(means, 0.975), got.low), abs=1e-12)
    paired = paired_bootstrap(_t(a), _t([0.0] * len(a)), n_resamples=resamples, seed=seed,
                              groups=groups)
    assert (paired.low, paired.high) == pytest.approx((got.low, got.high), abs=1e-12)


def test_correlated_users_widen_the_interval() -> None:
    """Ten users of 50 samples each, every user's samples alike: resampling users sees ten
    values, resampling samples 500, so the user interval is about sqrt(50) times as wide."""
    user_level = torch.rand(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = user_level.repeat_interleave(50)
    groups = [f"{u}@{t}:1" for u in range(10) for t in range(50)]
    samples = bootstrap_ci(values, n_resamples=2000)
    users = bootstrap_ci(values, n_resamples=2000, groups=users_of(groups))
    ratio = (users.high - users.low) / (samples.high - samples.low)
    assert 5.0 < ratio < 9.0


def test_users_of_reads_sample_ids() -> None:
    assert users_of(["313@891013525:216", "a@b@12:x@3:y", "u@-5:i"]) == ("313", "a@b", "u")
    # a quoted CSV field keeps its line break: data prepare took it, resampling refused it
    assert users_of(["line\nbreak@1:x", "u@1:\ni"]) == ("line\nbreak", "u")
    # an e-mail as the user: the first '@<digits>:' ends it, and no user id holds one
    from automr.data import Sample

    sample = Sample(user="bob@example.com", target="x@3:y", timestamp=5, recent=("a",),
                    recent_timestamps=(1,))
    assert users_of([sample.id]) == ("bob@example.com",)
    with pytest.raises(ValueError, match="holds '@<digits>:'"):
        Sample(user="team@2024:bob", target="x", timestamp=5, recent=(), recent_timestamps=())
    with pytest.raises(AutomrError, match="user@timestamp:target"):
        users_of(["313:216"])
    with pytest.raises(AutomrError, match="3 groups for 2 samples"):
        bootstrap_ci(_t([1.0, 2.0]), groups=["a", "b", "c"])


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_values_are_refused_not_given_an_interval(bad):
    """bootstrap_ci([1, 2, inf]) was mean inf in [1.0, 1.0]; paired_bootstrap counted the
    resamples where A was infinitely better as 'A not better' (the statistics review)."""
    with pytest.raises(AutomrError, match=r"non-finite values \(1 of 3"):
        bootstrap_ci(_t([1.0, 2.0, bad]), n_resamples=50)
    with pytest.raises(AutomrError, match="non-finite"):
        paired_bootstrap(_t([1.0, 2.0, bad]), _t([0.0, 0.0, 0.0]), n_resamples=50)


@pytest.mark.parametrize(("pair", "message"), [
    ((-6.0, 2.9), "2.9 is no whole number"), ((-6.0, torch.tensor(2.9)), "is no whole number"),
    ((-6.0, math.nan), "nan is no whole number"), ((0.5, 3), "log-likelihood 0.5: log P <= 0")])
def test_a_likelihood_report_refuses_what_is_no_log_likelihood_and_token_count(pair, message):
    """2.9 tokens were floored to 2 (per-token -2.5 for a plain -2.03), a positive value (a
    loss) was taken, as evaluate and LikelihoodReport.load refuse (the statistics review)."""
    from automr.evaluation.likelihood import build_likelihood_report

    with pytest.raises(AutomrError, match=message):
        build_likelihood_report("m", ["a", "b"], [(-2.0, 3), pair], n_resamples=20)


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 1.5, True])
def test_a_bootstrap_seed_torch_cannot_take_is_refused_before_any_work(tmp_path, seed):
    """A seed of 2**64 ranked every sample, then failed with a raw ValueError (the
    statistics review)."""
    import automr
    from automr.evaluation import combine_folders

    class Never:
        settings: ClassVar[dict] = {}

        def rank(self, samples):
            raise AssertionError("ranked before the seed was checked")

    samples = [automr.Sample(user="u", target="t", timestamp=1, recent=("a",),
                             recent_timestamps=(0,))]
    with pytest.raises(AutomrError, match=r"seed \(of the bootstrap\) must be an int"):
        automr.evaluate({"m": Never()}, samples, n_items=5, seed=seed, out=tmp_path / "e")
    with pytest.raises(AutomrError, match=r"seed \(of the bootstrap\) must be an int"):
        combine_folders({"x": (tmp_path / "missing", "m")}, seed=seed)
