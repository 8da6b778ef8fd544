"""Dataset builders for the paper's experiments (tfds, array_record, no TensorFlow).

Every builder reads the user's manual directory (or a ready JSONL) and yields
rows {prompt, chosen, rejected, sampling}, the schema `ram_jax.data` trains on.
`python -m ram_jax.datasets.prepare` builds a dataset and/or writes the
training JSONL or the AlpacaEval-format evaluation file.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from ram_jax.datasets.alpaca_eval import RamAlpacaEval
from ram_jax.datasets.builder import RowsBuilder, decode_example
from ram_jax.datasets.hh_rlhf import RamHhRlhf
from ram_jax.datasets.manual import TEST_SUBSET_SEED, TEST_SUBSET_SIZE, test_subset
from ram_jax.datasets.tldr import RamTldr
from ram_jax.datasets.ultrachat import RamUltrachat

BUILDERS: dict[str, type[RowsBuilder]] = {
    "hh_rlhf": RamHhRlhf,
    "tldr": RamTldr,
    "ultrachat": RamUltrachat,
    "alpaca_eval": RamAlpacaEval,
}


def get_builder(
    dataset: str,
    config: str | None = None,
    *,
    data_dir: str | None = None,
    tokenizer: str | None = None,
) -> RowsBuilder:
    """A builder by short name ('hh_rlhf', 'tldr', 'ultrachat', 'alpaca_eval')."""
    if dataset not in BUILDERS:
        raise KeyError(f"unknown dataset {dataset!r}; choose from {sorted(BUILDERS)}.")
    cls = BUILDERS[dataset]
    kwargs = dict(data_dir=data_dir, file_format="array_record")
    if cls.BUILDER_CONFIGS:
        names = [c.name for c in cls.BUILDER_CONFIGS]
        if config not in names:
            raise ValueError(
                f"dataset {dataset!r}: config {config!r} unknown; choose from {names}."
            )
        kwargs["config"] = config
    elif config:
        raise ValueError(f"dataset {dataset!r} has no configs; drop config={config!r}.")
    if dataset == "ultrachat":
        kwargs["tokenizer"] = tokenizer
    return cls(**kwargs)


def build(builder: RowsBuilder, manual_dir: str) -> None:
    """Writes the array_record files of every split (a no-op when already built)."""
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )


def load_rows(builder: RowsBuilder, split: str) -> list[dict]:
    """Every row of a built split as plain training rows (str fields, empty ones dropped)."""
    source = builder.as_data_source(split=split)
    return [decode_example(source[i]) for i in range(len(source))]


__all__ = [
    "BUILDERS",
    "RamAlpacaEval",
    "RamHhRlhf",
    "RamTldr",
    "RamUltrachat",
    "RowsBuilder",
    "TEST_SUBSET_SEED",
    "TEST_SUBSET_SIZE",
    "build",
    "decode_example",
    "get_builder",
    "load_rows",
    "test_subset",
]
