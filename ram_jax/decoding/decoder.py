"""The RAM decoder core: prefill P and the aligners once, then step them together.

`start` prefills every model into a fresh KV cache; `advance` then runs up
to a given number of steps in one `lax.while_loop` (feed the last token to
every model, draw the next), leaving early once every row is done. Its first
call draws the first token straight from the prefill logits, so the first
token costs one prefill of each model and one draw. The carry (`DecodeState`) holds every
model's cache and next-token logits, the last tokens, the seen ids
(repetition penalty) and, per row: the done flag, the number of tokens
emitted, the PRNG key and the `RowSettings`. The token of row b at its own
step i uses `fold_in(row_key[b], i)`, so a row's tokens depend only on its
prompt, key and settings: never on its batch neighbours, the batch size or
the chunking. Nothing in the carry is shared across rows except the caches'
write index (all rows of a batch advance together), unless the caches
have per-row positions: then `empty` and `insert` run a fixed set of slots
that requests join and leave while the others decode (a server's batch).

Both functions are jitted on the static structure only (model configs, mode,
vocabulary, cache slots, chunk), so any mix of per-row settings runs on one
compiled program, and the mode's rule is compiled once (in `advance`).
Params are never donated; `advance` donates the state.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ram_jax.decoding import processors as P
from ram_jax.decoding.modes import Logits, Mode
from ram_jax.decoding.sampling import RowSettings, SamplingParams
from ram_jax.models.cache import KVCache, init_cache, put_row
from ram_jax.models.transformer import (
    forward,
    fuse_projections,
    has_unrolled_layers,
    unstack_layers,
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """The carry. Model entries are tuples: the proposal first, then each aligner
    (None for an absent proposal)."""

    caches: tuple[KVCache | None, ...]
    logits: tuple[jax.Array | None, ...]
    seen_BxV: jax.Array
    last_B: jax.Array
    done_B: jax.Array
    steps_B: jax.Array
    row_keys_B: jax.Array
    rows: RowSettings


def arrange_layers(params, unroll_layers: bool | None = None):
    """Model params (a pytree, or a tuple of them) in the decoder's layer layout.

    `unroll_layers=None` unrolls on CPU, where a matmul on a slice of stacked
    weights or caches first copies the slice (`transformer.unstack_layers`),
    and keeps the layer scan elsewhere (compile time, no second weight copy).
    Unrolled layers also get fused q/k/v and gate/up kernels
    (`transformer.fuse_projections`: fewer, wider matmuls per step; sharded
    layouts elsewhere keep their separate kernels). Params already arranged
    pass through. Call it once, outside `jit`, and drop the original params,
    to pay those copies and hold their memory once.
    """
    if unroll_layers is None:
        unroll_layers = jax.default_backend() == "cpu"
    if isinstance(params, tuple):
        return tuple(arrange_layers(p, unroll_layers) for p in params)
    if params is None or not unroll_layers:
        return params
    return unstack_layers(fuse_projections(params))


def _slice(logits_Bx1xV: jax.Array, vocab_size: int) -> jax.Array:
    # Padded embedding rows (ids >= tokenizer length) are dropped before any rule.
    return logits_Bx1xV[:, 0, :vocab_size]


def prefill(params, tokens_BxT, mask_BxT, row_keys_B, rows, *, configs, vocab_size, slots):
    """Runs the prompts through every model into fresh caches of `slots` slots."""
    b = tokens_BxT.shape[0]
    caches, logits = [], []
    for model_params, config in zip(params, configs, strict=True):
        if model_params is None:
            caches.append(None)
            logits.append(None)
            continue
        cache = init_cache(config, b, slots, per_layer=has_unrolled_layers(model_params))
        out, cache = forward(
            model_params, tokens_BxT, config, mask_BxT=mask_BxT, cache=cache, last_only=True
        )
        caches.append(cache)
        logits.append(_slice(out, vocab_size))
    rows_BxT = jnp.broadcast_to(jnp.arange(b)[:, None], tokens_BxT.shape)
    ids = jnp.where(mask_BxT, tokens_BxT, vocab_size)  # out of range: dropped
    seen = jnp.zeros((b, vocab_size), bool).at[rows_BxT, ids].set(True, mode="drop")
    return DecodeState(
        caches=tuple(caches),
        logits=tuple(logits),
        seen_BxV=seen,
        last_B=jnp.zeros((b,), jnp.int32),
        done_B=jnp.zeros((b,), bool),
        steps_B=jnp.zeros((b,), jnp.int32),
        row_keys_B=row_keys_B,
        rows=rows,
    )


def emit(state: DecodeState, mode: Mode, pad_id: int):
    """Draws the next token of every row; returns the new state and that step's outputs.

    Outputs: `tokens` (pad_id on rows already done), `logprobs_p` / `logprobs_q`
    (each model's own `log_softmax` of the token at T = 1; `[B, A]` for the
    aligners; 0 on done rows), `branch` (the aligner shaped the token), `live`
    (the row was not done before this step) and `done` (after it).
    """
    keys_B = jax.vmap(jax.random.fold_in)(state.row_keys_B, state.steps_B)
    p_BxV, qs_BxV = state.logits[0], tuple(state.logits[1:])
    x = Logits(p_BxV=p_BxV, qs_BxV=qs_BxV, seen_BxV=state.seen_BxV)
    done_B = state.done_B
    # Done rows choose no entry of a per-row mode table, so none is computed for them.
    rows = dataclasses.replace(state.rows, mode_B=jnp.where(done_B, -1, state.rows.mode_B))
    tokens_B, shaped_B = mode.draw(keys_B, x, rows)
    tokens_B = jnp.where(done_B, pad_id, tokens_B)
    logprob = lambda logits: jnp.where(done_B, 0.0, P.token_logprobs(logits, tokens_B))
    steps_B = state.steps_B + (~done_B).astype(jnp.int32)
    new_done_B = done_B | state.rows.is_stop(tokens_B) | (steps_B >= state.rows.max_new_tokens_B)
    outputs = dict(
        tokens=tokens_B,
        logprobs_p=None if p_BxV is None else logprob(p_BxV),
        logprobs_q=jnp.stack([logprob(q) for q in qs_BxV], axis=-1) if qs_BxV else None,
        branch=shaped_B & ~done_B,
        live=~done_B,
        done=new_done_B,
    )
    seen = state.seen_BxV.at[jnp.arange(tokens_B.shape[0]), tokens_B].set(True)
    state = dataclasses.replace(
        state, seen_BxV=seen, last_B=tokens_B, done_B=new_done_B, steps_B=steps_B
    )
    return state, outputs


def _fed(state: DecodeState) -> jax.Array:
    """Rows holding an emitted token not yet fed to the models."""
    return ~state.done_B & (state.steps_B > 0)


def feed(state: DecodeState, params, *, configs, vocab_size) -> DecodeState:
    """Feeds the last tokens through every model (one cached step).

    Only rows with a token to feed are written (`_fed`); with per-row cache
    positions the others keep their position and their logits, so a row just
    inserted into a running batch (`insert`) keeps its prefill logits.
    """
    tokens_Bx1 = state.last_B[:, None]
    fed_Bx1 = _fed(state)[:, None]
    caches, logits = list(state.caches), list(state.logits)
    for i, (model_params, config) in enumerate(zip(params, configs, strict=True)):
        if model_params is not None:
            out, caches[i] = forward(
                model_params, tokens_Bx1, config, mask_BxT=fed_Bx1, cache=caches[i]
            )
            new = _slice(out, vocab_size)
            logits[i] = jnp.where(fed_Bx1, new, logits[i]) if caches[i].per_row else new
    return dataclasses.replace(state, caches=tuple(caches), logits=tuple(logits))


_STATIC = ("configs", "vocab_size")


@functools.partial(jax.jit, static_argnames=_STATIC + ("slots",))
def start(params, tokens_BxT, mask_BxT, row_keys_B, rows, *, configs, vocab_size, slots):
    """Prefills every model: the state whose logits give each row's first token.

    Args:
      params: a tuple of parameter pytrees, the proposal first (None when
        absent), then each aligner; in any layer layout (`arrange_layers`).
        Never donated.
      tokens_BxT, mask_BxT: left-padded prompts; every row needs a real token.
      row_keys_B: one PRNG key per row. rows: the rows' `RowSettings`.
      configs: the models' `ModelConfig`s (static), aligned with `params`.
      vocab_size: tokenizer length; logits are sliced to it.
      slots: cache slots, at least the prompt length + the most new tokens - 1.
    """
    return prefill(
        params,
        tokens_BxT,
        mask_BxT,
        row_keys_B,
        rows,
        configs=configs,
        vocab_size=vocab_size,
        slots=slots,
    )


@functools.partial(
    jax.jit, static_argnames=_STATIC + ("mode", "pad_id", "chunk"), donate_argnames=("state",)
)
def advance(state, params, halt_B, limit, *, configs, mode, vocab_size, pad_id, chunk):
    """Up to `limit` <= `chunk` tokens per row, leaving once every row is done.

    Each step feeds the last token to every model (unless the logits are
    fresh from `start`), then draws the next, so no model step follows the
    last token and the first token comes straight from the prefill logits
    (`limit` 1 on the first call). `halt_B` marks rows to finish now (a stop
    string seen on the host). Returns `(state, outputs, steps)`: outputs are
    `[chunk, ...]` buffers of which the first `steps` are filled. `limit` is
    an argument, not a constant: one compiled program serves every call.
    """
    state = dataclasses.replace(state, done_B=state.done_B | halt_B)
    _, template = jax.eval_shape(lambda s: emit(s, mode, pad_id), state)
    bufs = jax.tree.map(lambda s: jnp.zeros((chunk, *s.shape), s.dtype), template)
    bufs["tokens"] = jnp.full_like(bufs["tokens"], pad_id)
    step = lambda s: feed(s, params, configs=configs, vocab_size=vocab_size)

    def cond(carry):
        i, state, _ = carry
        return (i < jnp.minimum(limit, chunk)) & ~jnp.all(state.done_B)

    def body(carry):
        i, state, bufs = carry
        # Rows that have emitted a token not yet fed: feed it (all rows step together).
        state = jax.lax.cond(jnp.any(_fed(state)), step, lambda s: s, state)
        state, out = emit(state, mode, pad_id)
        bufs = jax.tree.map(lambda buf, x: buf.at[i].set(x), bufs, out)
        return i + 1, state, bufs

    steps, state, bufs = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, bufs))
    return state, bufs, steps


def empty(params, *, configs, vocab_size, batch, slots, num_aligners, stop_width):
    """A state of `batch` free (done) rows whose caches have per-row positions.

    `insert` puts a request into a row; `advance` decodes the rows that hold one.
    Not jitted: called once per server.
    """
    caches = tuple(
        None
        if p is None
        else init_cache(c, batch, slots, per_layer=has_unrolled_layers(p), per_row=True)
        for p, c in zip(params, configs, strict=True)
    )
    logits = tuple(None if p is None else jnp.zeros((batch, vocab_size)) for p in params)
    rows = jax.tree.map(
        lambda x: jnp.repeat(jnp.asarray(x)[None], batch, axis=0),
        _one_row(num_aligners, stop_width),
    )
    return DecodeState(
        caches=caches,
        logits=logits,
        seen_BxV=jnp.zeros((batch, vocab_size), bool),
        last_B=jnp.zeros((batch,), jnp.int32),
        done_B=jnp.ones((batch,), bool),
        steps_B=jnp.zeros((batch,), jnp.int32),
        row_keys_B=jax.random.split(jax.random.key(0), batch),
        rows=rows,
    )


def _one_row(num_aligners, stop_width) -> RowSettings:
    one = RowSettings.stack([SamplingParams()], num_aligners, stop_width=stop_width)
    return jax.tree.map(lambda x: x[0], one)


@functools.partial(jax.jit, static_argnames=_STATIC + ("slots",), donate_argnames=("state",))
def insert(
    state, params, tokens_1xT, mask_1xT, row_keys_1, rows_1, at, *, configs, vocab_size, slots
):
    """Prefills one request (batch 1) and writes it into row `at` of a running state.

    The row's caches, logits, seen ids, key, settings and counters are all
    replaced, so nothing of the row's previous request remains; the next
    `advance` draws its first token from these prefill logits, exactly as
    after `start`. `slots` must be the state's cache slots. One compile per
    prompt length (bucket); `at` and everything else are arguments.
    """
    new = prefill(
        params,
        tokens_1xT,
        mask_1xT,
        row_keys_1,
        rows_1,
        configs=configs,
        vocab_size=vocab_size,
        slots=slots,
    )
    put = lambda big, small: big.at[at].set(small[0])
    caches = tuple(
        None if c is None else put_row(c, n, at)
        for c, n in zip(state.caches, new.caches, strict=True)
    )
    logits = tuple(
        None if x is None else put(x, y) for x, y in zip(state.logits, new.logits, strict=True)
    )
    return DecodeState(
        caches=caches,
        logits=logits,
        seen_BxV=put(state.seen_BxV, new.seen_BxV),
        last_B=put(state.last_B, new.last_B),
        done_B=put(state.done_B, new.done_B),
        steps_B=put(state.steps_B, new.steps_B),
        row_keys_B=put(state.row_keys_B, new.row_keys_B),
        rows=jax.tree.map(put, state.rows, new.rows),
    )
