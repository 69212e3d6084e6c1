"""``automr.progress.Progress``: rich's bar on a terminal, plain throttled lines in a log."""

import io

import pytest
from rich.console import Console

from automr.progress import Progress, TextColumn, report_interval


def log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, force_jupyter=False), buffer


def test_a_log_gets_a_line_per_advance_with_interval_zero():
    console, buffer = log_console()
    with Progress(console=console, every=0) as bar:
        task = bar.add_task("encoding", total=4)
        for _ in range(4):
            bar.advance(task)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("encoding: 1/4 (25%) ")
    assert "elapsed" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("encoding: 4/4 (100%) ") and "left" not in lines[-1]


def test_lines_are_throttled_and_a_completed_task_is_reported_once():
    clock = [0.0]
    console, buffer = log_console()
    with Progress(console=console, every=30, get_time=lambda: clock[0]) as bar:
        task = bar.add_task("steps", total=100)
        for _ in range(99):
            clock[0] += 1.0
            bar.advance(task)
        bar.update(task, advance=1)
        bar.update(task, description="steps")  # already finished: no second line
    lines = buffer.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["steps: 30/100", "steps: 60/100",
                                                       "steps: 90/100", "steps: 100/100"]
    assert lines[0] == "steps: 30/100 (30%) 30.0 s elapsed, ~1 min left"


def test_label_and_fields_come_from_the_columns():
    console, buffer = log_console()
    with Progress(TextColumn("finetune"), TextColumn("{task.fields[status]}"), console=console,
                  every=0) as bar:
        task = bar.add_task("ignored", total=8, completed=2, status="")
        bar.update(task, advance=1, status="loss 1.234")
    assert buffer.getvalue().splitlines()[0].startswith("finetune: 3/8 (38%) ")
    assert buffer.getvalue().splitlines()[0].endswith("; loss 1.234")


def test_an_unfinished_task_gets_a_last_line_when_the_display_stops():
    console, buffer = log_console()
    with Progress(console=console, every=3600) as bar:
        task = bar.add_task("training", total=200)
        bar.advance(task, 7)
    assert buffer.getvalue().splitlines() == [buffer.getvalue().splitlines()[0]]
    assert buffer.getvalue().startswith("training: 7/200 (4%) ")


def test_disabled_prints_nothing():
    console, buffer = log_console()
    with Progress(console=console, every=0, disable=True) as bar:
        task = bar.add_task("quiet", total=3)
        for _ in range(3):
            bar.advance(task)
    assert buffer.getvalue() == ""


def test_a_terminal_keeps_rich_behaviour():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, force_interactive=True, width=80)
    with Progress(console=console, every=0, auto_refresh=False) as bar:
        assert not bar.plain
        task = bar.add_task("drawn", total=2)
        bar.advance(task)
    assert "drawn" in buffer.getvalue() and "drawn: 1/2" not in buffer.getvalue()


@pytest.mark.parametrize("value, expected", [("5", 5.0), ("0", 0.0), ("x", 30.0),
                                             ("-1", 30.0)])
def test_interval_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("AUTOMR_PROGRESS_EVERY", value)
    assert report_interval() == expected


def test_a_task_whose_total_grows_after_completing_reports_again():
    console, buffer = log_console()
    with Progress(console=console, every=0) as bar:  # e.g. TRSR: one round after another
        task = bar.add_task("rounds", total=2)
        bar.advance(task, 2)
        bar.update(task, total=4)
        bar.advance(task, 1)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("rounds: 2/2 (100%)")
    assert lines[-1].startswith("rounds: 3/4 (75%)")


def test_only_rich_public_api_is_used():
    import ast
    import inspect

    import automr.progress

    tree = ast.parse(inspect.getsource(automr.progress))
    private = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
               and node.attr.startswith("_") and not node.attr.startswith("__")
               and isinstance(node.value, ast.Name) and node.value.id == "self"}
    assert private <= {"_reported", "_report", "_print", "_task"}, private


def test_a_task_with_nothing_to_do_prints_no_line_until_it_gets_work():
    """TRSR's summaries with every prompt cached: no "0/0" line; work added later is shown."""
    console, buffer = log_console()
    with Progress(console=console, every=0) as bar:
        task = bar.add_task("summaries", total=0)
        bar.update(task, total=0)
        assert buffer.getvalue() == ""
        bar.update(task, total=2)
        bar.advance(task, 2)
    assert buffer.getvalue().splitlines()[-1].startswith("summaries: 2/2 (100%)")


def test_progress_goes_to_stderr_so_stdout_holds_the_results(capsys, monkeypatch):
    """`automr evaluate > table.md` put a progress line first in the table file (every
    command but data prepare wrote progress to stdout; the scripting review)."""
    monkeypatch.setenv("AUTOMR_PROGRESS_EVERY", "0")
    with Progress() as bar:
        task = bar.add_task("ranking", total=2)
        bar.update(task, advance=2)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("ranking: 2/2 (100%)")
