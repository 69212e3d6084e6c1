"""attrs validators shared by the configs: a field typed ``int`` takes a whole number and one
typed ``float`` a real number, never a bool.

A bool is an int to Python (and to beartype), so without them ``SASRecConfig(max_epochs=True)``
trains for one epoch; a float or a string for an int (``epochs=2.5``) would fail only where it
is used, mid-run. Put one first in a field's validators, before its range::

    epochs: int = attrs.field(default=1, validator=[is_int, attrs.validators.gt(0)])
    layer: int | None = attrs.field(default=None, validator=attrs.validators.optional(is_int))

numpy's integers (``np.int64`` from a user's arrays) are whole numbers and pass.
"""

import numbers

import attrs

from automr.errors import AutomrError


def _refuse(instance: object, attribute: "attrs.Attribute", value: object, kind: str) -> None:
    raise AutomrError(f"{type(instance).__name__}: {attribute.name} must be {kind}, not "
                      f"{value!r}")


def is_int(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """Refuse ``value`` unless it is a whole number (an int or a numpy integer), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _refuse(instance, attribute, value, "an int")


def is_real(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """Refuse ``value`` unless it is a real number (a float or an int), not a bool; its
    range (NaN, infinities) is for the field's own validators to check."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _refuse(instance, attribute, value, "a number")
