"""Objectives against values computed by hand; gradients reach the trained model only."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.models.config import get_preset
from ram_jax.models.transformer import init_params
from ram_jax.training import losses
from ram_jax.training import step as train


def test_sequence_logprobs_by_hand():
    # Row 0 scores tokens 1 and 2 (t = 1, 2): -ln 3 + ln(1/2); token 0 is the prompt.
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 1, :3] = [0.0, math.log(2.0), 0.0]
    logits[0, :, 3] = 100.0  # a padded vocabulary row: must not enter the normaliser
    tokens = np.array([[2, 0, 1]])
    target = np.array([[False, True, True]])
    got = losses.sequence_logprobs(jnp.asarray(logits), tokens, target, vocab_limit=3)
    np.testing.assert_allclose(got, [-math.log(3.0) + math.log(0.5)], rtol=1e-6)
    assert got.dtype == jnp.float32
    # Without slicing the padded row dominates: the limit matters.
    unsliced = losses.sequence_logprobs(jnp.asarray(logits), tokens, target)
    assert float(unsliced[0]) < -150
    # Masked positions contribute nothing.
    none = losses.sequence_logprobs(jnp.asarray(logits), tokens, np.zeros_like(target), 3)
    assert float(none[0]) == 0.0


def test_sequence_logprobs_bf16_logits_are_scored_in_float32():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7)), jnp.bfloat16)
    tokens = np.array([[1, 2, 3, 4, 5], [6, 5, 4, 3, 2]])
    target = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]], bool)
    lp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32)[:, :-1], -1))
    want = [sum(lp[b, t - 1, tokens[b, t]] for t in range(1, 5) if target[b, t]) for b in range(2)]
    got = losses.sequence_logprobs(logits, tokens, target)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


LOGP = np.array([[-2.0, -5.0, -7.0], [-1.0, -3.0, -4.0], [-9.0, -9.0, -9.0]], np.float32)
WEIGHT = np.array([1.0, 1.0, 0.0], np.float32)  # the third row is padding
TOKENS = np.array([[4, 3, 3], [2, 5, 5], [7, 7, 7]])


def _loss(objective, logp=LOGP, ref=None):
    numer, denom, metrics = losses.objective_sums(objective, logp, WEIGHT, TOKENS, ref)
    return float(numer / denom), {k: float(v) for k, v in metrics.items()}


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_sft_by_hand():
    loss, m = _loss(losses.Objective("sft"), LOGP[:, :1])
    assert loss == pytest.approx((2.0 + 1.0) / 2)
    assert m["examples"] == 2 and m["chosen_logp"] == pytest.approx(-3.0)
    token_loss, _ = _loss(losses.Objective("sft", token_mean=True), LOGP[:, :1])
    assert token_loss == pytest.approx((2.0 + 1.0) / (4 + 2))


def test_ram_sft_by_hand():
    loss, m = _loss(losses.Objective("ram_sft", alpha=0.1), LOGP[:, :2])
    assert loss == pytest.approx(((2.0 - 0.5) + (1.0 - 0.3)) / 2, rel=1e-6)
    assert m["sample_logp"] == pytest.approx(-5.0 + -3.0)  # a sum; divided by examples later


def test_ram_dpo_by_hand():
    loss, m = _loss(losses.Objective("ram_dpo", beta=0.5), LOGP[:, :2])
    want = -(log_sigmoid(0.5 * 3.0) + log_sigmoid(0.5 * 2.0)) / 2
    assert loss == pytest.approx(want, rel=1e-6)
    assert m["accuracy"] == 2.0 and m["margin"] == pytest.approx(5.0)


def test_dpo_by_hand():
    ref = np.array([[-1.0, -7.0], [-2.0, -2.5], [0.0, 0.0]], np.float32)
    loss, m = _loss(losses.Objective("dpo", beta=0.5), LOGP[:, :2], ref)
    margins = [(-2 + 1) - (-5 + 7), (-1 + 2) - (-3 + 2.5)]  # -3, 1.5
    want = -(log_sigmoid(0.5 * margins[0]) + log_sigmoid(0.5 * margins[1])) / 2
    assert loss == pytest.approx(want, rel=1e-6)
    assert m["accuracy"] == 1.0
    with pytest.raises(ValueError, match="reference"):
        _loss(losses.Objective("dpo"), LOGP[:, :2])


def test_ram_mc_by_hand():
    loss, m = _loss(losses.Objective("ram_mc", num_samples=2), LOGP)
    lz = [math.log((math.exp(-5) + math.exp(-7)) / 2), math.log((math.exp(-3) + math.exp(-4)) / 2)]
    assert loss == pytest.approx(((2.0 + lz[0]) + (1.0 + lz[1])) / 2, rel=1e-6)
    # With one sample it is ram_sft with alpha = 1.
    one, _ = _loss(losses.Objective("ram_mc", num_samples=1), LOGP[:, :2])
    ref, _ = _loss(losses.Objective("ram_sft", alpha=1.0), LOGP[:, :2])
    assert one == pytest.approx(ref, rel=1e-6)


def test_objective_validation():
    with pytest.raises(ValueError, match="unknown"):
        losses.Objective("ppo")
    assert losses.Objective("ram_mc", num_samples=3).group_size == 4
    assert losses.Objective("sft").group_size == 1


def test_gradients_reach_the_trained_model_only():
    config = get_preset("tiny-llama", num_layers=1)
    init = jax.jit(init_params, static_argnums=0)
    params, ref_params = init(config, jax.random.key(0)), init(config, jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(2, 2, 8)).astype(np.int32)
    mask = np.ones((2, 2, 8), bool)
    targets = np.zeros((2, 2, 8), bool)
    targets[..., 4:] = True
    micro = {"tokens": tokens, "mask": mask, "targets": targets, "weight": np.ones(2, np.float32)}

    def numer(p, r):
        return train._microbatch_sums(
            p,
            micro,
            r,
            config=config,
            objective=losses.Objective("dpo", beta=0.5),
            vocab_limit=None,
            remat=False,
            ref_config=config,
        )[0]

    g_params, g_ref = jax.jit(jax.grad(numer, argnums=(0, 1)))(params, ref_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_ref))
    assert float(jnp.abs(g_params["layers"]["mlp"]["up_proj"]["kernel"]).max()) > 0


def test_ram_sft_gradient_weights_the_sample_by_alpha():
    grad = jax.grad(lambda lp: losses.per_example_loss(losses.Objective("ram_sft", 0.25), lp).sum())
    np.testing.assert_allclose(grad(jnp.asarray(LOGP[:, :2])), [[-1, 0.25]] * 3)
