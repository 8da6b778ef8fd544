"""Llama-3.x / Qwen2.5 decoder: Flax NNX modules used through pure functions.

The module tree is defined once; `init_params` and `forward` split it into a
graph definition (cached per config) and a plain nested dict of parameters,
so every jitted function takes `params` as an argument. Layers are stacked on
a leading axis and run under `lax.scan`, so compile time does not grow with
depth. Parameter layout (HF name in brackets; kernels are `[in, out]`):

    embed/embedding                 [V, D]      (model.embed_tokens.weight)
    layers/attn/{q,k,v,o}_proj/kernel [L, in, out] (self_attn.*_proj.weight^T)
    layers/attn/{q,k,v}_proj/bias   [L, out]    (Qwen2 only)
    layers/mlp/{gate,up,down}_proj/kernel       (mlp.*_proj.weight^T)
    layers/{attn,mlp}_norm/scale    [L, D]      (input/post_attention_layernorm)
    final_norm/scale                [D]         (model.norm.weight)
    lm_head/kernel                  [D, V]      (lm_head.weight^T; absent if tied)
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
from flax import nnx

from ram_jax.models import attention as attn
from ram_jax.models.cache import (
    KVCache,
    next_index,
    positions_from_mask,
    query_slots,
    write_layer,
    write_valid,
)
from ram_jax.models.config import ModelConfig
from ram_jax.models.quantize import Int8Embed, Int8Linear, is_quantized
from ram_jax.models.rope import apply_rope, inverse_frequencies

Params = dict

_init = nnx.initializers.normal(stddev=0.02)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype, dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts to the input dtype before the weight multiply; so do we.
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)


def _linear(cfg: ModelConfig, din: int, dout: int, rngs: nnx.Rngs, bias=False, int8=False):
    if int8:
        return Int8Linear(
            din, dout, use_bias=bias, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype
        )
    return nnx.Linear(
        din,
        dout,
        use_bias=bias,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        kernel_init=_init,
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, int8: bool = False, fused=False):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if fused:  # `fuse_projections`' layout: one [D, (N + 2K) H] product
            self.qkv_proj = _linear(cfg, d, (n + 2 * k) * h, rngs, cfg.qkv_bias, int8)
        else:
            self.q_proj = _linear(cfg, d, n * h, rngs, cfg.qkv_bias, int8)
            self.k_proj = _linear(cfg, d, k * h, rngs, cfg.qkv_bias, int8)
            self.v_proj = _linear(cfg, d, k * h, rngs, cfg.qkv_bias, int8)
        self.o_proj = _linear(cfg, n * h, d, rngs, False, int8)
        self.cfg = cfg
        self.fused = fused

    def __call__(self, x_BxTxD, positions_BxT, mask, kv, layer, inv_freq, attention):
        cfg = self.cfg
        b, t, _ = x_BxTxD.shape
        n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if self.fused:
            q, new_k, new_v = jnp.split(self.qkv_proj(x_BxTxD), [n * h, (n + k) * h], axis=-1)
        else:
            q, new_k, new_v = (p(x_BxTxD) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = apply_rope(q.reshape(b, t, n, h), positions_BxT, inv_freq)
        new_k = apply_rope(new_k.reshape(b, t, k, h), positions_BxT, inv_freq)
        new_v = new_v.reshape(b, t, k, h)
        if kv is None:
            out = attn.self_attention(q, new_k, new_v, mask, implementation=attention)
            return self.o_proj(out.reshape(b, t, n * h)), kv
        # The cache layouts: keys [B, K, H, S], values [B, K, S, H], so both
        # attention matmuls read the cache without a transpose.
        new_k, new_v = new_k.transpose(0, 2, 3, 1), new_v.transpose(0, 2, 1, 3)
        # Write this block's keys/values into the cache in place, then read the
        # layer's full history back (one shape for either layer layout).
        keys_BxKxHxS, values_BxKxSxH, kv = write_layer(kv, layer, new_k, new_v)
        out = attn.cached_attention(q, keys_BxKxHxS, values_BxKxSxH, mask, implementation=attention)
        return self.o_proj(out.reshape(b, t, n * h)), kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, int8: bool = False, fused=False):
        d, f = cfg.hidden_size, cfg.intermediate_size
        if fused:  # `fuse_projections`' layout: gate and up as one [D, 2F] product
            self.gate_up_proj = _linear(cfg, d, 2 * f, rngs, False, int8)
        else:
            self.gate_proj = _linear(cfg, d, f, rngs, False, int8)
            self.up_proj = _linear(cfg, d, f, rngs, False, int8)
        self.down_proj = _linear(cfg, f, d, rngs, False, int8)
        self.fused = fused

    def __call__(self, x):
        if self.fused:
            gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(jax.nn.silu(gate) * up)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, int8: bool = False, fused=False):
        norm = functools.partial(
            RMSNorm, cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype, cfg.jnp_dtype
        )
        self.attn_norm = norm()
        self.attn = Attention(cfg, rngs, int8, fused)
        self.mlp_norm = norm()
        self.mlp = MLP(cfg, rngs, int8, fused)

    def __call__(self, x, positions, mask, kv, layer, inv_freq, attention):
        attn_out, kv = self.attn(self.attn_norm(x), positions, mask, kv, layer, inv_freq, attention)
        x = x + attn_out
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nnx.Module):
    """The decoder. Call it through `forward(params, ...)` rather than directly.

    `int8=True` builds the weight-only int8 layout of `ram_jax.models.quantize`;
    `fused=True` the decode-time layout of `fuse_projections`.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, int8: bool = False, fused=False):
        self.cfg = cfg
        if int8:
            self.embed = Int8Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype)
        else:
            self.embed = nnx.Embed(
                cfg.vocab_size,
                cfg.hidden_size,
                dtype=cfg.jnp_dtype,
                param_dtype=cfg.jnp_param_dtype,
                embedding_init=_init,
                rngs=rngs,
            )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs):
            return Block(cfg, rngs, int8, fused)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype, cfg.jnp_dtype
        )
        if not cfg.tie_embeddings:
            self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, rngs, False, int8)

    def __call__(
        self,
        tokens_BxT,
        positions_BxT,
        mask,
        kv=None,
        *,
        remat=False,
        last_only=False,
        layer_states=None,
        attention="auto",
    ):
        # `mask`: real tokens [B, T] without a cache (causal over the block), the
        # slots each query sees [B, T, S] with one.
        cfg = self.cfg
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        x = self.embed(tokens_BxT)
        layers_def, layers_state = nnx.split(self.layers)

        def body(carry, xs):
            x, kv = carry
            layer_state, layer = xs
            block = nnx.merge(layers_def, layer_state)
            return block(x, positions_BxT, mask, kv, layer, inv_freq, attention), None

        if remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        if layer_states is not None:
            # Unrolled: every layer's weights and cache are arrays of their own.
            per_layer_kv = []
            for i, layer_state in enumerate(layer_states):
                layer_kv = None if kv is None else (kv[0][i], kv[1][i], kv[2])
                (x, layer_kv), _ = body((x, layer_kv), (layer_state, None))
                per_layer_kv.append(layer_kv)
            if kv is not None:
                kv = tuple(tuple(c[j] for c in per_layer_kv) for j in (0, 1)) + (kv[2],)
        else:
            layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
            # XLA on CPU runs a layer loop through dynamic slices of the stacked weights
            # and buffers of stacked residuals; unrolled, a CPU training step ran 18%
            # faster. Accelerators keep the loop (compile time independent of depth).
            unroll = cfg.num_layers if jax.default_backend() == "cpu" else 1
            (x, kv), _ = jax.lax.scan(body, (x, kv), (layers_state, layer_ids), unroll=unroll)
        if last_only:
            x = x[:, -1:]
        x = self.final_norm(x)
        logits = self.embed.attend(x) if cfg.tie_embeddings else self.lm_head(x)
        return logits.astype(jnp.float32), kv


