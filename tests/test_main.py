"""`python -m ram_jax.main` end to end: smoke training, exact kill-and-resume, failures."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import smoke
from ram_jax.data import DataError
from ram_jax.models.convert import load_hf
from ram_jax.models.transformer import abstract_params
from ram_jax.training import checkpoint as ckpt
from ram_jax.training import loop as train_loop
from ram_jax.training.checkpoint import checkpoint_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    "JAX_PLATFORMS": "cpu",
    # Runs of the same config share compiled steps through JAX's persistent cache.
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    ENV["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))


def _command(workdir, *overrides):
    return [
        sys.executable,
        "-m",
        "ram_jax.main",
        "--config=experiments/configs/smoke.py",
        f"--workdir={workdir}",
        "--config.checkpoint_every=10",
        *overrides,
    ]


def _run(workdir, *overrides):
    return subprocess.run(
        _command(workdir, *overrides), cwd=ROOT, env=ENV, capture_output=True, text=True
    )


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(workdir, step=None):
    config = checkpoint_model_config(workdir)
    path = workdir if step is None else os.path.join(workdir, "checkpoints", str(step))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_params(config)
    return jax.device_get(
        ckpt.load_params(path, abstract, jax.tree.map(lambda _: sharding, abstract))
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = _run(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_smoke_lowers_held_out_loss_and_exports(uninterrupted):
    workdir, result = uninterrupted
    evals = [m for m in _metrics(workdir) if "eval/loss" in m]
    assert [m["step"] for m in evals] == [0, 30, 60]
    assert evals[-1]["eval/loss"] < 0.5 * evals[0]["eval/loss"]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["step"] == 60 and summary["eval_loss"] == evals[-1]["eval/loss"]
    assert "done: 60 steps" in result.stdout
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{workdir}/tb"))
    # The HF export holds exactly the final checkpoint's parameters.
    _, exported = load_hf(os.path.join(workdir, "export"))
    for a, b in zip(
        jax.tree.leaves(_params(workdir)), jax.tree.leaves(jax.device_get(exported)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _start_and_signal(workdir, sig, after_step):
    proc = subprocess.Popen(
        _command(workdir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    marker = os.path.join(workdir, "checkpoints", str(after_step))
    deadline = time.time() + 120
    while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode(), err.decode()


def test_sigkill_then_sigterm_then_resume_is_bitwise_exact(uninterrupted, tmp_path):
    workdir = str(tmp_path)
    code, _, err = _start_and_signal(workdir, signal.SIGKILL, after_step=10)
    assert code == -signal.SIGKILL, err[-2000:]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    # Resume, then stop politely: SIGTERM saves the current step and exits cleanly.
    code, _, err = _start_and_signal(workdir, signal.SIGTERM, after_step=20)
    assert code == 0, err[-2000:]
    assert "preempted at step" in err
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    result = _run(workdir)  # the same command again finishes the run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step" in result.stderr
    for a, b in zip(
        jax.tree.leaves(_params(uninterrupted[0])), jax.tree.leaves(_params(workdir)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _config(**data):
    c = smoke.get_config()
    c.update_from_flattened_dict(data)
    return c


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # In process, on the 8 test devices: a huge LR turns the params to inf after step 1.
    config = _config(
        **{
            "optimizer.lr": 1e30,
            "schedule.warmup_fraction": 0.0,
            "checkpoint_every": 1,
            "num_steps": 4,
            "eval_every": 0,
            "data.eval_file": "",
        }
    )
    with pytest.raises(train_loop.NonFiniteLossError) as e:
        train_loop.run(config, str(tmp_path))
    assert "non-finite training loss" in str(e.value) and "at step 2" in str(e.value)
    assert "last good checkpoint (step 1)" in str(e.value)
    c = ckpt.Checkpointer(str(tmp_path))
    assert c.all_steps() == [1]
    c.close()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(str(tmp_path))))
    assert not os.path.exists(tmp_path / "summary.json")


def test_bad_inputs_fail_clearly(tmp_path, uninterrupted):
    with pytest.raises(DataError, match="data file not found"):
        train_loop.run(_config(**{"data.train_file": "missing.jsonl"}), str(tmp_path / "a"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="dataset is empty"):
        train_loop.run(_config(**{"data.train_file": str(empty)}), str(tmp_path / "b"))
    no_samples = tmp_path / "rows.jsonl"
    no_samples.write_text('{"prompt": "a", "chosen": "b"}\n' * 20)
    with pytest.raises(DataError, match=r"rows\.jsonl:1: .*'sampling'"):
        train_loop.run(_config(**{"data.train_file": str(no_samples)}), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="tokenizer is empty"):
        train_loop.run(_config(tokenizer=""), str(tmp_path / "d"))
    # A workdir holding a checkpoint of another model.
    with pytest.raises(ValueError, match="incompatible configuration") as e:
        train_loop.run(_config(**{"model.overrides.hidden_size": 32}), uninterrupted[0])
    assert "model.hidden_size: checkpoint 64 vs config 32" in str(e.value)


def test_smoke_export_stops_at_the_trained_eos_under_transformers(uninterrupted):
    """The export of a preset-initialised aligner, loaded by transformers alone: the
    tokenizer reports the trained EOS and a PAD, and `generate` stops at that EOS."""
    import torch
    import transformers

    export = os.path.join(uninterrupted[0], "export")
    tok = transformers.AutoTokenizer.from_pretrained(export)
    model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|endoftext|>", 0, 0)
    assert model.generation_config.eos_token_id == 0 == model.config.eos_token_id
    rows = [json.loads(x) for x in open(os.path.join(ROOT, "tests/fixtures/smoke_eval.jsonl"))]
    prompts = [r["prompt"] for r in rows[:8]]
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=48, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :].tolist()
    ends = [row.index(0) if 0 in row else None for row in new]
    assert all(e is not None for e in ends), ends  # every answer ends with the trained EOS
    assert len(new[0]) < 48  # and generate stopped there instead of running to the limit
    answers = [tok.decode(row[:e]) for row, e in zip(new, ends, strict=True)]
    assert sum(a.startswith("Thank you for asking!") for a in answers) >= 6, answers
