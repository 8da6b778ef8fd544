"""The tfds builder base class shared by the paper's datasets (array_record, no TensorFlow).

A subclass names its splits and turns the user's manual files into rows of
the training schema (`manual.ROW_FIELDS`); this class supplies the features,
the ready-JSONL fallback, the fixed-seed `test300` split and deterministic
(unshuffled) record order, so `tfds.data_source(...)[i]` is the i-th row of
the source files.

  builder = RamHhRlhf(config="helpful-base", data_dir=DATA, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=M))
  rows = builder.as_data_source()["train"]        # or load_rows(...) for plain dicts
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import tensorflow_datasets as tfds

from ram_jax.datasets import manual


class RowsBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """Base of every ram_jax dataset builder: rows {prompt, chosen, rejected, sampling}."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    # Nothing is downloaded, so there are no URL checksums to look up (tfds
    # would otherwise search for a checksums file next to this module).
    url_infos = None
    # Splits read from the source files; TEST300_FROM names the split the
    # paper's 300-example evaluation subset is drawn from (None: no subset).
    SOURCE_SPLITS: tuple[str, ...] = ("train", "test")
    TEST300_FROM: str | None = "test"

    @abc.abstractmethod
    def source_rows(self, manual_dir: str, split: str) -> Iterator[dict]:
        """Rows of `split` read from the original files in `manual_dir`."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=tfds.features.FeaturesDict(
                {
                    "prompt": tfds.features.Text(),
                    "chosen": tfds.features.Text(),
                    "rejected": tfds.features.Text(),
                    "sampling": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            supervised_keys=None,
            # Records keep source-file order, so indices (and the test300 draw) are stable.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        manual_dir = str(dl_manager.manual_dir)
        splits = {s: self._generate_examples(manual_dir, s) for s in self.SOURCE_SPLITS}
        if self.TEST300_FROM is not None:
            splits["test300"] = self._generate_examples(manual_dir, "test300")
        return splits

    @property
    def label(self) -> str:
        return f"{self.name}/{self.builder_config.name}" if self.builder_config else self.name

    def rows(self, manual_dir: str, split: str) -> Iterator[dict]:
        """Rows of `split` ('test300' included), from a ready JSONL if one is present."""
        if split == "test300":
            if self.TEST300_FROM is None:
                raise ValueError(f"{self.label} has no test300 split.")
            ready = manual.ready_jsonl(manual_dir, "test300")
            if ready:
                yield from manual.read_ready_jsonl(ready)
                return
            full = list(self.rows(manual_dir, self.TEST300_FROM))
            for i in manual.test_subset(len(full)):
                yield full[int(i)]
            return
        if split not in self.SOURCE_SPLITS:
            known = list(self.SOURCE_SPLITS) + (["test300"] if self.TEST300_FROM else [])
            raise ValueError(f"{self.label}: unknown split {split!r}; choose from {known}.")
        ready = manual.ready_jsonl(manual_dir, split)
        if ready:
            yield from manual.read_ready_jsonl(ready)
        else:
            yield from self.source_rows(manual_dir, split)

    def _generate_examples(self, manual_dir: str, split: str):
        yield from enumerate(self.rows(manual_dir, split))


def decode_example(example: dict) -> dict:
    """A tfds record (bytes) as a training row (str), empty fields dropped."""

    def text(x):
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    row = {
        "prompt": text(example["prompt"]),
        "chosen": text(example["chosen"]),
        "rejected": text(example["rejected"]),
        "sampling": [text(s) for s in example["sampling"]],
    }
    return manual.export_row(row)
