"""Attention implementations equal the naive reference: logits and gradients, with padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.gpu_attention_check import padded_mask
from ram_jax import sharding as shd
from ram_jax.models import attention as attn
from ram_jax.models.cache import init_cache
from ram_jax.models.config import get_preset
from ram_jax.models.transformer import forward, init_params
from tests import hf_fixtures as hf

T = 128  # the splash kernel's smallest tile


@pytest.fixture(scope="module")
def model():
    config = get_preset("tiny-llama", num_layers=1)
    params = hf.random_params(init_params(config, jax.random.key(0)), seed=0)
    mask = padded_mask(4, T)
    tokens = np.random.default_rng(1).integers(1, config.vocab_size, mask.shape).astype(np.int32)
    return config, params, tokens, mask


@functools.partial(jax.jit, static_argnames=("config", "attention"))
def _logits_and_grads(params, tokens, mask, config, attention):
    """Logits, and gradients of a weighted sum of real-position log-probs."""
    weights = jax.random.normal(jax.random.key(3), tokens.shape)

    def loss(p):
        logits, _ = forward(p, tokens, config, mask_BxT=mask, attention=attention)
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(mask, picked * weights, 0.0)), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, grads


def _max_grad_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))), a, b)
    return max(jax.tree.leaves(diffs))


@pytest.fixture(scope="module")
def reference(model):
    config, params, tokens, mask = model
    return _logits_and_grads(params, tokens, mask, config, "naive")


@pytest.mark.parametrize("implementation", ["xla", "splash"])
def test_forward_and_gradients_equal_naive(model, reference, implementation):
    # splash runs the TPU kernel itself, in Pallas interpret mode on CPU.
    config, params, tokens, mask = model
    logits, grads = _logits_and_grads(params, tokens, mask, config, implementation)
    ref_logits, ref_grads = reference
    assert np.abs(np.asarray(ref_logits)[mask]).max() > 1.0
    assert hf.max_real_diff(logits, ref_logits, mask) <= 2e-5
    assert _max_grad_diff(grads, ref_grads) <= 1e-4


def test_splash_per_shard_under_a_mesh_equals_naive(model, reference):
    # Batch over (data, fsdp) and heads over tensor through shard_map: 4 fake devices.
    config, params, tokens, mask = model
    mesh = shd.make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        logits, grads = _logits_and_grads(params, tokens, mask, config, "splash")
    assert hf.max_real_diff(logits, reference[0], mask) <= 2e-5
    assert _max_grad_diff(grads, reference[1]) <= 1e-4


def test_cudnn_rotation_equals_naive_with_padding():
    # cuDNN's path rotates every row so its real tokens come first, then masks by
    # per-row lengths; the same rotation runs through XLA here (no GPU needed).
    b, t, n, k, h = 4, 24, 4, 2, 8
    mask = jnp.asarray(padded_mask(b, t))
    q, kk, v = (jax.random.normal(jax.random.key(i), (b, t, s, h)) for i, s in enumerate((n, k, k)))
    weights = jax.random.normal(jax.random.key(9), (b, t, n, h))

    def loss(fn, q, kk, v):
        out = fn(q, kk, v, mask)
        return jnp.sum(jnp.where(mask[:, :, None, None], out * weights, 0.0)), out

    rotated = functools.partial(attn.padding_causal, implementation="xla")
    reference = functools.partial(attn.self_attention, implementation="naive")
    grad = lambda fn: jax.value_and_grad(functools.partial(loss, fn), (0, 1, 2), has_aux=True)
    (_, out), grads = jax.jit(grad(rotated))(q, kk, v)
    (_, ref), ref_grads = jax.jit(grad(reference))(q, kk, v)
    real = np.asarray(mask)
    assert real.sum(1).min() > 0 and (~real).sum(1).max() > 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=1e-5)
    assert np.all(np.asarray(out)[~real] == 0)  # padding rows zeroed, never NaN
    assert _max_grad_diff(grads, ref_grads) <= 1e-5


def test_cached_prefill_and_decode_with_xla_equal_naive(model):
    config, params, tokens, mask = model
    prompt = 100

    def decode(attention):
        step = jax.jit(
            functools.partial(forward, config=config, attention=attention),
        )
        cache = init_cache(config, tokens.shape[0], tokens.shape[1])
        out, cache = step(params, tokens[:, :prompt], mask_BxT=mask[:, :prompt], cache=cache)
        outs = [out]
        for t in range(prompt, prompt + 4):
            out, cache = step(
                params, tokens[:, t : t + 1], mask_BxT=mask[:, t : t + 1], cache=cache
            )
            outs.append(out)
        return np.concatenate(outs, axis=1)

    seen = mask[:, : prompt + 4]
    assert hf.max_real_diff(decode("xla"), decode("naive"), seen) <= 2e-5


def test_auto_picks_per_backend_and_explicit_choices_are_checked():
    bf16, f32 = jnp.bfloat16, jnp.float32
    pick = lambda backend, **kw: attn.resolve("auto", backend=backend, **kw)
    assert pick("cpu", cached=False, t=128, dtype=bf16, head_dim=64) == "xla"
    assert pick("cpu", cached=True, t=1, dtype=bf16, head_dim=64) == "naive"
    assert pick("gpu", cached=False, t=2048, dtype=bf16, head_dim=64) == "cudnn"
    assert pick("gpu", cached=True, t=1024, dtype=bf16, head_dim=128) == "cudnn"  # prefill
    assert pick("gpu", cached=True, t=1, dtype=bf16, head_dim=128) == "xla"  # decode step
    assert pick("gpu", cached=False, t=2048, dtype=f32, head_dim=64) == "xla"
    assert pick("tpu", cached=False, t=2048, dtype=bf16, head_dim=64) == "splash"
    assert pick("tpu", cached=False, t=100, dtype=bf16, head_dim=64) == "xla"
    assert pick("tpu", cached=True, t=1024, dtype=bf16, head_dim=64) == "xla"
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        attn.resolve("cudnn", cached=False, t=8, dtype=bf16, head_dim=64, backend="cpu")
    with pytest.raises(ValueError, match="float32"):
        attn.resolve("cudnn", cached=False, t=8, dtype=f32, head_dim=64, backend="gpu")
    with pytest.raises(ValueError, match="multiple of 128"):
        attn.resolve("splash", cached=False, t=100, dtype=f32, head_dim=64, backend="tpu")
    with pytest.raises(ValueError, match="choose one of"):
        attn.resolve("flash", cached=False, t=8, dtype=f32, head_dim=64)
