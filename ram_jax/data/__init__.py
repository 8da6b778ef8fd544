"""Training data: rows from JSON/JSONL (rows, messages or HH), templates and chat templates,
tokenized groups, deterministic batches."""

from ram_jax.data.pipeline import Batches, DataIterator, eval_batches
from ram_jax.data.rows import DataError, Row
from ram_jax.data.sources import read_rows
from ram_jax.data.tokenize import Examples, required_fields, tokenize_rows

__all__ = [
    "Batches",
    "DataError",
    "DataIterator",
    "Examples",
    "Row",
    "eval_batches",
    "read_rows",
    "required_fields",
    "tokenize_rows",
]
