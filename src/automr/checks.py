"""Type checks shared by every module: the configs' attrs fields (a field typed ``int``
takes a whole number and one typed ``float`` a real number, never a bool) and the one
:data:`beartype` all modules apply.

A bool is an int to Python (and to beartype), so without them ``SASRecConfig(max_epochs=True)``
trains for one epoch; a float or a string for an int (``epochs=2.5``) would fail only where it
is used, mid-run. A field is declared with its range::

    epochs: int = int_field(attrs.validators.gt(0), default=1)
    layer: int | None = int_field(default=None, optional=True)
    weight_decay: float = real_field(attrs.validators.ge(0.0), default=0.0)

An int field converts a whole number with :func:`to_int` first, so numpy's integers
(``np.int64`` from a user's arrays) are taken and stored (and saved) as Python ints; a float
field converts with :func:`to_float`, so ``weight_decay=0`` is stored as ``0.0``. A field
holding a tuple takes any sequence (a list, as JSON and most code give one) and stores a tuple
of Python values (converted by :func:`to_ints` or :func:`to_strs`); it is declared with
:func:`attrs.field` itself, where a type checker (mypy, pyright) reads what ``__init__`` takes
from the converter's parameter, so ``EvalConfig(ks=[1, 5, 10])`` checks clean (a checker does
not see through ``int_field``: it reads the field's ``int``)::

    ks: tuple[int, ...] = attrs.field(converter=to_ints, validator=is_int_tuple,
                                      default=(1, 5, 10))

A field without a default is declared with :func:`attrs.field` too: a checker reads a call of
``int_field`` as the field's default, so it would not flag the value a caller left out::

    layer: int = attrs.field(converter=to_int, validator=is_int)

:data:`beartype` is beartype as every module of automr applies it: an ``int`` passes where a
``float`` is hinted, as Python's typing rules (PEP 484's numeric tower) allow, so
``labels(..., temperature=1)`` runs as ``temperature=1.0`` does.
"""

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, SupportsFloat, SupportsIndex

import attrs
from beartype import BeartypeConf, beartype as _beartype

from automr.errors import AutomrError, WrongTypeError

# a parameter of the wrong type is the caller's mistake: automr's error, which the CLI prints as
# one line (a return value of the wrong type stays beartype's own violation)
beartype = _beartype(conf=BeartypeConf(is_pep484_tower=True,
                                       violation_param_type=WrongTypeError))


@attrs.frozen
class _Kind:
    """The attrs checks of a field typed ``kind`` (int, float, str) or a tuple of them: what
    it takes (an instance of ``takes``, never a bool), how it says so (``named``, ``plural``),
    and the conversion to ``kind``."""

    kind: type
    takes: type
    named: str
    plural: str

    def check(self, instance: object, attribute: "attrs.Attribute", value: object) -> None:
        if not self._takes(value):
            raise WrongTypeError(f"{type(instance).__name__}: {attribute.name} must be "
                                 f"{self.named}, not {value!r}")

    def convert(self, value: object) -> object:
        return self.kind(value) if self._takes(value) else value

    def field(self, *validators: Any, optional: bool = False, **options: Any) -> Any:
        validator = [self.check, *validators]
        return attrs.field(
            converter=attrs.converters.optional(self.convert) if optional else self.convert,
            validator=attrs.validators.optional(validator) if optional else validator,
            **options)

    def check_tuple(self, instance: object, attribute: "attrs.Attribute",
                    values: object) -> None:
        where = f"{type(instance).__name__}: {attribute.name} must be a sequence of {self.plural}"
        if not isinstance(values, tuple):
            raise WrongTypeError(f"{where}, not {values!r}")
        if wrong := [v for v in values if not self._takes(v)]:
            raise WrongTypeError(f"{where}; {wrong[0]!r} is not {self.named}")

    def convert_tuple(self, values: object) -> object:
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            return values  # a string is one name, not a sequence of them
        return tuple(self.convert(v) for v in values)

    def _takes(self, value: object) -> bool:
        return isinstance(value, self.takes) and not isinstance(value, bool)


