r"""Weight-only int8 on the embedded experiment's trained proposal: logits error, greedy agreement.

  python experiments/int8_proposal.py --out=runs/int8 [--quick] [--proposal=DIR]

Builds the embedded experiment's world and pre-trains its proposal exactly as
`python -m experiments.demo` does (or reads an exported proposal, `--proposal`,
e.g. `runs/demo/proposal/export` with the world of the same `--out`), then
compares the float32 proposal with `ram_jax.models.quantize.quantize_int8` of it on
the evaluation questions:

  teacher-forced   prompt + true answer; over real positions and the tokenizer's
                   vocabulary: max and mean |logit difference| (and the logits' std for
                   scale), mean KL(P_float || P_int8), next-token argmax agreement.
  greedy           up to 32 new tokens per question from each model (cached decoding
                   through `ram_jax.models.transformer.forward`), up to the float model's
                   first EOS: the fraction of identical answers and of answer tokens
                   before the first divergence.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

NEW_TOKENS = 32


def _batch(ids, eos_id, left_pad: bool):
    width = max(map(len, ids))
    tokens = np.full((len(ids), width), eos_id, np.int32)
    mask = np.zeros((len(ids), width), bool)
    for row, seq in enumerate(ids):
        span = slice(width - len(seq), width) if left_pad else slice(0, len(seq))
        tokens[row, span], mask[row, span] = seq, True
    return tokens, mask


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def _greedy(params, tokens, mask, config, steps):
    from ram_jax.models.cache import init_cache
    from ram_jax.models.transformer import forward

    cache = init_cache(config, tokens.shape[0], tokens.shape[1] + steps)
    logits, cache = forward(params, tokens, config, mask_BxT=mask, cache=cache, last_only=True)

    def step(carry, _):
        logits, cache = carry
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        logits, cache = forward(params, token[:, None], config, cache=cache)
        return (logits, cache), token

    _, out = jax.lax.scan(step, (logits, cache), None, length=steps)
    return out.T


def compare(config, params, tok, prompts, answers) -> dict:
    """Float32 `params` against their int8 copy on `prompts` (+ `answers`)."""
    from ram_jax.models.quantize import quantize_int8, weight_bytes
    from ram_jax.models.tokenizer import eos_token_ids, tokenizer_length
    from ram_jax.models.transformer import forward

    q = quantize_int8(params)
    vocab = tokenizer_length(tok)
    eos = eos_token_ids(tok, config)[0]
    run = jax.jit(lambda p, t, m: forward(p, t, config, mask_BxT=m)[0][..., :vocab])
    # Prompt and answer are tokenized separately, as in training.
    prompt_ids = [tok.encode(p).ids for p in prompts]
    answer_ids = [tok.encode(a).ids for a in answers]
    joined = [p + a for p, a in zip(prompt_ids, answer_ids, strict=True)]
    tokens, mask = _batch(joined, eos, left_pad=False)
    full, int8 = np.asarray(run(params, tokens, mask)), np.asarray(run(q, tokens, mask))
    real = mask
    diff = np.abs(full - int8)[real]
    logp = jax.nn.log_softmax(full[real]), jax.nn.log_softmax(int8[real])
    kl = np.sum(np.exp(logp[0]) * (logp[0] - logp[1]), axis=-1)
    agree_next = np.mean(np.argmax(full[real], -1) == np.argmax(int8[real], -1))

    ptok, pmask = _batch(prompt_ids, eos, left_pad=True)
    g_full = np.asarray(_greedy(params, ptok, pmask, config, NEW_TOKENS))
    g_int8 = np.asarray(_greedy(q, ptok, pmask, config, NEW_TOKENS))
    # Compare answers up to the float model's first EOS (what decoding keeps).
    is_eos = np.isin(g_full, eos_token_ids(tok, config))
    length = np.where(is_eos.any(1), np.argmax(is_eos, 1) + 1, NEW_TOKENS)
    kept = np.arange(NEW_TOKENS)[None] < length[:, None]
    same = (g_full == g_int8) | ~kept
    prefix = np.where(same.all(1), length, np.argmin(same, axis=1))
    return {
        "questions": len(prompts),
        "float32_weight_bytes": weight_bytes(params),
        "int8_weight_bytes": weight_bytes(q),
        "logits_std": float(full[real].std()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "mean_kl_float_int8": float(kl.mean()),
        "next_token_argmax_agreement": float(agree_next),
        "greedy_identical_fraction": float(same.all(1).mean()),
        "greedy_tokens_before_divergence_fraction": float(prefix.sum() / length.sum()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/int8")
    ap.add_argument("--quick", action="store_true", help="the CI-sized world and proposal")
    ap.add_argument("--proposal", default="", help="an exported proposal (skip training)")
    args = ap.parse_args()

    from experiments.configs.demo_proposal import TEMPLATE
    from experiments.demo import entry_points, pipeline
    from ram_jax.data import templates
    from ram_jax.models.convert import load_hf
    from ram_jax.models.tokenizer import load_tokenizer

    plan = pipeline.Plan.make(args.out, args.quick, seeds=1)
    shared = pipeline.build_world(plan)
    paths, world = shared["paths"], shared["world"]
    t0 = time.time()
    proposal = args.proposal
    if not proposal:
        summary = entry_points.train(
            "demo_proposal",
            "quick" if args.quick else None,
            os.path.join(args.out, "proposal"),
            {"tokenizer": paths["tokenizer"], "data.train_file": paths["base"], "seed": 0},
        )
        proposal = summary["export_dir"]
    train_s = time.time() - t0
    config, params = load_hf(proposal)
    tok = load_tokenizer(paths["tokenizer"])
    prompts = [templates.apply(TEMPLATE, e.question) for e in world.eval]
    result = compare(config, params, tok, prompts, [e.answer for e in world.eval])
    result.update(proposal=proposal, train_seconds=round(train_s, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
