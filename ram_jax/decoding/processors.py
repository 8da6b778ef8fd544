"""Token rules: pure `jnp` logit processors whose settings are per-row arrays.

Every rule maps float32 logits `[B, V]` (already sliced to the tokenizer
length) and per-row settings `[B]` to logits of the same shape in which
removed tokens hold `-inf`, so a removed token has exactly zero probability
under `softmax` and is never drawn. No rule ever removes every token of a row.
Work that only some settings need (the penalty, top-k, top-p, the random
draw) runs under `lax.cond` when any row needs it, so a batch pays for what
its rows ask for, never recompiles for it.

Top-k and top-p sort nothing: each finds its exact threshold by a 32-step
bisection over order-preserving integer keys (the logits' float order for
top-k, the probabilities' bit patterns for top-p), one masked reduction over
the vocabulary per step, whatever the distribution or the row's setting.
Ties are kept: every token whose logit equals the smallest kept logit stays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
_BITS = 32


def divide(logits_BxV: jax.Array, temperature_B: jax.Array) -> jax.Array:
    """`logits / T` per row; rows with T = 0 (greedy) are left as they are."""
    t = temperature_B[:, None]
    return logits_BxV / jnp.where(t > 0, t, 1.0)


def scale(logits_BxV: jax.Array, temperature_B: jax.Array) -> jax.Array:
    """`logits / T` per row; a T = 0 row keeps only its maximal logits, at 0 (greedy)."""
    top = jnp.max(logits_BxV, axis=-1, keepdims=True)
    greedy = jnp.where(logits_BxV >= top, 0.0, NEG_INF)
    return jnp.where(temperature_B[:, None] > 0, divide(logits_BxV, temperature_B), greedy)


def repetition_penalty(logits_BxV, seen_BxV, penalty_B) -> jax.Array:
    """HF `RepetitionPenaltyLogitsProcessor` per row: seen logits /p if > 0 else *p."""

    def apply():
        p = penalty_B[:, None]
        penalised = jnp.where(logits_BxV > 0, logits_BxV / p, logits_BxV * p)
        return jnp.where(seen_BxV & (p != 1.0), penalised, logits_BxV)

    return jax.lax.cond(jnp.any(penalty_B != 1.0), apply, lambda: logits_BxV)


def _bisect(enough, top_B: jax.Array) -> jax.Array:
    """Per row, the largest uint32 key `t <= top` with `enough(t)` (`enough(0)` must hold).

    Invariant: enough(lo) and not enough(hi); 32 halvings of `[0, top + 1)`
    end on adjacent keys. `enough` maps `[B, 1]` keys to `[B, 1]` bools and
    must be monotone (true up to some key, false after it).
    """
    lo = jnp.zeros(top_B.shape, jnp.uint32)[:, None]
    hi = top_B.astype(jnp.uint32)[:, None] + 1

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = enough(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    return jax.lax.fori_loop(0, _BITS, body, (lo, hi))[0]


def _order_keys(logits_BxV: jax.Array) -> jax.Array:
    """uint32 keys with the float order of the logits (-0.0 and +0.0 tie)."""
    bits = jax.lax.bitcast_convert_type(logits_BxV + 0.0, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def top_k_mask(logits_BxV: jax.Array, top_k_B: jax.Array) -> jax.Array:
    """Tokens among the k largest of their row (ties with the k-th kept); k = 0 keeps all."""
    keys = _order_keys(logits_BxV)
    k = top_k_B[:, None]
    count = lambda mid: jnp.sum(keys >= mid, axis=-1, keepdims=True, dtype=jnp.int32) >= k
    threshold = _bisect(count, jnp.max(keys, axis=-1))
    return (keys >= threshold) | (k <= 0)


def top_p_mask(logits_BxV: jax.Array, top_p_B: jax.Array) -> jax.Array:
    """The smallest set of largest logits whose softmax mass reaches top_p (1 keeps all).

    A token is kept when the mass of the tokens strictly ahead of it is below
    `top_p` (so the top token always is), as HF's `TopPLogitsWarper`; every
    token tied with the last kept one is kept too. Bisects the float32
    probabilities' bit patterns (for p >= 0, bit order = value order).
    """
    probs = jnp.exp(logits_BxV - jax.nn.logsumexp(logits_BxV, axis=-1, keepdims=True))
    as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)
    p = top_p_B[:, None]
    mass = lambda mid: jnp.sum(jnp.where(probs >= as_float(mid), probs, 0.0), -1, keepdims=True)
    top = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.uint32)
    threshold = _bisect(lambda mid: mass(mid) >= p, top)
    return (probs >= as_float(threshold)) | (p >= 1.0)


def filter_top(logits_BxV, top_p_B, top_k_B, top_k_first_B) -> jax.Array:
    """Top-k and top-p in each row's order; removed tokens become -inf.

    Both keep a prefix of the row's tokens sorted by logit, so either order
    keeps the intersection of the two masks; they differ only in the mass
    top-p measures: over the top-k tokens (renormalised) when top-k comes
    first, over all tokens otherwise. Each filter runs only when some row of
    the batch uses it.
    """
    use_k = jnp.any((top_k_B > 0) & (top_k_B < logits_BxV.shape[-1]))
    use_p = jnp.any(top_p_B < 1.0)

    def with_k():
        in_k = top_k_mask(logits_BxV, top_k_B)
        measured = jnp.where(top_k_first_B[:, None] & ~in_k, NEG_INF, logits_BxV)
        keep = jax.lax.cond(use_p, lambda: in_k & top_p_mask(measured, top_p_B), lambda: in_k)
        return jnp.where(keep, logits_BxV, NEG_INF)

    def top_p_only():
        return jnp.where(top_p_mask(logits_BxV, top_p_B), logits_BxV, NEG_INF)

    return jax.lax.cond(use_k, with_k, lambda: jax.lax.cond(use_p, top_p_only, lambda: logits_BxV))


def restrict(logits_BxV: jax.Array, support_BxV: jax.Array) -> jax.Array:
    """Logits with every token outside `support_BxV` (bool) removed."""
    return jnp.where(support_BxV, logits_BxV, NEG_INF)


def kl_divergence(p_logits_BxV: jax.Array, q_logits_BxV: jax.Array) -> jax.Array:
    """KL(softmax(p) || softmax(q)) per row, float32, with 0 log 0 = 0."""
    log_p = jax.nn.log_softmax(p_logits_BxV, axis=-1)
    log_q = jax.nn.log_softmax(q_logits_BxV, axis=-1)
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def one_hot_logits(tokens_B: jax.Array, vocab: int) -> jax.Array:
    """Logits that put all mass on `tokens_B` (0 there, -inf elsewhere)."""
    return jnp.where(jnp.arange(vocab)[None] == tokens_B[:, None], 0.0, NEG_INF)


def sample(keys_B: jax.Array, logits_BxV: jax.Array, greedy_B: jax.Array) -> jax.Array:
    """One token per row from `softmax(logits)` with that row's key; argmax on greedy rows.

    Inverse-CDF sampling (`draw_from_cdf`): one uniform per row rather than a
    Gumbel variate per vocabulary entry, which on CPU costs more than a
    decode step's matmuls. A removed token owns an empty CDF interval. The
    argmax (slow on CPU) runs only when some row is greedy.
    """
    top = lambda: jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    drawn = lambda: draw_from_cdf(keys_B, logits_BxV, 1)[:, 0]
    mixed = lambda: jnp.where(greedy_B, top(), drawn())
    some = lambda: jax.lax.cond(jnp.all(greedy_B), top, mixed)
    return jax.lax.cond(jnp.any(greedy_B), some, drawn)


_CDF_BLOCK = 128


def draw_from_cdf(keys_B: jax.Array, logits_BxV: jax.Array, n: int) -> jax.Array:
    """n i.i.d. tokens per row from softmax(logits), `[B, n]`, by inverse CDF.

    Two levels, so no cumulative sum runs over the whole vocabulary: the
    uniform first picks a block of `_CDF_BLOCK` tokens by the blocks'
    cumulative masses, then a token inside that block by the block's own
    cumulative probabilities. A token of probability 0 owns an empty interval
    and is never drawn; float rounding at a top edge is clipped to the last
    block (token) with mass.
    """
    b, v = logits_BxV.shape
    blocks = -(-v // _CDF_BLOCK)
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    probs_BxV = jnp.pad(probs_BxV, ((0, 0), (0, blocks * _CDF_BLOCK - v)))
    probs_BxNxK = probs_BxV.reshape(b, blocks, _CDF_BLOCK)
    mass_BxN = jnp.sum(probs_BxNxK, axis=-1)
    cdf_BxN = jnp.cumsum(mass_BxN, axis=-1)
    u_BxC = jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys_B) * cdf_BxN[:, -1:]
    block_BxC = _search_clipped(cdf_BxN, mass_BxN, u_BxC)
    before_BxC = jnp.where(
        block_BxC > 0, jnp.take_along_axis(cdf_BxN, jnp.maximum(block_BxC - 1, 0), -1), 0.0
    )
    inner_BxCxK = jnp.take_along_axis(probs_BxNxK, block_BxC[..., None], axis=1)
    inner_cdf_BxCxK = jnp.cumsum(inner_BxCxK, axis=-1)
    flat = lambda x: x.reshape(b * n, -1)
    token = _search_clipped(flat(inner_cdf_BxCxK), flat(inner_BxCxK), flat(u_BxC - before_BxC))
    return (block_BxC * _CDF_BLOCK + token.reshape(b, n)).astype(jnp.int32)


def _search_clipped(cdf_RxN, mass_RxN, u_RxC) -> jax.Array:
    """Per row, the first index whose cdf exceeds u, at most the last index with mass."""
    idx_RxC = jax.vmap(lambda c, u: jnp.searchsorted(c, u, side="right"))(cdf_RxN, u_RxC)
    last_Rx1 = mass_RxN.shape[-1] - 1 - jnp.argmax(mass_RxN[:, ::-1] > 0, axis=-1, keepdims=True)
    return jnp.minimum(idx_RxC, last_Rx1)


def token_logprobs(logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    """`log_softmax(logits)[token]` per row (the model's own likelihood, T = 1)."""
    picked_B = jnp.take_along_axis(logits_BxV, tokens_B[:, None], axis=-1)[:, 0]
    return picked_B - jax.nn.logsumexp(logits_BxV, axis=-1)
