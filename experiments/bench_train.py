r"""Train-step throughput: ram_jax's jitted `ram_sft` step vs a PyTorch copy of the reference step.

  python experiments/bench_train.py [--quick] [--rounds=5] [--steps=N] [--profile] [--threads=N]
  python experiments/bench_train.py --model=llama-3.2-1b [--batch=4] [--length=2048] [--remat]

Both sides train the same Llama-shaped model (random init, float32, CPU or
whatever device is present) on the same token batches: B prompts, each with a
target response and one proposal sample, prompt P and response R tokens.

  ram_jax  `ram_jax.training.step.make_train_step` (one jit: both sequences in one
           forward, float32 log-probs, rmsprop, clip 10), one device.
  torch    the reference trainer's step: transformers `LlamaForCausalLM` (sdpa
           attention), a forward for the chosen batch and one for the sample batch,
           summed response log-probs, loss = -chosen + alpha * sample,
           backward, clip_grad_norm_(10), torch.optim.RMSprop, zero_grad.
           Pinned: `torch.set_num_threads(--threads)` (default: every core, as XLA
           uses), one inter-op thread, float32, fixed seed; the JSON names them.

Rounds alternate the two sides (`--steps` steps of JAX, then of torch) so both
see the same machine load; each round gives a ratio, and the summary reports
their median and range. Tokens/s counts real (unpadded) tokens of both
sequences per second of steady-state steps (after warm-up).
`compile_seconds` is the jit lowering + compilation time of the ram_jax step.
`--profile` adds where each side's step time goes (`experiments/step_profile.py`).
The last line printed is one JSON object; on CPU it holds the JAX step's FLOP
rate as a fraction of the best measured float32 matmul rate
(`jax_flops_fraction_of_matmul_peak`).

`--model=PRESET`: the aligner's real shapes with random weights, bf16 compute
(`--dtype`), ram_jax only; it reports model FLOPs utilisation against the
device's dense bf16 peak (`PEAK_FLOPS`). With N the matmul parameters (all but
the input embedding), L layers, T the padded sequence length and D = num_heads * head_dim,
  flops_per_token = 6 * N + 12 * L * T * D        (forward + backward; the
                    second term is attention's QK^T and AV, causal masking not discounted)
  MFU = tokens_per_s * flops_per_token / (num_chips * peak_flops_per_chip)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from experiments import roofline, step_profile
from ram_jax import sharding as shd
from ram_jax.models.config import get_preset
from ram_jax.training import optim
from ram_jax.training import step as train
from ram_jax.training.losses import Objective

ALPHA = 1e-4

# Dense bf16 FLOP/s per chip (vendor figures), matched against `device_kind`.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


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


class JaxStep:
    """The ram_jax `ram_sft` step on one device, compiled; `run(n)` times n steps."""

    def __init__(self, config, batches, *, remat=False):
        mesh = shd.make_mesh(devices=jax.devices()[:1])
        schedule = optim.make_schedule("constant", 1e-5, 1000)
        opt = optim.make_optimizer("rmsprop", schedule, clip_norm=10.0)
        shardings = train.state_shardings(train.abstract_state(config, opt), mesh)
        self.state = train.init_state(config, opt, jax.random.key(0), shardings)
        step = train.make_train_step(
            config,
            Objective("ram_sft", alpha=ALPHA),
            opt,
            schedule,
            shardings,
            mesh,
            vocab_limit=None,
            remat=remat,
        )
        self.batches = [train.put_batch(b, mesh) for b in batches]
        t0 = time.perf_counter()
        self.compiled = step.lower(self.state, self.batches[0], None).compile()
        self.compile_seconds = time.perf_counter() - t0
        self.run(1)  # warm-up

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            self.state, metrics = self.compiled(self.state, self.batches[i % 2], None)
        self.loss = float(metrics["loss"])  # waits for the last step
        return time.perf_counter() - t0


class TorchStep:
    """A PyTorch copy of the reference trainer's step; `run(n)` times n steps."""

    def __init__(self, config, batches, threads: int):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        torch.manual_seed(0)
        hf = config.to_hf_dict()
        for key in ("architectures", "model_type", "torch_dtype"):
            hf.pop(key, None)
        self.model = LlamaForCausalLM(LlamaConfig(**hf, attn_implementation="sdpa")).float()
        self.model.train()
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=1e-5)
        self.batches = [
            {k: torch.from_numpy(np.ascontiguousarray(v[0])) for k, v in b.items()} for b in batches
        ]
        self.settings = {
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "torch_attention": "sdpa",
        }
        self.run(1)  # warm-up

    def _logps(self, tokens, mask, targets):
        import torch

        logits = self.model(input_ids=tokens, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
        return (lp * targets[:, 1:]).sum(-1)

    def run(self, n: int) -> float:
        import torch

        t0 = time.perf_counter()
        for i in range(n):
            b = self.batches[i % 2]
            tok, mask, tgt = b["tokens"].long(), b["mask"].long(), b["targets"].float()
            chosen = self._logps(tok[:, 0], mask[:, 0], tgt[:, 0])
            sample = self._logps(tok[:, 1], mask[:, 1], tgt[:, 1])
            loss = (-chosen + ALPHA * sample).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.opt.step()
            self.opt.zero_grad()
        self.loss = loss.item()
        return time.perf_counter() - t0


def flops_per_token(config, seq_len: int) -> float:
    """The module docstring's 6 N + 12 L T D (the LM head counts, tied or not)."""
    d = config.hidden_size
    per_layer = (
        d * config.num_heads * config.head_dim * 2
        + d * config.num_kv_heads * config.head_dim * 2
        + 3 * d * config.intermediate_size
    )
    matmul = config.num_layers * per_layer + d * config.vocab_size
    return 6 * matmul + 12 * config.num_layers * seq_len * config.num_heads * config.head_dim


def peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_kind), None)


