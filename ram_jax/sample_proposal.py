r"""Synthesise the aligner's negatives: K proposal samples per training prompt.

  python -m ram_jax.sample_proposal --input=train.jsonl --output=train_sampled.jsonl \
      --proposal=/ckpt/Llama-3.1-8B-warmup [--num_samples=1 --batch_size=16] \
      [--config=experiments/configs/base.py]

Reads a training file (rows with 'prompt' and 'chosen', or Anthropic-HH
conversations), decodes with the proposal alone (`ram_jax.decoding.driver.generate`,
mode 'proposal') using the reference's settings by default (temperature 0.5,
top_p 0.95, repetition penalty 1.05, FastChat processor order, stop at
"\n\nHuman"), and writes every input row unchanged plus a 'sampling' field (a
string for K = 1, a list of K strings otherwise). The samples must continue
exactly the prompts the aligner is trained on: pass the training run's
`--config` (and any `--config.data.*` overrides) and the template, BOS and
prompt length come from its `data` section; `--prompt_template`, `--add_bos`
and `--max_prompt_length` override it. `--template=chat` renders the
tokenizer's own chat template; `--dtype` defaults to the checkpoint's;
`--int8_proposal` stores the proposal's weights as int8 (per-channel scales,
computed in `--dtype`): half a bf16 proposal's bytes read per decode step.

Progress is appended batch by batch to OUTPUT.partial, whose first line
fingerprints the job: the input rows' content, the proposal's and tokenizer's
files, and every flag that changes the samples. Rerunning the same command
skips the rows already done (a resumed run writes the same samples as an
uninterrupted one: sample b of row i uses a key derived from (seed, batch
start)); any other input or flags are refused, with `--restart` as the fix.
The finished file is written atomically and the partial file removed.
`--proposal` is an HF directory or a ram_jax training workdir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from ram_jax import cli, io, resumable
from ram_jax.data import rows as rows_lib
from ram_jax.data import sources, templates
from ram_jax.data.rows import FORMATS


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides the samples, besides the input rows, the proposal and the sampling rule."""

    num_samples: int = 1
    max_new_tokens: int = 256
    batch_size: int = 16  # each batch's key comes from its first row: part of the samples
    seed: int = 0
    stops: tuple[str, ...] = ("\n\nHuman",)  # the reference's (REFERENCE_STOPS)
    prompt_template: str = "raw"
    add_bos: bool | None = None  # None: as the tokenizer does (`prompt_bos_id`)
    max_prompt_length: int = 1024

    def __post_init__(self):
        for name in ("num_samples", "max_new_tokens", "batch_size", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)} must be >= 1.")
        templates.resolve(self.prompt_template)


@dataclasses.dataclass
class Job:
    """A sampling job, checked and ready to run (everything but the proposal's weights)."""

    rows: list  # `Row`s in input order
    prompts: list[list[int]]  # their templated, truncated prompt ids
    output: resumable.PartialOutput
    tokenizer: object
    tokenizer_config: object  # TokenizerConfig: chat template, special tokens
    sampling: object  # SamplingParams
    settings: Settings


def read_input(spec: str, fmt: str = "auto") -> tuple[list, str]:
    """(validated rows, content hash) of a training file; prompt-only rows are refused clearly."""
    records = list(sources.records(spec))
    for where, obj in records:
        if isinstance(obj, dict) and "prompt" in obj and "chosen" not in obj and fmt != "hh":
            raise io.DataError(
                f"{where}: row has 'prompt' but no 'chosen'; sample_proposal adds proposal "
                "samples to training rows, which need the aligned answer 'chosen' too (to "
                "decode prompts alone, use python -m ram_jax.generate)."
            )
    rows = rows_lib.rows_from(records, spec, fmt)
    return rows, resumable.content_hash(obj for _, obj in records)


def plan(
    rows: list,
    input_hash: str,
    output_path: str,
    *,
    tokenizer,
    sampling,
    p_config,
    proposal_id,
    settings: Settings,
    restart: bool = False,
    tokenizer_config=None,
) -> Job:
    """Encodes and checks the prompts, opens OUTPUT.partial (refusing another job's).

    Needs the proposal's config (its context length, its BOS), not its weights.
    `proposal_id` is any JSON value naming the weights (the command uses
    their files' sizes and times): a partial output made with another
    proposal is refused like one made from another input.
    """
    from ram_jax.decoding import batching
    from ram_jax.models.tokenizer import prompt_bos_id, tokenizer_length
    from ram_jax.models.tokenizer_config import inferred_config

    tc = tokenizer_config or inferred_config(tokenizer)
    templates.check(settings.prompt_template, tc.chat_template)
    bos = prompt_bos_id(tokenizer, tc, settings.add_bos, settings.prompt_template, p_config)
    prompts = templates.encode_prompts(
        tokenizer,
        [r.prompt for r in rows],
        settings.prompt_template,
        bos_id=bos,
        max_length=settings.max_prompt_length,
        chat_template=tc.chat_template,
        special_tokens=tc.special_tokens,
    )
    # Over-long requests fail here, before the weights load and before any file.
    vocab = tokenizer_length(tokenizer)
    batching.check_prompts(prompts, settings.max_new_tokens, [p_config], vocab)
    fingerprint = {
        "input": input_hash,
        "proposal": proposal_id,
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest(),
        "settings": {
            **dataclasses.asdict(settings),
            "prompt_template": templates.resolve(settings.prompt_template),
            "prompt_bos": bos,
            "chat_template": tc.chat_template
            if templates.resolve(settings.prompt_template) == templates.CHAT
            else None,
            "sampling": dataclasses.asdict(sampling),
        },
    }
    output = resumable.PartialOutput(
        output_path, fingerprint, unit=settings.batch_size, restart=restart
    )
    return Job(rows, prompts, output, tokenizer, tc, sampling, settings)


