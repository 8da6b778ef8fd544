r"""Decoding at the paper's model sizes: random weights at real shapes against the HBM roofline.

  python experiments/bench_decode.py --pair=llama-3.1-8b+llama-3.2-1b [--int8] \
      [--batches=1,8,32,64] [--prompt=1024] [--new=64] [--layers=N] [--dtype=bfloat16]

The proposal and the aligner of a pair (`ram_jax.models.config` presets) get
random weights drawn on the device in the compute dtype (bf16: no downloads,
no float32 copy), then decode through `ram_jax.decoding.driver.generate` as
the CLI does, with every row running to `--new` tokens (no EOS). Per batch:

  ttft     prompts of `--prompt` tokens in, first token on the host (the
           prefill of each model and one draw); median of `--repeats` after
           a compiling run.
  step     the batch's time after its first token / its steps; tokens/s =
           batch / step.
  roofline the least time a step can take when it must read every weight once
           (an untied input embedding only by the rows looked up) and each
           model's KV cache at the step's context (prompt + half the new
           tokens on average): bytes / the device's memory bandwidth.
           `roofline_fraction` = that time / the measured step.

Modes: `par_kl` (the reference's settings, proposal + aligner) and
`proposal` (the proposal alone, the baseline whose cost RAM adds to);
`--int8` adds both at batch 1 with the proposal's weights stored as int8
(`ram_jax.models.quantize`). Bandwidths come from `BANDWIDTH` (vendor
figures, matched against the device kind); on a CPU, or any device not in the
table, the streaming read rate measured here (`roofline.read_bandwidth`).

`--layers=N` keeps N layers of each model (every other shape real), so a CPU
can run the code path; its absolute numbers say nothing about a GPU's. The
last line is one JSON object: the headline ratios and the targets met.
"""

from __future__ import annotations

import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from experiments import roofline
from ram_jax.decoding import driver
from ram_jax.decoding.sampling import REFERENCE, SamplingParams
from ram_jax.models.config import ModelConfig, get_preset
from ram_jax.models.quantize import quantize_int8, weight_bytes
from ram_jax.models.transformer import abstract_params

# HBM bytes/s per chip (vendor figures), matched in order against `device_kind`.
BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100", 3.35e12),  # SXM (HBM3)
    ("TPU v5 lite", 819e9),  # v5e
    ("TPU v4", 1.2e12),
)
PAR_KL = REFERENCE.replace(stop=(), rstrip=False)
PROPOSAL = SamplingParams(temperature=0.7, top_p=0.9)
# name: (mode, settings, with the aligner)
MODES = {"par_kl": ("par_kl", PAR_KL, True), "proposal": ("proposal", PROPOSAL, False)}
# The targets on an H100 / H200 (8B + 1B): ratio name -> (bound, at least or at most).
TARGETS = {
    "par_kl_b1_roofline_fraction": (0.70, ">="),
    "proposal_b1_roofline_fraction": (0.75, ">="),
    "b64_step_vs_b1": (1.5, "<="),
    "ttft_par_kl_vs_proposal_b1": (1.2, "<="),
    "int8_step_vs_bf16_b1": (0.65, "<="),
}


def pair_configs(pair: str, layers: int = 0, dtype: str = "bfloat16"):
    """`(proposal, aligner)` configs of 'PROPOSAL+ALIGNER' presets, `layers` > 0 keeps that many."""
    names = pair.split("+")
    if len(names) != 2:
        raise ValueError(f"--pair={pair!r}: give two presets as PROPOSAL+ALIGNER.")
    configs = []
    for name in names:
        config = get_preset(name, dtype=dtype, param_dtype=dtype)
        configs.append(config.replace(num_layers=layers) if layers > 0 else config)
    return tuple(configs)


