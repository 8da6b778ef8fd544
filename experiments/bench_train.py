r"""Train-step throughput: ram_jax's jitted `ram_sft` step vs a PyTorch copy of the reference step.

  python experiments/bench_train.py [--quick] [--steps=N]

Both sides train the same Llama-shaped model (random init, float32, CPU or
whatever device is present) on the same token batches: B prompts, each with a
target response and one proposal sample, prompt P and response R tokens.

  ram_jax  `ram_jax.training.step.make_train_step` (one jit: both sequences in one
           forward, float32 log-probs, rmsprop, clip 10), one device.
  torch    the reference trainer's step: transformers `LlamaForCausalLM`,
           a forward for the chosen batch and one for the sample batch,
           summed response log-probs, loss = -chosen + alpha * sample,
           backward, clip_grad_norm_(10), torch.optim.RMSprop, zero_grad.

Tokens/s counts real (unpadded) tokens of both sequences per second of
steady-state steps (after warm-up). `compile_seconds` is the jit lowering +
compilation time of the ram_jax step. The last line printed is one JSON object.

MFU on an accelerator: with N the matmul parameters (all but the input embedding), L layers,
T the padded sequence length and D = num_heads * head_dim,
  flops_per_token = 6 * N + 12 * L * T * D        (forward + backward; the
                    second term is attention's QK^T and AV, causal masking not discounted)
  MFU = tokens_per_s * flops_per_token / (num_chips * peak_flops_per_chip)
(`flops_per_token` is reported below for the benchmarked shape.)
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from ram_jax import sharding as shd
from ram_jax.models.config import get_preset
from ram_jax.training import optim
from ram_jax.training import step as train
from ram_jax.training.losses import Objective

ALPHA = 1e-4


def make_batch(rng, b, prompt, response, vocab):
    """Right-padded [1, B, 2, T] batch: varied real lengths, like real data."""
    t = prompt + response
    tokens = rng.integers(1, vocab, size=(1, b, 2, t)).astype(np.int32)
    mask = np.zeros((1, b, 2, t), bool)
    targets = np.zeros((1, b, 2, t), bool)
    for i in range(b):
        p = int(rng.integers(prompt // 2, prompt + 1))
        for g in range(2):
            r = int(rng.integers(response // 2, response + 1))
            tokens[0, i, g, : p + r] = rng.integers(1, vocab, size=p + r)
            tokens[0, i, g, p + r :] = 0
            mask[0, i, g, : p + r] = True
            targets[0, i, g, p : p + r] = True
    return {
        "tokens": tokens,
        "mask": mask,
        "targets": targets,
        "weight": np.ones((1, b), np.float32),
    }


def bench_jax(config, batches, steps):
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    schedule = optim.make_schedule("constant", 1e-5, steps)
    opt = optim.make_optimizer("rmsprop", schedule, clip_norm=10.0)
    shardings = train.state_shardings(train.abstract_state(config, opt), mesh)
    state = train.init_state(config, opt, jax.random.key(0), shardings)
    step = train.make_train_step(
        config, Objective("ram_sft", alpha=ALPHA), opt, schedule, shardings, mesh, vocab_limit=None
    )
    device_batches = [train.put_batch(b, mesh) for b in batches]
    t0 = time.perf_counter()
    compiled = step.lower(state, device_batches[0], None).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, device_batches[0], None)  # warm-up
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(steps):
        state, m = compiled(state, device_batches[i % len(device_batches)], None)
    loss = float(m["loss"])  # waits for the last step
    return time.perf_counter() - t0, compile_s, loss


def bench_torch(config, batches, steps):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = config.to_hf_dict()
    hf.pop("architectures", None)
    hf.pop("model_type", None)
    hf.pop("torch_dtype", None)
    model = LlamaForCausalLM(LlamaConfig(**hf, attn_implementation="sdpa")).float()
    model.train()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5)

    def logps(tokens, mask, targets):
        logits = model(input_ids=tokens, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
        return (lp * targets[:, 1:]).sum(-1)

    torch_batches = [
        {k: torch.from_numpy(np.ascontiguousarray(v[0])) for k, v in b.items()} for b in batches
    ]

    def one_step(b):
        tok, mask, tgt = b["tokens"].long(), b["mask"].long(), b["targets"].float()
        chosen = logps(tok[:, 0], mask[:, 0], tgt[:, 0])
        sample = logps(tok[:, 1], mask[:, 1], tgt[:, 1])
        loss = (-chosen + ALPHA * sample).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad()
        return loss

    one_step(torch_batches[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        loss = one_step(torch_batches[i % len(torch_batches)])
    return time.perf_counter() - t0, loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller model, fewer steps (< 2 min)")
    ap.add_argument("--steps", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        shape = dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4)
        b, prompt, response, steps = 4, 64, 64, 5
    else:
        shape = dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8)
        b, prompt, response, steps = 8, 128, 128, 10
    steps = args.steps or steps
    config = get_preset(
        "tiny-llama",
        vocab_size=2048,
        num_kv_heads=shape["num_heads"] // 2,
        head_dim=shape["hidden_size"] // shape["num_heads"],
        rope_scaling=None,
        **shape,
    )
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, b, prompt, response, config.vocab_size) for _ in range(2)]
    tokens_per_step = float(np.mean([x["mask"].sum() for x in batches]))
    jax_s, compile_s, jax_loss = bench_jax(config, batches, steps)
    torch_s, torch_loss = bench_torch(config, batches, steps)
    jax_tps = steps * tokens_per_step / jax_s
    torch_tps = steps * tokens_per_step / torch_s
    d = config.hidden_size
    non_embed = config.num_layers * (
        d * config.num_heads * config.head_dim * 2
        + d * config.num_kv_heads * config.head_dim * 2
        + 3 * d * config.intermediate_size
    )
    attn_flops = 12 * config.num_layers * (prompt + response) * config.num_heads * config.head_dim
    result = {
        "device": jax.devices()[0].device_kind,
        "model": {k: getattr(config, k) for k in ("hidden_size", "num_layers", "vocab_size")},
        "batch": b,
        "prompt_tokens": prompt,
        "response_tokens": response,
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "jax_tokens_per_s": jax_tps,
        "torch_tokens_per_s": torch_tps,
        "jax_vs_torch_tokens_per_s": jax_tps / torch_tps,
        "compile_seconds": compile_s,
        "jax_last_loss": jax_loss,
        "torch_last_loss": torch_loss,
        "flops_per_token": 6 * (non_embed + d * config.vocab_size) + attn_flops,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
