"""Device mesh and parameter partitioning: one regex table for every model.

The mesh has three named axes, each possibly of size 1:

  data    pure data parallelism: parameters replicated, batch split.
  fsdp    fully sharded data parallelism: batch split AND each parameter's
          model-width dimension (D) split, so weights, gradients and optimizer
          state are spread over the axis (ZeRO-3).
  tensor  tensor (model) parallelism: heads / MLP width / vocabulary split.

The batch is split over ('data', 'fsdp'). Parameter paths are the '/'-joined
keys of `transformer.py`'s layout (e.g. 'layers/attn/q_proj/kernel'); stacked
layer tensors carry the layer axis L first and it is never sharded (the layer
scan slices it). The same table serves the frozen proposal and the aligner.
A dimension that an axis does not divide evenly falls back to replication on
that dimension, so tiny test models run on any mesh.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex on the parameter path, PartitionSpec); first match wins.
# Kernels are [in, out]; stacked ones [L, in, out].
DEFAULT_RULES: tuple[tuple[str, P], ...] = (
    (r"^embed/embedding$", P("tensor", "fsdp")),  # [V, D]
    (r"^layers/attn/(q|k|v)_proj/kernel$", P(None, "fsdp", "tensor")),  # [L, D, N*H]
    (r"^layers/attn/(q|k|v)_proj/bias$", P(None, "tensor")),  # [L, N*H]
    (r"^layers/attn/o_proj/kernel$", P(None, "tensor", "fsdp")),  # [L, N*H, D]
    (r"^layers/mlp/(gate|up)_proj/kernel$", P(None, "fsdp", "tensor")),  # [L, D, F]
    (r"^layers/mlp/down_proj/kernel$", P(None, "tensor", "fsdp")),  # [L, F, D]
    (r"^lm_head/kernel$", P("fsdp", "tensor")),  # [D, V]
    (r"norm/scale$", P()),  # [L, D] or [D]: tiny, replicated
    (r".*", P()),
)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with Auto axis types.

    One of the sizes may be -1: it takes all remaining devices. On several
    hosts pass nothing for `devices`: every process builds the same global
    mesh from `jax.devices()`.
    """
    devices = list(devices) if devices is not None else jax.devices()
    sizes = [data, fsdp, tensor]
    named = lambda: ", ".join(f"{a}={n}" for a, n in zip(MESH_AXES, sizes, strict=True))
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {{{named()}}}: at most one may be -1.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into mesh {{{named()}}}.")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {{{named()}}} needs {int(np.prod(sizes))} devices, "
            f"but {len(devices)} are available; set mesh sizes whose product is the device "
            "count (or -1 for one axis)."
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def path_str(path) -> str:
    """'layers/attn/q_proj/kernel' from a `jax.tree_util` key path."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops axes the mesh lacks or that do not divide their dimension."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    if len(entries) > len(shape):
        entries = entries[: len(shape)]
    fitted = []
    for dim, entry in zip(shape, entries, strict=True):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or dim % size:
            fitted.append(None)
        else:
            fitted.append(axes[0] if len(axes) == 1 else axes)
    return P(*fitted)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules=DEFAULT_RULES) -> P:
    """The PartitionSpec of one parameter: first matching rule, fitted to the mesh."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            return _fit(spec, shape, mesh)
    raise ValueError(f"no sharding rule matches parameter {path!r}; add one (r'.*' catches all).")


def param_specs(params, mesh: Mesh, rules=DEFAULT_RULES):
    """PartitionSpecs for a parameter pytree (arrays or `ShapeDtypeStruct`s)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec_for(path_str(path), tuple(x.shape), mesh, rules), params
    )


def param_shardings(params, mesh: Mesh, rules=DEFAULT_RULES):
    """`NamedSharding`s for a parameter pytree (arrays or `ShapeDtypeStruct`s).

    Works on abstract trees from `transformer.abstract_params`, so shardings
    are known before anything is allocated; optimizer states whose leaves
    mirror the parameters (Adam moments, RMSprop accumulators) get the same
    specs via `state_shardings`.
    """
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules))


def state_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES):
    """Shardings for any pytree containing parameter-like subtrees.

    Each leaf is matched on the tail of its path that follows the first
    occurrence of a top-level parameter name ('embed', 'layers', ...), so
    `opt_state/0/nu/layers/mlp/up_proj/kernel` shards like the parameter.
    Scalars (step counters) are replicated.
    """
    roots = ("embed/", "layers/", "final_norm/", "lm_head/")

    def one(path, x):
        shape = tuple(getattr(x, "shape", ()))
        if not shape:
            return NamedSharding(mesh, P())
        p = path_str(path)
        tail = p
        for root in roots:
            if p.startswith(root):
                break
            i = p.find("/" + root)
            if i >= 0:
                tail = p[i + 1 :]
                break
        return NamedSharding(mesh, spec_for(tail, shape, mesh, rules))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension split over ('data', 'fsdp'); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))
