"""Train state, its sharded initialisation, and the jitted train and eval steps.

The state is (step, params, opt_state) of the trained model only. A frozen
model (the DPO reference) is a separate argument of the step: never donated,
never given optimizer state, never checkpointed. Parameters are float32
master weights whatever the compute dtype, or bfloat16 under the
reference's precision (`optim.reference_rmsprop`; at LR 2e-7 most updates
then round away, as they did in the paper's runs). Gradients are always
accumulated in float32.

The step is one `jax.jit` with explicit in/out shardings that donates the
state. Its batch is `[A, b, G, T]` (`ram_jax.data.pipeline`): a `lax.scan`
over the A microbatches sums gradients of the loss numerator, then divides by
the summed denominator, so one step is one optimizer update with exactly the
large-batch gradient (weights: examples, or tokens for token-mean SFT).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ram_jax import sharding as shd
from ram_jax.models.config import ModelConfig
from ram_jax.models.transformer import abstract_params, forward, init_params
from ram_jax.training.losses import Objective, objective_sums, sequence_logprobs

BATCH_KEYS = ("tokens", "mask", "targets", "weight")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training checkpoint holds besides the data position."""

    step: jax.Array
    params: Any
    opt_state: Any


def _check_param_dtype(config: ModelConfig) -> None:
    if config.param_dtype not in ("float32", "bfloat16"):
        raise ValueError(
            f"trained parameters are float32 master weights or bfloat16 (precision='reference'), "
            f"got param_dtype={config.param_dtype!r}; use model.dtype for the compute dtype."
        )


def _check_state_dtypes(before, after) -> None:
    """The optimizer must keep its state's dtypes (checked once, while tracing)."""
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after), strict=True
    ):
        if a.dtype != b.dtype:
            raise ValueError(
                f"the optimizer turns state {jax.tree_util.keystr(path)} from {a.dtype} into "
                f"{b.dtype}; bfloat16 parameters need an optimizer that keeps its state in their "
                "dtype (precision='reference' with optimizer.name='rmsprop')."
            )


def abstract_state(config: ModelConfig, optimizer: optax.GradientTransformation) -> TrainState:
    """The state's shapes and dtypes (`ShapeDtypeStruct`s); allocates nothing."""
    _check_param_dtype(config)
    params = abstract_params(config)
    return jax.eval_shape(
        lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), params
    )


def state_shardings(abstract: TrainState, mesh: Mesh, rules=shd.DEFAULT_RULES) -> TrainState:
    """Shardings of every state leaf from the regex table (step replicated)."""
    return TrainState(
        step=NamedSharding(mesh, P()),
        params=shd.param_shardings(abstract.params, mesh, rules),
        opt_state=shd.state_shardings(abstract.opt_state, mesh, rules),
    )


def init_state(
    config: ModelConfig,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    shardings: TrainState,
) -> TrainState:
    """Random initial state, created directly in its sharded layout."""

    def create(key):
        params = init_params(config, key)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    return jax.jit(create, out_shardings=shardings)(key)


def state_from_params(
    params,
    optimizer: optax.GradientTransformation,
    shardings: TrainState,
    param_dtype: str = "float32",
) -> TrainState:
    """A fresh state (step 0, new optimizer state) around loaded, sharded params."""
    params = jax.tree.map(lambda x: x.astype(param_dtype), params)
    create = lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p))
    return jax.jit(create, in_shardings=(shardings.params,), out_shardings=shardings)(params)


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    """[A, b, G, T] arrays and [A, b] weights, split over b."""
    rows = shd.BATCH_AXES
    return {
        "tokens": NamedSharding(mesh, P(None, rows, None, None)),
        "mask": NamedSharding(mesh, P(None, rows, None, None)),
        "targets": NamedSharding(mesh, P(None, rows, None, None)),
        "weight": NamedSharding(mesh, P(None, rows)),
    }


def put_batch(batch: dict, mesh: Mesh) -> dict[str, jax.Array]:
    """This process's numpy batch -> global arrays (no cross-host transfer)."""
    shardings = batch_shardings(mesh)
    return {k: jax.make_array_from_process_local_data(shardings[k], batch[k]) for k in BATCH_KEYS}


def model_sequence_logprobs(
    params,
    config: ModelConfig,
    tokens_BxT: jax.Array,
    mask_BxT: jax.Array,
    target_mask_BxT: jax.Array,
    *,
    vocab_limit: int | None = None,
    remat: bool = False,
    attention: str = "auto",
) -> jax.Array:
    """`log Q(y|x)` of right- or left-padded sequences under a model, float32 [B]."""
    logits, _ = forward(
        params, tokens_BxT, config, mask_BxT=mask_BxT, remat=remat, attention=attention
    )
    return sequence_logprobs(logits, tokens_BxT, target_mask_BxT & mask_BxT, vocab_limit)


