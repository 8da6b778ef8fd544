"""Anthropic HH-RLHF as the paper used it: helpful/harmless base, online and rejection subsets.

Manual files (https://github.com/anthropics/hh-rlhf, identical to
https://huggingface.co/datasets/Anthropic/hh-rlhf), kept in their folders:

  MANUAL_DIR/helpful-base/{train,test}.jsonl.gz               43,835 / 2,354 pairs
  MANUAL_DIR/harmless-base/{train,test}.jsonl.gz              42,537 / 2,312
  MANUAL_DIR/helpful-online/{train,test}.jsonl.gz             22,007 / 1,137
  MANUAL_DIR/helpful-rejection-sampled/{train,test}.jsonl.gz  52,421 / 2,749

Each line is {"chosen": conversation, "rejected": conversation}. Config `all`
concatenates the four subsets in that order: the paper's 160,800 training
pairs (the reference loads the unsplit HF dataset). The paper evaluates on 300
helpful-base and 300 harmless-base test prompts (split `test300` of those
configs) with the chosen response as the reference.

Rows: `prompt` is the conversation up to and including the last
"\\n\\nAssistant: " (the space too, as the reference splits), `chosen` /
`rejected` the two final responses. A pair whose two conversations differ
before the last response cannot be a preference between responses; such
pairs are dropped and counted (a known quirk of a few HH rows; the reference instead cuts the
rejected text at the chosen prompt's length, pairing it with a response to a
different conversation, so its count can exceed ours by those rows).
"""

from __future__ import annotations

from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from ram_jax.data.rows import MismatchedPair, split_hh_pair
from ram_jax.datasets import builder, manual
from ram_jax.io import read_records

# 1.1.0 moved the space after the last "Assistant:" from the responses into the prompt.
_VERSION = tfds.core.Version("1.1.0")
_RELEASE_NOTES = {
    "1.1.0": 'The space after the last "\\n\\nAssistant:" ends the prompt (as the reference).',
    "1.0.0": "First release.",
}
SUBSETS = ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled")
INSTRUCTIONS = """
Download the Anthropic HH-RLHF files from https://github.com/anthropics/hh-rlhf
(or https://huggingface.co/datasets/Anthropic/hh-rlhf) and keep their layout:
MANUAL_DIR/<subset>/train.jsonl.gz and MANUAL_DIR/<subset>/test.jsonl.gz for the
subsets helpful-base, harmless-base, helpful-online, helpful-rejection-sampled.
"""


def read_pairs(path: str, stats: dict | None = None) -> Iterator[dict]:
    """Training rows from one HH-RLHF `.jsonl.gz` (or `.jsonl`) file."""
    for where, raw in read_records(path):
        manual.require(raw, ("chosen", "rejected"), where)
        try:
            prompt, chosen, rejected = split_hh_pair(raw["chosen"], raw["rejected"], where)
        except MismatchedPair:
            if stats is not None:
                stats["mismatched_prompts"] = stats.get("mismatched_prompts", 0) + 1
            continue
        yield manual.make_row(prompt, chosen, rejected)


class RamHhRlhfConfig(tfds.core.BuilderConfig):
    def __init__(self, *, subsets: tuple[str, ...], **kwargs):
        super().__init__(version=_VERSION, **kwargs)
        self.subsets = subsets


class RamHhRlhf(builder.RowsBuilder):
    """Anthropic HH-RLHF preference pairs split into prompt / chosen / rejected."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    VERSION = _VERSION
    RELEASE_NOTES = _RELEASE_NOTES
    BUILDER_CONFIGS = [
        RamHhRlhfConfig(name=s, subsets=(s,), description=f"HH-RLHF {s}") for s in SUBSETS
    ] + [RamHhRlhfConfig(name="all", subsets=SUBSETS, description="all four subsets (160,800)")]

    @property
    def TEST300_FROM(self):  # noqa: N802 (class-level constant in the base)
        return "test" if self.builder_config.name in ("helpful-base", "harmless-base") else None

    def source_rows(self, manual_dir: str, split: str) -> Iterator[dict]:
        stats: dict = {}
        for subset in self.builder_config.subsets:
            path = manual.find_file(
                manual_dir,
                (f"{subset}/{split}.jsonl.gz", f"{subset}/{split}.jsonl"),
                f"HH-RLHF {subset} {split}",
                INSTRUCTIONS,
            )
            yield from read_pairs(path, stats)
        if stats:
            logging.warning(
                "HH-RLHF %s/%s: dropped %d pairs whose conversations differ before the last "
                "response.",
                self.builder_config.name,
                split,
                stats["mismatched_prompts"],
            )
