"""The popularity and co-occurrence floors equal their plain definitions."""

from collections import Counter

import attrs
import pytest
import torch
from hypothesis import given, settings, strategies as st

from automr.data import Interaction, Sample
from automr.data.popularity import popularity, training_sequences
from automr.errors import AutomrError
from automr.evaluation import evaluate
from automr.methods import METHODS, Workspace, baselines, build_method, registry
from automr.methods.baselines import CooccurrenceMethod, PopularityMethod
from automr.testing.contracts import MethodContract
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


def test_a_workspace_refuses_a_folder_or_dict_for_its_parts(dataset):
    """Workspace(path_of_prepared_data) and Workspace(dataset, artifacts={...}) were accepted
    and building or ranking a method failed with AttributeError ('PosixPath' object has no
    attribute 'source'; 'dict' object has no attribute 'finetuned'); Artifacts(model=3) with
    TypeError: expected str, bytes or os.PathLike object, not int."""
    with pytest.raises(TypeError, match="'dataset' must be"):
        Workspace(dataset.path)
    with pytest.raises(TypeError, match="'artifacts' must be"):
        Workspace(dataset, artifacts={"finetuned": "x"})
    with pytest.raises(TypeError, match="'options' must be"):
        Workspace(dataset, options={"k": 2})
    with pytest.raises(TypeError, match="'model' must be"):
        registry.Artifacts(model=3)


def random_data(dataset, data):
    """``dataset`` with random interactions (some outside the training period, items from a
    few catalog items so that counts tie) and random test samples (repeats in histories)."""
    ids = dataset.catalog.ids
    used = ids[: data.draw(st.integers(1, len(ids)))]
    times = st.integers(dataset.boundaries.start, dataset.boundaries.end - 1)
    rows = data.draw(st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]),
                                        st.sampled_from(used), times), max_size=40))
    histories = data.draw(st.lists(st.tuples(st.sampled_from(ids),
                                             st.lists(st.sampled_from(used), max_size=8)),
                                   min_size=1, max_size=6))
    samples = tuple(Sample(user=f"s{n}", target=target, timestamp=100, recent=tuple(history),
                           recent_timestamps=tuple(range(len(history))))
                    for n, (target, history) in enumerate(histories))
    return attrs.evolve(dataset, interactions=tuple(Interaction(*row) for row in rows),
                        samples={"test": samples})


def plain_popularity(dataset) -> torch.Tensor:
    """One count per user over the whole catalog, summed."""
    counts = torch.zeros(len(dataset.catalog), dtype=torch.float64)
    for user in {i.user for i in dataset.interactions}:
        for i in dataset.interactions:
            if i.user == user and dataset.boundaries.split_of(i.timestamp) == "train":
                counts[dataset.catalog.ids.index(i.item)] += 1.0
    return counts


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_popularity_equals_the_per_user_count(dataset, data):
    random = random_data(dataset, data)
    assert torch.equal(popularity(random), plain_popularity(random))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), window=st.integers(1, 4), query_items=st.integers(1, 5),
       exclude_seen=st.booleans())
def test_cooccurrence_equals_the_dense_computation(dataset, data, window, query_items,
                                                   exclude_seen):
    random = random_data(dataset, data)
    ids = list(random.catalog.ids)
    follows = torch.zeros(len(ids), len(ids), dtype=torch.float64)
    for items in training_sequences(random).values():
        for i, a in enumerate(items):
            for b in items[i + 1 : i + 1 + window]:
                follows[a, b] += 1.0
    pop = plain_popularity(random)
    expected, counts = [], []
    for s in random.samples("test"):
        query = torch.zeros(len(ids), dtype=torch.float64)
        for item in s.history[-query_items:]:
            query[ids.index(item)] += 1.0
        counts.append(query @ follows)
        scores = counts[-1] + pop / (pop.max() + 1)
        target = ids.index(s.target)
        expected.append(sum(1 for b, item in enumerate(ids) if b != target
                            and not (exclude_seen and item in s.history)
                            and scores[b] >= scores[target]))
    method = CooccurrenceMethod(random, window, query_items, exclude_seen)
    assert method.rank(random.samples("test")) == expected
    assert torch.equal(method.counts(random.samples("test")), torch.stack(counts))  # gathered


def test_popularity_is_counted_once_per_method(dataset, monkeypatch):
    calls = Counter()

    def counted(name):
        def count(data):
            calls[name] += 1
            return popularity(data)
        return count

    monkeypatch.setattr(baselines, "popularity", counted("floors"))
    monkeypatch.setattr(registry, "popularity", counted("l2-pop"))
    samples = dataset.samples("test")
    floors = [PopularityMethod(dataset), CooccurrenceMethod(dataset)]
    prior = registry.INJECTIONS["l2-pop"](Workspace(dataset))
    for start in range(0, 12, 4):
        for method in floors:
            assert len(method.rank(samples[start : start + 4])) == 4
        assert torch.equal(prior(samples[start : start + 4]), popularity(dataset).float()[None])
    assert calls == {"floors": 2, "l2-pop": 1}


