"""The documentation site stays in step with the code: CLI coverage, README, examples, build."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from automr.cli.main import command_tree

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HEADING = re.compile(r"^#+\s+`(automr(?: [\w-]+)*)`\s*$", re.MULTILINE)


def walk(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under a click command, with its full path (``automr`` first).

    Duck-typed (``.commands``, ``.params``) because typer may vendor its own copy of click.
    """
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += walk(sub, (*path, name))
    return found


def cli_sections() -> dict[str, str]:
    """docs/cli.md split at headings that name a command: ``automr data stats`` -> its text."""
    text = (DOCS / "cli.md").read_text()
    matches = list(HEADING.finditer(text))
    return {
        m.group(1): text[m.end(): matches[i + 1].start() if i + 1 < len(matches) else len(text)]
        for i, m in enumerate(matches)
    }


COMMANDS = walk(command_tree(), ("automr",))[1:]
each_command = pytest.mark.parametrize(
    "path, command", COMMANDS, ids=[" ".join(path[1:]) for path, _ in COMMANDS]
)


def test_the_cli_has_commands() -> None:
    assert len(COMMANDS) >= 4


@each_command
def test_every_cli_command_is_documented(path: tuple[str, ...], command: Any) -> None:
    """Each registered command has a section in docs/cli.md naming its arguments and options.

    An option may be documented in the command's own section or in a parent group's section
    (shared options, e.g. the protocol options of ``automr data prepare``).
    """
    name = " ".join(path)
    sections = cli_sections()
    assert name in sections, f"docs/cli.md has no heading for `{name}`"
    text = "".join(sections.get(" ".join(path[:end]), "") for end in range(2, len(path) + 1))
    for param in command.params:
        if param.param_type_name == "argument":
            assert (param.name or "").upper() in text, f"`{name}`: argument {param.name} missing"
        else:
            for flag in (*param.opts, *param.secondary_opts):
                if flag.startswith("--") and flag != "--help":
                    assert flag in text, f"`{name}`: option {flag} missing from docs/cli.md"


# How an options table writes the default of ``--cache-dir`` (None: resolved when it runs).
CACHE_DIR_DEFAULT = "`$AUTOMR_CACHE`, else `$XDG_CACHE_HOME/automr`, else `~/.cache/automr`"

# Options whose real default is None, documented by what it stands for at run time instead.
# A new entry is a conscious choice: the docs must say what the None becomes.
DESCRIBED_DEFAULTS = {
    ("automr data prepare ml-100k", "--source"): "the RecBole copy, downloaded to the cache",
    ("automr data prepare amazon", "--domain"): "the kind's domain (DATASET_KINDS)",
    ("automr data prepare csv", "--domain"): "the kind's domain (DATASET_KINDS)",
    ("automr evaluate", "--model"): "the fine-tune's base model, else DEFAULT_MODEL",
    ("automr evaluate", "--layer"): "the memory's layer, else DEFAULT_LAYER",
    ("automr evaluate", "--reference"): "picked from --methods",
    ("automr evaluate", "--retrieval-seed"): "follows --seed",
    ("automr compare", "--reference"): "the first --method",
    ("automr rq3", "--reference-results"): "follows --results",
    ("automr rq3", "--out"): "follows --results",
}


def default_cells(section: str) -> list[tuple[str, str]]:
    """The (option, default) cells of a section's tables with a ``default`` column."""
    rows: list[tuple[str, str]] = []
    header: list[str] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif header[1:2] == ["default"] and not cells[0].startswith("---"):
            rows.append((cells[0], cells[1]))
    return rows


def documented_param(command: Any, cell: str) -> Any:
    """The parameter a table row names: its first ``--flag``, else an ``ARGUMENT``."""
    flags = re.findall(r"--[\w-]+", cell)
    for param in command.params:
        if flags[:1] and flags[0] in (*param.opts, *param.secondary_opts):
            return param
        if not flags and cell == f"`{(param.name or '').upper()}`":
            return param
    return None


def shown(param: Any) -> str:
    """A parameter's real default as docs/cli.md writes it."""
    if param.required:
        return "required, repeatable" if param.multiple else "required"
    if param.name == "cache_dir" and param.default is None:
        return CACHE_DIR_DEFAULT
    if param.default is None:
        return "none"
    if param.secondary_opts:  # a `--x` / `--no-x` pair: the flag that gives the default
        return f"`{(param.opts if param.default else param.secondary_opts)[0]}`"
    if getattr(param, "is_flag", False):
        return "on" if param.default else "off"
    return f"`{param.default}`"  # numbers, strings and paths as str() writes them


