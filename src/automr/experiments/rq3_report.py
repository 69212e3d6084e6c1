"""RQ3's report: ``rq3.json``, ``rq3.md`` and the two figures, from
:func:`automr.experiments.rq3.analyze_rq3` (the module docstring there says what RQ3 measures)."""

import json
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

import numpy

from automr.data import PreparedDataset
from automr.errors import AutomrError
from automr.evaluation.run import markdown_cell
from automr.experiments.plotting import new_figure, require_matplotlib, save_figure
from automr.experiments.rq3 import (
    OLDER_THAN_DAYS,
    RQ3Result,
    analyze_rq3,
)
from automr.storage import write_text_atomic


def run_rq3(
    results_dir: Path | str, dataset_dir: Path | str, out_dir: Path | str | None = None, *,
    reference: str = "bigrec:constrained", method: str = "automr:constrained", rows: int = 8,
    memory: Path | str | None = None, reference_dir: Path | str | None = None,
    measure: str = "ranks",
) -> RQ3Result:
    """Write ``rq3.json``, ``rq3.md``, ``rq3-timeline.png/.svg`` and ``rq3-ages.png/.svg`` into
    ``out_dir`` (default: ``results_dir``). ``results_dir`` (and ``reference_dir``) may also be
    an exported evaluation (``automr export``, e.g. under docs/results/).

    The reference's ranks are read from ``reference_dir`` when given (e.g. ``OUT/bigrec`` of
    :func:`~automr.experiments.rq2.run_rq2`, with ``results_dir`` one of its ``OUT/automr-I``),
    else from ``results_dir``; both must cover the same samples.

    Retrieved positions are read against the dataset's user timelines, or against the memory
    folder's index when ``memory`` is given (the same positions unless interactions were
    appended to the memory later).
    """
    require_matplotlib()
    if out_dir is None and Path(results_dir).is_file():
        raise AutomrError(f"{results_dir} is an exported evaluation: say where rq3.md/json and "
                          f"the figures go with --out")
    dataset = PreparedDataset.load(dataset_dir)
    result = analyze_rq3(results_dir, dataset, reference=reference, method=method, rows=rows,
                         memory=memory, reference_dir=reference_dir, measure=measure)
    out = Path(results_dir if out_dir is None else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "rq3.json", json.dumps(result.to_json(dataset), indent=1) + "\n")
    write_text_atomic(out / "rq3.md", rq3_markdown(result, dataset))
    plot_timeline(result, dataset, out / "rq3-timeline")
    plot_ages(result, out / "rq3-ages")
    return result


