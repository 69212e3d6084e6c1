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
field converts with :func:`to_float`, so ``weight_decay=0`` is stored as ``0.0``.

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


def _refuse(instance: object, attribute: "attrs.Attribute", value: object, kind: str) -> None:
    raise AutomrError(f"{type(instance).__name__}: {attribute.name} must be {kind}, not "
                      f"{value!r}")


def is_int(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """Refuse ``value`` unless it is a whole number (an int or a numpy integer), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _refuse(instance, attribute, value, "an int")


def to_int(value: object) -> object:
    """attrs converter of an ``int`` field: a whole number (a numpy integer) becomes a Python
    int; a bool or anything else is left for :func:`is_int` to refuse."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def int_field(*validators: Any, optional: bool = False, **options: Any) -> Any:
    """An attrs field holding an int: converted by :func:`to_int`, refused by :func:`is_int`
    unless a whole number, then checked by ``validators`` (its range); ``optional`` also
    takes None; ``options`` go to :func:`attrs.field` (``default``)."""
    validator = [is_int, *validators]
    return attrs.field(converter=to_int, **options,
                       validator=attrs.validators.optional(validator) if optional else validator)


def is_real(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """Refuse ``value`` unless it is a real number (a float or an int), not a bool; its
    range (NaN, infinities) is for the field's own validators to check."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _refuse(instance, attribute, value, "a number")


def to_float(value: object) -> object:
    """attrs converter of a ``float`` field: a number (an int, a numpy float) becomes a Python
    float; a bool or anything else is left for :func:`is_real` to refuse."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def real_field(*validators: Any, **options: Any) -> Any:
    """An attrs field holding a float: converted by :func:`to_float`, refused by
    :func:`is_real` unless a number, then checked by ``validators`` (its range);
    ``options`` go to :func:`attrs.field` (``default``)."""
    return attrs.field(converter=to_float, validator=[is_real, *validators], **options)
