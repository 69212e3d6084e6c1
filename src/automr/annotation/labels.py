"""Turning per-element log-likelihoods into retriever labels S' (eq. 5 and a log variant).

- ``paper``: delta_m = P(y | z_t, z_m) - P(y | z_t) with P the product of the target tokens'
  probabilities, S' = softmax(delta / temperature). As the paper writes it. The products are
  tiny (5-15 tokens), so with temperature 1 S' is nearly uniform; a small temperature
  (e.g. the deltas' own scale) sharpens it.
- ``log``: delta_m = log P(y | z_t, z_m) - log P(y | z_t), S' = softmax(delta / temperature):
  the same ordering of elements, on a scale that does not vanish with the target's length.

Validation decides which to use; every run records the form and temperature.
"""

import math

import attrs
import torch
from jaxtyping import Float, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError

LABEL_FORMS = ("paper", "log")
LABEL_TEMPERATURE = (attrs.validators.gt(0.0), attrs.validators.lt(math.inf))
"""The attrs validators of a setting that :func:`labels` will take as its temperature."""


@jaxtyped(typechecker=beartype)
def deltas(base: float, with_element: Float[Tensor, " mem"], form: str = "paper"
           ) -> Float[Tensor, " mem"]:
    """How much each element changes the target's likelihood (``form``: paper or log), in
    float64: the paper's deltas of a long title are below float32's range (log P(y) of -120
    gave 0 for every element there)."""
    return _deltas(base, with_element, form)


@jaxtyped(typechecker=beartype)
def labels(base: float, with_element: Float[Tensor, " mem"], form: str = "paper",
           temperature: float = 1.0) -> Float[Tensor, " mem"]:
    """S' = softmax(delta / temperature) over the sample's memory, in float64 throughout and
    returned so: the paper's deltas of a long title are below float32's range, and a sharp
    temperature puts labels there (a label 0 in float32 had no regret to measure)."""
    if not 0 < temperature < math.inf:  # NaN too: it gave NaN labels, inf uniform ones
        raise AutomrError(f"temperature must be positive and finite, got {temperature}")
    return torch.softmax(_deltas(base, with_element, form) / temperature, 0)


def _deltas(base: float, with_element: Tensor, form: str) -> Tensor:
    values = with_element.double()
    if form == "paper":
        return values.exp() - torch.tensor(base, dtype=torch.float64).exp()
    if form == "log":
        return values - base
    raise AutomrError(f"unknown label form {form!r}; choose {' or '.join(LABEL_FORMS)}")
