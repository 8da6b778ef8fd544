"""`seq_sir`: sequence-level resampling over any token mode's candidates.

For every prompt, N whole responses are decoded with a token mode (the
paper's choice: `proposal`, so the candidates come from P), and one is
resampled with probability proportional to `prod_i Q_i(y|x)^w_i`, the
aligners' sequence likelihoods over the kept tokens (one aligner at w = 1:
Q(y|x)). With `proposal` candidates this tends to the exact `P Q / Z` as N
grows (restricted to P's filtered distribution); the first token is only
known once all N responses finish.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_PICK = 0x5E9  # folded into a prompt's key for its resampling draw


@dataclasses.dataclass(frozen=True)
class SeqSir:
    """N candidates per prompt (from the driver's token mode), one resampled by Q(y|x)."""

    num_candidates: int

    def __post_init__(self):
        if int(self.num_candidates) < 1:
            raise ValueError(f"seq_sir num_candidates={self.num_candidates} must be >= 1.")

    def candidate_keys(self, prompt_keys_P: jax.Array) -> jax.Array:
        """Row keys of the candidates, prompt-major: `split(prompt key, N)`."""
        n = self.num_candidates
        return jax.vmap(lambda k: jax.random.split(k, n))(prompt_keys_P).reshape(-1)

    def pick(self, prompt_keys_P: jax.Array, seq_logq_PxN: np.ndarray) -> np.ndarray:
        """Per prompt, the index of the chosen candidate, with `fold_in(prompt key, 0x5E9)`."""
        return np.asarray(_pick(prompt_keys_P, jnp.asarray(seq_logq_PxN, jnp.float32)))


@jax.jit
def _pick(prompt_keys_P, seq_logq_PxN):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, _PICK))(prompt_keys_P)
    return jax.vmap(jax.random.categorical)(keys, seq_logq_PxN).astype(jnp.int32)
