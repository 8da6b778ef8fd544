"""What keeps a training run from silently doing nothing: config preflight, truncation,
zero-signal warnings, Ctrl-C, and the NaN message."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import smoke
from ram_jax import data
from ram_jax.models.tokenizer import load_tokenizer
from ram_jax.training import losses, preflight, resume
from ram_jax.training.diagnostics import zero_signal_warning

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _config(**fields):
    c = smoke.get_config()
    c.update_from_flattened_dict(fields)
    return c


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": 0}, r"config\.batch_size=0 must be an integer >= 1"),
        ({"grad_accum": 3}, "batch_size=16 is not divisible by grad_accum=3"),
        ({"data.max_prompt_length": 64}, r"need 0 < data\.max_prompt_length \(64\) < data"),
        ({"data.train_file": "nope.jsonl"}, r"data\.train_file=nope\.jsonl: data file not found"),
        ({"data.train_file": ""}, r"--config\.data\.train_file=PATH"),
        ({"tokenizer": ""}, "config.tokenizer is empty"),
        ({"tokenizer": "nope.json"}, "tokenizer not found"),
        ({"num_steps": -1}, r"config\.num_steps=-1 must be an integer >= 0"),
        ({"num_steps": 0, "num_epochs": 0.0}, "set one of them to a positive value"),
        ({"keep_checkpoints": 0}, "keep_checkpoints=0 must be an integer >= 1"),
        ({"optimizer.lr": float("nan")}, r"optimizer\.lr=nan must be a finite number"),
        ({"data.eval_fraction": 1.0}, r"data\.eval_fraction=1\.0 must be in \[0, 1\)"),
        ({"model.init": "hf"}, r"model\.init='hf' needs --config\.model\.path=DIR"),
        ({"data.max_truncated_fraction": 2.0}, r"max_truncated_fraction=2\.0 must be in"),
    ],
)
def test_preflight_names_the_field_and_the_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        preflight.check_config(_config(**fields))


def test_preflight_refuses_a_workdir_that_cannot_be_one(tmp_path):
    preflight.check_workdir(str(tmp_path / "new" / "run"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        preflight.check_workdir(str(tmp_path / "f"))
    with pytest.raises(ValueError, match="is a file, so no folder can be made under it"):
        preflight.check_workdir(str(tmp_path / "f" / "run"))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(os.path.join(FIXTURES, "tokenizer.json"))


def test_truncation_is_counted_reported_and_refused_above_the_limit(tok):
    rows = data.read_rows(os.path.join(FIXTURES, "smoke_train.jsonl"))[:20]
    kwargs = dict(eos_id=0, max_length=32, max_prompt_length=18)
    ex = data.tokenize_rows(rows, tok, losses.Objective("sft"), **kwargs)
    # By hand: prompt and chosen token counts against the two limits.
    n_prompt = [len(tok.encode(r.prompt, add_special_tokens=False).ids) for r in rows]
    n_chosen = [len(tok.encode(r.chosen, add_special_tokens=False).ids) + 1 for r in rows]
    kept_prompt = np.minimum(n_prompt, 18)
    np.testing.assert_array_equal(ex.prompt_cut, np.asarray(n_prompt) > 18)
    np.testing.assert_array_equal(ex.response_cut, np.asarray(n_chosen) > 32 - kept_prompt)
    np.testing.assert_array_equal(ex.full_lengths, np.asarray(n_prompt) + n_chosen)
    cut = int(ex.response_cut.sum())
    assert 0 < cut < 20
    lengths = dict(max_length=32, max_prompt_length=18)
    report = data.check_truncation(ex, rows, limit=1.0, **lengths)
    assert report.startswith(f"data.train_file: {cut} of 20 examples ({cut / 20:.1%}) had a")
    assert f"the longest example needs {max(ex.full_lengths)} tokens" in report
    with pytest.raises(data.DataError, match=r"above data\.max_truncated_fraction=0\.01: raise"):
        data.check_truncation(ex, rows, limit=0.01, **lengths)
    roomy = data.tokenize_rows(
        rows, tok, losses.Objective("sft"), eos_id=0, max_length=512, max_prompt_length=256
    )
    assert (
        data.check_truncation(roomy, rows, limit=0.0, max_length=512, max_prompt_length=256) == ""
    )


def test_a_saturated_ram_dpo_margin_gives_exactly_zero_loss_and_says_why():
    # The failure seen on real data: rejected answers ~20 tokens longer give an
    # untrained aligner a margin near +125 nats; at beta = 1 nothing trains.
    chosen, rejected = jnp.float32(-50.0), jnp.float32(-175.0)
    loss, grad = jax.value_and_grad(lambda c: losses.ram_dpo_loss(c, rejected, 1.0))(chosen)
    assert float(loss) == 0.0 and float(grad) == 0.0
    metrics = {"loss": 0.0, "grad_norm": 0.0, "margin": 125.0, "accuracy": 1.0}
    lengths_NxG = np.array([[25.0, 45.0], [25.0, 45.2]])
    text = zero_signal_warning(losses.Objective("ram_dpo"), metrics, 1, lengths_NxG)
    assert "step 1: the training loss and gradient norm are exactly 0" in text
    assert "averages 125.0 nats (accuracy 1.00)" in text
    assert "rejected responses are 20.1 tokens longer on average (45.1 vs 25.0)" in text
    assert "--config.objective.beta=0.01" in text
    # At the suggested beta the same pair trains.
    _, grad = jax.value_and_grad(lambda c: losses.ram_dpo_loss(c, rejected, 0.01))(chosen)
    assert float(grad) != 0.0
    assert (
        zero_signal_warning(
            losses.Objective("ram_dpo"), {**metrics, "loss": 0.2, "grad_norm": 1.0}, 1, None
        )
        is None
    )
    plain = zero_signal_warning(losses.Objective("sft"), {"loss": 3.0, "grad_norm": 0.0}, 4, None)
    assert plain.startswith("step 4: the training gradient norm is exactly 0")


def test_ctrl_c_stops_like_sigterm_and_a_second_one_at_once():
    stop = resume.Preemption()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested  # the loop saves a checkpoint and returns
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stop = resume.Preemption()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested
    finally:
        stop.restore()


def test_metrics_continue_from_the_restored_step(tmp_path):
    from ram_jax.training.metrics import MetricsWriter, read_metrics

    first = MetricsWriter(str(tmp_path))
    for step in range(6):
        first.write(step, {"train/loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train/lo')  # killed mid-write
    resumed = MetricsWriter(str(tmp_path), start_step=3)
    assert [m["step"] for m in read_metrics(str(tmp_path))] == [0, 1, 2, 3]
    assert resumed.has(3, "train/loss") and not resumed.has(4, "train/loss")
    resumed.write(4, {"train/loss": 4.5})
    resumed.close()
    assert [m["train/loss"] for m in read_metrics(str(tmp_path))] == [0, 1, 2, 3, 4.5]
    MetricsWriter(str(tmp_path), start_step=0).close()  # a fresh start keeps nothing
    assert read_metrics(str(tmp_path)) == []
