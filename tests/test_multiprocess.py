"""Two processes, one result: `python -m ram_jax.main` over jax.distributed on one machine.

Two processes (coordinator on 127.0.0.1, CPU collectives through gloo, 2 devices
each) train the smoke config with FSDP over all 4 devices; a single process with
4 devices trains the same run. The exports agree to TOLERANCE: the only
difference is the order in which float32 gradient sums are reduced (across
processes through gloo, within one process by XLA), which AdamW's per-parameter
normalisation amplifies where gradients are tiny. Measured after 4 steps at LR
3e-3 (each step moves a weight by up to ~3e-3): 4e-7 to 1.4e-5.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ram_jax.models.convert import load_hf
from ram_jax.models.transformer import abstract_params
from ram_jax.training import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
TOLERANCE = 1e-4  # max |w_two_processes - w_one_process|: float32 reduction order
HEARTBEAT_S = 3  # a peer silent this long counts as dead


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("jax_cache"))

    def make(devices: int) -> dict:
        return {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            # Compiling at a low optimisation level keeps the three runs' compile short;
            # all runs use it, so their numerics agree.
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
            "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
            "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "ram_jax.main",
        "--config=experiments/configs/smoke.py",
        f"--workdir={workdir}",
        f"--config.num_steps={STEPS}",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=-1",
        "--config.eval_every=0",
        "--config.data.eval_file=",
        "--config.schedule.warmup_fraction=0",  # the step's program does not depend on num_steps
        "--config.checkpoint_every=2",
        "--config.log_every=1",
        *extra,
    ]


def _start_pair(workdir, env, *extra):
    port = _free_port()
    return [
        subprocess.Popen(
            _command(
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                f"--heartbeat_timeout={HEARTBEAT_S}",
                *extra,
            ),
            cwd=ROOT,
            env=env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    two, one = (str(tmp_path_factory.mktemp(name)) for name in ("two", "one"))
    procs = _start_pair(two, env)
    procs.append(
        subprocess.Popen(
            _command(one),
            cwd=ROOT,
            env=env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return two, one


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [m["train/loss"] for m in map(json.loads, f) if "train/loss" in m]


def test_two_processes_train_like_one(runs):
    two, one = runs
    assert len(_losses(two)) == STEPS
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-6)
    _, exported_two = load_hf(os.path.join(two, "export"))
    _, exported_one = load_hf(os.path.join(one, "export"))
    diffs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), exported_two, exported_one)
    assert max(jax.tree.leaves(diffs)) <= TOLERANCE
    # ... and training moved the weights much further than that.
    at_step_2 = ckpt.load_params(os.path.join(two, "checkpoints", "2"), *_single(two))
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), exported_two, at_step_2)
    assert max(jax.tree.leaves(moved)) > 10 * TOLERANCE


def _single(workdir):
    """(abstract params, single-device shardings) of a workdir's model."""
    abstract = abstract_params(ckpt.checkpoint_model_config(workdir))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return abstract, jax.tree.map(lambda _: device, abstract)


def test_two_process_checkpoint_restores_in_one_process(runs):
    two, _ = runs
    restored = ckpt.load_params(two, *_single(two))
    _, exported = load_hf(os.path.join(two, "export"))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(exported), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_killed_peer_stops_the_other_with_a_clear_error(runs, env, tmp_path):
    # Resume the two-process run for many more steps, kill process 1 mid-training.
    workdir = str(tmp_path / "run")
    shutil.copytree(runs[0], workdir)
    leader, peer = _start_pair(workdir, env, "--config.num_steps=100000")
    deadline = time.time() + 300
    while time.time() < deadline and leader.poll() is None and len(_losses(workdir)) < STEPS + 1:
        time.sleep(0.1)
    assert len(_losses(workdir)) >= STEPS + 1, "the resumed run did not reach training"
    peer.send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, err = leader.communicate(timeout=120)
    peer.communicate()
    assert leader.returncode not in (0, None)
    assert time.time() - killed_at < 60
    assert "another task died" in err, err[-3000:]
