"""Streaming decoding: tokens reach the host in chunks as they are produced.

The first call prefills both models and emits one token (so time to first
token is one prefill of each model plus the sampling rule); every later call
runs a jitted `lax.scan` of `chunk` steps on the carried `DecodeState`, which is
donated between calls (the params are not). Keys are per row and step exactly
as in `decode.decode`, so a stream yields the same tokens as `decode.decode`
with the same row keys. The stream ends early once every row is done.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from ram_jax.decoding import batching
from ram_jax.decoding import decoder as D
from ram_jax.decoding import sampling as S
from ram_jax.models.config import ModelConfig

_MODEL = ("p_config", "q_config", "vocab_size")
_EMIT = ("sampling", "eos_ids", "pad_id")


@functools.partial(jax.jit, static_argnames=_MODEL + _EMIT + ("slots", "unroll_layers"))
def _start(
    p_params, q_params, tokens_BxT, mask_BxT, row_keys_B, *, slots, unroll_layers=None, **static
):
    model = {k: static[k] for k in _MODEL}
    emit = {k: static[k] for k in _EMIT}
    p_params, q_params = D.arrange_layers(p_params, q_params, unroll_layers)
    state = D.prefill(
        p_params,
        q_params,
        tokens_BxT,
        mask_BxT,
        sampling=emit["sampling"],
        max_new_tokens=1,
        slots=slots,
        **model,
    )
    # The first token comes from the prefill logits alone: no model step before it.
    state, first = D.emit(state, D.step_keys(row_keys_B, 0, 1)[0], **emit)
    return state, D.leading(first)


@functools.partial(jax.jit, static_argnames=_MODEL + _EMIT + ("chunk",), donate_argnames=("state",))
def _continue(state, p_params, q_params, row_keys_B, start, *, chunk, **static):
    model = {k: static[k] for k in _MODEL}
    emit = {k: static[k] for k in _EMIT}
    keys_RxB = D.step_keys(row_keys_B, start, chunk)
    cache = state.p_cache if state.p_cache is not None else state.q_cache
    p_params, q_params = D.arrange_layers(p_params, q_params, cache.per_layer)
    return D.run_steps(state, p_params, q_params, keys_RxB, **model, **emit)


def stream(
    p_params,
    p_config: ModelConfig | None,
    tokens_BxT: np.ndarray,
    mask_BxT: np.ndarray,
    row_keys_B: jax.Array,
    sampling: S.SamplingConfig,
    *,
    max_new_tokens: int,
    vocab_size: int,
    q_params=None,
    q_config: ModelConfig | None = None,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    chunk: int = 16,
    unroll_layers: bool | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields decoded chunks of a left-padded batch as numpy dicts.

    Each chunk holds `tokens`, `logprobs_p`, `logprobs_q` (when that model
    runs), `aligner_branch` and `live` (row not yet finished before the
    step), each `[B, steps]`: the first chunk has 1 step, later ones up to
    `chunk`; together exactly `max_new_tokens` steps unless every row finished
    earlier. `seq_sir` cannot stream (it resamples whole responses).
    `unroll_layers` is `decode.decode`'s layer layout; pass params from
    `decode.arrange_layers` to skip rearranging them per stream.
    """
    if sampling.mode == "seq_sir":
        raise ValueError("mode 'seq_sir' cannot stream: it resamples finished responses.")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1.")
    D.check_models(sampling, p_config, q_config, vocab_size)
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    if sampling.mode != "sir":
        sampling = sampling.replace(num_candidates=1)
    rest = -(-(max_new_tokens - 1) // chunk) * chunk
    static = dict(
        p_config=p_config,
        q_config=q_config,
        vocab_size=vocab_size,
        sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids),
        pad_id=int(pad_id),
    )
    slots = tokens_BxT.shape[1] + 1 + rest
    # Once per stream, not per chunk (a no-op for params already arranged).
    p_params, q_params = D.arrange_layers(p_params, q_params, unroll_layers)
    state, out = _start(
        p_params,
        q_params,
        tokens_BxT,
        mask_BxT,
        row_keys_B,
        slots=slots,
        unroll_layers=unroll_layers,
        **static,
    )
    emitted = 0
    while True:
        host = _to_host(out, max_new_tokens - emitted)
        emitted += host["tokens"].shape[1]
        yield host
        if emitted >= max_new_tokens or not np.any(np.asarray(state.done_B) == 0):
            return
        state, out = _continue(
            state, p_params, q_params, row_keys_B, emitted, chunk=chunk, **static
        )


def _to_host(out: dict, limit: int) -> dict[str, np.ndarray]:
    names = dict(
        tokens="tokens",
        logprobs_p="logprobs_p",
        logprobs_q="logprobs_q",
        aligner_branch="branch",
        live="live",
    )
    return {
        name: np.asarray(out[key]).T[:, :limit]
        for name, key in names.items()
        if out[key] is not None
    }


def stream_prompts(
    p_params,
    p_config: ModelConfig | None,
    prompts: Sequence[Sequence[int]],
    sampling: S.SamplingConfig,
    *,
    key: jax.Array,
    max_new_tokens: int,
    vocab_size: int,
    min_bucket: int = 16,
    **kwargs,
) -> Iterator[dict[str, np.ndarray]]:
    """`stream` over prompt token lists (validated, bucketed; row keys `split(key, B)`)."""
    configs = [c for c in (p_config, kwargs.get("q_config")) if c is not None]
    batching.check_prompts(prompts, max_new_tokens, configs, vocab_size)
    length = batching.bucket_length(max(len(p) for p in prompts), min_bucket)
    tokens_BxT, mask_BxT = batching.left_pad(prompts, length, kwargs.get("pad_id", 0))
    row_keys = jax.random.split(key, len(prompts))
    yield from stream(
        p_params,
        p_config,
        tokens_BxT,
        mask_BxT,
        row_keys,
        sampling,
        max_new_tokens=max_new_tokens,
        vocab_size=vocab_size,
        **kwargs,
    )
