r"""Memory planning: per-device bytes of a training stage or a RAM decoding pair, before renting.

  python -m ram_jax.plan --config=experiments/paper/uc_llama8b_wup_ram1b.py:stage=aligner \
      --device=v5e-8 [--mesh=data=1,fsdp=8,tensor=1]
  python -m ram_jax.plan --decode=llama-3.1-8b+llama-3.2-1b --device=8xH100 --batch=32 --length=2048
  python -m ram_jax.plan --table          # the README table (paper pairs x v5e-8, v4-8, 8xH100)

Parameters and optimizer state are exact: shapes from `jax.eval_shape`
(`transformer.abstract_params`, `optimizer.init`), per-device shard shapes
from the regex partition table (`ram_jax.sharding`) on an abstract mesh.
Everything else is an estimate whose formula is stated here:

  gradients    in the parameters' dtype (float32 master weights, or bfloat16 under
               precision='reference'), sharded like the parameters; x2 when grad_accum > 1
               (the scan carries the running sum next to the microbatch's gradient).
  gathered     FSDP gathers one stacked layer at a time inside the layer scan;
               2 layers' weights in the compute dtype (one in use, one prefetched).
  activations  tokens_dev = batch / (grad_accum * data * fsdp) * G * T, with G
               sequences per example (sft 1; ram_sft, ram_dpo, dpo 2; ram_mc 1 + K)
               and T = max_length (the longest bucket). Per token and layer, with
               s bytes per compute-dtype element, the attention implementation
               the device's backend runs (`ram_jax.models.attention.resolve`):
                 naive, xla (TPU/GPU fallbacks, CPU):
                   A = s * (6 D + 2 N H + 2 K H + 3 F) + (12 + s) * N * T
                 cudnn (GPU, bf16), splash (TPU):
                   A = s * (6 D + 2 N H + 2 K H + 3 F) + s * (2 N H + 2 K H) + 4 N
               (norm inputs/outputs, residuals, q/k/v, attention output, MLP
               gate/up/product. Naive: over T keys three float32 tensors, the scores,
               the masked scores and their exponentials, plus the compute-dtype
               probabilities: what XLA kept per layer on an H200, where 4 + s
               under-estimated by 2x. Fused kernels keep no T x T tensor: the copies
               of q, k, v and the output laid out for the kernel (rotated rows for
               cuDNN, head-major for splash) and a float32 log-sum-exp per head.)
               Logits: 12 V bytes per token (float32 logits, log-softmax, their gradient).
                 no remat:  tokens_dev * (L * A + 12 V)
                 remat:     tokens_dev * (L * s * D + A + 12 V)
               (per-layer remat keeps each layer's input and recomputes one layer).
  reference    DPO's frozen reference: parameters like the trained ones, sharded the same way.
  decoding     both models' weights in the decode dtype, sharded by the table, plus
               KV caches 2 * L * B * S * K * H * s per model, the batch split over
               (data, fsdp) when it divides.
XLA's own buffers, fragmentation and collectives' scratch are not modelled:
keep the estimate under about 90% of HBM. Measured on one H200 with naive
attention, before the fused kernels (bf16 compute, one ram_sft example = 2
sequences per microbatch, grad_accum 2; allocator peak vs plan; script
experiments/paper/check_plan_gpu.py):
  Llama-3.2-1B remat, T 2048:     23.2 GB vs 28.5 GB planned
  Qwen2.5-3B remat, T 2048:       51.7 GB vs 59.0 GB
  Llama-3.2-1B remat, T 1024:     20.4 GB vs 24.4 GB
  Llama-3.2-1B no remat, T 1024:  33.3 GB vs 41.0 GB
so the plan errs on the safe side by 14-23%.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType

from ram_jax import sharding as shd
from ram_jax.models import attention
from ram_jax.models.config import ModelConfig
from ram_jax.models.transformer import abstract_params
from ram_jax.training.losses import Objective

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Device:
    """An accelerator slice: chips, HBM per chip, and the JAX backend that drives it."""

    name: str
    chips: int
    hbm_bytes: int
    backend: str


DEVICES = {
    "v5e-8": Device("v5e-8", 8, 16 * GiB, "tpu"),
    "v4-8": Device("v4-8", 4, 32 * GiB, "tpu"),
    "8xH100": Device("8xH100", 8, 80 * GiB, "gpu"),
    # Larger slices, for the proposal stages that an 8-chip TPU slice cannot hold.
    "v5e-32": Device("v5e-32", 32, 16 * GiB, "tpu"),
    "v4-16": Device("v4-16", 8, 32 * GiB, "tpu"),
}

FUSED_ATTENTION = ("cudnn", "splash")


def training_attention(config: ModelConfig, seq_len: int, backend: str) -> str:
    """The attention implementation a training step runs on `backend` ('auto')."""
    return attention.resolve(
        "auto",
        cached=False,
        t=seq_len,
        dtype=config.dtype,
        head_dim=config.head_dim,
        backend=backend,
    )


def abstract_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1) -> AbstractMesh:
    """A device-free ('data', 'fsdp', 'tensor') mesh for shard-shape arithmetic."""
    return AbstractMesh((data, fsdp, tensor), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def parse_mesh(text: str, chips: int) -> AbstractMesh:
    """'data=1,fsdp=-1,tensor=1' -> mesh over `chips` devices (-1 takes the rest)."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in sizes:
            raise ValueError(f"--mesh: unknown axis {key!r}; use data, fsdp, tensor.")
        sizes[key] = int(value)
    known = math.prod(v for v in sizes.values() if v != -1)
    for k, v in sizes.items():
        if v == -1:
            sizes[k] = chips // known
    if math.prod(sizes.values()) != chips:
        raise ValueError(f"mesh {sizes} does not use exactly {chips} chips.")
    return abstract_mesh(**sizes)


