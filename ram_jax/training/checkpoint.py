"""Training checkpoints: an Orbax `CheckpointManager` under `WORKDIR/checkpoints`.

Each step directory holds three items:
  state  the `TrainState` (step, params, opt_state) as an Orbax PyTree;
  data   the data iterator position `{epoch, index, seed}` (JSON);
  meta   the model config and the training fields that fix the state's
         structure (JSON), checked before any restore so an incompatible
         workdir fails with a readable message instead of a shape error; and
         the hyperparameters a resume may change (`HPARAM_FIELDS`), reported
         when they differ.
plus `ram_jax_manifest.json` (`ram_jax.training.integrity`): every file's
SHA-256 and the step's training loss, committed with the step.

Saves are asynchronous (training continues while files are written; Orbax
commits each step directory atomically). Restores target an abstract state
carrying the CURRENT shardings, so a checkpoint written on 8 devices restores
on 1 (or any other mesh). A step whose files fail their checksums, cannot be
read, or holds non-finite parameters is reported by number, moved to
`WORKDIR/damaged_checkpoints/`, and the previous kept step is restored
instead; with no usable step left the restore refuses. Frozen models are never
part of a checkpoint.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from ram_jax.models.config import ModelConfig
from ram_jax.training import integrity
from ram_jax.training.step import TrainState

# Orbax writes step N into N + this suffix and renames it when complete.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
DAMAGED_DIR = "damaged_checkpoints"


class CheckpointError(ValueError):
    """No checkpoint step of a workdir can be restored (the message lists why, per step)."""


# Config fields that change the structure or meaning of a saved state.
STRUCTURAL_FIELDS = (
    ("objective", "name"),
    ("optimizer", "name"),
    ("optimizer", "clip_norm"),
    ("seed",),
    ("batch_size",),
)


# Hyperparameters a resumed run may change on purpose (after a NaN, a lower LR;
# to train longer, more steps). They are stored with each step and every
# difference is logged when a run resumes; the new values apply from there on.
HPARAM_FIELDS = (
    ("num_steps",),
    ("num_epochs",),
    ("optimizer", "lr"),
    ("optimizer", "weight_decay"),
    ("optimizer", "rmsprop_decay"),
    ("optimizer", "eps"),
    ("optimizer", "b1"),
    ("optimizer", "b2"),
    ("schedule", "name"),
    ("schedule", "warmup_fraction"),
    ("schedule", "min_lr_fraction"),
    ("objective", "alpha"),
    ("objective", "beta"),
)


def _field(config, path: tuple[str, ...]):
    value = config
    for p in path:
        if p not in value:
            return None
        value = value[p]
    return value


def make_meta(model_config: ModelConfig, train_config, **extra) -> dict:
    """What must match between a checkpoint and the run restoring it, and its hyperparameters.

    `extra` adds run facts beyond the config (e.g. the number of training
    examples, which fixes the data order of every epoch).
    """
    fields = dict(extra)
    for path in STRUCTURAL_FIELDS:
        fields[".".join(path)] = _field(train_config, path)
    hparams = {".".join(p): _field(train_config, p) for p in HPARAM_FIELDS}
    return {"model": model_config.to_dict(), "train": fields, "hparams": hparams}


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


def changed_hparams(saved: dict, current: dict) -> list[str]:
    """`name: old -> new` for each hyperparameter that differs (unknown to `saved`: skipped)."""
    a, b = saved.get("hparams", {}), current.get("hparams", {})
    return [f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in sorted(a) if a[k] != b.get(k)]


def _as_dict(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _restore_args(abstract_tree, shardings_tree):
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_tree,
        shardings_tree,
    )
    return target, ocp.checkpoint_utils.construct_restore_args(target)


def _all_finite(tree) -> bool:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return bool(jax.device_get(jnp.all(jnp.stack(leaves)))) if leaves else True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class Checkpointer:
    """Saves, verifies and restores (state, data position) for one workdir.

    Only JAX process 0 writes files (Orbax coordinates this); every process
    must call `save` and `restore` together.
    """

    def __init__(self, workdir: str, *, keep: int = 2):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._saving: tuple[int, float | None] | None = None  # (step, loss) being written
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def _seal(self) -> None:
        """Orbax's hook between writing a step and committing it: add the manifest."""
        if self._saving is None or jax.process_index() != 0:
            return
        step, loss = self._saving
        tmp = os.path.join(self.directory, f"{step}{_TMP_SUFFIX}")
        if os.path.isdir(tmp):
            integrity.write_manifest(tmp, loss)
        else:  # another Orbax layout: unverifiable, said so at restore time
            logging.warning("checkpoint step %d: no temporary directory %s to seal.", step, tmp)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def intact(self, step: int) -> bool:
        """Whether `step` passes its checksums (False without a manifest)."""
        return integrity.verify(self.step_dir(step)) is None

    def saved_loss(self, step: int) -> float | None:
        """The training loss recorded with `step` (None: unknown)."""
        if self._saving is not None and self._saving[0] == step:  # maybe still being written
            return self._saving[1]
        return integrity.saved_loss(self.step_dir(step))

    def save(self, state: TrainState, data_state: dict, meta: dict, loss: float | None = None):
        """Starts an asynchronous save of `state` with its training loss; False if already saved."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        self.manager.wait_until_finished()  # one step in flight: `_seal` knows which
        self._saving = (step, loss)
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_as_dict(state)),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def _set_aside(self, step: int, reason: str) -> None:
        """Moves a damaged step out of Orbax's directory, where a resumed run would skip it."""
        target = os.path.join(self.workdir, DAMAGED_DIR, str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(self.step_dir(step), target)
        logging.warning(
            "checkpoint step %d in %s is damaged (%s); moved to %s.",
            step,
            self.directory,
            reason,
            target,
        )

    def restore(
        self, abstract: TrainState, shardings: TrainState, meta: dict
    ) -> tuple[TrainState, dict]:
        """(state, data position) of the latest usable step, laid out by `shardings`.

        Steps are tried newest first; a damaged one is set aside with a warning
        naming it, and the previous one is tried. A step without a manifest
        (written by an older ram_jax) is restored unverified, with a warning.
        """
        problems = []
        for step in reversed(self.all_steps()):
            reason = integrity.verify(self.step_dir(step))
            unverified = integrity.read_manifest(self.step_dir(step)) is None
            if reason is not None and not unverified:
                problems.append(f"step {step}: {reason}")
                self._set_aside(step, reason)
                continue
            try:
                saved_meta = self.read_meta(step)
            except Exception as e:  # unreadable metadata: damaged, whatever Orbax raises
                problems.append(f"step {step}: {_first_line(e)}")
                self._set_aside(step, _first_line(e))
                continue
            check_compatible(saved_meta, meta, self.directory)
            try:
                state, data = self._restore_step(step, abstract, shardings)
            except Exception as e:
                problems.append(f"step {step}: {_first_line(e)}")
                self._set_aside(step, _first_line(e))
                continue
            if not _all_finite(state.params):
                problems.append(f"step {step}: its parameters hold NaN or inf")
                self._set_aside(step, "its parameters hold NaN or inf")
                continue
            if unverified:
                logging.warning(
                    "checkpoint step %d in %s has no checksum manifest (saved by an older "
                    "ram_jax); restored without verification.",
                    step,
                    self.directory,
                )
            if problems:
                logging.warning(
                    "resuming from step %d instead of the newer damaged step(s): %s",
                    step,
                    "; ".join(problems),
                )
            for key in changed_hparams(saved_meta, meta):
                logging.warning("resuming step %d with a changed hyperparameter: %s", step, key)
            self.manager.reload()
            return state, data
        self.manager.reload()
        raise CheckpointError(
            f"{self.directory}: no usable checkpoint ("
            + "; ".join(problems)
            + f"); the damaged steps were moved to {os.path.join(self.workdir, DAMAGED_DIR)}. "
            "Use a new --workdir, or delete the workdir's checkpoints to train from the start."
        )

    def _restore_step(self, step, abstract, shardings) -> tuple[TrainState, dict]:
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


def _check_step(step_dir: str) -> str | None:
    """Why a step directory cannot be read (None: usable; a step without manifest is usable)."""
    if not os.path.isdir(os.path.join(step_dir, "state")):
        return "no state/ inside"
    if integrity.read_manifest(step_dir) is None:
        return None
    return integrity.verify(step_dir)


def source_step_dir(path: str) -> str:
    """The step directory of a ram_jax workdir (latest intact step) or of a step directory.

    Damaged steps of a workdir are skipped with a warning (and left in place:
    reading another run's workdir never changes it).
    """
    ckpt_dir = os.path.join(path, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        reason = _check_step(path)
        if reason == "no state/ inside":
            raise FileNotFoundError(
                f"{path}: not a ram_jax workdir or checkpoint step directory (no state/ inside)."
            )
        if reason is not None:
            raise CheckpointError(f"checkpoint {path} is damaged: {reason}.")
        return path
    steps = sorted((int(n) for n in os.listdir(ckpt_dir) if n.isdigit()), reverse=True)
    for step in steps:
        step_dir = os.path.join(ckpt_dir, str(step))
        reason = _check_step(step_dir)
        if reason is None:
            return step_dir
        logging.warning("skipping damaged checkpoint step %d in %s: %s", step, ckpt_dir, reason)
    raise FileNotFoundError(f"{ckpt_dir}: no intact checkpoint step to load params from.")


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
