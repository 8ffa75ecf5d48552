"""Weight gradients of ``conv2d`` and ``linear`` computed from a decomposed input.

The weight gradient of a convolution or a linear layer is a contraction of the
output gradient with the layer's input. When the input is stored as a
truncated SVD or a Tucker decomposition, the contraction can run against the
factors one at a time, so the full activation is never rebuilt: every
intermediate is at most as large as the output gradient or the padded core.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from tensorcomp import SVDResult, TuckerResult

__all__ = ["conv2d_weight_from_factors", "linear_weight_from_factors"]

Padding4 = tuple[int, int, int, int]


# -- argument handling -------------------------------------------------------
def _pair(value: Any, name: str, *, minimum: int) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
        or min(value) < minimum
    ):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}; got {name}={value!r}")
    return int(value[0]), int(value[1])


def conv2d_padding(padding: Any, kernel_size: Sequence[int], dilation: Sequence[int]) -> Padding4:
    """Normalise a ``conv2d`` padding to ``(top, bottom, left, right)``.

    ``padding`` is an int, a pair ``(ph, pw)``, a 4-tuple
    ``(top, bottom, left, right)``, ``"valid"`` or ``"same"`` (stride 1; an
    even extent ``dilation * (kernel - 1)`` puts the extra row/column at the
    bottom/right, as :func:`torch.nn.functional.conv2d` does).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            sides = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                sides += [total // 2, total - total // 2]
            return tuple(sides)  # type: ignore[return-value]
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same'; got padding={padding!r}")
    if isinstance(padding, Sequence) and len(padding) == 4:
        if not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) and p >= 0 for p in padding):
            raise ValueError(f"a 4-tuple padding (top, bottom, left, right) must hold ints >= 0; got padding={padding!r}")
        return tuple(int(p) for p in padding)  # type: ignore[return-value]
    ph, pw = _pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


class ConvGeometry(NamedTuple):
    """A ``conv2d``'s weight shape and normalised stride, padding, dilation and groups."""

    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    pads: Padding4
    dilation: tuple[int, int]
    groups: int


def conv_geometry(weight_shape: Sequence[int], stride: Any, padding: Any, dilation: Any, groups: Any) -> ConvGeometry:
    """Check and normalise ``conv2d`` arguments (``ValueError`` naming what is wrong)."""
    weight_shape = tuple(int(n) for n in weight_shape)
    if len(weight_shape) != 4:
        raise ValueError(f"weight_shape must be (out_channels, in_channels/groups, kh, kw); got {weight_shape!r}")
    stride = _pair(stride, "stride", minimum=1)
    dilation = _pair(dilation, "dilation", minimum=1)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive integer; got groups={groups!r}")
    if weight_shape[0] % groups:
        raise ValueError(f"out_channels={weight_shape[0]} is not divisible by groups={groups}")
    pads = conv2d_padding(padding, weight_shape[2:], dilation)
    return ConvGeometry(weight_shape, stride, pads, dilation, int(groups))  # type: ignore[arg-type]


