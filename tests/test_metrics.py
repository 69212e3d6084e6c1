"""Full-ranking metrics: invariants as properties, ranks against a plain Python sort, reports."""

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from automr.errors import AutomrError
from automr.evaluation import (
    DEFAULT_KS,
    MetricReport,
    build_report,
    compare_reports,
    mean_metrics,
    metric_names,
    ndcg_at_k,
    per_sample_metrics,
    rank_in_list,
    ranks_from_scores,
    recall_at_k,
    seen_mask,
)
from automr.evaluation.metrics import ndcg_of_rank

ks_strategy = st.lists(st.integers(1, 50), min_size=1, max_size=4, unique=True)
ranks_strategy = st.lists(st.integers(0, 200), min_size=1, max_size=30)


def _ranks(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _reference_rank(scores: list[float], target: int, excluded: set[int] = frozenset()) -> int:
    """Rank by sorting: highest score first, the target placed after every item it ties with."""
    kept = [i for i in range(len(scores)) if i == target or i not in excluded]
    order = sorted(kept, key=lambda i: (-scores[i], i == target))
    return order.index(target)


@given(ks=ks_strategy, n=st.integers(1, 10))
def test_perfect_ranking_scores_one_everywhere(ks: list[int], n: int) -> None:
    values = per_sample_metrics(torch.zeros(n, dtype=torch.long), ks)
    assert set(values) == set(metric_names(ks))
    for name, per_sample in values.items():
        assert torch.all(per_sample == 1.0), name


@given(ks=ks_strategy, rank=st.integers(0, 300), step=st.integers(0, 300))
def test_metrics_do_not_increase_with_rank(ks: list[int], rank: int, step: int) -> None:
    better = per_sample_metrics(_ranks([rank]), ks)
    worse = per_sample_metrics(_ranks([rank + step]), ks)
    for name in better:
        assert worse[name].item() <= better[name].item(), name


@given(ks=ks_strategy, ranks=ranks_strategy)
def test_metrics_bounded_and_recall_dominates_ndcg(ks: list[int], ranks: list[int]) -> None:
    values = per_sample_metrics(_ranks(ranks), ks)
    for per_sample in values.values():
        assert torch.all((per_sample >= 0) & (per_sample <= 1))
    for k in ks:
        assert torch.all(values[f"recall@{k}"] >= values[f"ndcg@{k}"])


@given(k=st.integers(1, 50), rank=st.integers(0, 100))
def test_metric_values_match_their_definitions(k: int, rank: int) -> None:
    recall = recall_at_k(_ranks([rank]), k).item()
    ndcg = ndcg_at_k(_ranks([rank]), k).item()
    assert recall == (1.0 if rank < k else 0.0)
    assert ndcg == pytest.approx(1 / math.log2(rank + 2) if rank < k else 0.0, abs=1e-15)


def test_known_values() -> None:
    ranks = _ranks([0, 1, 4, 5, 9, 10])
    means = mean_metrics(ranks, (1, 5, 10))
    assert means["recall@1"] == pytest.approx(1 / 6)
    assert means["recall@5"] == pytest.approx(3 / 6)
    assert means["recall@10"] == pytest.approx(5 / 6)
    expected_ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6
    assert means["ndcg@5"] == pytest.approx(expected_ndcg5)
    assert DEFAULT_KS == (1, 5, 10)


score_rows = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),  # small range: many ties
        st.integers(0, n - 1),
        st.sets(st.integers(0, n - 1)),
    )
)


@given(rows=st.lists(score_rows, min_size=1, max_size=5))
def test_ranks_from_scores_matches_python_sort(rows: list[tuple[list[int], int, set[int]]]) -> None:
    width = max(len(scores) for scores, _, _ in rows)
    # Pad rows to one width with -inf: a padded column never outranks a finite target.
    matrix = torch.full((len(rows), width), -math.inf)
    for r, (scores, _, _) in enumerate(rows):
        matrix[r, : len(scores)] = torch.tensor(scores, dtype=torch.float32)
    targets = torch.tensor([t for _, t, _ in rows])
    ranks = ranks_from_scores(matrix, targets)
    expected = [_reference_rank([float(s) for s in scores], t) for scores, t, _ in rows]
    assert ranks.tolist() == expected

    exclude = seen_mask([sorted(ex) for _, _, ex in rows], width)
    ranks_unseen = ranks_from_scores(matrix, targets, exclude=exclude)
    expected_unseen = [
        _reference_rank([float(s) for s in scores], t, ex) for scores, t, ex in rows
    ]
    assert ranks_unseen.tolist() == expected_unseen
    assert torch.all(ranks_unseen <= ranks)


