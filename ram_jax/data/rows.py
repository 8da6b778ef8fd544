"""Reading and validating training rows from JSON / JSONL files.

Two layouts are accepted:

  rows  {"prompt": str, "chosen": str, "rejected"?: str, "sampling"?: str | [str, ...]}
        `sampling` holds one or K responses sampled offline from the proposal
        (see `ram_jax.sample_proposal`).
  hh    Anthropic HH-RLHF: {"chosen": conversation, "rejected": conversation};
        the prompt is everything up to and including the last
        "\\n\\nAssistant:" of `chosen`, which `rejected` must share; the
        responses are the remainders.

Every problem is reported with the file and line (JSONL) or item (JSON array).
"""

from __future__ import annotations

import dataclasses
import json
import os

HH_ASSISTANT = "\n\nAssistant:"


@dataclasses.dataclass(frozen=True)
class Row:
    """One training example, before templating and tokenization."""

    prompt: str
    chosen: str
    rejected: str | None = None
    sampling: tuple[str, ...] = ()
    where: str = ""  # 'file:line', for error messages downstream


TFDS_PREFIX = "tfds:"


class DataError(ValueError):
    """A data file is missing, empty or malformed (the message says where)."""


def tfds_records(spec: str, data_dir: str | None = None):
    """Yields (location, row) from a built dataset named `tfds:NAME[/CONFIG]:SPLIT`.

    The rows come from the array_record files written by
    `python -m ram_jax.datasets.prepare` (or `ram_jax.datasets.build`), read
    through tfds' random-access data source; `data_dir` defaults to
    $TFDS_DATA_DIR or tfds' own default.
    """
    from ram_jax import datasets  # Imports tfds: only when a tfds source is asked for.

    body = spec[len(TFDS_PREFIX) :]
    name, _, split = body.partition(":")
    name, _, config = name.partition("/")
    if not name or not split:
        raise DataError(f"{spec}: write a dataset source as 'tfds:NAME[/CONFIG]:SPLIT'.")
    builder = datasets.get_builder(
        name, config or None, data_dir=data_dir or os.environ.get("TFDS_DATA_DIR")
    )
    if not builder.is_prepared():
        raise DataError(
            f"{spec}: dataset not built in {builder.data_dir}; run `python -m "
            f"ram_jax.datasets.prepare --dataset={name}"
            f"{' --config=' + config if config else ''} --manual_dir=DIR` first."
        )
    if split not in builder.info.splits:
        raise DataError(f"{spec}: no split {split!r}; choose from {sorted(builder.info.splits)}.")
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
        yield f"{spec}: example {i}", datasets.decode_example(source[i])


def records(path: str):
    """Yields (location, parsed object) for a .jsonl or .json file or a tfds source."""
    if path.startswith(TFDS_PREFIX):
        yield from tfds_records(path)
        return
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found; check data.train_file / data.eval_file.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if path.endswith(".json") or stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: a .json data file must hold a list of row objects.")
        for i, item in enumerate(items):
            yield f"{path}: item {i}", item
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}).") from None
        yield f"{path}:{lineno}", obj


def _text(obj: dict, key: str, where: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(
                f"{where}: row has no {key!r} field (fields: {sorted(obj)}); every row needs "
                f"{key!r} for this objective / format."
            )
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}.")
    return value


def split_hh(conversation: str, where: str) -> tuple[str, str]:
    """(prompt ending in '\\n\\nAssistant:', final response) of an HH conversation."""
    cut = conversation.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: HH conversation has no {HH_ASSISTANT!r} turn.")
    cut += len(HH_ASSISTANT)
    return conversation[:cut], conversation[cut:]


def parse_row(obj, where: str, fmt: str = "auto", need: tuple[str, ...] = ()) -> Row:
    """Validates one parsed JSON object into a `Row`.

    Args:
      obj: the parsed JSON value.
      where: 'file:line' for messages.
      fmt: 'rows', 'hh' or 'auto' (hh when the object has no 'prompt').
      need: fields the objective requires beyond prompt/chosen
        ('rejected' and/or 'sampling').
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: each row must be a JSON object, got {type(obj).__name__}.")
    if fmt == "auto":
        fmt = "rows" if "prompt" in obj else "hh"
    if fmt == "hh":
        chosen_conv = _text(obj, "chosen", where, True)
        rejected_conv = _text(obj, "rejected", where, "rejected" in need)
        prompt, chosen = split_hh(chosen_conv, where)
        rejected = None
        if rejected_conv is not None:
            r_prompt, rejected = split_hh(rejected_conv, where)
            if r_prompt != prompt:
                raise DataError(
                    f"{where}: HH 'chosen' and 'rejected' conversations differ before the last "
                    "assistant turn; they must share the prompt."
                )
        samples = _samples(obj, where, "sampling" in need)
        return Row(prompt, chosen, rejected, samples, where)
    if fmt != "rows":
        raise ValueError(f"data.format={fmt!r}: use 'auto', 'rows' or 'hh'.")
    return Row(
        prompt=_text(obj, "prompt", where, True),
        chosen=_text(obj, "chosen", where, True),
        rejected=_text(obj, "rejected", where, "rejected" in need),
        sampling=_samples(obj, where, "sampling" in need),
        where=where,
    )


def _samples(obj: dict, where: str, required: bool) -> tuple[str, ...]:
    value = obj.get("sampling")
    if value is None:
        if required:
            raise DataError(
                f"{where}: row has no 'sampling' field (proposal samples), which this objective "
                "needs; create it with `python -m ram_jax.sample_proposal`, or set "
                "objective.negatives='rejected' to use the rejected responses."
            )
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or not value:
        raise DataError(f"{where}: 'sampling' must be a string or a non-empty list of strings.")
    return tuple(value)


def read_rows(path: str, fmt: str = "auto", need: tuple[str, ...] = ()) -> list[Row]:
    """All rows of a .json / .jsonl file, validated; raises `DataError` naming file:line."""
    rows = [parse_row(obj, where, fmt, need) for where, obj in records(path)]
    if not rows:
        raise DataError(f"{path}: the file holds no rows; the dataset is empty.")
    return rows
