"""The RAM decoder: prefill P and Q once, then one `lax.scan` stepping both.

The first token is drawn from the prefill's logits; then one `lax.scan` feeds
the last token to both models and draws the next. The scan carry
(`DecodeState`) holds both KV caches, both models' logits for the next
token, the last tokens, the set of seen ids (repetition penalty) and
per-row done flags; per-step keys travel as scan xs. The key of row b at step
i is `fold_in(row_keys[b], i)`, so a row's tokens depend only on its own key
and prompt, never on its batch neighbours, the batch size or chunking
(`ram_jax.decoding.stream`). After a row emits an EOS id it emits `pad_id` and its
log-probs stay 0.

`decode` is the jitted core on a padded batch; `generate` is the host entry
point (prompt token lists in, numpy arrays out) that validates, buckets prompt
lengths (one compile per batch, bucket and `max_new_tokens`), splits into
batches and implements `seq_sir`. The proposal's params are never donated.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ram_jax.decoding import batching, modes
from ram_jax.decoding import sampling as S
from ram_jax.models.cache import KVCache, init_cache
from ram_jax.models.config import ModelConfig
from ram_jax.models.transformer import forward, has_unrolled_layers, unstack_layers

STATIC = (
    "p_config",
    "q_config",
    "sampling",
    "max_new_tokens",
    "vocab_size",
    "eos_ids",
    "pad_id",
    "unroll_layers",
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """The scan carry. Entries of an absent model are None."""

    p_cache: KVCache | None
    q_cache: KVCache | None
    p_logits_BxV: jax.Array | None
    q_logits_BxV: jax.Array | None
    seen_BxV: jax.Array | None
    last_B: jax.Array
    done_B: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeOutput:
    """Per-token results; R = max_new_tokens (response tokens), so `[B, R]`.

    tokens_BxR: sampled ids; `pad_id` after a row's EOS.
    logprobs_p_BxR / logprobs_q_BxR: `log_softmax(logits)[token]` of P / Q at
      T = 1 (the models' own likelihoods, before any processor); 0 after EOS;
      None when that model was not run.
    aligner_branch_BxR: the aligner shaped the token (`par_kl`: the `par`
      branch was taken); False after EOS.
    lengths_B: generated tokens per row, the EOS included.
    """

    tokens_BxR: jax.Array
    logprobs_p_BxR: jax.Array | None
    logprobs_q_BxR: jax.Array | None
    aligner_branch_BxR: jax.Array
    lengths_B: jax.Array


def step_keys(row_keys_B: jax.Array, start, count: int) -> jax.Array:
    """Keys of steps `[start, start + count)` for every row, `[count, B]`."""
    steps = jnp.asarray(start, jnp.uint32) + jnp.arange(count, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys_B))(steps)


def arrange_layers(p_params, q_params, unroll_layers: bool | None):
    """Both models' params in the decoder's layer layout.

    `unroll_layers=None` unrolls on CPU, where a matmul on a slice of stacked
    weights or caches first copies the slice (`transformer.unstack_layers`),
    and keeps the layer scan elsewhere (compile time, no second weight copy).
    Params already unrolled pass through. The jitted decoders call this on
    what they get, which copies every layer's weights once per call; call it
    once yourself (outside `jit`, then drop the stacked params) to pay that
    copy, and hold the memory, only once.
    """
    if unroll_layers is None:
        unroll_layers = jax.default_backend() == "cpu"
    if not unroll_layers:
        return p_params, q_params
    return tuple(None if p is None else unstack_layers(p) for p in (p_params, q_params))


def _slice(logits_Bx1xV: jax.Array, vocab_size: int) -> jax.Array:
    # Padded embedding rows (ids >= tokenizer length) are dropped before any rule.
    return logits_Bx1xV[:, 0, :vocab_size]


def prefill(
    p_params,
    q_params,
    tokens_BxT,
    mask_BxT,
    *,
    p_config,
    q_config,
    sampling,
    max_new_tokens,
    vocab_size,
    slots=None,
) -> DecodeState:
    """Runs both prompts through both models into fresh caches of `slots` slots."""
    b, t = tokens_BxT.shape
    slots = slots or t + max_new_tokens
    out = {}
    for name, params, config in (("p", p_params, p_config), ("q", q_params, q_config)):
        if params is None:
            out[name] = (None, None)
            continue
        cache = init_cache(config, b, slots, per_layer=has_unrolled_layers(params))
        logits, cache = forward(
            params, tokens_BxT, config, mask_BxT=mask_BxT, cache=cache, last_only=True
        )
        out[name] = (cache, _slice(logits, vocab_size))
    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = jnp.zeros((b, vocab_size), bool)
        rows = jnp.broadcast_to(jnp.arange(b)[:, None], tokens_BxT.shape)
        ids = jnp.where(mask_BxT, tokens_BxT, vocab_size)  # out of range: dropped
        seen = seen.at[rows, ids].set(True, mode="drop")
    return DecodeState(
        p_cache=out["p"][0],
        q_cache=out["q"][0],
        p_logits_BxV=out["p"][1],
        q_logits_BxV=out["q"][1],
        seen_BxV=seen,
        last_B=jnp.zeros((b,), jnp.int32),
        done_B=jnp.zeros((b,), bool),
    )


def emit(state: DecodeState, keys_B, *, sampling, eos_ids, pad_id):
    """Draws the next token of every row from the state's logits."""
    penalty = functools.partial(
        S.repetition_penalty, seen_xV=state.seen_BxV, penalty=sampling.repetition_penalty
    )
    p = None if state.p_logits_BxV is None else penalty(state.p_logits_BxV)
    q = None if state.q_logits_BxV is None else penalty(state.q_logits_BxV)
    kl_B = None
    if sampling.mode == "par_kl":
        # The gate compares the models themselves, before any processor.
        kl_B = S.kl_divergence(state.p_logits_BxV, state.q_logits_BxV)
    tokens_B, branch_B = modes.next_token(keys_B, p, q, sampling, eos_ids, kl_B)
    done_B = state.done_B
    tokens_B = jnp.where(done_B, pad_id, tokens_B)
    logprob = lambda logits: (
        None if logits is None else jnp.where(done_B, 0.0, S.token_logprobs(logits, tokens_B))
    )
    outputs = dict(
        tokens=tokens_B,
        logprobs_p=logprob(state.p_logits_BxV),
        logprobs_q=logprob(state.q_logits_BxV),
        branch=branch_B & ~done_B,
        live=~done_B,
    )
    seen = state.seen_BxV
    if seen is not None:
        seen = seen.at[jnp.arange(seen.shape[0]), tokens_B].set(True)
    new_done = done_B | modes._is_eos(tokens_B, eos_ids)
    state = dataclasses.replace(state, seen_BxV=seen, last_B=tokens_B, done_B=new_done)
    return state, outputs


def advance(state: DecodeState, p_params, q_params, *, p_config, q_config, vocab_size):
    """Feeds the last tokens through both models (one cached step)."""
    tokens_Bx1 = state.last_B[:, None]
    changes = {}
    if p_params is not None:
        logits, cache = forward(p_params, tokens_Bx1, p_config, cache=state.p_cache)
        changes.update(p_cache=cache, p_logits_BxV=_slice(logits, vocab_size))
    if q_params is not None:
        logits, cache = forward(q_params, tokens_Bx1, q_config, cache=state.q_cache)
        changes.update(q_cache=cache, q_logits_BxV=_slice(logits, vocab_size))
    return dataclasses.replace(state, **changes)


def run_steps(
    state,
    p_params,
    q_params,
    keys_RxB,
    *,
    p_config,
    q_config,
    sampling,
    vocab_size,
    eos_ids,
    pad_id,
):
    """`lax.scan` of (advance, emit) over the leading axis of `keys_RxB`.

    `state` holds an emitted token not yet fed to the models (after the
    first `emit`); each step feeds it, then draws the next. Returns the final
    state (same kind) and the per-step outputs stacked on a leading axis.
    """

    def body(state, keys_B):
        state = advance(
            state, p_params, q_params, p_config=p_config, q_config=q_config, vocab_size=vocab_size
        )
        return emit(state, keys_B, sampling=sampling, eos_ids=eos_ids, pad_id=pad_id)

    return jax.lax.scan(body, state, keys_RxB)


def leading(outputs: dict) -> dict:
    """One step's outputs with the leading step axis of `run_steps`'s."""
    return jax.tree.map(lambda x: x[None], outputs)


def stack_outputs(steps: list[dict]) -> DecodeOutput:
    """A `DecodeOutput` from per-chunk scan outputs (each `[steps, B]`)."""

    def cat(name):
        if steps[0][name] is None:
            return None
        return jnp.concatenate([chunk[name] for chunk in steps], axis=0).T

    return DecodeOutput(
        tokens_BxR=cat("tokens"),
        logprobs_p_BxR=cat("logprobs_p"),
        logprobs_q_BxR=cat("logprobs_q"),
        aligner_branch_BxR=cat("branch"),
        lengths_B=jnp.sum(cat("live"), axis=1, dtype=jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=STATIC)
def decode(
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
    """Decodes a left-padded batch with proposal P and/or aligner Q (jitted).

    Args:
      p_params, q_params: parameter pytrees (None for an absent model; the
        mode must not need it). Never donated.
      tokens_BxT, mask_BxT: left-padded prompts; every row needs a real token.
      row_keys_B: one PRNG key per row.
      p_config, q_config: the models' configs (static).
      sampling: a `SamplingConfig` (static).
      max_new_tokens: R, steps to decode.
      vocab_size: tokenizer length; logits are sliced to it.
      eos_ids: ids that finish a row. pad_id: id emitted after that.
      unroll_layers: the layer layout (`arrange_layers`; default: unrolled
        on CPU). The tokens do not depend on it.

    Returns:
      A `DecodeOutput` (`seq_sir` rows are the proposals, not yet resampled).
    """
    p_params, q_params = arrange_layers(p_params, q_params, unroll_layers)
    kw = dict(p_config=p_config, q_config=q_config, vocab_size=vocab_size)
    state = prefill(
        p_params,
        q_params,
        tokens_BxT,
        mask_BxT,
        sampling=sampling,
        max_new_tokens=max_new_tokens,
        **kw,
    )
    keys_RxB = step_keys(row_keys_B, 0, max_new_tokens)
    # The first token comes straight from the prefill logits; every later step
    # feeds the last token, then draws (no model step after the last token).
    state, first = emit(state, keys_RxB[0], sampling=sampling, eos_ids=eos_ids, pad_id=pad_id)
    _, steps = run_steps(
        state,
        p_params,
        q_params,
        keys_RxB[1:],
        sampling=sampling,
        eos_ids=eos_ids,
        pad_id=pad_id,
        **kw,
    )
    return stack_outputs([leading(first), steps])


@functools.partial(jax.jit, static_argnames=("num_candidates",))
def _resample(
    prompt_keys_B, out: DecodeOutput, num_candidates: int
) -> tuple[DecodeOutput, jax.Array]:
    seq_logq_BxC = jnp.sum(out.logprobs_q_BxR, axis=1).reshape(-1, num_candidates)
    pick_B = modes.resample_sequences(prompt_keys_B, seq_logq_BxC)
    rows_B = jnp.arange(seq_logq_BxC.shape[0]) * num_candidates + pick_B
    return jax.tree.map(lambda x: x[rows_B], out), pick_B


def check_models(sampling, p_config, q_config, vocab_size):
    """Rejects a mode/model mismatch or a vocabulary larger than a model's."""
    if sampling.needs_proposal and p_config is None:
        raise ValueError(f"mode {sampling.mode!r} needs the proposal model; pass its params.")
    if sampling.needs_aligner and q_config is None:
        raise ValueError(
            f"mode {sampling.mode!r} needs an aligner; pass aligner params or use mode 'proposal'."
        )
    for name, config in (("proposal", p_config), ("aligner", q_config)):
        if config is not None and vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer length {vocab_size} exceeds the {name}'s {config.vocab_size} "
                "embedding rows; the tokenizer does not belong to this model."
            )


def generate(
    p_params,
    p_config: ModelConfig | None,
    prompts: Sequence[Sequence[int]],
    sampling: S.SamplingConfig,
    *,
    key: jax.Array,
    max_new_tokens: int,
    vocab_size: int,
    q_params=None,
    q_config: ModelConfig | None = None,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int | None = None,
    min_bucket: int = 16,
    unroll_layers: bool | None = None,
    prompt_keys: jax.Array | None = None,
) -> dict[str, np.ndarray]:
    """Decodes prompt token lists; returns numpy arrays, one row per prompt.

    Prompts are left padded to a power-of-two bucket and cut into batches of
    `batch_size` (default: all at once; the last batch is filled with copies of
    a prompt, dropped afterwards), so a stream of prompts compiles once per
    (batch, bucket, max_new_tokens). Prompt i has the key
    `prompt_keys[i]` (default `split(key, P)[i]`): its row decodes with it,
    or for `seq_sir` its N candidates with `split(prompt key, N)` and the
    resampling with `fold_in(prompt key, 0x5E9)`. So a prompt's output
    depends only on its own key, never on `batch_size` or its neighbours.

    Returns a dict with `tokens`, `logprobs_p`, `logprobs_q` (absent for a model
    not run), `aligner_branch`, `lengths` (each `[P, max_new_tokens]` or `[P]`),
    and for `seq_sir` `candidate` (the index of the chosen proposal).
    """
    check_models(sampling, p_config, q_config, vocab_size)
    configs = [c for c in (p_config, q_config) if c is not None]
    batching.check_prompts(prompts, max_new_tokens, configs, vocab_size)
    # Once per call, not per batch (a no-op for params already arranged).
    p_params, q_params = arrange_layers(p_params, q_params, unroll_layers)
    n = sampling.num_candidates if sampling.mode == "seq_sir" else 1
    rows = [p for p in prompts for _ in range(n)]
    if prompt_keys is None:
        prompt_keys = jax.random.split(key, len(prompts))
    elif len(prompt_keys) != len(prompts):
        raise ValueError(f"{len(prompt_keys)} prompt_keys for {len(prompts)} prompts.")
    row_keys = prompt_keys
    if sampling.mode == "seq_sir":
        row_keys = jax.vmap(lambda k: jax.random.split(k, n))(prompt_keys).reshape(-1)
        pick_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x5E9))(prompt_keys)
    width = (batch_size or len(prompts)) * n
    length = batching.bucket_length(max(len(p) for p in rows), min_bucket)
    # Fields a mode does not read must not split the compile cache.
    if sampling.mode != "sir":
        sampling = sampling.replace(num_candidates=1)
    kw = dict(
        p_config=p_config,
        q_config=q_config,
        sampling=sampling,
        max_new_tokens=max_new_tokens,
        vocab_size=vocab_size,
        eos_ids=tuple(int(e) for e in eos_ids),
        pad_id=int(pad_id),
        unroll_layers=unroll_layers,
    )
    results = []
    for start in range(0, len(rows), width):
        chunk = rows[start : start + width]
        tokens_BxT, mask_BxT = batching.left_pad(chunk, length, pad_id, rows=width)
        chunk_keys = row_keys[start : start + width]
        if len(chunk) < width:  # filler rows reuse the chunk's first key
            chunk_keys = chunk_keys[np.where(np.arange(width) < len(chunk), np.arange(width), 0)]
        out = decode(p_params, q_params, tokens_BxT, mask_BxT, chunk_keys, **kw)
        if sampling.mode == "seq_sir":
            first, count = start // n, width // n
            picks = np.minimum(np.arange(first, first + count), len(prompts) - 1)
            out, pick = _resample(pick_keys[picks], out, n)
            results.append((out, pick))
        else:
            results.append((out, None))
    count = len(prompts)
    fields = dict(
        tokens="tokens_BxR",
        logprobs_p="logprobs_p_BxR",
        logprobs_q="logprobs_q_BxR",
        aligner_branch="aligner_branch_BxR",
        lengths="lengths_B",
    )
    merged = {}
    for name, attr in fields.items():
        parts = [getattr(o, attr) for o, _ in results]
        if parts[0] is not None:
            merged[name] = np.concatenate([np.asarray(p) for p in parts])[:count]
    if results[0][1] is not None:
        merged["candidate"] = np.concatenate([np.asarray(p) for _, p in results])[:count]
    return merged
