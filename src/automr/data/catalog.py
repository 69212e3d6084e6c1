"""The item catalog (id -> title, title -> ids) and duplicate-title handling.

A generative recommender names items by their title, so two items with the same title cannot
be told apart. Two tools deal with that:

- :func:`display_title` appends the release year (``"Sabrina (1954)"`` vs ``"Sabrina (1995)"``),
  which separates same-title items of different years;
- :func:`merge_duplicates` merges items whose key (normally the display title) is identical into
  one catalog item (the first listed id wins) and remaps their interactions.

Titles may still repeat in a catalog (e.g. Amazon editions of one book under several ASINs when
merging is off); :meth:`Catalog.ids_for_title` returns all of them.
"""

import re
from collections.abc import Callable, Iterable, Iterator

import attrs

from automr.checks import beartype
from automr.data.records import Interaction, Item
from automr.errors import AutomrError

_TRAILING_YEAR = re.compile(r"\((\d{4})\)\s*$")


def display_title(title: str, year: str | None) -> str:
    """``"Toy Story" + "1995" -> "Toy Story (1995)"``.

    The year is added only when it is a 4-digit year not already in the title as ``(YYYY)``
    (ML-100K item 1412 keeps ``(1995)`` inside its title). Whitespace runs are collapsed.
    """
    title = " ".join(title.split())
    year = year.strip() if year is not None else None
    if year is not None and re.fullmatch(r"\d{4}", year) and f"({year})" not in title:
        return f"{title} ({year})"
    return title


def split_title_year(title: str) -> tuple[str, str | None]:
    """``"Toy Story (1995)" -> ("Toy Story", "1995")``; titles without a trailing year give None."""
    title = " ".join(title.split())
    match = _TRAILING_YEAR.search(title)
    if match is None:
        return title, None
    return title[: match.start()].rstrip(), match.group(1)


@beartype
@attrs.frozen
class Catalog:
    """The items a recommender can name, in a fixed order, with lookups both ways.

    ``Catalog.ids`` order is the item order everywhere a ranking over all items is built.
    """

    items: tuple[Item, ...] = attrs.field(converter=tuple)
    _position: dict[str, int] = attrs.field(init=False, repr=False, eq=False)
    _by_title: dict[str, tuple[str, ...]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        position: dict[str, int] = {}
        by_title: dict[str, list[str]] = {}
        for i, item in enumerate(self.items):
            if item.id in position:
                raise ValueError(f"item id {item.id!r} appears twice in the catalog")
            position[item.id] = i
            by_title.setdefault(item.title, []).append(item.id)
        object.__setattr__(self, "_position", position)
        object.__setattr__(self, "_by_title", {t: tuple(ids) for t, ids in by_title.items()})

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._position

    def __getitem__(self, item_id: str) -> Item:
        return self.items[self._position[item_id]]

    @property
    def ids(self) -> tuple[str, ...]:
        """Every item id, in catalog order (a new tuple on each read)."""
        return tuple(item.id for item in self.items)

    def title(self, item_id: str) -> str:
        """The display title of ``item_id`` (KeyError if unknown)."""
        return self[item_id].title

    def titles(self, item_ids: Iterable[str]) -> list[str]:
        """The display titles of ``item_ids``, in order (KeyError on an unknown id)."""
        return [self[i].title for i in item_ids]

    def positions(self, item_ids: Iterable[str]) -> list[int]:
        """Each item's place in the catalog order (its index in :attr:`ids`, its row or column
        in anything built over all items); an unknown item is an error that names it."""
        try:
            return [self._position[i] for i in item_ids]
        except KeyError as error:
            raise AutomrError(f"item {error.args[0]!r} is not in this catalog ({len(self)} "
                              f"items): are the samples from another dataset?") from None

    def ids_for_title(self, title: str) -> tuple[str, ...]:
        """All item ids whose display title is exactly ``title`` (empty tuple if none)."""
        return self._by_title.get(title, ())

    @property
    def repeated_titles(self) -> dict[str, tuple[str, ...]]:
        """Titles held by more than one item, with their ids."""
        return {t: ids for t, ids in self._by_title.items() if len(ids) > 1}

    def subset(self, keep: set[str] | frozenset[str]) -> "Catalog":
        """The catalog restricted to ``keep``, order preserved."""
        return Catalog(tuple(item for item in self.items if item.id in keep))


@beartype
@attrs.frozen
class MergeReport:
    """What :func:`merge_duplicates` did: the merged id groups (kept id first) and how many
    interactions now point at a different id."""

    groups: tuple[tuple[str, ...], ...] = ()
    remapped_interactions: int = 0

    @property
    def merged_items(self) -> int:
        """How many item ids disappeared (each group of n keeps one)."""
        return sum(len(g) - 1 for g in self.groups)

    @property
    def alias(self) -> dict[str, str]:
        """Merged-away id -> kept id."""
        return {old: g[0] for g in self.groups for old in g[1:]}


def merge_duplicates(
    items: Iterable[Item],
    interactions: Iterable[Interaction],
    key: Callable[[Item], object] = lambda item: item.title,
) -> tuple[tuple[Item, ...], tuple[Interaction, ...], MergeReport]:
    """Merge items with the same ``key`` into the first one listed and remap interactions.

    The kept item records the group in ``extra["merged_ids"]`` (``"246|268"``). Interactions
    keep their order and timestamps; a user who interacted with two merged ids keeps *both*
    interactions (now with the same item), since they were two real events.
    """
    items = tuple(items)
    first_by_key: dict[object, Item] = {}
    groups: dict[str, list[str]] = {}
    for item in items:
        kept = first_by_key.setdefault(key(item), item)
        groups.setdefault(kept.id, []).append(item.id)
    merged = {kid: tuple(ids) for kid, ids in groups.items() if len(ids) > 1}
    report_groups = tuple(merged.values())
    alias = {old: g[0] for g in report_groups for old in g[1:]}
    new_items = tuple(
        attrs.evolve(item, extra={**item.extra, "merged_ids": "|".join(merged[item.id])})
        if item.id in merged else item
        for item in items if item.id not in alias
    )
    remapped = 0
    new_interactions = []
    for inter in interactions:
        if inter.item in alias:
            inter = attrs.evolve(inter, item=alias[inter.item])
            remapped += 1
        new_interactions.append(inter)
    return new_items, tuple(new_interactions), MergeReport(report_groups, remapped)
