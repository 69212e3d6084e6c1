"""The popularity and co-occurrence floors equal their plain definitions."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automr.data.popularity import training_sequences
from automr.methods import METHODS, Workspace, build_method
from automr.methods.baselines import CooccurrenceMethod, PopularityMethod
from automr.testing.synthetic import synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("floors"))


def plain_rank(scores: dict[str, tuple], target: str, seen: frozenset = frozenset()) -> int:
    """Rank of ``target`` under lexicographic scores, ties pessimistic (as ranks_from_scores),
    items in ``seen`` (other than the target) left out."""
    return sum(1 for item, score in scores.items()
               if item != target and item not in seen and score >= scores[target])


def test_popularity_counts_the_training_period(dataset):
    counts = Counter(i.item for i in dataset.interactions
                     if dataset.boundaries.split_of(i.timestamp) == "train")
    samples = dataset.samples("test")
    expected = [plain_rank({item: (counts[item],) for item in dataset.catalog.ids}, s.target)
                for s in samples]
    assert PopularityMethod(dataset).rank(samples) == expected


def test_popularity_without_seen_items(dataset):
    counts = Counter(i.item for i in dataset.interactions
                     if dataset.boundaries.split_of(i.timestamp) == "train")
    samples = dataset.samples("test")
    expected = [plain_rank({item: (counts[item],) for item in dataset.catalog.ids}, s.target,
                           frozenset(s.history)) for s in samples]
    assert PopularityMethod(dataset, exclude_seen=True).rank(samples) == expected


@settings(max_examples=15, deadline=None)
@given(window=st.integers(1, 6), query_items=st.integers(1, 8), exclude_seen=st.booleans())
def test_cooccurrence_equals_the_plain_count(dataset, window, query_items, exclude_seen):
    sequences = list(training_sequences(dataset).values())
    ids = dataset.catalog.ids
    follows: Counter = Counter()
    for items in sequences:
        for i, a in enumerate(items):
            for b in items[i + 1 : i + 1 + window]:
                follows[ids[a], ids[b]] += 1
    pop = Counter(ids[i] for items in sequences for i in items)
    samples = dataset.samples("test")
    expected = []
    for s in samples:
        query = s.history[-query_items:]
        scores = {b: (sum(follows[a, b] for a in query), pop[b]) for b in ids}
        seen = frozenset(s.history) if exclude_seen else frozenset()
        expected.append(plain_rank(scores, s.target, seen))
    assert CooccurrenceMethod(dataset, window, query_items, exclude_seen).rank(samples) == expected


def test_floors_are_registered_methods(dataset):
    space = Workspace(dataset)
    for name in ("pop", "cooc"):
        assert not METHODS[name].grounded
        method = build_method(name, space)
        assert len(method.rank(dataset.samples("test")[:4])) == 4