_INT = _Kind(int, numbers.Integral, "an int", "ints")
_REAL = _Kind(float, numbers.Real, "a number", "numbers")
_STR = _Kind(str, str, "a string", "strings")

is_int = _INT.check
"""attrs validator: refuse a value unless it is a whole number (an int or a numpy integer),
not a bool."""
int_field = _INT.field
"""An attrs field holding an int: ``int_field(*validators, optional=False, **options)``,
converted by :func:`to_int`, refused by :data:`is_int` unless a whole number, then checked by
``validators`` (its range); ``optional`` also takes None; ``options`` go to
:func:`attrs.field` (``default``)."""
is_real = _REAL.check
"""attrs validator: refuse a value unless it is a real number (a float or an int), not a bool;
its range (NaN, infinities) is for the field's own validators to check."""
real_field = _REAL.field
"""An attrs field holding a float, as :data:`int_field` one holding an int."""
is_int_tuple = _INT.check_tuple
"""attrs validator of a tuple field of ints: refuse anything but a tuple of whole numbers (a
bool among them included); the field's own validators then check its length or values."""
is_str_tuple = _STR.check_tuple
"""attrs validator of a tuple field of strings, as :data:`is_int_tuple` of ints."""


def require_bool(value: object, name: str) -> None:
    """Refuse a flag ``name`` that is not a bool (``"false"`` or ``0`` would be taken by its
    truth value)."""
    if not isinstance(value, bool):
        raise WrongTypeError(f"{name} must be a bool, not {value!r}")


def require_int(value: object, name: str, at_least: int | None = None) -> int:
    """``value`` as a Python int once it is a whole number (a numpy integer too, not a bool)
    of at least ``at_least``, else refused naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise WrongTypeError(f"{name} must be an int, got {value!r}")
    if at_least is not None and value < at_least:
        raise AutomrError(f"{name} must be an int >= {at_least}, got {value!r}")
    return int(value)


def is_bool(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """attrs validator of a flag: :func:`require_bool`."""
    require_bool(value, f"{type(instance).__name__}: {attribute.name}")

if TYPE_CHECKING:  # what a checker reads: the values a field takes
    def to_int(value: SupportsIndex, /) -> int:
        """attrs converter of an ``int`` field: a whole number (a numpy integer) becomes a
        Python int."""
        ...

    def to_float(value: SupportsFloat, /) -> float:
        """attrs converter of a ``float`` field: a number (an int, a numpy float) becomes a
        Python float."""
        ...

    def to_ints(values: Iterable[SupportsIndex], /) -> tuple[int, ...]:
        """attrs converter of a tuple field of ints: any sequence of whole numbers (a list, a
        numpy array) becomes a tuple of Python ints (each by :func:`to_int`)."""
        ...

    def to_strs(values: Iterable[str], /) -> tuple[str, ...]:
        """attrs converter of a tuple field of strings, as :func:`to_ints` of ints."""
        ...
else:  # at run time anything passes, for the field's validator to name what it refuses (a
    # bool, a float for an int, a bare string for a sequence, a wrong element)
    to_int, to_float = _INT.convert, _REAL.convert
    to_ints, to_strs = _INT.convert_tuple, _STR.convert_tuple


def subset_of(allowed: Sequence[str]) -> Callable[[object, "attrs.Attribute", tuple], None]:
    """attrs validator of a tuple of names: a non-empty subset of ``allowed``, each named
    once (``AblationConfig.combiners``, ``EvalConfig.measures``)."""
    def check(instance: object, attribute: "attrs.Attribute", value: tuple) -> None:
        unknown = [v for v in value if v not in allowed]
        if not value or unknown or len(set(value)) < len(value):
            raise AutomrError(f"{attribute.name} must be a non-empty subset of "
                              f"{', '.join(allowed)}, each named once; got "
                              f"{', '.join(map(str, value))}")
    return check
