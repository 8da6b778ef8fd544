"""The explicit key/value cache pytree shared by every decoder call.

Layout (one for all models): keys `[L, B, K, H, S]` and values
`[L, B, K, S, H]` stacked over layers, or tuples of L arrays `[B, K, H, S]` /
`[B, K, S, H]` for unrolled layers. Both attention matmuls of a decode step
then read the cache in place (scores contract the keys' H rows, the output
the values' S rows); slot `s` of
every row holds the token fed at decoding time step `s`, so all rows advance
together. Rows are left padded: `valid_BxS` marks which
slots hold real tokens, and `index` is the next slot to write. A token's RoPE
position is the number of real tokens before it in its row, so left padding
does not shift positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ram_jax.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values, slot validity and the write index."""

    k_LxBxKxHxS: jax.Array | tuple[jax.Array, ...]
    v_LxBxKxSxH: jax.Array | tuple[jax.Array, ...]
    valid_BxS: jax.Array
    index: jax.Array

    @property
    def per_layer(self) -> bool:
        """Keys and values are tuples of L arrays (unrolled layers)."""
        return isinstance(self.k_LxBxKxHxS, (tuple, list))

    @property
    def max_length(self) -> int:
        return self.valid_BxS.shape[1]

    def lengths(self) -> jax.Array:
        """Real tokens held per row, shape [B]."""
        return jnp.sum(self.valid_BxS, axis=-1, dtype=jnp.int32)


def init_cache(
    config: ModelConfig, batch: int, max_length: int, dtype=None, *, per_layer: bool = False
) -> KVCache:
    """An empty cache for `batch` rows and `max_length` slots (compute dtype by default).

    `per_layer=True` holds one keys and one values array per layer, for params from
    `transformer.unstack_layers`.
    """
    k_shape = (config.num_layers, batch, config.num_kv_heads, config.head_dim, max_length)
    v_shape = (config.num_layers, batch, config.num_kv_heads, max_length, config.head_dim)
    dtype = dtype or config.jnp_dtype
    if per_layer:
        k = tuple(jnp.zeros(k_shape[1:], dtype) for _ in range(config.num_layers))
        v = tuple(jnp.zeros(v_shape[1:], dtype) for _ in range(config.num_layers))
    else:
        k, v = jnp.zeros(k_shape, dtype), jnp.zeros(v_shape, dtype)
    return KVCache(
        k_LxBxKxHxS=k,
        v_LxBxKxSxH=v,
        valid_BxS=jnp.zeros((batch, max_length), bool),
        index=jnp.zeros((), jnp.int32),
    )


def write_layer(kv, layer, new_k_BxKxHxT, new_v_BxKxTxH):
    """Writes one layer's block at the cache index; returns `(keys_BxKxHxS, values_BxKxSxH, kv)`.

    `kv` is `(keys, values, index)` of either layout: the layer's own arrays
    (unrolled layers, `layer` None) or the stacked `[L, ...]` arrays with
    `layer` the index into them. Attention sees one shape either way.
    """
    k_all, v_all, index = kv
    at = () if layer is None else (layer,)
    lead = (lambda x: x) if layer is None else (lambda x: x[None])
    k_all = jax.lax.dynamic_update_slice(
        k_all, lead(new_k_BxKxHxT).astype(k_all.dtype), (*at, 0, 0, 0, index)
    )
    v_all = jax.lax.dynamic_update_slice(
        v_all, lead(new_v_BxKxTxH).astype(v_all.dtype), (*at, 0, 0, index, 0)
    )
    if layer is None:
        return k_all, v_all, (k_all, v_all, index)
    keys = jax.lax.dynamic_index_in_dim(k_all, layer, keepdims=False)
    values = jax.lax.dynamic_index_in_dim(v_all, layer, keepdims=False)
    return keys, values, (k_all, v_all, index)


def positions_from_mask(mask_BxT: jax.Array, offset_B: jax.Array | None = None) -> jax.Array:
    """RoPE positions for a left-padded block: real tokens count up from `offset_B`."""
    positions = jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1
    if offset_B is not None:
        positions = positions + offset_B[:, None]
    return jnp.maximum(positions, 0)
