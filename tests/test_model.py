"""Model core invariants: cached decoding, full-size presets, bf16 compute, rope, imports."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ram_jax.models.cache import init_cache, put_row
from ram_jax.models.config import from_hf_dict, get_preset
from ram_jax.models.quantize import quantize_int8
from ram_jax.models.rope import inverse_frequencies
from ram_jax.models.transformer import (
    abstract_params,
    count_params,
    forward,
    fuse_projections,
    has_fused_projections,
    init_params,
    unstack_layers,
)
from tests import hf_fixtures as hf

_forward = jax.jit(forward, static_argnums=2)

# Prompt rows of different lengths, left padded into PROMPT slots; then every
# row continues with DECODE real tokens, one cached step at a time.
PROMPT_LENGTHS = (12, 5, 9)
PROMPT, DECODE = 12, 6


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen"])
def model(request):
    config = get_preset(request.param)
    params = hf.random_params(init_params(config, jax.random.key(0)), seed=0)
    tokens, mask = hf.left_padded_batch(config.vocab_size, PROMPT_LENGTHS, seed=1)
    rng = np.random.default_rng(2)
    tokens = np.concatenate([tokens, rng.integers(1, 200, (len(PROMPT_LENGTHS), DECODE))], 1)
    mask = np.concatenate([mask, np.ones((len(PROMPT_LENGTHS), DECODE), bool)], 1)
    return config, params, tokens.astype(np.int32), mask


def _cached_logits(params, config, tokens, mask, per_layer=False):
    """Prefill the prompt slots, then decode the rest one token per step."""
    cache = init_cache(config, tokens.shape[0], tokens.shape[1], per_layer=per_layer)
    prefill, cache = _forward(
        params, tokens[:, :PROMPT], config, mask_BxT=mask[:, :PROMPT], cache=cache
    )
    steps = [prefill]
    for t in range(PROMPT, tokens.shape[1]):
        step, cache = _forward(
            params, tokens[:, t : t + 1], config, mask_BxT=mask[:, t : t + 1], cache=cache
        )
        steps.append(step)
    assert int(cache.index) == tokens.shape[1]
    np.testing.assert_array_equal(cache.lengths(), mask.sum(1))
    return np.concatenate(steps, axis=1)


def test_cached_decoding_equals_full_forward(model):
    config, params, tokens, mask = model
    full, _ = _forward(params, tokens, config, mask_BxT=mask)
    cached = _cached_logits(params, config, tokens, mask)
    assert np.abs(np.asarray(full)[mask]).max() > 1.0  # logits of a non-trivial size
    assert hf.max_real_diff(cached, full, mask) <= 1e-5


@pytest.mark.parametrize("per_layer", [False, True])
def test_per_row_cache_steps_equal_full_forward(per_layer):
    """Two rows at different positions: each prefilled alone (left padded), put into a
    per-row cache, then stepped; a row without a real token stays put."""
    config = get_preset("tiny-llama")
    params = hf.random_params(abstract_params(config), 3)
    params = unstack_layers(params) if per_layer else params
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 200, 14).astype(np.int32), rng.integers(2, 200, 9).astype(np.int32)]
    prompt, pad = (6, 3), 8
    cache = init_cache(config, 2, 32, per_row=True, per_layer=per_layer)
    for row, (seq, n) in enumerate(zip(seqs, prompt, strict=True)):
        one = init_cache(config, 1, 32, per_layer=per_layer)
        tokens, mask = np.zeros((1, pad), np.int32), np.arange(pad)[None] >= pad - n
        tokens[0, pad - n :] = seq[:n]
        _, one = _forward(params, tokens, config, mask_BxT=mask, cache=one)
        cache = put_row(cache, one, row)
    np.testing.assert_array_equal(cache.index, [pad, pad])
    np.testing.assert_array_equal(cache.lengths(), prompt)
    steps = [[], []]
    for t in range(max(len(s) - n for s, n in zip(seqs, prompt, strict=True))):
        feed = [t + n < len(s) for s, n in zip(seqs, prompt, strict=True)]
        tok = np.asarray([s[min(t + n, len(s) - 1)] for s, n in zip(seqs, prompt, strict=True)])
        out, cache = _forward(
            params, tok[:, None], config, mask_BxT=np.asarray(feed)[:, None], cache=cache
        )
        for row in range(2):
            if feed[row]:
                steps[row].append(np.asarray(out[row, 0]))
    np.testing.assert_array_equal(
        cache.index, [pad + len(s) - n for s, n in zip(seqs, prompt, strict=True)]
    )
    tokens, mask = hf.left_padded_batch(config.vocab_size, (14, 9), seed=0)
    for row, seq in enumerate(seqs):
        tokens[row, 14 - len(seq) :] = seq
    full, _ = _forward(params, tokens, config, mask_BxT=mask)
    for row, (seq, n) in enumerate(zip(seqs, prompt, strict=True)):
        want = np.asarray(full[row, 14 - len(seq) + n :])
        np.testing.assert_allclose(np.stack(steps[row]), want, atol=1e-5)


def test_unrolled_layers_equal_layer_scan(model):
    config, params, tokens, mask = model
    unrolled = unstack_layers(params)
    assert len(unrolled["layers"]) == config.num_layers
    full, _ = _forward(params, tokens, config, mask_BxT=mask)
    full_unrolled, _ = _forward(unrolled, tokens, config, mask_BxT=mask)
    assert hf.max_real_diff(full_unrolled, full, mask) <= 1e-6
    cached = _cached_logits(unrolled, config, tokens, mask, per_layer=True)
    assert hf.max_real_diff(cached, full, mask) <= 1e-5
    with pytest.raises(ValueError, match="disagree on the layer layout"):
        forward(unrolled, tokens, config, cache=init_cache(config, tokens.shape[0], 32))


def test_row_alone_equals_row_in_padded_batch(model):
    config, params, tokens, mask = model
    full, _ = _forward(params, tokens, config, mask_BxT=mask)
    row = 1  # the shortest prompt: most padding in the batch
    alone = tokens[row : row + 1, mask[row]]
    # Prefilled and decoded alone, without padding, in a cache sized exactly to it.
    alone_mask = np.ones_like(alone, bool)
    cache = init_cache(config, 1, alone.shape[1])
    n = PROMPT_LENGTHS[row]
    steps = [_forward(params, alone[:, :n], config, mask_BxT=alone_mask[:, :n], cache=cache)]
    for t in range(n, alone.shape[1]):
        cache = steps[-1][1]
        steps.append(_forward(params, alone[:, t : t + 1], config, cache=cache))
    decoded = np.concatenate([s[0] for s in steps], axis=1)
    np.testing.assert_allclose(decoded[0], np.asarray(full)[row][mask[row]], atol=1e-5)


# The public `config.json` of each checkpoint (fields that define the model).
_LLAMA3 = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
    vocab_size=128256,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    bos_token_id=128000,
    eos_token_id=128001,
)
_LLAMA31_ROPE = dict(
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
    rope_type="llama3",
)
_LLAMA32_ROPE = {**_LLAMA31_ROPE, "factor": 32.0}
_QWEN25 = dict(
    architectures=["Qwen2ForCausalLM"],
    model_type="qwen2",
    hidden_act="silu",
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    use_sliding_window=False,
    bos_token_id=151643,
    eos_token_id=151643,
)
PUBLIC_CONFIGS = {
    "llama-3.1-8b": (
        8_030_261_248,
        dict(
            _LLAMA3,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            rope_scaling=_LLAMA31_ROPE,
            tie_word_embeddings=False,
        ),
    ),
    "llama-3.2-1b": (
        1_235_814_400,
        dict(
            _LLAMA3,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            rope_scaling=_LLAMA32_ROPE,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-3b": (
        3_212_749_824,
        dict(
            _LLAMA3,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            head_dim=128,
            rope_scaling=_LLAMA32_ROPE,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-0.5b": (
        494_032_768,
        dict(
            _QWEN25,
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-1.5b": (
        1_543_714_304,
        dict(
            _QWEN25,
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=131072,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-3b": (
        3_085_938_688,
        dict(
            _QWEN25,
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-7b": (
        7_615_616_512,
        dict(
            _QWEN25,
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2.5-14b": (
        14_770_033_664,
        dict(
            _QWEN25,
            vocab_size=152064,
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=48,
            num_attention_heads=40,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_CONFIGS))
def test_full_size_presets(name):
    expected_count, public = PUBLIC_CONFIGS[name]
    preset = get_preset(name)
    shapes = jax.eval_shape(lambda: abstract_params(preset))
    assert count_params(shapes) == expected_count
    assert from_hf_dict(public) == preset
    exported = preset.to_hf_dict()
    assert from_hf_dict(exported) == preset
    for key, value in exported.items():  # what we write agrees with the public file
        if key in public:
            assert value == public[key], key
    # transformers reads our export as the same model.
    fields = {k: v for k, v in exported.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(exported["model_type"], **fields)
    assert hf_config.num_key_value_heads == preset.num_kv_heads
    assert hf_config.tie_word_embeddings == preset.tie_embeddings
    assert hf_config.rope_parameters["rope_theta"] == preset.rope_theta


def test_bfloat16_compute_close_to_float32():
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%); about ten
    # roundings in sequence (embedding, norms, projections, attention, MLP,
    # residual adds, head) give ~1% relative logit error. Measured on this
    # tiny model: 1.4% of max |logit|, total variation 0.007, KL 1.4e-4; the
    # bounds below leave 2-7x margin yet catch a wrong cast (e.g. a float16
    # overflow or a bf16 softmax would exceed them).
    config = get_preset("tiny-llama")
    params = hf.random_params(init_params(config, jax.random.key(1)), seed=1)
    tokens, mask = hf.left_padded_batch(config.vocab_size, seed=3)
    f32, _ = _forward(params, tokens, config, mask_BxT=mask)
    bf16, _ = _forward(params, tokens, config.replace(dtype="bfloat16"), mask_BxT=mask)
    assert bf16.dtype == jnp.float32
    err = hf.max_real_diff(bf16, f32, mask)
    scale = float(np.abs(np.asarray(f32)[mask]).max())
    assert 0 < err <= 0.03 * scale
    logp32, logp16 = jax.nn.log_softmax(f32), jax.nn.log_softmax(bf16)
    p32 = jnp.exp(logp32)
    kl = np.asarray(jnp.sum(p32 * (logp32 - logp16), -1))[mask]
    tv = np.asarray(0.5 * jnp.sum(jnp.abs(p32 - jnp.exp(logp16)), -1))[mask]
    assert kl.max() <= 1e-3 and tv.max() <= 0.02


@pytest.mark.parametrize("per_layer", [False, True])
def test_bfloat16_weights_and_cache_decode_like_full_forward(model, per_layer):
    # bf16 weights, compute and KV cache: prefill + cached steps run (XLA on CPU
    # lacks some bf16 x bf16 -> f32 dots) and track the bf16 full forward to
    # within bf16 rounding (the two sum in different orders).
    config, params, tokens, mask = model
    config = config.replace(dtype="bfloat16", param_dtype="bfloat16")
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    if per_layer:
        params = unstack_layers(params)
    full, _ = _forward(params, tokens, config, mask_BxT=mask)
    cached = _cached_logits(params, config, tokens, mask, per_layer=per_layer)
    scale = float(np.abs(np.asarray(full)[mask]).max())
    assert hf.max_real_diff(cached, full, mask) <= 0.03 * scale


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.2-1b", "tiny-llama"])
def test_rope_frequencies_match_transformers(name):
    preset = get_preset(name)
    hf_config = transformers.LlamaConfig(**preset.to_hf_dict())
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_config, torch.device("cpu"))
    ours = inverse_frequencies(preset.head_dim, preset.rope_theta, preset.rope_scaling)
    assert attention_factor == 1.0
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    # The scaling changes the low frequencies and leaves the high ones alone.
    plain = inverse_frequencies(preset.head_dim, preset.rope_theta, None)
    assert ours[0] == plain[0] and ours[-1] < plain[-1]


def test_import_does_not_pull_torch_or_transformers():
    # Every library module, in a fresh interpreter. Entry points (modules that
    # define absl flags) are left out: two of them in one process would clash
    # on flag names, and they only parse flags over library modules anyway.
    code = (
        "import importlib.util, pathlib, pkgutil, sys, ram_jax\n"
        "for m in pkgutil.walk_packages(ram_jax.__path__, 'ram_jax.'):\n"
        "    source = pathlib.Path(importlib.util.find_spec(m.name).origin).read_text()\n"
        "    if 'flags.DEFINE' not in source:\n"
        "        importlib.import_module(m.name)\n"
        "assert 'ram_jax.models.convert' in sys.modules\n"
        "assert 'ram_jax.models.tokenizer' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_fused_projections_compute_the_same_logits():
    """The decode-time fused q/k/v and gate/up layout (here int8, unrolled, cached, with
    Qwen2's biases) gives the separate kernels' logits. (Float, stacked: test_decode's
    layer-layout test decodes the fused params restacked.)"""
    config = get_preset("tiny-qwen", vocab_size=64, num_layers=1)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
    params["layers"]["attn"]["k_proj"]["bias"] += 0.1  # nonzero biases must land in place
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 64)
    int8 = jax.jit(quantize_int8)(params)
    fused = fuse_projections(unstack_layers(int8))
    assert has_fused_projections(fused) and not has_fused_projections(int8)
    run = jax.jit(forward, static_argnames="config")  # one compile, not one per op
    want, _ = run(int8, tokens, config=config)
    cache = init_cache(config, 2, 8, per_layer=True)
    got, _ = run(fused, tokens, config=config, cache=cache)
    np.testing.assert_allclose(got, want, atol=1e-5)
