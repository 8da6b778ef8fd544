r"""Decode benchmark: ram_jax's driver vs the reference's per-token PyTorch loop.

  python experiments/bench_decode.py [--quick]
  python experiments/bench_decode.py --pair=llama-3.1-8b+llama-3.2-1b [--int8] [--layers=N]

`--pair`: the paper's model sizes against the HBM roofline (`experiments/decode_pair.py`).
Without it:

A "small" trio with a 32k vocabulary (random float32 weights; the timing
depends on the values only through par_kl's gate, reported as
`aligner_branch_rate`): proposal P, 8 layers of width 512 (~56M parameters);
two aligners Q1, Q2, 2 layers of width 256 with tied embeddings (~10M each).
Prompt 128 tokens, 128 new tokens (`--quick`: 32 new, batches 1 and 32,
fewer modes and torch tokens). Everything decodes through
`ram_jax.decoding.driver.generate`, as the CLI and the demo do.

Measured in one run, on whatever device JAX and torch find (CPU here):
  ttft     prompts in, first token on the host (prefill of each model and
           one draw), after compilation; median of repeats. The headline
           ratio par_kl / proposal-only comes from measuring the two
           alternately (`bench_ttft_pair`).
  step     steady per-step time: the batch's time after its first token
           divided by its steps; tokens/s = batch / step.
  proposal_only / aligner_only / aligner2_only: the decoder with one model.
  par_kl_mixed: the batch-32 par_kl batch with 32 different settings per row
           (temperatures, top-p, proposal top-p and T, penalty, tau; the gate
           thresholds stay below these models' KL, as the uniform batch's),
           against the same batch with the reference's settings on every row;
           the two batches run in turn (`bench_alternating`).
  weighted_product_2: P with both aligners, per-row weights, against the
           sum of the three single-model steps, all four run in turn.
  torch_reference (`experiments/torch_reference.py`): transformers
           LlamaForCausalLM copies of P and Q1 (the same weights through
           save_hf / from_pretrained), batch 1, a Python loop over tokens
           feeding both past_key_values, the par_kl warper in torch per token
           (KL gate, P's nucleus, temperature, repetition penalty, top-p),
           torch.multinomial.
  aligner_style_ttft: a sequence-level corrector must wait for P's whole
           answer: P decodes max_new tokens, then Q prefills prompt + answer and
           emits its first token (both with our driver, batch 1).
  matmul_peak: the best float32 GFLOP/s of jnp.dot over a few shapes (square
           and the batch-32 decode step's skinny shapes), measured here.
  peak_fraction: FLOPs per token (2 x matmul parameters of the models incl.
           the LM heads + attention 4 x L x context x N x H) x tokens/s / peak.
  roofline (`experiments/roofline.py`): the least time a batch-32 par_kl
           step can take here in float32: each of its weight matmuls alone
           at its best measured speed, plus one streaming read of both KV
           caches at the measured read bandwidth. `par_kl_b32_roofline_fraction`
           = that time / the median step (`..._best_step_...`: / the fastest
           of the repeats, best-of like the roofline's matmuls).

One JSON record per configuration, then a table; the last line is one JSON
object with the headline ratios. Other processes on a shared machine make the
absolute numbers noisy; the ratios come from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import roofline, torch_reference
from ram_jax.decoding import driver, modes
from ram_jax.decoding.sampling import REFERENCE, SamplingParams
from ram_jax.models.config import ModelConfig
from ram_jax.models.transformer import abstract_params, count_params

# The float32 matmul peak: a square shape and the batch-32 step's skinny ones.
PEAK_SHAPES = [(1024, 1024, 1024), (32, 512, 1408), (32, 512, 32000), (32, 1408, 512)]

VOCAB = 32000
PROPOSAL = ModelConfig(
    vocab_size=VOCAB,
    hidden_size=512,
    intermediate_size=1408,
    num_layers=8,
    num_heads=8,
    num_kv_heads=4,
    head_dim=64,
    rope_theta=500_000.0,
    max_position_embeddings=2048,
)
ALIGNER = PROPOSAL.replace(
    hidden_size=256,
    intermediate_size=704,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    tie_embeddings=True,
)
# The reference implementation's par_kl settings (as the paper decodes every RAM row).
PAR_KL = REFERENCE.replace(max_new_tokens=128, stop=(), rstrip=False)
SINGLE = SamplingParams(temperature=0.7, top_p=0.9)
# name: (mode, settings, which models: proposal, aligners)
MODES = {
    "proposal_only": ("proposal", SINGLE, (True, ())),
    "aligner_only": ("aligner", SINGLE, (False, (0,))),
    "aligner2_only": ("aligner", SINGLE, (False, (1,))),
    "product": ("product", PAR_KL, (True, (0,))),
    "par": (modes.reference_mode("par"), PAR_KL, (True, (0,))),
    "par_kl": ("par_kl", PAR_KL, (True, (0,))),
    "par_kl_mixed": ("par_kl", "mixed", (True, (0,))),
    "weighted_product_2": ("weighted_product", "weights", (True, (0, 1))),
    "sir": (modes.get_mode("sir", num_candidates=8), PAR_KL, (True, (0,))),
}


def mixed_settings(batch: int) -> list[SamplingParams]:
    """`batch` different settings: every knob the uniform par_kl batch uses, varied."""
    rng = np.random.default_rng(0)
    return [
        PAR_KL.replace(
            temperature=float(rng.uniform(0.3, 1.2)),
            top_p=float(rng.uniform(0.8, 0.99)),
            proposal_temperature=float(rng.uniform(0.4, 1.0)),
            proposal_top_p=float(rng.uniform(0.85, 0.99)),
            repetition_penalty=float(rng.uniform(1.0, 1.1)),
            kl_threshold=float(rng.uniform(0.05, 0.2)),
        )
        for _ in range(batch)
    ]


def settings(name: str, batch: int, new: int):
    params = MODES[name][1]
    if params == "mixed":
        return [p.replace(max_new_tokens=new) for p in mixed_settings(batch)]
    if params == "weights":
        rng = np.random.default_rng(1)
        return [
            PAR_KL.replace(max_new_tokens=new, aligner_weights=tuple(rng.uniform(0.5, 1.5, 2)))
            for _ in range(batch)
        ]
    return params.replace(max_new_tokens=new)


def random_params(config: ModelConfig, seed: int):
    """O(1)-logit random weights (normal 0.1, norms near 1), drawn on the host."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        noise = rng.standard_normal(x.shape, np.float32)
        return jnp.asarray(
            1.0 + 0.2 * noise if "norm" in jax.tree_util.keystr(path) else 0.1 * noise
        )

    return jax.tree_util.tree_map_with_path(draw, abstract_params(config))