def random_weights(config: ModelConfig, seed: int):
    """normal(0.02) weights and unit norms in the config's dtype, drawn on the device
    (one jitted function: no float32 copy of the model is ever held)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract_params(config))

    @jax.jit
    def draw(key):
        out = []
        for k, (path, x) in zip(jax.random.split(key, len(leaves)), leaves, strict=True):
            if "norm" in jax.tree_util.keystr(path):
                out.append(jnp.ones(x.shape, x.dtype))
            else:
                out.append((0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype))
        return jax.tree_util.tree_unflatten(tree, out)

    return draw(jax.random.key(seed))


def cache_bytes(config: ModelConfig, batch: int, context: float) -> float:
    """Bytes of keys and values one step reads at `context` slots (the cache holds the
    compute dtype)."""
    per_slot = 2 * config.num_layers * config.num_kv_heads * config.head_dim
    return per_slot * batch * context * jnp.dtype(config.jnp_dtype).itemsize


def step_weight_bytes(params, config: ModelConfig) -> int:
    """Weight bytes one decode step reads: all but an untied input embedding, of
    which a step reads only its rows (a tied one is read whole, as the LM head)."""
    embed = 0 if config.tie_embeddings else weight_bytes(params["embed"])
    return weight_bytes(params) - embed


def bandwidth(device) -> tuple[float, str]:
    """(bytes/s, where it came from) for `device`: the table, else measured here."""
    kind = device.device_kind
    for name, value in BANDWIDTH:
        if name in kind:
            return value, f"table ({name})"
    return roofline.read_bandwidth(), "measured (streaming read)"


def decode(models, mode, batch, prompt, new, vocab, seed):
    """One batch through the driver; every row decodes `new` tokens (no EOS)."""
    rng = np.random.default_rng(batch)
    name, params, _ = MODES[mode]
    return driver.generate(
        models,
        rng.integers(1, vocab, (batch, prompt)).tolist(),
        name,
        params.replace(max_new_tokens=new),
        key=jax.random.key(seed),
        vocab_size=vocab,
        chunk=new,
    )


def bench(models, mode, batch, prompt, new, vocab, repeats, bytes_per_s) -> dict:
    """Median TTFT and step of `repeats` batches after a compiling one, with the roofline."""
    decode(models, mode, batch, prompt, new, vocab, seed=0)
    ttfts, steps = [], []
    for i in range(repeats):
        timing = decode(models, mode, batch, prompt, new, vocab, seed=1 + i).batches[0]
        ttfts.append(timing.ttft_seconds)
        steps.append((timing.seconds - timing.ttft_seconds) / max(timing.steps, 1))
    step = statistics.median(steps)
    context = prompt + new / 2
    pairs = zip(models.params, models.configs, strict=True)
    weights = sum(step_weight_bytes(p, c) for p, c in pairs if p is not None)
    caches = sum(cache_bytes(c, batch, context) for c in models.configs if c is not None)
    bound = (weights + caches) / bytes_per_s
    return {
        "mode": mode,
        "batch": batch,
        "prompt": prompt,
        "new_tokens": new,
        "ttft_s": statistics.median(ttfts),
        "step_s": step,
        "tokens_per_s": batch / step,
        "weight_bytes": weights,
        "cache_read_bytes": caches,
        "roofline_step_s": bound,
        "roofline_fraction": bound / step,
    }


def targets(records: dict) -> tuple[dict, dict]:
    """(measured ratios, which targets they meet) from the records by config name."""
    ratios = {}
    get = lambda name, key: records[name][key] if name in records else None
    ratios["par_kl_b1_roofline_fraction"] = get("par_kl_b1", "roofline_fraction")
    ratios["proposal_b1_roofline_fraction"] = get("proposal_b1", "roofline_fraction")
    if "par_kl_b64" in records and "par_kl_b1" in records:
        ratios["b64_step_vs_b1"] = get("par_kl_b64", "step_s") / get("par_kl_b1", "step_s")
    if "proposal_b1" in records and "par_kl_b1" in records:
        ratios["ttft_par_kl_vs_proposal_b1"] = get("par_kl_b1", "ttft_s") / get(
            "proposal_b1", "ttft_s"
        )
    if "int8_par_kl_b1" in records and "par_kl_b1" in records:
        ratios["int8_step_vs_bf16_b1"] = get("int8_par_kl_b1", "step_s") / get(
            "par_kl_b1", "step_s"
        )
        ratios["int8_proposal_step_vs_bf16_b1"] = get("int8_proposal_b1", "step_s") / get(
            "proposal_b1", "step_s"
        )
    ratios = {k: v for k, v in ratios.items() if v is not None}
    met = {}
    for name, (bound, how) in TARGETS.items():
        if name in ratios:
            met[name] = ratios[name] >= bound if how == ">=" else ratios[name] <= bound
    return ratios, met


def run(
    pair: str,
    *,
    batches=(1, 8, 32, 64),
    prompt: int = 1024,
    new: int = 64,
    layers: int = 0,
    dtype: str = "bfloat16",
    int8: bool = False,
    repeats: int = 2,
    modes=tuple(MODES),
    configs: tuple[ModelConfig, ModelConfig] | None = None,
    emit=print,
) -> dict:
    """The benchmark; `emit` gets one JSON line per configuration; returns the summary.

    `modes`: a subset of `MODES`. `configs` replaces the presets of `pair` (a
    test's tiny shapes).
    """
    if repeats < 1 or new < 2 or prompt < 1 or not batches:
        raise ValueError("need repeats >= 1, new >= 2, prompt >= 1 and at least one batch.")
    p_config, q_config = configs or pair_configs(pair, layers, dtype)
    vocab = min(p_config.vocab_size, q_config.vocab_size)
    bytes_per_s, source = bandwidth(jax.devices()[0])
    p_params, q_params = random_weights(p_config, 0), random_weights(q_config, 1)
    sets = {"": driver.Models((p_params, p_config), ((q_params, q_config),)).arranged()}
    if int8:
        p_int8 = quantize_int8(p_params)
        sets["int8_"] = driver.Models((p_int8, p_config), sets[""].aligners).arranged()
    head = {
        "pair": pair,
        "device": jax.devices()[0].device_kind,
        "bandwidth_bytes_per_s": bytes_per_s,
        "bandwidth_source": source,
        "layers": [p_config.num_layers, q_config.num_layers],
        "proposal_weight_bytes": weight_bytes(p_params),
        "aligner_weight_bytes": weight_bytes(q_params),
    }
    if int8:
        head["int8_proposal_weight_bytes"] = weight_bytes(sets["int8_"].proposal[0])
    emit(json.dumps(head))
    records = {}
    for prefix, models in sets.items():
        for batch in batches if not prefix else (1,):
            for mode in modes:
                use = models if MODES[mode][2] else driver.Models(models.proposal)
                r = bench(use, mode, batch, prompt, new, vocab, repeats, bytes_per_s)
                r["config"] = f"{prefix}{mode}_b{batch}"
                records[r["config"]] = r
                emit(json.dumps(r))
    ratios, met = targets(records)
    return {**head, **ratios, "targets": met, "dtype": p_config.dtype}
