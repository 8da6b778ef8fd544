"""The reference's decoding rules, exactly: next-token distributions of `par`, `par_kl`
and `mds` (and the output chain of `proposal`) against an independent float64 numpy
implementation of the reference implementation's processor chain, to 1e-6.

The numpy side follows the reference's code paths as rules: its warpers
(`top_k_top_p_filtering` for P's nucleus, the KL gate, the EOS check, the
`mds` product) read the raw logits; then FastChat's processors run on the
warped logits in order: temperature, repetition penalty over prompt +
generated ids, top-p, top-k (HF semantics). Logits are LLM-like in scale,
settings differ per row, and seen tokens sit at the edge of P's nucleus, where
penalising P before its nucleus (our former order) changes the candidate set:
the test shows that order fails by a wide margin on the same rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.decoding import modes
from ram_jax.decoding.sampling import RowSettings, SamplingParams

V, EOS = 64, 0
TOL = 1e-6


# ----- the reference's rules, in float64 numpy -----


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def log_softmax(x):
    return x - np.max(x) - np.log(np.sum(np.exp(x - np.max(x))))


def ref_nucleus_filter(logits, top_k, top_p, temperature):
    """The reference's `top_k_top_p_filtering`: top-k on raw logits, then top-p on
    softmax(sorted / T) keeping the first token whose cumulative mass passes top_p."""
    x = logits.copy()
    if top_k > 0:
        x[x < np.sort(x)[-top_k]] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        cumulative = np.cumsum(softmax(x[order] / temperature))
        remove = cumulative > top_p
        remove[1:] = remove[:-1].copy()
        remove[0] = False
        x[order[remove]] = -np.inf
    return x


def hf_chain(x, seen_ids, s: SamplingParams):
    """FastChat's `prepare_logits_processor` list: temperature, repetition penalty,
    top-p, top-k, each with HF's semantics."""
    x = x.copy()
    if s.temperature >= 1e-5 and s.temperature != 1.0:
        x = x / s.temperature
    if s.repetition_penalty > 1.0 and len(seen_ids):
        score = x[seen_ids]
        x[seen_ids] = np.where(
            score < 0, score * s.repetition_penalty, score / s.repetition_penalty
        )
    if 1e-8 <= s.top_p < 1.0:
        order = np.argsort(x, kind="stable")  # ascending, as HF
        cumulative = np.cumsum(softmax(x[order]))
        remove = cumulative <= 1 - s.top_p
        remove[-1] = False
        x[order[remove]] = -np.inf
    if s.top_k > 0:
        x[x < np.sort(x)[-min(s.top_k, len(x))]] = -np.inf
    return x


def eos_only():
    x = np.full(V, -np.inf)
    x[EOS] = 1.0
    return x


def ref_warp(mode, p, q, s: SamplingParams, eos_priority=False):
    """The reference's ParLogitsWarper / ParKlLogitsWarper / MdsLogitsWarper."""
    if mode == "par":
        base = ref_nucleus_filter(p, s.proposal_top_k, s.proposal_top_p, s.proposal_temperature)
        if np.argmax(base) == EOS:
            return eos_only()
        return np.where(base == -np.inf, -np.inf, q)
    if mode == "par_kl":
        kl = np.sum(softmax(p) * (log_softmax(p) - log_softmax(q)))
        if kl <= s.kl_threshold:
            base = ref_nucleus_filter(p, s.proposal_top_k, s.proposal_top_p, s.proposal_temperature)
            return np.where(base == -np.inf, -np.inf, q)
        return p
    if mode == "mds":
        if eos_priority and np.argmax(p) == EOS:
            return eos_only()
        joint = softmax(p / s.proposal_temperature) * softmax(q / s.aligner_temperature)
        return np.log(joint / joint.sum() + 1e-10)
    if mode == "proposal":
        return p
    raise ValueError(mode)


def ref_next(mode, p, q, seen_ids, s, eos_priority=False):
    return softmax(hf_chain(ref_warp(mode, p, q, s, eos_priority), seen_ids, s))


def penalty_first_next(mode, p, q, seen_ids, s):
    """Our former order: the penalty on P and Q before the warper (P's nucleus, gate)."""

    def penalise(x):
        x = x.copy()
        x[seen_ids] = np.where(
            x[seen_ids] > 0, x[seen_ids] / s.repetition_penalty, x[seen_ids] * s.repetition_penalty
        )
        return x

    no_penalty = s.replace(repetition_penalty=1.0)
    return ref_next(mode, penalise(p), penalise(q), seen_ids, no_penalty)


# ----- the cases -----


def edge_row(rng, top_p_P, t_P):
    """P logits (negative, LLM-like) whose last nucleus token at T_P sits just inside
    the nucleus edge: penalising the seen edge and tail tokens first pushes it out."""
    probs = np.sort(rng.dirichlet(np.full(V, 0.3)))[::-1]
    k = int(np.searchsorted(np.cumsum(probs), top_p_P)) + 1  # nucleus size
    edge = k - 1
    head = probs[:edge] / probs[:edge].sum() * (top_p_P - 0.002)
    tail = probs[edge:] / probs[edge:].sum() * (1 - top_p_P + 0.002)
    sorted_p = t_P * np.log(np.concatenate([head, tail])) - 8.0
    ids = np.roll(np.arange(V), -1)  # rank r is token r + 1: the top token is not EOS
    p = np.empty(V)
    p[ids] = sorted_p
    return p, sorted(ids[edge : edge + 6].tolist()), int(ids[edge])


