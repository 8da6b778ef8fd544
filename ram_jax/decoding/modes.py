"""RAM decoding modes: small frozen rules registered by name.

A mode says which models it reads, optionally gates rows on the models' raw
logits, and draws the next token: `draw(keys, logits, rows) -> (tokens,
aligner_shaped)`. The decoder, the driver, the CLI, the demo and the
benchmarks only call these methods; none of them compares mode names. Adding
a mode is one class with `@register` (see `ram_jax.decoding.compose`).

Notation (RAM.md section 3): `p` and `q` are P's and the aligner's raw float32
logits for the same prefix. `warp_P(p)` is P's nucleus at the proposal
settings (T_P, then top-k, then top-p, as the reference's
`top_k_top_p_filtering`); `process(x)` is the output chain of the reference's
FastChat processors: temperature T, repetition penalty, top-p and top-k in the
row's `filter_order`. What each rule reads:

  mode             raw p, q read for         final logits (then sampled)
  proposal         -                         process(p)
  aligner          -                         process(q)
  product (ours)   P's nucleus               process_1(log softmax(warp_P(p)) + log softmax(q/T))
  mds (reference)  EOS check                 process(log(softmax(p/T_P) softmax(q/T_Q) / Z + 1e-10))
  par              P's nucleus, EOS check    process(q on P's nucleus)
  par_kl           KL gate, P's nucleus      KL(p||q) <= tau: process(q on P's nucleus)
                                             else: process(p)
  sir              P's nucleus (candidates)  n candidates ~ warp_P(p), one resampled by weight

`process_1` is the chain at T = 1 (product's T acts on q). The repetition
penalty is part of `process`, so it never changes P's nucleus, the KL gate or
the EOS check (as in the reference). `product` vs `mds`: product is the exact
`P Q` on P's nucleus, with T on Q; mds multiplies the full softmaxes at T_P and
T_Q, adds 1e-10 and applies T again, never cutting P to its nucleus. `sir`'s
weights are `target / proposal` with target the penalised `P_nucleus Q^(1/T)`,
so as n grows it tends to `product` without the output top-p / top-k.

Several aligners: `par`, `par_kl`, `aligner` and `sir` read one aligner
distribution, the log-linear pool `softmax(sum_i w_i q_i)`, proportional to
`prod_i Q_i^w_i` (per-row weights; one aligner at w = 1 is Q itself). The
products take one aligner; `weighted_product` is their generalisation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from ram_jax.decoding import processors as P
from ram_jax.decoding.sampling import RowSettings

MODES: dict[str, type[Mode]] = {}


def register(cls: type[Mode]) -> type[Mode]:
    """Class decorator: makes a mode available by its `name` (CLI, presets)."""
    if cls.name in MODES:
        raise ValueError(f"mode {cls.name!r} is registered twice.")
    MODES[cls.name] = cls
    return cls


def get_mode(name: str, **fields) -> Mode:
    """The registered mode `name` with its fields (e.g. `eos_priority`, `num_candidates`)."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of {sorted(MODES)}.")
    cls = MODES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"mode {name!r} takes no {unknown}; its fields: {sorted(known)}.")
    return cls(**fields)


def reference_mode(name: str = "par_kl") -> Mode:
    """A mode as the reference implementation runs it: `par` always has its EOS rule."""
    fields = {"eos_priority": True} if name == "par" else {}
    return get_mode(name, **fields)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Logits:
    """What a mode reads: the models' raw next-token logits and the seen ids.

    p_BxV: P's logits (None without a proposal). qs_BxV: each aligner's
    logits, a tuple (XLA on CPU reduces a stacked aligner axis far slower
    than a sum of arrays). seen_BxV: prompt and generated ids of each row
    (the repetition penalty's memory).
    """

    p_BxV: jax.Array | None
    qs_BxV: tuple[jax.Array, ...]
    seen_BxV: jax.Array

    def pooled_q(self, rows: RowSettings) -> jax.Array:
        """The aligners' log-linear pool `sum_i w_i q_i` (one aligner, w = 1: q exactly)."""
        w_BxA = rows.aligner_weights_BxA
        terms = [w_BxA[:, i, None] * q_BxV for i, q_BxV in enumerate(self.qs_BxV)]
        return functools.reduce(jnp.add, terms)


