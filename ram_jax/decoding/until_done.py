"""`decode` as a `lax.while_loop` that exits once every row has emitted EOS.

The loop body is `decode`'s scan body (advance both models, then emit) with
the same per-row, per-step keys, so the output equals `decode`'s exactly; the
steps it skips would only have emitted `pad_id`. Use it when many batches
finish well before `max_new_tokens`; the scan in `decode` stays the reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ram_jax.decoding import sampling as S
from ram_jax.decoding.decoder import (
    STATIC,
    DecodeOutput,
    advance,
    arrange_layers,
    emit,
    prefill,
    stack_outputs,
    step_keys,
)
from ram_jax.models.config import ModelConfig


@functools.partial(jax.jit, static_argnames=STATIC)
def decode_until_done(
    p_params,
    q_params,
    tokens_BxT: jax.Array,
    mask_BxT: jax.Array,
    row_keys_B: jax.Array,
    *,
    p_config: ModelConfig | None,
    q_config: ModelConfig | None,
    sampling: S.SamplingConfig,
    max_new_tokens: int,
    vocab_size: int,
    eos_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    unroll_layers: bool | None = None,
) -> DecodeOutput:
    """`decode.decode` (same arguments and output) that stops when all rows are done."""
    p_params, q_params = arrange_layers(p_params, q_params, unroll_layers)
    n = max_new_tokens
    kw = dict(p_config=p_config, q_config=q_config, vocab_size=vocab_size)
    emit_kw = dict(sampling=sampling, eos_ids=eos_ids, pad_id=pad_id)
    state = prefill(
        p_params, q_params, tokens_BxT, mask_BxT, sampling=sampling, max_new_tokens=n, **kw
    )
    b = tokens_BxT.shape[0]
    zeros = lambda dtype: jnp.zeros((n, b), dtype)
    bufs = dict(
        tokens=jnp.full((n, b), pad_id, jnp.int32),
        logprobs_p=None if p_params is None else zeros(jnp.float32),
        logprobs_q=None if q_params is None else zeros(jnp.float32),
        branch=zeros(bool),
        live=zeros(bool),
    )

    def store(i, bufs, out):
        return {k: None if v is None else v.at[i].set(out[k]) for k, v in bufs.items()}

    def cond(carry):
        i, state, _ = carry
        return (i < n) & ~jnp.all(state.done_B)

    def body(carry):
        i, state, bufs = carry
        state = advance(state, p_params, q_params, **kw)
        state, out = emit(state, step_keys(row_keys_B, i, 1)[0], **emit_kw)
        return i + 1, state, store(i, bufs, out)

    state, first = emit(state, step_keys(row_keys_B, 0, 1)[0], **emit_kw)
    carry = (jnp.ones((), jnp.int32), state, store(0, bufs, first))
    _, _, bufs = jax.lax.while_loop(cond, body, carry)
    return stack_outputs([bufs])
