"""Type checks shared by every module: the configs' attrs fields (a field typed ``int``
takes a whole number and one typed ``float`` a real number, never a bool) and the one
:data:`beartype` all modules apply.

A bool is an int to Python (and to beartype), so without them ``SASRecConfig(max_epochs=True)``
trains for one epoch; a float or a string for an int (``epochs=2.5``) would fail only where it
is used, mid-run. A field is declared with its range::

    epochs: int = int_field(attrs.validators.gt(0), default=1)
    layer: int | None = int_field(default=None, optional=True)
    weight_decay: float = real_field(attrs.validators.ge(0.0), default=0.0)

An int field converts a whole number with :data:`to_int` first, so numpy's integers
(``np.int64`` from a user's arrays) are taken and stored (and saved) as Python ints; a float
field converts with :data:`to_float`, so ``weight_decay=0`` is stored as ``0.0``.

:data:`beartype` is beartype as every module of automr applies it: an ``int`` passes where a
``float`` is hinted, as Python's typing rules (PEP 484's numeric tower) allow, so
``labels(..., temperature=1)`` runs as ``temperature=1.0`` does.
"""

import numbers
from typing import Any

import attrs
from beartype import BeartypeConf
from beartype import beartype as _beartype

from automr.errors import AutomrError

beartype = _beartype(conf=BeartypeConf(is_pep484_tower=True))


@attrs.frozen
class _Number:
    """The attrs checks of a field typed ``kind``: what it takes (an instance of ``takes``,
    never a bool), how it says so (``named``), and the conversion to ``kind``."""

    kind: type
    takes: type
    named: str

    def check(self, instance: object, attribute: "attrs.Attribute", value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, self.takes):
            raise AutomrError(f"{type(instance).__name__}: {attribute.name} must be "
                              f"{self.named}, not {value!r}")

    def convert(self, value: object) -> object:
        if isinstance(value, self.takes) and not isinstance(value, bool):
            return self.kind(value)
        return value

    def field(self, *validators: Any, optional: bool = False, **options: Any) -> Any:
        validator = [self.check, *validators]
        return attrs.field(
            converter=attrs.converters.optional(self.convert) if optional else self.convert,
            validator=attrs.validators.optional(validator) if optional else validator,
            **options)


_INT = _Number(int, numbers.Integral, "an int")
_REAL = _Number(float, numbers.Real, "a number")

is_int = _INT.check
"""attrs validator: refuse a value unless it is a whole number (an int or a numpy integer),
not a bool."""
to_int = _INT.convert
"""attrs converter of an ``int`` field: a whole number (a numpy integer) becomes a Python int;
a bool or anything else is left for :data:`is_int` to refuse."""
int_field = _INT.field
"""An attrs field holding an int: ``int_field(*validators, optional=False, **options)``,
converted by :data:`to_int`, refused by :data:`is_int` unless a whole number, then checked by
``validators`` (its range); ``optional`` also takes None; ``options`` go to
:func:`attrs.field` (``default``)."""
is_real = _REAL.check
"""attrs validator: refuse a value unless it is a real number (a float or an int), not a bool;
its range (NaN, infinities) is for the field's own validators to check."""
to_float = _REAL.convert
"""attrs converter of a ``float`` field: a number (an int, a numpy float) becomes a Python
float; a bool or anything else is left for :data:`is_real` to refuse."""
real_field = _REAL.field
"""An attrs field holding a float, as :data:`int_field` one holding an int."""
