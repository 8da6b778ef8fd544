"""Dataset builders for the paper's experiments (tfds, array_record, no TensorFlow).

Every builder reads the user's manual directory (or a ready JSONL) and yields
rows {prompt, chosen, rejected, sampling}, the schema `ram_jax.data` trains on.
`python -m ram_jax.datasets.prepare` builds a dataset and/or writes the
training JSONL or the AlpacaEval-format evaluation file.

The builders (and tensorflow_datasets) are imported on first use, so the
command checks its flags and files before that import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ram_jax.datasets.manual import TEST_SUBSET_SEED, TEST_SUBSET_SIZE, test_subset

if TYPE_CHECKING:
    from ram_jax.datasets.builder import RowsBuilder

# Short name -> "module:class" of its builder.
_BUILDER_PATHS = {
    "hh_rlhf": "ram_jax.datasets.hh_rlhf:RamHhRlhf",
    "tldr": "ram_jax.datasets.tldr:RamTldr",
    "ultrachat": "ram_jax.datasets.ultrachat:RamUltrachat",
    "alpaca_eval": "ram_jax.datasets.alpaca_eval:RamAlpacaEval",
}
DATASET_NAMES = tuple(sorted(_BUILDER_PATHS))
_LAZY = {
    "RamHhRlhf": "ram_jax.datasets.hh_rlhf",
    "RamTldr": "ram_jax.datasets.tldr",
    "RamUltrachat": "ram_jax.datasets.ultrachat",
    "RamAlpacaEval": "ram_jax.datasets.alpaca_eval",
    "RowsBuilder": "ram_jax.datasets.builder",
    "decode_example": "ram_jax.datasets.builder",
}


def __getattr__(name: str) -> Any:
    if name == "BUILDERS":
        return {
            short: getattr(importlib.import_module(module), cls)
            for short, (module, cls) in ((k, v.split(":")) for k, v in _BUILDER_PATHS.items())
        }
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_builder(
    dataset: str,
    config: str | None = None,
    *,
    data_dir: str | None = None,
    tokenizer: str | None = None,
) -> RowsBuilder:
    """A builder by short name ('hh_rlhf', 'tldr', 'ultrachat', 'alpaca_eval')."""
    if dataset not in _BUILDER_PATHS:
        raise KeyError(f"unknown dataset {dataset!r}; choose from {list(DATASET_NAMES)}.")
    module, cls_name = _BUILDER_PATHS[dataset].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
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
    import tensorflow_datasets as tfds

    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )


def load_rows(builder: RowsBuilder, split: str) -> list[dict]:
    """Every row of a built split as plain training rows (str fields, empty ones dropped)."""
    from ram_jax.datasets.builder import decode_example

    source = builder.as_data_source(split=split)
    return [decode_example(source[i]) for i in range(len(source))]


__all__ = [
    "BUILDERS",
    "DATASET_NAMES",
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
