"""Seeded subsets: what None, 0 and negative counts mean."""

import pytest
from hypothesis import example, given, strategies as st

from automr.data.subsets import seeded_subset
from automr.errors import AutomrError


@given(st.lists(st.integers(), max_size=30), st.integers(0, 40), st.integers(0, 2**31))
# the drawn lists are mostly no longer than the limit (kept whole): one that is cut
@example(list(range(30)), 7, 0)
def test_subset_is_a_seeded_ordered_selection(values, limit, seed):
    chosen = seeded_subset(values, limit, seed)
    assert len(chosen) == min(limit, len(values))
    assert chosen == seeded_subset(values, limit, seed)
    positions = iter(range(len(values)))
    assert all(any(values[i] == x for i in positions) for x in chosen)  # order kept


def test_the_seed_draws_the_subset():
    # not the first `limit` samples, and another seed draws others
    values = list(range(50))
    chosen = seeded_subset(values, 10, 0)
    assert chosen != values[:10] and chosen != seeded_subset(values, 10, 1)


def test_none_means_all_and_zero_means_none():
    assert seeded_subset(["a", "b", "c"], None, 0) == ["a", "b", "c"]
    assert seeded_subset(["a", "b", "c"], 0, 0) == []


@pytest.mark.parametrize("limit", [-1, -3, True, 2.0])
def test_negative_or_non_integer_counts_are_refused(limit):
    # Slicing would read -1 as "all but one": refused instead.
    with pytest.raises(AutomrError, match="sample count must be"):
        seeded_subset(["a", "b", "c"], limit, 0)


@pytest.mark.parametrize("seed", [True, 1.5, "0", 2**70])
def test_a_seed_that_is_not_a_64_bit_whole_number_is_refused(seed):
    """torch refused it with its own words: 'manual_seed expected a long, but got bool';
    'Overflow when unpacking long long'."""
    with pytest.raises(AutomrError, match=r"seed must be (an int|a 64-bit whole number)"):
        seeded_subset(list(range(10)), 3, seed)


def test_numpy_integers_count_and_seed_as_python_ones():
    """A count or seed from a numpy array was refused as not a whole number."""
    import numpy as np

    values = list(range(50))
    assert seeded_subset(values, np.int64(7), np.int64(3)) == seeded_subset(values, 7, 3)
    assert len(seeded_subset(list(range(10)), 3, -1)) == 3