@given(row=score_rows)
def test_ranked_list_and_scores_agree(row: tuple[list[int], int, set[int]]) -> None:
    scores, target, excluded = row
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i == target))
    from_scores = ranks_from_scores(
        torch.tensor([scores], dtype=torch.float32), torch.tensor([target])
    )
    assert rank_in_list(ranked, target, len(scores)) == from_scores.item()
    from_scores_unseen = ranks_from_scores(
        torch.tensor([scores], dtype=torch.float32),
        torch.tensor([target]),
        exclude=seen_mask([excluded], len(scores)),
    )
    assert rank_in_list(ranked, target, len(scores), exclude=excluded) == (
        from_scores_unseen.item()
    )


def test_constant_scores_rank_every_target_last() -> None:
    ranks = ranks_from_scores(torch.zeros(3, 7), torch.tensor([0, 3, 6]))
    assert ranks.tolist() == [6, 6, 6]


def test_rank_in_list_miss_duplicates_and_exclusion() -> None:
    assert rank_in_list([5, 3, 9], 9, n_items=100) == 2
    assert rank_in_list([5, 3, 9], 7, n_items=100) == 100  # a miss scores 0 everywhere
    assert rank_in_list([5, 5, 3, 9], 9, n_items=100) == 2  # repeated ids count once
    assert rank_in_list([5, 3, 9], 9, n_items=100, exclude=[3, 9]) == 1  # target never excluded
    assert recall_at_k(_ranks([100]), 10).item() == 0.0


@given(n_items=st.integers(1, 12), ks=ks_strategy, data=st.data())
def test_a_miss_scores_zero_at_any_k_given_the_catalogs_size(n_items, ks, data) -> None:
    """A miss has rank ``n_items``: with a K above the catalog's size it was below K and
    counted as a hit (Recall@10 of 1 on a 5-item catalog); a report knows ``n_items``."""
    ranks = data.draw(st.lists(st.integers(0, n_items), min_size=1, max_size=8))
    values = per_sample_metrics(_ranks(ranks), ks, n_items)
    for k in ks:
        expected = [0.0 if r >= min(k, n_items) else 1.0 for r in ranks]
        assert values[f"recall@{k}"].tolist() == expected
        assert values[f"ndcg@{k}"].tolist() == [
            ndcg_of_rank(r, k) if hit else 0.0 for r, hit in zip(ranks, expected, strict=True)]
    report = build_report("m", [f"u{i}@1:a" for i in range(len(ranks))], _ranks(ranks), n_items,
                          ks=ks, n_resamples=20)
    assert report.metrics[f"recall@{max(ks)}"].mean == pytest.approx(
        sum(r < n_items for r in ranks) / len(ranks) if max(ks) >= n_items else
        sum(r < max(ks) for r in ranks) / len(ranks))


