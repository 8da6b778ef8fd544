"""Weight-only int8: hand-computed scales, the rounding bound, and the int8 forward's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ram_jax.models.cache import init_cache
from ram_jax.models.config import get_preset
from ram_jax.models.quantize import dequantize, is_quantized, quantize_int8, weight_bytes
from ram_jax.models.transformer import abstract_params, forward, init_params, unstack_layers
from tests import hf_fixtures as hf

_forward = jax.jit(forward, static_argnums=2)


def test_per_channel_scales_by_hand():
    kernel = np.array([[1.0, -0.5], [0.25, 2.0]], np.float32)  # [in, out]
    params = {
        "embed": {"embedding": np.array([[0.5, -1.0], [0.0, 0.0]], np.float32)},
        "lm_head": {"kernel": kernel},
        "final_norm": {"scale": np.array([1.5, 2.5], np.float32)},
    }
    q = quantize_int8(params)
    # One scale per output column: absmax / 127.
    np.testing.assert_allclose(q["lm_head"]["scale"], [1 / 127, 2 / 127], rtol=1e-7)
    # -0.5 * 127 = -63.5 and 0.25 * 127 / 2 = 15.875 round to nearest (half to even).
    np.testing.assert_array_equal(q["lm_head"]["kernel"], [[127, -32], [32, 127]])
    # Embedding rows get one scale each; an all-zero row keeps scale 1 and zeros.
    np.testing.assert_allclose(q["embed"]["scale"], [1 / 127, 1.0], rtol=1e-7)
    np.testing.assert_array_equal(q["embed"]["embedding"], [[64, -127], [0, 0]])
    assert q["final_norm"]["scale"] is params["final_norm"]["scale"]  # norms untouched
    assert is_quantized(q) and not is_quantized(params)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen"])
def model(request):
    config = get_preset(request.param, num_layers=1)
    params = hf.random_params(init_params(config, jax.random.key(0)), seed=0)
    tokens, mask = hf.left_padded_batch(config.vocab_size, seed=1)
    return config, params, quantize_int8(params), tokens, mask


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_rounding_error_is_at_most_half_a_step(model):
    config, params, q, _, _ = model
    back = dequantize(q)
    weights = 0
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        name = path[-1].key
        if name in ("kernel", "embedding"):
            scale = np.asarray(_at(q, path[:-1])["scale"])
            step = np.expand_dims(scale, -1 if name == "embedding" else -2)
            err = np.abs(np.asarray(_at(back, path)) - np.asarray(w))
            assert np.all(err <= step / 2 * (1 + 1e-6)), jax.tree_util.keystr(path)
            weights += 1
    assert weights == 8 + (not config.tie_embeddings)  # 7 in the layer, embedding (+ lm_head)
    # The layout is the one `abstract_params(int8=True)` declares.
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_params(config, int8=True))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), q) == want
    # Matmul weights at 1 byte instead of 4 (+ scales, norms and biases).
    assert weight_bytes(q) < 0.3 * weight_bytes(params)


def test_int8_forward_computes_with_the_rounded_weights(model):
    config, params, q, tokens, mask = model
    full, _ = _forward(params, tokens, config, mask_BxT=mask)
    int8, _ = _forward(q, tokens, config, mask_BxT=mask)
    rounded, _ = _forward(dequantize(q), tokens, config, mask_BxT=mask)
    # Scaling after the matmul instead of before changes only float32 rounding.
    assert hf.max_real_diff(int8, rounded, mask) <= 2e-5
    # ... and the weights' rounding moves the logits, but little.
    assert 1e-4 < hf.max_real_diff(int8, full, mask) < 0.1 * np.abs(np.asarray(full)[mask]).max()


def test_int8_cached_decoding_unrolled_equals_full_forward(model):
    config, _, q, tokens, mask = model
    full, _ = _forward(q, tokens, config, mask_BxT=mask)
    unrolled = unstack_layers(q)
    cache = init_cache(config, tokens.shape[0], tokens.shape[1] + 2, per_layer=True)
    prefill, cache = _forward(unrolled, tokens, config, mask_BxT=mask, cache=cache)
    assert hf.max_real_diff(prefill, full, mask) <= 1e-5
    step, _ = _forward(unrolled, tokens[:, -1:], config, cache=cache)
    assert np.all(np.isfinite(np.asarray(step)))


def test_int8_with_bf16_compute():
    config = get_preset("tiny-llama", num_layers=1, dtype="bfloat16")
    params = hf.random_params(init_params(config, jax.random.key(0)), seed=0)
    tokens, mask = hf.left_padded_batch(config.vocab_size, seed=1)
    q = quantize_int8(params)
    int8, _ = _forward(q, tokens, config, mask_BxT=mask)
    rounded, _ = _forward(dequantize(q, jnp.float32), tokens, config, mask_BxT=mask)
    scale = np.abs(np.asarray(rounded)[mask]).max()
    assert hf.max_real_diff(int8, rounded, mask) < 0.05 * scale  # bf16 rounding only
