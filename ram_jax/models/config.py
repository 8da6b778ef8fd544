"""Frozen model configuration for Llama-3.x and Qwen2/2.5 decoders, with presets.

A `ModelConfig` fully determines the decoder's parameter shapes and its
numerics. It is hashable, so it can be a static argument of `jax.jit`.
Presets reproduce the public Hugging Face `config.json` of each checkpoint;
`from_hf_config` reads any such file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

GENERATION_CONFIG_FILE = "generation_config.json"
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1/3.2 ("llama3") frequency-dependent RoPE scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only transformer (Llama-3.x or Qwen2.x).

    `vocab_size` is the number of embedding rows, which may exceed the
    tokenizer's length (Qwen2.5 pads it); decoders and losses slice logits to
    the tokenizer length. `param_dtype` is the storage dtype of the weights
    (float32 master weights for training), `dtype` the compute dtype.
    `eos_token_ids` are the ids that end a response (`generation_config.json`'s,
    else `config.json`'s); `bos_token_id` / `pad_token_id` as in `config.json`.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    tie_embeddings: bool = False
    qkv_bias: bool = False
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES.values():
            raise ValueError(
                f"architecture={self.architecture!r} is not supported; "
                f"use one of {sorted(SUPPORTED_ARCHITECTURES.values())}."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)."
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: use float32, bfloat16 or float16."
                )

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (checkpoint metadata); `from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["eos_token_ids"] = list(d["eos_token_ids"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        if d.get("rope_scaling"):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        return cls(**d)

    def to_hf_dict(self) -> dict[str, Any]:
        """The equivalent Hugging Face `config.json` contents."""
        hf_arch = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.architecture]
        out: dict[str, Any] = {
            "architectures": [hf_arch],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "torch_dtype": self.param_dtype,
        }
        if self.architecture == "llama":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = False
        if self.rope_scaling is not None:
            out["rope_scaling"] = {
                "rope_type": "llama3",
                "factor": self.rope_scaling.factor,
                "low_freq_factor": self.rope_scaling.low_freq_factor,
                "high_freq_factor": self.rope_scaling.high_freq_factor,
                "original_max_position_embeddings": (
                    self.rope_scaling.original_max_position_embeddings
                ),
            }
        out.update(self.special_token_ids())
        return out

    def special_token_ids(self) -> dict[str, Any]:
        """`bos_token_id`, `eos_token_id` (an id or a list) and `pad_token_id` for HF files.

        Written even when unknown (null): `transformers` would otherwise assume
        its own defaults (Llama: bos 1, eos 2).
        """
        eos = list(self.eos_token_ids)
        return {
            "bos_token_id": self.bos_token_id,
            "eos_token_id": None if not eos else eos[0] if len(eos) == 1 else eos,
            "pad_token_id": self.pad_token_id,
        }


def from_hf_dict(
    hf: dict[str, Any],
    *,
    source: str = "config.json",
    generation: dict[str, Any] | None = None,
    **overrides,
) -> ModelConfig:
    """Builds a `ModelConfig` from the contents of an HF `config.json`.

    `generation` is the model's `generation_config.json`, if any: its
    `eos_token_id` decides when a response ends (Instruct models list several
    there, e.g. Llama-3.1's `<|eot_id|>`), and it fills BOS / PAD ids the
    config lacks.
    """
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if not archs and model_type in SUPPORTED_ARCHITECTURES.values():
        arch = model_type
    if arch is None:
        raise ValueError(
            f"{source}: unsupported architecture {archs or model_type!r}; ram_jax supports "
            f"{sorted(SUPPORTED_ARCHITECTURES)} (Llama-3.x and Qwen2/2.5 decoders)."
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r}; only 'silu' is supported.")
    if hf.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias=true is not supported.")
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported.")
    scaling = None
    rs = hf.get("rope_scaling") or hf.get("rope_parameters")
    if rs:
        rope_type = rs.get("rope_type", rs.get("type"))
        if rope_type == "llama3":
            scaling = RopeScaling(
                factor=float(rs["factor"]),
                low_freq_factor=float(rs["low_freq_factor"]),
                high_freq_factor=float(rs["high_freq_factor"]),
                original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
            )
        elif rope_type not in (None, "default"):
            raise ValueError(
                f"{source}: rope_scaling type {rope_type!r} is not supported; use 'llama3' or none."
            )
    theta = hf.get("rope_theta")
    if theta is None and isinstance(rs, dict):
        theta = rs.get("rope_theta")
    generation = generation or {}
    eos = generation.get("eos_token_id")
    if eos is None:
        eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    special = lambda key: hf[key] if hf.get(key) is not None else generation.get(key)
    num_heads = hf["num_attention_heads"]
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta if theta is not None else 10_000.0),
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if arch == "qwen2" else bool(hf.get("attention_bias", False)),
        architecture=arch,
        bos_token_id=special("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=special("pad_token_id"),
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def from_hf_config(path: str, **overrides) -> ModelConfig:
    """Reads `config.json` (or a directory holding it) into a `ModelConfig`.

    A `generation_config.json` next to it supplies the EOS ids (`from_hf_dict`).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no config.json; pass an HF model directory.")
    with open(path) as f:
        hf = json.load(f)
    generation = None
    generation_path = os.path.join(os.path.dirname(path), GENERATION_CONFIG_FILE)
    if os.path.exists(generation_path):
        with open(generation_path) as f:
            generation = json.load(f)
    return from_hf_dict(hf, source=path, generation=generation, **overrides)


_LLAMA31_SCALING = RopeScaling(8.0, 1.0, 4.0, 8192)
_LLAMA32_SCALING = RopeScaling(32.0, 1.0, 4.0, 8192)

_LLAMA3 = dict(
    vocab_size=128256,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    max_position_embeddings=131072,
    architecture="llama",
    bos_token_id=128000,
    eos_token_ids=(128001,),
)
_QWEN25 = dict(
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    qkv_bias=True,
    architecture="qwen2",
    bos_token_id=151643,
    eos_token_ids=(151643,),
)

PRESETS: dict[str, ModelConfig] = {
    "llama-3.1-8b": ModelConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_scaling=_LLAMA31_SCALING,
        **_LLAMA3,
    ),
    "llama-3.2-1b": ModelConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rope_scaling=_LLAMA32_SCALING,
        tie_embeddings=True,
        **_LLAMA3,
    ),
    "llama-3.2-3b": ModelConfig(
        hidden_size=3072,
        intermediate_size=8192,
        num_layers=28,
        num_heads=24,
        num_kv_heads=8,
        head_dim=128,
        rope_scaling=_LLAMA32_SCALING,
        tie_embeddings=True,
        **_LLAMA3,
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
        tie_embeddings=True,
        **_QWEN25,
    ),
    "qwen2.5-1.5b": ModelConfig(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        max_position_embeddings=131072,
        tie_embeddings=True,
        **_QWEN25,
    ),
    "qwen2.5-3b": ModelConfig(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_layers=36,
        num_heads=16,
        num_kv_heads=2,
        head_dim=128,
        max_position_embeddings=32768,
        tie_embeddings=True,
        **_QWEN25,
    ),
    "qwen2.5-7b": ModelConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        max_position_embeddings=131072,
        **_QWEN25,
    ),
    "qwen2.5-14b": ModelConfig(
        vocab_size=152064,
        hidden_size=5120,
        intermediate_size=13824,
        num_layers=48,
        num_heads=40,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        **{**_QWEN25, "rms_norm_eps": 1e-5},
    ),
    # Tiny presets for tests and the embedded experiment.
    "tiny-llama": ModelConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32),
        max_position_embeddings=1024,
    ),
    "tiny-qwen": ModelConfig(
        vocab_size=272,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_embeddings=True,
        **{**_QWEN25, "bos_token_id": None, "eos_token_ids": ()},
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """Returns the named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
