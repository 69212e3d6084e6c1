"""``automr data ...``: prepare datasets under the paper's protocol, and show their statistics.

Each ``prepare`` command is a thin wrapper over the library function of the same kind in
:data:`automr.data.DATASET_KINDS`; the protocol options override that kind's defaults.
"""

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import attrs
import typer
from rich.console import Console
from rich.table import Table

from automr.cli.common import CacheDirOption, QuietOption, command_group, option_group, user_errors
from automr.data import (
    DATASET_KINDS,
    PROMPT_DOMAINS,
    DatasetStats,
    PreparedDataset,
    ProtocolConfig,
    prepare_amazon,
    prepare_csv,
    prepare_movielens,
    prepare_movielens_100k,
)
from automr.errors import AutomrError

app = command_group("Prepare datasets under the paper's protocol.")
prepare_app = command_group("Load a source, apply the protocol, write a dataset folder.")
app.add_typer(prepare_app, name="prepare")

_P = "Protocol"
OutOption = Annotated[Path, typer.Option("--out", help="Folder to write (replaced atomically).")]
StartOption = Annotated[str | None, typer.Option(
    "--start", help="Window start date YYYY-MM-DD, or 'auto' (first month of the data).",
    rich_help_panel=_P)]
EndOption = Annotated[str | None, typer.Option(
    "--end", help="Window end date YYYY-MM-DD (exclusive), or 'auto' (after the last "
    "interaction).", rich_help_panel=_P)]
TrainMonthsOption = Annotated[int | None, typer.Option(
    "--train-months", help="Calendar months of training from the window start; the rest is "
    "halved by time into validation and test.", rich_help_panel=_P)]
MinItemOption = Annotated[int | None, typer.Option(
    "--min-item-interactions", help="Drop items with fewer interactions.", rich_help_panel=_P)]
MinUserOption = Annotated[int | None, typer.Option(
    "--min-user-interactions", help="Drop users with fewer interactions.", rich_help_panel=_P)]
IterativeOption = Annotated[bool | None, typer.Option(
    "--iterative-filter/--single-pass-filter", help="Repeat the item/user filter until "
    "nothing changes (k-core), or apply it once.", show_default=False, rich_help_panel=_P)]
MaxHistoryOption = Annotated[int | None, typer.Option(
    "--max-history", help="Cap on a sample's history (recent + memory).", rich_help_panel=_P)]
RecentKOption = Annotated[int | None, typer.Option(
    "--recent-k", help="Latest history items put in the prompt.", rich_help_panel=_P)]
MinHistoryOption = Annotated[int | None, typer.Option(
    "--min-history", help="Earlier interactions a user needs for a sample (default: recent-k).",
    rich_help_panel=_P)]
DomainOption = Annotated[str | None, typer.Option(
    "--domain", help="Prompt vocabulary: movies, books, games or items.")]
MergeOption = Annotated[bool, typer.Option(
    "--merge-same-title/--no-merge-same-title",
    help="Merge items with identical titles into one item.")]


def _date(value: str | None, default: dt.date | None, name: str) -> dt.date | None:
    if value is None:
        return default
    if value.lower() == "auto":
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise AutomrError(f"--{name} {value!r} is not a date; use YYYY-MM-DD or 'auto'.") from None


def _protocol(kind: str, start: str | None, end: str | None, **numbers: object) -> ProtocolConfig:
    """The kind's default protocol with the options the user gave."""
    base = DATASET_KINDS[kind].protocol
    changes = {k: v for k, v in numbers.items() if v is not None}
    changes["start"] = _date(start, base.start, "start")
    changes["end"] = _date(end, base.end, "end")
    try:
        return attrs.evolve(base, **changes)
    except ValueError as error:
        raise AutomrError(f"invalid protocol option: {error}. See `automr data prepare "
                          f"{kind} --help`.") from None


PROTOCOL_OPTIONS = {
    "start": (StartOption, None), "end": (EndOption, None),
    "train_months": (TrainMonthsOption, None),
    "min_item_interactions": (MinItemOption, None), "min_user_interactions": (MinUserOption, None),
    "iterative_filter": (IterativeOption, None), "max_history": (MaxHistoryOption, None),
    "recent_k": (RecentKOption, None), "min_history": (MinHistoryOption, None),
}


