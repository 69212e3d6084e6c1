"""``automr recommend``: one user's top items from AutoMR, with the memory it retrieved."""

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import torch

from automr.checks import require_bool, require_int
from automr.combiners import COMBINERS
from automr.data import PreparedDataset, Sample
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.grounding import build_grounder
from automr.grounding.l2 import L2Grounder, rank_by_distance
from automr.interfaces import Grounder
from automr.llm.loading import LoadedModel
from automr.llm.split import HFSplitLLM
from automr.methods.generative import left_padded_prompts, title_ties
from automr.recommenders.automr import MemoryRetrieval, load_retriever_for
from automr.recommenders.runs import FinetunedRun


def utc_minute(seconds: int) -> str:
    """Unix seconds as ``YYYY-MM-DD HH:MM UTC``."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@attrs.frozen
class Recommendation:
    """What AutoMR recommended for one sample and why."""

    sample: Sample
    items: list[tuple[str, str]]  # (item id, title), best first
    retrieved: list[tuple[str, str, int]]  # (item id, title, Unix time) of memory elements
    target_rank: int  # 0 = first
    target_title: str
    recent: list[str] = attrs.field(factory=list)  # titles of the prompt's recent items
    generated: str | None = None  # the title an L2 grounding generated and ranked by

    def describe(self, split: str = "test") -> list[str]:
        """The recommendation in lines: the sample, the recent items, what was retrieved from
        memory, the top items (the actual next one marked) and the actual next item's rank,
        counted from 1 (``automr rq3`` counts from 0); times are UTC."""
        sample = self.sample
        lines = [f"user {sample.user}, {split} sample at {utc_minute(sample.timestamp)} with "
                 f"{len(sample.recent)} recent and {len(sample.memory)} memory items"]
        if self.recent:
            lines.append(f"recent items: {'; '.join(self.recent)}")
        lines += [f"retrieved from memory: {title} [{item}] ({utc_minute(time)})"
                  for item, title, time in self.retrieved]
        if self.generated is not None:
            lines.append(f"generated: {self.generated}")
        lines.append(f"top {len(self.items)} (rank 1 = first):")
        for rank, (item, title) in enumerate(self.items, 1):
            mark = "  <- the actual next item" if item == sample.target else ""
            lines.append(f"{rank:>3}. {title} [{item}]{mark}")
        shown = "" if self.target_rank < len(self.items) else ", not in the top list"
        lines.append(f"actual next item ranked {self.target_rank + 1} (1 = first; automr rq3 "
                     f"counts from 0){shown}: {self.target_title} [{sample.target}]")
        return lines


def latest_sample(dataset: PreparedDataset, user: str, split: str) -> Sample:
    """The user's latest sample in ``split`` (its target is the item actually chosen next);
    of samples at the same last timestamp, the first in the split's order."""
    if not isinstance(user, str):
        raise AutomrError(f"a user id is a str, as in the dataset (user {user!r} is a "
                          f"{type(user).__name__}): give {str(user)!r}")
    mine = [s for s in dataset.samples(split) if s.user == user]
    if not mine:
        users = {s.user for s in dataset.samples(split)}
        raise AutomrError(f"user {user!r} has no {split} sample; try one of "
                          f"{', '.join(suggested_users(users, user))} ({len(users)} users have "
                          f"one)")
    return max(mine, key=lambda s: s.timestamp)


def suggested_users(users: set[str], user: str, count: int = 5) -> list[str]:
    """Up to ``count`` of ``users`` to offer instead of ``user``, in natural order (``"9"``
    before ``"10"``): the numerically nearest when all ids are integers, else the first."""
    if user.isdecimal() and all(u.isdecimal() for u in users):
        users = set(sorted(users, key=lambda u: (abs(int(u) - int(user)), int(u)))[:count])
    return sorted(users, key=_natural)[:count]


