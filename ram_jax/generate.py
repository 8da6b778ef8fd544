r"""Decode prompts with a proposal and (optionally) residual aligners.

Usage:
  python -m ram_jax.generate --proposal=/models/llama-3.1-8b \
    --aligner=/runs/ram-1b/export --prompts=alpaca_eval.json \
    --template=human_assistant --preset=reference \
    --temperature=0.7 --proposal_temperature=0.5 --output=outputs.json

`--proposal` / `--aligner` are HF model directories (config.json +
safetensors), or ram_jax training workdirs whose `export/` holds one; no
`--aligner` means proposal-only decoding. Several `--aligner`s (with one
`--aligner_weight` each) compose: `--mode=weighted_product`, or `par` /
`par_kl` over their pool. The output is AlpacaEval's format (a JSON list of
{instruction, output, generator}), written atomically; the metrics go to
`<output>.metrics.json` and to the last stdout line as one JSON object
(ttft_seconds, tokens_per_second, aligner_branch_rate, ...). Timings exclude
the first batch, which includes compilation, whenever there is more than one.
Finished batches are kept in `<output>.partial`: a killed run continues where
it stopped when rerun with the same input and flags (another job's partial
file is refused; `--restart` discards it).
This module only reads flags: `ram_jax.decoding.files.decode_file` does the work.
"""

from __future__ import annotations

import json

from absl import app, flags

from ram_jax import cli
from ram_jax.data import templates
from ram_jax.decoding import files
from ram_jax.decoding import sampling as S
from ram_jax.decoding.modes import MODES, get_mode, reference_mode
from ram_jax.decoding.resample import SeqSir
from ram_jax.training.model import DTYPES

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_PROPOSAL = flags.DEFINE_string(
    "proposal", None, "Proposal HF model directory.", required=True, flag_values=FLAGS
)
_ALIGNER = flags.DEFINE_multi_string(
    "aligner", [], "Aligner HF directory (repeatable); none: proposal only.", flag_values=FLAGS
)
_WEIGHT = flags.DEFINE_multi_float(
    "aligner_weight", [], "One weight >= 0 per --aligner (default 1 each).", flag_values=FLAGS
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "tokenizer.json (default: the proposal's).", flag_values=FLAGS
)
_PROMPTS = flags.DEFINE_string(
    "prompts", None, "JSON / JSONL; field `instruction` or `prompt`.", flag_values=FLAGS
)
_TEMPLATE = flags.DEFINE_string(
    "template",
    "raw",
    f"Prompt template: one of {sorted(templates.TEMPLATES)}, a string with {{prompt}}, or "
    "'chat' (the tokenizer's own chat template).",
    flag_values=FLAGS,
)
_ADD_BOS = flags.DEFINE_bool(
    "add_bos",
    None,
    "Start prompts with BOS (as the aligner's data.add_bos); unset: as the tokenizer does.",
    flag_values=FLAGS,
)
_ASSUME_SAME = flags.DEFINE_bool(
    "assume_same_tokenizer",
    False,
    "Decode with an aligner directory that holds no tokenizer.json, unchecked.",
    flag_values=FLAGS,
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output JSON (AlpacaEval format).", required=True, flag_values=FLAGS
)
_GENERATOR = flags.DEFINE_string(
    "generator", None, "`generator` field (default: from flags).", flag_values=FLAGS
)
_PRESET = flags.DEFINE_enum(
    "preset",
    "none",
    ["none", "reference"],
    "reference: the reference implementation's settings (par_kl, tau 0.1, top_p 0.9, proposal "
    "top_p 0.95, repetition penalty 1.05, FastChat processor order, par's EOS rule, 1024 new "
    "tokens, stop '\\n\\nHuman', outputs right-stripped); explicit flags override.",
    flag_values=FLAGS,
)
_MODE = flags.DEFINE_enum(
    "mode",
    None,
    sorted(MODES),
    "Decoding mode (README: Decoding). Default: proposal without --aligner, product with "
    "one, weighted_product with several (reference preset: par_kl).",
    flag_values=FLAGS,
)
_EOS_PRIORITY = flags.DEFINE_bool(
    "eos_priority", None, "par, mds: emit EOS when P's argmax is EOS.", flag_values=FLAGS
)
_CANDIDATES = flags.DEFINE_integer(
    "num_candidates", 1, "sir: candidates per token.", flag_values=FLAGS
)
_SEQ_SIR = flags.DEFINE_integer(
    "seq_sir", 0, "N > 0: resample one of N whole responses by Q(y|x).", flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per compiled batch.", flag_values=FLAGS)
_CHUNK = flags.DEFINE_integer(
    "chunk",
    16,
    "Decode steps per device call (stop strings are checked between).",
    flag_values=FLAGS,
)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.", flag_values=FLAGS)
_RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "Discard OUTPUT.partial (another job's batches) and start over.",
    flag_values=FLAGS,
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "auto", list(DTYPES), "Parameter dtype (auto: the checkpoint's).", flag_values=FLAGS
)
_INT8 = flags.DEFINE_bool(
    "int8_proposal",
    False,
    "Store the proposal's weights as int8 (per-channel scales; computed in --dtype). The "
    "aligners keep their dtype.",
    flag_values=FLAGS,
)
# Per-request settings: each flag is the `SamplingParams` field of its name.
_PARAM_FLAGS = {
    "temperature": flags.DEFINE_float(
        "temperature", 1.0, "Output T (0: greedy).", flag_values=FLAGS
    ),
    "proposal_temperature": flags.DEFINE_float(
        "proposal_temperature", 1.0, "Proposal temperature T_P.", flag_values=FLAGS
    ),
    "aligner_temperature": flags.DEFINE_float(
        "aligner_temperature", 1.0, "mds: aligner temperature T_Q.", flag_values=FLAGS
    ),
    "top_p": flags.DEFINE_float("top_p", 1.0, "Output top-p.", flag_values=FLAGS),
    "proposal_top_p": flags.DEFINE_float(
        "proposal_top_p", 1.0, "Proposal top-p (P's nucleus).", flag_values=FLAGS
    ),
    "top_k": flags.DEFINE_integer("top_k", 0, "Output top-k (0: off).", flag_values=FLAGS),
    "proposal_top_k": flags.DEFINE_integer(
        "proposal_top_k", 0, "Proposal top-k (0: off).", flag_values=FLAGS
    ),
    "repetition_penalty": flags.DEFINE_float(
        "repetition_penalty", 1.0, "HF repetition penalty (1: off).", flag_values=FLAGS
    ),
    "kl_threshold": flags.DEFINE_float(
        "kl_threshold", 0.1, "par_kl: use par where KL(P||Q) <= this.", flag_values=FLAGS
    ),
    "filter_order": flags.DEFINE_enum(
        "filter_order",
        "top_k_first",
        list(S.FILTER_ORDERS),
        "Output top-k/top-p order.",
        flag_values=FLAGS,
    ),
    "max_new_tokens": flags.DEFINE_integer(
        "max_new_tokens", 256, "Most tokens generated per prompt.", flag_values=FLAGS
    ),
    "stop": flags.DEFINE_multi_string(
        "stop", ["\n\nHuman"], "Stop strings (repeatable).", flag_values=FLAGS
    ),
    "rstrip": flags.DEFINE_bool(
        "rstrip", False, "Strip trailing whitespace from outputs.", flag_values=FLAGS
    ),
}