def models_for(name: str, trio) -> driver.Models:
    use_p, aligners = MODES[name][2]
    return driver.Models(trio[0] if use_p else None, tuple(trio[1 + i] for i in aligners))


def decode(name, trio, batch, prompt, new, seed=0) -> driver.DecodeRecord:
    """One batch through the driver: the first token alone, then every step in one call."""
    rng = np.random.default_rng(batch)
    prompts = rng.integers(1, VOCAB, (batch, prompt)).tolist()
    return driver.generate(
        models_for(name, trio),
        prompts,
        MODES[name][0],
        settings(name, batch, new),
        key=jax.random.key(seed),
        vocab_size=VOCAB,
        chunk=new,
    )


def bench_mode(name, trio, batch, prompt, new, repeats):
    t0 = time.perf_counter()
    decode(name, trio, batch, prompt, new)
    compile_s = time.perf_counter() - t0
    ttfts, steps = [], []
    for i in range(max(repeats, 9) if batch == 1 else repeats):  # batch 1 TTFT is short: more
        out = decode(name, trio, batch, prompt, new, seed=i)
        timing = out.batches[0]
        ttfts.append(timing.ttft_seconds)
        if i < repeats:
            steps.append((timing.seconds - timing.ttft_seconds) / timing.steps)
    step = statistics.median(steps)
    return {
        "config": f"{name}_b{batch}",
        "mode": name,
        "batch": batch,
        "prompt": prompt,
        "new_tokens": new,
        "ttft_s": statistics.median(ttfts),
        "step_s": step,
        "step_best_s": min(steps),  # the roofline's matmuls are best-of too
        "tokens_per_s": batch / step,
        "compile_s": compile_s,
        # Which rule shaped the tokens: par_kl's gate may send rows to either branch.
        "aligner_branch_rate": out.metrics()["aligner_branch_rate"],
    }


def bench_alternating(names, trio, batch, prompt, new, repeats):
    """Median step seconds of each configuration, their batches run in turn.

    The ratios between them (mixed vs uniform settings, two aligners vs the
    single models) then see the same machine load.
    """
    steps = {name: [] for name in names}
    for i in range(repeats):
        for name in names:
            timing = decode(name, trio, batch, prompt, new, seed=i).batches[0]
            steps[name].append((timing.seconds - timing.ttft_seconds) / timing.steps)
    return {name: statistics.median(s) for name, s in steps.items()}


