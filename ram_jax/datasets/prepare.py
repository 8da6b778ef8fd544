r"""Builds a paper dataset and writes training JSONL / AlpacaEval-format evaluation files.

Modes:
  build (default)  read a dataset from --manual_dir and write --output:
      --format=jsonl        training rows {prompt, chosen, rejected?, sampling?}
      --format=alpaca_eval  a JSON list {instruction, output, generator, dataset}:
                            the prompts for `ram_jax.generate` and the reference
                            outputs for alpaca_eval (output = reference answer).
      With --data_dir the tfds array_record dataset is built there too, and
      rows are read back from it.
  correction       Aligner-baseline inputs from --input: training rows that
                   carry a proposal answer (-> training rows), or AlpacaEval
                   proposal outputs (-> Aligner prompts).
  export           turn `ram_jax.generate` outputs into AlpacaEval 2
                   model_outputs.json: instructions restored from --instructions_from
                   (by position), `generator` set to --generator.

Examples:
  python -m ram_jax.datasets.prepare --dataset=hh_rlhf --config=all \
      --manual_dir=$DATA/hh-rlhf --split=train --output=$OUT/hh_train.jsonl
  python -m ram_jax.datasets.prepare --dataset=tldr --config=sft --manual_dir=$DATA/tldr \
      --split=test300 --format=alpaca_eval --output=$OUT/tldr_test300.json
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging

from ram_jax import cli, datasets, io
from ram_jax.data import templates
from ram_jax.datasets import DATASET_NAMES, correction, manual

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_MODE = flags.DEFINE_enum(
    "mode", "build", ["build", "correction", "export"], "What to do.", flag_values=FLAGS
)
_DATASET = flags.DEFINE_enum(
    "dataset", None, list(datasets.DATASET_NAMES), "Dataset (mode build).", flag_values=FLAGS
)
_CONFIG = flags.DEFINE_string(
    "config", None, "Builder config, e.g. all, helpful-base, sft.", flag_values=FLAGS
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Directory holding the downloaded files.", flag_values=FLAGS
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Also build the tfds dataset here.", flag_values=FLAGS
)
_SPLIT = flags.DEFINE_string(
    "split", "train", "Split: train, test, test300, valid, ...", flag_values=FLAGS
)
_FORMAT = flags.DEFINE_enum(
    "format", "jsonl", ["jsonl", "alpaca_eval"], "Output layout.", flag_values=FLAGS
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "Tokenizer for ultrachat/first_round_120k.", flag_values=FLAGS
)
_REFERENCE = flags.DEFINE_string(
    "reference_name",
    "reference",
    "`generator` of the reference outputs (format alpaca_eval).",
    flag_values=FLAGS,
)
_INPUT = flags.DEFINE_string(
    "input", None, "Input file (modes correction and export).", flag_values=FLAGS
)
_TEMPLATE = flags.DEFINE_string(
    "template", "{prompt}", "Prompt template (mode correction).", flag_values=FLAGS
)
_TARGET = flags.DEFINE_enum(
    "target",
    "chosen",
    ["chosen", "answer"],
    "Correction target: chosen, or answer (warm-up).",
    flag_values=FLAGS,
)
_LIMIT = flags.DEFINE_integer("limit", 0, "Keep only the first N rows (0: all).", flag_values=FLAGS)
_INSTRUCTIONS_FROM = flags.DEFINE_string(
    "instructions_from",
    None,
    "Mode export: the eval prompts file generation ran on.",
    flag_values=FLAGS,
)
_GENERATOR = flags.DEFINE_string(
    "generator", None, "Mode export: the model's name.", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output file (written atomically).", flag_values=FLAGS
)


def _objects(path: str) -> list[dict]:
    return [obj for _, obj in io.read_objects(path)]


def build_rows(dataset, config, manual_dir, split, *, data_dir=None, tokenizer=None):
    """Rows of one split, read directly or (with data_dir) through the built tfds dataset."""
    if not manual_dir or not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual_dir={manual_dir!r} is not a directory.")
    builder = datasets.get_builder(dataset, config, data_dir=data_dir, tokenizer=tokenizer)
    if data_dir:
        datasets.build(builder, manual_dir)
        return datasets.load_rows(builder, split)
    return [manual.export_row(r) for r in builder.rows(manual_dir, split)]


def alpaca_records(rows, generator: str, dataset: str) -> list[dict]:
    return [
        {
            "instruction": r["prompt"],
            "output": r["chosen"],
            "generator": generator,
            "dataset": dataset,
        }
        for r in rows
    ]


def export_outputs(outputs: list[dict], instructions: list[dict], generator: str) -> list[dict]:
    """Generation outputs with the eval set's instructions restored, named `generator`."""
    if len(outputs) != len(instructions):
        raise ValueError(
            f"{len(outputs)} outputs but {len(instructions)} eval prompts: generation must cover "
            "the whole eval file, in order."
        )
    out = []
    for i, (o, ref) in enumerate(zip(outputs, instructions, strict=True)):
        if not isinstance(o.get("output"), str):
            raise ValueError(f"output record {i} has no string 'output'.")
        if not isinstance(ref.get("instruction"), str):
            raise ValueError(f"eval prompt record {i} has no string 'instruction'.")
        rec = {"instruction": ref["instruction"], "output": o["output"], "generator": generator}
        if "dataset" in ref:
            rec["dataset"] = ref["dataset"]
        out.append(rec)
    return out


