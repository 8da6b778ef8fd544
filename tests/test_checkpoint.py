"""Orbax checkpoints: 8 devices -> 1 restore, data position, params-only loads, bad workdirs.

Damage: a step whose files fail their checksums (or that holds NaN
parameters) is refused by number and set aside; one without a manifest (an
older ram_jax) restores with a warning; changed hyperparameters are logged.
"""

import glob
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from ram_jax import sharding as shd
from ram_jax.models.config import get_preset
from ram_jax.models.transformer import abstract_params
from ram_jax.training import checkpoint as ckpt
from ram_jax.training import integrity, optim
from ram_jax.training import step as train
from ram_jax.training.checkpoint import checkpoint_model_config

CONFIG = get_preset("tiny-llama", num_layers=1)  # has llama3 rope scaling: round-trips meta


def _train_config(**changes):
    c = ml_collections.ConfigDict(
        {
            "seed": 0,
            "batch_size": 8,
            "num_steps": 10,
            "objective": {"name": "ram_sft"},
            "optimizer": {"name": "adamw", "clip_norm": 10.0, "lr": 1e-3},
        }
    )
    c.update(changes)
    return c


OPT = optim.make_optimizer("adamw", optim.make_schedule("constant", 1e-3, 10), clip_norm=10.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A state saved from an 8-device (2 x 2 x 2) mesh, with a data position."""
    workdir = str(tmp_path_factory.mktemp("run"))
    mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
    abstract = train.abstract_state(CONFIG, OPT)
    state = train.init_state(CONFIG, OPT, jax.random.key(0), train.state_shardings(abstract, mesh))
    # Make the optimizer state non-trivial so its restore is checked too.
    state = train.TrainState(
        state.step + 7,
        state.params,
        jax.tree.map(lambda x: x + 0.5 if x.ndim else x, state.opt_state),
    )
    assert len(state.params["embed"]["embedding"].addressable_shards) == 8
    c = ckpt.Checkpointer(workdir)
    c.save(state, {"epoch": 1, "index": 3, "seed": 0}, ckpt.make_meta(CONFIG, _train_config()))
    c.close()
    return workdir, jax.device_get(state)


def test_checkpoint_from_8_devices_restores_on_1(saved):
    workdir, want = saved
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    abstract = train.abstract_state(CONFIG, OPT)
    shardings = train.state_shardings(abstract, mesh)
    c = ckpt.Checkpointer(workdir)
    assert c.latest_step() == 7
    state, data_state = c.restore(abstract, shardings, ckpt.make_meta(CONFIG, _train_config()))
    c.close()
    assert data_state == {"epoch": 1, "index": 3, "seed": 0}
    kernel = state.params["layers"]["attn"]["q_proj"]["kernel"]
    assert kernel.sharding.mesh.devices.size == 1 and len(kernel.addressable_shards) == 1
    got = jax.device_get(state)
    assert int(got.step) == 7
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_incompatible_workdir_fails_clearly(saved):
    workdir, _ = saved
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    other = CONFIG.replace(hidden_size=32, intermediate_size=64)
    abstract = train.abstract_state(other, OPT)
    meta = ckpt.make_meta(other, _train_config(batch_size=16))
    c = ckpt.Checkpointer(workdir)
    with pytest.raises(ValueError, match="incompatible configuration") as e:
        c.restore(abstract, train.state_shardings(abstract, mesh), meta)
    c.close()
    assert "model.hidden_size: checkpoint 64 vs config 32" in str(e.value)
    assert "train.batch_size: checkpoint 8 vs config 16" in str(e.value)
    assert "new --workdir" in str(e.value)


def test_params_only_load_and_saved_model_config(saved):
    workdir, want = saved
    assert checkpoint_model_config(workdir) == CONFIG
    mesh = shd.make_mesh(fsdp=2, tensor=4)
    shardings = shd.param_shardings(abstract_params(CONFIG), mesh)
    for path in (workdir, f"{workdir}/checkpoints/7"):
        params = ckpt.load_params(path, abstract_params(CONFIG), shardings)
        for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(FileNotFoundError, match="not a ram_jax workdir"):
        ckpt.load_params(str(workdir) + "/nothing", abstract_params(CONFIG), shardings)


def _restore(workdir, meta=None):
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    abstract = train.abstract_state(CONFIG, OPT)
    c = ckpt.Checkpointer(workdir)
    try:
        return c.restore(
            abstract,
            train.state_shardings(abstract, mesh),
            meta or ckpt.make_meta(CONFIG, _train_config()),
        )
    finally:
        c.close()


def test_changed_hyperparameters_are_logged_and_a_missing_manifest_is_tolerated(
    saved, tmp_path, caplog
):
    workdir = str(tmp_path / "w")
    shutil.copytree(saved[0], workdir)
    os.remove(f"{workdir}/checkpoints/7/{integrity.MANIFEST}")  # as an older ram_jax wrote it
    changed = _train_config(num_steps=20)
    changed.optimizer.lr = 1e-4
    with caplog.at_level(logging.WARNING):
        state, _ = _restore(workdir, ckpt.make_meta(CONFIG, changed))
    assert int(state.step) == 7
    assert "step 7 in" in caplog.text and "no checksum manifest" in caplog.text
    assert "changed hyperparameter: num_steps: 10 -> 20" in caplog.text
    assert "changed hyperparameter: optimizer.lr: 0.001 -> 0.0001" in caplog.text


def test_a_bit_flip_is_refused_by_step_number_and_set_aside(saved, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(saved[0], workdir)
    files = [f for f in glob.glob(f"{workdir}/checkpoints/7/state/**", recursive=True)]
    data_file = max((f for f in files if os.path.isfile(f)), key=os.path.getsize)
    data = bytearray(open(data_file, "rb").read())
    data[-100] ^= 1
    open(data_file, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"no usable checkpoint \(step 7: state/"):
        _restore(workdir)
    assert os.listdir(f"{workdir}/{ckpt.DAMAGED_DIR}") == ["7"]
    assert not os.path.exists(f"{workdir}/checkpoints/7")


def test_non_finite_parameters_are_not_a_usable_checkpoint(saved, tmp_path):
    _, state = saved
    bad = train.TrainState(
        state.step, jax.tree.map(lambda x: x * np.float32("nan"), state.params), state.opt_state
    )
    c = ckpt.Checkpointer(str(tmp_path))
    c.save(bad, {"epoch": 0, "index": 0, "seed": 0}, ckpt.make_meta(CONFIG, _train_config()), 1.0)
    c.close()
    with pytest.raises(ckpt.CheckpointError, match="step 7: its parameters hold NaN or inf"):
        _restore(str(tmp_path))
