"""Attention: one contract, four implementations, chosen per backend.

The decoder calls one of two functions per layer:

  self_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxT)
      a block attending causally to itself (a forward without a cache: training,
      scoring); `mask_BxT` marks real tokens (left and/or right padding).
  cached_attention(q_BxTxNxH, keys_BxKxHxS, values_BxKxSxH, mask_BxTxS)
      a block (a prefill, or one decode step) attending to a KV cache in its
      layout (`ram_jax.models.cache`).

Implementations (`IMPLEMENTATIONS`):

  naive   einsums and a float32 softmax over a materialised [B, N, T, S] score
          tensor. The reference every other path is tested against, and the
          fastest on CPU (a decode step's contractions run as plain batched matmuls).
  xla     `jax.nn.dot_product_attention(implementation='xla')`: the same math in
          JAX's own op (scores still materialised).
  cudnn   `jax.nn.dot_product_attention(implementation='cudnn')`: cuDNN flash
          attention on NVIDIA GPUs (bf16/fp16 compute, head dim a multiple of 8,
          at most 128). It keeps no T x S tensor: per query only the output and
          a float32 log-sum-exp. A block over itself: each row is rotated so its
          real tokens come first, then cuDNN's padding-causal mask (per-row
          lengths) applies, so each row's real tokens must be one contiguous run
          (left and/or right padding, as every ram_jax batch is). Over a cache: the
          boolean mask is passed on (cuDNN adds it as a [B, 1, T, S] bias).
  splash  the Pallas TPU splash-attention kernel
          (`jax.experimental.pallas.ops.tpu.splash_attention`): causal mask in the
          kernel, padding as segment ids (1 real, 0 padding), so any padding is
          exact; T must be a multiple of 128. On CPU it runs in Pallas interpret
          mode (for tests: slow). Under a context mesh (`jax.set_mesh`) it runs per
          shard through `jax.shard_map` (batch over data x fsdp, heads over tensor).

'auto' picks per backend, at trace time: CPU xla for a block over itself,
naive over a cache; GPU cudnn where its
conditions hold (else xla), xla for a decode step (T = 1: its scores are
O(S) anyway); TPU splash for a block over itself with T a multiple of 128,
else xla. The memory plan (`ram_jax.planning.memory`) follows the same choice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ram_jax.sharding import BATCH_AXES

IMPLEMENTATIONS = ("auto", "naive", "xla", "cudnn", "splash")
SPLASH_BLOCKS = (512, 256, 128)  # kernel tile sizes tried, largest first; T must divide one


def _cudnn_problem(dtype, head_dim: int) -> str | None:
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"compute dtype {jnp.dtype(dtype).name} (cuDNN needs bfloat16 or float16)"
    if head_dim % 8 or head_dim > 128:
        return f"head_dim {head_dim} (cuDNN needs a multiple of 8, at most 128)"
    return None


def resolve(
    implementation: str, *, cached: bool, t: int, dtype, head_dim: int, backend: str | None = None
) -> str:
    """The implementation a call runs: 'auto' per backend; an explicit one checked here.

    Raises ValueError naming the problem when an explicit choice cannot run.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention={implementation!r}: choose one of {IMPLEMENTATIONS}.")
    backend = backend or jax.default_backend()
    if implementation == "auto":
        if backend == "gpu":
            fused = t > 1 and _cudnn_problem(dtype, head_dim) is None
            return "cudnn" if fused else "xla"
        if backend == "tpu":
            return "splash" if not cached and t % SPLASH_BLOCKS[-1] == 0 else "xla"
        # CPU: a training step ran 17% faster through xla than naive (fewer copies); a
        # decode step keeps naive's plain batched matmuls over the cache layout.
        return "naive" if cached else "xla"
    if implementation == "cudnn":
        if backend != "gpu":
            raise ValueError(
                f"attention='cudnn' needs an NVIDIA GPU, but the backend is {backend!r}; "
                "use 'auto' (or 'naive' / 'xla')."
            )
        problem = _cudnn_problem(dtype, head_dim)
        if problem:
            raise ValueError(f"attention='cudnn' cannot run with {problem}; use 'auto' or 'xla'.")
    if implementation == "splash":
        if backend == "gpu":
            raise ValueError("attention='splash' is a TPU kernel; on GPU use 'auto' or 'cudnn'.")
        if cached:
            raise ValueError(
                "attention='splash' covers a block over itself (no cache); a cached prefill "
                "or decode step runs with 'xla' (what 'auto' picks on TPU)."
            )
        if t % SPLASH_BLOCKS[-1]:
            raise ValueError(
                f"attention='splash' needs a block length that is a multiple of "
                f"{SPLASH_BLOCKS[-1]}, got {t}; pad the batch or use 'auto'."
            )
    return implementation


