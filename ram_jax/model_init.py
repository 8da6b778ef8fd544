"""The trained model's config, initial parameters and export, from a training config.

`model.init` chooses the source: 'preset' (random init of a named preset,
with optional field overrides), 'hf' (an HF safetensors directory) or
'checkpoint' (the params of an earlier ram_jax run). Parameters are always
created directly in their sharded layout (never whole on one device) and
kept as float32 master weights.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import optax
import orbax.checkpoint as ocp

from ram_jax import checkpoint as ckpt
from ram_jax import convert, train
from ram_jax import sharding as shd
from ram_jax.config import ModelConfig, RopeScaling, get_preset
from ram_jax.tokenizer import check_vocab_fits
from ram_jax.transformer import abstract_params

INITS = ("preset", "hf", "checkpoint")


def model_config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    if d.get("rope_scaling"):
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
    return ModelConfig(**d)


def checkpoint_model_config(path: str) -> ModelConfig:
    """The model config saved with a ram_jax run (workdir or step directory)."""
    step_dir = ckpt.source_step_dir(path)
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        os.path.join(step_dir, "meta"), args=ocp.args.JsonRestore()
    )
    return model_config_from_dict(meta["model"])


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
        from ram_jax.transformer import init_params

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
    if m.init not in INITS:
        raise ValueError(f"model.init={m.init!r}: choose one of {INITS}.")
    dtypes = dict(param_dtype="float32", dtype=m.dtype)
    if m.init == "preset":
        overrides = {k: v for k, v in m.overrides.items() if v is not None}
        model_config = get_preset(m.preset, **overrides, **dtypes)
    elif not m.path:
        raise ValueError(f"model.init={m.init!r} needs model.path (a directory).")
    elif m.init == "hf":
        from ram_jax.config import from_hf_config

        model_config = from_hf_config(m.path, **dtypes)
    else:
        model_config = checkpoint_model_config(m.path).replace(**dtypes)
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
        if r.init == "hf":
            from ram_jax.config import from_hf_config

            ref_config = from_hf_config(r.path, param_dtype="float32", dtype=model.config.dtype)
        else:
            ref_config = checkpoint_model_config(r.path)
        ref = Model(ref_config, r.init, r.path, config.seed, mesh)
    else:
        raise ValueError(f"reference.init={r.init!r}: choose 'same', 'hf' or 'checkpoint'.")
    shardings = shd.param_shardings(abstract_params(ref.config), mesh)
    return ref.config, ref.load_params(shardings), shardings