@functools.lru_cache(maxsize=64)
def graphdef(config: ModelConfig, int8: bool = False, fused: bool = False) -> nnx.GraphDef:
    """The (cached) graph definition of a config's module tree (float or int8 weights,
    separate or fused projections)."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), int8=int8, fused=fused))
    return nnx.split(abstract)[0]


def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random initial parameters (normal(0.02) weights, unit norms, zero biases)."""
    model = Transformer(config, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.split(model)[1])


def abstract_params(config: ModelConfig, int8: bool = False, fused: bool = False) -> Params:
    """Parameter shapes and dtypes as `jax.ShapeDtypeStruct`s; allocates nothing.

    `int8=True`: the layout of `ram_jax.models.quantize.quantize_int8`;
    `fused=True`: that of `fuse_projections`.
    """
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), int8=int8, fused=fused))
    return nnx.to_pure_dict(nnx.split(model)[1])


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def has_unrolled_layers(params: Params) -> bool:
    """`params["layers"]` is a sequence of per-layer dicts (`unstack_layers`)."""
    return isinstance(params["layers"], (tuple, list))


def unstack_layers(params: Params) -> Params:
    """`params` with `layers` as a tuple of per-layer dicts: `forward` then unrolls.

    Unrolled layers read their own weight and cache arrays instead of slices
    of stacked ones. XLA on CPU copies every slice a matmul reads, so a cached
    decode step there runs markedly faster unrolled (see
    `experiments/bench_decode.py`); compile time grows with depth. Use with a
    cache from `init_cache(..., per_layer=True)`. Inside `jit` the slices are
    taken once per call.
    """
    if has_unrolled_layers(params):
        return params
    layers = params["layers"]
    n = jax.tree.leaves(layers)[0].shape[0]
    per_layer = [jax.tree.map(operator.itemgetter(i), layers) for i in range(n)]
    return {**params, "layers": tuple(per_layer)}


def has_fused_projections(params: Params) -> bool:
    """`params` come from `fuse_projections` (one q/k/v and one gate/up product per layer)."""
    layers = params["layers"]
    first = layers[0] if isinstance(layers, (tuple, list)) else layers
    return "qkv_proj" in first["attn"]


