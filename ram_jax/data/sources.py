"""Where training rows come from: a JSON / JSONL file or a built tfds dataset.

`read_rows(spec)` takes a file path or `tfds:NAME[/CONFIG]:SPLIT`; both give
the same validated `Row`s (`ram_jax.data.rows`).
"""

from __future__ import annotations

import os

from ram_jax.data.rows import Row, rows_from
from ram_jax.io import DataError, read_records

TFDS_PREFIX = "tfds:"


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


def records(spec: str):
    """Yields (location, parsed object) for a .jsonl / .json file or a tfds source."""
    if spec.startswith(TFDS_PREFIX):
        yield from tfds_records(spec)
        return
    if not os.path.exists(spec):
        raise DataError(f"{spec}: data file not found; check the path (data.train_file, --input).")
    yield from read_records(spec)


def read_rows(spec: str, fmt: str = "auto", need: tuple[str, ...] = ()) -> list[Row]:
    """All rows of a data file or tfds source, validated (see `rows.rows_from`)."""
    return rows_from(records(spec), spec, fmt, need)
