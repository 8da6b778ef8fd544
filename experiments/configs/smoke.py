"""Smoke run: a tiny aligner trained with `ram_sft` on the fixture data in seconds on a CPU.

  python -m ram_jax.main --config=experiments/configs/smoke.py --workdir=/tmp/smoke

Derived from `base.py` with its `runlocal` shrinking; data, tokenizer and
vocabulary come from tests/fixtures (regenerate with make_fixtures.py).
Accepts the same arguments as base, e.g. `smoke.py:objective=ram_dpo`.
"""

import os

from experiments.configs import base

_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")


def get_config(arg=None):
    c = base.get_config(",".join(filter(None, ["runlocal", arg])))
    fixtures = os.path.normpath(_FIXTURES)
    c.tokenizer = os.path.join(fixtures, "tokenizer.json")
    c.data.train_file = os.path.join(fixtures, "smoke_train.jsonl")
    c.data.eval_file = os.path.join(fixtures, "smoke_eval.jsonl")
    c.model.overrides.vocab_size = 384  # the fixture tokenizer's length
    c.data.max_length = 64
    c.data.max_prompt_length = 32
    c.data.bucket_min = 16
    c.batch_size = 16
    c.num_steps = 60
    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-3
    c.schedule.warmup_fraction = 0.1
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 30
    return c
