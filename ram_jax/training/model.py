"""The trained model: its config, initial parameters and export, from a training config.

`model.init` chooses the source: 'preset' (random init of a named preset,
with optional field overrides), 'hf' (an HF safetensors directory) or
'checkpoint' (the params of an earlier ram_jax run). Parameters are always
created directly in their sharded layout (never whole on one device) and
kept as float32 master weights. `load_model` reads any of these sources for
decoding (a frozen model, in the dtype asked for).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import optax

from ram_jax import sharding as shd
from ram_jax.models import convert
from ram_jax.models.config import ModelConfig, from_hf_config, get_preset
from ram_jax.models.tokenizer import check_vocab_fits
from ram_jax.models.transformer import abstract_params, init_params
from ram_jax.training import checkpoint as ckpt
from ram_jax.training import step as train

INITS = ("preset", "hf", "checkpoint")


def model_config_for(m, dtype: str) -> ModelConfig:
    """The `ModelConfig` a config's `model` section describes (float32 master weights).

    Reads only configs (a preset, `config.json`, or a checkpoint's metadata), never weights.
    """
    if m.init not in INITS:
        raise ValueError(f"model.init={m.init!r}: choose one of {INITS}.")
    dtypes = dict(param_dtype="float32", dtype=dtype)
    if m.init == "preset":
        overrides = {k: v for k, v in m.overrides.items() if v is not None}
        return get_preset(m.preset, **overrides, **dtypes)
    if not m.path:
        raise ValueError(f"model.init={m.init!r} needs model.path (a directory).")
    if m.init == "hf":
        return from_hf_config(m.path, **dtypes)
    return ckpt.checkpoint_model_config(m.path).replace(**dtypes)


@dataclasses.dataclass
class Model:
    """The trained model: its config and how to create / export its parameters."""

    config: ModelConfig
    init: str
    path: str
    seed: int
    mesh: jax.sharding.Mesh

    def load_params(self, shardings):
        """Initial params (float32), laid out by `shardings`."""
        if self.init == "hf":
            _, params = convert.load_hf(
                self.path, param_dtype="float32", dtype=self.config.dtype, shardings=shardings
            )
            return params
        if self.init == "checkpoint":
            return ckpt.load_params(self.path, abstract_params(self.config), shardings)
        key = jax.random.key(self.seed)
        return jax.jit(lambda k: init_params(self.config, k), out_shardings=shardings)(key)

    def initial_state(self, optimizer: optax.GradientTransformation, shardings):
        if self.init == "preset":
            return train.init_state(self.config, optimizer, jax.random.key(self.seed), shardings)
        return train.state_from_params(self.load_params(shardings.params), optimizer, shardings)

    def export(self, params, path: str, tok) -> None:
        """HF safetensors directory (process 0 writes; all processes must call)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() == 0:
            convert.save_hf(params, self.config, path, tokenizer=tok)


def build_model(config, tok, mesh) -> Model:
    """The `Model` described by `config.model`, checked against the tokenizer."""
    m = config.model
    model_config = model_config_for(m, m.dtype)
    check_vocab_fits(model_config, tok, name=f"model ({m.init})")
    return Model(model_config, m.init, m.path, config.seed, mesh)


def reference_model(config, model: Model, mesh):
    """(config, params, shardings) of the frozen DPO reference; never trained or saved."""
    r = config.reference
    if r.init == "same":
        ref = model
    elif r.init in ("hf", "checkpoint"):
        if not r.path:
            raise ValueError(f"reference.init={r.init!r} needs reference.path.")
        ref_config = model_config_for(r, model.config.dtype)
        ref = Model(ref_config, r.init, r.path, config.seed, mesh)
    else:
        raise ValueError(f"reference.init={r.init!r}: choose 'same', 'hf' or 'checkpoint'.")
    shardings = shd.param_shardings(abstract_params(ref.config), mesh)
    return ref.config, ref.load_params(shardings), shardings


def model_dir(path: str) -> str | None:
    """The HF model directory at `path`: itself, or a training workdir's `export/`."""
    for candidate in (path, os.path.join(path, "export")):
        if os.path.isfile(os.path.join(candidate, convert.CONFIG_FILE)):
            return candidate
    return None


def load_model(path: str, dtype: str, what: str = "model") -> tuple[ModelConfig, dict]:
    """(config, params) of a frozen model for decoding, stored and computed in `dtype`.

    `path` is an HF directory, a ram_jax workdir with an `export/`, or a ram_jax
    workdir / checkpoint step directory (its latest params are read).
    """
    hf = model_dir(path)
    if hf is not None:
        return convert.load_hf(hf, param_dtype=dtype)
    try:
        step_dir = ckpt.source_step_dir(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{what} {path}: neither an HF model directory (config.json), a workdir with "
            "export/, nor a ram_jax checkpoint; pass an HF model directory (a training run "
            "exports one to <workdir>/export)."
        ) from None
    config = ckpt.checkpoint_model_config(step_dir).replace(param_dtype="float32", dtype=dtype)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_params(config)
    params = ckpt.load_params(step_dir, abstract, jax.tree.map(lambda _: device, abstract))
    return config.replace(param_dtype=dtype), jax.tree.map(lambda x: x.astype(dtype), params)
