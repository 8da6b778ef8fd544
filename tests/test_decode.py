"""The decoder and its host driver: HF greedy parity, per-row settings in one compile,
rows independent of their batch, cached = full forward, chunking and layouts and
sharding change nothing, the composition identities, validation before compute."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ram_jax import sharding
from ram_jax.decoding import batching, decoder, driver
from ram_jax.decoding.processors import kl_divergence
from ram_jax.decoding.resample import SeqSir
from ram_jax.decoding.sampling import SamplingParams
from ram_jax.models.config import get_preset
from ram_jax.models.convert import load_hf
from ram_jax.models.transformer import abstract_params, forward
from tests import hf_fixtures
from tests.hf_fixtures import random_params

VOCAB = 250  # tokenizer length; embedding rows 250..255 are padding
EOS, PAD = 0, 1
NEW = 10
P_CONFIG = get_preset("tiny-llama")
Q_CONFIG = P_CONFIG.replace(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
)
PROMPTS = [[5, 9, 17, 33, 2], [7, 1, 4, 4, 8, 100, 200, 3, 11, 12, 13], [42, 43, 44]]
PAR_KL = SamplingParams(
    temperature=0.8,
    top_p=0.9,
    top_k=40,
    proposal_temperature=0.7,
    proposal_top_p=0.95,
    repetition_penalty=1.3,
    kl_threshold=0.48,
    max_new_tokens=NEW,
)


@pytest.fixture(scope="module")
def raw():
    """The models as loaded (stacked layers, separate projections)."""
    p = random_params(abstract_params(P_CONFIG), 11)
    q = random_params(abstract_params(Q_CONFIG), 12)
    return driver.Models((p, P_CONFIG), ((q, Q_CONFIG),))


@pytest.fixture(scope="module")
def models(raw):
    return raw.arranged()


KEYS = jax.random.split(jax.random.key(5), len(PROMPTS))


def _decode(models, prompts=PROMPTS, params=PAR_KL, mode="par_kl", keys=KEYS, **kw):
    kw = {"eos_ids": (EOS,), "pad_id": PAD, "vocab_size": VOCAB, **kw}
    return driver.generate(models, prompts, mode, params, prompt_keys=keys, **kw)


def _fields(record):
    names = ("tokens", "lengths", "logprobs_p", "logprobs_q", "aligner_branch")
    return {n: getattr(record, n) for n in names}


@pytest.fixture(scope="module")
def reference(models):
    return _decode(models)


def test_greedy_proposal_equals_transformers_generate(tmp_path):
    hf = hf_fixtures.random_model(hf_fixtures.llama_config(tied=False), seed=3)
    hf.save_pretrained(tmp_path)
    config, params = load_hf(str(tmp_path))
    tokens, mask = hf_fixtures.left_padded_batch(256, lengths=(9, 4), seed=1)
    want = hf.generate(
        input_ids=torch.from_numpy(tokens.astype(np.int64)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=0,
        pad_token_id=0,
    ).numpy()[:, tokens.shape[1] :]
    out = driver.generate(
        driver.Models((params, config)),
        [row[m].tolist() for row, m in zip(tokens, mask, strict=True)],
        "proposal",
        SamplingParams(temperature=0.0, max_new_tokens=12),
        key=jax.random.key(0),
        vocab_size=256,
        eos_ids=(0,),
        pad_id=0,
    )
    np.testing.assert_array_equal(out.tokens, want)


def test_rows_equal_rows_decoded_alone(models, reference):
    assert 0 < reference.aligner_branch.mean() < 1, "both par_kl branches must occur"
    assert np.all(reference.tokens < VOCAB), "a padded vocabulary row was sampled"
    for row in range(len(PROMPTS)):
        alone = _decode(models, PROMPTS[row : row + 1], keys=KEYS[row : row + 1])
        for name, got in _fields(alone).items():
            np.testing.assert_allclose(got[0], _fields(reference)[name][row], atol=1e-5)


MIXED = [
    PAR_KL,
    PAR_KL.replace(temperature=0.0, top_k=0, kl_threshold=10.0, max_new_tokens=4),
    PAR_KL.replace(top_p=0.5, proposal_top_p=0.6, repetition_penalty=1.0, stop_token_ids=(7,)),
    PAR_KL.replace(temperature=1.4, top_k=5, filter_order="top_p_first", aligner_weights=(0.5,)),
    PAR_KL.replace(kl_threshold=0.0, proposal_temperature=0.0, max_new_tokens=7),
]


def test_mixed_row_settings_compile_once_and_equal_rows_alone(models):
    """Five rows, five settings: one compile; each row as decoded alone with its own."""
    prompts = [PROMPTS[i % 3] for i in range(5)]
    keys = jax.random.split(jax.random.key(9), 5)
    sizes = decoder.start._cache_size(), decoder.advance._cache_size()
    batch = _decode(models, prompts, MIXED, keys=keys)
    assert (decoder.start._cache_size(), decoder.advance._cache_size()) == (
        sizes[0] + 1,
        sizes[1] + 1,
    )
    sizes = decoder.start._cache_size(), decoder.advance._cache_size()
    for row in range(5):
        alone = _decode(models, prompts[row : row + 1], MIXED[row], keys=keys[row : row + 1])
        for name, got in _fields(alone).items():
            want = _fields(batch)[name][row]
            if want.ndim:  # the batch is as wide as its longest request; the rest is padding
                width = got.shape[-1]
                assert np.all(want[..., width:] == (PAD if name == "tokens" else 0)), name
                want = want[..., :width]
            np.testing.assert_allclose(got[0], want, atol=1e-5, err_msg=f"{row} {name}")
    # The rows alone share one compile (batch 1; maybe made by an earlier test).
    assert decoder.start._cache_size() <= sizes[0] + 1
    assert decoder.advance._cache_size() <= sizes[1] + 1
    assert list(batch.lengths[[1, 4]]) <= [4, 7] and batch.lengths[0] == NEW
    assert batch.finish_reasons[1] == "length" and batch.lengths[1] == 4
    assert (batch.aligner_branch[4] == 0).all(), "tau = 0 keeps the gate shut"
    branch = batch.aligner_branch[1, : batch.lengths[1]]
    assert branch.all(), "tau = 10 keeps the gate open"
    stop = batch.tokens[2, : batch.lengths[2]]
    assert 7 not in stop[:-1] and (batch.finish_reasons[2] == "length" or stop[-1] in (7, EOS))


def test_cached_logprobs_equal_full_forward(models, reference):
    gen = reference.tokens
    live = np.arange(NEW)[None] < reference.lengths[:, None]
    tokens, mask = batching.left_pad(PROMPTS, 16, PAD)
    seq = np.concatenate([tokens, gen], axis=1)
    seq_mask = np.concatenate([mask, live], axis=1)
    logits = {}
    for name, (params, config) in zip("pq", (models.proposal, models.aligners[0]), strict=True):
        full, _ = forward(params, jnp.asarray(seq), config, mask_BxT=jnp.asarray(seq_mask))
        logits[name] = np.asarray(full)[:, 15:-1, :VOCAB]  # predicts each generated token
        logp = np.asarray(jax.nn.log_softmax(logits[name], axis=-1))
        want = np.take_along_axis(logp, gen[..., None], axis=-1)[..., 0] * live
        got = reference.logprobs_p if name == "p" else reference.logprobs_q[:, 0]
        np.testing.assert_allclose(got, want, atol=2e-4)
    # The per-row KL gate, recomputed from the full forward, picks the same branch.
    kl = np.asarray(kl_divergence(jnp.asarray(logits["p"]), jnp.asarray(logits["q"])))
    clear = live & (np.abs(kl - PAR_KL.kl_threshold) > 1e-3)
    np.testing.assert_array_equal(
        reference.aligner_branch[clear], (kl <= PAR_KL.kl_threshold)[clear]
    )


def test_chunks_change_nothing_and_done_rows_stop_the_loop(models, reference):
    got = _decode(models, chunk=1)
    for name, value in _fields(got).items():
        np.testing.assert_allclose(value, _fields(reference)[name], atol=1e-5, err_msg=name)
    # Every row's 3rd token becomes a stop id: all rows finish within 3 tokens, the
    # device loop leaves after 2 steps, and the rest reads as padding.
    eos = tuple(sorted({int(t) for t in reference.tokens[:, 2]}))
    early = _decode(models, eos_ids=eos, chunk=16)
    assert np.all(early.lengths <= 3) and early.batches[0].steps <= 2
    assert np.all(early.tokens[:, 3:] == PAD)
    keep = np.arange(NEW)[None] < early.lengths[:, None]
    np.testing.assert_array_equal(early.tokens[keep], reference.tokens[keep])


@pytest.mark.parametrize("unroll_layers", [False, True])
def test_layer_layouts_give_same_tokens(models, reference, unroll_layers):
    raw = driver.Models(
        (_stacked(models.proposal[0]), P_CONFIG), ((_stacked(models.aligners[0][0]), Q_CONFIG),)
    )
    out = _decode(raw.arranged(unroll_layers))
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    np.testing.assert_allclose(out.logprobs_p, reference.logprobs_p, atol=1e-5)


def _stacked(params):
    """Params with per-layer dicts stacked back on a leading axis."""
    layers = params["layers"]
    if isinstance(layers, dict):
        return params
    return {**params, "layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}


def test_sharded_params_give_same_tokens(raw, reference):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    placed = [jax.device_put(p, sharding.param_shardings(p, mesh)) for p in raw.params]
    assert len(placed[0]["layers"]["attn"]["q_proj"]["kernel"].sharding.device_set) == 8
    sharded = driver.Models((placed[0], P_CONFIG), ((placed[1], Q_CONFIG),))
    out = _decode(sharded.arranged(False))
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    np.testing.assert_allclose(out.logprobs_p, reference.logprobs_p, atol=1e-5)


def test_one_compile_per_bucket(models, reference):
    size = decoder.start._cache_size()
    for prompt, t in (([9] * 16, 0.3), ([1, 2], 1.7), ([7] * 9, 0.0)):  # all in the 16 bucket
        _decode(models, [prompt], PAR_KL.replace(temperature=t), keys=KEYS[:1])
    assert decoder.start._cache_size() <= size + 1  # batch 1, if no earlier test compiled it
    size = decoder.start._cache_size()
    _decode(models, [[9] * 17], keys=KEYS[:1])  # the 32 bucket
    assert decoder.start._cache_size() == size + 1


def test_seq_sir_outputs_do_not_depend_on_batch_size(models):
    params = SamplingParams(temperature=1.0, max_new_tokens=4)
    kw = dict(key=jax.random.key(8), seq_sir=SeqSir(3), mode="proposal", params=params)
    outs = [_decode(models, batch_size=size, keys=None, **kw) for size in (None, 2)]
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    np.testing.assert_array_equal(outs[0].candidate, outs[1].candidate)
    # A prompt's output depends on its own key only: decoded alone with it, the same.
    keys = jax.random.split(kw.pop("key"), len(PROMPTS))
    alone = _decode(models, PROMPTS[2:], keys=keys[2:], batch_size=2, **kw)
    np.testing.assert_array_equal(alone.tokens[0], outs[0].tokens[2])
    assert len({tuple(t) for t in outs[0].tokens}) == len(PROMPTS)


def test_weighted_product_identities(models):
    """w = 0 is `proposal` token for token; one aligner at w = 1 is `product`."""
    base = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=NEW)
    proposal = _decode(models, params=base, mode="proposal")
    zero = _decode(
        models,
        params=base.replace(
            proposal_temperature=0.8, top_p=1.0, proposal_top_p=0.9, aligner_weights=(0.0,)
        ),
        mode="weighted_product",
    )
    np.testing.assert_array_equal(zero.tokens, proposal.tokens)
    assert not zero.aligner_branch.any()
    with_penalty = PAR_KL.replace(top_p=0.95, repetition_penalty=1.2)
    product = _decode(models, params=with_penalty, mode="product")
    one = _decode(
        models, params=with_penalty.replace(aligner_weights=(1.0,)), mode="weighted_product"
    )
    np.testing.assert_array_equal(one.tokens, product.tokens)
    assert len(np.unique(one.tokens)) > 5  # a real sample, not a constant


def test_constant_aligner_product_equals_proposal(models):
    q_const = jax.tree.map(jnp.zeros_like, models.aligners[0][0])  # zero lm_head: logits all 0
    both = driver.Models(models.proposal, ((q_const, Q_CONFIG),))
    product = SamplingParams(proposal_temperature=0.8, proposal_top_p=0.9, max_new_tokens=NEW)
    proposal = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=NEW)
    a = _decode(both, params=product, mode="product")
    b = _decode(both, params=proposal, mode="proposal")
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len(np.unique(a.tokens)) > 5  # a real sample, not a constant


@pytest.mark.parametrize(
    "prompts, params, mode, aligners, message",
    [
        ([[1, 2], []], PAR_KL, "par_kl", 1, "prompt 1 is empty"),
        ([[1] * 1020], PAR_KL.replace(max_new_tokens=8), "par_kl", 1, "model context of 1024"),
        ([[1, 2]], PAR_KL, "par_kl", 0, "needs an aligner"),
        ([[1, 260]], PAR_KL, "par_kl", 1, r"ids \[260\] outside"),
        ([[1, 2]], PAR_KL, "product", 2, "takes 1 aligner"),
        ([[1, 2]], PAR_KL.replace(aligner_weights=(0.5,)), "product", 1, "does not read aligner"),
        ([[1, 2]], PAR_KL.replace(aligner_weights=(1.0, 1.0)), "par", 1, "2 weights for 1"),
        ([[1, 2]], PAR_KL.replace(stop=("x",)), "par", 1, "stop strings need the tokenizer"),
        ([[1, 2]], [PAR_KL] * 2, "par", 1, "2 SamplingParams for 1 prompts"),
    ],
)
def test_bad_requests_rejected_before_compute(models, prompts, params, mode, aligners, message):
    size = decoder.start._cache_size()
    chosen = driver.Models(models.proposal, (models.aligners * 2)[:aligners])
    with pytest.raises(ValueError, match=message):
        _decode(chosen, prompts, params, mode=mode, keys=None, key=jax.random.key(0))
    assert decoder.start._cache_size() == size


def test_tokenizer_longer_than_model_rejected(models):
    small = driver.Models(
        models.proposal, ((models.aligners[0][0], Q_CONFIG.replace(vocab_size=256)),)
    )
    with pytest.raises(ValueError, match="exceeds the proposal's 256 embedding rows"):
        _decode(small, [[1]], vocab_size=300, keys=KEYS[:1])