def bench_ttft_pair(trio, prompt, new, repeats=15):
    """Median TTFT of proposal-only and par_kl at batch 1, measured alternately.

    Interleaving exposes both to the same load, so their ratio drifts less
    than that of two separate runs on a shared machine.
    """
    times = {name: [] for name in ("proposal_only", "par_kl")}
    for i in range(repeats + 1):
        for name in times:
            out = decode(name, trio, 1, prompt, 2, seed=i)
            if i:  # the first round compiles
                times[name].append(out.batches[0].ttft_seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_aligner_style(trio, prompt, new):
    """TTFT of a sequence-level corrector: P's full answer, then Q's prefill + first token."""
    tokens = np.random.default_rng(0).integers(1, VOCAB, prompt).tolist()
    key = jax.random.key(1)
    kw = dict(key=key, vocab_size=VOCAB, chunk=new)
    p_only, q_only = driver.Models(trio[0]), driver.Models(None, (trio[1],))

    def once():
        t0 = time.perf_counter()
        answer = driver.generate(
            p_only, [tokens], "proposal", SINGLE.replace(max_new_tokens=new), **kw
        )
        full = tokens + answer.tokens[0].tolist()
        driver.generate(q_only, [full], "aligner", SINGLE.replace(max_new_tokens=1), **kw)
        return time.perf_counter() - t0

    once()  # compile
    return statistics.median(once() for _ in range(3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced run, a few minutes")
    parser.add_argument("--pair", default="", help="PROPOSAL+ALIGNER presets at real shapes")
    parser.add_argument("--batches", default="1,8,32,64", help="--pair: batch sizes")
    parser.add_argument("--prompt", type=int, default=1024, help="--pair: prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="--pair: new tokens per row")
    parser.add_argument("--layers", type=int, default=0, help="--pair: keep N layers (CPU)")
    parser.add_argument("--dtype", default="bfloat16", help="--pair: weights and compute")
    parser.add_argument("--int8", action="store_true", help="--pair: add an int8 proposal")
    parser.add_argument("--repeats", type=int, default=2, help="--pair: timed batches each")
    args = parser.parse_args()
    if args.pair:
        from experiments import decode_pair

        summary = decode_pair.run(
            args.pair,
            batches=tuple(int(b) for b in args.batches.split(",")),
            prompt=args.prompt,
            new=args.new,
            layers=args.layers,
            dtype=args.dtype,
            int8=args.int8,
            repeats=args.repeats,
        )
        print(json.dumps(summary))
        return
    prompt = 128
    new = 32 if args.quick else 128
    batches = (1, 32) if args.quick else (1, 8, 32)
    b32_only = ("aligner_only", "aligner2_only", "par_kl_mixed", "weighted_product_2")
    names = (
        ("proposal_only", "aligner_only", "aligner2_only", "par_kl", "par_kl_mixed")
        + ("weighted_product_2",)
        if args.quick
        else tuple(MODES)
    )
    repeats = 2 if args.quick else 3
    raw = [random_params(PROPOSAL, 0), random_params(ALIGNER, 1), random_params(ALIGNER, 2)]
    sizes = {"proposal_params": count_params(raw[0]), "aligner_params": count_params(raw[1])}
    # The decoder's layer layout, arranged once as the CLI does (unrolled on CPU).
    arranged = driver.Models((raw[0], PROPOSAL), ((raw[1], ALIGNER), (raw[2], ALIGNER))).arranged()
    trio = (arranged.proposal, *arranged.aligners)
    print(json.dumps({"device": str(jax.devices()[0]), **sizes}), flush=True)
    peak = roofline.matmul_peak(PEAK_SHAPES)
    print(json.dumps({"config": "matmul_peak", "gflops": peak / 1e9}), flush=True)
    records = {}
    for batch in batches:
        for name in names:
            if batch != 32 and name in b32_only:
                continue
            r = bench_mode(name, trio, batch, prompt, new, repeats)
            use_p, aligners = MODES[name][2]
            configs = ([PROPOSAL] if use_p else []) + [ALIGNER] * len(aligners)
            fpt = sum(roofline.flops_per_token(c, prompt + new // 2) for c in configs)
            r["peak_fraction"] = fpt * r["tokens_per_s"] / peak
            records[r["config"]] = r
            print(json.dumps(r), flush=True)
    torch_tps, threads = torch_reference.par_kl_tokens_per_s(
        raw[:2],
        (PROPOSAL, ALIGNER),
        PAR_KL,
        VOCAB,
        prompt,
        32 if args.quick else new,
    )
    print(
        json.dumps(
            {
                "config": "torch_reference_par_kl_b1",
                "tokens_per_s": torch_tps,
                "torch_threads": threads,
            }
        )
    )
    # The two new ratios, from batches run in turn (compiled above).
    pair = bench_alternating(("par_kl", "par_kl_mixed"), trio, 32, prompt, new, 2 * repeats + 1)
    print(json.dumps({"config": "alternating_par_kl_mixed_b32", **pair}), flush=True)
    four = ("weighted_product_2", "proposal_only", "aligner_only", "aligner2_only")
    models_step = bench_alternating(four, trio, 32, prompt, new, repeats + 1)
    print(json.dumps({"config": "alternating_two_aligners_b32", **models_step}), flush=True)
    style = bench_aligner_style(trio, prompt, new)
    print(json.dumps({"config": "aligner_style_b1", "ttft_s": style}))
    ttft = bench_ttft_pair(trio, prompt, new)
    print(json.dumps({"config": "ttft_pair_b1", **{f"{k}_ttft_s": v for k, v in ttft.items()}}))
    # Other processes can depress one measurement of the peak: measure it again, keep the best.
    second = roofline.matmul_peak(PEAK_SHAPES)
    if second > peak:
        for r in records.values():
            r["peak_fraction"] *= peak / second
        peak = second
    print(json.dumps({"config": "matmul_peak_again", "gflops": second / 1e9}), flush=True)
    # The roofline of the batch-32 par_kl step on this machine: its weight matmuls, each
    # at the best speed measured for its own shape, plus one streaming read of both
    # float32 KV caches (all prompt + new slots). No decoder can beat this in float32.
    shapes = roofline.step_matmuls(PROPOSAL, 32) + roofline.step_matmuls(ALIGNER, 32)
    matmul_s = min(roofline.matmul_seconds(shapes), roofline.matmul_seconds(shapes))
    bandwidth = roofline.read_bandwidth()
    read_s = sum(roofline.cache_bytes(c, 32, prompt + new) for c in (PROPOSAL, ALIGNER))
    read_s /= bandwidth
    b32 = records["par_kl_b32"]
    bound_step = matmul_s + read_s
    bound = {
        "config": "roofline_par_kl_b32",
        "matmul_ms": 1e3 * matmul_s,
        "cache_read_ms": 1e3 * read_s,
        "read_gb_per_s": bandwidth / 1e9,
        "bound_step_ms": 1e3 * bound_step,
        "peak_fraction_bound": b32["peak_fraction"] * b32["step_s"] / bound_step,
    }
    print(json.dumps(bound))

    print(f"\n{'config':<24}{'ttft ms':>10}{'step ms':>10}{'tok/s':>10}{'peak':>8}")
    for r in records.values():
        print(
            f"{r['config']:<24}{1e3 * r['ttft_s']:>10.1f}{1e3 * r['step_s']:>10.2f}"
            f"{r['tokens_per_s']:>10.1f}{r['peak_fraction']:>8.2f}"
        )
    print(f"{'torch_reference_b1':<24}{'':>10}{1e3 / torch_tps:>10.2f}{torch_tps:>10.1f}")
    print(f"{'aligner_style_b1':<24}{1e3 * style:>10.1f}")
    print(f"{'roofline_b32':<24}{'':>10}{1e3 * bound_step:>10.2f}{32 / bound_step:>10.1f}", end="")
    print(f"{bound['peak_fraction_bound']:>8.2f}")
    step = lambda name: records[f"{name}_b32"]["step_s"]
    summary = {
        "par_kl_b32_vs_torch_reference": b32["tokens_per_s"] / torch_tps,
        "mixed_vs_uniform_tokens_per_s": pair["par_kl"] / pair["par_kl_mixed"],
        "two_aligner_step_vs_model_steps": models_step["weighted_product_2"]
        / sum(models_step[name] for name in four[1:]),
        "par_kl_b32_peak_fraction": b32["peak_fraction"],
        "par_kl_b32_peak_fraction_bound": bound["peak_fraction_bound"],
        "par_kl_b32_roofline_fraction": bound_step / b32["step_s"],
        "par_kl_b32_best_step_roofline_fraction": bound_step / b32["step_best_s"],
        "par_kl_vs_model_steps": (step("proposal_only") + step("aligner_only")) / b32["step_s"],
        "ttft_par_kl_vs_proposal_only": ttft["par_kl"] / ttft["proposal_only"],
        "ttft_aligner_style_vs_par_kl": style / records["par_kl_b1"]["ttft_s"],
        "par_kl_b32_tokens_per_s": b32["tokens_per_s"],
        "torch_reference_tokens_per_s": torch_tps,
        "matmul_peak_gflops": peak / 1e9,
        "quick": args.quick,
        **sizes,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
