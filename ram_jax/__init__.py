"""ram_jax: Residual Alignment Models in JAX.

A frozen large proposal P and a small trained residual aligner Q are decoded
together token by token; only Q is trained. Everything here is a pure function
over plain parameter pytrees.

Dimension legend for shape-suffixed names (`logits_BxTxV`, `tokens_BxT`):
  B  batch rows                 T  tokens in the current block
  S  cache slots (max length)   V  vocabulary (embedding rows)
  D  model width                L  layers
  N  query heads                K  key/value heads
  G  query heads per kv head    H  head dim
  F  MLP hidden width           C  candidates (SIR)
"""

from ram_jax.cache import KVCache, init_cache, positions_from_mask
from ram_jax.config import PRESETS, ModelConfig, RopeScaling, from_hf_config, get_preset
from ram_jax.transformer import (
    Transformer,
    abstract_params,
    count_params,
    forward,
    init_params,
)

__all__ = [
    "KVCache",
    "ModelConfig",
    "PRESETS",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "count_params",
    "forward",
    "from_hf_config",
    "get_preset",
    "init_cache",
    "init_params",
    "positions_from_mask",
]
