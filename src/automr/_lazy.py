"""Package attributes imported on first use (PEP 562), so ``import automr`` and
``automr --help`` stay light while ``automr.load_model`` etc. still work.

automr is typed (PEP 561: ``py.typed``). The top-level package lists its exports once, as
the imports by which a typed library re-exports a name (``from automr.data import Catalog as
Catalog``) in an ``if TYPE_CHECKING:`` block: type checkers and editors read them as they
stand; at run time the block is never executed, and :func:`typed_exports` reads the file
instead, so that each name is imported from its module when first read::

    if TYPE_CHECKING:
        from automr.data import Catalog as Catalog

    _EXPORTS = typed_exports(__file__)
    __all__ = sorted(_EXPORTS)
    if not TYPE_CHECKING:
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

(A ``__getattr__`` seen by a checker would type any name, ``automr.load_modell`` too.) The
sub-packages that import on first use give :func:`lazy_exports` their ``{name: module}``
mapping itself; a checker types those names as ``Any`` (imported from the sub-package; the
same names are fully typed as ``automr.NAME`` and from their modules).
"""

import ast
import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


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
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the
    module that defines it (imported when the name is first read). ``dir(package)`` lists
    those names beside what the package already holds (names it imports at once too)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