def _microbatch_sums(
    params,
    micro,
    ref_params,
    *,
    config,
    objective,
    vocab_limit,
    remat,
    ref_config,
    attention="auto",
):
    b, g, t = micro["tokens"].shape
    flat = lambda x: x.reshape(b * g, t)
    score = lambda p, c, rm: model_sequence_logprobs(
        p,
        c,
        flat(micro["tokens"]),
        flat(micro["mask"]),
        flat(micro["targets"]),
        vocab_limit=vocab_limit,
        remat=rm,
        attention=attention,
    ).reshape(b, g)
    logp_BxG = score(params, config, remat)
    ref_logp_BxG = None
    if objective.needs_reference:
        ref_logp_BxG = jax.lax.stop_gradient(score(ref_params, ref_config, False))
    tokens_BxG = jnp.sum(micro["targets"][..., 1:] & micro["mask"][..., 1:], axis=-1)
    numer, denom, metrics = objective_sums(
        objective, logp_BxG, micro["weight"], tokens_BxG, ref_logp_BxG
    )
    return numer, (denom, metrics)


def _in_mesh(mesh: Mesh):
    """Traces a function under `mesh` as the context mesh (read by `jax.shard_map`)."""

    def wrap(fn):
        @functools.wraps(fn)
        def traced(*args):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return fn(*args)

        return traced

    return wrap


def _finish_metrics(numer, denom, sums):
    examples = jnp.maximum(sums["examples"], 1.0)
    out = {k: (v if k in ("examples", "target_tokens") else v / examples) for k, v in sums.items()}
    out["loss"] = numer / jnp.maximum(denom, 1e-30)
    return out


def make_train_step(
    config: ModelConfig,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    shardings: TrainState,
    mesh: Mesh,
    *,
    vocab_limit: int | None,
    remat: bool = False,
    ref_config: ModelConfig | None = None,
    ref_shardings=None,
    attention: str = "auto",
):
    """The jitted step `(state, batch, ref_params) -> (state, metrics)`; `state` is donated.

    `ref_params` is the frozen reference for objective 'dpo' and None otherwise.
    `attention` picks the attention implementation (`ram_jax.models.attention`); the
    step traces under `mesh`, so kernels without a partitioning rule run per shard.
    Metrics (replicated scalars): loss, grad_norm, lr, examples, target_tokens,
    chosen_logp, sample_logp / rejected_logp, and accuracy / margin for DPO.
    """
    _check_param_dtype(config)
    sums_fn = jax.value_and_grad(
        lambda p, m, r: _microbatch_sums(
            p,
            m,
            r,
            config=config,
            objective=objective,
            vocab_limit=vocab_limit,
            remat=remat,
            ref_config=ref_config,
            attention=attention,
        ),
        has_aux=True,
    )

    @_in_mesh(mesh)
    def step(state: TrainState, batch, ref_params):
        first = jax.tree.map(lambda x: x[0], batch)
        metric_shapes = jax.eval_shape(lambda: sums_fn(state.params, first, ref_params)[0][1][1])
        zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)

        def body(carry, micro):
            grads_acc, numer_acc, denom_acc, metrics_acc = carry
            (numer, (denom, metrics)), grads = sums_fn(state.params, micro, ref_params)
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
            return (grads_acc, numer_acc + numer, denom_acc + denom, metrics_acc), None

        init = (zeros(state.params), jnp.float32(0), jnp.float32(0), zeros(metric_shapes))
        (grads, numer, denom, sums), _ = jax.lax.scan(body, init, batch)
        grads = jax.tree.map(lambda g: g / jnp.maximum(denom, 1e-30), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        _check_state_dtypes(state.opt_state, opt_state)
        params = optax.apply_updates(state.params, updates)
        metrics = _finish_metrics(numer, denom, sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return TrainState(state.step + 1, params, opt_state), metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step,
        in_shardings=(shardings, batch_shardings(mesh), ref_shardings),
        out_shardings=(shardings, replicated),
        donate_argnames=("state",),
    )


def make_eval_step(
    config: ModelConfig,
    objective: Objective,
    param_shardings,
    mesh: Mesh,
    *,
    vocab_limit: int | None,
    ref_config: ModelConfig | None = None,
    ref_shardings=None,
    attention: str = "auto",
):
    """Jitted `(params, batch, ref_params) -> (numer, denom, metric sums)` for [1, b, ...] batches.

    Sum these over batches on the host, then `finish_eval` gives the metrics.
    """

    @_in_mesh(mesh)
    def evaluate(params, batch, ref_params):
        micro = jax.tree.map(lambda x: x[0], batch)
        numer, (denom, sums) = _microbatch_sums(
            params,
            micro,
            ref_params,
            config=config,
            objective=objective,
            vocab_limit=vocab_limit,
            remat=False,
            ref_config=ref_config,
            attention=attention,
        )
        return numer, denom, sums

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        evaluate,
        in_shardings=(param_shardings, batch_shardings(mesh), ref_shardings),
        out_shardings=replicated,
    )


def finish_eval(numer: float, denom: float, sums: dict[str, float]) -> dict[str, float]:
    """Host-side metrics from summed eval outputs (same definitions as the train metrics)."""
    out = {
        k: (float(v) if k in ("examples", "target_tokens") else float(v) / max(sums["examples"], 1))
        for k, v in sums.items()
    }
    out["loss"] = float(numer) / max(float(denom), 1e-30)
    return out