def default_mode(num_aligners: int) -> str:
    """The mode when --mode is not given: every --aligner takes part (none is loaded unused)."""
    return ("proposal", "product")[num_aligners] if num_aligners < 2 else "weighted_product"


def settings_from_flags():
    """`(mode, SamplingParams, SeqSir | None)` of the command line, validated before loading."""
    given = {k: f.value for k, f in _PARAM_FLAGS.items() if FLAGS[f.name].present}
    if _WEIGHT.value:
        given["aligner_weights"] = tuple(_WEIGHT.value)
    if _PRESET.value == "reference":
        params = S.REFERENCE.replace(**given)
        name = _MODE.value or "par_kl"
        mode = reference_mode(name)
    else:
        params = S.SamplingParams(**{**{k: f.value for k, f in _PARAM_FLAGS.items()}, **given})
        mode = get_mode(_MODE.value or default_mode(len(_ALIGNER.value)))
    fields = {}
    if _EOS_PRIORITY.value is not None:
        fields["eos_priority"] = _EOS_PRIORITY.value
    if FLAGS["num_candidates"].present:
        fields["num_candidates"] = _CANDIDATES.value
    if fields:
        mode = get_mode(mode.name, **{**vars(mode), **fields})
    for flag in (_BATCH, _CHUNK):
        if flag.value < 1:
            raise ValueError(f"--{flag.name}={flag.value} must be >= 1.")
    if _WEIGHT.value and len(_WEIGHT.value) != len(_ALIGNER.value):
        raise ValueError(
            f"{len(_WEIGHT.value)} --aligner_weight for {len(_ALIGNER.value)} --aligner; "
            "give one weight per aligner (or none)."
        )
    return mode, params, SeqSir(_SEQ_SIR.value) if _SEQ_SIR.value else None


def main(argv):
    del argv
    if not _PROMPTS.value:
        raise app.UsageError("--prompts is required (a JSON or JSONL file).")
    mode, params, seq_sir = settings_from_flags()
    needed = max(mode.min_aligners, 1 if seq_sir else 0)
    if len(_ALIGNER.value) < needed:
        raise ValueError(
            f"--mode={mode.name} needs --aligner (a trained aligner directory); "
            "or use --mode=proposal."
        )
    _, metrics = files.decode_file(
        proposal=_PROPOSAL.value,
        aligners=_ALIGNER.value,
        prompts=_PROMPTS.value,
        output=_OUTPUT.value,
        mode=mode,
        params=params,
        seq_sir=seq_sir,
        template=_TEMPLATE.value,
        add_bos=_ADD_BOS.value,
        assume_same_tokenizer=_ASSUME_SAME.value,
        tokenizer=_TOKENIZER.value,
        dtype=_DTYPE.value,
        int8_proposal=_INT8.value,
        batch_size=_BATCH.value,
        chunk=_CHUNK.value,
        seed=_SEED.value,
        generator=_GENERATOR.value,
        restart=_RESTART.value,
    )
    print(
        f"decoded {metrics['num_prompts']} prompts ({metrics['generated_tokens']} tokens) with "
        f"{metrics['mode']}: ttft {metrics['ttft_seconds']:.3f}s, "
        f"{metrics['tokens_per_second']:.1f} tokens/s, aligner branch rate "
        f"{metrics['aligner_branch_rate']:.2f} (first token "
        f"{metrics['aligner_branch_rate_first_token']:.2f}) -> {metrics['output']}"
    )
    print(json.dumps(metrics))


if __name__ == "__main__":
    cli.run(main, FLAGS)
