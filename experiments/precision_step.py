r"""How many weights one optimizer step changes, under each training precision.

  python experiments/precision_step.py [--steps=20] [--width=256] [--layers=4]

The reference trained with bfloat16 parameters and a bfloat16 RMSprop state
(`precision='reference'`); ram_jax's default keeps float32 master weights
(`precision='float32'`). At the paper's learning rates an RMSprop update is
about lr in size, far below a bfloat16 weight's rounding step (2^-8 of its
magnitude), so under 'reference' most updates round away. This script
measures it: a Llama-shaped model (random init, normal(0.02) weights) trains
`ram_sft` (alpha 1e-4) on the fixture rows (tests/fixtures/smoke_train.jsonl,
batch 16, at most 64 tokens), bf16 compute, RMSprop with clip 10, at a
constant LR of 2e-7 and 1e-6, from the same initial weights (rounded to
bfloat16 for 'reference'). For every step it records the fraction of weights
whose stored value changed: of the layers' weights (all receive a gradient)
and of all weights (embedding rows of tokens absent from the batch receive
none). RMSprop's first step is its largest (the accumulator starts at zero),
so the median over the last half of the steps is reported too. One JSON
record per (precision, lr); the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from ram_jax import data
from ram_jax import sharding as shd
from ram_jax.models.config import get_preset
from ram_jax.models.tokenizer import load_tokenizer, tokenizer_length
from ram_jax.training import optim
from ram_jax.training import step as train
from ram_jax.training.losses import Objective

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OBJECTIVE = Objective("ram_sft", alpha=1e-4)


def changed_fractions(before, after) -> tuple[float, float]:
    """(fraction of the layers' weights changed, fraction of all weights changed)."""

    def fraction(a_tree, b_tree):
        pairs = zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True)
        flags = [(np.asarray(a) != np.asarray(b)).ravel() for a, b in pairs]
        return float(np.mean(np.concatenate(flags)))

    return fraction(before["layers"], after["layers"]), fraction(before, after)


def run(config, batches, precision: str, lr: float, steps: int) -> dict:
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    config = config.replace(param_dtype=optim.param_dtype_for(precision))
    schedule = optim.make_schedule("constant", lr, steps)
    opt = optim.make_optimizer("rmsprop", schedule, clip_norm=10.0, precision=precision)
    shardings = train.state_shardings(train.abstract_state(config, opt), mesh)
    state = train.init_state(config, opt, jax.random.key(0), shardings)
    step = train.make_train_step(
        config, OBJECTIVE, opt, schedule, shardings, mesh, vocab_limit=config.vocab_size
    )
    layers, total = [], []
    for i in range(steps):
        before = jax.device_get(state.params)
        state, _ = step(state, train.put_batch(batches[i % len(batches)], mesh), None)
        a, b = changed_fractions(before, jax.device_get(state.params))
        layers.append(a)
        total.append(b)
    late = slice(steps // 2, None)
    return {
        "precision": precision,
        "lr": lr,
        "first_step_layers": layers[0],
        "first_step_all": total[0],
        "late_median_layers": float(np.median(layers[late])),
        "late_median_all": float(np.median(total[late])),
        "per_step_layers": [round(x, 5) for x in layers],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    tok = load_tokenizer(os.path.join(FIXTURES, "tokenizer.json"))
    config = get_preset(
        "tiny-llama",
        vocab_size=tokenizer_length(tok),
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_layers=args.layers,
        num_heads=args.width // 32,
        num_kv_heads=args.width // 64,
        head_dim=32,
        dtype="bfloat16",
    )
    rows = data.read_rows(os.path.join(FIXTURES, "smoke_train.jsonl"), need=("sampling",))
    examples = data.tokenize_rows(
        rows, tok, OBJECTIVE, eos_id=0, max_length=64, max_prompt_length=32
    )
    batcher = data.Batches(examples, batch_size=16, seed=0, bucket_min=64, max_length=64)
    batches = [batcher.batch(0, i) for i in range(batcher.steps_per_epoch)]
    summary = {}
    for lr in (2e-7, 1e-6):
        for precision in ("float32", "reference"):
            record = run(config, batches, precision, lr, args.steps)
            print(json.dumps(record))
            key = f"{precision}@{lr:g}"
            summary[key] = {
                "first_step_layers": round(record["first_step_layers"], 4),
                "late_median_layers": round(record["late_median_layers"], 4),
                "late_median_all": round(record["late_median_all"], 4),
            }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