def _check_flags() -> None:
    """The flags each mode needs, and a writable --output, before any dataset is read."""
    if not _OUTPUT.value:
        raise app.UsageError("--output is required.")
    io.check_output_path(_OUTPUT.value, "--output")
    if _LIMIT.value < 0:
        raise app.UsageError(f"--limit={_LIMIT.value} must be >= 0 (0: all rows).")
    if _MODE.value == "build" and not _DATASET.value:
        raise app.UsageError(f"--dataset is required in mode build; one of {DATASET_NAMES}.")
    if _MODE.value == "correction" and not _INPUT.value:
        raise app.UsageError("--input is required in mode correction.")
    if _MODE.value == "export" and not (
        _INPUT.value and _INSTRUCTIONS_FROM.value and _GENERATOR.value
    ):
        raise app.UsageError("mode export needs --input, --instructions_from and --generator.")
    if _MODE.value == "correction":
        templates.resolve(_TEMPLATE.value)


def main(argv):
    del argv
    _check_flags()
    t0 = time.time()
    out = _OUTPUT.value
    if _MODE.value == "build":
        rows = build_rows(
            _DATASET.value,
            _CONFIG.value,
            _MANUAL_DIR.value,
            _SPLIT.value,
            data_dir=_DATA_DIR.value,
            tokenizer=_TOKENIZER.value,
        )
        if _LIMIT.value:
            rows = rows[: _LIMIT.value]
        if not rows:
            raise ValueError(f"{_DATASET.value}/{_CONFIG.value} split {_SPLIT.value}: no rows.")
        if _FORMAT.value == "jsonl":
            n = io.write_jsonl(out, rows)
        else:
            name = (
                f"{_DATASET.value}/{_CONFIG.value}/{_SPLIT.value}"
                if _CONFIG.value
                else (f"{_DATASET.value}/{_SPLIT.value}")
            )
            recs = alpaca_records(rows, _REFERENCE.value, name)
            io.write_json(out, recs)
            n = len(recs)
    elif _MODE.value == "correction":
        records = _objects(_INPUT.value)
        if records and "prompt" in records[0]:
            rows = list(
                correction.correction_rows(records, template=_TEMPLATE.value, target=_TARGET.value)
            )
            if _LIMIT.value:
                rows = rows[: _LIMIT.value]
            n = io.write_jsonl(out, rows)
        else:
            recs = list(correction.correction_eval_prompts(records, template=_TEMPLATE.value))
            io.write_json(out, recs)
            n = len(recs)
    else:
        recs = export_outputs(
            _objects(_INPUT.value), _objects(_INSTRUCTIONS_FROM.value), _GENERATOR.value
        )
        io.write_json(out, recs)
        n = len(recs)
    logging.info("wrote %d rows to %s in %.1fs", n, out, time.time() - t0)
    print(f"prepare {_MODE.value}: {n} rows -> {out} ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    cli.run(main, FLAGS)
