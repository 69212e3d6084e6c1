"""Figures of the experiments (optional ``matplotlib``: ``pip install matplotlib``).

Figures are drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``, no
``pyplot``): nothing global changes, no window opens, and PNG is rendered by the Agg backend
whatever backend the caller has selected.
"""

import os
from pathlib import Path
from typing import Any

from automr.errors import AutomrError
from automr.storage import fresh_partial

PLOTS_HINT = 'pip install matplotlib (in a checkout of automr: pip install -e ".[plots]")'

#: Display names of metric keys (``recall@5`` -> ``Recall@5``).
METRIC_LABELS = {"recall": "Recall", "ndcg": "NDCG", "target_ll": "Target log-likelihood",
                 "target_ll_per_token": "Log-likelihood per token"}


def metric_label(key: str) -> str:
    name, _, k = key.partition("@")
    return f"{METRIC_LABELS.get(name, name)}@{k}" if k else METRIC_LABELS.get(name, name)


def require_matplotlib() -> None:
    """Refuse early, with the install command, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AutomrError(f"figures need matplotlib, which is not installed: {PLOTS_HINT}") \
            from None


def new_figure(width: float, height: float) -> Any:
    """An empty figure of ``width`` x ``height`` inches with constrained layout."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Any, stem: Path) -> tuple[Path, Path]:
    """Write ``STEM.png`` (150 dpi) and ``STEM.svg`` (no date, so reruns give the same file)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    import matplotlib

    for path in (png, svg):  # written beside, then renamed: never through a planted link
        tmp = fresh_partial(path)
        try:
            with matplotlib.rc_context({"svg.hashsalt": stem.name}):  # ids from the name
                figure.savefig(tmp, format=path.suffix[1:], **(
                    {"dpi": 150} if path is png else {"metadata": {"Date": None}}))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return png, svg
