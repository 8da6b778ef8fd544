"""Decoding from and to files: models from directories, prompts from JSON, outputs written.

`decode_file` is what `python -m ram_jax.generate` runs, callable with
arguments: it checks everything cheap first (output path, template, prompts,
the mode against the models given, every aligner's tokenizer against the
proposal's), then loads the models once in the decoder's layer layout,
decodes through `driver.generate`, and writes AlpacaEval JSON (a list of
{instruction, output, generator}) plus `<output>.metrics.json`, atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from ram_jax import io, resumable
from ram_jax.data import templates
from ram_jax.decoding import batching, driver, record
from ram_jax.decoding.modes import Mode
from ram_jax.decoding.resample import SeqSir
from ram_jax.decoding.sampling import SamplingParams
from ram_jax.models import tokenizer as T
from ram_jax.models.quantize import quantize_int8
from ram_jax.models.tokenizer_check import check_model_tokenizers
from ram_jax.models.tokenizer_config import load_tokenizer_config
from ram_jax.training.model import load_config, load_model, model_dir

_STATS = "ram_jax.decode_stats"  # per-prompt counts kept in OUTPUT.partial for the metrics


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


def _name(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


def load_tokenizer(proposal: str, aligners: Sequence[str], tokenizer=None, assume_same=False):
    """`(tokenizer, TokenizerConfig)` of the proposal (or of `tokenizer`), checked.

    Every aligner must share it: compared by what decides ids
    (`tokenizer_check`); an aligner directory without a tokenizer is refused
    unless `assume_same`.
    """
    p_dir = model_dir(proposal) or proposal
    tok = T.load_tokenizer(tokenizer or p_dir)
    tok_config = load_tokenizer_config(tokenizer or p_dir, tok)
    q_dirs = {
        f"aligner {i}" if len(aligners) > 1 else "aligner": model_dir(a) or a
        for i, a in enumerate(aligners)
    }
    check_model_tokenizers(tok, q_dirs, assume_same=assume_same)
    return tok, tok_config


def load_models(
    proposal: str, aligners: Sequence[str], dtype: str, tok, int8_proposal: bool = False
) -> driver.Models:
    """The models from HF directories or training workdirs (their `export/`), in `dtype`
    (`auto`: each checkpoint's own), checked against `tok` and arranged in the
    decoder's layer layout once. `int8_proposal`: the proposal's weights are
    stored as int8 (`models.quantize.quantize_int8`; it computes in `dtype`);
    the aligners never are."""
    p_dir = model_dir(proposal) or proposal
    q_dirs = [model_dir(a) or a for a in aligners]
    loaded = [load_model(p_dir, dtype, "--proposal")]
    loaded += [load_model(q, dtype, "--aligner") for q in q_dirs]
    for name, (config, _) in zip(["proposal", *q_dirs], loaded, strict=True):
        T.check_vocab_fits(config, tok, name)
    pairs = [(params, config) for config, params in loaded]
    if int8_proposal:
        pairs[0] = (quantize_int8(pairs[0][0]), pairs[0][1])
    return driver.Models(pairs[0], tuple(pairs[1:])).arranged()


def decode_file(
    *,
    proposal: str,
    prompts: str,
    output: str,
    mode: Mode,
    params: SamplingParams | Sequence[SamplingParams],
    aligners: Sequence[str] = (),
    seq_sir: SeqSir | None = None,
    template: str = "raw",
    add_bos: bool | None = None,
    assume_same_tokenizer: bool = False,
    tokenizer: str | None = None,
    dtype: str = "auto",
    int8_proposal: bool = False,
    batch_size: int = 8,
    chunk: int = 16,
    seed: int = 0,
    generator: str | None = None,
    progress: bool = True,
    restart: bool = False,
) -> tuple[list[str], dict]:
    """Decodes every prompt of `prompts` and writes `output`; returns `(texts, metrics)`.

    `params`: one `SamplingParams`, or one per prompt. `proposal` decodes
    alone in mode `proposal` (any HF directory: the demo's baselines pass the
    small model here). Prompt i uses the key `split(key(seed), P)[i]`, so
    outputs do not depend on `batch_size`. `template='chat'` renders the
    tokenizer's own chat template; `add_bos` None starts prompts with a BOS as
    the tokenizer does (`models.tokenizer.prompt_bos_id`). Decoding stops on
    every model's EOS ids (`pair_eos_ids`). `int8_proposal` stores the
    proposal's weights as int8 after loading (half a bf16 proposal's bytes per
    step; see `load_models`).

    Each finished batch is kept in `OUTPUT.partial` (`ram_jax.resumable`): a
    rerun of the same job (input, models, settings, batch size, seed)
    continues after the last whole batch with the same outputs as one
    uninterrupted run; another job's partial file is refused unless
    `restart`.
    """
    each = [params] if isinstance(params, SamplingParams) else list(params)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    io.check_output_path(output, "--output")
    templates.resolve(template)
    instructions = read_prompts(prompts)
    if len(each) > 1 and len(each) != len(instructions):
        raise ValueError(
            f"{len(each)} SamplingParams for {len(instructions)} prompts in {prompts}."
        )
    needed = max(mode.min_aligners, 1 if seq_sir else 0)
    if len(aligners) < needed:
        raise ValueError(f"mode {mode.name!r} needs --aligner; or use --mode=proposal.")
    tok, tok_config = load_tokenizer(proposal, aligners, tokenizer, assume_same_tokenizer)
    templates.check(template, tok_config.chat_template)
    # Configs only: prompts and any partial output are checked before weights load.
    p_config = load_config(proposal, "--proposal")
    q_configs = [load_config(a, "--aligner") for a in aligners]
    vocab = T.tokenizer_length(tok)
    eos = T.pair_eos_ids(tok, p_config, q_configs, tok_config)
    pad = tok.token_to_id(T.PAD_TOKEN)
    pad = eos[0] if pad is None else pad
    bos = T.prompt_bos_id(tok, tok_config, add_bos, template, p_config)
    ids = templates.encode_prompts(
        tok,
        instructions,
        template,
        bos_id=bos,
        chat_template=tok_config.chat_template,
        special_tokens=tok_config.special_tokens,
    )
    most_new = max(p.max_new_tokens for p in each)
    batching.check_prompts(ids, most_new, [p_config, *q_configs], vocab)

    name = mode.name + (f"-seq_sir{seq_sir.num_candidates}" if seq_sir else "")
    generator = generator or (
        f"ram_jax-{name}-{_name(model_dir(proposal) or proposal)}"
        + "".join(f"+{_name(model_dir(a) or a)}" for a in aligners)
    )
    fingerprint = {
        "input": resumable.content_hash(instructions),
        "proposal": resumable.files_fingerprint(model_dir(proposal) or proposal),
        "aligners": [resumable.files_fingerprint(model_dir(a) or a) for a in aligners],
        "tokenizer": hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest(),
        "settings": {
            "mode": {"name": mode.name, **dataclasses.asdict(mode)},
            "sampling": [dataclasses.asdict(p) for p in each],
            "seq_sir": seq_sir.num_candidates if seq_sir else 0,
            "prompt_ids": resumable.content_hash(ids),  # template, BOS and chat template
            "dtype": dtype,
            "int8_proposal": int8_proposal,
            "batch_size": batch_size,
            "seed": seed,
            "generator": generator,
        },
    }
    partial = resumable.PartialOutput(output, fingerprint, unit=batch_size, restart=restart)
    todo = partial.done < len(ids)
    models = load_models(proposal, aligners, dtype, tok, int8_proposal) if todo else None
    if partial.done:
        print(f"resuming {output}: {partial.done} of {len(ids)} prompts already decoded")
    per_prompt = each if len(each) > 1 else each * len(ids)
    # Every batch has the shapes of one call over all prompts (see driver.stream).
    length = batching.bucket_length(max(len(i) for i in ids))
    slots = length + most_new
    prompt_keys = jax.random.split(jax.random.key(seed), len(ids))
    bar = tqdm(
        total=len(ids),
        initial=partial.done,
        unit="prompt",
        desc=f"decode {name}",
        disable=not progress,
    )
    timings, resumed = [], partial.done
    for first in range(partial.done, len(ids), batch_size):
        last = min(first + batch_size, len(ids))
        decoded = driver.generate(
            models,
            ids[first:last],
            mode,
            per_prompt[first:last],
            prompt_keys=prompt_keys[first:last],
            vocab_size=vocab,
            eos_ids=eos,
            pad_id=pad,
            batch_size=batch_size,
            min_bucket=length,
            min_slots=slots,
            chunk=chunk,
            seq_sir=seq_sir,
            tokenizer=tok,
        )
        live = np.arange(decoded.tokens.shape[1])[None] < decoded.lengths[:, None]
        partial.append(
            [
                {
                    "instruction": instructions[first + i],
                    "output": decoded.texts[i],
                    "generator": generator,
                    _STATS: {
                        "tokens": int(decoded.lengths[i]),
                        "aligner_tokens": int((decoded.aligner_branch[i] & live[i]).sum()),
                        "aligner_first": bool(decoded.aligner_branch[i, 0]),
                    },
                }
                for i in range(last - first)
            ]
        )
        timings += decoded.batches
        bar.update(last - first)
    bar.close()
    rows = partial.records()
    stats = [r.pop(_STATS) for r in rows]
    if not timings:  # everything was decoded before: an earlier run's finish was cut short
        timings = [record.BatchTiming(0.0, 0.0, 0, 0)]
    partial.finish(lambda _: io.write_json(output, rows))
    metrics = {
        **record.decode_metrics(
            mode.name,
            batch_size,
            [s["tokens"] for s in stats],
            [s["aligner_tokens"] for s in stats],
            [s["aligner_first"] for s in stats],
            tuple(timings),
        ),
        "resumed_prompts": resumed,
        "output": output,
        "mode_fields": dataclasses.asdict(mode),
        "seq_sir": seq_sir.num_candidates if seq_sir else 0,
        "aligners": list(aligners),
        "int8_proposal": int8_proposal,
        "sampling": [dataclasses.asdict(p) for p in each]
        if len(each) > 1
        else dataclasses.asdict(each[0]),
    }
    io.write_json(output + ".metrics.json", metrics)
    return [r["output"] for r in rows], metrics