def _natural(text: str) -> list[str | int]:
    return [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", text)]


RECOMMEND_GROUNDERS = ("l2", "constrained", "likelihood")
"""The grounders of `automr recommend` (those without a prior tuned on samples)."""


@attrs.define(eq=False)
class Recommender:
    """AutoMR ready to rank users: a fine-tune, its memory and a trained retriever loaded once
    (:meth:`open`), then :meth:`recommend` for each user, as ``automr evaluate`` ranks a
    sample (the same grounder and beams). One call at a time (a retrieval records what it
    retrieved for the call)."""

    dataset: PreparedDataset
    loaded: LoadedModel
    retrieval: MemoryRetrieval
    grounder: Grounder

    @classmethod
    def open(
        cls, dataset: PreparedDataset | Path | str, finetuned: Path | str, memory: Path | str,
        retriever: Path | str, grounder: str = "constrained", combiner: str = "concat",
        k: int = 1, device: str = "auto", cache_dir: Path | str | None = None,
        dtype: str = "auto", num_beams: int | None = None,
    ) -> "Recommender":
        """Load the fine-tune ``finetuned`` with memory ``memory`` (both of ``dataset``, a
        prepared folder or one opened) and the retriever ``retriever`` joining ``k`` elements
        with ``combiner``, ranking with ``grounder`` (``num_beams`` None: its default, 4 for
        l2 and 10 for constrained). The memory and retriever are checked before the model
        loads."""
        check_options(grounder, combiner, k, num_beams)
        if not isinstance(dataset, PreparedDataset):
            dataset = PreparedDataset.load(dataset)
        run = FinetunedRun.open(finetuned)
        run.check_plain()  # as automr evaluate's automr:G: a baseline's fine-tune wants its context
        run.check_dataset(dataset)
        where = str(resolve_device(device))
        store = run.open_memory(memory, device=where)
        store.check_dataset(dataset)
        retrieval = MemoryRetrieval(store, load_retriever_for(store, retriever, combiner),
                                    COMBINERS[combiner](), k=k)
        loaded = run.load(device=where, dtype=dtype, cache_dir=cache_dir)
        return cls(dataset, loaded, retrieval, build_grounder(
            grounder, loaded, dataset, run.base_fingerprint, num_beams=num_beams or None,
            cache_dir=cache_dir, progress=False))

    def recommend(self, user: str, top: int = 10, split: str = "test",
                  exclude_seen: bool = True) -> Recommendation:
        """The user's latest ``split`` sample ranked, its ``top`` items and the memory
        elements retrieved; ``exclude_seen`` leaves the user's earlier items out (the target
        stays), as ``automr evaluate --exclude-seen``."""
        top = check_top(top)
        require_bool(exclude_seen, "exclude_seen")
        sample = latest_sample(self.dataset, user, split)
        store, retrieval = self.retrieval.store, self.retrieval
        ids, mask = left_padded_prompts(self.loaded, self.dataset, [sample])
        llm = HFSplitLLM(self.loaded.model)
        retrieval.retrieved.clear()  # this call's only
        args = (llm, ids.to(llm.device), mask.to(llm.device), store.layer,
                retrieval.insert_for([sample]))
        catalog = self.dataset.catalog
        item_ids = catalog.ids
        [target] = catalog.positions([sample.target])
        generated = None
        with torch.no_grad():
            if isinstance(self.grounder, L2Grounder):
                [generated] = self.grounder.generate(*args)
                [distances] = self.grounder.distances_to([generated])
                ranking = rank_by_distance(distances[None])[0].tolist()
                tied = (distances <= distances[target]).nonzero()[:, 0].tolist()
            else:
                ranking = self.grounder.rank(*args)[0].tolist()
                tied = title_ties(catalog, sample.target, self.grounder).nonzero()[:, 0].tolist()
        if exclude_seen:  # as `automr evaluate --exclude-seen`: the target always stays
            seen = set(catalog.positions(sample.history)) - {target}
            ranking = [i for i in ranking if i not in seen]
        ranking = behind_its_ties(ranking, target, tied)
        entry = store.index.users.get(user)  # None: no memory of this user, nothing retrieved
        retrieved = [(entry.items[i], catalog.title(entry.items[i]), int(entry.timestamps[i]))
                     for i in retrieval.retrieved[0]] if entry is not None else []
        return Recommendation(
            sample=sample,
            items=[(item_ids[i], catalog.title(item_ids[i])) for i in ranking[:top]],
            retrieved=retrieved, target_rank=ranking.index(target),
            target_title=catalog.title(sample.target),
            recent=list(catalog.titles(sample.recent)), generated=generated,
        )


def check_top(top: int) -> int:
    """``top`` as a Python int, refused unless a whole number >= 1 (a bool too)."""
    return require_int(top, "--top", 1)


def check_options(grounder: str, combiner: str, k: int, num_beams: int | None) -> None:
    """Refuse a :class:`Recommender`'s options, before anything loads."""
    for option, value, least in (("--k", k, 1), ("--num-beams", num_beams or 0, 0)):
        if value < least:
            default = " (0: the grounder's default)" if least == 0 else ""
            raise AutomrError(f"{option} must be >= {least}{default}, got {value}")
    if combiner not in COMBINERS:
        raise AutomrError(f"unknown combiner {combiner!r}; choose one of {', '.join(COMBINERS)}")
    if grounder not in RECOMMEND_GROUNDERS:  # the -pop/-sasrec ones tune a prior on samples
        raise AutomrError(f"recommend grounds with {', '.join(RECOMMEND_GROUNDERS)}, not "
                          f"{grounder!r} (a grounder with a prior is tuned on validation "
                          f"samples by automr evaluate)")
    if grounder == "likelihood" and num_beams:
        raise AutomrError(f"--num-beams {num_beams} has no use with the likelihood grounder: "
                          f"it scores every title, generating none")


def recommend(
    dataset_dir: Path | str, user: str, finetuned: Path | str, memory: Path | str,
    retriever: Path | str, top: int = 10, split: str = "test", grounder: str = "constrained",
    combiner: str = "concat", k: int = 1, device: str = "auto",
    cache_dir: Path | str | None = None, dtype: str = "auto", exclude_seen: bool = True,
    num_beams: int | None = None,
) -> Recommendation:
    """The user's latest ``split`` sample ranked by AutoMR as ``automr evaluate`` ranks it (the
    same grounder and ``num_beams``: None is the grounder's default, 4 for l2 and 10 for
    constrained), its ``top`` items and the memory elements retrieved. Several users:
    :func:`recommendations`, or open a :class:`Recommender` once."""
    [one] = recommendations(dataset_dir, [user], finetuned, memory, retriever, top, split,
                            grounder, combiner, k, device, cache_dir, dtype, exclude_seen,
                            num_beams)
    return one


def recommendations(
    dataset_dir: Path | str, users: Iterable[str], finetuned: Path | str, memory: Path | str,
    retriever: Path | str, top: int = 10, split: str = "test", grounder: str = "constrained",
    combiner: str = "concat", k: int = 1, device: str = "auto",
    cache_dir: Path | str | None = None, dtype: str = "auto", exclude_seen: bool = True,
    num_beams: int | None = None,
) -> Iterator[Recommendation]:
    """:func:`recommend` for each of ``users`` in turn, the model loaded once; every option
    and user is checked before anything loads."""
    if isinstance(users, str):  # a Sequence[str] too: its characters would be the users
        raise AutomrError(f"users is a list of user ids, not one ({users!r}): give "
                          f"[{users!r}], or recommend() for one")
    users = list(users)  # a generator's users are read twice: checked, then ranked
    top = check_top(top)
    require_bool(exclude_seen, "exclude_seen")
    check_options(grounder, combiner, k, num_beams)
    dataset = PreparedDataset.load(dataset_dir)
    for user in users:  # an unknown user, before anything loads
        latest_sample(dataset, user, split)
    recommender = Recommender.open(dataset, finetuned, memory, retriever, grounder, combiner,
                                   k, device, cache_dir, dtype, num_beams)
    return (recommender.recommend(user, top, split, exclude_seen) for user in users)


def behind_its_ties(ranking: list[int], target: int, tied: list[int]) -> list[int]:
    """``ranking`` with ``target`` moved behind the ``tied`` items that directly follow it
    (equal distances, or the items sharing its title listed with it), so that its place is
    the rank ``automr evaluate`` gives it: ties broken against the target."""
    at = end = ranking.index(target)
    tied = set(tied)
    while end + 1 < len(ranking) and ranking[end + 1] in tied:
        end += 1
    return [*ranking[:at], *ranking[at + 1 : end + 1], target, *ranking[end + 1 :]]
