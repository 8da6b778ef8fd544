"""The 805 AlpacaEval 2 prompts with the gpt4_1106_preview reference outputs.

Manual file, either of:
  MANUAL_DIR/alpaca_eval_gpt4_baseline.json
      from https://huggingface.co/datasets/tatsu-lab/alpaca_eval (AlpacaEval 2's
      default reference, generator gpt4_1106_preview)
  MANUAL_DIR/model_outputs.json
      https://github.com/tatsu-lab/alpaca_eval/blob/main/results/gpt4_1106_preview/model_outputs.json
Rows: a JSON list of {instruction, output, generator, dataset}. Split `test`:
`prompt` = instruction, `chosen` = the reference output.
"""

from __future__ import annotations

from collections.abc import Iterator

from ram_jax.datasets import builder, manual
from ram_jax.io import read_records

INSTRUCTIONS = """
Download alpaca_eval_gpt4_baseline.json from https://huggingface.co/datasets/tatsu-lab/alpaca_eval
(or results/gpt4_1106_preview/model_outputs.json from https://github.com/tatsu-lab/alpaca_eval)
into MANUAL_DIR.
"""


def read_alpaca(path: str) -> Iterator[tuple[dict, dict]]:
    """(training-schema row, original record) for each AlpacaEval record of `path`."""
    for where, raw in read_records(path):
        manual.require(raw, ("instruction", "output"), where)
        yield manual.make_row(raw["instruction"], raw["output"]), raw


class RamAlpacaEval(builder.RowsBuilder):
    """AlpacaEval 2 evaluation prompts (805) with their reference outputs."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    SOURCE_SPLITS = ("test",)
    TEST300_FROM = None

    def source_rows(self, manual_dir: str, split: str) -> Iterator[dict]:
        path = manual.find_file(
            manual_dir,
            ("alpaca_eval_gpt4_baseline.json", "model_outputs.json"),
            "AlpacaEval 2 prompts",
            INSTRUCTIONS,
        )
        for row, _ in read_alpaca(path):
            yield row