@dataclasses.dataclass(frozen=True)
class Mode:
    """A token rule. Subclasses set the class attributes and override `logits` or `draw`.

    uses_proposal: the rule reads P. min_aligners / max_aligners: how many
    aligners it reads (max None: any number). reads_weights: it reads the
    per-row aligner weights (a mode that does not rejects weights other
    than 1, so nothing is silently ignored).
    """

    name: ClassVar[str]
    uses_proposal: ClassVar[bool] = True
    min_aligners: ClassVar[int] = 1
    max_aligners: ClassVar[int | None] = 1
    reads_weights: ClassVar[bool] = False

    def gate(self, x: Logits, rows: RowSettings) -> jax.Array | None:
        """Per-row `[B]` bool over raw logits (True: the aligner shapes the token), or None."""
        return None

    def logits(self, x: Logits, rows: RowSettings, gate_B) -> tuple[jax.Array, jax.Array]:
        """`(final_BxV, aligner_shaped_B)`: the logits sampled from (T = 0 rows: argmax)."""
        raise NotImplementedError(f"mode {self.name!r} defines no closed-form distribution.")

    def draw(self, keys_B, x: Logits, rows: RowSettings) -> tuple[jax.Array, jax.Array]:
        """`(tokens_B, aligner_shaped_B)` with one key per row."""
        final_BxV, shaped_B = self.logits(x, rows, self.gate(x, rows))
        return P.sample(keys_B, final_BxV, rows.temperature_B == 0), shaped_B


def process(x_BxV, seen_BxV, rows: RowSettings, temperature_B=None) -> jax.Array:
    """The output chain: temperature, repetition penalty, top-p / top-k in the row's order."""
    t = rows.temperature_B if temperature_B is None else temperature_B
    x_BxV = P.repetition_penalty(P.divide(x_BxV, t), seen_BxV, rows.repetition_penalty_B)
    return P.filter_top(x_BxV, rows.top_p_B, rows.top_k_B, rows.top_k_first_B)


def warp_proposal(p_BxV, rows: RowSettings) -> jax.Array:
    """P at the proposal settings: T_P (0: argmax), then top-k, then top-p."""
    x = P.scale(p_BxV, rows.proposal_temperature_B)
    ones = jnp.ones_like(rows.top_k_first_B)
    return P.filter_top(x, rows.proposal_top_p_B, rows.proposal_top_k_B, ones)


def _eos_first(p_BxV, final_BxV, rows: RowSettings, shaped_B):
    """The reference's EOS rule: where P's argmax is a stop id, emit it."""
    top_B = jnp.argmax(p_BxV, axis=-1).astype(jnp.int32)
    forced_B = rows.is_stop(top_B)
    final = jnp.where(forced_B[:, None], P.one_hot_logits(top_B, p_BxV.shape[-1]), final_BxV)
    return final, shaped_B & ~forced_B


def _yes(x_BxV):
    return jnp.ones(x_BxV.shape[:1], bool)


@register
@dataclasses.dataclass(frozen=True)
class Proposal(Mode):
    """P alone: `process(p)`."""

    name: ClassVar[str] = "proposal"
    min_aligners: ClassVar[int] = 0
    max_aligners: ClassVar[int | None] = None

    def logits(self, x, rows, gate_B):
        return process(x.p_BxV, x.seen_BxV, rows), ~_yes(x.p_BxV)


@register
@dataclasses.dataclass(frozen=True)
class Aligner(Mode):
    """The (pooled) aligner alone: `process(q)`."""

    name: ClassVar[str] = "aligner"
    uses_proposal: ClassVar[bool] = False
    max_aligners: ClassVar[int | None] = None
    reads_weights: ClassVar[bool] = True

    def logits(self, x, rows, gate_B):
        q = x.pooled_q(rows)
        return process(q, x.seen_BxV, rows), _yes(q)


def product_logits(x: Logits, rows: RowSettings, log_q_BxV) -> jax.Array:
    """`process_1(log softmax(warp_P(p)) + log_q)`: P's nucleus times an aligner term."""
    joint = jax.nn.log_softmax(warp_proposal(x.p_BxV, rows), axis=-1) + log_q_BxV
    return process(joint, x.seen_BxV, rows, jnp.ones_like(rows.temperature_B))


def aligner_log_probs(q_BxV, rows: RowSettings) -> jax.Array:
    """`log softmax(q / T)` (T = 0 rows: q at T = 1; the draw takes the argmax)."""
    return jax.nn.log_softmax(P.divide(q_BxV, rows.temperature_B), axis=-1)


@register
@dataclasses.dataclass(frozen=True)
class Product(Mode):
    """The exact token-level `P Q` on P's nucleus, T acting on Q."""

    name: ClassVar[str] = "product"

    def logits(self, x, rows, gate_B):
        return product_logits(x, rows, aligner_log_probs(x.qs_BxV[0], rows)), _yes(x.p_BxV)


