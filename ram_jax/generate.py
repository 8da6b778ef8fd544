r"""Decode prompts with a proposal and (optionally) a residual aligner.

Usage:
  python -m ram_jax.generate --proposal=/models/llama-3.1-8b \
    --aligner=/runs/ram-1b/export --prompts=alpaca_eval.json \
    --template=human_assistant --mode=par_kl --preset=reference \
    --temperature=0.7 --proposal_temperature=0.5 --output=outputs.json

`--proposal` / `--aligner` are HF model directories (config.json +
safetensors), or a ram_jax training workdir whose `export/` holds one; no
`--aligner` means proposal-only decoding. The output is AlpacaEval's format (a
JSON list of {instruction, output, generator}), written atomically; timing
goes to `<output>.metrics.json` and to the last stdout line as one JSON object
(ttft_seconds, tokens_per_second, ...). Timings exclude the first batch, which
includes compilation, whenever there is more than one batch.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from tqdm import tqdm

from ram_jax import cli, io
from ram_jax.data import templates
from ram_jax.decoding import batching, stream
from ram_jax.decoding import decoder as D
from ram_jax.decoding import sampling as S
from ram_jax.models import tokenizer as T
from ram_jax.models.tokenizer_check import check_model_tokenizers
from ram_jax.models.tokenizer_config import load_tokenizer_config
from ram_jax.training.model import DTYPES, load_model, model_dir

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_PROPOSAL = flags.DEFINE_string(
    "proposal", None, "Proposal HF model directory.", required=True, flag_values=FLAGS
)
_ALIGNER = flags.DEFINE_string(
    "aligner", None, "Aligner HF directory; absent: proposal only.", flag_values=FLAGS
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
    "reference: the reference implementation's defaults (par_kl, tau 0.1, top_p 0.9, proposal "
    "top_p 0.95, repetition penalty 1.05, FastChat processor order); explicit flags override.",
    flag_values=FLAGS,
)
_MODE = flags.DEFINE_enum(
    "mode", "proposal", list(S.MODES), "Decoding mode (RAM.md section 3).", flag_values=FLAGS
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 1.0, "Output temperature (0: greedy).", flag_values=FLAGS
)
_P_TEMPERATURE = flags.DEFINE_float(
    "proposal_temperature", 1.0, "Proposal temperature T_P.", flag_values=FLAGS
)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Output top-p.", flag_values=FLAGS)
_P_TOP_P = flags.DEFINE_float(
    "proposal_top_p", 1.0, "Proposal top-p (P's nucleus).", flag_values=FLAGS
)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Output top-k (0: off).", flag_values=FLAGS)
_P_TOP_K = flags.DEFINE_integer("proposal_top_k", 0, "Proposal top-k (0: off).", flag_values=FLAGS)
_REP = flags.DEFINE_float(
    "repetition_penalty", 1.0, "HF repetition penalty (1: off).", flag_values=FLAGS
)
_KL = flags.DEFINE_float(
    "kl_threshold", 0.1, "par_kl: use par where KL(P||Q) <= this.", flag_values=FLAGS
)
_CANDIDATES = flags.DEFINE_integer(
    "num_candidates", 1, "sir: n per token; seq_sir: N.", flag_values=FLAGS
)
_EOS_PRIORITY = flags.DEFINE_bool(
    "eos_priority", False, "par: emit EOS when P's argmax is EOS.", flag_values=FLAGS
)
_MAX_NEW = flags.DEFINE_integer(
    "max_new_tokens", 256, "Tokens to generate per prompt.", flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per compiled batch.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.", flag_values=FLAGS)
_STOP = flags.DEFINE_multi_string(
    "stop", ["\n\nHuman"], "Stop strings (repeatable).", flag_values=FLAGS
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "auto", list(DTYPES), "Parameter dtype (auto: the checkpoint's).", flag_values=FLAGS
)

_SAMPLING_FLAGS = {
    "mode": _MODE,
    "temperature": _TEMPERATURE,
    "proposal_temperature": _P_TEMPERATURE,
    "top_p": _TOP_P,
    "proposal_top_p": _P_TOP_P,
    "top_k": _TOP_K,
    "proposal_top_k": _P_TOP_K,
    "repetition_penalty": _REP,
    "kl_threshold": _KL,
    "num_candidates": _CANDIDATES,
    "eos_priority": _EOS_PRIORITY,
}


def sampling_from_flags() -> S.SamplingConfig:
    """The SamplingConfig of the command line (validated before anything loads)."""
    if _PRESET.value == "reference":
        given = {k: f.value for k, f in _SAMPLING_FLAGS.items() if FLAGS[f.name].present}
        return S.REFERENCE.replace(**given)
    return S.SamplingConfig(**{k: f.value for k, f in _SAMPLING_FLAGS.items()})


def read_prompts(path: str) -> list[str]:
    """Instructions from a JSON list or JSONL file (field `instruction` or `prompt`)."""
    out = []
    for where, row in io.read_objects(path):
        value = row.get("instruction", row.get("prompt"))
        if not isinstance(value, str):
            raise io.DataError(
                f"{where}: record has no string field 'instruction' or 'prompt' "
                f"(fields: {sorted(row)})."
            )
        out.append(value)
    return out


def run(sampling: S.SamplingConfig) -> dict:
    """Loads models and prompts, decodes, writes outputs; returns the metrics."""
    if _BATCH.value < 1:
        raise ValueError(f"--batch_size={_BATCH.value} must be >= 1.")
    io.check_output_path(_OUTPUT.value, "--output")
    templates.resolve(_TEMPLATE.value)
    instructions = read_prompts(_PROMPTS.value)
    p_dir = model_dir(_PROPOSAL.value) or _PROPOSAL.value
    tok = T.load_tokenizer(_TOKENIZER.value or p_dir)
    tok_config = load_tokenizer_config(_TOKENIZER.value or p_dir, tok)
    templates.check(_TEMPLATE.value, tok_config.chat_template)
    q_dir = (model_dir(_ALIGNER.value) or _ALIGNER.value) if _ALIGNER.value else None
    if q_dir:
        check_model_tokenizers(tok, {"aligner": q_dir}, assume_same=_ASSUME_SAME.value)
    if sampling.needs_aligner and q_dir is None:
        raise ValueError(f"--mode={sampling.mode} needs --aligner; or use --mode=proposal.")
    p_config, p_params = load_model(p_dir, _DTYPE.value, "--proposal")
    q_config, q_params = load_model(q_dir, _DTYPE.value, "--aligner") if q_dir else (None,) * 2
    # The decoder's layer layout, once (on CPU: per-layer arrays; no copy per batch).
    p_params, q_params = D.arrange_layers(p_params, q_params, None)
    vocab = T.tokenizer_length(tok)
    for name, config in (("proposal", p_config), ("aligner", q_config)):
        if config is not None:
            T.check_vocab_fits(config, tok, name)
    eos = T.pair_eos_ids(tok, p_config, q_config, tok_config)
    pad = tok.token_to_id(T.PAD_TOKEN)
    pad = eos[0] if pad is None else pad
    bos = T.prompt_bos_id(tok, tok_config, _ADD_BOS.value, _TEMPLATE.value, p_config)
    prompts = templates.encode_prompts(
        tok,
        instructions,
        _TEMPLATE.value,
        bos_id=bos,
        chat_template=tok_config.chat_template,
        special_tokens=tok_config.special_tokens,
    )
    configs = [c for c in (p_config, q_config) if c is not None]
    batching.check_prompts(prompts, _MAX_NEW.value, configs, vocab)

    width, new = _BATCH.value, _MAX_NEW.value
    length = batching.bucket_length(max(len(p) for p in prompts))
    key = jax.random.key(_SEED.value)
    # As `decode.generate`: prompt r's key is split(key, P)[r] (seq_sir included), so
    # outputs do not depend on --batch_size; rows filling the last batch reuse its first
    # key (and are dropped).
    row_keys = jax.random.split(key, len(prompts))
    common = dict(vocab_size=vocab, q_params=q_params, q_config=q_config, eos_ids=eos, pad_id=pad)
    tokens, lengths, ttfts, seconds = [], [], [], []
    bar = tqdm(total=len(prompts), unit="prompt", desc=f"decode {sampling.mode}")
    for start in range(0, len(prompts), width):
        chunk = prompts[start : start + width]
        t0 = time.perf_counter()
        if sampling.mode == "seq_sir":
            out = D.generate(
                p_params,
                p_config,
                chunk,
                sampling,
                key=key,
                prompt_keys=row_keys[start : start + width],
                max_new_tokens=new,
                batch_size=width,
                **common,
            )
            ttfts.append(time.perf_counter() - t0)
            toks, lens = out["tokens"], out["lengths"]
        else:
            tokens_BxT, mask_BxT = batching.left_pad(chunk, length, pad, rows=width)
            keys = row_keys[start : start + width]
            keys = keys[np.where(np.arange(width) < len(chunk), np.arange(width), 0)]
            parts = []
            for part in stream.stream(
                p_params,
                p_config,
                tokens_BxT,
                mask_BxT,
                keys,
                sampling,
                max_new_tokens=new,
                **common,
            ):
                if not parts:
                    ttfts.append(time.perf_counter() - t0)
                parts.append(part)
            toks = np.concatenate([p["tokens"] for p in parts], axis=1)[: len(chunk)]
            lens = np.concatenate([p["live"] for p in parts], axis=1).sum(1)[: len(chunk)]
        toks = np.pad(toks, ((0, 0), (0, new - toks.shape[1])), constant_values=pad)
        seconds.append(time.perf_counter() - t0)
        tokens.append(toks)
        lengths.append(lens)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{int(np.sum(lens)) / seconds[-1]:.1f}")
    bar.close()
    tokens_PxN, lengths_P = np.concatenate(tokens), np.concatenate(lengths)
    texts = batching.decode_texts(tok, tokens_PxN, lengths_P, eos, _STOP.value)
    generator = _GENERATOR.value or (
        f"ram_jax-{sampling.mode}-{os.path.basename(os.path.normpath(p_dir))}"
        + (f"+{os.path.basename(os.path.normpath(q_dir))}" if q_dir else "")
    )
    records = [
        {"instruction": i, "output": t, "generator": generator}
        for i, t in zip(instructions, texts, strict=True)
    ]
    io.write_json(_OUTPUT.value, records)
    # Timings skip the first batch (compilation) when later batches exist.
    warm = slice(1, None) if len(seconds) > 1 else slice(None)
    batch_tokens = [int(np.sum(x)) for x in lengths]
    metrics = {
        "mode": sampling.mode,
        "num_prompts": len(prompts),
        "batch_size": width,
        "generated_tokens": int(np.sum(lengths_P)),
        "ttft_seconds": float(np.median(ttfts[warm])),
        "tokens_per_second": float(np.sum(batch_tokens[warm]) / np.sum(seconds[warm])),
        "first_batch_seconds": seconds[0],
        "timings_include_compile": len(seconds) == 1,
        "wall_seconds": float(np.sum(seconds)),
        "output": _OUTPUT.value,
        "sampling": {k: getattr(sampling, k) for k in _SAMPLING_FLAGS},
    }
    io.write_json(_OUTPUT.value + ".metrics.json", metrics)
    return metrics


def main(argv):
    del argv
    if not _PROMPTS.value:
        raise app.UsageError("--prompts is required (a JSON or JSONL file).")
    sampling = sampling_from_flags()
    metrics = run(sampling)
    print(
        f"decoded {metrics['num_prompts']} prompts ({metrics['generated_tokens']} tokens) with "
        f"{metrics['mode']}: ttft {metrics['ttft_seconds']:.3f}s, "
        f"{metrics['tokens_per_second']:.1f} tokens/s -> {metrics['output']}"
    )
    print(json.dumps(metrics))


if __name__ == "__main__":
    cli.run(main, FLAGS)
