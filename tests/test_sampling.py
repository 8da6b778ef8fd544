"""Exact distributions of every decoding mode, on tiny random models.

Whole decoded outputs (prompt -> up to 3 new tokens, EOS = 0) are enumerated
in the test with an independent numpy implementation of each rule (full sort
top-p) over logits of the uncached full forward. The pass bound is the 99.9%
quantile of the total-variation distance that multinomial noise alone gives
at the same sample count; the same samples must fail against a target whose
temperature is 10% off, so the test can fail. `weighted_product` runs two
aligners with non-integer weights; `mds`, `par` and `par_kl` are also checked
token by token against the reference's rules in `test_reference_modes.py`.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.decoding import driver, modes
from ram_jax.decoding.compose import WeightedProduct
from ram_jax.decoding.processors import draw_from_cdf, filter_top
from ram_jax.decoding.resample import SeqSir
from ram_jax.decoding.sampling import RowSettings, SamplingParams
from ram_jax.models.config import ModelConfig
from ram_jax.models.transformer import abstract_params, forward
from tests.hf_fixtures import random_params

EOS, PAD = 0, 7
PROMPT = [1, 2, 3]
VOCAB = 6  # tokenizer length; model rows 6 and 7 are padding and must never appear
NEW = 3
ROWS = 32768
SIMS = 4000

P_CONFIG = ModelConfig(
    vocab_size=8,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    max_position_embeddings=64,
)
Q_CONFIG = P_CONFIG.replace(hidden_size=8, intermediate_size=16, head_dim=4)
Q2_CONFIG = Q_CONFIG.replace(num_heads=1)


def _model(config, seed):
    params = random_params(abstract_params(config), seed)
    kernel = np.array(params["lm_head"]["kernel"])
    rng = np.random.default_rng(seed)
    kernel[:, :VOCAB] = rng.normal(
        0, 1.6 / np.sqrt(config.hidden_size), (config.hidden_size, VOCAB)
    )
    kernel[:, VOCAB:] = 5.0  # huge logits on padded rows: sampled at once if not sliced
    params["lm_head"]["kernel"] = jnp.asarray(kernel)
    return params


@pytest.fixture(scope="module")
def models():
    return _model(P_CONFIG, 6), _model(Q_CONFIG, 16), _model(Q2_CONFIG, 26)


def _models(models, aligners=1):
    configs = (Q_CONFIG, Q2_CONFIG)[:aligners]
    return driver.Models((models[0], P_CONFIG), tuple(zip(models[1:], configs, strict=False)))


# ----- independent numpy reference of the token rules -----


def np_log_softmax(x):
    m = np.max(x)
    return x - m - np.log(np.sum(np.exp(x - m)))


def np_top_p(x, p):
    if p >= 1:
        return x
    probs = np.exp(np_log_softmax(x))
    order = np.argsort(-x, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    threshold = x[order][before < p].min()
    return np.where(x >= threshold, x, -np.inf)


def np_top_k(x, k):
    if k <= 0 or k >= len(x):
        return x
    return np.where(x >= np.sort(x)[-k], x, -np.inf)


def np_warp(x, t, top_p=1.0, top_k=0):
    return np_top_p(np_top_k(x / t, top_k), top_p)


def np_next(mode, p, qs, s: SamplingParams, eos_priority=False):
    """Exact next-token probabilities of `mode` (no repetition penalty, top-k first)."""
    out = lambda x: np_warp(x, s.temperature, s.top_p, s.top_k)
    prop = lambda x: np_warp(x, s.proposal_temperature, s.proposal_top_p, s.proposal_top_k)
    weights = s.aligner_weights or (1.0,) * len(qs)
    q = sum(w * qi for w, qi in zip(weights, qs, strict=True))  # the pooled aligner
    if mode == "proposal":
        logits = out(p)
    elif mode == "aligner":
        logits = out(q)
    elif mode in ("product", "weighted_product"):
        joint = np_log_softmax(prop(p)) + sum(
            w * np_log_softmax(qi / s.temperature) for w, qi in zip(weights, qs, strict=True)
        )
        logits = np_top_p(np_top_k(joint, s.top_k), s.top_p)
    elif mode == "par":
        if eos_priority and np.argmax(p) == EOS:
            return np.eye(len(p))[EOS]
        logits = out(np.where(np.isfinite(prop(p)), q, -np.inf))
    elif mode == "par_kl":
        kl = np.sum(np.exp(np_log_softmax(p)) * (np_log_softmax(p) - np_log_softmax(q)))
        return np_next("par" if kl <= s.kl_threshold else "proposal", p, qs, s)
    else:
        raise ValueError(mode)
    return np.exp(np_log_softmax(logits))


@pytest.fixture(scope="module")
def prefix_logits(models):
    """{generated prefix: (p logits, [q logits per aligner])} from uncached full forwards."""
    prefixes = [()] + [
        pre for n in range(1, NEW) for pre in itertools.product(range(1, VOCAB), repeat=n)
    ]
    seqs = np.array([PROMPT + list(pre) + [0] * (NEW - 1 - len(pre)) for pre in prefixes])
    idx = np.array([len(PROMPT) + len(pre) - 1 for pre in prefixes])
    mask = np.arange(seqs.shape[1])[None] <= idx[:, None]
    logits = []
    for params, config in zip(models, (P_CONFIG, Q_CONFIG, Q2_CONFIG), strict=True):
        full, _ = forward(params, jnp.asarray(seqs), config, mask_BxT=jnp.asarray(mask))
        logits.append(np.asarray(full)[np.arange(len(prefixes)), idx].astype(np.float64))
    return {pre: (logits[0][i], [x[i] for x in logits[1:]]) for i, pre in enumerate(prefixes)}


def enumerate_outputs(prefix_logits, vocab, new, next_probs, aligners=1):
    """({output tuple (PAD after EOS): probability}, {output: log Q(output)})."""
    probs, qlog = {}, {}
    for pre, (p, qs) in prefix_logits.items():
        if len(pre) < new and all(t < vocab for t in pre):
            qs = [q[:vocab] for q in qs[:aligners]]
            probs[pre] = next_probs(p[:vocab], qs)
            qlog[pre] = np_log_softmax(qs[0])
    dist, seq_logq = {}, {}

    def walk(pre, prob, lq):
        for tok in range(vocab):
            pt, lt = prob * probs[pre][tok], lq + qlog[pre][tok]
            if pt == 0:
                continue
            seq = pre + (tok,)
            if tok == EOS or len(seq) == new:
                key = seq + (PAD,) * (new - len(seq))
                dist[key], seq_logq[key] = pt, lt
            else:
                walk(seq, pt, lt)

    walk((), 1.0, 0.0)
    return dist, seq_logq


def tv(counts: dict, dist: dict, n: int) -> float:
    keys = set(counts) | set(dist)
    return 0.5 * sum(abs(counts.get(k, 0) / n - dist.get(k, 0.0)) for k in keys)


def noise_quantile(dist: dict, n: int, seed=0) -> float:
    """99.9% quantile of TV(empirical, dist) under multinomial sampling alone."""
    probs = np.array(list(dist.values()))
    draws = np.random.default_rng(seed).multinomial(n, probs / probs.sum(), size=SIMS)
    return float(np.quantile(0.5 * np.abs(draws / n - probs).sum(axis=1), 0.999))


def counts_of(tokens_BxR):
    keys, counts = np.unique(np.asarray(tokens_BxR), axis=0, return_counts=True)
    return {tuple(int(t) for t in k): int(c) for k, c in zip(keys, counts, strict=True)}


SETTINGS = {
    "proposal": SamplingParams(temperature=0.7, top_p=0.8),
    "aligner": SamplingParams(temperature=1.3, top_p=0.9, top_k=4),
    "product": SamplingParams(temperature=1.2, proposal_temperature=0.8, proposal_top_p=0.9),
    "par": SamplingParams(
        temperature=0.9, top_p=0.95, proposal_temperature=1.0, proposal_top_p=0.9
    ),
    "par_kl": SamplingParams(temperature=0.9, top_p=0.95, proposal_top_p=0.9, kl_threshold=0.7),
    # Two aligners, non-integer weights: P Q1^0.6 Q2^1.7 on P's nucleus.
    "weighted_product": SamplingParams(
        temperature=1.1, proposal_temperature=0.9, proposal_top_p=0.95, aligner_weights=(0.6, 1.7)
    ),
}
MODE_OBJECTS = {"par": modes.Par(eos_priority=True), "weighted_product": WeightedProduct()}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_whole_outputs_follow_exact_distribution(name, models, prefix_logits):
    s = SETTINGS[name].replace(max_new_tokens=NEW)
    mode = MODE_OBJECTS.get(name) or modes.get_mode(name)
    aligners = 2 if name == "weighted_product" else 1
    out = driver.generate(
        _models(models, aligners),
        [PROMPT] * ROWS,
        mode,
        s,
        key=jax.random.key(7),
        vocab_size=VOCAB,
        eos_ids=(EOS,),
        pad_id=PAD,
        min_bucket=4,
    )
    counts = counts_of(out.tokens[:, :NEW])
    assert all(t < VOCAB or t == PAD for k in counts for t in k), "a padded row was sampled"
    eos_rule = getattr(mode, "eos_priority", False)
    rule = lambda s: lambda p, qs: np_next(name, p, qs, s, eos_rule)
    exact, _ = enumerate_outputs(prefix_logits, VOCAB, NEW, rule(s), aligners)
    assert abs(sum(exact.values()) - 1) < 1e-9
    assert tv(counts, exact, ROWS) < noise_quantile(exact, ROWS)
    wrong, _ = enumerate_outputs(
        prefix_logits, VOCAB, NEW, rule(s.replace(temperature=s.temperature * 1.1)), aligners
    )
    assert tv(counts, wrong, ROWS) > noise_quantile(wrong, ROWS), "test cannot tell 10% T"
    if name == "par_kl":
        assert 0.05 < out.aligner_branch[out.tokens != PAD].mean() < 0.95, "both branches"


def _importance_rho(p_probs, w):
    """rho = E_P[w^2] / E_P[w]^2, the constant of the self-normalised IS bias bound."""
    return float(np.sum(p_probs * w**2) / np.sum(p_probs * w) ** 2)


def test_sir_tends_to_product_on_the_nucleus(models):
    """Bias of SIR's output law is at most 6 rho / n in TV (Agapiou et al. 2017, Thm 2.1)."""
    s = SamplingParams(temperature=2.5, proposal_temperature=1.5, proposal_top_p=0.95)
    tokens = jnp.asarray([PROMPT])
    p = np.asarray(forward(models[0], tokens, P_CONFIG)[0])[0, -1, :VOCAB].astype(np.float64)
    q = np.asarray(forward(models[1], tokens, Q_CONFIG)[0])[0, -1, :VOCAB].astype(np.float64)
    p_f = np.exp(np_log_softmax(np_warp(p, 1.5, 0.95)))
    w = np.exp(np_log_softmax(q / 2.5))
    target = p_f * w / np.sum(p_f * w)
    rows = 16384
    keys = jax.random.split(jax.random.key(3), rows)
    x = modes.Logits(
        p_BxV=jnp.broadcast_to(jnp.asarray(p, jnp.float32), (rows, VOCAB)),
        qs_BxV=(jnp.broadcast_to(jnp.asarray(q, jnp.float32), (rows, VOCAB)),),
        seen_BxV=jnp.zeros((rows, VOCAB), bool),
    )
    settings = RowSettings.stack([s] * rows, 1)
    dist = {(i,): float(x) for i, x in enumerate(target) if x > 0}
    noise = noise_quantile(dist, rows)
    tvs = {}
    for n in (1, 4, 64, 256):
        rule = jax.jit(modes.Sir(num_candidates=n).draw)
        tokens_B = np.asarray(rule(keys, x, settings)[0])
        assert np.all(p_f[tokens_B] > 0), "sir drew outside P's nucleus"
        tvs[n] = tv(counts_of(tokens_B[:, None]), dist, rows)
    assert tvs[1] > tvs[4] > tvs[64], tvs
    assert tvs[256] < 6 * _importance_rho(p_f, w) / 256 + noise, tvs


