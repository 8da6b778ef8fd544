"""How the experiment calls ram_jax's entry points, in this process where it can.

Training is `ram_jax.training.loop.run(config, workdir)`, the function behind
`python -m ram_jax.main`, on the config that `--config=FILE:arg
--config.a.b=v` would load; decoding is `ram_jax.generate.run` on parsed
flags, as `python -m ram_jax.generate` does. On 2 CPU cores a fresh
interpreter per stage (imports plus compilation) would cost more than most
stages. Proposal sampling is `ram_jax.sample_proposal.sample_file`, the
function behind `python -m ram_jax.sample_proposal`, with that command's
default (the reference's) sampling settings.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os

from experiments.configs import demo_proposal

CONFIGS = "experiments.configs"


def load_config(name: str, arg: str | None, overrides: dict):
    """`get_config(arg)` of experiments/configs/NAME.py with dotted-field overrides,
    as `--config=FILE:arg --config.a.b=v` gives the CLI."""
    config = importlib.import_module(f"{CONFIGS}.{name}").get_config(arg)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def train(name: str, arg: str | None, workdir: str, overrides: dict) -> dict:
    """One `python -m ram_jax.main --config=...:arg --workdir=...` run, in process."""
    from ram_jax.training import loop as train_loop

    config = load_config(name, arg, overrides)
    summary = train_loop.run(config, workdir)
    summary["trainable_params"] = _param_count(summary["export_dir"])
    return summary


def _param_count(export_dir: str) -> int:
    """Parameters in an HF export, read from the safetensors headers (tied weights once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(os.listdir(export_dir)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(export_dir, f), "numpy") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A method's answers and `ram_jax.generate`'s timings (compilation excluded)."""

    outputs: list[str]
    ttft_seconds: float  # median over batches: prompt in, first token out
    tokens_per_second: float
    batch_seconds: float  # mean wall time of one batch's whole answers


DECODE = dict(temperature=0.7, proposal_temperature=0.7, top_p=0.95, proposal_top_p=0.95)
NUM_CANDIDATES = 8
MAX_NEW_TOKENS = 32
BATCH_SIZE = 16


def generate(
    proposal: str, aligner: str | None, prompts_file: str, output: str, mode: str, seed: int
) -> Decoded:
    """One `python -m ram_jax.generate` run; see `_run_generate`."""
    return _run_generate(
        proposal=proposal,
        aligner=aligner,
        prompts=prompts_file,
        output=output,
        mode=mode,
        seed=seed,
        template=demo_proposal.TEMPLATE,
        batch_size=BATCH_SIZE,
        num_candidates=NUM_CANDIDATES,
        max_new_tokens=MAX_NEW_TOKENS,
        **DECODE,
    )


def _run_generate(**flags_kw) -> Decoded:
    """`python -m ram_jax.generate --k=v ...` in this process: its `run` on parsed flags.

    The command's flags persist between calls, so they are reset to their
    defaults before each parse (a flag absent from this call must not keep the
    previous call's value).
    """
    from ram_jax import generate as gen

    argv = ["ram_jax.generate"] + [f"--{k}={v}" for k, v in flags_kw.items() if v is not None]
    gen.FLAGS.unparse_flags()
    gen.FLAGS(argv)
    metrics = gen.run(gen.sampling_from_flags())
    with open(flags_kw["output"]) as f:
        outputs = [r["output"] for r in json.load(f)]
    batches = -(-metrics["num_prompts"] // metrics["batch_size"])
    # One batch's whole answers: what a sequence-level corrector waits for.
    warm_batches = max(batches - 1, 1)
    warm_seconds = metrics["wall_seconds"] - (metrics["first_batch_seconds"] if batches > 1 else 0)
    return Decoded(
        outputs=outputs,
        ttft_seconds=metrics["ttft_seconds"],
        tokens_per_second=metrics["tokens_per_second"],
        batch_seconds=warm_seconds / warm_batches,
    )


def sample_proposal(proposal: str, data: str, output: str, k: int, seed: int) -> None:
    """`python -m ram_jax.sample_proposal`: K proposal samples per aligned prompt."""
    from ram_jax import sample_proposal as sp
    from ram_jax.decoding.sampling import REFERENCE_NEGATIVES
    from ram_jax.models.tokenizer import load_tokenizer
    from ram_jax.training.model import load_model

    c = demo_proposal.get_config()
    if os.path.exists(output):
        os.remove(output)  # sample_proposal keeps an existing file; this run resamples
    p_config, p_params = load_model(proposal, "float32", "proposal")
    sp.sample_file(
        data,
        output,
        p_params=p_params,
        p_config=p_config,
        tokenizer=load_tokenizer(proposal),
        sampling=REFERENCE_NEGATIVES,
        settings=sp.Settings(
            num_samples=k,
            max_new_tokens=MAX_NEW_TOKENS,
            batch_size=32,
            seed=seed,
            prompt_template=c.data.prompt_template,
            max_prompt_length=c.data.max_prompt_length,
        ),
        restart=True,
    )
