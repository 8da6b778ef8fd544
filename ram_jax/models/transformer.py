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

from ram_jax.models.cache import KVCache, positions_from_mask, write_layer
from ram_jax.models.config import ModelConfig
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


def _linear(cfg: ModelConfig, din: int, dout: int, rngs: nnx.Rngs, bias: bool = False):
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
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = _linear(cfg, d, n * h, rngs, cfg.qkv_bias)
        self.k_proj = _linear(cfg, d, k * h, rngs, cfg.qkv_bias)
        self.v_proj = _linear(cfg, d, k * h, rngs, cfg.qkv_bias)
        self.o_proj = _linear(cfg, n * h, d, rngs)
        self.cfg = cfg

    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv, layer, inv_freq):
        cfg = self.cfg
        b, t, _ = x_BxTxD.shape
        n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = apply_rope(self.q_proj(x_BxTxD).reshape(b, t, n, h), positions_BxT, inv_freq)
        new_k = apply_rope(self.k_proj(x_BxTxD).reshape(b, t, k, h), positions_BxT, inv_freq)
        new_v = self.v_proj(x_BxTxD).reshape(b, t, k, h)
        # The cache layouts: keys [B, K, H, S], values [B, K, S, H], so both
        # attention matmuls read the cache without a transpose.
        new_k, new_v = new_k.transpose(0, 2, 3, 1), new_v.transpose(0, 2, 1, 3)
        if kv is None:
            keys_BxKxHxS, values_BxKxSxH = new_k, new_v
        else:
            keys_BxKxHxS, values_BxKxSxH, kv = write_layer(kv, layer, new_k, new_v)
        keys_BxKxHxS = keys_BxKxHxS.astype(q.dtype)
        values_BxKxSxH = values_BxKxSxH.astype(cfg.jnp_dtype)
        if t == 1:
            # A decode step: without the unit T axis both contractions are plain
            # batched matmuls over (B, K) that XLA on CPU runs fast.
            queries = q.reshape(b, k, n // k, h)
            mask = mask_BxTxS[:, 0, None, None]
            score_spec, out_spec = "bkgh,bkhs->bkgs", "bkgs,bksh->bkgh"
        else:
            queries = q.reshape(b, t, k, n // k, h)
            mask = mask_BxTxS[:, None, None]
            score_spec, out_spec = "btkgh,bkhs->bkgts", "bkgts,bksh->btkgh"
        scores = _f32_einsum(score_spec, queries, keys_BxKxHxS) * (h**-0.5)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.jnp_dtype)
        out = jnp.einsum(out_spec, probs, values_BxKxSxH)
        return self.o_proj(out.reshape(b, t, n * h)), kv


def _f32_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`einsum` with float32 results (attention scores) for any input dtype.

    XLA on CPU lacks some bf16 x bf16 -> f32 dots; there the operands are cast
    first, which gives the same numbers (bf16 products are exact in float32).
    """
    if jax.default_backend() == "cpu":
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.gate_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
        self.up_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
        self.down_proj = _linear(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        norm = functools.partial(
            RMSNorm, cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype, cfg.jnp_dtype
        )
        self.attn_norm = norm()
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = norm()
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, kv, layer, inv_freq):
        attn_out, kv = self.attn(self.attn_norm(x), positions, mask, kv, layer, inv_freq)
        x = x + attn_out
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nnx.Module):
    """The decoder. Call it through `forward(params, ...)` rather than directly."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
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
            return Block(cfg, rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype, cfg.jnp_dtype
        )
        if not cfg.tie_embeddings:
            self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, rngs)

    def __call__(
        self,
        tokens_BxT,
        positions_BxT,
        mask_BxTxS,
        kv=None,
        *,
        remat=False,
        last_only=False,
        layer_states=None,
    ):
        cfg = self.cfg
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        x = self.embed(tokens_BxT)
        layers_def, layers_state = nnx.split(self.layers)

        def body(carry, xs):
            x, kv = carry
            layer_state, layer = xs
            block = nnx.merge(layers_def, layer_state)
            return block(x, positions_BxT, mask_BxTxS, kv, layer, inv_freq), None

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
            (x, kv), _ = jax.lax.scan(body, (x, kv), (layers_state, layer_ids))
        if last_only:
            x = x[:, -1:]
        x = self.final_norm(x)
        logits = self.embed.attend(x) if cfg.tie_embeddings else self.lm_head(x)
        return logits.astype(jnp.float32), kv


@functools.lru_cache(maxsize=64)
def graphdef(config: ModelConfig) -> nnx.GraphDef:
    """The (cached) graph definition of a config's module tree."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random initial parameters (normal(0.02) weights, unit norms, zero biases)."""
    model = Transformer(config, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.split(model)[1])


def abstract_params(config: ModelConfig) -> Params:
    """Parameter shapes and dtypes as `jax.ShapeDtypeStruct`s; allocates nothing."""
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
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


@functools.lru_cache(maxsize=64)
def _abstract_layers(config: ModelConfig):
    return abstract_params(config)["layers"]


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
) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder on a left-padded block of tokens.

    Without a cache this is a full causal forward over `tokens_BxT` (training,
    scoring). With a cache the block is written at slots
    `[cache.index, cache.index + T)` and attends to everything valid before it:
    a prompt prefill when the cache is empty, one decode step when T == 1.

    Args:
      params: parameters from `init_params` or `ram_jax.models.convert.load_hf`, or
        `unstack_layers` of them (layers unrolled; the cache must then be
        per layer too).
      tokens_BxT: int token ids; padding positions hold any id.
      config: the model's `ModelConfig` (static under jit).
      mask_BxT: True for real tokens (default: all real).
      positions_BxT: RoPE positions (default: real tokens counted from the
        row's cached length, so left padding does not shift them).
      cache: a `KVCache` from `init_cache`, or None.
      last_only: return logits of the last position only (`[B, 1, V]`).
      remat: rematerialise each layer in the backward pass.

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
        causal_TxT = jnp.tril(jnp.ones((t, t), bool))
        attn_mask = causal_TxT[None] & mask_BxT[:, None, :]
        kv = None
    else:
        if positions_BxT is None:
            positions_BxT = positions_from_mask(mask_BxT, cache.lengths())
        valid_BxS = jax.lax.dynamic_update_slice(cache.valid_BxS, mask_BxT, (0, cache.index))
        slots_S = jnp.arange(cache.max_length)
        query_slots_T = cache.index + jnp.arange(t)
        attn_mask = valid_BxS[:, None, :] & (slots_S[None, :] <= query_slots_T[:, None])[None]
        kv = (cache.k_LxBxKxHxS, cache.v_LxBxKxSxH, cache.index)
    layer_states = None
    if has_unrolled_layers(params):
        layer_states = params["layers"]
        # The stacked layers are never read on this path: shapes stand in for them.
        params = {**params, "layers": _abstract_layers(config)}
    if cache is not None and cache.per_layer != (layer_states is not None):
        raise ValueError(
            "params and cache disagree on the layer layout: pass `unstack_layers(params)` "
            "with `init_cache(..., per_layer=True)`, or stacked params with a stacked cache."
        )
    model = nnx.merge(graphdef(config), params)
    logits, kv = model(
        tokens_BxT,
        positions_BxT,
        attn_mask,
        kv,
        remat=remat,
        last_only=last_only,
        layer_states=layer_states,
    )
    if cache is not None:
        cache = KVCache(kv[0], kv[1], valid_BxS, cache.index + t)
    return logits, cache
