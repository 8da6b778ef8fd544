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

Per-row write positions (`init_cache(..., per_row=True)`, `index` of shape
`[B]`): each row writes at its own slot, and a row whose block holds no real
token is not advanced. A server's decode slots use this: a request prefilled
into a batch-1 cache is copied into one row (`put_row`) while the other rows
keep decoding at their own positions.
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
    def per_row(self) -> bool:
        """Each row has its own write index (`index` of shape `[B]`)."""
        return self.index.ndim == 1

    @property
    def max_length(self) -> int:
        return self.valid_BxS.shape[1]

    def lengths(self) -> jax.Array:
        """Real tokens held per row, shape [B]."""
        return jnp.sum(self.valid_BxS, axis=-1, dtype=jnp.int32)


def init_cache(
    config: ModelConfig,
    batch: int,
    max_length: int,
    dtype=None,
    *,
    per_layer: bool = False,
    per_row: bool = False,
) -> KVCache:
    """An empty cache for `batch` rows and `max_length` slots (compute dtype by default).

    `per_layer=True` holds one keys and one values array per layer, for params from
    `transformer.unstack_layers`. `per_row=True` gives every row its own write index.
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
        index=jnp.zeros((batch,) if per_row else (), jnp.int32),
    )


def with_row_index(cache: KVCache) -> KVCache:
    """The same cache with its shared write index copied to every row (`per_row`)."""
    if cache.per_row:
        return cache
    index_B = jnp.full((cache.valid_BxS.shape[0],), cache.index, jnp.int32)
    return dataclasses.replace(cache, index=index_B)


def put_row(cache: KVCache, rows: KVCache, at) -> KVCache:
    """`cache` (per row) with `rows`' rows written from row `at` on, whole (every slot)."""
    rows = with_row_index(rows)

    def put(x, new, axis):
        start = [0] * x.ndim
        start[axis] = at
        return jax.lax.dynamic_update_slice(x, new.astype(x.dtype), start)

    # Stacked keys / values carry layers first; per-layer arrays start with the batch.
    axis = 0 if cache.per_layer else 1
    kv = lambda a, b: (
        tuple(put(x, y, 0) for x, y in zip(a, b, strict=True))
        if cache.per_layer
        else put(a, b, axis)
    )
    return KVCache(
        k_LxBxKxHxS=kv(cache.k_LxBxKxHxS, rows.k_LxBxKxHxS),
        v_LxBxKxSxH=kv(cache.v_LxBxKxSxH, rows.v_LxBxKxSxH),
        valid_BxS=put(cache.valid_BxS, rows.valid_BxS, 0),
        index=put(cache.index, rows.index, 0),
    )


def _at_rows(x, new, index_B, axis):
    """`x` with row b's block `new[b]` written at `index_B[b]` along `axis` (of a row)."""

    def one(x_row, new_row, i):
        start = [0] * x_row.ndim
        start[axis] = i
        return jax.lax.dynamic_update_slice(x_row, new_row, start)

    return jax.vmap(one)(x, new, index_B)


def write_layer(kv, layer, new_k_BxKxHxT, new_v_BxKxTxH):
    """Writes one layer's block at the cache index; returns `(keys_BxKxHxS, values_BxKxSxH, kv)`.

    `kv` is `(keys, values, index)` of either layout: the layer's own arrays
    (unrolled layers, `layer` None) or the stacked `[L, ...]` arrays with
    `layer` the index into them. Attention sees one shape either way.
    """
    k_all, v_all, index = kv
    if index.ndim == 1:
        return _write_rows(kv, layer, new_k_BxKxHxT, new_v_BxKxTxH)
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


def _write_rows(kv, layer, new_k_BxKxHxT, new_v_BxKxTxH):
    """`write_layer` with a write index per row (`index_B`)."""
    k_all, v_all, index_B = kv
    if layer is None:
        keys = _at_rows(k_all, new_k_BxKxHxT.astype(k_all.dtype), index_B, 2)
        values = _at_rows(v_all, new_v_BxKxTxH.astype(v_all.dtype), index_B, 1)
        return keys, values, (keys, values, index_B)
    keys = _at_rows(k_all[layer], new_k_BxKxHxT.astype(k_all.dtype), index_B, 2)
    values = _at_rows(v_all[layer], new_v_BxKxTxH.astype(v_all.dtype), index_B, 1)
    k_all = jax.lax.dynamic_update_index_in_dim(k_all, keys, layer, 0)
    v_all = jax.lax.dynamic_update_index_in_dim(v_all, values, layer, 0)
    return keys, values, (k_all, v_all, index_B)


def write_valid(cache: KVCache, mask_BxT: jax.Array) -> jax.Array:
    """`valid_BxS` with the block's real tokens marked at the write index (shared or per row)."""
    if cache.per_row:
        return _at_rows(cache.valid_BxS, mask_BxT, cache.index, 0)
    return jax.lax.dynamic_update_slice(cache.valid_BxS, mask_BxT, (0, cache.index))


def query_slots(cache: KVCache, t: int) -> jax.Array:
    """The slot of each query of a T-token block, `[B or 1, T]`."""
    index = cache.index[:, None] if cache.per_row else cache.index[None, None]
    return index + jnp.arange(t)[None, :]


def next_index(cache: KVCache, mask_BxT: jax.Array) -> jax.Array:
    """The write index after a block: shared, + T; per row, + T where the row has a real token."""
    t = mask_BxT.shape[1]
    if cache.per_row:
        return cache.index + t * jnp.any(mask_BxT, axis=-1).astype(jnp.int32)
    return cache.index + t


def positions_from_mask(mask_BxT: jax.Array, offset_B: jax.Array | None = None) -> jax.Array:
    """RoPE positions for a left-padded block: real tokens count up from `offset_B`."""
    positions = jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1
    if offset_B is not None:
        positions = positions + offset_B[:, None]
    return jnp.maximum(positions, 0)
