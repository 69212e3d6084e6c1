"""Package attributes imported on first use (PEP 562), so ``import automr`` and
``automr --help`` stay light while ``automr.load_model`` etc. still work.

A package lists its exports once, as imports in the form by which a typed library re-exports a
name (``from automr.data import Catalog as Catalog``), most of them in an ``if TYPE_CHECKING:``
block of its ``__init__.py``. Type checkers and editors read those imports as they stand (the
package is typed, PEP 561: ``py.typed``); at run time the block is never executed, and
:func:`typed_exports` reads the file instead, so each of its names is imported from its module
when first read::

    if TYPE_CHECKING:
        from automr.data import Catalog as Catalog

    _EXPORTS = typed_exports(__file__)
    __all__ = sorted(_EXPORTS)
    if not TYPE_CHECKING:
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

(A ``__getattr__`` seen by a checker would type any name, ``automr.load_modell`` too.)

A name re-exported by a plain import at the top (imported at once) is exported too: one whose
submodule shares its name (``automr.annotation.labels``) must be, or importing the submodule
would put the module in its place.
"""

import ast
import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def typed_exports(init_file: str) -> dict[str, str]:
    """``{name: module}`` of every name ``init_file`` (a package's ``__init__.py``) re-exports,
    ``from module import name as name``, at its top or in its ``if TYPE_CHECKING:`` block."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    statements = [statement for node in tree.body for statement in (
        node.body if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING" else [node])]
    return {alias.name: str(statement.module) for statement in statements
            if isinstance(statement, ast.ImportFrom)
            for alias in statement.names if alias.asname == alias.name}


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the
    module that defines it (imported when the name is first read). ``dir(package)`` lists
    those names beside what the package already holds (names it imports at once too)."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
