"""The package's layering: no import cycle between automr's sub-packages, and the Protocols
stay light (no transformers, no data layer at import)."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import automr

PACKAGE = Path(automr.__file__).parent


def unit(module: str) -> str:
    """``automr.data.prompts`` -> ``automr.data``; top-level modules are their own unit."""
    parts = module.split(".")
    if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir():
        return ".".join(parts[:2])
    return module


def import_graph() -> dict[str, set[str]]:
    """Sub-package -> the sub-packages its modules import (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("automr", *path.relative_to(PACKAGE).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        source = unit(module)
        edges = graph.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and
                     node.level == 0 else [])
            edges |= {unit(n) for n in names if n.startswith("automr.")} - {source}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_sub_packages():
    graph = import_graph()
    assert {"automr.data", "automr.methods", "automr.experiments"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_interfaces_and_the_package_import_light():
    code = ("import sys, automr, automr.interfaces; "
            "print(sorted(m for m in ('transformers', 'automr.data', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_retrievers_and_sasrec_import_without_transformers():
    """They are torch alone: resolving a device (automr.devices) must not pull in the model
    loader (a retriever's load did, for ``resolve_device``)."""
    code = ("import sys, automr.retrievers, automr.recommenders.sasrec; "
            "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in automr.__all__:
        assert getattr(automr, name) is not None, name


def test_no_public_name_is_shadowed_by_a_submodule():
    """A package attribute named like one of its submodules becomes that module once the
    submodule is imported (``automr.recommenders.finetune``): with every module imported, each
    name in each ``__all__`` is still the object it names, never a module."""
    import importlib
    import pkgutil
    import types

    modules = [info.name for info in pkgutil.walk_packages([str(PACKAGE)], "automr.")
               if not info.name.startswith("automr.testing.")]
    for name in modules:
        importlib.import_module(name)
    for name in ["automr", *modules]:
        package = sys.modules[name]
        for public in getattr(package, "__all__", ()):
            assert not isinstance(getattr(package, public), types.ModuleType), f"{name}.{public}"


def test_the_default_names_stay_light():
    """The default model's name and the default layer need neither transformers nor peft."""
    code = ("import sys, automr; automr.DEFAULT_MODEL; automr.DEFAULT_LAYER; "
            "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_modules_import_neither_torch_nor_transformers():
    """``automr COMMAND --help`` imports only its command's module: it stays well under a
    second where that module leaves torch and transformers to the command's body."""
    names = sorted(info.name for info in pkgutil.iter_modules([str(PACKAGE / "cli")]))
    code = ("import sys; " + "; ".join(f"import automr.cli.{name}" for name in names)
            + "; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"evaluate", "finetune", "model"} <= set(names) and out.stdout.strip() == "[]"


def test_every_name_of_each_all_resolves_and_is_listed_by_dir():
    """Each package's ``__all__`` names resolve, and ``dir(package)`` (what IPython and editors
    complete from) lists them all: the lazily imported ones and those imported at once."""
    import importlib

    for info in pkgutil.iter_modules([str(PACKAGE)], "automr."):
        package = importlib.import_module(info.name)
        public = getattr(package, "__all__", ())
        for name in public:
            assert getattr(package, name) is not None, f"{info.name}.{name}"
        assert set(public) <= set(dir(package)), (
            f"dir({info.name}) lacks {sorted(set(public) - set(dir(package)))}")
    assert {"__version__", *automr.__all__} <= set(dir(automr))
