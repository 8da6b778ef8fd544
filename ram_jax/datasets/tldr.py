"""TL;DR summarisation: CarperAI's SFT layout and the comparisons layout.

Manual files (parquet, as published on the Hugging Face hub; keep the
`data/` folder or rename each file to `<split>.parquet`):

  config `sft`  (https://huggingface.co/datasets/CarperAI/openai_summarize_tldr)
    MANUAL_DIR/data/{train,valid,test}-*.parquet   116,722 / 6,447 / 6,553 rows
    columns: prompt ("SUBREDDIT: ...\\nTITLE: ...\\nPOST: ...\\nTL;DR:"), label
  config `comparisons` (https://huggingface.co/datasets/CarperAI/openai_summarize_comparisons)
    MANUAL_DIR/data/{train,test,valid1,valid2}-*.parquet   92,534 / 83,629 / ... rows
    columns: prompt (the post, without "TL;DR:"), chosen, rejected ("TL;DR: ...")

SFT rows: `prompt` = prompt, `chosen` = label, verbatim. Comparison rows
follow the reference: "\\nTL;DR:" appended to the prompt, and the summaries
cut at "<|endoftext|>" with their leading "TL;DR:" and spaces removed, so
both layouts share one prompt format. The paper evaluates on 300 random
`sft` test examples (split `test300`) with the dataset summary as reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import tensorflow_datasets as tfds

from ram_jax.datasets import builder, manual
from ram_jax.io import read_records

INSTRUCTIONS = """
Download the parquet files of CarperAI/openai_summarize_tldr (config sft) or
CarperAI/openai_summarize_comparisons (config comparisons) from the Hugging
Face hub into MANUAL_DIR, keeping their data/ folder
(MANUAL_DIR/data/<split>-00000-of-00001-*.parquet) or renaming each file to
MANUAL_DIR/<split>.parquet.
"""
_TLDR_PREFIX = re.compile(r"^TL;DR:\s*")


def clean_summary(text: str) -> str:
    """A comparisons-layout summary as the reference trains on it."""
    return _TLDR_PREFIX.sub("", text.split("<|endoftext|>")[0])


class RamTldrConfig(tfds.core.BuilderConfig):
    def __init__(self, *, splits: tuple[str, ...], **kwargs):
        super().__init__(version=builder.RowsBuilder.VERSION, **kwargs)
        self.splits = splits


class RamTldr(builder.RowsBuilder):
    """Reddit TL;DR summaries (CarperAI layouts) as prompt / chosen (/ rejected) rows."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [
        RamTldrConfig(name="sft", splits=("train", "valid", "test"), description="SFT layout"),
        RamTldrConfig(
            name="comparisons",
            splits=("train", "test", "valid1", "valid2"),
            description="preference comparisons layout",
        ),
    ]

    @property
    def SOURCE_SPLITS(self):  # noqa: N802
        return self.builder_config.splits

    @property
    def TEST300_FROM(self):  # noqa: N802
        return "test" if self.builder_config.name == "sft" else None

    def source_rows(self, manual_dir: str, split: str) -> Iterator[dict]:
        name = self.builder_config.name
        path = manual.find_file(
            manual_dir,
            (f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}.parquet"),
            f"TL;DR {name} {split}",
            INSTRUCTIONS,
        )
        for where, raw in read_records(path):
            if name == "sft":
                manual.require(raw, ("prompt", "label"), where)
                yield manual.make_row(raw["prompt"], raw["label"])
            else:
                manual.require(raw, ("prompt", "chosen", "rejected"), where)
                yield manual.make_row(
                    raw["prompt"] + "\nTL;DR:",
                    clean_summary(raw["chosen"]),
                    clean_summary(raw["rejected"]),
                )