@register
@dataclasses.dataclass(frozen=True)
class Mds(Mode):
    """The reference's `mds`: `log(softmax(p/T_P) softmax(q/T_Q) / Z + 1e-10)`, then `process`.

    eos_priority: emit P's argmax when it is a stop id (the reference's option).
    """

    name: ClassVar[str] = "mds"
    eos_priority: bool = False

    def logits(self, x, rows, gate_B):
        base = jax.nn.softmax(P.scale(x.p_BxV, rows.proposal_temperature_B), axis=-1)
        expert = jax.nn.softmax(P.scale(x.qs_BxV[0], rows.aligner_temperature_B), axis=-1)
        joint = base * expert
        joint = jnp.log(joint / jnp.sum(joint, axis=-1, keepdims=True) + 1e-10)
        final, shaped = process(joint, x.seen_BxV, rows), _yes(joint)
        if self.eos_priority:
            final, shaped = _eos_first(x.p_BxV, final, rows, shaped)
        return final, shaped


def par_logits(x: Logits, rows: RowSettings) -> jax.Array:
    """The pooled aligner restricted to P's nucleus (raw logits, before `process`)."""
    nucleus = jnp.isfinite(warp_proposal(x.p_BxV, rows))
    return P.restrict(x.pooled_q(rows), nucleus)


@register
@dataclasses.dataclass(frozen=True)
class Par(Mode):
    """Q restricted to P's nucleus, then `process`.

    eos_priority: emit P's argmax when it is a stop id (always on in the
    reference's `par`; `reference_mode("par")` sets it).
    """

    name: ClassVar[str] = "par"
    max_aligners: ClassVar[int | None] = None
    reads_weights: ClassVar[bool] = True
    eos_priority: bool = False

    def logits(self, x, rows, gate_B):
        final, shaped = process(par_logits(x, rows), x.seen_BxV, rows), _yes(x.p_BxV)
        if self.eos_priority:
            final, shaped = _eos_first(x.p_BxV, final, rows, shaped)
        return final, shaped


@register
@dataclasses.dataclass(frozen=True)
class ParKl(Mode):
    """Per row: `par` (no EOS rule) where KL(softmax p || softmax q) <= tau, else P.

    The gate reads the raw logits at T = 1 over the full vocabulary (q: the
    pooled aligner). P's nucleus is computed only when some row takes `par`.
    """

    name: ClassVar[str] = "par_kl"
    max_aligners: ClassVar[int | None] = None
    reads_weights: ClassVar[bool] = True

    def gate(self, x, rows):
        return P.kl_divergence(x.p_BxV, x.pooled_q(rows)) <= rows.kl_threshold_B

    def logits(self, x, rows, gate_B):
        chosen = jax.lax.cond(
            jnp.any(gate_B),
            lambda: jnp.where(gate_B[:, None], par_logits(x, rows), x.p_BxV),
            lambda: x.p_BxV,
        )
        return process(chosen, x.seen_BxV, rows), gate_B


@register
@dataclasses.dataclass(frozen=True)
class Sir(Mode):
    """n i.i.d. candidates from P's nucleus, one resampled in proportion to its weight.

    The weight of candidate c is `target(c) / warp_P(c)` with target the
    penalised `warp_P Q^(1/T)` (`product` before its top-p / top-k), so as n
    grows the token tends to that target; T = 0 rows take the heaviest.
    """

    name: ClassVar[str] = "sir"
    max_aligners: ClassVar[int | None] = None
    reads_weights: ClassVar[bool] = True
    num_candidates: int = 1

    def __post_init__(self):
        if int(self.num_candidates) < 1:
            raise ValueError(f"num_candidates={self.num_candidates} must be >= 1.")

    def draw(self, keys_B, x, rows):
        draw_keys, pick_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys_B), 1, 0)
        warped_BxV = warp_proposal(x.p_BxV, rows)
        cand_BxC = P.draw_from_cdf(draw_keys, warped_BxV, self.num_candidates)
        at = lambda a: jnp.take_along_axis(a, cand_BxC, axis=-1)
        log_p_BxC = at(jax.nn.log_softmax(warped_BxV, axis=-1))
        log_q_BxC = at(aligner_log_probs(x.pooled_q(rows), rows))
        target_BxC = P.repetition_penalty(
            log_p_BxC + log_q_BxC, at(x.seen_BxV), rows.repetition_penalty_B
        )
        log_w_BxC = target_BxC - log_p_BxC
        pick_B = jnp.where(
            rows.temperature_B == 0,
            jnp.argmax(log_w_BxC, axis=-1),
            jax.vmap(jax.random.categorical)(pick_keys, log_w_BxC),
        )
        tokens_B = jnp.take_along_axis(cand_BxC, pick_B[:, None], axis=-1)[:, 0]
        return tokens_B.astype(jnp.int32), _yes(tokens_B)
