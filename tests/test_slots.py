"""Decode slots: per-row cache positions, requests inserted into a running batch.

A request inserted into a free row while other rows decode gets exactly the
tokens (and log-probs) `driver.generate` gives it alone, whatever row, time
and neighbours; one table of modes serves rows of different modes and
aligners; prefill + per-row cached steps equal the full forward.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ram_jax.decoding import batching, decoder, driver
from ram_jax.decoding.dispatch import PerRow
from ram_jax.decoding.modes import get_mode
from ram_jax.decoding.sampling import RowSettings, SamplingParams
from ram_jax.models.cache import init_cache, put_row
from ram_jax.models.config import get_preset
from ram_jax.models.transformer import abstract_params, forward
from tests import hf_fixtures
from tests.hf_fixtures import random_params

VOCAB, EOS, PAD = 250, 0, 1
SLOTS, ROWS, CHUNK, STOP_WIDTH = 64, 4, 3, 4
P_CONFIG = get_preset("tiny-llama")
Q_CONFIG = P_CONFIG.replace(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
)
MODES = ("proposal", "product", "par_kl", "weighted_product")
BASE = SamplingParams(
    temperature=0.9, top_p=0.9, proposal_top_p=0.95, repetition_penalty=1.2, max_new_tokens=9
)
# (prompt, mode, aligners and their weights, settings): mixed modes and aligners.
REQUESTS = [
    ([5, 9, 17, 33, 2], "par_kl", {0: 1.0}, BASE.replace(kl_threshold=0.5)),
    ([7, 1, 4, 4, 8, 100, 200, 3, 11, 12, 13], "product", {1: 1.0}, BASE),
    ([42, 43, 44], "weighted_product", {0: 1.0, 1: 0.5}, BASE.replace(max_new_tokens=5)),
    ([3, 4], "proposal", {}, BASE.replace(temperature=0.0)),
    ([8, 8, 9], "product", {0: 1.0}, BASE.replace(top_k=7, max_new_tokens=12)),
    ([11, 12, 13, 14], "par_kl", {1: 1.0}, BASE.replace(kl_threshold=10.0)),
]


@pytest.fixture(scope="module")
def models():
    p = random_params(abstract_params(P_CONFIG), 11)
    qs = [random_params(abstract_params(Q_CONFIG), s) for s in (12, 13)]
    return driver.Models((p, P_CONFIG), tuple((q, Q_CONFIG) for q in qs)).arranged()


def _alone(models, i):
    """Request i decoded by `driver.generate` with only its aligners, key split(key(i), 1)[0]."""
    prompt, mode, weights, params = REQUESTS[i]
    used = sorted(weights)
    sub = driver.Models(models.proposal, tuple(models.aligners[a] for a in used))
    if mode == "weighted_product":
        params = params.replace(aligner_weights=tuple(weights[a] for a in used))
    return driver.generate(
        sub,
        [prompt],
        mode,
        params,
        key=jax.random.key(i),
        vocab_size=VOCAB,
        eos_ids=(EOS,),
        pad_id=PAD,
    )


@pytest.fixture(scope="module")
def slotted(models):
    """Every request through a running 4-row batch: joined as rows free, in order."""
    table = PerRow(tuple(get_mode(m) for m in MODES))
    static = dict(configs=models.configs, vocab_size=VOCAB)
    state = decoder.empty(
        models.params, batch=ROWS, slots=SLOTS, num_aligners=2, stop_width=STOP_WIDTH, **static
    )
    pending, owner, out = list(range(len(REQUESTS))), [-1] * ROWS, {}
    halt = np.zeros(ROWS, bool)
    while pending or any(o >= 0 for o in owner):
        for row in range(ROWS):
            if owner[row] < 0 and pending:
                i = pending.pop(0)
                prompt, mode, weights, params = REQUESTS[i]
                w = tuple(weights.get(a, 0.0) for a in range(2))
                rows = RowSettings.stack(
                    [params.replace(aligner_weights=w)],
                    2,
                    (EOS,),
                    modes=[MODES.index(mode)],
                    stop_width=STOP_WIDTH,
                )
                length = batching.bucket_length(len(prompt))
                tokens, mask = batching.left_pad([prompt], length, PAD)
                key = jax.random.split(jax.random.key(i), 1)
                state = decoder.insert(
                    state, models.params, tokens, mask, key, rows, row, slots=SLOTS, **static
                )
                owner[row], out[i] = i, []
        state, dev, count = decoder.advance(
            state, models.params, halt, CHUNK, mode=table, pad_id=PAD, chunk=CHUNK, **static
        )
        tokens = np.asarray(dev["tokens"])[: int(count)]
        live, done = np.asarray(dev["live"])[: int(count)], np.asarray(dev["done"])[int(count) - 1]
        lp = np.asarray(dev["logprobs_p"])[: int(count)]
        for row, i in enumerate(owner):
            if i >= 0:
                out[i] += [
                    (t, p)
                    for t, p, ok in zip(tokens[:, row], lp[:, row], live[:, row], strict=True)
                    if ok
                ]
                if done[row]:
                    owner[row] = -1
    return out


def test_inserted_requests_equal_generate_alone(models, slotted):
    for i in range(len(REQUESTS)):
        alone = _alone(models, i)
        n = int(alone.lengths[0])
        got = slotted[i]
        np.testing.assert_array_equal([t for t, _ in got], alone.tokens[0, :n], err_msg=f"req {i}")
        np.testing.assert_allclose([p for _, p in got], alone.logprobs_p[0, :n], atol=1e-6)


def test_per_row_cache_steps_equal_full_forward():
    """Two rows at different positions: prefill each alone, put into rows, step per row."""
    config = P_CONFIG
    params = hf_fixtures.random_params(abstract_params(config), 3)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 200, 14).astype(np.int32), rng.integers(2, 200, 9).astype(np.int32)]
    prompt = (6, 3)
    cache = init_cache(config, 2, 32, per_row=True)
    for row, (seq, n) in enumerate(zip(seqs, prompt, strict=True)):
        one = init_cache(config, 1, 32)
        _, one = forward(params, seq[None, :n], config, cache=one)
        cache = put_row(cache, one, row)
    np.testing.assert_array_equal(cache.index, prompt)
    steps = [[], []]
    for t in range(max(len(s) - n for s, n in zip(seqs, prompt, strict=True))):
        feed = [t + n < len(s) for s, n in zip(seqs, prompt, strict=True)]
        tok = np.asarray([s[min(t + n, len(s) - 1)] for s, n in zip(seqs, prompt, strict=True)])
        out, cache = forward(
            params, tok[:, None], config, mask_BxT=np.asarray(feed)[:, None], cache=cache
        )
        for row in range(2):
            if feed[row]:
                steps[row].append(np.asarray(out[row, 0]))
    np.testing.assert_array_equal(cache.index, [len(s) for s in seqs])
    for row, (seq, n) in enumerate(zip(seqs, prompt, strict=True)):
        full, _ = forward(params, seq[None], config)
        np.testing.assert_allclose(np.stack(steps[row]), np.asarray(full[0, n:]), atol=1e-5)
