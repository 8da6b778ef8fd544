"""The decoder: HF greedy parity, batch/row independence, cached = full forward,
streaming and sharding equal the reference scan, one compile per bucket,
validation before compute."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ram_jax import sharding
from ram_jax.decoding import batching, stream
from ram_jax.decoding import decoder as decode
from ram_jax.decoding import until_done as decode_loop
from ram_jax.decoding.sampling import SamplingConfig, kl_divergence
from ram_jax.models.config import get_preset
from ram_jax.models.convert import load_hf
from ram_jax.models.transformer import abstract_params, forward
from tests import hf_fixtures
from tests.hf_fixtures import random_params

VOCAB = 250  # tokenizer length; embedding rows 250..255 are padding
EOS = 0
NEW = 10
P_CONFIG = get_preset("tiny-llama")
Q_CONFIG = P_CONFIG.replace(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
)
PROMPTS = [[5, 9, 17, 33, 2], [7, 1, 4, 4, 8, 100, 200, 3, 11, 12, 13], [42, 43, 44]]
PAR_KL = SamplingConfig(
    mode="par_kl",
    temperature=0.8,
    top_p=0.9,
    top_k=40,
    proposal_temperature=0.7,
    proposal_top_p=0.95,
    repetition_penalty=1.3,
    kl_threshold=0.48,
)


@pytest.fixture(scope="module")
def models():
    p = random_params(abstract_params(P_CONFIG), 11)
    q = random_params(abstract_params(Q_CONFIG), 12)
    return p, q


@pytest.fixture(scope="module")
def batch():
    tokens, mask = batching.left_pad(PROMPTS, batching.bucket_length(11))
    keys = jax.random.split(jax.random.key(5), len(PROMPTS))
    return tokens, mask, keys


def _decode(models, tokens, mask, keys, sampling=PAR_KL, new=NEW, **kw):
    return decode.decode(
        models[0],
        models[1],
        tokens,
        mask,
        keys,
        p_config=P_CONFIG,
        q_config=Q_CONFIG,
        sampling=sampling,
        max_new_tokens=new,
        vocab_size=VOCAB,
        eos_ids=(EOS,),
        pad_id=1,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(models, batch):
    return vars(jax.tree.map(np.asarray, _decode(models, *batch)))


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
    out = decode.decode(
        params,
        None,
        tokens,
        mask,
        jax.random.split(jax.random.key(0), 2),
        p_config=config,
        q_config=None,
        sampling=SamplingConfig(temperature=0.0),
        max_new_tokens=12,
        vocab_size=256,
        eos_ids=(0,),
        pad_id=0,
    )
    np.testing.assert_array_equal(np.asarray(out.tokens_BxR), want)


def test_while_loop_variant_equals_scan(models, batch, reference):
    tokens, mask, keys = batch
    # Every row's 3rd token becomes an EOS id, so all rows finish within 3 steps and
    # the loop exits early; the skipped steps must read as padding.
    eos = tuple(sorted({int(t) for t in reference["tokens_BxR"][:, 2]}))
    kw = dict(
        p_config=P_CONFIG,
        q_config=Q_CONFIG,
        sampling=PAR_KL,
        max_new_tokens=NEW,
        vocab_size=VOCAB,
        eos_ids=eos,
        pad_id=1,
    )
    scan = vars(jax.tree.map(np.asarray, decode.decode(*models, tokens, mask, keys, **kw)))
    loop = vars(
        jax.tree.map(np.asarray, decode_loop.decode_until_done(*models, tokens, mask, keys, **kw))
    )
    assert np.all(scan["lengths_B"] <= 3)
    for name in scan:
        np.testing.assert_array_equal(loop[name], scan[name], err_msg=name)


@pytest.mark.parametrize("unroll_layers", [False, True])
def test_layer_layouts_give_same_tokens(models, batch, reference, unroll_layers):
    out = vars(jax.tree.map(np.asarray, _decode(models, *batch, unroll_layers=unroll_layers)))
    np.testing.assert_array_equal(out["tokens_BxR"], reference["tokens_BxR"])
    np.testing.assert_allclose(out["logprobs_p_BxR"], reference["logprobs_p_BxR"], atol=1e-5)


def test_rows_equal_rows_decoded_alone(models, batch, reference):
    tokens, mask, keys = batch
    assert 0 < reference["aligner_branch_BxR"].mean() < 1, "both par_kl branches must occur"
    assert np.all(reference["tokens_BxR"] < VOCAB), "a padded vocabulary row was sampled"
    for row in range(len(PROMPTS)):
        alone = _decode(models, tokens[row : row + 1], mask[row : row + 1], keys[row : row + 1])
        for name, got in vars(jax.tree.map(np.asarray, alone)).items():
            np.testing.assert_allclose(got[0], reference[name][row], atol=1e-5, err_msg=name)


def test_cached_logprobs_equal_full_forward(models, batch, reference):
    tokens, mask, _ = batch
    gen = reference["tokens_BxR"]
    live = np.arange(NEW)[None] < reference["lengths_B"][:, None]
    seq = np.concatenate([tokens, gen], axis=1)
    seq_mask = np.concatenate([mask, live], axis=1)
    t = tokens.shape[1]
    logits = {}
    for name, params, config in (("p", models[0], P_CONFIG), ("q", models[1], Q_CONFIG)):
        full, _ = forward(params, jnp.asarray(seq), config, mask_BxT=jnp.asarray(seq_mask))
        logits[name] = np.asarray(full)[:, t - 1 : -1, :VOCAB]  # predicts each generated token
        logp = jax.nn.log_softmax(logits[name], axis=-1)
        want = np.take_along_axis(np.asarray(logp), gen[..., None], axis=-1)[..., 0] * live
        np.testing.assert_allclose(reference[f"logprobs_{name}_BxR"], want, atol=2e-4)
    # The per-row KL gate, recomputed from the full forward, picks the same branch.
    kl = np.asarray(kl_divergence(jnp.asarray(logits["p"]), jnp.asarray(logits["q"])))
    clear = live & (np.abs(kl - PAR_KL.kl_threshold) > 1e-3)
    np.testing.assert_array_equal(
        reference["aligner_branch_BxR"][clear], (kl <= PAR_KL.kl_threshold)[clear]
    )


def test_constant_aligner_product_equals_proposal(models, batch):
    tokens, mask, keys = batch
    q_const = jax.tree.map(jnp.zeros_like, models[1])  # zero lm_head: logits all 0
    both = (models[0], q_const)
    product = SamplingConfig(mode="product", proposal_temperature=0.8, proposal_top_p=0.9)
    proposal = SamplingConfig(mode="proposal", temperature=0.8, top_p=0.9)
    a = _decode(both, tokens, mask, keys, sampling=product)
    b = _decode(both, tokens, mask, keys, sampling=proposal)
    np.testing.assert_array_equal(np.asarray(a.tokens_BxR), np.asarray(b.tokens_BxR))
    assert len(np.unique(np.asarray(a.tokens_BxR))) > 5  # a real sample, not a constant


def test_stream_equals_scan(models, batch, reference):
    tokens, mask, keys = batch
    chunks = list(
        stream.stream(
            models[0],
            P_CONFIG,
            tokens,
            mask,
            keys,
            PAR_KL,
            max_new_tokens=NEW,
            vocab_size=VOCAB,
            q_params=models[1],
            q_config=Q_CONFIG,
            eos_ids=(EOS,),
            pad_id=1,
            chunk=4,
        )
    )
    assert [c["tokens"].shape[1] for c in chunks] == [1, 4, 4, 1]
    got = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
    np.testing.assert_array_equal(got["tokens"], reference["tokens_BxR"])
    np.testing.assert_allclose(got["logprobs_q"], reference["logprobs_q_BxR"], atol=1e-5)
    np.testing.assert_array_equal(got["live"].sum(1), reference["lengths_B"])


def test_sharded_params_give_same_tokens(models, batch, reference):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    placed = tuple(jax.device_put(m, sharding.param_shardings(m, mesh)) for m in models)
    assert len(placed[0]["layers"]["attn"]["q_proj"]["kernel"].sharding.device_set) == 8
    out = vars(jax.tree.map(np.asarray, _decode(placed, *batch)))
    np.testing.assert_array_equal(out["tokens_BxR"], reference["tokens_BxR"])
    np.testing.assert_allclose(out["logprobs_p_BxR"], reference["logprobs_p_BxR"], atol=1e-5)


def test_one_compile_per_bucket(models):
    kw = dict(
        key=jax.random.key(0),
        max_new_tokens=NEW,
        vocab_size=VOCAB,
        q_params=models[1],
        q_config=Q_CONFIG,
        eos_ids=(EOS,),
        pad_id=1,  # as `_decode`: the batch-1 compile of the test above is reused
    )
    decode.generate(models[0], P_CONFIG, [[3, 4, 5]], PAR_KL, **kw)
    size = decode.decode._cache_size()
    for prompt in ([9] * 16, [1, 2], [7] * 9):  # all in the 16 bucket
        decode.generate(models[0], P_CONFIG, [prompt], PAR_KL.replace(num_candidates=3), **kw)
    assert decode.decode._cache_size() == size
    decode.generate(models[0], P_CONFIG, [[9] * 17], PAR_KL, **kw)  # the 32 bucket
    assert decode.decode._cache_size() == size + 1


def test_seq_sir_outputs_do_not_depend_on_batch_size(models):
    kw = dict(
        key=jax.random.key(8),
        max_new_tokens=4,
        vocab_size=VOCAB,
        q_params=models[1],
        q_config=Q_CONFIG,
        eos_ids=(EOS,),
        pad_id=1,
    )
    seq_sir = SamplingConfig(mode="seq_sir", num_candidates=3, proposal_temperature=1.0)
    outs = [
        decode.generate(models[0], P_CONFIG, PROMPTS, seq_sir, batch_size=size, **kw)
        for size in (None, 2)
    ]
    assert len({tuple(map(tuple, o["tokens"])) for o in outs}) == 1
    np.testing.assert_array_equal(outs[0]["candidate"], outs[1]["candidate"])
    # A prompt's output depends on its own key only: decoded alone with it, the same.
    keys = jax.random.split(kw["key"], len(PROMPTS))
    alone = decode.generate(
        models[0], P_CONFIG, PROMPTS[2:], seq_sir, prompt_keys=keys[2:], batch_size=2, **kw
    )
    np.testing.assert_array_equal(alone["tokens"][0], outs[0]["tokens"][2])
    assert len({tuple(t) for t in outs[0]["tokens"]}) == len(PROMPTS)


@pytest.mark.parametrize(
    "prompts, new, sampling, q, message",
    [
        ([[1, 2], []], 4, PAR_KL, True, "prompt 1 is empty"),
        ([[1] * 1020], 8, PAR_KL, True, "exceeds the model context of 1024"),
        ([[1, 2]], 0, PAR_KL, True, "max_new_tokens=0 must be >= 1"),
        ([[1, 2]], 4, PAR_KL, False, "needs an aligner"),
        ([[1, 260]], 4, PAR_KL, True, r"ids \[260\] outside"),
    ],
)
def test_bad_requests_rejected_before_compute(models, prompts, new, sampling, q, message):
    size = decode.decode._cache_size()
    with pytest.raises(ValueError, match=message):
        decode.generate(
            models[0],
            P_CONFIG,
            prompts,
            sampling,
            key=jax.random.key(0),
            max_new_tokens=new,
            vocab_size=VOCAB,
            q_params=models[1] if q else None,
            q_config=Q_CONFIG if q else None,
        )
    assert decode.decode._cache_size() == size


def test_tokenizer_longer_than_model_rejected(models):
    with pytest.raises(ValueError, match="exceeds the proposal's 256 embedding rows"):
        decode.generate(
            models[0],
            P_CONFIG,
            [[1]],
            PAR_KL,
            key=jax.random.key(0),
            max_new_tokens=2,
            vocab_size=300,
            q_params=models[1],
            q_config=Q_CONFIG.replace(vocab_size=256),
        )
