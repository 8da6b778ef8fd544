"""Training checkpoints: an Orbax `CheckpointManager` under `WORKDIR/checkpoints`.

Each step directory holds three items:
  state  the `TrainState` (step, params, opt_state) as an Orbax PyTree;
  data   the data iterator position `{epoch, index, seed}` (JSON);
  meta   the model config and the training fields that fix the state's
         structure (JSON), checked before any restore so an incompatible
         workdir fails with a readable message instead of a shape error.
Saves are asynchronous (training continues while files are written; Orbax
commits each step directory atomically). Restores target an abstract state
carrying the CURRENT shardings, so a checkpoint written on 8 devices restores
on 1 (or any other mesh). Frozen models are never part of a checkpoint.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from ram_jax.models.config import ModelConfig
from ram_jax.training.step import TrainState

# Config fields that change the structure or meaning of a saved state.
STRUCTURAL_FIELDS = (
    ("objective", "name"),
    ("optimizer", "name"),
    ("optimizer", "clip_norm"),
    ("seed",),
    ("batch_size",),
)


def make_meta(model_config: ModelConfig, train_config, **extra) -> dict:
    """What must match between a checkpoint and the run restoring it.

    `extra` adds run facts beyond the config (e.g. the number of training
    examples, which fixes the data order of every epoch).
    """
    fields = dict(extra)
    for path in STRUCTURAL_FIELDS:
        value = train_config
        for p in path:
            value = value[p]
        fields[".".join(path)] = value
    return {"model": model_config.to_dict(), "train": fields}


def check_compatible(saved: dict, current: dict, where: str) -> None:
    """Raises ValueError listing every field where a checkpoint and the config disagree."""
    diffs = []
    for section in ("model", "train"):
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}")
    if diffs:
        raise ValueError(
            f"{where} holds a checkpoint from an incompatible configuration:\n  "
            + "\n  ".join(diffs)
            + "\nUse a new --workdir, or restore the original config to resume."
        )


def _as_dict(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _restore_args(abstract_tree, shardings_tree):
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_tree,
        shardings_tree,
    )
    return target, ocp.checkpoint_utils.construct_restore_args(target)


class Checkpointer:
    """Saves and restores (state, data position) for one workdir.

    Only JAX process 0 writes files (Orbax coordinates this); every process
    must call `save` and `restore` together.
    """

    def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict, meta: dict, *, force=True) -> bool:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_as_dict(state)),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def restore(
        self, abstract: TrainState, shardings: TrainState, meta: dict, step: int | None = None
    ) -> tuple[TrainState, dict]:
        """(state, data position) of `step` (default latest), laid out by `shardings`."""
        step = self.latest_step() if step is None else step
        check_compatible(self.read_meta(step), meta, self.directory)
        target, restore_args = _restore_args(_as_dict(abstract), _as_dict(shardings))
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args),
                data=ocp.args.JsonRestore(),
            ),
        )
        s = out["state"]
        return TrainState(s["step"], s["params"], s["opt_state"]), out["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any received a preemption notice (multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def source_step_dir(path: str) -> str:
    """The step directory of a ram_jax workdir (latest step) or of a step directory itself."""
    ckpt_dir = os.path.join(path, "checkpoints")
    step_dir = path
    if os.path.isdir(ckpt_dir):
        manager = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data", "meta"))
        step = manager.latest_step()
        manager.close()
        if step is None:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint steps to load params from.")
        step_dir = os.path.join(ckpt_dir, str(step))
    if not os.path.isdir(os.path.join(step_dir, "state")):
        raise FileNotFoundError(
            f"{path}: not a ram_jax workdir or checkpoint step directory (no state/ inside)."
        )
    return step_dir


def checkpoint_model_config(path: str) -> ModelConfig:
    """The model config saved with a ram_jax run (workdir or step directory)."""
    step_dir = source_step_dir(path)
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        os.path.join(step_dir, "meta"), args=ocp.args.JsonRestore()
    )
    return ModelConfig.from_dict(meta["model"])


def load_params(path: str, abstract_params, shardings):
    """Params only from a ram_jax run: a workdir (latest step) or one step directory.

    Used to initialise a model from a previous run (`model.init='checkpoint'`);
    the optimizer state in the checkpoint is not read.
    """
    state_dir = os.path.join(source_step_dir(path), "state")
    target, restore_args = _restore_args(abstract_params, shardings)
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args={"params": restore_args},
            partial_restore=True,
        ),
    )
    return restored["params"]
