"""ram_jax: Residual Alignment Models in JAX.

A frozen large proposal P and a small trained residual aligner Q are decoded
together token by token; only Q is trained. Everything here is a pure function
over plain parameter pytrees. The package holds three things and their commands:

  ram_jax.models     the decoders (config, transformer, KV cache, RoPE), HF import /
                     export, tokenizers
  ram_jax.decoding   per-row settings, token rules, RAM modes (objects), the jitted
                     decoder, the host driver (generate / stream), decoding files
  ram_jax.training   objectives, the sharded train step and loop, optimizers, checkpoints
  ram_jax.data       training rows, templates, tokenized groups, batches
                     (`ram_jax.datasets`: tfds builders for the paper's datasets)
  ram_jax.planning   per-device memory plans
  ram_jax.io, ram_jax.resumable, ram_jax.sharding, ram_jax.cli
                     JSON readers / atomic writers, fingerprinted resumable outputs,
                     partition rules, command runner (one error path)
  commands           python -m ram_jax.{main, generate, sample_proposal, build_tokenizer,
                     plan, datasets.prepare}

The names below are the curated API (`ram_jax.__all__`); they are imported on
first use, so `import ram_jax` itself stays light.

Dimension legend for shape-suffixed names (`logits_BxTxV`, `tokens_BxT`):
  B  batch rows                 T  tokens in the current block
  S  cache slots (max length)   V  vocabulary (embedding rows)
  D  model width                L  layers
  N  query heads                K  key/value heads
  G  query heads per kv head    H  head dim
  F  MLP hidden width           C  candidates (SIR)
  R  response (generated) tokens A  aligners (composed)
  E  stop ids per row
"""

import importlib

_EXPORTS = {
    "DecodeRecord": "ram_jax.decoding.driver",
    "Models": "ram_jax.decoding.driver",
    "MODES": "ram_jax.decoding.modes",
    "Mode": "ram_jax.decoding.modes",
    "get_mode": "ram_jax.decoding.modes",
    "reference_mode": "ram_jax.decoding.modes",
    "SeqSir": "ram_jax.decoding.resample",
    "PAPER_TEMPERATURES": "ram_jax.decoding.sampling",
    "REFERENCE": "ram_jax.decoding.sampling",
    "SamplingParams": "ram_jax.decoding.sampling",
    "reference_sampling": "ram_jax.decoding.sampling",
    "KVCache": "ram_jax.models.cache",
    "init_cache": "ram_jax.models.cache",
    "positions_from_mask": "ram_jax.models.cache",
    "ModelConfig": "ram_jax.models.config",
    "PRESETS": "ram_jax.models.config",
    "RopeScaling": "ram_jax.models.config",
    "from_hf_config": "ram_jax.models.config",
    "get_preset": "ram_jax.models.config",
    "load_hf": "ram_jax.models.convert",
    "save_hf": "ram_jax.models.convert",
    "build_tokenizer": "ram_jax.models.tokenizer",
    "check_same_tokenizer": "ram_jax.models.tokenizer_check",
    "check_vocab_fits": "ram_jax.models.tokenizer",
    "eos_token_ids": "ram_jax.models.tokenizer",
    "load_tokenizer": "ram_jax.models.tokenizer",
    "load_tokenizer_config": "ram_jax.models.tokenizer_config",
    "slice_vocab": "ram_jax.models.tokenizer",
    "tokenizer_length": "ram_jax.models.tokenizer",
    "Transformer": "ram_jax.models.transformer",
    "abstract_params": "ram_jax.models.transformer",
    "count_params": "ram_jax.models.transformer",
    "forward": "ram_jax.models.transformer",
    "init_params": "ram_jax.models.transformer",
    "unstack_layers": "ram_jax.models.transformer",
    "DEFAULT_RULES": "ram_jax.sharding",
    "make_mesh": "ram_jax.sharding",
    "param_shardings": "ram_jax.sharding",
    "OBJECTIVES": "ram_jax.training.losses",
    "Objective": "ram_jax.training.losses",
    "dpo_loss": "ram_jax.training.losses",
    "ram_dpo_loss": "ram_jax.training.losses",
    "ram_mc_loss": "ram_jax.training.losses",
    "ram_sft_loss": "ram_jax.training.losses",
    "sequence_logprobs": "ram_jax.training.losses",
    "sft_loss": "ram_jax.training.losses",
    "make_optimizer": "ram_jax.training.optim",
    "make_schedule": "ram_jax.training.optim",
    "TrainState": "ram_jax.training.step",
    "abstract_state": "ram_jax.training.step",
    "init_state": "ram_jax.training.step",
    "make_eval_step": "ram_jax.training.step",
    "make_train_step": "ram_jax.training.step",
    "model_sequence_logprobs": "ram_jax.training.step",
    "state_shardings": "ram_jax.training.step",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ram_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
