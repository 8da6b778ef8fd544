"""What one decode step of a model pair can cost at least on this machine.

Used by `bench_decode.py`: FLOPs per token, the float32 matmul peak, the time
of a step's weight matmuls (each at its best measured speed) and the
streaming read bandwidth that bounds reading the KV caches.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from ram_jax.models.config import ModelConfig
from ram_jax.models.transformer import abstract_params, count_params


def flops_per_token(config: ModelConfig, context: int) -> float:
    """2 x matmul parameters (incl. the LM head, tied or not) + attention over `context`."""
    params = count_params(abstract_params(config))
    embed = config.vocab_size * config.hidden_size
    matmul = params - (0 if config.tie_embeddings else embed)  # the tied head is a matmul
    attention = 4 * config.num_layers * context * config.num_heads * config.head_dim
    return 2.0 * matmul + attention


def matmul_time(m: int, k: int, n: int, flops=2e8, repeats=5) -> float:
    """Best seconds of one jitted float32 `[m, k] @ [k, n]`, timed over ~`flops` per repeat."""
    a = jnp.ones((m, k), jnp.float32)
    b = jnp.ones((k, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    reps = max(1, int(flops / (2 * m * k * n)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def matmul_peak(shapes) -> float:
    """Best FLOP/s over `shapes` (m, k, n)."""
    return max(2 * m * k * n / matmul_time(m, k, n, flops=2e9) for m, k, n in shapes)


def step_matmuls(config: ModelConfig, batch: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every weight matmul in one decode step of `batch` rows."""
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    layer = [(d, q, 1), (d, kv, 2), (q, d, 1), (d, f, 2), (f, d, 1)]
    out = [(batch, k, n, c * config.num_layers) for k, n, c in layer]
    return out + [(batch, d, config.vocab_size, 1)]


def matmul_seconds(shapes) -> float:
    """Seconds for one pass over `shapes` (m, k, n, count), each timed alone at its best."""
    return sum(count * matmul_time(m, k, n) for m, k, n, count in shapes)


def read_bandwidth(nbytes=256 << 20, repeats=5) -> float:
    """Bytes/s of a jitted sum over a large float32 array (a pure streaming read)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def cache_bytes(config: ModelConfig, batch: int, context: int) -> int:
    """Float32 keys and values one decode step reads at `context` slots."""
    return 2 * 4 * config.num_layers * batch * config.num_kv_heads * context * config.head_dim
