"""Warnings for a run that trains nothing: a loss or gradient norm of exactly 0.

A loss of exactly 0 in float32 (or a zero gradient) at the start of training
means the objective gives no signal at all, so the run would "finish" with
the initial parameters. The usual cause is a saturated DPO sigmoid: with
`ram_dpo`'s reference beta = 1, rejected answers some 20 tokens longer than
the chosen ones give an untrained aligner a margin of about +100 nats, and
-log sigmoid(100) rounds to 0. `zero_signal_warning` says so, with the numbers.
"""

from __future__ import annotations

import numpy as np


def zero_signal_warning(
    objective, metrics: dict[str, float], step: int, response_lengths_NxG: np.ndarray | None
) -> str | None:
    """Why step `step` gave no training signal and what to change; None when it did."""
    loss, grad_norm = metrics["loss"], metrics["grad_norm"]
    if loss != 0.0 and grad_norm != 0.0:
        return None
    what = {
        (True, True): "loss and gradient norm are",
        (True, False): "loss is",
        (False, True): "gradient norm is",
    }[(loss == 0.0, grad_norm == 0.0)]
    head = f"step {step}: the training {what} exactly 0, so this step changed nothing."
    if objective.name in ("ram_dpo", "dpo") and "margin" in metrics:
        beta, margin = objective.beta, metrics["margin"]
        text = (
            f"{head} {objective.name}'s margin log Q(chosen) - log Q(rejected) averages "
            f"{margin:.1f} nats (accuracy {metrics.get('accuracy', float('nan')):.2f}); times "
            f"beta={beta:g} that saturates -log sigmoid(.), which rounds to 0 in float32."
        )
        if response_lengths_NxG is not None and response_lengths_NxG.shape[1] > 1:
            chosen, rejected = response_lengths_NxG.mean(0)[:2]
            if rejected > chosen:
                text += (
                    f" The rejected responses are {rejected - chosen:.1f} tokens longer on "
                    f"average ({rejected:.1f} vs {chosen:.1f}), and every extra token lowers "
                    "log Q(rejected): the untrained aligner already ranks every pair."
                )
        return text + (
            f" Lower objective.beta so beta x margin stays within a few nats (e.g. "
            f"--config.objective.beta={_suggest_beta(margin)}), or pair rejected answers of "
            "similar length with the chosen ones."
        )
    return (
        f"{head} Check that rows have non-empty responses (the response tokens are the only "
        f"targets) and the objective's settings ({objective.name}); the learning rate does "
        "not change the gradient."
    )


def _suggest_beta(margin: float) -> str:
    """A power of ten putting |beta x margin| near 1."""
    return f"{10 ** np.round(np.log10(1.0 / max(abs(margin), 1.0))):g}"


def non_finite_message(step: int, metrics: dict[str, float], checkpointer, last_saved) -> str:
    """What stopped the run, which checkpoint is kept and whether its loss was finite."""
    text = (
        f"non-finite training loss {metrics['loss']} (grad norm {metrics['grad_norm']}) at step "
        f"{step}; stopping."
    )
    if last_saved is None:
        text += " No checkpoint was saved."
    else:
        loss = checkpointer.saved_loss(last_saved)
        text += f" The latest checkpoint, step {last_saved} in {checkpointer.directory}, is kept"
        text += (
            f" (its loss was finite when saved: {loss:.4g})."
            if loss is not None
            else " (saved without a recorded loss, so not known to be good)."
        )
    return text + (
        " Lower optimizer.lr (a resume may change it), set optimizer.clip_norm, or check the data."
    )
