r"""Checks that need an NVIDIA GPU: cuDNN attention and int8 weights against their references.

  python experiments/gpu_attention_check.py [--kernel=cudnn]

(`--kernel=xla` runs the same checks on any backend: a CPU smoke run of this script.)

On the GPU, with a Llama-shaped model at bf16 compute (head dim 64, as
Llama-3.2-1B), 256-token rows with left, right and both-sided padding:

  cudnn_self     forward logits and parameter gradients of `attention='cudnn'`
                 (what 'auto' runs for training on a GPU) against 'naive'
  cudnn_prefill  a cached prefill with 'cudnn' then decode steps with 'auto'
                 (xla) against 'naive' throughout
  int8           the int8 forward against the float forward of the rounded weights
                 (float32 compute, full matmul precision)

Each reports its largest difference over real positions relative to the
largest reference value; the check passes under bf16 tolerances (2e-2 for
logits, 5e-2 for gradients) and 1e-4 for int8. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from ram_jax.models.cache import init_cache
from ram_jax.models.config import get_preset
from ram_jax.models.quantize import dequantize, quantize_int8
from ram_jax.models.transformer import forward, init_params

LOGITS_TOL, GRAD_TOL, INT8_TOL = 2e-2, 5e-2, 1e-4


def _rel(a, b, mask=None) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def padded_mask(b: int, t: int) -> np.ndarray:
    """Left-padded, right-padded, both, and full rows (each one contiguous run)."""
    runs = [(t * 3 // 5, t), (0, t // 2), (t // 10, t - t // 4), (0, t)]
    mask = np.zeros((b, t), bool)
    for row in range(b):
        lo, hi = runs[row % len(runs)]
        mask[row, lo:hi] = True
    return mask


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="cudnn", help="the fused path to check")
    kernel = ap.parse_args().kernel
    config = get_preset(
        "tiny-llama",
        dtype="bfloat16",
        hidden_size=512,
        intermediate_size=1024,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=2048,
        max_position_embeddings=4096,
    )
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda x: x * (2.0 if x.ndim > 1 else 1.0), params)  # O(1) logits
    mask = padded_mask(4, 256)
    tokens = np.random.default_rng(1).integers(1, config.vocab_size, mask.shape).astype(np.int32)
    weights = jax.random.normal(jax.random.key(2), mask.shape)

    @functools.partial(jax.jit, static_argnames="attention")
    def logits_and_grads(params, attention):
        def loss(p):
            logits, _ = forward(p, tokens, config, mask_BxT=mask, attention=attention)
            picked = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)
            return jnp.sum(jnp.where(mask, picked[..., 0] * weights, 0.0)), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, grads

    results = {"device": jax.devices()[0].device_kind, "kernel": kernel}
    ref_logits, ref_grads = logits_and_grads(params, "naive")
    logits, grads = logits_and_grads(params, kernel)
    grad_err = max(jax.tree.leaves(jax.tree.map(_rel, grads, ref_grads)))
    results["cudnn_self"] = {"logits": _rel(logits, ref_logits, mask), "grads": grad_err}

    def decode(attention_prefill, attention_step, prompt=200, steps=4):
        cache = init_cache(config, tokens.shape[0], tokens.shape[1])
        run = jax.jit(forward, static_argnames=("config", "attention"))
        out, cache = run(
            params,
            tokens[:, :prompt],
            config,
            mask_BxT=mask[:, :prompt],
            cache=cache,
            attention=attention_prefill,
        )
        outs = [out]
        for t in range(prompt, prompt + steps):
            out, cache = run(
                params,
                tokens[:, t : t + 1],
                config,
                mask_BxT=mask[:, t : t + 1],
                cache=cache,
                attention=attention_step,
            )
            outs.append(out)
        return np.concatenate([np.asarray(o, np.float32) for o in outs], axis=1)

    seen = mask[:, :204]
    results["cudnn_prefill"] = {
        "logits": _rel(decode(kernel, "auto"), decode("naive", "naive"), seen)
    }
    # int8 in float32 compute at full matmul precision: only the scaling order differs.
    f32 = config.replace(dtype="float32")
    q = quantize_int8(params)
    with jax.default_matmul_precision("highest"):
        int8, _ = jax.jit(forward, static_argnums=2)(q, tokens, f32, mask_BxT=mask)
        rounded, _ = jax.jit(forward, static_argnums=2)(dequantize(q), tokens, f32, mask_BxT=mask)
    results["int8"] = {"logits": _rel(int8, rounded, mask)}
    results["passed"] = (
        results["cudnn_self"]["logits"] <= LOGITS_TOL
        and results["cudnn_self"]["grads"] <= GRAD_TOL
        and results["cudnn_prefill"]["logits"] <= LOGITS_TOL
        and results["int8"]["logits"] <= INT8_TOL
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