@pytest.fixture(scope="module")
def cases():
    """Rows of (p, q, seen ids, settings): random LLM-scale logits and edge rows."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        t_P = float(rng.choice([0.5, 0.7, 1.0]))
        p = rng.normal(0, 3.0, V)
        q = p * rng.uniform(0.3, 1.0) + rng.normal(0, rng.uniform(0.2, 3.0), V)
        seen = sorted(set(rng.integers(0, V, 6).tolist()))
        if i % 4 == 0:
            p, seen, edge = edge_row(rng, 0.9 if i % 8 else 0.95, t_P)
            q = p + rng.normal(0, 1.0, V)
            q[edge] = q.max() + 3.0  # Q wants the edge token
        s = SamplingParams(
            temperature=float(rng.choice([0.3, 0.5, 0.7, 1.0, 1.3])),
            top_p=float(rng.choice([0.8, 0.9, 1.0])),
            top_k=int(rng.choice([0, 0, 5, 20])),
            proposal_temperature=t_P,
            proposal_top_p=0.9 if i % 8 else 0.95,
            proposal_top_k=int(rng.choice([0, 0, 30])),
            aligner_temperature=float(rng.choice([0.5, 1.0, 2.0])),
            repetition_penalty=1.05,
            # Around the median KL of these rows: both par_kl branches occur.
            kl_threshold=float(rng.choice([0.5, 2.0, 8.0])),
            filter_order="top_p_first",
        )
        rows.append((p, q, seen, s))
    # P's argmax is EOS on the last rows (the EOS rules).
    for p, *_ in rows[-3:]:
        p[EOS] = p.max() + 1.0
    return rows


def ours(mode: modes.Mode, cases) -> np.ndarray:
    """Our next-token probabilities for every case row, `[rows, V]`."""
    p = jnp.asarray(np.stack([c[0] for c in cases]), jnp.float32)
    q = jnp.asarray(np.stack([c[1] for c in cases]), jnp.float32)
    seen = np.zeros((len(cases), V), bool)
    for i, c in enumerate(cases):
        seen[i, c[2]] = True
    rows = RowSettings.stack([c[3] for c in cases], 1, (EOS,))
    x = modes.Logits(p_BxV=p, qs_BxV=(q,), seen_BxV=jnp.asarray(seen))

    @jax.jit
    def run(x, rows):
        final, shaped = mode.logits(x, rows, mode.gate(x, rows))
        return jax.nn.softmax(final, axis=-1), shaped

    probs, shaped = run(x, rows)
    return np.asarray(probs, np.float64), np.asarray(shaped)


@pytest.mark.parametrize(
    "mode, eos_priority",
    [
        (modes.Par(eos_priority=True), True),
        (modes.ParKl(), False),
        (modes.Mds(), False),
        (modes.Mds(eos_priority=True), True),
        (modes.Proposal(), False),
    ],
    ids=["par", "par_kl", "mds", "mds_eos", "proposal"],
)
def test_next_token_distribution_equals_the_reference(mode, eos_priority, cases):
    got, shaped = ours(mode, cases)
    want = np.stack([ref_next(mode.name, p, q, seen, s, eos_priority) for p, q, seen, s in cases])
    assert np.abs(got - want).max() < TOL, np.abs(got - want).max(axis=1)
    if mode.name == "par_kl":
        assert 0 < shaped.mean() < 1, "both par_kl branches must occur"
    if eos_priority:
        assert np.all(want[-3:, EOS] == 1) and not shaped[-3:].any()


def test_penalty_before_the_nucleus_would_fail(cases):
    """The same rows under our former order differ from the reference far beyond 1e-6."""
    edge = [c for i, c in enumerate(cases) if i % 4 == 0 and i < len(cases) - 3]
    tv = [
        0.5
        * np.abs(penalty_first_next("par", p, q, seen, s) - ref_next("par", p, q, seen, s)).sum()
        for p, q, seen, s in edge
    ]
    assert max(tv) > 0.05, tv
    # And the edge token is inside the reference's nucleus but outside the penalised one.
    p, q, seen, s = edge[0]
    nucleus = np.isfinite(ref_nucleus_filter(p, 0, s.proposal_top_p, s.proposal_temperature))
    penalised = p.copy()
    penalised[seen] = np.where(p[seen] > 0, p[seen] / 1.05, p[seen] * 1.05)
    cut = np.isfinite(ref_nucleus_filter(penalised, 0, s.proposal_top_p, s.proposal_temperature))
    assert (nucleus & ~cut).any()


def test_output_chain_matches_transformers_processors(cases):
    """The numpy chain above is HF's: cross-checked against transformers' own processors."""
    import torch
    from transformers.generation import logits_process as lp

    for p, _, seen, s in cases[:8]:
        chain = lp.LogitsProcessorList(
            [
                lp.TemperatureLogitsWarper(s.temperature),
                lp.RepetitionPenaltyLogitsProcessor(s.repetition_penalty),
                lp.TopPLogitsWarper(s.top_p),
            ]
            + ([lp.TopKLogitsWarper(s.top_k)] if s.top_k else [])
        )
        ids = torch.tensor([seen])
        want = chain(ids, torch.tensor(p[None], dtype=torch.float64))[0].numpy()
        np.testing.assert_allclose(hf_chain(p, seen, s), want, rtol=1e-12)