def _spread(values) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": [round(v, 3) for v in values],
    }


def model_benchmark(args) -> dict:
    """--model: ram_jax alone at a preset's real shapes, reporting MFU."""
    config = get_preset(args.model, dtype=args.dtype)
    half = args.length // 2
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, args.batch, half, half, config.vocab_size) for _ in range(2)]
    tokens = float(np.mean([b["mask"].sum() for b in batches]))
    jax_step = JaxStep(config, batches, remat=args.remat)
    seconds = [jax_step.run(args.steps) / args.steps for _ in range(args.rounds)]
    tps = tokens / statistics.median(seconds)
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    flops = flops_per_token(config, args.length)
    return {
        "device": kind,
        "model": args.model,
        "dtype": args.dtype,
        "remat": args.remat,
        "batch": args.batch,
        "length": args.length,
        "tokens_per_step": tokens,
        "step_seconds": _spread(seconds),
        "tokens_per_s": tps,
        "compile_seconds": jax_step.compile_seconds,
        "flops_per_token": flops,
        "peak_flops": peak,
        "mfu": tps * flops / peak if peak else None,
        "loss_finite": bool(np.isfinite(jax_step.loss)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller model, fewer steps (< 2 min)")
    ap.add_argument("--steps", type=int, default=0, help="steps per side per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--model", default="", help="a preset at its real shapes (ram_jax only)")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype with --model")
    ap.add_argument("--batch", type=int, default=4, help="examples per step with --model")
    ap.add_argument("--length", type=int, default=2048, help="sequence length with --model")
    ap.add_argument("--remat", action="store_true", help="per-layer remat with --model")
    args = ap.parse_args()
    if args.model:
        args.steps = args.steps or 5
        print(json.dumps(model_benchmark(args)))
        return
    if args.quick:
        shape = dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4)
        b, prompt, response, steps = 4, 64, 64, 2
    else:
        shape = dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8)
        b, prompt, response, steps = 8, 128, 128, 3
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
    jax_step = JaxStep(config, batches)
    torch_step = TorchStep(config, batches, args.threads)
    jax_s, torch_s = [], []
    for r in range(args.rounds):
        jax_s.append(jax_step.run(steps) / steps)
        torch_s.append(torch_step.run(steps) / steps)
        print(json.dumps({"round": r, "jax_step_s": jax_s[-1], "torch_step_s": torch_s[-1]}))
    flops = flops_per_token(config, prompt + response)
    jax_tps = tokens_per_step / statistics.median(jax_s)
    peak = roofline.matmul_peak([(1024, 1024, 1024), (2048, 2048, 2048)])
    result = {
        "device": jax.devices()[0].device_kind,
        "model": {k: getattr(config, k) for k in ("hidden_size", "num_layers", "vocab_size")},
        "batch": b,
        "prompt_tokens": prompt,
        "response_tokens": response,
        "steps_per_round": steps,
        "tokens_per_step": tokens_per_step,
        **torch_step.settings,
        "jax_tokens_per_s": jax_tps,
        "torch_tokens_per_s": tokens_per_step / statistics.median(torch_s),
        "jax_vs_torch_tokens_per_s": _spread([t / j for j, t in zip(jax_s, torch_s, strict=True)]),
        "compile_seconds": jax_step.compile_seconds,
        "jax_last_loss": jax_step.loss,
        "torch_last_loss": torch_step.loss,
        "flops_per_token": flops,
        "matmul_peak_flops": peak,
        "jax_flops_fraction_of_matmul_peak": jax_tps * flops / peak,
    }
    if args.profile:
        t = prompt + response
        run = lambda: jax_step.run(steps)
        result["jax_profile_ms_per_step"] = step_profile.profile(
            jax_step.compiled, run, steps, t=t, vocab=config.vocab_size
        )
        result["torch_profile_ms_per_step"] = step_profile.torch_profile(
            lambda: torch_step.run(steps), steps
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
