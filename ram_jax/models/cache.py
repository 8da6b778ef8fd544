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


def positions_from_mask(mask_BxT: jax.Array, offset_B: jax.Array | None = None) -> jax.Array:
    """RoPE positions for a left-padded block: real tokens count up from `offset_B`."""
    positions = jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1
    if offset_B is not None:
        positions = positions + offset_B[:, None]
    return jnp.maximum(positions, 0)