def test_seq_sir_tends_to_sequence_level_product(models, prefix_logits):
    """N proposals resampled by Q(y|x) tend to P(y|x) Q(y|x) / Z with TV bias <= 6 rho / N."""
    vocab, new, rows = 4, 2, 65536
    s = SamplingParams(temperature=0.9, max_new_tokens=new)
    p_dist, seq_logq = enumerate_outputs(
        prefix_logits, vocab, new, lambda p, qs: np_next("proposal", p, qs, s)
    )
    keys = list(p_dist)
    p_probs = np.array([p_dist[k] for k in keys])
    w = np.exp(np.array([seq_logq[k] for k in keys]))
    target = dict(zip(keys, p_probs * w / np.sum(p_probs * w), strict=True))
    tvs, noise = {}, {}
    for n in (1, 4, 64, 256):
        out = driver.generate(
            _models(models),
            [PROMPT] * (rows // n),
            "proposal",
            s,
            seq_sir=SeqSir(n),
            key=jax.random.key(n),
            vocab_size=vocab,
            eos_ids=(EOS,),
            pad_id=PAD,
            min_bucket=4,
        )
        counts = counts_of(out.tokens)
        tvs[n] = tv(counts, target, rows // n)
        noise[n] = noise_quantile(target, rows // n)
    assert tvs[1] > tvs[4] > tvs[64], tvs
    assert tvs[256] < 6 * _importance_rho(p_probs, w) / 256 + noise[256], (tvs, noise)


def _filter(x, top_p=1.0, top_k=0, top_k_first=True):
    """`filter_top` with one setting for every row of `x`."""
    b = x.shape[0]
    full = lambda v, dtype: jnp.full((b,), v, dtype)
    return np.asarray(
        filter_top(
            jnp.asarray(x, jnp.float32),
            full(top_p, jnp.float32),
            full(top_k, jnp.int32),
            full(top_k_first, bool),
        )
    )


def top_p_filter(x, p):
    return _filter(np.asarray(x), top_p=p)


def test_filters_match_reference_with_ties():
    x = np.asarray([[2.0, 1.0, 1.0, 0.5, 1.0, -3.0]])
    # top-k 2: the 2nd largest is 1.0, tied three ways: all kept.
    assert np.isfinite(_filter(x, top_k=2)).tolist() == [[True, True, True, False, True, False]]
    for p in (0.1, 0.4, 0.5, 0.8, 0.95, 0.999):
        want = np_top_p(np.asarray(x[0], np.float64), p)
        got = top_p_filter(x, p)[0]
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"{p}")


def test_filters_take_per_row_settings_and_orders():
    """Each row its own top-k, top-p and order, in one call, as numpy row by row."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2.0, (12, 300)).astype(np.float32)
    x[3, :100] = -np.inf  # removed tokens: never brought back
    top_p = np.array([1.0, 0.5, 0.9, 0.7, 1.0, 0.3, 0.95, 0.8, 0.6, 1.0, 0.99, 0.4], np.float32)
    top_k = np.array([0, 0, 7, 50, 3, 20, 1, 299, 5, 0, 12, 40], np.int32)
    first = np.array([True, False] * 6)
    got = np.isfinite(
        np.asarray(filter_top(jnp.asarray(x), jnp.asarray(top_p), jnp.asarray(top_k), first))
    )
    for i, row in enumerate(x.astype(np.float64)):
        if first[i]:
            want = np_top_p(np_top_k(row, top_k[i]), top_p[i])
        else:
            want = np_top_k(np_top_p(row, top_p[i]), top_k[i])
        np.testing.assert_array_equal(got[i], np.isfinite(want), err_msg=f"row {i}")


def test_top_p_bisection_is_exact_on_wide_nuclei():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (64, 500)).astype(np.float32)  # flat: nuclei of hundreds
    x[:, 7] = x[:, 8]  # a tie
    for p in (0.3, 0.9):
        got = np.isfinite(np.asarray(top_p_filter(jnp.asarray(x), p)))
        want = np.stack([np.isfinite(np_top_p(row.astype(np.float64), p)) for row in x])
        assert want.sum(1).min() > 16  # wide nuclei
        # float32 vs float64 masses may disagree only on a token right at the boundary
        assert np.abs(got.sum(1) - want.sum(1)).max() <= 1
        assert (got != want).sum() <= 2, (got != want).sum()


def test_top_p_bisection_exact_on_wide_ranges_and_removed_tokens():
    # Negative and positive logits over many binades, -0.0 / +0.0 and removed
    # (-inf) tokens: the bisection on float order keys must find the full-sort
    # threshold whatever the spread.
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16, 300)) * np.logspace(-3, 3, 300)).astype(np.float32)
    x[:, :40] = -np.inf
    x[:, 50], x[:, 51] = -0.0, 0.0
    for p in (0.05, 0.5, 0.99):
        got = np.isfinite(np.asarray(top_p_filter(jnp.asarray(x), p)))
        want = np.stack([np.isfinite(np_top_p(row.astype(np.float64), p)) for row in x])
        assert not got[:, :40].any()
        assert (got != want).sum() <= 1, (p, (got != want).sum())


def test_sampler_draws_exact_distribution_across_blocks():
    # 517 tokens: five CDF blocks, the last one partial; a third of the tokens removed.
    rng = np.random.default_rng(3)
    v, n = 517, 200_000
    logits = rng.normal(0, 1.5, v).astype(np.float32)
    logits[rng.random(v) < 0.33] = -np.inf
    logits[-1] = 2.0  # mass in the padded last block
    probs = np.exp(np_log_softmax(logits.astype(np.float64)))
    keys = jax.random.split(jax.random.key(4), 4)
    draws = np.asarray(
        jax.jit(draw_from_cdf, static_argnums=2)(keys, jnp.tile(logits, (4, 1)), n // 4)
    )
    assert np.isfinite(logits[draws]).all(), "a removed token was drawn"
    counts = dict(zip(*np.unique(draws, return_counts=True), strict=True))
    exact = {i: float(q) for i, q in enumerate(probs) if q > 0}
    assert tv(counts, exact, n) < noise_quantile(exact, n)
    wrong = np.exp(np_log_softmax(logits.astype(np.float64) / 1.1))
    assert tv(counts, {i: float(q) for i, q in enumerate(wrong) if q > 0}, n) > noise_quantile(
        exact, n
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(top_p=0.0), "top_p=0.0 must lie in (0, 1]"),
        (dict(proposal_top_p=1.5), "proposal_top_p=1.5"),
        (dict(temperature=-0.1), "temperature=-0.1 must be >= 0"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(repetition_penalty=0.0), "repetition_penalty=0.0"),
        (dict(aligner_weights=(1.0, -0.5)), "aligner_weights=(1.0, -0.5) must be one finite"),
        (dict(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
        (dict(filter_order="sorted"), "filter_order='sorted'"),
    ],
)
def test_bad_sampling_parameters_rejected(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplingParams(**changes)


def test_bad_modes_rejected():
    with pytest.raises(ValueError, match=r"unknown mode 'beam'; choose one of \["):
        modes.get_mode("beam")
    with pytest.raises(ValueError, match="num_candidates=0 must be >= 1"):
        modes.get_mode("sir", num_candidates=0)
    with pytest.raises(ValueError, match=r"mode 'par_kl' takes no \['eos_priority'\]"):
        modes.get_mode("par_kl", eos_priority=True)
