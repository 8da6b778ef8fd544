"""Optimizers and learning-rate schedules (optax), from a config's fields.

`rmsprop` reproduces torch.optim.RMSprop's defaults used by the paper's
reference trainer (alpha 0.99, eps 1e-8 added outside the square root, zero
initial accumulator, no momentum, no weight decay). `warmup_constant` is the
Hugging Face constant-with-warm-up schedule: lr * step / warmup for the first
`warmup` steps (so the first update has lr 0), then constant.
"""

from __future__ import annotations

import math

import optax

SCHEDULES = ("warmup_constant", "cosine", "constant")
OPTIMIZERS = ("rmsprop", "adamw")


def make_schedule(
    name: str, lr: float, total_steps: int, warmup_fraction: float = 0.1, min_lr_fraction=0.0
) -> optax.Schedule:
    """The learning rate as a function of the optimizer step."""
    warmup = int(math.ceil(warmup_fraction * total_steps))
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "warmup_constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total_steps, warmup + 1), end_value=lr * min_lr_fraction
        )
    raise ValueError(f"schedule.name={name!r} is unknown; choose one of {SCHEDULES}.")


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    *,
    clip_norm: float = 0.0,
    weight_decay: float = 0.0,
    rmsprop_decay: float = 0.99,
    eps: float = 1e-8,
    b1: float = 0.9,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """Gradient clipping (if clip_norm > 0) followed by the named optimizer."""
    if name == "rmsprop":
        if weight_decay:
            raise ValueError("rmsprop has no weight decay here (the paper used none); use adamw.")
        opt = optax.rmsprop(schedule, decay=rmsprop_decay, eps=eps, eps_in_sqrt=False)
    elif name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer.name={name!r} is unknown; choose one of {OPTIMIZERS}.")
    if clip_norm and clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt


def from_config(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from a training config's `optimizer` and `schedule` fields."""
    o, s = config.optimizer, config.schedule
    schedule = make_schedule(s.name, o.lr, total_steps, s.warmup_fraction, s.min_lr_fraction)
    opt = make_optimizer(
        o.name,
        schedule,
        clip_norm=o.clip_norm,
        weight_decay=o.weight_decay,
        rmsprop_decay=o.rmsprop_decay,
        eps=o.eps,
        b1=o.b1,
        b2=o.b2,
    )
    return opt, schedule
