"""A registry of decompositions, so that any of them (a user's own too) can be chosen by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register", "decompose", "available_methods"]

_METHODS: dict[str, Callable[..., Any]] = {}


def register(name: str, fn: Callable[..., Any], *, overwrite: bool = False) -> Callable[..., Any]:
    """Register ``fn`` as the decomposition called ``name``.

    Parameters
    ----------
    name : str
        The name :func:`decompose` and the PyTorch adapters will accept.
    fn : callable
        ``fn(x, eps=..., **kwargs)`` returning an object with ``to_tensor()``,
        ``nbytes``, ``rank`` and ``explained_variance`` (every result type of
        tensorcomp has them). If ``fn`` also accepts ``init=``, the adapters
        warm-start it with the previous step's result for the same layer.
    overwrite : bool, default False
        Allow replacing an existing method.

    Returns
    -------
    callable
        ``fn``, unchanged.

    Raises
    ------
    ValueError
        If ``name`` is taken and ``overwrite`` is false, or is empty.
    TypeError
        If ``name`` is not a string or ``fn`` is not callable.

    Examples
    --------
    >>> import tensorcomp
    >>> def rank_one(x, eps=0.9, **kwargs):
    ...     return tensorcomp.hosvd(x, rank=1)
    >>> _ = tensorcomp.register("rank_one", rank_one)
    >>> "rank_one" in tensorcomp.available_methods()
    True
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a non-empty string; got {name!r} of type {type(name).__name__}")
    if not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {fn!r}")
    if name in _METHODS and not overwrite and _METHODS[name] is not fn:
        raise ValueError(f"a method named {name!r} is already registered; pass overwrite=True to replace it")
    _METHODS[name] = fn
    return fn


def get_method(method: str) -> Callable[..., Any]:
    """The function registered as ``method``; ValueError listing the choices otherwise."""
    try:
        return _METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown method {method!r}; available methods: {', '.join(available_methods())}"
        ) from None


def decompose(x: Any, method: str, **kwargs: Any) -> Any:
    """Decompose ``x`` with the method registered as ``method``.

    Parameters
    ----------
    x : tensor
        Any TensorLy backend's array.
    method : str
        One of :func:`available_methods`.
    **kwargs
        Passed to the method (``eps``, ``rank``, ...).

    Returns
    -------
    object
        The method's result (e.g. :class:`~tensorcomp.TuckerResult` for ``"hosvd"``).

    Raises
    ------
    ValueError
        If ``method`` is not registered (the message lists the available ones).

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> tensorcomp.decompose(np.eye(4), "svd", eps=1.0).rank
    4
    """
    return get_method(method)(x, **kwargs)


def available_methods() -> tuple[str, ...]:
    """Names of the registered methods, sorted.

    Examples
    --------
    >>> import tensorcomp
    >>> {"svd", "hosvd", "tucker", "cp", "tt"} <= set(tensorcomp.available_methods())
    True
    """
    return tuple(sorted(_METHODS))
