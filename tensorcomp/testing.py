"""Checks that a method follows the result protocol and its declared capabilities.

:func:`check_method` runs a method on a few small inputs and raises an
:class:`AssertionError` naming the first violation, so a test suite can run
it over every registered method (scikit-learn's ``check_estimator`` plays
the same part for estimators). This module never imports PyTorch: a method
that takes torch tensors is checked through ``make_input``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._backend import backend_for
from .registry import _METHODS, MethodInfo, method_info

__all__ = ["check_method"]

#: The two thresholds every method that uses ``eps`` is run at (both reachable by CP on the inputs below).
_EPS = (0.3, 0.8)


def _default_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.standard_normal((6, 5, 4)),
        np.maximum(rng.standard_normal((2, 3, 6, 5)), 0.0),  # a small (B, C, H, W) activation after a ReLU
        rng.standard_normal((7, 5)),
        rng.standard_normal((6, 5, 4)).astype(np.float32),
        np.zeros((4, 3, 5)),
    ]


def _resolve(method: Any) -> MethodInfo:
    if isinstance(method, MethodInfo):
        return method
    if isinstance(method, str):
        return method_info(method)
    if callable(method):
        for name in sorted(_METHODS):
            if _METHODS[name].fn is method:
                return _METHODS[name]
        return MethodInfo(getattr(method, "__name__", None) or type(method).__name__, method)
    raise TypeError(f"method must be a registered name, a MethodInfo or a callable; got {method!r}")


def _to_numpy(array: Any) -> np.ndarray:
    """``array`` as a NumPy array (itself when it already is one), whatever its backend."""
    if isinstance(array, np.ndarray):
        return array
    with backend_for(array):
        return np.asarray(tl.to_numpy(array))


def _on_host(array: Any) -> bool:
    """Whether ``array`` is a NumPy array or a CPU tensor, whose NumPy view shares its memory."""
    if isinstance(array, np.ndarray):
        return True
    device = getattr(array, "device", None)
    return type(array).__module__.split(".")[0] == "torch" and getattr(device, "type", None) == "cpu"


def _backend_of(array: Any) -> str:
    return type(array).__module__.split(".")[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    return f"{value!r} of type {type(value).__module__}.{type(value).__qualname__}"


class _Check:
    """The checks of one method on one input; every failure names the method, the call and the input."""

    def __init__(self, info: MethodInfo, x: Any, reference: np.ndarray) -> None:
        self.info = info
        self.x = x
        self.reference = reference
        self.where = f"on a {reference.dtype} input of shape {reference.shape}"
        self.tol = 1e-4 if reference.dtype == np.float32 else 1e-6

    def fail(self, call: str, message: str) -> AssertionError:
        return AssertionError(f"method {self.info.name!r}: {call} {self.where}: {message}")

    def run(self, eps: float, **kwargs: Any) -> Any:
        call = "fn(x, " + ", ".join([f"eps={eps}", *(f"{k}=<previous result>" for k in kwargs)]) + ")"
        try:
            result = self.info.fn(self.x, eps=eps, **kwargs)
        except Exception as error:
            raise self.fail(call, f"raised {type(error).__name__}: {error}") from error
        if not np.array_equal(_to_numpy(self.x), self.reference, equal_nan=True):
            raise self.fail(call, "modified its input in place; a method must leave x as it is")
        self.protocol(call, result)
        return result

    def protocol(self, call: str, result: Any) -> None:
        info = self.info
        for member in ("to_tensor", "nbytes", "rank", "explained_variance"):
            if not hasattr(result, member):
                raise self.fail(call, f"the result ({type(result).__qualname__}) has no {member!r}")
        nbytes = result.nbytes
        if not _is_int(nbytes) or nbytes < 0:
            raise self.fail(call, f"nbytes must be a non-negative int (bytes stored); got {_describe(nbytes)}")
        rank = result.rank
        if not (
            rank is None
            or (_is_int(rank) and rank >= 0)
            or (isinstance(rank, tuple) and rank and all(_is_int(r) and r >= 0 for r in rank))
        ):
            raise self.fail(call, f"rank must be None, an int or a non-empty tuple of ints; got {_describe(rank)}")
        ev = result.explained_variance
        if not isinstance(ev, float) or not math.isfinite(ev) or not 0.0 <= ev <= 1.0:
            raise self.fail(call, f"explained_variance must be a float in [0, 1]; got {_describe(ev)}")
        if not callable(result.to_tensor):
            raise self.fail(call, "to_tensor must be a method")
        try:
            rebuilt = result.to_tensor()
        except Exception as error:
            raise self.fail(call, f"to_tensor() raised {type(error).__name__}: {error}") from error
        if _backend_of(rebuilt) != _backend_of(self.x):
            raise self.fail(
                call, f"to_tensor() must return an array of x's backend ({_backend_of(self.x)}); got {_describe(rebuilt)}"
            )
        if tuple(getattr(rebuilt, "shape", ())) != self.reference.shape:
            raise self.fail(call, f"to_tensor() has shape {tuple(getattr(rebuilt, 'shape', ()))}, not x's {self.reference.shape}")
        dense = _to_numpy(rebuilt)
        wide = self.reference.astype(np.float64)
        total = float(np.square(wide).sum())
        residual = float(np.square(dense.astype(np.float64) - wide).sum())
        achieved = 1.0 if total == 0.0 else min(1.0, max(0.0, 1.0 - residual / total))
        if abs(ev - achieved) > self.tol:
            raise self.fail(
                call,
                f"explained_variance is {ev:.6g} but to_tensor() achieves 1 - ||x - x_hat||^2 / ||x||^2 = {achieved:.6g}",
            )
        if info.exact and (ev != 1.0 or not np.array_equal(dense, self.reference)):
            raise self.fail(call, "declared exact=True, but to_tensor() is not x exactly (or explained_variance is not 1.0)")
        if info.stores_input and _on_host(self.x) and not np.shares_memory(dense, _to_numpy(self.x)):
            raise self.fail(call, "declared stores_input=True, but to_tensor() does not share x's memory")


def check_method(
    method: str | MethodInfo | Callable[..., Any],
    *,
    make_input: Callable[[np.ndarray], Any] | None = None,
    inputs: Sequence[np.ndarray] | None = None,
) -> None:
    """Check that a method's results follow the protocol and its capabilities hold.

    The method is called as ``fn(x, eps=...)`` on a few small inputs (a
    random 3-way tensor, a 4-D activation after a ReLU, a matrix, a float32
    tensor and an all-zero tensor, or ``inputs``), at two values of ``eps``,
    and each result is checked:

    * ``nbytes`` is a non-negative ``int``;
    * ``rank`` is ``None``, an ``int`` or a non-empty tuple of ``int``;
    * ``explained_variance`` is a ``float`` in ``[0, 1]`` and equals what
      ``to_tensor()`` achieves, ``1 - ||x - x_hat||^2 / ||x||^2`` clipped to
      ``[0, 1]`` (1.0 for an all-zero input), to ``1e-6`` (``1e-4`` for a
      float32 input);
    * ``to_tensor()`` returns an array of ``x``'s backend and shape;
    * ``x`` itself is left unchanged.

    The declared capabilities are checked too: with ``uses_eps``, a higher
    ``eps`` never explains less, and ``eps`` changes the result on at least
    one input; with ``warm_start``, ``fn(x, eps=..., init=previous)``
    follows the protocol as well; with ``exact``, ``to_tensor()`` is ``x``
    exactly; with ``stores_input``, it shares ``x``'s memory (checked for
    NumPy arrays and CPU tensors).

    Parameters
    ----------
    method : str or MethodInfo or callable
        A registered name (checked against its registered capabilities), a
        record (its capabilities are checked, registered or not), or a
        function (checked against its record if it is registered, else
        against the default capabilities of :func:`tensorcomp.register`).
    make_input : callable, optional
        Turns each NumPy input into what the method takes, e.g.
        ``torch.from_numpy`` for a method that needs torch tensors, or
        ``lambda a: torch.from_numpy(a).cuda()``. By default the method
        gets the NumPy arrays.
    inputs : sequence of ndarray, optional
        Floating-point NumPy arrays to use instead of the default ones (for
        a method that takes only some shapes, say).

    Returns
    -------
    None

    Raises
    ------
    AssertionError
        At the first violation, with a message naming the method, the call,
        the input and what is wrong; an exception raised by the method is
        reported the same way (and chained).
    ValueError
        If ``method`` is a name that is not registered, or ``inputs`` is empty.
    TypeError
        If ``method`` is neither a name, a record nor a callable, or an input
        is not a floating-point NumPy array.

    Examples
    --------
    >>> import tensorcomp
    >>> from tensorcomp.testing import check_method
    >>> check_method("hosvd")
    >>> def noisy(x, eps=0.9, **kwargs):
    ...     res = tensorcomp.hosvd(x, eps)
    ...     res.explained_variance = 1.0  # claims more than it keeps
    ...     return res
    >>> check_method(noisy)
    Traceback (most recent call last):
    ...
    AssertionError: method 'noisy': fn(x, eps=0.3) on a float64 input of shape (6, 5, 4): explained_variance is 1 but ...
    """
    info = _resolve(method)
    arrays = _default_inputs() if inputs is None else list(inputs)
    if not arrays:
        raise ValueError("inputs must hold at least one array")
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise TypeError(f"inputs must be floating-point numpy arrays; got {_describe(a)}")
    convert = make_input if make_input is not None else (lambda a: a)
    eps_changes = False
    for array in arrays:
        reference = array.copy()
        check = _Check(info, convert(array.copy()), reference)
        evs = []
        results = []
        for eps in _EPS:
            results.append(check.run(eps))
            evs.append(results[-1].explained_variance)
        if info.uses_eps:
            if evs[1] < evs[0] - check.tol:
                raise check.fail(
                    f"fn(x, eps={_EPS[1]})",
                    f"declared uses_eps=True, but explains {evs[1]:.6g} < {evs[0]:.6g} at eps={_EPS[0]}",
                )
            eps_changes = eps_changes or evs[0] != evs[1] or results[0].nbytes != results[1].nbytes
        if info.warm_start:
            check.run(_EPS[1], init=results[1])
    if info.uses_eps and not eps_changes:
        raise AssertionError(
            f"method {info.name!r}: declared uses_eps=True, but eps={_EPS[0]} and eps={_EPS[1]} give the same "
            "explained variance and nbytes on every input; register it with uses_eps=False if eps does not matter"
        )
