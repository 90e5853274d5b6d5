"""Gemm and MatMul with a constant weight -> ``nn.Dense`` (kernel ``[in, out]``); Det."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .._core.registry import register
from .._pipeline.module import OpContext


def _gemm_attrs(attrs):
    """alpha, beta, transA, transB (defaulted by normalize)."""
    return (float(attrs["alpha"]), float(attrs["beta"]), int(attrs["transA"]),
            int(attrs["transB"]))


def _gemm_params(node, weights):
    alpha, beta, _, trans_b = _gemm_attrs(node.attrs)
    b = weights[1]
    if b is None or b.dtype.kind != "f" or b.ndim != 2:
        return None
    kernel = (b.T if trans_b else b) * np.asarray(alpha, b.dtype) if alpha != 1 else (b.T if trans_b else b)
    params = {"kernel": kernel}  # a view: copied once, transposed, into the device buffer

    def kernel_inverse(k):
        k = k / np.asarray(alpha, k.dtype) if alpha != 1 else k
        return k.T if trans_b else k

    sources = {"kernel": (1, kernel_inverse)}
    has_c = len(node.inputs) > 2 and node.inputs[2]
    if has_c:
        c = weights[2]
        n = kernel.shape[1]
        if c is None or c.size not in (1, n) or (c.ndim == 2 and c.shape[-1] != n and c.size != 1):
            return None
        params["bias"] = (np.broadcast_to(c.reshape(-1), (n,)) * np.asarray(beta, c.dtype)).astype(c.dtype)
        if c.size == n:  # a broadcast scalar C cannot be recovered from a per-unit bias
            sources["bias"] = (2, lambda v, shape=c.shape: np.reshape(
                v / np.asarray(beta, v.dtype) if beta != 1 else v, shape))
    return {"params": params, "sources": sources}


@register("Gemm", params=_gemm_params)
def gemm(ctx: OpContext, a, b, c=None):
    """Y = alpha * A' @ B' + beta * C; A ``[M, K]``, B ``[K, N]`` (or transposed)."""
    alpha, beta, trans_a, trans_b = _gemm_attrs(ctx.node.attrs)
    if a.ndim != 2 or b.ndim != 2:
        raise ctx.invalid(f"A and B must be 2-D, got shapes {list(a.shape)} and {list(b.shape)}")
    a = a.T if trans_a else a
    if ctx.layer_plan is not None:
        return ctx.layer(nn.Dense, a, features=int(b.shape[0] if trans_b else b.shape[1]),
                         use_bias=c is not None)
    b = b.T if trans_b else b
    if a.shape[1] != b.shape[0]:
        raise ctx.invalid(f"A' {list(a.shape)} and B' {list(b.shape)} do not multiply")
    y = jnp.matmul(a, b)
    y = y if alpha == 1 else alpha * y
    if c is not None:
        y = y + (c if beta == 1 else beta * c)
    return y


def _matmul_params(node, weights):
    b = weights[1]
    if b is None or b.dtype.kind != "f" or b.ndim != 2:
        return None
    return {"params": {"kernel": b}, "sources": {"kernel": (1, None)}}


@register("MatMul", params=_matmul_params)
def matmul(ctx: OpContext, a, b):
    """numpy.matmul semantics; a constant 2-D B ``[in, out]`` becomes a Dense layer."""
    if ctx.layer_plan is not None and a.ndim >= 1:
        if a.shape[-1] != b.shape[0]:
            raise ctx.invalid(f"A {list(a.shape)} and B {list(b.shape)} do not multiply")
        return ctx.layer(nn.Dense, a, features=int(b.shape[1]), use_bias=False)
    return jnp.matmul(a, b)


@register("Det", since=11)
def det(ctx: OpContext, x):
    """``[*, M, M] -> [*]``: determinants of square float matrices."""
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ctx.invalid(f"input must be [*, M, M], got shape {list(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ctx.invalid(f"input must be floating point, got {x.dtype}")
    return jnp.linalg.det(x)
