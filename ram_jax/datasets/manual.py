"""Plumbing shared by the paper's dataset builders: manual files, ready JSONL, subsets.

Every builder reads files the user downloaded into a *manual directory* (we
never download anything) and turns them into rows of the one schema the
training pipeline (`ram_jax.data`) reads without translation:

  prompt    the raw prompt x (templates such as "\\n\\nHuman: {prompt}\\n\\nAssistant: "
            are applied by the training config's `data.prompt_template` and by
            `generate --template`, so both sides agree); for Anthropic-HH the
            whole conversation up to and including the last "\\n\\nAssistant:".
  chosen    the target / preferred response.
  rejected  the dispreferred response ("" when the dataset has none).
  sampling  offline proposal samples (empty here; `ram_jax.sample_proposal`
            fills it).

A builder also accepts a *ready JSONL* instead of the original files:
`MANUAL_DIR/<split>.jsonl` whose rows already carry `prompt` and `chosen`
(and optionally `rejected`, `sampling`).

The paper evaluates on 300 test examples drawn at random; `test_subset`
draws them reproducibly (fixed seed, numpy's PCG64, sorted indices).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ram_jax.io import DataError, read_records

ROW_FIELDS = ("prompt", "chosen", "rejected", "sampling")
TEST_SUBSET_SIZE = 300
TEST_SUBSET_SEED = 42


def find_file(manual_dir: str, candidates: Sequence[str], what: str, instructions: str) -> str:
    """First of `candidates` (paths or globs relative to `manual_dir`) that exists.

    Raises FileNotFoundError naming every file looked for and how to get it.
    """
    for pattern in candidates:
        hits = sorted(glob.glob(os.path.join(manual_dir, pattern)))
        if hits:
            return hits[0]
    looked = ", ".join(os.path.join(manual_dir, c) for c in candidates)
    raise FileNotFoundError(
        f"{what}: none of [{looked}] exists.\n{instructions.strip()}\n"
        "Or put a ready JSONL (rows with 'prompt' and 'chosen') at "
        f"{os.path.join(manual_dir, '<split>.jsonl')}."
    )


def require(row, fields: Iterable[str], where: str) -> None:
    """Raises `DataError` at `where` unless `row` is an object with string `fields`."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    missing = [k for k in fields if not isinstance(row.get(k), str)]
    if missing:
        raise DataError(f"{where}: row lacks string field(s) {missing}; it has {sorted(row)}.")


def make_row(prompt: str, chosen: str, rejected: str = "", sampling=()) -> dict:
    """A row of the training schema (`ROW_FIELDS`), sampling always a list."""
    if isinstance(sampling, str):
        sampling = [sampling]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "sampling": list(sampling)}


def read_ready_jsonl(path: str) -> Iterator[dict]:
    """Rows of a ready JSONL in the training schema (`prompt`, `chosen` required)."""
    for where, row in read_records(path):
        require(row, ("prompt", "chosen"), where)
        yield make_row(
            row["prompt"], row["chosen"], row.get("rejected") or "", row.get("sampling") or ()
        )


def ready_jsonl(manual_dir: str, split: str) -> str | None:
    """`MANUAL_DIR/<split>.jsonl` if the user supplied one, else None."""
    path = os.path.join(manual_dir, f"{split}.jsonl")
    return path if os.path.isfile(path) else None


def test_subset(n: int, size: int = TEST_SUBSET_SIZE, seed: int = TEST_SUBSET_SEED) -> np.ndarray:
    """Sorted indices of `size` distinct rows out of `n`, fixed by `seed`.

    The paper scores 300 random test examples per task; drawing the same
    indices every time makes runs and tables comparable.
    """
    if n < size:
        raise ValueError(f"cannot draw a {size}-example test subset from {n} rows.")
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def export_row(row: dict) -> dict:
    """A training JSONL row: empty `rejected` / `sampling` left out."""
    out = {"prompt": row["prompt"], "chosen": row["chosen"]}
    if row.get("rejected"):
        out["rejected"] = row["rejected"]
    if row.get("sampling"):
        out["sampling"] = list(row["sampling"])
    return out
