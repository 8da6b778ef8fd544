"""Token rules: the sampling configuration and pure `jnp` logit processors.

Every rule maps float32 logits `[..., V]` (already sliced to the tokenizer
length) to logits of the same shape in which removed tokens hold `-inf`, so a
removed token has exactly zero probability under `softmax` and can never win
the Gumbel-max draw of `jax.random.categorical`. No rule ever removes every
token of a row.

Top-p uses no full-vocabulary sort: the exact threshold comes from a
bisection over the bit patterns of the float32 probabilities, 32 masked sums
over the vocabulary whatever the distribution (a `lax.top_k` pre-ranking was
measured no faster on CPU once any row of a batch has a wide nucleus). Ties
are deterministic and order free: every token whose logit equals the smallest
kept logit is kept, for top-k as for top-p.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

MODES = ("proposal", "aligner", "product", "par", "par_kl", "sir", "seq_sir")
FILTER_ORDERS = ("top_k_first", "top_p_first")
NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen (hashable: a static argument under `jit`).

    Output warper (applied to whatever logits a mode finally samples from):
      temperature: 0 means greedy (argmax); must be >= 0.
      top_p: nucleus mass in (0, 1]; 1 disables it.
      top_k: keep the k largest logits; 0 disables it.
    Proposal warper (how P's distribution / support is formed in `product`,
    `par`, `par_kl`'s gate branch, `sir` and `seq_sir`):
      proposal_temperature, proposal_top_p, proposal_top_k.
    Shared:
      repetition_penalty: HF semantics over prompt and generated ids (a seen
        token's logit is divided by it when positive, multiplied when negative),
        applied to both models' logits; 1 disables it.
      kl_threshold: `par_kl` uses `par` on rows where KL(softmax(p)||softmax(q))
        (T = 1, full vocabulary) is at most this, else samples p with the output
        warper.
      num_candidates: n of `sir` (per token) and N of `seq_sir` (per prompt).
      eos_priority: in `par`, emit EOS whenever P's argmax is an EOS id.
      filter_order: "top_k_first" (HF generate) or "top_p_first" (the
        reference's FastChat processors: temperature, repetition penalty,
        top-p, top-k).
    """

    mode: str = "proposal"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    proposal_temperature: float = 1.0
    proposal_top_p: float = 1.0
    proposal_top_k: int = 0
    repetition_penalty: float = 1.0
    kl_threshold: float = 0.1
    num_candidates: int = 1
    eos_priority: bool = False
    filter_order: str = "top_k_first"

    def __post_init__(self):
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode={self.mode!r} is not one of {MODES}")
        for name in ("temperature", "proposal_temperature"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                problems.append(f"{name}={value} must be >= 0 (0 means greedy)")
        for name in ("top_p", "proposal_top_p"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                problems.append(f"{name}={value} must lie in (0, 1] (1 disables top-p)")
        for name in ("top_k", "proposal_top_k"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0 (0 disables it)")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if not self.kl_threshold >= 0:
            problems.append(f"kl_threshold={self.kl_threshold} must be >= 0")
        if int(self.num_candidates) < 1:
            problems.append(f"num_candidates={self.num_candidates} must be >= 1")
        if self.filter_order not in FILTER_ORDERS:
            problems.append(f"filter_order={self.filter_order!r} is not one of {FILTER_ORDERS}")
        if problems:
            raise ValueError("bad sampling parameters: " + "; ".join(problems) + ".")

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)

    @property
    def needs_proposal(self) -> bool:
        return self.mode != "aligner"

    @property
    def needs_aligner(self) -> bool:
        return self.mode != "proposal"

    def output_warper(self) -> Warper:
        return Warper(self.temperature, self.top_p, self.top_k, self.filter_order)

    def proposal_warper(self) -> Warper:
        return Warper(
            self.proposal_temperature,
            self.proposal_top_p,
            self.proposal_top_k,
            self.filter_order,
        )


# The reference implementation's decode settings (RAM.md section 3): par_kl with
# tau 0.1, aligner top-p 0.9, proposal top-p 0.95, repetition penalty 1.05 and
# FastChat's processor order. Temperatures are per task; see PAPER_TEMPERATURES.
REFERENCE = SamplingConfig(
    mode="par_kl",
    temperature=0.7,
    top_p=0.9,
    proposal_temperature=0.5,
    proposal_top_p=0.95,
    repetition_penalty=1.05,
    kl_threshold=0.1,
    filter_order="top_p_first",
)

# How the reference samples the aligner's negatives y~ ~ P(.|x) offline (RAM.md
# section 2): the proposal alone at T 0.5, top-p 0.95, repetition penalty 1.05,
# FastChat's processor order; stop at "\n\nHuman" (`REFERENCE_STOPS`).
REFERENCE_NEGATIVES = SamplingConfig(
    mode="proposal",
    temperature=0.5,
    top_p=0.95,
    repetition_penalty=1.05,
    filter_order="top_p_first",
)
REFERENCE_STOPS = ("\n\nHuman",)

# (aligner family, task) -> (aligner T, proposal T_P) selected in the paper.
PAPER_TEMPERATURES: dict[tuple[str, str], tuple[float, float]] = {
    ("llama", "ultrachat"): (0.7, 0.5),
    ("llama", "tldr"): (0.3, 0.5),
    ("llama", "hh_helpful"): (0.5, 0.7),
    ("llama", "hh_harmless"): (0.3, 0.7),
    ("qwen", "ultrachat"): (0.3, 0.7),
    ("qwen", "tldr"): (0.3, 0.5),
    ("qwen", "hh_helpful"): (0.7, 0.5),
    ("qwen", "hh_harmless"): (0.3, 0.5),
}


def reference_sampling(family: str | None = None, task: str | None = None, **changes):
    """The reference preset, with the paper's temperatures for (family, task) if given."""
    if (family is None) != (task is None):
        raise ValueError("pass both family and task (e.g. 'llama', 'tldr') or neither.")
    if family is not None:
        if (family, task) not in PAPER_TEMPERATURES:
            raise ValueError(
                f"no paper setting for family={family!r}, task={task!r}; "
                f"known: {sorted(PAPER_TEMPERATURES)}."
            )
        t, tp = PAPER_TEMPERATURES[(family, task)]
        changes = {"temperature": t, "proposal_temperature": tp, **changes}
    return REFERENCE.replace(**changes)


@dataclasses.dataclass(frozen=True)
class Warper:
    """Temperature, then top-k and top-p in `order`: one model's sampling distribution."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    order: str = "top_k_first"

    def __call__(self, logits_xV: jax.Array) -> jax.Array:
        x = apply_temperature(logits_xV, self.temperature)
        if self.order == "top_k_first":
            return top_p_filter(top_k_filter(x, self.top_k), self.top_p)
        return top_k_filter(top_p_filter(x, self.top_p), self.top_k)


def apply_temperature(logits_xV: jax.Array, temperature: float) -> jax.Array:
    """`logits / T`; T = 0 keeps only the maximal logits (greedy) at logit 0."""
    if temperature == 0:
        top = jnp.max(logits_xV, axis=-1, keepdims=True)
        return jnp.where(logits_xV >= top, 0.0, NEG_INF)
    return logits_xV / temperature


def _keep_at_least(logits_xV: jax.Array, threshold_x1: jax.Array) -> jax.Array:
    return jnp.where(logits_xV >= threshold_x1, logits_xV, NEG_INF)


def top_k_filter(logits_xV: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits (and every token tied with the k-th)."""
    if k <= 0 or k >= logits_xV.shape[-1]:
        return logits_xV
    kth_x1 = jax.lax.top_k(logits_xV, k)[0][..., -1:]
    return _keep_at_least(logits_xV, kth_x1)


def top_p_filter(logits_xV: jax.Array, top_p: float) -> jax.Array:
    """Keeps the smallest set of largest logits whose softmax mass reaches `top_p`.

    A token is kept when the mass of the tokens strictly ahead of it in the
    sorted order is below `top_p` (so the top token is always kept), and every
    token tied with the last kept one is kept too; the threshold comes from
    `_bisect_threshold`.
    """
    if top_p >= 1.0:
        return logits_xV
    log_z_x1 = jax.nn.logsumexp(logits_xV, axis=-1, keepdims=True)
    return _keep_at_least(logits_xV, _bisect_threshold(logits_xV, log_z_x1, top_p))


def _bisect_threshold(logits_xV, log_z_x1, top_p: float) -> jax.Array:
    """The smallest kept logit, by bisection on the float32 probabilities' bit patterns.

    For probabilities (>= 0) the uint32 bit pattern has the order of the
    value, so 32 halvings of the bit range always end on adjacent patterns.
    Invariant: mass(bits >= lo) >= top_p > mass(bits >= hi); once hi = lo + 1
    some token has probability bits lo, and every token at least that
    probable is kept (tokens whose float32 probabilities are equal count as
    tied). Each step is one masked sum over one float32 array.
    """
    probs_xV = jnp.exp(logits_xV - log_z_x1)
    as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)
    top = jnp.max(probs_xV, axis=-1, keepdims=True)
    lo = jnp.zeros(top.shape, jnp.uint32)
    hi = jax.lax.bitcast_convert_type(top, jnp.uint32) + 1

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        kept = probs_xV >= as_float(mid)  # float order = bit order for p >= 0
        ok = jnp.sum(jnp.where(kept, probs_xV, 0.0), -1, keepdims=True) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo = jax.lax.fori_loop(0, 32, body, (lo, hi))[0]
    kept = probs_xV >= as_float(lo)
    return jnp.min(jnp.where(kept, logits_xV, jnp.inf), axis=-1, keepdims=True)


def repetition_penalty(logits_xV: jax.Array, seen_xV: jax.Array, penalty: float) -> jax.Array:
    """HF `RepetitionPenaltyLogitsProcessor`: seen logits /penalty if > 0 else *penalty."""
    if penalty == 1.0:
        return logits_xV
    penalised = jnp.where(logits_xV > 0, logits_xV / penalty, logits_xV * penalty)
    return jnp.where(seen_xV, penalised, logits_xV)


def restrict(logits_xV: jax.Array, support_xV: jax.Array) -> jax.Array:
    """Logits with every token outside `support_xV` (bool) removed."""
    return jnp.where(support_xV, logits_xV, NEG_INF)


def kl_divergence(p_logits_xV: jax.Array, q_logits_xV: jax.Array) -> jax.Array:
    """KL(softmax(p) || softmax(q)) per row, float32, with 0 log 0 = 0."""
    log_p = jax.nn.log_softmax(p_logits_xV, axis=-1)
    log_q = jax.nn.log_softmax(q_logits_xV, axis=-1)
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def sample(keys_B: jax.Array, logits_BxV: jax.Array, greedy: bool) -> jax.Array:
    """One token per row from `softmax(logits)` with that row's key (argmax if greedy).

    Inverse-CDF sampling: one uniform per row and a binary search in the
    cumulative probabilities, rather than a Gumbel variate per vocabulary
    entry (on CPU, generating V random numbers per row costs more than a
    decode step's matmuls). A removed token (-inf logit) has probability 0
    and owns an empty CDF interval, so it is never drawn.
    """
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return draw_from_cdf(keys_B, logits_BxV, 1)[:, 0]


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
    log_probs = jax.nn.log_softmax(logits_BxV, axis=-1)
    return jnp.take_along_axis(log_probs, tokens_B[:, None], axis=-1)[:, 0]
