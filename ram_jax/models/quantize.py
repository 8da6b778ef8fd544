"""Weight-only int8 for a frozen model (the proposal): per-channel scales, bf16/f32 compute.

`quantize_int8(params)` stores every matmul kernel and the embedding as int8
with one float32 scale per output channel (symmetric, absmax / 127, rounded
to nearest): kernels `[.., in, out]` get `scale [.., out]`, the embedding
`[V, D]` gets `scale [V]` (one per row: per output channel of tied logits).
Norms and biases stay as they are. `forward` sees the int8 layout in the
params and builds the matching module tree: each product runs as
`(x @ q.astype(dtype)) * scale`, so the weights are read from memory as
int8 (XLA fuses the conversion into the matmul on accelerators) and the
scale is applied once per output. An int8 value fits a bf16 mantissa exactly,
so the only error is the rounding of the weights: at most scale / 2 each.

Why not a library: MaxText quantizes with AQT and now Qwix, both built for
quantization-aware training and for intercepting every dot of a Linen/NNX
model. A frozen model's weight-only int8 needs neither: this is the same
per-channel absmax scheme as their weight-only int8 mode, over our own
parameter tree, with no new dependency.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

INT8_MAX = 127


def is_quantized(params) -> bool:
    """`params` come from `quantize_int8` (the embedding is int8)."""
    return params["embed"]["embedding"].dtype == jnp.int8


def _quantize(w, axis: int):
    w = jnp.asarray(w, jnp.float32)
    absmax = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / INT8_MAX, 1.0)
    q = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return q, jnp.squeeze(scale, axis)


def quantize_int8(params):
    """An int8 copy of `params` (stacked or unrolled layers): see the module docstring."""

    def walk(tree):
        out = {}
        for name, value in tree.items():
            if isinstance(value, dict) and "kernel" in value:
                q, scale = _quantize(value["kernel"], axis=-2)
                out[name] = {**value, "kernel": q, "scale": scale}
            elif isinstance(value, dict):
                out[name] = walk(value)
            elif isinstance(value, (tuple, list)):
                out[name] = type(value)(walk(v) for v in value)
            else:
                out[name] = value
        return out

    if is_quantized(params):
        return params
    out = walk(params)
    q, scale = _quantize(params["embed"]["embedding"], axis=-1)
    out["embed"] = {"embedding": q, "scale": scale}
    return out


def dequantize(params, dtype=jnp.float32):
    """Float weights equal to what the int8 params compute with (`q * scale`)."""

    def walk(tree):
        if isinstance(tree, (tuple, list)):
            return type(tree)(walk(v) for v in tree)
        if not isinstance(tree, dict):
            return tree
        if "scale" in tree and ("kernel" in tree or "embedding" in tree):
            name = "kernel" if "kernel" in tree else "embedding"
            axis = -2 if name == "kernel" else -1
            w = tree[name].astype(jnp.float32) * jnp.expand_dims(tree["scale"], axis)
            rest = {k: v for k, v in tree.items() if k not in (name, "scale")}
            return {**rest, name: w.astype(dtype)}
        return {k: walk(v) for k, v in tree.items()}

    return walk(params)


def weight_bytes(params) -> int:
    """Bytes of a parameter tree as stored (int8 weights, their scales, the rest)."""
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


class Int8Linear(nnx.Module):
    """`nnx.Linear`'s layout with an int8 kernel and a float32 scale per output."""

    def __init__(self, din: int, dout: int, *, use_bias: bool, dtype, param_dtype):
        self.kernel = nnx.Param(jnp.zeros((din, dout), jnp.int8))
        self.scale = nnx.Param(jnp.ones((dout,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dout,), param_dtype)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x):
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        y = y * self.scale[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Int8Embed(nnx.Module):
    """`nnx.Embed`'s layout with int8 rows and a float32 scale per row."""

    def __init__(self, num: int, features: int, *, dtype):
        self.embedding = nnx.Param(jnp.zeros((num, features), jnp.int8))
        self.scale = nnx.Param(jnp.ones((num,), jnp.float32))
        self.dtype = dtype

    def __call__(self, tokens):
        rows = self.embedding[...][tokens].astype(self.dtype)
        return rows * self.scale[...][tokens][..., None].astype(self.dtype)

    def attend(self, x):
        """Tied output logits: `x @ embedding.T`, scaled per vocabulary row."""
        y = jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)
        return y * self.scale[...].astype(self.dtype)
