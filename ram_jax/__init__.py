"""ram_jax: Residual Alignment Models in JAX.

A frozen large proposal P and a small trained residual aligner Q are decoded
together token by token; only Q is trained. Everything here is a pure function
over plain parameter pytrees. Submodules hold the rest: `ram_jax.checkpoint`
(Orbax train checkpoints), `ram_jax.data` (rows, tokenization, batches),
`ram_jax.datasets` (tfds builders for the paper's datasets), `ram_jax.plan`
(memory planning), `ram_jax.stream` and `ram_jax.decode_loop` (streaming and
early-exit decoding), and the command-line entry points `ram_jax.main`,
`ram_jax.generate` and `ram_jax.sample_proposal`.

Dimension legend for shape-suffixed names (`logits_BxTxV`, `tokens_BxT`):
  B  batch rows                 T  tokens in the current block
  S  cache slots (max length)   V  vocabulary (embedding rows)
  D  model width                L  layers
  N  query heads                K  key/value heads
  G  query heads per kv head    H  head dim
  F  MLP hidden width           C  candidates (SIR)
  R  response (generated) tokens
"""

from ram_jax.cache import KVCache, init_cache, positions_from_mask
from ram_jax.config import PRESETS, ModelConfig, RopeScaling, from_hf_config, get_preset
from ram_jax.convert import load_hf, save_hf
from ram_jax.decode import DecodeOutput
from ram_jax.losses import (
    OBJECTIVES,
    Objective,
    dpo_loss,
    model_sequence_logprobs,
    ram_dpo_loss,
    ram_mc_loss,
    ram_sft_loss,
    sequence_logprobs,
    sft_loss,
)
from ram_jax.modes import next_token, resample_sequences
from ram_jax.optim import make_optimizer, make_schedule
from ram_jax.sampling import (
    MODES,
    PAPER_TEMPERATURES,
    REFERENCE,
    SamplingConfig,
    reference_sampling,
)
from ram_jax.sharding import DEFAULT_RULES, make_mesh, param_shardings
from ram_jax.tokenizer import (
    build_tokenizer,
    check_same_tokenizer,
    check_vocab_fits,
    eos_token_ids,
    load_tokenizer,
    slice_vocab,
    tokenizer_length,
)
from ram_jax.train import (
    TrainState,
    abstract_state,
    init_state,
    make_eval_step,
    make_train_step,
    state_shardings,
)
from ram_jax.transformer import (
    Transformer,
    abstract_params,
    count_params,
    forward,
    init_params,
    unstack_layers,
)

__all__ = [
    "DEFAULT_RULES",
    "DecodeOutput",
    "KVCache",
    "MODES",
    "ModelConfig",
    "OBJECTIVES",
    "Objective",
    "PAPER_TEMPERATURES",
    "PRESETS",
    "REFERENCE",
    "RopeScaling",
    "SamplingConfig",
    "TrainState",
    "Transformer",
    "abstract_params",
    "abstract_state",
    "build_tokenizer",
    "check_same_tokenizer",
    "check_vocab_fits",
    "count_params",
    "dpo_loss",
    "eos_token_ids",
    "forward",
    "from_hf_config",
    "get_preset",
    "init_cache",
    "init_params",
    "init_state",
    "load_hf",
    "load_tokenizer",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "model_sequence_logprobs",
    "next_token",
    "param_shardings",
    "positions_from_mask",
    "ram_dpo_loss",
    "ram_mc_loss",
    "ram_sft_loss",
    "reference_sampling",
    "resample_sequences",
    "save_hf",
    "sequence_logprobs",
    "sft_loss",
    "slice_vocab",
    "state_shardings",
    "tokenizer_length",
    "unstack_layers",
]
