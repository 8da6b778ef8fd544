"""Optimizers and learning-rate schedules (optax), from a config's fields.

`rmsprop` reproduces torch.optim.RMSprop's defaults used by the paper's
reference trainer (alpha 0.99, eps 1e-8 added outside the square root, zero
initial accumulator, no momentum, no weight decay). `warmup_constant` is the
Hugging Face constant-with-warm-up schedule: lr * step / warmup for the first
`warmup` steps (so the first update has lr 0), then constant.

Precision (`config.precision`): 'float32' trains float32 master weights with
float32 optimizer state. 'reference' trains as the reference did, with
bfloat16 parameters and a bfloat16 RMSprop state: `reference_rmsprop` rounds
every intermediate where torch.optim.RMSprop on bfloat16 tensors rounds (each
in-place op computes in float32 and stores bfloat16), so most updates at
LR 2e-7 round away, as in the paper's runs.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("warmup_constant", "cosine", "constant")
OPTIMIZERS = ("rmsprop", "adamw")
# The parameters' storage dtype under each `config.precision`.
PRECISIONS = {"float32": "float32", "reference": "bfloat16"}


def param_dtype_for(precision: str) -> str:
    """The trained parameters' storage dtype under `config.precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {sorted(PRECISIONS)}.")
    return PRECISIONS[precision]


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


class ReferenceRmsPropState(NamedTuple):
    count: jax.Array  # optimizer steps taken (the schedule's argument)
    square_avg: Any  # torch's `square_avg`, in the parameters' dtype


def reference_rmsprop(
    learning_rate: optax.Schedule, *, decay: float = 0.99, eps: float = 1e-8
) -> optax.GradientTransformation:
    """torch.optim.RMSprop (no momentum, not centered) as it runs on low-precision parameters.

    Gradients are rounded to the parameters' dtype (torch keeps them there),
    the state is kept in that dtype, and each torch in-place op rounds once:
    `square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)`,
    `avg = square_avg.sqrt().add_(eps)`, `p.addcdiv_(g, avg, value=-lr)`. The
    returned updates are the exact differences `new_p - p` in float32, so
    `optax.apply_updates` stores `new_p` itself. On float32 parameters this
    is ordinary RMSprop.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ReferenceRmsPropState(jnp.zeros([], jnp.int32), zeros)

    def update(grads, state, params):
        if params is None:
            raise ValueError("reference_rmsprop needs the params in optimizer.update.")
        lr = jnp.asarray(learning_rate(state.count), jnp.float32)
        f32 = lambda x: x.astype(jnp.float32)

        def one(g, sq, p):
            g = g.astype(p.dtype)
            sq = (f32(sq) * decay).astype(p.dtype)
            sq = (f32(sq) + (1 - decay) * f32(g) * f32(g)).astype(p.dtype)
            avg = jnp.sqrt(f32(sq)).astype(p.dtype)
            avg = (f32(avg) + eps).astype(p.dtype)
            new_p = (f32(p) + (-lr) * f32(g) / f32(avg)).astype(p.dtype)
            return f32(new_p) - f32(p), sq

        pairs = jax.tree.map(one, grads, state.square_avg, params)
        updates = jax.tree.map(lambda _, pair: pair[0], grads, pairs)
        square_avg = jax.tree.map(lambda _, pair: pair[1], grads, pairs)
        return updates, ReferenceRmsPropState(state.count + 1, square_avg)

    return optax.GradientTransformation(init, update)


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
    precision: str = "float32",
) -> optax.GradientTransformation:
    """Gradient clipping (if clip_norm > 0) followed by the named optimizer.

    `precision='reference'` (bfloat16 parameters) needs 'rmsprop', which is
    then `reference_rmsprop`; clipping sees the float32 accumulated gradient.
    """
    param_dtype_for(precision)  # a known precision
    if precision == "reference" and name != "rmsprop":
        raise ValueError(
            f"precision='reference' reproduces the reference's pure-bfloat16 RMSprop; "
            f"optimizer.name={name!r} has no such variant here. Use optimizer.name='rmsprop' "
            "or precision='float32'."
        )
    if name == "rmsprop":
        if weight_decay:
            raise ValueError("rmsprop has no weight decay here (the paper used none); use adamw.")
        if precision == "reference":
            opt = reference_rmsprop(schedule, decay=rmsprop_decay, eps=eps)
        else:
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
        precision=config.precision,
    )
    return opt, schedule
