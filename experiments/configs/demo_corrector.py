"""Embedded experiment baseline: an Aligner-style corrector (Ji et al. 2024).

  python -m ram_jax.main --config=experiments/configs/demo_corrector.py[:quick] \
      --workdir=DIR --config.tokenizer=TOKENIZER.json --config.data.train_file=corrector.jsonl

A small model of the aligner's size, trained with `sft` to rewrite the
proposal's answer into the aligned one: rows have prompt = the question
followed by "\n\nDraft: " and a proposal sample, chosen = the aligned answer.
At decoding it runs after the proposal's whole answer, so its first token
waits for that answer.
"""

from experiments.configs import base, demo_aligner


def get_config(arg=None):
    arg = base.parse_arg(arg, quick=False)
    c = demo_aligner.get_config("objective=sft" + (",quick" if arg.quick else ""))
    # Its prompts hold the question and a whole draft answer.
    c.data.max_length = 96
    c.data.max_prompt_length = 64
    c.data.bucket_min = 96
    return c
