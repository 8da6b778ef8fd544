r"""Synthesise the aligner's negatives: K proposal samples per training prompt.

  python -m ram_jax.sample_proposal --input=train.jsonl --output=train_sampled.jsonl \
      --proposal=/ckpt/Llama-3.1-8B-warmup [--num_samples=1 --batch_size=16]

Reads a training file (rows with 'prompt', or Anthropic-HH conversations),
decodes with the proposal alone (`ram_jax.decoding.driver.generate`, mode 'proposal')
using the reference's settings by default (temperature 0.5, top_p 0.95,
repetition penalty 1.05, FastChat processor order, stop at "\n\nHuman"), and
writes every input row unchanged plus a 'sampling' field (a string for K = 1,
a list of K strings otherwise). Use the same `--prompt_template`, `--add_bos`
and `--max_prompt_length` as training (`data.prompt_template`, ...) so the samples
continue exactly the prompts the aligner sees.

Progress is appended batch by batch to OUTPUT.partial; rerunning the same
command skips the rows already done, and the finished file is renamed into
place atomically. Sample b of row i uses a key derived from (seed, batch
start), so a resumed run writes the same samples as an uninterrupted one.
`--proposal` is an HF directory or a ram_jax training workdir.
"""

from __future__ import annotations

import json
import os

import jax
from absl import flags
from tqdm import tqdm

from ram_jax import cli
from ram_jax.data import read_rows, templates
from ram_jax.decoding import driver
from ram_jax.decoding.sampling import REFERENCE_NEGATIVES, REFERENCE_STOPS, SamplingParams
from ram_jax.models.tokenizer import (
    bos_token_id,
    eos_token_ids,
    load_tokenizer,
    tokenizer_length,
)
from ram_jax.training.model import load_model

PARTIAL = ".partial"


def _done_rows(partial: str, batch_size: int) -> int:
    """Whole batches already in the partial file; anything after them is cut off."""
    if not os.path.exists(partial):
        return 0
    with open(partial, "rb") as f:
        lines = f.read().split(b"\n")
    complete = lines[:-1]  # the text after the last newline is unfinished
    keep = (len(complete) // batch_size) * batch_size
    with open(partial, "wb") as f:
        f.write(b"".join(ln + b"\n" for ln in complete[:keep]))
    return keep


def sample_file(
    input_path: str,
    output_path: str,
    *,
    p_params,
    p_config,
    tokenizer,
    sampling: SamplingParams,
    num_samples: int = 1,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    stops: tuple[str, ...] = REFERENCE_STOPS,
    prompt_template: str = "raw",
    add_bos: bool = False,
    max_prompt_length: int = 1024,
    fmt: str = "auto",
) -> int:
    """Writes `output_path` (input rows + 'sampling'); returns the number of rows sampled now."""
    if os.path.exists(output_path):
        print(f"{output_path} exists; nothing to do (delete it to resample).")
        return 0
    rows = read_rows(input_path, fmt)
    bos = bos_token_id(tokenizer, p_config) if add_bos else None
    prompts = templates.encode_prompts(
        tokenizer,
        [r.prompt for r in rows],
        prompt_template,
        bos_id=bos,
        max_length=max_prompt_length,
    )
    vocab = tokenizer_length(tokenizer)
    eos = eos_token_ids(tokenizer, p_config)
    partial = output_path + PARTIAL
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    start = _done_rows(partial, batch_size)
    base_key = jax.random.key(seed)
    bar = tqdm(total=len(rows), initial=start, desc="sample", unit="prompt")
    with open(partial, "a", encoding="utf-8") as out:
        for first in range(start, len(rows), batch_size):
            batch = prompts[first : first + batch_size]
            samples = driver.generate(
                driver.Models((p_params, p_config)),
                [p for p in batch for _ in range(num_samples)],
                "proposal",
                sampling.replace(max_new_tokens=max_new_tokens, stop=tuple(stops)),
                key=jax.random.fold_in(base_key, first),
                vocab_size=vocab,
                eos_ids=eos,
                batch_size=batch_size * num_samples,
                tokenizer=tokenizer,
            ).texts
            lines = []
            for i in range(len(batch)):
                got = samples[i * num_samples : (i + 1) * num_samples]
                obj = dict(rows[first + i].source)
                obj["sampling"] = got[0] if num_samples == 1 else got
                lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(batch))
    bar.close()
    os.replace(partial, output_path)
    print(f"done: {len(rows) - start} prompts x {num_samples} samples -> {output_path}")
    return len(rows) - start


FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_INPUT = flags.DEFINE_string(
    "input", None, "Training rows (.jsonl/.json; rows or HH format).", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to write the rows with 'sampling'.", flag_values=FLAGS
)
_PROPOSAL = flags.DEFINE_string(
    "proposal", None, "HF directory or ram_jax workdir.", flag_values=FLAGS
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "tokenizer.json (default: in --proposal).", flag_values=FLAGS
)
_K = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (K).", flag_values=FLAGS)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Longest sample.", flag_values=FLAGS)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts per decode batch.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
_NEG = REFERENCE_NEGATIVES  # the defaults below: the reference's settings
_T = flags.DEFINE_float("temperature", _NEG.temperature, "Proposal temperature.", flag_values=FLAGS)
_TOP_P = flags.DEFINE_float("top_p", _NEG.top_p, "Nucleus mass.", flag_values=FLAGS)
_TOP_K = flags.DEFINE_integer("top_k", _NEG.top_k, "Top-k (0: off).", flag_values=FLAGS)
_REP = flags.DEFINE_float(
    "repetition_penalty", _NEG.repetition_penalty, "HF repetition penalty.", flag_values=FLAGS
)
_STOPS = flags.DEFINE_multi_string(
    "stop", list(REFERENCE_STOPS), "Stop strings (cut from samples).", flag_values=FLAGS
)
_TEMPLATE = flags.DEFINE_string(
    "prompt_template",
    "raw",
    "As data.prompt_template (a name or a {prompt} string).",
    flag_values=FLAGS,
)
_ADD_BOS = flags.DEFINE_bool(
    "add_bos", False, "Start prompts with BOS, as data.add_bos.", flag_values=FLAGS
)
_MAX_PROMPT = flags.DEFINE_integer(
    "max_prompt_length", 1024, "Prompts keep their last N tokens.", flag_values=FLAGS
)
_FORMAT = flags.DEFINE_enum(
    "format", "auto", ["auto", "rows", "hh"], "Input layout.", flag_values=FLAGS
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "bfloat16", ["bfloat16", "float32"], "Proposal dtype.", flag_values=FLAGS
)


def main(argv):
    del argv
    tok = load_tokenizer(_TOKENIZER.value or _PROPOSAL.value)
    p_config, p_params = load_model(_PROPOSAL.value, _DTYPE.value, "--proposal")
    sampling = REFERENCE_NEGATIVES.replace(
        temperature=_T.value,
        top_p=_TOP_P.value,
        top_k=_TOP_K.value,
        repetition_penalty=_REP.value,
    )
    sample_file(
        _INPUT.value,
        _OUTPUT.value,
        p_params=p_params,
        p_config=p_config,
        tokenizer=tok,
        sampling=sampling,
        num_samples=_K.value,
        max_new_tokens=_MAX_NEW.value,
        batch_size=_BATCH.value,
        seed=_SEED.value,
        stops=tuple(_STOPS.value),
        prompt_template=_TEMPLATE.value,
        add_bos=_ADD_BOS.value,
        max_prompt_length=_MAX_PROMPT.value,
        fmt=_FORMAT.value,
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output", "proposal"], flag_values=FLAGS)
    cli.run(main, FLAGS)
