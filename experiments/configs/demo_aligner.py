"""Embedded experiment: train the small model on the aligned set.

  python -m ram_jax.main --config=experiments/configs/demo_aligner.py:objective=ram_sft \
      --workdir=DIR --config.tokenizer=TOKENIZER.json --config.data.train_file=aligned.jsonl

`objective` chooses the run: `sft` (the "aligner alone" baseline), or the RAM
residual aligner objectives `ram_sft` (negatives = proposal samples in the
rows' `sampling` field), `ram_dpo` (the rows' `rejected` answers) and `ram_mc`
(K = 4 proposal samples per row). The model is about 1/8 of the proposal's
parameters (demo_proposal.py) and shares its tokenizer; it starts from random
weights and sees only the aligned set's entities, so it cannot know the facts
of the evaluation entities.
"""

from experiments.configs import base, demo_proposal

MC_SAMPLES = 4


def get_config(arg=None):
    arg = base.parse_arg(arg, quick=False, objective="ram_sft")
    c = demo_proposal.get_config("quick" if arg.quick else None)
    c.objective.name = arg.objective
    c.objective.alpha = 1e-4
    c.objective.beta = 1.0
    if arg.objective == "ram_dpo":
        c.objective.negatives = "rejected"
    if arg.objective == "ram_mc":
        c.objective.num_samples = MC_SAMPLES
    # Qwen-style (tied embeddings): the tied table keeps the small model small.
    c.model.preset = "tiny-qwen"
    o = c.model.overrides
    o.hidden_size = 32
    o.intermediate_size = 64
    o.num_layers = 2
    o.num_heads = 2
    o.num_kv_heads = 1
    o.head_dim = 16
    c.batch_size = 16
    c.num_steps = 120 if arg.quick else 200
    c.optimizer.lr = 1e-2
    return c