def run(job: Job, p_params, p_config, int8_proposal: bool = False) -> int:
    """Samples the rows not yet done, then writes the output; returns how many were sampled.

    `int8_proposal`: quantize `p_params` first (`models.quantize.quantize_int8`).
    """
    import jax

    from ram_jax.decoding import driver
    from ram_jax.models.quantize import quantize_int8
    from ram_jax.models.tokenizer import eos_token_ids, tokenizer_length

    vocab = tokenizer_length(job.tokenizer)
    eos = eos_token_ids(job.tokenizer, p_config, job.tokenizer_config)
    rows, k, width = job.rows, job.settings.num_samples, job.settings.batch_size
    start = job.output.done
    base_key = jax.random.key(job.settings.seed)
    if int8_proposal:
        p_params = quantize_int8(p_params)
    models = driver.Models((p_params, p_config)).arranged()
    bar = tqdm(total=len(rows), initial=start, desc="sample", unit="prompt")
    for first in range(start, len(rows), width):
        batch = job.prompts[first : first + width]
        samples = driver.generate(
            models,
            [p for p in batch for _ in range(k)],
            "proposal",
            job.sampling.replace(
                max_new_tokens=job.settings.max_new_tokens, stop=tuple(job.settings.stops)
            ),
            key=jax.random.fold_in(base_key, first),
            vocab_size=vocab,
            eos_ids=eos,
            batch_size=width * k,
            tokenizer=job.tokenizer,
        ).texts
        records = []
        for i in range(len(batch)):
            got = samples[i * k : (i + 1) * k]
            records.append({**rows[first + i].source, "sampling": got[0] if k == 1 else got})
        job.output.append(records)
        bar.update(len(batch))
    bar.close()
    job.output.finish(lambda records: io.write_jsonl(job.output.output_path, records))
    print(f"done: {len(rows) - start} prompts x {k} samples -> {job.output.output_path}")
    return len(rows) - start


def sample_file(
    input_path: str,
    output_path: str,
    *,
    p_params,
    p_config,
    tokenizer,
    sampling,
    settings: Settings = Settings(),
    fmt: str = "auto",
    restart: bool = False,
    proposal_id=None,
    tokenizer_config=None,
    int8_proposal: bool = False,
) -> int:
    """Writes `output_path` (input rows + 'sampling'); returns the number of rows sampled now.

    `proposal_id` (see `plan`) defaults to the proposal's config, which does
    not tell two trainings of one shape apart: pass an id of the weights when
    a resume could meet a retrained proposal. `tokenizer_config` (the
    tokenizer's HF files) gives the chat template, the BOS rule and the EOS
    fallback; without it they are inferred from the vocabulary.
    `int8_proposal` samples from `p_params` stored as int8 (a partial output
    of the float proposal is then refused, and the reverse).
    """
    if os.path.exists(output_path):
        print(f"{output_path} exists; nothing to do (delete it to resample).")
        return 0
    rows, input_hash = read_input(input_path, fmt)
    proposal_id = p_config.to_dict() if proposal_id is None else proposal_id
    job = plan(
        rows,
        input_hash,
        output_path,
        tokenizer=tokenizer,
        sampling=sampling,
        p_config=p_config,
        proposal_id=_with_int8(proposal_id, int8_proposal),
        settings=settings,
        restart=restart,
        tokenizer_config=tokenizer_config,
    )
    return run(job, p_params, p_config, int8_proposal)


