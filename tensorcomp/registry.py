"""A catalogue of decompositions: each method by name, with what it can do.

Every method (a user's own too) is registered under a name with a few
declared capabilities, kept in a frozen :class:`MethodInfo` record. Code that
needs to know something about a method (whether it uses ``eps``, whether it
can be warm-started, how a linear layer's input is presented to it, whether
it stores its input exactly) reads the record instead of testing the name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["MethodInfo", "register", "method_info", "decompose", "available_methods"]

LINEAR_VIEWS = ("tensor", "tokens")
"""The values of :attr:`MethodInfo.linear_view`."""


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """A registered method and its declared capabilities.

    Returned by :func:`method_info` and made by :func:`register`; make one
    directly to check an unregistered function with given capabilities
    (:func:`tensorcomp.testing.check_method`). Every field is checked on
    construction. Records compare equal when the function and every
    capability are the same.

    Attributes
    ----------
    name : str
        The name the method is registered under.
    fn : callable
        ``fn(x, eps=..., **kwargs)``, returning a result that follows the
        protocol of :doc:`/guide/custom_methods`.
    uses_eps : bool
        Whether ``eps`` decides what is kept. ``False`` for methods whose
        size is fixed by their own parameters (the baselines); they still
        accept ``eps=`` and ignore it.
    warm_start : bool
        Whether ``fn`` accepts ``init=``, the previous result for the same
        layer; the adapters then pass it on every call but the first.
    linear_view : {"tensor", "tokens"}
        How the adapters present a linear layer's ``(B, T, D)`` input:
        ``"tensor"`` as it is, ``"tokens"`` as the ``(B * T, D)`` matrix of
        tokens x features.
    exact : bool
        Whether ``to_tensor()`` gives back the input exactly (explained
        variance 1.0), like ``"vanilla"`` and ``"save_on_cpu"``.
    stores_input : bool
        Whether the result is the input tensor itself, on its own device
        (``"vanilla"``; implies ``exact``). The adapters then keep the
        activation as is, without calling ``fn``.
    """

    name: str
    fn: Callable[..., Any]
    uses_eps: bool = True
    warm_start: bool = False
    linear_view: str = "tensor"
    exact: bool = False
    stores_input: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a non-empty string; got {self.name!r} of type {type(self.name).__name__}")
        if not self.name:
            raise ValueError(f"name must be a non-empty string; got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"fn must be callable; got {self.fn!r}")
        for field in ("uses_eps", "warm_start", "exact", "stores_input"):
            value = getattr(self, field)
            if not isinstance(value, bool):
                raise TypeError(f"{field} must be True or False; got {field}={value!r}")
        if self.linear_view not in LINEAR_VIEWS:
            raise ValueError(f"linear_view must be one of {LINEAR_VIEWS}; got linear_view={self.linear_view!r}")
        if self.stores_input and not self.exact:
            raise ValueError("stores_input=True keeps the input itself, so it needs exact=True as well")


_METHODS: dict[str, MethodInfo] = {}


def register(
    name: str,
    fn: Callable[..., Any],
    *,
    uses_eps: bool = True,
    warm_start: bool = False,
    linear_view: str = "tensor",
    exact: bool = False,
    stores_input: bool = False,
    overwrite: bool = False,
) -> Callable[..., Any]:
    """Register ``fn`` as the method called ``name``, with its capabilities.

    Registering the same function with the same capabilities again is
    harmless.

    Parameters
    ----------
    name : str
        The name :func:`decompose` and the PyTorch adapters will accept.
    fn : callable
        ``fn(x, eps=..., **kwargs)`` returning an object with ``to_tensor()``,
        ``nbytes``, ``rank`` and ``explained_variance`` (every result type of
        tensorcomp has them; :func:`tensorcomp.testing.check_method` checks a
        method against this protocol).
    uses_eps : bool, default True
        Whether ``eps`` decides what ``fn`` keeps; ``False`` for a method of
        fixed size, which accepts ``eps=`` and ignores it.
    warm_start : bool, default False
        Whether ``fn`` accepts ``init=``: the adapters then warm-start it
        with the previous step's result for the same layer (the Tucker
        factors and ranks only, for a result with a core and matrix factors).
    linear_view : {"tensor", "tokens"}, default "tensor"
        ``"tokens"``: a linear layer's ``(B, T, D)`` input is given to ``fn``
        as the ``(B * T, D)`` tokens x features matrix (``"svd"`` does this);
        ``"tensor"``: as it is.
    exact : bool, default False
        Whether ``fn`` stores its input exactly (``to_tensor()`` equals
        ``x``, explained variance 1.0).
    stores_input : bool, default False
        Whether the result is ``x`` itself on its own device; needs
        ``exact=True``. The adapters then keep the activation as is without
        calling ``fn``.
    overwrite : bool, default False
        Allow replacing an existing method.

    Returns
    -------
    callable
        ``fn``, unchanged (so ``register`` can be used as a plain call after
        a ``def``).

    Raises
    ------
    ValueError
        If ``name`` is empty, or taken (by another function, or by the same
        function with other capabilities) and ``overwrite`` is false; if
        ``linear_view`` is not one of the two views, or ``stores_input``
        is true without ``exact``.
    TypeError
        If ``name`` is not a string, ``fn`` is not callable or a capability
        flag is not a bool.

    See Also
    --------
    method_info : The record of a registered method.
    available_methods : The registered names, filtered by capability.

    Examples
    --------
    >>> import tensorcomp
    >>> def rank_one(x, eps=0.9, **kwargs):
    ...     return tensorcomp.hosvd(x, rank=1)
    >>> _ = tensorcomp.register("rank_one", rank_one, uses_eps=False)
    >>> "rank_one" in tensorcomp.available_methods(uses_eps=False)
    True
    """
    info = MethodInfo(
        name,
        fn,
        uses_eps=uses_eps,
        warm_start=warm_start,
        linear_view=linear_view,
        exact=exact,
        stores_input=stores_input,
    )
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False; got overwrite={overwrite!r}")
    existing = _METHODS.get(name)
    if existing is not None and existing != info and not overwrite:
        what = " with other capabilities" if existing.fn is fn else ""
        raise ValueError(f"a method named {name!r} is already registered{what}; pass overwrite=True to replace it")
    _METHODS[name] = info
    return fn


def method_info(method: str) -> MethodInfo:
    """The record of the method registered as ``method``.

    Parameters
    ----------
    method : str
        One of :func:`available_methods`.

    Returns
    -------
    MethodInfo
        The function and its declared capabilities.

    Raises
    ------
    ValueError
        If ``method`` is not registered (the message lists the available ones).

    Examples
    --------
    >>> import tensorcomp
    >>> info = tensorcomp.method_info("svd")
    >>> info.linear_view, info.uses_eps, info.warm_start
    ('tokens', True, False)
    >>> tensorcomp.method_info("subspace").warm_start
    True
    """
    try:
        return _METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown method {method!r}; available methods: {', '.join(available_methods())}"
        ) from None


def get_method(method: str) -> Callable[..., Any]:
    """The function registered as ``method``; ValueError listing the choices otherwise."""
    return method_info(method).fn


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


def available_methods(
    *,
    uses_eps: bool | None = None,
    warm_start: bool | None = None,
    linear_view: str | None = None,
    exact: bool | None = None,
    stores_input: bool | None = None,
) -> tuple[str, ...]:
    """Names of the registered methods, sorted, optionally only those with given capabilities.

    Parameters
    ----------
    uses_eps, warm_start, exact, stores_input : bool, optional
        Keep only the methods whose :class:`MethodInfo` field has this value;
        ``None`` (the default) does not filter.
    linear_view : {"tensor", "tokens"}, optional
        Keep only the methods with this linear-layer view.

    Returns
    -------
    tuple of str
        The matching names, sorted; every registered name without filters.

    Raises
    ------
    TypeError
        If a flag is neither a bool nor ``None``.
    ValueError
        If ``linear_view`` is not one of the two views.

    Examples
    --------
    >>> import tensorcomp
    >>> {"svd", "hosvd", "tucker", "cp", "tt"} <= set(tensorcomp.available_methods())
    True
    >>> "subspace" in tensorcomp.available_methods(warm_start=True)
    True
    >>> "svd" in tensorcomp.available_methods(linear_view="tokens")
    True
    """
    wanted = {"uses_eps": uses_eps, "warm_start": warm_start, "exact": exact, "stores_input": stores_input}
    for field, value in wanted.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{field} must be True, False or None; got {field}={value!r}")
    if linear_view is not None and linear_view not in LINEAR_VIEWS:
        raise ValueError(f"linear_view must be one of {LINEAR_VIEWS} or None; got linear_view={linear_view!r}")
    wanted["linear_view"] = linear_view
    wanted = {field: value for field, value in wanted.items() if value is not None}
    return tuple(
        sorted(name for name, info in _METHODS.items() if all(getattr(info, f) == v for f, v in wanted.items()))
    )
