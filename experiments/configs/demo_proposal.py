"""Embedded experiment, stage 1: pre-train the proposal on the world's base corpus.

  python -m ram_jax.main --config=experiments/configs/demo_proposal.py[:quick] \
      --workdir=DIR --config.tokenizer=TOKENIZER.json --config.data.train_file=base.jsonl

The proposal is the "large" model (about 8x the aligner's parameters): it
memorises every entity's facts, in the corpus's mix of answer styles. Paths
are filled in by `python -m experiments.demo`; to run on your own data,
override them (and `model.*`) on the command line. `quick` trains fewer steps
for the CI-sized world.
"""

from experiments.configs import base

# One tokenizer for every model of the experiment (built by experiments.demo).
VOCAB_SIZE = 512
TEMPLATE = "human_assistant"  # a name in ram_jax.data.templates


def get_config(arg=None):
    arg = base.parse_arg(arg, quick=False)
    c = base.get_config("objective=sft")
    c.model.init = "preset"
    c.model.preset = "tiny-llama"
    o = c.model.overrides
    o.vocab_size = VOCAB_SIZE
    o.hidden_size = 64
    o.intermediate_size = 192
    o.num_layers = 4
    o.num_heads = 4
    o.num_kv_heads = 2
    o.head_dim = 16
    o.max_position_embeddings = 128
    c.data.prompt_template = TEMPLATE
    # bucket_min == max_length: one padded shape, so one compilation per run.
    c.data.max_length = 56
    c.data.max_prompt_length = 28
    c.data.bucket_min = 56
    c.batch_size = 32
    c.num_steps = 250 if arg.quick else 400
    c.optimizer.name = "adamw"
    c.optimizer.lr = 5e-3
    c.optimizer.clip_norm = 1.0
    c.schedule.name = "cosine"
    c.schedule.warmup_fraction = 0.1
    c.schedule.min_lr_fraction = 0.1
    c.log_every = 25
    c.eval_every = 0
    # Checkpoints only at the end: the demo's runs are short and not resumed.
    c.checkpoint_every = 0
    c.keep_checkpoints = 1
    return c
