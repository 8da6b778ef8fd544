r"""Base training config: every field `python -m ram_jax.main` reads, documented.

Paper defaults (RAM.md section 2): RMSprop, global batch 64, 1 epoch, linear
warm-up over 10% of steps then constant LR 2e-7, clip norm 10, max length
2048 / prompt 1024, objective `ram_sft` with alpha 1e-4.

Usage:
  python -m ram_jax.main --config=experiments/configs/base.py --workdir=DIR \
      --config.data.train_file=train.jsonl --config.model.init=hf \
      --config.model.path=/ckpt/Llama-3.2-1B --config.tokenizer=/ckpt/Llama-3.2-1B

`get_config(arg)` takes comma-separated `key=value` switches, e.g.
`--config=experiments/configs/base.py:runlocal` shrinks everything (tiny
model, short sequences, few steps) so the same experiment runs on a CPU in
seconds (the big_vision `runlocal` convention). Variants derive from this file
(`config = base.get_config(arg)` then change fields) rather than copying it.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'runlocal,objective=ram_dpo' into a ConfigDict over `defaults`.

    A bare word sets a boolean to True; `key=value` is cast to the default's type.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is unknown; known: {sorted(defaults)}.")
        default = defaults[key]
        if not _:
            value = True
        elif isinstance(default, bool):
            value = value.lower() in ("1", "true", "yes")
        elif default is not None:
            value = type(default)(value)
        out[key] = value
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False, objective="ram_sft")
    c = ml_collections.ConfigDict()

    c.seed = 0  # Drives parameter init (preset), data order and dropout-free RNG streams.

    # --- Model being trained (the aligner Q, or a proposal for sft/dpo baselines).
    c.model = ml_collections.ConfigDict()
    # 'preset': random init of `preset`; 'hf': load the HF safetensors directory
    # `path`; 'checkpoint': params of a ram_jax run (its workdir or one step dir).
    c.model.init = "preset"
    c.model.preset = "llama-3.2-1b"  # a name in ram_jax.models.config.PRESETS (any init).
    c.model.path = ""  # HF directory (init='hf') or ram_jax workdir/step dir ('checkpoint').
    # Preset field overrides for random init (None keeps the preset's value);
    # vocab_size must cover the tokenizer (rows beyond it are never used).
    c.model.overrides = ml_collections.ConfigDict(
        {
            k: config_dict.placeholder(int)
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "max_position_embeddings",
            )
        }
    )
    c.model.dtype = "float32"  # compute dtype: 'bfloat16' for bf16 matmuls.
    c.model.remat = False  # rematerialise each layer in the backward pass (saves memory).

    # How the trained parameters and optimizer state are stored. 'float32':
    # float32 master weights and RMSprop state (any compute dtype). 'reference':
    # bfloat16 parameters and RMSprop state, rounded as torch rounds them, as
    # the reference trained (needs optimizer.name='rmsprop'); at LR 2e-7 one
    # step then changes only a few percent of the weights (README: Training).
    c.precision = "float32"

    # Tokenizer: a tokenizer.json file or a directory holding one (usually the
    # HF model directory, whose tokenizer_config.json gives the EOS, the BOS rule
    # and the chat template). Both models of a RAM pair must share it.
    c.tokenizer = ""

    # --- Frozen reference model, used by objective 'dpo' only. It is an
    # argument of the train step: never trained, donated or checkpointed.
    c.reference = ml_collections.ConfigDict()
    c.reference.init = "same"  # 'same': a frozen copy of the initial model; or 'hf'/'checkpoint'.
    c.reference.path = ""

    # --- Objective (RAM.md section 2).
    c.objective = ml_collections.ConfigDict()
    c.objective.name = arg.objective  # 'sft' | 'ram_sft' | 'ram_dpo' | 'dpo' | 'ram_mc'.
    c.objective.alpha = 1e-4  # ram_sft: weight of log Q(proposal sample).
    c.objective.beta = 1.0  # ram_dpo (reference 1.0) and dpo (paper DPO proposals: 0.5).
    # Where the proposal samples y~ come from for ram_sft / ram_mc: the row
    # field 'sampling' (offline samples, see ram_jax.sample_proposal) or
    # 'rejected' (the reference's choice for Anthropic-HH).
    c.objective.negatives = "sampling"
    c.objective.num_samples = 1  # ram_mc: K proposal samples per prompt (rows need >= K).
    # sft only: divide by response tokens instead of examples (a standard SFT
    # trainer's mean); RAM objectives are sequence-level sums.
    c.objective.token_mean = False

    # --- Data (ram_jax.data). Rows: JSON/JSONL objects with 'prompt', 'chosen',
    # and 'rejected' / 'sampling' (a string or a list of K strings) as the
    # objective needs; or Anthropic-HH rows ('chosen'/'rejected' conversations).
    c.data = ml_collections.ConfigDict()
    c.data.train_file = ""  # .jsonl / .json file, or a built dataset tfds:NAME/CONFIG:SPLIT.
    c.data.eval_file = ""  # held-out file; empty: hold out `eval_fraction` of train.
    c.data.eval_fraction = 0.0  # used only without eval_file.
    # 'auto' | 'rows' | 'messages' | 'hh' ('auto': messages if rows have 'messages'
    # and no 'chosen', else rows if they have 'prompt', else hh).
    c.data.format = "auto"
    # Applied to every prompt before tokenization; '{prompt}' keeps it verbatim.
    # UltraChat / TL;DR in the paper: '\n\nHuman: {prompt}\n\nAssistant: '.
    # 'chat': the tokenizer's own chat template (Instruct models; 'messages' rows).
    c.data.prompt_template = "{prompt}"
    c.data.max_length = 2048  # prompt + response tokens (EOS included).
    c.data.max_prompt_length = 1024  # prompts are left-truncated (their end is kept).
    c.data.bucket_min = 64  # pad each batch to the next power of two >= this (<= max_length).
    c.data.shuffle = True  # seed-determined permutation, a new one each epoch.
    # Start every prompt with the tokenizer's BOS: None does what transformers'
    # tokenizer(text) does (its add_bos_token or post-processor: Llama-3 adds
    # <|begin_of_text|>, Qwen2.5 nothing; under 'chat' the template decides),
    # True / False force it. The reference adds none (the paper configs set
    # False). sample_proposal and generate take --add_bos / --noadd_bos, which
    # must agree with this.
    c.data.add_bos = config_dict.placeholder(bool)

    # --- Optimisation.
    c.batch_size = 64  # global sequences per optimizer step (all hosts, all microbatches).
    c.grad_accum = 1  # microbatches per step; batch_size must divide evenly.
    c.num_epochs = 1.0  # training length in epochs when num_steps == 0.
    c.num_steps = 0  # > 0: train exactly this many optimizer steps.
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "rmsprop"  # 'rmsprop' (torch defaults, the paper's) | 'adamw'.
    c.optimizer.lr = 2e-7  # peak learning rate (paper: 2e-7 aligners, 1e-6 proposals).
    c.optimizer.weight_decay = 0.0  # adamw only (decoupled).
    c.optimizer.rmsprop_decay = 0.99  # torch RMSprop alpha.
    c.optimizer.eps = 1e-8  # added outside the square root, as torch does.
    c.optimizer.b1 = 0.9  # adamw
    c.optimizer.b2 = 0.999  # adamw
    c.optimizer.clip_norm = 10.0  # global gradient-norm clip; 0 disables.
    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "warmup_constant"  # 'warmup_constant' (paper) | 'cosine' | 'constant'.
    c.schedule.warmup_fraction = 0.1  # of total steps, linear from 0.
    c.schedule.min_lr_fraction = 0.0  # cosine: final LR as a fraction of the peak.

    # --- Devices: mesh sizes over ('data', 'fsdp', 'tensor'); -1 takes the rest.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # --- Loop intervals (in optimizer steps; 0 disables) and outputs.
    c.log_every = 10  # host-side metric fetch + TensorBoard scalars.
    c.eval_every = 0  # held-out loss; it is always computed at the end.
    c.eval_batch_size = 0  # 0: batch_size // grad_accum.
    c.checkpoint_every = 500  # also saved at the end and on SIGTERM.
    c.keep_checkpoints = 2
    c.export_dir = ""  # HF safetensors export at the end; empty: WORKDIR/export.
    c.export = True

    if arg.runlocal:
        _shrink(c)
    return c


def _shrink(c: ml_collections.ConfigDict) -> None:
    """Tiny model, short sequences, few steps: a CPU run of the same experiment."""
    c.model.init = "preset"
    c.model.preset = "tiny-llama"
    c.data.max_length = 128
    c.data.max_prompt_length = 64
    c.data.bucket_min = 32
    c.batch_size = 8
    c.grad_accum = 1
    c.num_steps = 20
    c.optimizer.lr = 1e-3
    c.log_every = 5
    c.checkpoint_every = 10
