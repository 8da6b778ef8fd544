"""The trained model: its config, initial parameters and export, from a training config.

`model.init` chooses the source: 'preset' (random init of a named preset,
with optional field overrides), 'hf' (an HF safetensors directory) or
'checkpoint' (the params of an earlier ram_jax run). Parameters are always
created directly in their sharded layout (never whole on one device), stored
as `config.precision` says (`optim.param_dtype_for`): float32 master weights
by default, bfloat16 under 'reference'. `load_model` reads any of these
sources for decoding (a frozen model, by default in its stored dtype).
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
from ram_jax.models.tokenizer_config import inferred_config
from ram_jax.models.transformer import abstract_params, init_params
from ram_jax.training import checkpoint as ckpt
from ram_jax.training import optim
from ram_jax.training import step as train

INITS = ("preset", "hf", "checkpoint")


def model_config_for(m, dtype: str, param_dtype: str = "float32") -> ModelConfig:
    """The `ModelConfig` a config's `model` section describes, stored in `param_dtype`.

    Reads only configs (a preset, `config.json`, or a checkpoint's metadata), never weights.
    """
    if m.init not in INITS:
        raise ValueError(f"model.init={m.init!r}: choose one of {INITS}.")
    dtypes = dict(param_dtype=param_dtype, dtype=dtype)
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
        """Initial params (in `config.param_dtype`), laid out by `shardings`."""
        if self.init == "hf":
            _, params = convert.load_hf(
                self.path,
                param_dtype=self.config.param_dtype,
                dtype=self.config.dtype,
                shardings=shardings,
            )
            return params
        if self.init == "checkpoint":
            return ckpt.load_params(self.path, abstract_params(self.config), shardings)
        key = jax.random.key(self.seed)
        return jax.jit(lambda k: init_params(self.config, k), out_shardings=shardings)(key)

    def initial_state(self, optimizer: optax.GradientTransformation, shardings):
        if self.init == "preset":
            return train.init_state(self.config, optimizer, jax.random.key(self.seed), shardings)
        params = self.load_params(shardings.params)
        return train.state_from_params(params, optimizer, shardings, self.config.param_dtype)

    def export(self, params, path: str, tok, tokenizer_config=None, *, eos_id: int) -> None:
        """HF directory with the tokenizer files (process 0 writes; all processes must call).

        `eos_id`, the EOS the model was trained to end responses with, comes
        first among the exported EOS ids, so `transformers`' `generate` stops there.
        """
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() == 0:
            config = export_config(
                self.config, tok, tokenizer_config, eos_id, own_ids=self.init != "preset"
            )
            convert.save_hf(params, config, path, tokenizer=tok, tokenizer_config=tokenizer_config)


def export_config(
    config: ModelConfig, tok, tokenizer_config, eos_id: int, *, own_ids: bool = True
) -> ModelConfig:
    """`config` with the special ids of a trained model: `eos_id` first, BOS and PAD of `tok`.

    `own_ids` False drops the config's ids: a preset's ids belong to the
    preset's checkpoint, not to the tokenizer a randomly initialised model
    was trained with. Otherwise the model's other EOS ids follow `eos_id`.
    """
    tc = tokenizer_config or inferred_config(tok)
    if not own_ids:
        config = config.replace(eos_token_ids=(), bos_token_id=None, pad_token_id=None)
    bos = tc.token_id(tok, "bos_token")
    pad = tc.token_id(tok, "pad_token")
    return config.replace(
        eos_token_ids=tuple(dict.fromkeys([eos_id, *config.eos_token_ids])),
        bos_token_id=config.bos_token_id if bos is None else bos,
        pad_token_id=next(i for i in (pad, config.pad_token_id, eos_id) if i is not None),
    )


def build_model(config, tok, mesh) -> Model:
    """The `Model` described by `config.model`, checked against the tokenizer."""
    m = config.model
    model_config = model_config_for(m, m.dtype, optim.param_dtype_for(config.precision))
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
        ref_config = model_config_for(r, model.config.dtype, model.config.param_dtype)
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


DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_config(path: str, what: str = "model") -> ModelConfig:
    """The `ModelConfig` of what `load_model(path)` loads, without reading weights."""
    hf = model_dir(path)
    if hf is not None:
        return from_hf_config(hf)
    try:
        return ckpt.checkpoint_model_config(ckpt.source_step_dir(path))
    except FileNotFoundError:
        raise FileNotFoundError(_not_a_model(path, what)) from None


def _not_a_model(path: str, what: str) -> str:
    return (
        f"{what} {path}: neither an HF model directory (config.json), a workdir with "
        "export/, nor a ram_jax checkpoint; pass an HF model directory (a training run "
        "exports one to <workdir>/export)."
    )


def load_model(path: str, dtype: str = "auto", what: str = "model") -> tuple[ModelConfig, dict]:
    """(config, params) of a frozen model for decoding, stored and computed in `dtype`.

    `path` is an HF directory, a ram_jax workdir with an `export/`, or a ram_jax
    workdir / checkpoint step directory (its latest params are read). `dtype`
    'auto' keeps the checkpoint's own dtype (a bfloat16 checkpoint stays
    bfloat16: half the memory of float32); name one to convert.
    """
    if dtype not in DTYPES:
        raise ValueError(f"{what}: dtype={dtype!r}; choose one of {DTYPES}.")
    hf = model_dir(path)
    if hf is not None:
        dtype = convert.checkpoint_dtype(hf) if dtype == "auto" else dtype
        return convert.load_hf(hf, param_dtype=dtype)
    try:
        step_dir = ckpt.source_step_dir(path)
    except FileNotFoundError:
        raise FileNotFoundError(_not_a_model(path, what)) from None
    config = ckpt.checkpoint_model_config(step_dir)
    dtype = config.param_dtype if dtype == "auto" else dtype
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_params(config)
    params = ckpt.load_params(step_dir, abstract, jax.tree.map(lambda _: device, abstract))
    config = config.replace(param_dtype=dtype, dtype=dtype)
    return config, jax.tree.map(lambda x: x.astype(dtype), params)
