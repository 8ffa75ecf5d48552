"""Pick the TensorLy backend from the input's array type, as a thread-local context.

TensorLy dispatches every ``tl.*`` call on a backend that is normally chosen
globally with :func:`tensorly.set_backend`. tensorcomp instead infers it from
the array the user passes, and sets it for the current thread only, restoring
the thread's previous state on exit: the caller's global backend never changes,
and two threads decomposing numpy and torch arrays at once do not interfere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import tensorly as tl
from tensorly.backend import BackendManager

from ._validate import check_array_kind, input_type_error

# Top-level module of an array type -> TensorLy backend name.
_MODULE_TO_BACKEND = {
    "numpy": "numpy",
    "torch": "pytorch",
    "jax": "jax",
    "jaxlib": "jax",
    "tensorflow": "tensorflow",
    "cupy": "cupy",
    "paddle": "paddle",
}


def backend_name(x: Any) -> str:
    """Name of the TensorLy backend that handles arrays of ``x``'s type.

    ``x`` is inspected, never converted: an array type a backend would take
    but that holds no dense data (a sparse matrix, a ``numpy.matrix``, a
    torch meta tensor, ...) is rejected here, before any backend call, by
    :func:`tensorcomp._validate.check_array_kind`.

    Raises
    ------
    TypeError
        If ``x`` is not a dense array of a backend TensorLy knows.
    """
    check_array_kind(x)
    module = type(x).__module__.split(".")[0]
    try:
        return _MODULE_TO_BACKEND[module]
    except KeyError:
        known = ", ".join(sorted(set(_MODULE_TO_BACKEND.values())))
        raise input_type_error(
            f"an object of type {type(x).__module__}.{type(x).__qualname__}",
            f"the TensorLy backends are {known}",
        ) from None


@contextlib.contextmanager
def backend_for(x: Any) -> Iterator[str]:
    """Run the enclosed block on the TensorLy backend of ``x``, in this thread only.

    :func:`tensorly.backend_context` restores the previous backend *globally*
    even when it was entered thread-locally, so it would leak across threads;
    this context touches only the current thread's state.
    """
    name = backend_name(x)
    local = BackendManager._THREAD_LOCAL_DATA
    had_local = "backend" in local.__dict__
    previous = local.__dict__.get("backend")
    tl.set_backend(name, local_threadsafe=True)
    try:
        yield name
    finally:
        if had_local:
            local.backend = previous
        else:
            del local.backend