@each_command
def test_documented_defaults_are_the_real_ones(path: tuple[str, ...], command: Any) -> None:
    """Every default in a command's options table is the one the code uses (users copy them)."""
    name = " ".join(path)
    documented: set[tuple[str, str]] = set()
    for cell, default in default_cells(cli_sections().get(name, "")):
        param = documented_param(command, cell)
        assert param is not None, f"`{name}`: {cell} is documented but is no parameter"
        key = (name, param.opts[0])
        documented.add(key)
        if key in DESCRIBED_DEFAULTS:
            assert param.default is None, f"`{name}` {cell}: has a literal default now"
        else:
            real = shown(param)
            assert default == real, f"`{name}` {cell}: docs say {default}, the code {real}"
    described_here = {key for key in DESCRIBED_DEFAULTS if key[0] == name}
    assert described_here <= documented, f"stale DESCRIBED_DEFAULTS: {described_here - documented}"


def test_the_command_tree_names_every_command() -> None:
    """docs/cli.md's tree of commands is the overview of the sections that follow."""
    tree = (ROOT / "docs" / "cli.md").read_text().split("```\nautomr\n", 1)[1].split("```")[0]
    named = set(re.findall(r"[├└]── ([\w-]+)", tree))
    missing = {path[-1] for path, _ in COMMANDS} - named
    assert not missing, f"docs/cli.md's command tree lacks {sorted(missing)}"