def _f32_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`einsum` with float32 results (attention scores) for any input dtype.

    XLA on CPU lacks some bf16 x bf16 -> f32 dots; there the operands are cast
    first, which gives the same numbers (bf16 products are exact in float32).
    """
    if jax.default_backend() == "cpu":
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def naive(q_BxTxNxH, keys_BxKxHxS, values_BxKxSxH, mask_BxTxS) -> jax.Array:
    """The reference: float32 scores and softmax, probabilities in the compute dtype."""
    b, t, n, h = q_BxTxNxH.shape
    k = keys_BxKxHxS.shape[1]
    keys_BxKxHxS = keys_BxKxHxS.astype(q_BxTxNxH.dtype)
    values_BxKxSxH = values_BxKxSxH.astype(q_BxTxNxH.dtype)
    if t == 1:
        # A decode step: without the unit T axis both contractions are plain
        # batched matmuls over (B, K) that XLA on CPU runs fast.
        queries = q_BxTxNxH.reshape(b, k, n // k, h)
        mask = mask_BxTxS[:, 0, None, None]
        score_spec, out_spec = "bkgh,bkhs->bkgs", "bkgs,bksh->bkgh"
    else:
        queries = q_BxTxNxH.reshape(b, t, k, n // k, h)
        mask = mask_BxTxS[:, None, None]
        score_spec, out_spec = "btkgh,bkhs->bkgts", "bkgts,bksh->btkgh"
    scores = _f32_einsum(score_spec, queries, keys_BxKxHxS) * (h**-0.5)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q_BxTxNxH.dtype)
    return jnp.einsum(out_spec, probs, values_BxKxSxH).reshape(b, t, n, h)


def _rotate_rows(x_BxTx, shift_B):
    """`out[b, t] = x[b, (t + shift[b]) % T]`: per-row rotation along T."""
    t = x_BxTx.shape[1]
    index = (jnp.arange(t)[None] + shift_B[:, None]) % t
    index = index.reshape(index.shape + (1,) * (x_BxTx.ndim - 2))
    return jnp.take_along_axis(x_BxTx, index, axis=1)


def padding_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxT, *, implementation="cudnn"):
    """cuDNN's self-attention: rows rotated to put real tokens first, per-row lengths.

    Each row's real tokens must be one contiguous run. `implementation='xla'`
    runs the same rotation and length masks through XLA on any backend (tests).
    """
    # Attention of a real query depends only on the set of real (key, value) pairs
    # before it (RoPE is already applied), so rotating each row until its real tokens
    # come first, then a padding-causal mask, is exact for contiguous rows.
    start_B = jnp.argmax(mask_BxT, axis=1).astype(jnp.int32)
    lengths_B = jnp.sum(mask_BxT, axis=1, dtype=jnp.int32)
    q, k, v = (_rotate_rows(x, start_B) for x in (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH))
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        is_causal=True,
        query_seq_lengths=lengths_B,
        key_value_seq_lengths=lengths_B,
        implementation=implementation,
    )
    out = _rotate_rows(out, -start_B)
    # cuDNN leaves padded query rows undefined; padding must stay finite downstream.
    return jnp.where(mask_BxT[:, :, None, None], out, 0).astype(q_BxTxNxH.dtype)


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, t: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = next(b for b in SPLASH_BLOCKS if t % b == 0)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(heads)])
    kernel = sk.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )
    return kernel, sk.SegmentIds


def _splash_local(q_BxNxTxH, k_BxKxTxH, v_BxKxTxH, segments_BxT, *, interpret: bool):
    kernel, segment_ids = _splash_kernel(q_BxNxTxH.shape[1], q_BxNxTxH.shape[2], interpret)
    one = lambda q, k, v, s: kernel(q, k, v, segment_ids=segment_ids(q=s, kv=s))
    return jax.vmap(one)(q_BxNxTxH, k_BxKxTxH, v_BxKxTxH, segments_BxT)


def _splash_self(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxT):
    b, _, n, h = q_BxTxNxH.shape
    kv_heads = k_BxTxKxH.shape[2]
    # The kernel does not scale the queries; it computes in the inputs' dtype.
    q = (q_BxTxNxH * jnp.asarray(h**-0.5, q_BxTxNxH.dtype)).transpose(0, 2, 1, 3)
    k, v = k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3)
    segments = mask_BxT.astype(jnp.int32)
    local = functools.partial(_splash_local, interpret=jax.default_backend() != "tpu")
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        # A Pallas kernel has no partitioning rule: run it per shard, batch over
        # (data, fsdp) and heads over tensor where the sizes divide.
        rows = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
        rows = rows if rows and b % int(np.prod([mesh.shape[a] for a in rows])) == 0 else None
        tensor = mesh.shape.get("tensor", 1)
        heads = "tensor" if tensor > 1 and n % tensor == 0 and kv_heads % tensor == 0 else None
        spec = P(rows, heads, None, None)
        local = jax.shard_map(
            local, in_specs=(spec, spec, spec, P(rows, None)), out_specs=spec, check_vma=False
        )
    return local(q, k, v, segments).transpose(0, 2, 1, 3).astype(q_BxTxNxH.dtype)


def self_attention(
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxT, *, implementation: str = "auto"
) -> jax.Array:
    """Causal attention of a block over itself; `mask_BxT` marks real tokens.

    Outputs at padding positions are finite but meaningless (each path differs).
    """
    t, h = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3]
    impl = resolve(implementation, cached=False, t=t, dtype=q_BxTxNxH.dtype, head_dim=h)
    if impl == "cudnn":
        return padding_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxT)
    if impl == "splash":
        return _splash_self(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxT)
    if impl == "xla":
        return jax.nn.dot_product_attention(
            q_BxTxNxH,
            k_BxTxKxH,
            v_BxTxKxH,
            mask=mask_BxT[:, None, None, :],
            is_causal=True,
            implementation="xla",
        )
    causal_BxTxT = jnp.tril(jnp.ones((t, t), bool))[None] & mask_BxT[:, None, :]
    return naive(
        q_BxTxNxH, k_BxTxKxH.transpose(0, 2, 3, 1), v_BxTxKxH.transpose(0, 2, 1, 3), causal_BxTxT
    )


def cached_attention(
    q_BxTxNxH, keys_BxKxHxS, values_BxKxSxH, mask_BxTxS, *, implementation: str = "auto"
) -> jax.Array:
    """A block over a KV cache (its layout); `mask_BxTxS` says which slots each query sees."""
    t, h = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3]
    impl = resolve(implementation, cached=True, t=t, dtype=q_BxTxNxH.dtype, head_dim=h)
    if impl == "naive":
        return naive(q_BxTxNxH, keys_BxKxHxS, values_BxKxSxH, mask_BxTxS)
    keys = keys_BxKxHxS.astype(q_BxTxNxH.dtype).transpose(0, 3, 1, 2)
    values = values_BxKxSxH.astype(q_BxTxNxH.dtype).transpose(0, 2, 1, 3)
    return jax.nn.dot_product_attention(
        q_BxTxNxH, keys, values, mask=mask_BxTxS[:, None], implementation=impl
    )
