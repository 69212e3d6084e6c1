"""automr is a typed library (PEP 561, ``py.typed``): a user's type checker reads its
annotations, and the names ``import automr`` imports on first use (``automr.load_model``) are
those its ``if TYPE_CHECKING:`` block shows the checker."""

import importlib
import inspect
import textwrap
import types
from pathlib import Path

import pytest

import automr
from automr._lazy import typed_exports

PACKAGE = Path(automr.__file__).parent

USER_CODE = '''
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import automr
from automr.memory.encoders import ElementEncoder, LayerEncoder
from automr.combiners import Concat  # a sub-package's lazy name: Any to a checker, no error


class Unscored:
    """A retriever without Retriever.scores."""

    def pick(self, count: int) -> list[int]:
        return list(range(count))


def wire(store: automr.MemoryStore) -> automr.MemoryRetrieval:
    return automr.MemoryRetrieval(store, Unscored(), automr.Concat())


def concat() -> automr.Combiner:
    return Concat()


def load(path: str) -> automr.PreparedDataset:
    return automr.PreparedDataset.load(path)


def tuned(modules: list[str]) -> automr.FinetuneConfig:
    return automr.FinetuneConfig(target_modules=modules)  # a tuple field takes a list


@dataclass(frozen=True)
class Genre:
    """An element encoder of one's own whose fields are read-only (a frozen dataclass or
    attrs class): the Protocol's settable members refused it, though it works."""

    base: LayerEncoder
    kind: str = "genre"
    reuses_texts: bool = True

    def text(self, items: Sequence[str], timestamps: Sequence[int], index: int) -> str:
        return items[index]

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind}


def genre(base: LayerEncoder) -> ElementEncoder:
    return Genre(base)


def from_folder() -> automr.LoadedModel:
    return automr.load_model(Path("model"))  # a folder's Path, as a str


def mistakes() -> None:
    automr.PreparedDataset.load(3)
    automr.FinetuneConfig(target_modules=[1])
    layer: str = automr.DEFAULT_LAYER
    automr.load_modell("smollm2-135m")
'''


def test_a_checker_and_the_runtime_see_the_same_exports():
    """What a checker reads (the re-exports of ``__init__.py``) is ``__all__``, and each name
    is at run time the object its import names."""
    exports = typed_exports(automr.__file__)
    assert len(exports) == len(automr.__all__) > 50 and sorted(exports) == automr.__all__
    for public, module in exports.items():
        assert getattr(automr, public) is getattr(importlib.import_module(module), public), public


def test_typed_exports_reads_only_re_exports(tmp_path):
    """``from m import a as a`` at the top or under ``if TYPE_CHECKING:``, nothing else."""
    init = tmp_path / "__init__.py"
    init.write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        from a import b
        from c import d as d
        if TYPE_CHECKING:
            from e import f as f, g as h
            import i
        if other:
            from j import k as k
        """))
    assert typed_exports(str(init)) == {"d": "c", "f": "e"}


def test_a_users_type_checker_reads_automrs_types(tmp_path):
    """mypy checks a user's code against automr's annotations: a component that does not
    match its Protocol, a wrong argument, a misspelt name; a config's tuple field takes any
    sequence of its values, as at run time (it read the field's ``tuple`` annotation and
    refused a list). Without ``py.typed`` it skipped
    automr ("missing library stubs or py.typed marker"); with a ``__getattr__`` in its view,
    every lazily imported name was ``object`` and ``automr.load_modell`` passed. The examples
    check clean, as a user's copy of one would (oracle_ranking's own retrieval was refused
    where a method took only ``MemoryRetrieval``, before ``automr.Retrieval``). Third-party
    packages are not followed (their types are Any here), which keeps the check to automr's
    own annotations."""
    api = pytest.importorskip("mypy.api")
    (tmp_path / "user.py").write_text(USER_CODE)
    (tmp_path / "mypy.ini").write_text(
        f"[mypy]\ncache_dir = {tmp_path / 'cache'}\nfollow_imports = skip\n"
        "[mypy-automr.*]\nfollow_imports = normal\n")
    examples = sorted((PACKAGE.parents[1] / "examples").glob("*.py"))
    assert len(examples) > 5
    out, err, status = api.run(["--config-file", str(tmp_path / "mypy.ini"),
                                str(tmp_path / "user.py"), *map(str, examples)])
    errors = [line.split(": error: ")[1] for line in out.splitlines() if ": error: " in line]
    assert errors == [
        'Argument 2 to "MemoryRetrieval" has incompatible type "Unscored"; expected '
        '"Retriever"  [arg-type]',
        'Argument 1 to "load" of "PreparedDataset" has incompatible type "int"; expected '
        '"Path | str"  [arg-type]',
        'List item 0 has incompatible type "int"; expected "str"  [list-item]',
        'Incompatible types in assignment (expression has type "int", variable has type '
        '"str")  [assignment]',
        'Module has no attribute "load_modell"  [attr-defined]',
    ], out + err
    assert status == 1
    assert all(line.startswith(str(tmp_path / "user.py")) for line in out.splitlines()
               if ": error: " in line)


BARE = (dict, list, tuple, set, frozenset)


def _bare_in(annotation: object) -> bool:
    """Whether an annotation is, or holds in a union, a container without its item types
    (``dict``): strict pyright reads ``dict[Unknown, Unknown]`` into a user's code."""
    if isinstance(annotation, str):
        return any(part.strip() in ("dict", "list", "tuple", "set", "frozenset")
                   for part in annotation.split("|"))
    if annotation in BARE:
        return True
    return isinstance(annotation, types.UnionType) and any(map(_bare_in, annotation.__args__))


def _annotations(name: str, obj: object):
    """``(where, annotation)`` of a public function's parameters and return, or of a public
    class's fields, methods and properties."""
    if inspect.isfunction(obj):
        for parameter, annotation in inspect.get_annotations(obj).items():
            yield f"{name}({parameter})", annotation
    elif inspect.isclass(obj):
        for field, annotation in inspect.get_annotations(obj).items():
            if not field.startswith("_"):
                yield f"{name}.{field}", annotation
        for member, value in vars(obj).items():
            if member.startswith("_"):
                continue
            function = value.fget if isinstance(value, property) else getattr(
                value, "__func__", value)
            if inspect.isfunction(function):
                yield from _annotations(f"{name}.{member}", function)


def test_public_annotations_name_their_containers_item_types():
    """``finetune(...) -> dict`` and the like left a strict pyright user project with
    'partially unknown' errors (mypy --strict says nothing of them)."""
    packages = [automr] + [importlib.import_module(f"automr.{path.parent.name}")
                           for path in sorted(PACKAGE.glob("*/__init__.py"))]
    bare = {where for package in packages for public in getattr(package, "__all__", ())
            for where, annotation in _annotations(public, getattr(package, public))
            if _bare_in(annotation)}
    assert not bare, sorted(bare)
