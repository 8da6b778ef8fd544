"""Training objectives for the residual aligner (RAM.md section 2), pure jnp.

Every objective is a function of sequence log-probabilities
`log Q(y|x) = sum_t log_softmax(logits[t-1])[y_t]` over response tokens,
in float32 (`sequence_logprobs`). A training example is a group of G
sequences sharing one prompt: index 0 is the target response y+, the others
are, by objective,

  sft      G = 1      [y+]
  ram_sft  G = 2      [y+, y~]           y~ ~ P(.|x) (or HH's rejected)
  ram_dpo  G = 2      [y_w, y_l]
  dpo      G = 2      [y_w, y_l]         plus the frozen reference's log-probs
  ram_mc   G = 1 + K  [y+, y~_1..y~_K]

`objective_sums` returns the numerator and denominator of the batch loss (and
metric sums) rather than a mean, so gradient accumulation over microbatches
is exact: the step divides summed gradients by the summed denominator.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

OBJECTIVES = ("sft", "ram_sft", "ram_dpo", "dpo", "ram_mc")


@dataclasses.dataclass(frozen=True)
class Objective:
    """An objective and its hyperparameters (hashable: a static jit argument).

    `token_mean` (sft only) divides by response tokens instead of examples,
    like a standard SFT trainer; RAM objectives are sequence-level sums.
    """

    name: str = "ram_sft"
    alpha: float = 1e-4
    beta: float = 1.0
    num_samples: int = 1
    token_mean: bool = False

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective {self.name!r} is unknown; choose one of {OBJECTIVES}.")
        if self.name == "ram_mc" and self.num_samples < 1:
            raise ValueError(f"ram_mc needs num_samples >= 1, got {self.num_samples}.")
        if self.token_mean and self.name != "sft":
            raise ValueError("token_mean applies to the 'sft' objective only.")

    @classmethod
    def from_config(cls, o) -> Objective:
        """From a training config's `objective` section (`experiments/configs/base.py`)."""
        return cls(
            o.name,
            alpha=o.alpha,
            beta=o.beta,
            num_samples=o.num_samples,
            token_mean=o.get("token_mean", False),
        )

    @property
    def group_size(self) -> int:
        """Sequences per example G (target first)."""
        return {"sft": 1, "ram_mc": 1 + self.num_samples}.get(self.name, 2)

    @property
    def needs_reference(self) -> bool:
        return self.name == "dpo"

    @property
    def second_field(self) -> str | None:
        """What the sequences after the target are: 'rejected' or 'negatives'."""
        return {"ram_dpo": "rejected", "dpo": "rejected", "sft": None}.get(self.name, "negatives")


def sequence_logprobs(
    logits_BxTxV: jax.Array,
    tokens_BxT: jax.Array,
    target_mask_BxT: jax.Array,
    vocab_limit: int | None = None,
) -> jax.Array:
    """Sum over target tokens of `log_softmax(logits[t-1])[tokens[t]]`, float32, shape [B].

    Args:
      logits_BxTxV: the model's logits for `tokens_BxT` (any float dtype).
      tokens_BxT: the scored sequences (prompt + response).
      target_mask_BxT: True at response tokens to score (never at t = 0);
        prompt and padding positions are False.
      vocab_limit: the tokenizer length; padded vocabulary rows beyond it are
        dropped before the normaliser. None keeps all rows.
    """
    logits = logits_BxTxV[:, :-1].astype(jnp.float32)
    if vocab_limit is not None:
        logits = logits[..., :vocab_limit]
    targets_BxT = tokens_BxT[:, 1:]
    picked = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    token_lp = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(jnp.where(target_mask_BxT[:, 1:], token_lp, 0.0), axis=-1)


def sft_loss(chosen_B):
    """-log Q(y+|x)."""
    return -chosen_B


def ram_sft_loss(chosen_B, sample_B, alpha):
    """-log Q(y+|x) + alpha log Q(y~|x) (paper Eq. 8)."""
    return -chosen_B + alpha * sample_B


def ram_dpo_loss(chosen_B, rejected_B, beta):
    """-log sigmoid(beta (log Q(y_w|x) - log Q(y_l|x))): reference-free DPO on Q."""
    return -jax.nn.log_sigmoid(beta * (chosen_B - rejected_B))


def dpo_loss(chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, beta):
    """Standard DPO against a frozen reference's log-probs."""
    margin = (chosen_B - ref_chosen_B) - (rejected_B - ref_rejected_B)
    return -jax.nn.log_sigmoid(beta * margin)


def ram_mc_loss(chosen_B, samples_BxK):
    """-log Q(y+|x) + log((1/K) sum_k Q(y~_k|x)): K-sample estimate of log Z."""
    k = samples_BxK.shape[-1]
    return -chosen_B + jax.nn.logsumexp(samples_BxK, axis=-1) - math.log(k)


def per_example_loss(objective: Objective, logp_BxG, ref_logp_BxG=None):
    """The objective's loss of each example, shape [B]."""
    name, chosen = objective.name, logp_BxG[:, 0]
    if name == "sft":
        return sft_loss(chosen)
    if name == "ram_sft":
        return ram_sft_loss(chosen, logp_BxG[:, 1], objective.alpha)
    if name == "ram_dpo":
        return ram_dpo_loss(chosen, logp_BxG[:, 1], objective.beta)
    if name == "dpo":
        if ref_logp_BxG is None:
            raise ValueError("objective 'dpo' needs the reference model's log-probs.")
        return dpo_loss(
            chosen, logp_BxG[:, 1], ref_logp_BxG[:, 0], ref_logp_BxG[:, 1], objective.beta
        )
    return ram_mc_loss(chosen, logp_BxG[:, 1:])


def objective_sums(
    objective: Objective,
    logp_BxG: jax.Array,
    weight_B: jax.Array,
    tokens_BxG: jax.Array,
    ref_logp_BxG: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Loss numerator, denominator and metric sums of a (micro)batch.

    `weight_B` is 1 for real examples and 0 for padding rows; `tokens_BxG`
    counts each sequence's target tokens. The batch loss is numerator /
    denominator; each metric is its sum / `metrics['examples']`.
    """
    weight_B = weight_B.astype(jnp.float32)
    loss_B = per_example_loss(objective, logp_BxG, ref_logp_BxG)
    chosen_tokens_B = tokens_BxG[:, 0].astype(jnp.float32)
    if objective.token_mean:
        numer = jnp.sum(weight_B * loss_B)
        denom = jnp.sum(weight_B * chosen_tokens_B)
    else:
        numer, denom = jnp.sum(weight_B * loss_B), jnp.sum(weight_B)
    wsum = lambda x_B: jnp.sum(weight_B * x_B)
    metrics = {
        "examples": jnp.sum(weight_B),
        "target_tokens": wsum(jnp.sum(tokens_BxG, axis=-1).astype(jnp.float32)),
        "chosen_logp": wsum(logp_BxG[:, 0]),
    }
    if logp_BxG.shape[1] > 1:
        other = "rejected_logp" if objective.second_field == "rejected" else "sample_logp"
        metrics[other] = wsum(jnp.mean(logp_BxG[:, 1:], axis=-1))
    if objective.name in ("ram_dpo", "dpo"):
        margin_B = logp_BxG[:, 0] - logp_BxG[:, 1]
        if ref_logp_BxG is not None:
            margin_B = margin_B - (ref_logp_BxG[:, 0] - ref_logp_BxG[:, 1])
        metrics["accuracy"] = wsum((margin_B > 0).astype(jnp.float32))
        metrics["margin"] = wsum(margin_B)
    return numer, denom, metrics
