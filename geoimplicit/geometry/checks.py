"""Shape and dtype checks at the boundary of geometry functions (kornia's ``KORNIA_CHECK_SHAPE`` is the model).

A shape pattern is a list of dimensions: an ``int`` must match exactly, a name (``"N"``, ``"H"``) matches any
size but the same name must have the same size everywhere in one call, and ``"*"`` (first entry only) matches
any number of leading (batch) dimensions, none included.
"""

from __future__ import annotations

from typing import Sequence

from geoimplicit.errors import ShapeError

__all__ = ["check_shape", "check_dtype", "check_same_batch"]


def _fmt(pattern) -> str:
    return "(" + ", ".join(str(p) for p in pattern) + ")"


def check_shape(x, pattern: Sequence[str | int], name: str = "x", dims: dict | None = None) -> dict:
    """Check ``x.shape`` against ``pattern``; return the sizes bound to named dimensions (``"*"``: the batch shape).

    ``dims`` carries sizes bound by earlier checks of the same call, so that ``N`` of two inputs must agree.

    >>> import numpy as np
    >>> check_shape(np.zeros((2, 5, 3)), ["*", "N", 3], "points")
    {'*': (2,), 'N': 5}
    >>> check_shape(np.zeros((5, 2)), ["N", 3], "points")
    Traceback (most recent call last):
    ...
    geoimplicit.errors.ShapeError: points: expected shape (N, 3), got (5, 2)
    """
    shape = tuple(getattr(x, "shape", ()))
    pattern = list(pattern)
    bound = dict(dims or {})
    batch = pattern and pattern[0] == "*"
    fixed = pattern[1:] if batch else pattern
    if "*" in fixed:
        raise ValueError("check_shape: '*' may only be the first entry")
    ok = len(shape) >= len(fixed) if batch else len(shape) == len(fixed)
    tail = shape[len(shape) - len(fixed):] if ok else ()
    if ok:
        for want, got in zip(fixed, tail):
            if isinstance(want, int):
                ok = want == got
            elif want in bound and bound[want] != got:
                ok = False
            else:
                bound[want] = got
            if not ok:
                break
    if not ok:
        known = {k: v for k, v in (dims or {}).items() if k != "*"}
        where = f" with {', '.join(f'{k}={v}' for k, v in known.items())}" if known else ""
        raise ShapeError(f"{name}: expected shape {_fmt(pattern)}{where}, got {shape}")
    if batch:
        bound = {"*": shape[: len(shape) - len(fixed)], **{k: v for k, v in bound.items() if k != "*"}}
    return bound


def check_dtype(x, allowed, name: str = "x") -> None:
    """Check that ``x.dtype`` is one of ``allowed`` (a dtype or a tuple of dtypes, numpy or torch).

    >>> import numpy as np
    >>> check_dtype(np.zeros(3, np.float32), np.float64, "K")
    Traceback (most recent call last):
    ...
    geoimplicit.errors.ShapeError: K: expected dtype float64, got float32
    """
    allowed = tuple(allowed) if isinstance(allowed, (tuple, list)) else (allowed,)
    dtype = getattr(x, "dtype", None)
    if not any(dtype == a for a in allowed):
        names = " or ".join(_dtype_name(a) for a in allowed)
        got = _dtype_name(dtype)
        raise ShapeError(f"{name}: expected dtype {names}, got {got}")


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "__name__", None) or str(dtype)
    return name.replace("torch.", "")


def check_same_batch(a_batch: tuple, b_batch: tuple, names: str) -> tuple:
    """The broadcast of two batch shapes, or a :class:`ShapeError` naming both."""
    out = []
    for i in range(1, max(len(a_batch), len(b_batch)) + 1):
        a = a_batch[-i] if i <= len(a_batch) else 1
        b = b_batch[-i] if i <= len(b_batch) else 1
        if a != b and 1 not in (a, b):
            raise ShapeError(f"{names}: batch shapes {a_batch} and {b_batch} do not broadcast")
        out.append(max(a, b))
    return tuple(reversed(out))
