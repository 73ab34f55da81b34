"""Checks of the numbers at pgjax's boundaries: counts, sizes, tolerances and step sizes.

Every config and entry point checks its numbers here before anything compiles, so that a bad value raises one
`ValueError` that names the field (`label`: "PPOConfig.num_envs", "collect: horizon") and what it must be. NumPy
scalars count as numbers (a sweep's grid hands out np.int64 and np.float32), bools never do: `True` would
otherwise pass as the count 1. Values that may be traced (a KL radius or a discount that jit/vmap carry) are
checked by `check_known` where they are known on the host, and left to the compiled code where they are not.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A real number (Python or NumPy, ints included), not a bool; NaN and infinities count."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_finite_real(value: Any) -> bool:
    """A finite real number, not a bool."""
    return is_real(value) and math.isfinite(value)


def check_int(label: str, value: Any, minimum: int = 1, note: str = "") -> int:
    """`value` as a Python int (a NumPy int made plain, for static shapes and loop counts); ValueError "`label` must
    be a positive int`note`; got ..." unless it is an int >= `minimum` ("an int >= `minimum`" when `minimum` is not
    1). `note` explains the field, e.g. " (steps)"."""
    if not is_int(value) or value < minimum:
        need = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{label} must be {need}{note}; got {value!r}.")
    return int(value)


def check_positive(label: str, value: Any) -> None:
    """ValueError naming `label` unless `value` is a finite real number > 0."""
    if not is_finite_real(value) or value <= 0:
        raise ValueError(f"{label} must be a positive number; got {value!r}.")


def check_non_negative(label: str, value: Any) -> None:
    """ValueError naming `label` unless `value` is a finite real number >= 0."""
    if not is_finite_real(value) or value < 0:
        raise ValueError(f"{label} must be a non-negative number; got {value!r}.")


def concrete_scalar(value: Any) -> float | None:
    """`value` as a float when it is known on the host (a Python or NumPy real, or a concrete 0-d array of floats or
    ints), else None (a tracer inside jit/vmap, an array with several entries, a bool, anything else)."""
    if is_real(value):
        return float(value)
    shape = getattr(value, "shape", None)
    # Integer 0-d arrays too: jnp.asarray(2) as a discount passed every check unread.
    if shape == () and np.issubdtype(getattr(value, "dtype", np.dtype(object)), np.number):
        try:
            return float(value)
        except TypeError:  # a tracer: jax's ConcretizationTypeError is a TypeError
            return None
    return None


def check_known(label: str, value: Any, ok: Callable[[float], bool], need: str) -> None:
    """ValueError "`label` must be `need`; got ..." when `value` is known on the host (`concrete_scalar`) and is not
    finite or fails `ok`; a traced value passes unchecked."""
    known = concrete_scalar(value)
    if known is not None and not (math.isfinite(known) and ok(known)):
        raise ValueError(f"{label} must be {need}; got {value!r}.")


def check_known_discount(owner: str, discount: Any) -> None:
    """`check_known` of "`owner`: discount" in [0, 1] (1: undiscounted sums over finite steps). A traced discount
    is a config's or an MDP's, checked where those were built."""
    check_known(f"{owner}: discount", discount, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def check_discount_kept(label: str, given: Any, dtype: Any) -> None:
    """ValueError "`label` 0.99999999999 rounds to 1.0 in float32: ..." when a discount below 1 (`given`: a number
    or an array of them) rounds to 1.0 in `dtype`, the dtype it is computed in. Said as such because a later range
    check would report "got 1.0", a value never given, and a computation that took it would divide by 1 - gamma = 0.
    Host-side: `given` must be concrete. Non-floating values pass (an integer discount is 0 or 1: out of range)."""
    given = np.asarray(given)
    if not np.issubdtype(given.dtype, np.floating):
        return
    rounded = np.flatnonzero((given < 1) & (given.astype(dtype) >= 1))
    if rounded.size:
        # The rounded entries themselves, wherever they sit in a batch, as lists: NumPy prints 0.99999999999 as "1.".
        more = " ..." if rounded.size > 5 else ""
        shown = (given.item() if given.ndim == 0 else
                 f"{given.ravel()[rounded[:5]].tolist()} (at flat index {rounded[:5].tolist()}{more} of {given.size})")
        import jax  # only to word the fix: this module is NumPy-only otherwise

        # Under x64 already, the rounding dtype is the data's (float32 arrays): the fix is float64 data.
        fix = "float64 data" if jax.config.jax_enable_x64 else "float64 (jax.enable_x64)"
        raise ValueError(f"{label} {shown} rounds to 1.0 in {np.dtype(dtype)}: use a smaller one, or {fix}.")