class TestPopularityContract(MethodContract):
    @pytest.fixture
    def method(self, dataset):
        return PopularityMethod(dataset, exclude_seen=True)

    @pytest.fixture
    def samples(self, dataset):
        return dataset.samples("test")[:12]


class TestCooccurrenceContract(TestPopularityContract):
    @pytest.fixture
    def method(self, dataset):
        return CooccurrenceMethod(dataset, window=3, query_items=2)


class RanksByPlaceInTheCall:
    """A method whose ranks follow the sample's place in the call, not the sample: evaluate's
    shards would change its numbers."""

    def __init__(self, dataset) -> None:
        self.dataset, self.settings = dataset, {"kind": "by-place"}

    def rank(self, samples):
        return [row % 3 for row in range(len(samples))]


def test_the_method_contract_fails_a_method_that_depends_on_its_batch(dataset):
    contract, method = MethodContract(), RanksByPlaceInTheCall(dataset)
    samples = dataset.samples("test")[:12]
    contract.test_one_rank_per_sample_in_the_catalog(method, samples)  # well-formed ranks
    with pytest.raises(AssertionError):
        contract.test_shards_and_order_do_not_matter(method, samples)


class RanksInBatchesOfFour:
    """Ranks in fixed batches of four, a sample by its own target and the sum over its batch
    (whatever the order within the batch, as a grounder that centred its scores over the batch
    would): with 8 samples, the halves and the reversed call are made of the same batches as
    the whole call."""

    def __init__(self, dataset) -> None:
        self.dataset, self.settings = dataset, {"kind": "batches-of-four"}

    def rank(self, samples):
        positions = self.dataset.catalog.positions(s.target for s in samples)
        ranks = []
        for start in range(0, len(positions), 4):
            batch = positions[start : start + 4]
            ranks += [(own + sum(batch)) % len(self.dataset.catalog) for own in batch]
        return ranks


def test_the_method_contract_fails_a_method_whose_batches_divide_the_samples(dataset):
    """Its shard check split the samples at the half and reversed them only: a method whose
    batch size divided that half saw the same batches every time and passed (a fresh-eyes
    reviewer's grounder that centred its logits over the batch, in a GenerativeMethod with
    batch_size=4 on 8 samples)."""
    contract, method = MethodContract(), RanksInBatchesOfFour(dataset)
    samples = dataset.samples("test")[:8]
    assert len({s.target for s in samples}) > 1
    with pytest.raises(AssertionError):
        contract.test_shards_and_order_do_not_matter(method, samples)


@pytest.mark.parametrize("settings", [{1: "x"}, {"grid": {1: "x", "b": 2}}])
def test_the_method_contract_fails_settings_evaluate_refuses(dataset, settings):
    """Settings with an int key passed the contract's JSON check; evaluate refuses them (it
    saves them sorted among its own string keys)."""
    method = RanksByPlaceInTheCall(dataset)
    method.settings = settings
    with pytest.raises((AssertionError, TypeError)):
        MethodContract().test_is_a_method_with_json_settings(method)
    with pytest.raises(AutomrError, match="not JSON"):
        evaluate({"m": method}, dataset.samples("test")[:4], len(dataset.catalog))


def test_a_floor_is_built_on_a_dataset_not_its_folder():
    """PopularityMethod('/path') was taken and failed only when it ranked; the refusal is
    automr's (one line in the CLI), a TypeError too."""
    from automr.errors import WrongTypeError

    for floor in (PopularityMethod, CooccurrenceMethod):
        with pytest.raises(WrongTypeError, match="PreparedDataset"):
            floor("runs/data")


@given(sequences=st.lists(st.lists(st.integers(0, 6), max_size=12), max_size=6),
       window=st.integers(1, 5))
def test_follow_pairs_are_the_plain_walk(sequences, window):
    """The vectorised pairs (all sequences at once) are those of a walk over each sequence."""
    rows, cols = baselines.follow_pairs(sequences, window)
    plain = Counter((seq[i], seq[j]) for seq in sequences for i in range(len(seq))
                    for j in range(i + 1, min(i + window + 1, len(seq))))
    assert Counter(zip(rows.tolist(), cols.tolist(), strict=True)) == plain


def test_cooccurrence_ranks_past_one_chunk_equal_each_samples_own(dataset):
    """The samples are ranked 256 at a time: a list longer than that (the test samples
    repeated, in shifted copies) ranks each sample as the sample alone does."""
    samples = dataset.samples("test")
    method = CooccurrenceMethod(dataset, window=3, query_items=2, exclude_seen=True)
    alone = [method.rank([s])[0] for s in samples]
    copies = 300 // len(samples) + 2
    many = [samples[(i + c) % len(samples)] for c in range(copies) for i in range(len(samples))]
    assert len(many) > 256
    assert method.rank(many) == [alone[(i + c) % len(samples)] for c in range(copies)
                                 for i in range(len(samples))]
