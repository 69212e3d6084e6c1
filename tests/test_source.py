"""Rules on the source that ruff does not check."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_CALLS = ("read_text", "write_text", "open", "fdopen")


def calls_without_encoding(source: str) -> list[int]:
    """Lines of ``x.read_text(...)``, ``x.write_text(...)`` and text-mode ``open(...)`` /
    ``x.open(...)`` / ``os.fdopen(...)`` calls that name no encoding (binary modes need
    none)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = (node.func.attr if isinstance(node.func, ast.Attribute) else
                node.func.id if isinstance(node.func, ast.Name) else None)
        if name not in TEXT_CALLS or any(k.arg == "encoding" for k in node.keywords):
            continue
        mode = next((a.value for a in node.args if isinstance(a, ast.Constant)
                     and isinstance(a.value, str) and set(a.value) <= set("rwaxbt+")), None)
        mode = next((k.value.value for k in node.keywords if k.arg == "mode"
                     and isinstance(k.value, ast.Constant)), mode)
        if name in ("open", "fdopen"):
            if mode is not None and "b" in mode:
                continue
            if name == "open" and isinstance(node.func, ast.Attribute) and mode is None \
                    and node.args:
                continue  # MemoryStore.open(path), FinetunedRun.open(folder), gzip.open(path)
            # path.open() and path.open(newline="") read text in the locale's encoding
        lines.append(node.lineno)
    return lines


def test_every_text_read_and_write_names_its_encoding():
    """Files are written and read as UTF-8 whatever the locale (titles, paths and method names
    are any text; a cp1252 or ASCII locale would fail or garble them)."""
    found = [f"{path.relative_to(ROOT)}:{line}"
             for folder in ("src", "benchmarks", "examples")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for line in calls_without_encoding(path.read_text(encoding="utf-8"))]
    assert not found, "name encoding='utf-8' at " + ", ".join(found)


def test_the_rule_sees_what_it_should():
    source = """
path.read_text()
path.write_text(text, encoding="utf-8")
open(name)
open(name, "rb")
path.open("a")
path.open("a+b")
FinetunedRun.open(folder)
FinetunedRun.open("runs/demo/bigrec")
path.open()
path.open(newline="")
path.open(mode="rb")
os.fdopen(fd, "w")
os.fdopen(fd, "wb")
"""
    assert calls_without_encoding(source) == [2, 4, 6, 10, 11, 13]


def test_files_are_written_whole_or_not_at_all():
    """A report a command writes (results.md, scores.json, ablation.md, rq2.json, rq3.md, a
    bench result, the demo's step marker) was written in place, so a command cut during the
    write left it truncated; every file goes through storage's atomic helpers (write to a
    sibling, then rename), the one ``write_text`` being theirs (automr.testing writes fixtures)."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for path in sorted((ROOT / "src" / "automr").rglob("*.py"))
             if path.name != "storage.py" and "testing" not in path.parts
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "write_text"]
    assert not found, "write through automr.storage.write_text_atomic at " + ", ".join(found)