_FUSED = {
    "attn": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
    "mlp": ("gate_up_proj", ("gate_proj", "up_proj")),
}


def fuse_projections(params: Params) -> Params:
    """`params` with each layer's q/k/v and gate/up kernels (biases, int8 scales)
    concatenated along their output axis, in any layer layout.

    A decode step at a small batch runs one wider matmul instead of three (two),
    reading the same bytes: fewer, larger products. For decoding only (the
    layout `forward` recognises, never trained or exported); do it once,
    outside `jit` (`ram_jax.decoding.decoder.arrange_layers` does), and drop
    the separate kernels.
    """
    if has_fused_projections(params):
        return params

    def fuse(layer):
        out = dict(layer)
        for part, (name, pieces) in _FUSED.items():
            block = dict(layer[part])
            parts = [block.pop(p) for p in pieces]
            block[name] = {k: jnp.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
            out[part] = block
        return out

    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        return {**params, "layers": tuple(fuse(layer) for layer in layers)}
    return {**params, "layers": fuse(layers)}


@functools.lru_cache(maxsize=64)
def _abstract_layers(config: ModelConfig, int8: bool, fused: bool):
    return abstract_params(config, int8, fused)["layers"]


def forward(
    params: Params,
    tokens_BxT: jax.Array,
    config: ModelConfig,
    *,
    mask_BxT: jax.Array | None = None,
    positions_BxT: jax.Array | None = None,
    cache: KVCache | None = None,
    last_only: bool = False,
    remat: bool = False,
    attention: str = "auto",
) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder on a left-padded block of tokens.

    Without a cache this is a full causal forward over `tokens_BxT` (training,
    scoring). With a cache the block is written at slots
    `[cache.index, cache.index + T)` and attends to everything valid before it:
    a prompt prefill when the cache is empty, one decode step when T == 1.
    With a per-row index (`init_cache(..., per_row=True)`) each row writes at
    its own index, and a row whose mask holds no real token is not advanced.

    Args:
      params: parameters from `init_params` or `ram_jax.models.convert.load_hf`, or
        `unstack_layers` of them (layers unrolled; the cache must then be
        per layer too), `ram_jax.models.quantize.quantize_int8` of either
        (weight-only int8), and `fuse_projections` of any of these.
      tokens_BxT: int token ids; padding positions hold any id.
      config: the model's `ModelConfig` (static under jit).
      mask_BxT: True for real tokens (default: all real).
      positions_BxT: RoPE positions (default: real tokens counted from the
        row's cached length, so left padding does not shift them).
      cache: a `KVCache` from `init_cache`, or None.
      last_only: return logits of the last position only (`[B, 1, V]`).
      remat: rematerialise each layer in the backward pass.
      attention: the attention implementation (`ram_jax.models.attention`):
        'auto' (per backend: naive on CPU, cuDNN flash attention on GPU, the
        Pallas splash kernel on TPU, where each applies), 'naive', 'xla',
        'cudnn' or 'splash'.

    Returns:
      `(logits_BxTxV float32, cache)` with the updated cache (or None).
    """
    b, t = tokens_BxT.shape
    if mask_BxT is None:
        mask_BxT = jnp.ones((b, t), bool)
    mask_BxT = mask_BxT.astype(bool)
    if cache is None:
        if positions_BxT is None:
            positions_BxT = positions_from_mask(mask_BxT)
        attn_mask = mask_BxT  # causal over the block: each implementation builds its own
        kv = None
    else:
        if positions_BxT is None:
            positions_BxT = positions_from_mask(mask_BxT, cache.lengths())
        valid_BxS = write_valid(cache, mask_BxT)
        slots_S = jnp.arange(cache.max_length)
        query_slots_BxT = query_slots(cache, t)
        attn_mask = valid_BxS[:, None, :] & (slots_S[None, None, :] <= query_slots_BxT[:, :, None])
        kv = (cache.k_LxBxKxHxS, cache.v_LxBxKxSxH, cache.index)
    int8, fused = is_quantized(params), has_fused_projections(params)
    layer_states = None
    if has_unrolled_layers(params):
        layer_states = params["layers"]
        # The stacked layers are never read on this path: shapes stand in for them.
        params = {**params, "layers": _abstract_layers(config, int8, fused)}
    if cache is not None and cache.per_layer != (layer_states is not None):
        raise ValueError(
            "params and cache disagree on the layer layout: pass `unstack_layers(params)` "
            "with `init_cache(..., per_layer=True)`, or stacked params with a stacked cache."
        )
    model = nnx.merge(graphdef(config, int8, fused), params)
    logits, kv = model(
        tokens_BxT,
        positions_BxT,
        attn_mask,
        kv,
        remat=remat,
        last_only=last_only,
        layer_states=layer_states,
        attention=attention,
    )
    if cache is not None:
        cache = KVCache(kv[0], kv[1], valid_BxS, next_index(cache, mask_BxT))
    return logits, cache