@pytest.mark.parametrize("ranked, target", [([9], 9), ([0, 1, 2, 3, 4, 5, 6], 6), ([1], -1)])
def test_rank_in_list_refuses_ids_outside_the_catalog(ranked, target) -> None:
    """With a 5-item catalog, target 9 ranked first was a hit on no catalog item, and the 7th
    of 7 listed ids got rank 6, past the miss rank 5 (ranks_from_scores refuses such targets)."""
    with pytest.raises(AutomrError, match=r"item ids must lie in \[0, 5\)"):
        rank_in_list(ranked, target, n_items=5)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(AutomrError, match="NaN"):
        ranks_from_scores(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(AutomrError, match="target"):
        ranks_from_scores(torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(AutomrError, match="negative"):
        recall_at_k(_ranks([-1]), 5)
    with pytest.raises(AutomrError, match="positive"):
        metric_names((0, 5))
    with pytest.raises(AutomrError, match="outside"):
        seen_mask([[4]], 3)
    with pytest.raises(Exception, match="batch"):  # shape mismatch caught by jaxtyping
        ranks_from_scores(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_the_edges_of_the_refused_inputs() -> None:
    """A repeated cut-off (its keys would collide) and an item id equal to the catalog size
    (one past the last column) are refused, named, not passed on."""
    with pytest.raises(AutomrError, match="distinct"):
        metric_names((5, 10, 5))
    with pytest.raises(AutomrError, match="outside"):
        seen_mask([[0], [3]], 3)
    assert seen_mask([[2]], 3).tolist() == [[False, False, True]]
    with pytest.raises(AutomrError, match="zero samples"):  # the means of nothing were NaN
        mean_metrics(_ranks([]))


def test_report_round_trip(tmp_path) -> None:
    ranks = _ranks([0, 3, 12, 1, 50])
    ids = ["u1:0", "u2:0", "u3:0", "u4:0", "u5:0"]
    report = build_report("sasrec", ids, ranks, n_items=50, n_resamples=200, seed=3)
    assert report.metrics["recall@5"].mean == pytest.approx(3 / 5)
    path = tmp_path / "reports" / "sasrec.json"
    report.save(path)
    assert json.loads(path.read_text())["samples"][2] == {"id": "u3:0", "rank": 12}
    assert MetricReport.load(path) == report


def test_report_refuses_inconsistent_records(tmp_path) -> None:
    with pytest.raises(AutomrError, match="ranks outside"):
        build_report("m", ["a"], _ranks([11]), n_items=10)
    with pytest.raises(AutomrError, match="duplicate"):
        build_report("m", ["a", "a"], _ranks([1, 2]), n_items=10)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(AutomrError, match=r"has format 'something else', expected "
                                          r"'automr\.metric_report/"):
        MetricReport.load(bad)


def test_compare_reports_aligns_samples_by_id() -> None:
    ids = [f"s{i}" for i in range(40)]
    ranks_a = _ranks([i % 3 for i in range(40)])  # often in the top 1
    ranks_b = _ranks([2 + i % 7 for i in range(40)])  # never in the top 1
    a = build_report("a", ids, ranks_a, n_items=100, n_resamples=300)
    b = build_report("b", ids, ranks_b, n_items=100, n_resamples=300)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    b_shuffled = build_report(
        "b", [ids[i] for i in perm.tolist()], ranks_b[perm], n_items=100, n_resamples=300
    )
    diffs = compare_reports(a, b, n_resamples=300)
    assert diffs == compare_reports(a, b_shuffled, n_resamples=300)
    assert diffs["recall@1"].mean == pytest.approx(a.metrics["recall@1"].mean)
    assert diffs["recall@1"].share_leq_zero == 0.0
    with pytest.raises(AutomrError, match="different samples"):
        compare_reports(a, build_report("c", ids[:-1], ranks_b[:-1], n_items=100))


def test_compare_reports_refuses_rankings_of_catalogs_of_different_sizes() -> None:
    """The same sample ids ranked over 100 and 101 items were paired silently (a miss is rank
    100 in one, 101 in the other); `automr compare` refuses such sources."""
    ids = [f"s{i}" for i in range(10)]
    a = build_report("a", ids, _ranks(list(range(10))), n_items=100, n_resamples=20)
    b = build_report("b", ids, _ranks(list(range(10))), n_items=101, n_resamples=20)
    with pytest.raises(AutomrError, match=r"catalogs of different sizes \(100 and 101 items\)"):
        compare_reports(a, b, n_resamples=20)


@settings(max_examples=20)
@given(ranks=ranks_strategy)
def test_report_means_equal_metric_means(ranks: list[int]) -> None:
    report = build_report(
        "m", [str(i) for i in range(len(ranks))], _ranks(ranks), n_items=200, n_resamples=50
    )
    for name, mean in mean_metrics(_ranks(ranks)).items():
        assert report.metrics[name].mean == pytest.approx(mean)