def rq3_markdown(result: RQ3Result, dataset: PreparedDataset) -> str:
    c, loss = result.counts, result.loss_name
    if result.measure == "ranks":
        table = ["| samples with memory | Recall@1 improved | Recall@1 lost | rank improved | "
                 "rank same | rank worse | shown |", "|---|---|---|---|---|---|---|",
                 f"| {c['retrieved']} | {c['recall1_improved']} | {c['recall1_worse']} | "
                 f"{c['rank_improved']} | {c['rank_same']} | {c['rank_worse']} | "
                 f"{c['shown']} |"]
    else:
        table = ["| samples with memory | log-likelihood rose | same | fell | shown |",
                 "|---|---|---|---|---|",
                 f"| {c['retrieved']} | {c['likelihood_improved']} | {c['likelihood_same']} | "
                 f"{c['likelihood_worse']} | {c['shown']} |"]
    lines = [
        f"# RQ3: how far back does `{result.method}` retrieve?", "",
        f"Evaluation `{result.results}`: {c['evaluated']} {result.split} samples, "
        f"{c['retrieved']} of which retrieved at least one memory element; reference "
        f"`{result.reference}` (the same model without memory).", "",
        f"Criterion for the case study: **{result.criterion_text}**. Samples are ordered by "
        f"how much the target's {loss} improved; the first {c['shown']} are drawn in "
        "`rq3-timeline.png`.", "", *table, "",
        "Ages of the retrieved elements (\"back\": interactions before the sample, 1 = the "
        "latest; the prompt holds the latest "
        f"{dataset.protocol.recent_k}). `uniform` is the expectation under uniform random "
        "selection from the same memories.", "",
        "| | all samples | case-study samples |", "|---|---|---|",
    ]
    summaries = (result.all_ages, result.improved_ages)
    fields = [
        ("samples / elements", lambda s: f"{s.samples} / {s.elements}"),
        ("back: median / mean / max",
         lambda s: f"{s.back_median:g} / {s.back_mean:.1f} / {s.back_max}"),
        ("back, uniform: mean", lambda s: f"{s.uniform_back_mean:.1f}"),
        ("days: median / mean / max",
         lambda s: f"{_days(s.days_median)} / {_days(s.days_mean)} / {_days(s.days_max)}"),
        ("days, uniform: mean", lambda s: _days(s.uniform_days_mean)),
        ("strictly older than the prompt's oldest item",
         lambda s: f"{s.before_recent_window:.0%}"),
        *[(f"more than {d} day{'s' * (d > 1)} back",
           lambda s, d=d: f"{s.older_than_days[str(d)]:.0%}")
          for d in OLDER_THAN_DAYS],
        ("place in memory (0 oldest, 1 newest; uniform 0.5)",
         lambda s: f"{s.quantile_mean:.2f}"),
    ]
    for name, show in fields:
        cells = ["-" if s is None else show(s) for s in summaries]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if result.shown:
        lines += ["", "Case-study samples:", "",
                  f"| sample | target | {loss} {result.reference} -> {result.method} | "
                  "retrieved (back, days) | prompt reaches back (days) |",
                  "|---|---|---|---|---|"]
        for r in result.shown:
            got = "; ".join(f"{markdown_cell(dataset.catalog.title(e.item))} ({e.back}, "
                            f"{_days(e.days)})" for e in r.retrieved)
            lines.append(f"| {markdown_cell(r.sample_id)} | "
                         f"{markdown_cell(dataset.catalog.title(r.sample.target))} | "
                         f"{_loss(r.reference_loss, result.measure)} -> "
                         f"{_loss(r.method_loss, result.measure)} | {got} | "
                         f"{_days(r.history_days[len(r.sample.memory)])} |")
    return "\n".join(lines) + "\n"


def _days(value: float) -> str:
    """Days with three significant digits: ML-100K's sessions are minutes (0.00926 days), a
    year of Amazon reviews is hundreds of days (312)."""
    return f"{value:.3g}"


def _loss(value: float, measure: str) -> str:
    """A rank as an integer, an NLL (nats) with two decimals."""
    return f"{int(value)}" if measure == "ranks" else f"{value:.2f}"