def protocol_options(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The protocol options of a ``prepare`` command, received as one ``protocol``."""
    return option_group("protocol", PROTOCOL_OPTIONS, functools.partial(_protocol, kind))


def _domain(kind: str, domain: str | None) -> str:
    chosen = DATASET_KINDS[kind].domain if domain is None else domain
    if chosen not in PROMPT_DOMAINS:
        raise AutomrError(f"--domain {chosen!r} is unknown; use one of "
                          f"{', '.join(sorted(PROMPT_DOMAINS))}.")
    return chosen


FEW_SAMPLES = 100
"""Below this many samples a split's intervals are too wide to read (a note says so)."""


def print_notes(dataset: PreparedDataset) -> None:
    """What a prepared dataset's statistics leave for the user to notice: titles several items
    share (the LM names items by title, so those targets cannot be told apart) and splits too
    small to compare methods on."""
    shared = dataset.catalog.repeated_titles
    if shared:
        items = sum(len(ids) for ids in shared.values())
        example = next(iter(shared))
        typer.echo(f"note: {items:,} items share {len(shared):,} title(s) (e.g. {example!r}); "
                   f"the model names items by title, so it cannot tell them apart: "
                   f"--merge-same-title makes each such title one item")
    small = {split: n for split, n in dataset.stats.samples.items() if n < FEW_SAMPLES}
    if small:
        counts = ", ".join(f"{split} {n}" for split, n in small.items())
        typer.echo(f"note: few samples ({counts}): intervals on so few are too wide to compare "
                   f"methods; move the split with --train-months or --start/--end")


def print_stats(stats: DatasetStats, title: str) -> None:
    """The statistics as a two-column rich table on stdout (a value too wide for the
    terminal folds onto the next line: cut short with "…", a redirected output lost it)."""
    table = Table(title=title, show_header=False)
    table.add_column("statistic", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for label, value in stats.rows():
        table.add_row(label, value)
    Console().print(table)


@prepare_app.command("ml-100k")
@user_errors
@protocol_options("ml-100k")
def prepare_ml_100k_command(
    out: OutOption,
    cache_dir: CacheDirOption = None,
    source: Annotated[Path | None, typer.Option(
        "--source", help="A GroupLens ml-100k folder (u.data, u.item) instead of the RecBole "
        "copy fetched into the cache.")] = None,
    *, protocol: ProtocolConfig,
) -> None:
    """MovieLens-100K (default protocol: Sep 1997 on, 6 months train, rest halved)."""
    dataset = prepare_movielens_100k(out, cache_dir=cache_dir, source=source, protocol=protocol)
    print_stats(dataset.stats, f"ml-100k -> {out}")
    print_notes(dataset)


@prepare_app.command("movielens")
@user_errors
@protocol_options("movielens")
def prepare_movielens_command(
    source: Annotated[Path, typer.Option(
        "--source", help="A GroupLens release folder: ratings.dat + movies.dat (1M, 10M) or "
        "ratings.csv + movies.csv (20M, 25M, 32M, latest).")],
    out: OutOption, *, protocol: ProtocolConfig,
) -> None:
    """MovieLens 1M to 32M (default protocol: whole range, 10 months train, rest halved)."""
    dataset = prepare_movielens(source, out, protocol=protocol)
    print_stats(dataset.stats, f"movielens -> {out}")
    print_notes(dataset)


@prepare_app.command("amazon")
@user_errors
@protocol_options("amazon")
def prepare_amazon_command(
    reviews: Annotated[Path, typer.Option("--reviews", help="Reviews JSON lines (.gz ok).")],
    meta: Annotated[Path, typer.Option("--meta", help="Metadata JSON lines (.gz ok).")],
    out: OutOption,
    domain: DomainOption = None, merge_same_title: MergeOption = False,
    quiet: QuietOption = False, *, protocol: ProtocolConfig,
) -> None:
    """Amazon Reviews 2014, 2018 or 2023 (default protocol: the paper's 2017, 10 months train)."""
    dataset = prepare_amazon(reviews, meta, out, protocol=protocol,
                             domain=_domain("amazon", domain),
                             merge_same_title=merge_same_title, progress=not quiet)
    print_stats(dataset.stats, f"amazon -> {out}")
    print_notes(dataset)


@prepare_app.command("csv")
@user_errors
@protocol_options("csv")
def prepare_csv_command(
    interactions: Annotated[Path, typer.Option(
        "--interactions", help="CSV/TSV with columns user,item,timestamp.")],
    items: Annotated[Path, typer.Option("--items", help="CSV/TSV with columns item,title.")],
    out: OutOption,
    domain: DomainOption = None, merge_same_title: MergeOption = False,
    column: Annotated[list[str] | None, typer.Option(
        help="NAME=COLUMN: the files name column NAME (user, item, timestamp, title) "
             "COLUMN, e.g. --column user=userId --column item=movieId; repeat. One mapping "
             "renames the column in both files.")] = None,
    quiet: QuietOption = False, *, protocol: ProtocolConfig,
) -> None:
    """Generic CSV/TSV (default protocol: whole range, 10 months train, rest halved)."""
    dataset = prepare_csv(interactions, items, out, protocol=protocol,
                          domain=_domain("csv", domain), merge_same_title=merge_same_title,
                          progress=not quiet, columns=_columns(column or []))
    print_stats(dataset.stats, f"csv -> {out}")
    print_notes(dataset)


def _columns(pairs: list[str]) -> dict[str, str]:
    """``--column NAME=COLUMN`` options as ``{NAME: COLUMN}``."""
    columns: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = (part.strip() for part in pair.partition("="))
        if not sep or name in columns:
            raise AutomrError(f"--column {pair!r}: write NAME=COLUMN (e.g. user=userId), each "
                              f"NAME once")
        columns[name] = column
    return columns


@app.command("stats")
@user_errors
def stats_command(
    folder: Annotated[Path, typer.Argument(help="A folder written by `automr data prepare`.")],
) -> None:
    """Print the statistics of a prepared dataset."""
    print_stats(PreparedDataset.load(folder).stats, str(folder))
