"""Checks of a training config and workdir that need no accelerator, run before anything heavy.

`check_config` rejects, with the field and the fix, what would otherwise fail
minutes later (after JAX, the tokenizer and the data are loaded) or fail
obscurely (`range()` with a zero step, a modulo by zero). It imports nothing
but the standard library, so `python -m ram_jax.main` reports these errors
before importing JAX. The training loop calls it too, for in-process callers.
"""

from __future__ import annotations

import math
import os

from ram_jax import io
from ram_jax.data.sources import TFDS_PREFIX
from ram_jax.io import DataError


def _exists(path: str, field: str, what: str) -> None:
    if not path.startswith(TFDS_PREFIX) and not os.path.exists(path):
        raise DataError(f"{field}={path}: {what} not found; check the path.")


def check_workdir(workdir: str) -> None:
    """A workdir must be a directory or creatable as one."""
    io.check_output_dir(workdir, "--workdir")


def _positive(config, name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{name}={value!r} must be an integer >= {minimum}.")


def check_config(config) -> None:
    """Raises ValueError / DataError naming the first field that cannot work, and its fix."""
    d = config.data
    if not config.tokenizer:
        raise ValueError(
            "config.tokenizer is empty; pass --config.tokenizer=a tokenizer.json or an HF model "
            "directory holding one."
        )
    _exists(config.tokenizer, "config.tokenizer", "tokenizer")
    if not d.train_file:
        raise ValueError("data.train_file is empty; pass --config.data.train_file=PATH.jsonl.")
    _exists(d.train_file, "data.train_file", "data file")
    if d.eval_file:
        _exists(d.eval_file, "data.eval_file", "data file")
    if not 0.0 <= d.eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction={d.eval_fraction} must be in [0, 1).")
    for name in ("batch_size", "grad_accum"):
        _positive(config, name, config[name])
    if config.batch_size % config.grad_accum:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by grad_accum={config.grad_accum}."
        )
    _positive(config, "data.max_length", d.max_length, 2)
    _positive(config, "data.bucket_min", d.bucket_min)
    if not 0 < d.max_prompt_length < d.max_length:
        raise ValueError(
            f"need 0 < data.max_prompt_length ({d.max_prompt_length}) < data.max_length "
            f"({d.max_length}) so every response keeps at least one token."
        )
    if not 0.0 <= d.get("max_truncated_fraction", 0.0) <= 1.0:
        raise ValueError(
            f"data.max_truncated_fraction={d.max_truncated_fraction} must be in [0, 1]."
        )
    _positive(config, "num_steps", config.num_steps, 0)
    if config.num_steps == 0 and not config.num_epochs > 0:
        raise ValueError(
            f"num_steps=0 and num_epochs={config.num_epochs}: set one of them to a positive value."
        )
    for name in ("log_every", "eval_every", "checkpoint_every", "eval_batch_size"):
        _positive(config, name, config[name], 0)
    _positive(config, "keep_checkpoints", config.keep_checkpoints)
    lr = config.optimizer.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"optimizer.lr={lr!r} must be a finite number >= 0.")
    if config.export and config.export_dir:
        io.check_output_dir(config.export_dir, "export_dir")
    m = config.model
    if m.init in ("hf", "checkpoint"):
        if not m.path:
            raise ValueError(f"model.init={m.init!r} needs --config.model.path=DIR.")
        if not os.path.isdir(m.path):
            raise DataError(f"model.path={m.path}: not a directory; check the path.")
