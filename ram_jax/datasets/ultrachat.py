"""UltraChat first round, with the paper's length filter (120K examples).

Manual files, either layout:

  HuggingFaceH4/ultrachat_200k (https://huggingface.co/datasets/HuggingFaceH4/ultrachat_200k)
    MANUAL_DIR/data/train_sft-*.parquet      rows {prompt, prompt_id, messages: [{role, content}]}
  stingning/ultrachat (https://huggingface.co/datasets/stingning/ultrachat)
    MANUAL_DIR/train_*.jsonl                 rows {id, data: [user, assistant, user, ...]}

Rows: the first user turn as `prompt`, the first assistant turn as `chosen`.
Config `first_round` keeps every conversation. Config `first_round_120k`
applies the reference's selection: shuffle (here with a fixed seed), keep a
row when its templated prompt "\\n\\nHuman: {prompt}\\n\\nAssistant: " has at most
1024 tokens and its response at most 2048 - 1024 - 1 = 1023 tokens, stop at
120,000 rows. Token counts need a tokenizer (the reference counted with Qwen2.5-14B's for
both families; `reproduce.sh` uses each row's proposal tokenizer): pass
`tokenizer=PATH` (a tokenizer.json or an HF model directory) to the builder
or `--tokenizer` to `ram_jax.datasets.prepare`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ram_jax.data import templates
from ram_jax.datasets import builder, manual
from ram_jax.io import read_records

MAX_LENGTH, MAX_PROMPT_LENGTH, NUM_EXAMPLES, SHUFFLE_SEED = 2048, 1024, 120_000, 42
INSTRUCTIONS = """
Download UltraChat into MANUAL_DIR: either the parquet files of
HuggingFaceH4/ultrachat_200k (MANUAL_DIR/data/train_sft-*.parquet) or the JSONL
files of stingning/ultrachat (MANUAL_DIR/train_0.jsonl ... train_9.jsonl).
"""


def first_round(raw: dict, where: str) -> tuple[str, str]:
    """(first user message, first assistant message) of either UltraChat layout."""
    if isinstance(raw.get("messages"), list):
        msgs = raw["messages"]
        user = next((m.get("content") for m in msgs if m.get("role") == "user"), None)
        asst = next((m.get("content") for m in msgs if m.get("role") == "assistant"), None)
    elif isinstance(raw.get("data"), list):
        turns = raw["data"]
        user, asst = (turns + [None, None])[:2]
    else:
        raise ValueError(f"{where}: row has neither 'messages' nor 'data'; keys {sorted(raw)}.")
    if not isinstance(user, str) or not isinstance(asst, str):
        raise ValueError(f"{where}: row has no first user/assistant exchange.")
    return user, asst


def length_filter(
    rows: list[dict],
    count_tokens,
    *,
    num_examples: int = NUM_EXAMPLES,
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    seed: int = SHUFFLE_SEED,
) -> list[dict]:
    """The reference's selection: shuffled rows whose prompt and response fit, first N."""
    order = np.random.default_rng(seed).permutation(len(rows))
    max_new = max_length - max_prompt_length - 1
    kept = []
    for i in order:
        row = rows[int(i)]
        prompt = templates.apply("human_assistant", row["prompt"])
        if count_tokens(prompt) <= max_prompt_length and count_tokens(row["chosen"]) <= max_new:
            kept.append(row)
            if len(kept) == num_examples:
                break
    return kept


class RamUltrachatConfig(tfds.core.BuilderConfig):
    def __init__(self, *, num_examples: int | None, **kwargs):
        super().__init__(version=builder.RowsBuilder.VERSION, **kwargs)
        self.num_examples = num_examples


class RamUltrachat(builder.RowsBuilder):
    """UltraChat first-round prompt / response pairs."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    SOURCE_SPLITS = ("train",)
    TEST300_FROM = None
    BUILDER_CONFIGS = [
        RamUltrachatConfig(name="first_round", num_examples=None, description="all rows"),
        RamUltrachatConfig(
            name="first_round_120k",
            num_examples=NUM_EXAMPLES,
            description="the paper's 120K length-filtered rows",
        ),
    ]

    def __init__(self, *, tokenizer: str | None = None, **kwargs):
        self._tokenizer_path = tokenizer
        super().__init__(**kwargs)

    def source_rows(self, manual_dir: str, split: str) -> Iterator[dict]:
        paths = sorted(glob.glob(os.path.join(manual_dir, "data", "train_sft-*.parquet")))
        paths = paths or sorted(glob.glob(os.path.join(manual_dir, "train_sft-*.parquet")))
        paths = paths or sorted(glob.glob(os.path.join(manual_dir, "train_*.jsonl")))
        if not paths:
            manual.find_file(
                manual_dir, ("data/train_sft-*.parquet", "train_*.jsonl"), "UltraChat", INSTRUCTIONS
            )
        rows = []
        for path in paths:
            for where, raw in read_records(path):
                prompt, chosen = first_round(raw, where)
                rows.append(manual.make_row(prompt, chosen))
        n = self.builder_config.num_examples
        if n is None:
            yield from rows
            return
        if not self._tokenizer_path:
            raise ValueError(
                "ultrachat/first_round_120k filters by token counts: pass the proposal's "
                "tokenizer (builder argument tokenizer=PATH, or prepare --tokenizer=PATH)."
            )
        from ram_jax.models.tokenizer import load_tokenizer

        tok = load_tokenizer(self._tokenizer_path)

        def count(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False).ids)

        yield from length_filter(rows, count, num_examples=n)