def test_readme_quick_start_commands_are_on_the_home_page() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick_start, re.DOTALL)
    assert len(commands) == 2, "README's quick start should hold two bash commands"
    index = (DOCS / "index.md").read_text()
    for command in commands:
        assert command in index, f"docs/index.md lacks README's command:\n{command}"
    # CI runs the test command (the last step of the second) after its own checks
    test_command = commands[1].rsplit(" && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == test_command, f".ci/run does not end with README's {test_command!r}"


def test_custom_components_tutorial_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial's Python blocks, run in order, work against the real Protocols; then
    docs/api/index.md's method kind of its recommender is built and evaluated by name."""
    import automr
    from automr.methods import METHODS

    text = (DOCS / "tutorials" / "custom-components.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL))
    namespace: dict[str, object] = {"__name__": "tutorial"}
    exec(compile(code, "custom-components.md", "exec"), namespace)
    monkeypatch.setitem(METHODS, "recent", None)  # the block registers it; removed after
    kind = (DOCS / "api" / "index.md").read_text().split("## Adding a method kind")[1]
    exec(compile(re.findall(r"```python\n(.*?)```", kind, re.DOTALL)[0], "index.md", "exec"),
         namespace)
    dataset, samples = namespace["dataset"], namespace["samples"]
    by_name = automr.build_method("recent", automr.Workspace(dataset, progress=False))
    measured = automr.evaluate({"recent": by_name}, samples[:8], len(dataset.catalog),  # type: ignore[index,arg-type]
                               measures=("ranks", "likelihood"))  # it scores no title: skipped
    assert measured.reports["recent"].ranks == namespace["evaluation"].reports[  # type: ignore[attr-defined]
        "recent"].ranks[:8]
    assert namespace["tokens"].shape[0] == 2  # type: ignore[attr-defined]
    evaluation = namespace["evaluation"]  # the recommender's section: ranked beside pop
    assert set(evaluation.reports) == {"pop", "recent"}  # type: ignore[attr-defined]
    assert "recent" in evaluation.paired()  # type: ignore[attr-defined]
    grounded = namespace["grounded"]  # the grounder's section: BIGRec's shape, with and
    assert set(grounded.reports) == {"lm", "lm+mine"}  # without the tutorial's memory
    assert namespace["grounder"].__class__.__name__ == "BagOfTitleTokens"
    retrieved = namespace["methods"]["lm+mine"].details()["retrieved"]  # type: ignore[index]
    assert len(retrieved) == len(grounded.reports["lm"].ranks)  # type: ignore[attr-defined]
    # the grounder read loaded.model.config.vocab_size, which Gemma 3 4B-27B's config (a
    # language model's beside a vision tower) lacks: AttributeError; it takes the logits' width
    from automr.llm import HFSplitLLM, LoadedModel
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    gemma3 = LoadedModel(model=tiny_model(tiny_config("gemma3", 2)), tokenizer=tiny_tokenizer(),
                         name="tiny-gemma3")
    bags = namespace["BagOfTitleTokens"](gemma3, namespace["dataset"]).bags  # type: ignore
    assert bags.shape[1] == HFSplitLLM(gemma3.model).vocab_size


def test_own_data_tutorial_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its commands, as written, in a fresh folder, then its Python block: the synthetic pair,
    the preparation, the floors and SASRec (about 20 s)."""
    from typer.testing import CliRunner

    from automr.cli.main import app

    text = (DOCS / "tutorials" / "own-data.md").read_text()
    commands = [line for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
                for line in block.splitlines() if line.strip()]
    assert [c.split()[0] for c in commands] == ["python"] + ["automr"] * 3
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = shlex.split(command)
        if args[0] == "python":
            subprocess.run([sys.executable, *args[1:]], check=True, timeout=60)
        else:
            result = CliRunner().invoke(app, args[1:])
            assert result.exit_code == 0, (command, result.output)
    ranked = json.loads((tmp_path / "runs" / "mine-floors" / "results.json").read_text())
    assert list(ranked["methods"]) == ["pop", "cooc", "sasrec"]
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL))
    namespace: dict[str, object] = {"__name__": "tutorial"}
    exec(compile(code, "own-data.md", "exec"), namespace)
    assert set(namespace["evaluation"].reports) == {"pop", "cooc"}  # type: ignore[attr-defined]


def concept_code(page: str) -> str:
    """The Python blocks of docs/concepts/PAGE.md, in order."""
    text = (DOCS / "concepts" / f"{page}.md").read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL))


def test_evaluation_concept_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluation.md's block as written, given the inputs it names (scores, targets, sample
    ids, catalog size) and another method's report where it reads one."""
    import torch

    from automr.evaluation import build_report, ranks_from_scores

    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    n_items, batch = 30, 12
    targets = torch.randint(0, n_items, (batch,), generator=generator)
    sample_ids = [f"u{i}@0:{int(t)}" for i, t in enumerate(targets)]
    other = ranks_from_scores(torch.randn(batch, n_items, generator=generator), targets)
    build_report("automr:constrained", sample_ids, other, n_items).save(
        "OUT/ranks/automr-constrained.json")
    namespace: dict[str, object] = {
        "__name__": "concept", "n_items": n_items, "targets": targets,
        "sample_ids": sample_ids, "scores": torch.randn(batch, n_items, generator=generator)}
    exec(compile(concept_code("evaluation"), "evaluation.md", "exec"), namespace)
    assert (tmp_path / "results" / "sasrec.json").is_file()
    assert namespace["diffs"]["recall@1"].n_samples == batch  # type: ignore[index]


def test_split_concept_snippet_runs(real_model: Any) -> None:
    """split.md's block as written (it loads the embedded model itself): logits at each
    prompt's last position, equal to the full model's."""
    import torch

    namespace: dict[str, object] = {"__name__": "concept"}
    exec(compile(concept_code("split"), "split.md", "exec"), namespace)
    batch, logits = namespace["batch"], namespace["logits"]
    with torch.no_grad():
        full = real_model.model(input_ids=batch.input_ids,  # type: ignore[attr-defined]
                                attention_mask=batch.attention_mask).logits[:, -1:]  # type: ignore[attr-defined]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="docs tools not installed (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="mkdocs-material not installed")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").exists()


def test_distributed_page_holds_the_recorded_one_and_two_process_runs():
    """distributed.md's CPU table: every step's times and speed-up as
    benchmarks/results/distributed-cpu.json holds them, and outputs that were identical."""
    result = json.loads((ROOT / "benchmarks" / "results" / "distributed-cpu.json").read_text())
    page = (DOCS / "distributed.md").read_text()
    rows = page[page.index("## Measured on this project's CPU"):].splitlines()
    for name, step in result["steps"].items():
        one, two = step["runs"]
        cells = (f"| {one['wall_seconds']:.0f} s ({one['recorded_seconds']:.0f}) "
                 f"| {two['wall_seconds']:.0f} s ({two['recorded_seconds']:.0f}) "
                 f"| {one['wall_seconds'] / two['wall_seconds']:.2f}x |")
        assert any(cells in row for row in rows), (name, cells)
        assert set(step["files"].values()) == {"identical"}, name
        assert two["recorded_processes"] == 2 and one["recorded_processes"] == 1


def test_api_index_names_every_top_level_export() -> None:
    """docs/api/index.md ('what to import for what') names every name of ``automr.__all__``,
    and every ``automr.NAME`` it names is one of them (or a sub-package)."""
    import automr

    named = set(re.findall(r"`automr\.([A-Za-z_]\w*)", (DOCS / "api" / "index.md").read_text()))
    assert set(automr.__all__) - named == set(), "docs/api/index.md lacks these exports"
    import importlib.util

    unknown = {n for n in named - set(automr.__all__)  # a sub-package: imported or not yet
               if importlib.util.find_spec(f"automr.{n}") is None}
    assert not unknown, f"docs/api/index.md names what automr does not export: {unknown}"


def test_every_top_level_export_is_rendered_on_an_api_page() -> None:
    """The module that defines each name of ``automr.__all__`` has a ``::: module`` block on a
    docs/api page, so the page index.md points to documents it."""
    import importlib
    import inspect

    import automr

    pages = "".join(page.read_text() for page in (DOCS / "api").glob("*.md"))
    rendered = set(re.findall(r"^::: (automr[\w.]*)", pages, re.MULTILINE))
    missing = []
    for name in automr.__all__:
        value = getattr(automr, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            homes = {value.__module__}
        else:  # a constant: the rendered module (or its package) that assigns it
            homes = {module for module in rendered | {automr._EXPORTS[name]} if re.search(
                rf"^{name}\b[^=\n]*=", inspect.getsource(importlib.import_module(module)),
                re.MULTILINE)}
        if not homes & rendered:
            missing.append(f"{name} ({', '.join(sorted(homes))})")
    assert not missing, f"no docs/api page renders: {missing}"


def test_the_split_page_names_every_model_type_and_the_readme_counts_them() -> None:
    """docs/concepts/split.md lists every type the split runs (each in backticks) and README's
    and the home page's counts are the real one: a type added to the split without a word in
    the docs, or a count left behind, fails."""
    from automr.llm.split import SUPPORTED_MODEL_TYPES, VISION_LANGUAGE_TYPES

    types = SUPPORTED_MODEL_TYPES + VISION_LANGUAGE_TYPES
    page = (ROOT / "docs" / "concepts" / "split.md").read_text(encoding="utf-8")
    assert [kind for kind in types if f"`{kind}`" not in page] == []
    for text in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        counts = re.findall(r"lists all (\d+) types", text.read_text(encoding="utf-8"))
        assert counts == [str(len(types))], text


def docstring_examples() -> list[tuple[str, str]]:
    """``(where, code)`` of every ``::`` code block in src/automr's docstrings that parses as
    Python and imports something (the examples users copy from the API pages)."""
    import ast
    import textwrap

    found = []
    for path in sorted((ROOT / "src" / "automr").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                continue
            doc = ast.get_docstring(node) or ""
            for block in re.findall(r"::\n\n((?:(?: {4}.*)?\n)+)", doc + "\n"):
                code = textwrap.dedent(block)
                try:
                    ast.parse(code)
                except SyntaxError:
                    continue
                if "import " in code:
                    found.append((f"{path.relative_to(ROOT)}:{getattr(node, 'name', '')}", code))
    return found


@pytest.mark.parametrize("where, code", docstring_examples(), ids=lambda v: v.split("\n")[0][:60])
def test_docstring_examples_import_the_classes_they_build_on(where: str, code: str) -> None:
    """The contracts' example subclassed RetrievalContract without importing it (NameError
    when copied; the snippets review): every base class an example names is imported or
    defined in it."""
    import ast
    import builtins

    tree = ast.parse(code)
    known = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            known |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ClassDef | ast.FunctionDef):
            known.add(node.name)
    bases = {b.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
             for b in node.bases if isinstance(b, ast.Name)}
    assert bases <= known, f"{where}: {sorted(bases - known)} used, not imported"
