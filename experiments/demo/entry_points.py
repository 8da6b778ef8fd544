"""How the experiment calls ram_jax's entry points, in this process where it can.

Training is `ram_jax.training.loop.run(config, workdir)`, the function behind
`python -m ram_jax.main`, on the config that `--config=FILE:arg
--config.a.b=v` would load; decoding is `ram_jax.decoding.files.decode_file`,
the function behind `python -m ram_jax.generate`, called with arguments. On
2 CPU cores a fresh interpreter per stage (imports plus compilation) would
cost more than most stages. Proposal sampling is `ram_jax.sample_proposal.sample_file`, the
function behind `python -m ram_jax.sample_proposal`, with that command's
default (the reference's) sampling settings.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Sequence

from experiments.configs import demo_proposal
from ram_jax.decoding.sampling import SamplingParams

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
    """A method's answers and the driver's timings (compilation excluded)."""

    outputs: list[str]
    ttft_seconds: float  # median over batches: prompt in, first token out
    tokens_per_second: float
    batch_seconds: float  # mean wall time of one batch's whole answers


NUM_CANDIDATES = 8
MAX_NEW_TOKENS = 32
BATCH_SIZE = 16
DECODE = SamplingParams(
    temperature=0.7,
    proposal_temperature=0.7,
    top_p=0.95,
    proposal_top_p=0.95,
    max_new_tokens=MAX_NEW_TOKENS,
    stop=("\n\nHuman",),
)
# How a method's decoding name maps to the library: a registered mode with these
# fields, or `seq_sir` over that token mode's candidates.
MODE_FIELDS = {"sir": {"num_candidates": NUM_CANDIDATES}}
SEQUENCE_RESAMPLED = {"seq_sir": "proposal"}


def generate(
    proposal: str,
    aligners: Sequence[str],
    prompts_file: str,
    output: str,
    decoding: str,
    seed: int,
    params: SamplingParams | Sequence[SamplingParams] = DECODE,
    int8_proposal: bool = False,
) -> Decoded:
    """One `python -m ram_jax.generate` run, as `decode_file` with arguments."""
    from ram_jax.decoding import files
    from ram_jax.decoding.modes import get_mode
    from ram_jax.decoding.resample import SeqSir

    mode = get_mode(SEQUENCE_RESAMPLED.get(decoding, decoding), **MODE_FIELDS.get(decoding, {}))
    texts, metrics = files.decode_file(
        proposal=proposal,
        aligners=aligners,
        prompts=prompts_file,
        output=output,
        mode=mode,
        params=params,
        seq_sir=SeqSir(NUM_CANDIDATES) if decoding in SEQUENCE_RESAMPLED else None,
        template=demo_proposal.TEMPLATE,
        int8_proposal=int8_proposal,
        batch_size=BATCH_SIZE,
        seed=seed,
        progress=False,
        restart=True,  # a rerun retrains the models: a killed run's batches are stale
    )
    return Decoded(
        outputs=texts,
        ttft_seconds=metrics["ttft_seconds"],
        tokens_per_second=metrics["tokens_per_second"],
        batch_seconds=metrics["batch_seconds"],
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