def sharded_bytes(tree, shardings) -> int:
    """Bytes one device holds of `tree` (ShapeDtypeStructs) under `shardings`."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += math.prod(s.shard_shape(tuple(x.shape))) * jnp.dtype(x.dtype).itemsize
    return total


@functools.lru_cache(maxsize=256)
def param_bytes(config: ModelConfig, mesh: AbstractMesh, dtype: str = "float32") -> int:
    """Per-device bytes of a model's parameters stored in `dtype`."""
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), abstract_params(config)
    )
    return sharded_bytes(params, shd.param_shardings(params, mesh))


@functools.lru_cache(maxsize=256)
def optimizer_bytes(
    config: ModelConfig, optimizer, mesh: AbstractMesh, param_dtype: str = "float32"
) -> int:
    """Per-device bytes of `optimizer.init` on parameters stored in `param_dtype` (exact)."""
    params = abstract_params(config.replace(param_dtype=param_dtype))
    state = jax.eval_shape(optimizer.init, params)
    return sharded_bytes(state, shd.state_shardings(state, mesh))


@functools.lru_cache(maxsize=256)
def layer_weight_bytes(config: ModelConfig, mesh: AbstractMesh) -> int:
    """One layer's weights in the compute dtype, gathered over fsdp (still split by tensor)."""
    params = abstract_params(config)["layers"]
    tensor = mesh.shape["tensor"]
    n = sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(params))
    return n * jnp.dtype(config.dtype).itemsize // tensor


def activation_bytes_per_token(
    config: ModelConfig, seq_len: int, remat: bool, attention: str = "naive"
) -> int:
    """The module docstring's A-formula, per token, summed over layers (+ logits).

    `attention` is the implementation that runs (`training_attention` for a backend).
    """
    c = config
    s = jnp.dtype(c.dtype).itemsize
    n, k, h = c.num_heads, c.num_kv_heads, c.head_dim
    layer = s * (6 * c.hidden_size + 2 * n * h + 2 * k * h + 3 * c.intermediate_size)
    if attention in FUSED_ATTENTION:
        layer += s * (2 * n * h + 2 * k * h) + 4 * n
    else:
        layer += (12 + s) * n * seq_len
    logits = 12 * c.vocab_size
    if remat:
        return c.num_layers * s * c.hidden_size + layer + logits
    return c.num_layers * layer + logits


def train_memory(
    config: ModelConfig,
    optimizer,
    mesh: AbstractMesh,
    *,
    objective: Objective,
    batch_size: int,
    grad_accum: int,
    max_length: int,
    remat: bool,
    attention: str = "naive",
    param_dtype: str = "float32",
) -> dict[str, int]:
    """Per-device bytes of one training stage (keys: params ... total).

    `attention`: the implementation the step runs (`training_attention(config, T, backend)`).
    `param_dtype`: the trained parameters' storage (`optim.param_dtype_for(precision)`:
    bfloat16 under `precision='reference'`, and so its gradients and optimizer state).
    """
    group = objective.group_size
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % (grad_accum * rows):
        raise ValueError(
            f"batch {batch_size} does not split into {grad_accum} microbatches over {rows} "
            "batch shards."
        )
    tokens = batch_size // (grad_accum * rows) * group * max_length
    p = param_bytes(config, mesh, param_dtype)
    out = {
        "params": p,
        "optimizer": optimizer_bytes(config, optimizer, mesh, param_dtype),
        "gradients": p * (2 if grad_accum > 1 else 1),
        "gathered": 2 * layer_weight_bytes(config, mesh),
        "activations": tokens * activation_bytes_per_token(config, max_length, remat, attention),
        "reference": p if objective.needs_reference else 0,
    }
    out["total"] = sum(out.values())
    return out


def decode_memory(
    proposal: ModelConfig,
    aligner: ModelConfig | None,
    mesh: AbstractMesh,
    *,
    batch: int,
    length: int,
    dtype: str = "bfloat16",
) -> dict[str, int]:
    """Per-device bytes of joint decoding: weights and KV caches of both models."""
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    local_batch = batch // rows if batch % rows == 0 else batch
    s = jnp.dtype(dtype).itemsize
    out = {}
    for name, cfg in (("proposal", proposal), ("aligner", aligner)):
        if cfg is None:
            continue
        out[f"{name}_weights"] = param_bytes(cfg, mesh, dtype)
        kv = 2 * cfg.num_layers * local_batch * length * cfg.num_kv_heads * cfg.head_dim * s
        out[f"{name}_kv_cache"] = kv
    out["total"] = sum(out.values())
    return out


def suggest_grad_accum(fits, batch_size: int, rows: int) -> int | None:
    """Smallest grad_accum (a divisor of the per-shard batch) for which `fits(a)` holds."""
    per_shard = batch_size // rows
    for a in range(1, per_shard + 1):
        if per_shard % a == 0 and fits(a):
            return a
    return None


def gib(n: int) -> str:
    return f"{n / GiB:.1f}"