def _promoted(like: torch.Tensor, *arrays: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``like`` and ``arrays`` as torch tensors on ``like``'s device, in their promoted dtype."""
    tensors = [torch.as_tensor(a, device=like.device) for a in arrays]
    dtype = like.dtype
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return like.to(dtype), [t.to(dtype) for t in tensors]


# -- convolution ---------------------------------------------------------------
def conv2d_weight_dense(x: torch.Tensor, grad_output: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """``torch.nn.grad.conv2d_weight`` for a dense input, with asymmetric padding."""
    top, bottom, left, right = geometry.pads
    if top == bottom and left == right:
        padding: Any = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = 0
    return torch.nn.grad.conv2d_weight(
        x, geometry.weight_shape, grad_output, geometry.stride, padding, geometry.dilation, geometry.groups
    )


def _pad_rows(factor: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """A factor ``(M, K)`` with zero rows for the padding: ``(before + M + after, K)``."""
    return F.pad(factor, (0, 0, before, after)) if before or after else factor


def _tucker_conv2d_weight(result: TuckerResult, grad_output: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    grad_output, (core, u_batch, u_channel, u_height, u_width) = _promoted(grad_output, result.core, *result.factors)
    weight_shape, stride, pads, dilation, groups = geometry
    out_channels, in_per_group, kh, kw = weight_shape
    channels = u_channel.shape[0]
    k1, k2, k3, k4 = core.shape
    top, bottom, left, right = pads

    # Z[k1, o, h', w'] = sum_b U1[b, k1] dY[b, o, h', w']: the batch shrinks to K1.
    z = torch.einsum("bk,bohw->kohw", u_batch, grad_output)

    # P = core x3 U3p x4 U4p, expanding the cheaper spatial mode last.
    u_height = _pad_rows(u_height, top, bottom)
    u_width = _pad_rows(u_width, left, right)
    hp, wp = u_height.shape[0], u_width.shape[0]
    height_first = k1 * k2 * k4 * (k3 * hp + hp * wp) <= k1 * k2 * k3 * (k4 * wp + hp * wp)
    if height_first:
        p = torch.einsum("ijhl,wl->ijhw", torch.einsum("ijkl,hk->ijhl", core, u_height), u_width)
    else:
        p = torch.einsum("ijkw,hk->ijhw", torch.einsum("ijkl,wl->ijkw", core, u_width), u_height)

    # Either correlate in the K2-dimensional channel subspace and map back to
    # channels afterwards (cheap unless the convolution is grouped), or expand
    # the channels first and let the grouped correlation skip cross-group terms.
    out_hw = grad_output.shape[2] * grad_output.shape[3] * kh * kw
    subspace_cost = k1 * out_channels * k2 * out_hw + out_channels * k2 * in_per_group * kh * kw
    expanded_cost = k1 * k2 * channels * hp * wp + k1 * out_channels * in_per_group * out_hw
    if subspace_cost <= expanded_cost:
        grad_sub = torch.nn.grad.conv2d_weight(p, (out_channels, k2, kh, kw), z, stride, 0, dilation, 1)
        grad_sub = grad_sub.reshape(groups, out_channels // groups, k2, kh, kw)
        u_grouped = u_channel.reshape(groups, channels // groups, k2)
        grad = torch.einsum("gokij,gck->gocij", grad_sub, u_grouped)
        return grad.reshape(out_channels, in_per_group, kh, kw)
    p = torch.einsum("ijhw,cj->ichw", p, u_channel)
    return torch.nn.grad.conv2d_weight(p, weight_shape, z, stride, 0, dilation, groups)


def _svd_conv2d_weight(result: SVDResult, grad_output: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    grad_output, (s, u, v) = _promoted(grad_output, result.weights, *result.factors)
    z = torch.einsum("bk,bohw->kohw", u * s, grad_output)
    p = v.t().reshape(-1, *result.original_shape[1:])
    return conv2d_weight_dense(p, z, geometry)


def conv2d_weight_from_factors(
    result: Any,
    weight_shape: Sequence[int],
    grad_output: torch.Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Gradient of a ``conv2d`` weight from the decomposition of its input.

    Computes ``torch.nn.grad.conv2d_weight(x, weight_shape, grad_output, ...)``
    with ``x = result.to_tensor()``, without forming ``x``:

    - :class:`~tensorcomp.TuckerResult` of ``x`` (from ``hosvd``, ``tucker``,
      ``subspace``; core ``(K1, K2, K3, K4)``, factors ``U1 (B, K1)``,
      ``U2 (C, K2)``, ``U3 (H, K3)``, ``U4 (W, K4)``): the output gradient is
      contracted with ``U1`` over the batch, ``Z (K1, O, H', W')``; the core is
      expanded along the (zero-padded) spatial factors,
      ``P = core x3 U3p x4 U4p``; one weight-gradient correlation with ``K1``
      as the batch gives ``(O, K2, kh, kw)``, which ``U2`` maps back to the
      channels of each group. When the channel expansion is cheaper (grouped
      and depthwise convolutions), ``P`` is mapped to channels first and the
      grouped correlation runs on ``(K1, C, Hp, Wp)``.
    - :class:`~tensorcomp.SVDResult` of ``x`` viewed as ``B x CHW`` (``s (K,)``,
      ``U (B, K)``, ``V (CHW, K)``): ``Z = (U s)^T dY`` of shape
      ``(K, O, H', W')`` and ``P = V^T`` of shape ``(K, C, H, W)`` feed one
      weight-gradient correlation with ``K`` as the batch.
    - Any other result (CP, TT, a user's method): ``x`` is rebuilt with
      ``result.to_tensor()`` and :func:`torch.nn.grad.conv2d_weight` is applied.

    Parameters
    ----------
    result : TuckerResult, SVDResult or any result with ``to_tensor()``
        Decomposition of the convolution input ``x`` of shape ``(B, C, H, W)``,
        holding torch tensors.
    weight_shape : sequence of int
        ``(O, C / groups, kh, kw)``.
    grad_output : torch.Tensor, shape (B, O, H', W')
        Gradient of the loss with respect to the convolution output.
    stride, dilation : int or pair of int
    padding : int, pair, 4-tuple or str
        An int or ``(ph, pw)`` pads both sides; a 4-tuple is
        ``(top, bottom, left, right)``; ``"same"`` pads as
        :func:`torch.nn.functional.conv2d` does (extra row/column at the
        bottom/right for even kernels); ``"valid"`` means 0.
    groups : int
        Number of channel groups; ``C`` and ``O`` must be divisible by it.

    Returns
    -------
    torch.Tensor, shape (O, C / groups, kh, kw)
        In the promoted dtype of ``grad_output`` and the stored factors.

    Raises
    ------
    ValueError
        A malformed ``weight_shape``, ``stride``, ``padding``, ``dilation`` or
        ``groups``, or a ``result`` whose shape does not fit ``grad_output``.

    Examples
    --------
    >>> import torch
    >>> import tensorcomp
    >>> from tensorcomp.adapters import conv2d_weight_from_factors
    >>> x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    >>> dy = torch.randn(4, 5, 8, 8, dtype=torch.float64)
    >>> res = tensorcomp.hosvd(x, eps=0.8)
    >>> grad = conv2d_weight_from_factors(res, (5, 3, 3, 3), dy, padding=1)
    >>> grad.shape
    torch.Size([5, 3, 3, 3])
    >>> exact = torch.nn.grad.conv2d_weight(res.to_tensor(), (5, 3, 3, 3), dy, padding=1)
    >>> bool(torch.allclose(grad, exact))
    True
    """
    geometry = conv_geometry(weight_shape, stride, padding, dilation, groups)
    if grad_output.dim() != 4:
        raise ValueError(f"grad_output must have shape (B, O, H', W'); got shape {tuple(grad_output.shape)}")
    if isinstance(result, TuckerResult) and len(result.factors) == 4:
        _check_fits(tuple(result.shape), grad_output, geometry)
        return _tucker_conv2d_weight(result, grad_output, geometry)
    if isinstance(result, SVDResult) and len(result.original_shape) == 4:
        _check_fits(tuple(result.original_shape), grad_output, geometry)
        return _svd_conv2d_weight(result, grad_output, geometry)
    grad_output, (x,) = _promoted(grad_output, result.to_tensor())
    return conv2d_weight_dense(x, grad_output, geometry)


def _check_fits(shape: tuple[int, ...], grad_output: torch.Tensor, geometry: ConvGeometry) -> None:
    if shape[0] != grad_output.shape[0] or shape[1] != geometry.weight_shape[1] * geometry.groups:
        raise ValueError(
            f"result of shape {shape} does not fit grad_output of shape {tuple(grad_output.shape)} "
            f"and weight_shape {geometry.weight_shape} with groups={geometry.groups}"
        )


# -- linear --------------------------------------------------------------------
def _tucker_linear_weight(result: TuckerResult, grad_rows: torch.Tensor) -> torch.Tensor:
    """``dY^T x`` for ``x = core x1 U1 ... xd Ud`` and ``dY`` of shape ``(M_1, ..., M_{d-1}, O)``."""
    g, (core, *factors) = _promoted(grad_rows, result.core, *result.factors)
    leading = len(factors) - 1
    # Contract the modes that shrink the most first: each step divides the
    # working tensor's size by M_n / K_n.
    order = sorted(range(leading), key=lambda n: factors[n].shape[1] / factors[n].shape[0])
    for n in order:
        g = torch.tensordot(g, factors[n], dims=([n], [0])).movedim(-1, n)
    # g: (K_1, ..., K_{d-1}, O); the core contracts the leading ranks away.
    grad_sub = torch.tensordot(g, core, dims=(list(range(leading)), list(range(leading))))  # (O, K_d)
    return grad_sub @ factors[-1].t()


def linear_weight_from_factors(result: Any, weight_shape: Sequence[int], grad_output: torch.Tensor) -> torch.Tensor:
    """Gradient of a ``linear`` weight from the decomposition of its input.

    For ``y = x W^T (+ b)`` with ``x`` of shape ``(..., D)``, computes
    ``dW = dY_flat^T x_flat`` of shape ``(O, D)`` without forming ``x``:

    - :class:`~tensorcomp.SVDResult` of ``x`` viewed as ``(N, D)`` tokens x
      features (``s (K,)``, ``U (N, K)``, ``V (D, K)``, e.g. from
      ``Compressor(..., matrix_view=True)``): ``dW = (dY^T U) diag(s) V^T``.
      An SVD of ``x`` viewed as ``B x (T D)`` (the default view of a 3-D
      input) is handled too: ``Z = (U s)^T dY`` of shape ``(K, T, O)`` is
      contracted with ``V`` reshaped ``(T, D, K)``.
    - :class:`~tensorcomp.TuckerResult` of ``x`` in its own shape (every
      mode, or the ``(N, D)`` matrix view): ``dY`` is contracted with every
      factor but the last (the most shrinking first), then with the core,
      giving ``(O, K_d)``, then with the last factor.
    - Any other result: ``x`` is rebuilt with ``result.to_tensor()``.

    Parameters
    ----------
    result : SVDResult, TuckerResult or any result with ``to_tensor()``
        Decomposition of the input ``x`` of shape ``(..., D)``, holding torch tensors.
    weight_shape : sequence of int
        ``(O, D)``.
    grad_output : torch.Tensor, shape (..., O)
        Gradient of the loss with respect to the output.

    Returns
    -------
    torch.Tensor, shape (O, D)
        In the promoted dtype of ``grad_output`` and the stored factors.

    Raises
    ------
    ValueError
        A malformed ``weight_shape`` or a ``result`` whose shape does not fit
        ``grad_output``.

    Examples
    --------
    >>> import torch
    >>> import tensorcomp
    >>> from tensorcomp.adapters import linear_weight_from_factors
    >>> x = torch.randn(2, 6, 4, dtype=torch.float64)   # batch x tokens x features
    >>> dy = torch.randn(2, 6, 3, dtype=torch.float64)
    >>> res = tensorcomp.hosvd(x, eps=0.9)
    >>> grad = linear_weight_from_factors(res, (3, 4), dy)
    >>> exact = dy.reshape(-1, 3).T @ res.to_tensor().reshape(-1, 4)
    >>> bool(torch.allclose(grad, exact))
    True
    """
    weight_shape = tuple(int(n) for n in weight_shape)
    if len(weight_shape) != 2:
        raise ValueError(f"weight_shape must be (out_features, in_features); got {weight_shape!r}")
    out_features, in_features = weight_shape
    if grad_output.dim() < 1 or grad_output.shape[-1] != out_features:
        raise ValueError(
            f"grad_output must have shape (..., {out_features}); got shape {tuple(grad_output.shape)}"
        )
    leading_shape = tuple(grad_output.shape[:-1])
    rows = math.prod(leading_shape)

    def mismatch(shape: tuple[int, ...]) -> ValueError:
        return ValueError(
            f"result of shape {shape} does not fit an input of shape {leading_shape + (in_features,)} "
            f"(from grad_output of shape {tuple(grad_output.shape)} and weight_shape {weight_shape})"
        )

    if isinstance(result, SVDResult):
        shape = tuple(result.original_shape)
        g, (s, u, v) = _promoted(grad_output, result.weights, *result.factors)
        if shape == (rows, in_features):
            return ((g.reshape(rows, out_features).t() @ u) * s) @ v.t()
        if len(leading_shape) >= 1 and shape == leading_shape + (in_features,):
            z = torch.tensordot(u * s, g, dims=([0], [0]))  # (K, *rest, O)
            k = s.shape[0]
            rest = math.prod(leading_shape[1:])
            z = z.reshape(k, rest, out_features)
            v = v.reshape(rest, in_features, k)
            return torch.einsum("kro,rdk->od", z, v)
        raise mismatch(shape)

    if isinstance(result, TuckerResult):
        shape = tuple(result.shape)
        if shape[-1] != in_features or math.prod(shape[:-1]) != rows:
            raise mismatch(shape)
        return _tucker_linear_weight(result, grad_output.reshape(*shape[:-1], out_features))

    g, (x,) = _promoted(grad_output, result.to_tensor())
    if x.numel() != rows * in_features:
        raise mismatch(tuple(x.shape))
    return g.reshape(rows, out_features).t() @ x.reshape(rows, in_features)
