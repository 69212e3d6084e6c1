"""Records validate themselves; the catalog looks up both ways; duplicates merge."""

import pytest
from hypothesis import given, strategies as st

from automr.data import Catalog, Interaction, Item, Sample, display_title, merge_duplicates
from automr.data.catalog import split_title_year
from automr.errors import AutomrError


def test_sample_refuses_future_history():
    with pytest.raises(ValueError, match="leak"):
        Sample("u", "a", 10, recent=("b",), recent_timestamps=(10,))
    with pytest.raises(ValueError, match="sorted"):
        Sample("u", "a", 10, recent=("b", "c"), recent_timestamps=(5, 4))
    with pytest.raises(ValueError, match="sorted"):  # memory must be older than recent
        Sample("u", "a", 10, recent=("b",), recent_timestamps=(3,), memory=("c",),
               memory_timestamps=(4,))
    with pytest.raises(ValueError, match="same length"):
        Sample("u", "a", 10, recent=("b",), recent_timestamps=())


def test_sample_history_is_memory_then_recent():
    s = Sample("u", "a", 10, recent=("c", "d"), recent_timestamps=(5, 9), memory=("b",),
               memory_timestamps=(1,))
    assert s.history == ("b", "c", "d") and s.history_timestamps == (1, 5, 9)


def test_records_refuse_empty_ids():
    with pytest.raises(ValueError):
        Item("", "title")
    with pytest.raises(ValueError):
        Item("1", "  ")
    with pytest.raises(ValueError):
        Interaction("u", "", 3)


def test_display_title():
    assert display_title("Toy Story", "1995") == "Toy Story (1995)"
    assert display_title("Land Before Time III (1995)", "V") == "Land Before Time III (1995)"
    assert display_title("Land Before Time III (1995)", "1995") == "Land Before Time III (1995)"
    assert display_title("  A   b ", None) == "A b"
    assert split_title_year("Seven (Se7en) (1995)") == ("Seven (Se7en)", "1995")
    assert split_title_year("Seven (Se7en)") == ("Seven (Se7en)", None)


@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Cc"),
                            exclude_characters="()"),
               min_size=1), st.integers(1000, 2999))
def test_display_title_round_trips_the_year(base, year):
    title = display_title(base, str(year))
    assert split_title_year(title)[1] == str(year)


def test_catalog_lookups_with_repeated_titles():
    catalog = Catalog((Item("1", "Sabrina"), Item("2", "Sabrina"), Item("3", "Heat")))
    assert catalog.title("3") == "Heat"
    assert catalog.ids_for_title("Sabrina") == ("1", "2")
    assert catalog.ids_for_title("nope") == ()
    assert catalog.repeated_titles == {"Sabrina": ("1", "2")}
    assert "2" in catalog and len(catalog) == 3 and catalog.ids == ("1", "2", "3")
    assert catalog.subset({"3", "1"}).ids == ("1", "3")
    assert catalog["2"] == Item("2", "Sabrina")
    assert catalog.positions(["3", "1", "3"]) == [2, 0, 2]
    assert catalog.positions(catalog.ids) == list(range(len(catalog)))
    with pytest.raises(AutomrError, match=r"item '9' is not in this catalog \(3 items\): are "
                                          r"the samples from another dataset\?"):
        catalog.positions(["1", "9"])
    with pytest.raises(ValueError, match="twice"):
        Catalog((Item("1", "a"), Item("1", "b")))


def test_merge_duplicates_keeps_first_id_and_both_interactions():
    items = [Item("246", "Chasing Amy (1997)"), Item("268", "Chasing Amy (1997)"),
             Item("7", "Other (1995)")]
    inters = [Interaction("u", "268", 5), Interaction("u", "246", 6), Interaction("v", "7", 1)]
    new_items, new_inters, report = merge_duplicates(items, inters)
    assert [i.id for i in new_items] == ["246", "7"]
    assert new_items[0].extra["merged_ids"] == "246|268"
    assert [(i.user, i.item, i.timestamp) for i in new_inters] == [
        ("u", "246", 5), ("u", "246", 6), ("v", "7", 1)]
    assert report.merged_items == 1 and report.remapped_interactions == 1
    assert report.alias == {"268": "246"}


def test_three_items_with_one_title_merge_into_the_first():
    """Amazon lists one book under several ASINs: every one of them goes to the first."""
    items = [Item(i, "Same Book") for i in ("a", "b", "c")]
    inters = [Interaction("u", "c", 1), Interaction("u", "b", 2)]
    new_items, new_inters, report = merge_duplicates(items, inters)
    assert [i.id for i in new_items] == ["a"] and new_items[0].extra["merged_ids"] == "a|b|c"
    assert [i.item for i in new_inters] == ["a", "a"]
    assert report.groups == (("a", "b", "c"),) and report.merged_items == 2