def plot_timeline(result: RQ3Result, dataset: PreparedDataset, stem: Path) -> tuple[Path, Path]:
    """Figure 1: one row per case-study sample, history as dots on a days-before axis."""
    rows = result.shown
    figure = new_figure(9.0, 1.2 + 0.45 * max(len(rows), 2))
    ax = figure.subplots()
    span = max((max(r.history_days) for r in rows), default=1.0) or 1.0
    for y, r in enumerate(rows):
        days = r.history_days
        n_memory = len(r.sample.memory)
        oldest, newest = days[n_memory], days[-1]
        ax.barh(y, oldest - newest, left=-oldest, height=0.6,
                color="tab:blue", alpha=0.15, label="prompt (recent items)" if y == 0 else None)
        ax.scatter([-d for d in days[:n_memory]], [y] * n_memory, s=10, color="tab:gray",
                   label="memory (long-term history)" if y == 0 else None, zorder=2)
        ax.scatter([-d for d in days[n_memory:]], [y] * (len(days) - n_memory), s=10,
                   color="tab:blue", zorder=2)
        ax.scatter([-e.days for e in r.retrieved], [y] * len(r.retrieved), s=90,
                   facecolors="none", edgecolors="tab:orange", linewidths=2, zorder=3,
                   label=f"retrieved by {result.method}" if y == 0 else None)
    ax.set_yticks(range(len(rows)),
                  [f"user {r.sample.user}: {result.loss_name} "
                   f"{_loss(r.reference_loss, result.measure)}→"
                   f"{_loss(r.method_loss, result.measure)}"
                   for r in rows])
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    time_axis(ax, span, negative=True)
    ax.set_xlim(-1.3 * span, 0.3 * MINUTE)
    ax.set_xlabel("time before the sample (symmetric log scale)")
    if rows:
        ax.legend(loc="lower left", fontsize="small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no case to show", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(textwrap.fill(f"{result.method}: {result.criterion_text}", 60),
                 fontsize="medium")  # 60: the axes leave room to the long y labels
    return save_figure(figure, stem)


TIME_TICKS = ((0.0, "0"), (1 / 1440, "1 min"), (1 / 24, "1 h"), (1.0, "1 d"), (7.0, "1 wk"),
              (30.0, "30 d"), (180.0, "180 d"), (365.0, "1 yr"), (1825.0, "5 yr"))
MINUTE = 1 / 1440


def time_axis(ax: Any, span: float, negative: bool = False) -> None:
    """A days axis on a symmetric log scale (linear below one minute), so sessions of minutes
    and months-old history both stay readable; ticks from 1 minute to years."""
    ax.set_xscale("symlog", linthresh=MINUTE, linscale=0.5)
    ticks = [(d, label) for d, label in TIME_TICKS if d <= max(span, MINUTE) * 1.5]
    sign = -1 if negative else 1
    ax.set_xticks([sign * d for d, _ in ticks], [label for _, label in ticks])
    ax.minorticks_off()
    ax.grid(axis="x", alpha=0.3)


def plot_ages(result: RQ3Result, stem: Path) -> tuple[Path, Path]:
    """Figure 2: histograms of the retrieved elements' ages over all evaluated samples, with
    the uniform-selection expectation as an outline."""
    rows = [r for r in result.evaluated if r.retrieved]
    figure = new_figure(10.0, 3.6)
    axes = figure.subplots(1, 2)
    for ax, unit, label in ((axes[0], "back", "interactions before the sample"),
                            (axes[1], "days", "time before the sample (symmetric log)")):
        values = [getattr(e, unit) for r in rows for e in r.retrieved]
        uniform, weights = [], []
        for r in rows:
            n_memory = len(r.sample.memory)
            ages = (range(len(r.sample.history), len(r.sample.recent), -1) if unit == "back"
                    else r.history_days[:n_memory])
            uniform += list(ages)
            weights += [len(r.retrieved) / n_memory] * n_memory
        if values:
            top = max(uniform)
            if unit == "days":
                bins = [0.0, *numpy.geomspace(MINUTE, max(top, MINUTE) * 1.01, 25).tolist()]
                time_axis(ax, top)
            else:  # whole interactions per bin, from the oldest memory's first (bins 3.37
                width = 1 if top <= 60 else math.ceil((top + 1) / 30)  # wide held 3 or 4)
                low = 0 if width == 1 else int(min(uniform))
                bins = list(range(low, int(top) + width + 1, width))
            _, edges, _ = ax.hist(values, bins=bins, color="tab:orange", alpha=0.8,
                                  label="retrieved")
            ax.hist(uniform, bins=edges, weights=weights, histtype="step", color="tab:gray",
                    linewidth=1.5, label="uniform over the memory")
            ax.axvline(statistics.median(values), color="black", linestyle="--", linewidth=1,
                       label="median")
            ax.legend(fontsize="small", frameon=False)
        else:
            ax.text(0.5, 0.5, "nothing retrieved", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("retrieved elements")
    figure.suptitle(f"Age of the memory elements {result.method} retrieved "
                    f"({len(rows)} samples)")
    return save_figure(figure, stem)