def _with_int8(proposal_id, int8_proposal: bool):
    # int8 weights draw other samples; a float job's fingerprint stays as it was.
    return {"weights": proposal_id, "int8": True} if int8_proposal else proposal_id


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
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "The aligner's training config: its data.prompt_template, data.add_bos and "
    "data.max_prompt_length are used (--config.data.* overrides apply).",
    flag_values=FLAGS,
)
_K = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (K).", flag_values=FLAGS)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Longest sample.", flag_values=FLAGS)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts per decode batch.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
_RESTART = flags.DEFINE_bool(
    "restart", False, "Discard OUTPUT.partial and start over.", flag_values=FLAGS
)
# Sampling flags default to the reference's negatives (REFERENCE_NEGATIVES).
_T = flags.DEFINE_float(
    "temperature", None, "Proposal temperature (default: the reference's).", flag_values=FLAGS
)
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus mass (default: reference).", flag_values=FLAGS)
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "Top-k, 0: off (default: reference).", flag_values=FLAGS
)
_REP = flags.DEFINE_float(
    "repetition_penalty", None, "HF repetition penalty (default: reference).", flag_values=FLAGS
)
_STOPS = flags.DEFINE_multi_string(
    "stop", None, "Stop strings, cut from samples (default: '\\n\\nHuman').", flag_values=FLAGS
)
_TEMPLATE = flags.DEFINE_string(
    "prompt_template",
    None,
    "As data.prompt_template: a name, a {prompt} string or 'chat' (default: --config's, else raw).",
    flag_values=FLAGS,
)
_ADD_BOS = flags.DEFINE_bool(
    "add_bos",
    None,
    "Start prompts with BOS (default: --config's data.add_bos, else as the tokenizer does).",
    flag_values=FLAGS,
)
_MAX_PROMPT = flags.DEFINE_integer(
    "max_prompt_length",
    None,
    "Prompts keep their last N tokens (default: --config's, else 1024).",
    flag_values=FLAGS,
)
_FORMAT = flags.DEFINE_enum("format", "auto", list(FORMATS), "Input layout.", flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "auto",
    ["auto", "float32", "bfloat16", "float16"],
    "Proposal dtype (auto: the checkpoint's).",
    flag_values=FLAGS,
)
_INT8 = flags.DEFINE_bool(
    "int8_proposal",
    False,
    "Store the proposal's weights as int8 (per-channel scales; computed in --dtype).",
    flag_values=FLAGS,
)


def _settings() -> Settings:
    """Settings from the flags; template, BOS and prompt length from --config unless given."""
    config = cli.config_value(_CONFIG) if FLAGS["config"].present else None
    data = {}
    for name, holder in (
        ("prompt_template", _TEMPLATE),
        ("add_bos", _ADD_BOS),
        ("max_prompt_length", _MAX_PROMPT),
    ):
        if holder.value is not None:
            data[name] = holder.value
        elif config is not None:
            data[name] = config.data[name]
    if _STOPS.value is not None:
        data["stops"] = tuple(_STOPS.value)
    return Settings(
        num_samples=_K.value,
        max_new_tokens=_MAX_NEW.value,
        batch_size=_BATCH.value,
        seed=_SEED.value,
        **data,
    )


def main(argv):
    del argv
    # Everything a user can get wrong is checked before JAX and the proposal load.
    settings = _settings()
    io.check_output_path(_OUTPUT.value, "--output")
    if not os.path.isdir(_PROPOSAL.value):
        raise io.DataError(
            f"--proposal={_PROPOSAL.value}: not a directory; pass an HF model "
            "directory or a ram_jax training workdir."
        )
    if os.path.exists(_OUTPUT.value):
        print(f"{_OUTPUT.value} exists; nothing to do (delete it to resample).")
        return
    rows, input_hash = read_input(_INPUT.value, _FORMAT.value)

    from ram_jax.decoding.sampling import REFERENCE_NEGATIVES
    from ram_jax.models.config import from_hf_config
    from ram_jax.models.tokenizer import load_tokenizer
    from ram_jax.models.tokenizer_config import load_tokenizer_config
    from ram_jax.training.checkpoint import checkpoint_model_config
    from ram_jax.training.model import load_model, model_dir

    given = {"temperature": _T, "top_p": _TOP_P, "top_k": _TOP_K, "repetition_penalty": _REP}
    sampling = REFERENCE_NEGATIVES.replace(
        **{k: h.value for k, h in given.items() if h.value is not None}
    )
    hf_dir = model_dir(_PROPOSAL.value)
    p_dir = hf_dir or _PROPOSAL.value
    tok = load_tokenizer(_TOKENIZER.value or p_dir)
    tok_config = load_tokenizer_config(_TOKENIZER.value or p_dir, tok)
    # The config alone (no weights yet): context length and BOS.
    p_config = from_hf_config(hf_dir) if hf_dir else checkpoint_model_config(p_dir)
    job = plan(
        rows,
        input_hash,
        _OUTPUT.value,
        tokenizer=tok,
        sampling=sampling,
        p_config=p_config,
        proposal_id=_with_int8(
            {"files": resumable.files_fingerprint(p_dir), "dtype": _DTYPE.value}, _INT8.value
        ),
        settings=settings,
        restart=_RESTART.value,
        tokenizer_config=tok_config,
    )
    p_config, p_params = load_model(_PROPOSAL.value, _DTYPE.value, "--proposal")
    run(job, p_params, p_config, _INT8.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output", "proposal"], flag_values=FLAGS)
    cli.run(main, FLAGS)
