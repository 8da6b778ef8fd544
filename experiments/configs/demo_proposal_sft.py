"""Embedded experiment baseline: fine-tune the whole proposal on the aligned set.

  python -m ram_jax.main --config=experiments/configs/demo_proposal_sft.py[:quick] \
      --workdir=DIR --config.model.path=PROPOSAL_EXPORT --config.tokenizer=TOKENIZER.json \
      --config.data.train_file=aligned.jsonl

The expensive baseline (the paper's "SFT 8B"): every proposal parameter is
trained, starting from the pre-trained proposal's HF export.
"""

from experiments.configs import base, demo_aligner, demo_proposal


def get_config(arg=None):
    arg = base.parse_arg(arg, quick=False)
    c = demo_proposal.get_config("quick" if arg.quick else None)
    c.model.init = "hf"
    c.model.path = ""  # the proposal's export directory (required)
    # Same data, batch and steps as the aligner runs, so only the model differs.
    a = demo_aligner.get_config("quick" if arg.quick else None)
    c.batch_size = a.batch_size
    c.num_steps = a.num_steps
    c.optimizer.lr = 3e-4
    c.schedule.name = "warmup_constant"
    return c
