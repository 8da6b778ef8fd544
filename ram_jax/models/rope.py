"""Rotary position embeddings (HF "rotate half" layout) with llama3 scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ram_jax.models.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Per-pair inverse frequencies, shape [head_dim // 2], float32.

    Computed on the host in float64 so the result does not depend on the
    accelerator's float handling; Llama-3.1/3.2 rescale low frequencies and
    smoothly blend the middle band ("llama3" rope type).
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is not None:
        old = scaling.original_max_position_embeddings
        low_wavelen = old / scaling.low_freq_factor
        high_wavelen = old / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        smooth = (old / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x_BxTxNxH: jnp.ndarray, positions_BxT: jnp.ndarray, inv_freq: np.ndarray):
    """Rotates queries or keys by their positions; math in float32."""
    angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    cos = jnp.cos(angles_BxTxH2)[:, :, None, :]
    sin = jnp.sin(angles_BxTxH2)[:, :, None, :]
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)
