"""Deterministic, resumable batching over an in-memory (random-access) example set.

The order is a pure function of (seed, epoch): `permutation(seed, epoch)`,
so the iterator's whole state is `{epoch, index}` and a restored run sees
exactly the batches an uninterrupted one would. Each global batch is laid out
as `[A, B/A, G, T]` (A gradient-accumulation microbatches) and every process
keeps only its own slice of the B/A axis, matching the mesh's device order
(`train.put_batch` assembles the global array). The length T is the
smallest padding bucket (a power of two >= `bucket_min`, at most
`max_length`) holding the batch's longest sequence, computed over the GLOBAL
batch so all processes agree; few buckets keep recompilation rare.

Batch arrays (numpy):
  tokens   int32 [A, b, G, T]  right-padded with 0
  mask     bool  [A, b, G, T]  real tokens
  targets  bool  [A, b, G, T]  response tokens (EOS included) that are scored
  weight   float32 [A, b]      1 for real examples, 0 for padding rows
"""

from __future__ import annotations

import numpy as np

from ram_jax.data.tokenize import Examples


def bucket_length(longest: int, bucket_min: int, max_length: int) -> int:
    t = max(bucket_min, 1 << max(0, int(longest - 1).bit_length()))
    return min(t, max_length)


def collate(examples: Examples, ids, length: int) -> dict[str, np.ndarray]:
    """Pads the examples `ids` (-1 = padding row) to `[len(ids), G, length]` arrays."""
    n, g = len(ids), examples.group_size
    tokens = np.zeros((n, g, length), np.int32)
    mask = np.zeros((n, g, length), bool)
    targets = np.zeros((n, g, length), bool)
    weight = np.zeros((n,), np.float32)
    for r, i in enumerate(ids):
        if i < 0:
            continue
        weight[r] = 1.0
        p = examples.prompt_lengths[i]
        for s, seq in enumerate(examples.sequences[i]):
            tokens[r, s, : len(seq)] = seq
            mask[r, s, : len(seq)] = True
            targets[r, s, p : len(seq)] = True
    return {"tokens": tokens, "mask": mask, "targets": targets, "weight": weight}


class Batches:
    """Random access to training batches by (epoch, index); drops each epoch's remainder."""

    def __init__(
        self,
        examples: Examples,
        *,
        batch_size: int,
        grad_accum: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        bucket_min: int = 64,
        max_length: int = 2048,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size % grad_accum:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by grad_accum={grad_accum}."
            )
        micro = batch_size // grad_accum
        if micro % process_count:
            raise ValueError(
                f"the microbatch ({batch_size}/{grad_accum}={micro}) does not split over "
                f"{process_count} processes."
            )
        if len(examples) < batch_size:
            raise ValueError(
                f"the training set has {len(examples)} examples, fewer than batch_size="
                f"{batch_size}; lower batch_size or add data."
            )
        self.examples = examples
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.seed, self.shuffle = seed, shuffle
        self.bucket_min, self.max_length = bucket_min, max_length
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = len(examples) // batch_size
        self._lengths = np.asarray([max(len(s) for s in g) for g in examples.sequences])

    def permutation(self, epoch: int) -> np.ndarray:
        n = len(self.examples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """This process's part of global batch `index` of `epoch`, shaped [A, b, ...]."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch index {index} outside [0, {self.steps_per_epoch}).")
        ids = self.permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        length = bucket_length(int(self._lengths[ids].max()), self.bucket_min, self.max_length)
        per_micro = self.batch_size // self.grad_accum
        local = per_micro // self.process_count
        ids_AxM = ids.reshape(self.grad_accum, per_micro)
        mine = ids_AxM[:, self.process_index * local : (self.process_index + 1) * local]
        flat = collate(self.examples, mine.reshape(-1), length)
        return {k: v.reshape(self.grad_accum, local, *v.shape[1:]) for k, v in flat.items()}


class DataIterator:
    """Iterates `Batches` across epochs; `state()` / `restore()` make it checkpointable."""

    def __init__(self, batches: Batches, epoch: int = 0, index: int = 0):
        self.batches, self.epoch, self.index = batches, epoch, index

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = self.batches.batch(self.epoch, self.index)
        self.index += 1
        if self.index == self.batches.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.batches.seed}

    def restore(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.batches.seed)) != self.batches.seed:
            raise ValueError(
                f"checkpointed data seed {state['seed']} differs from config seed "
                f"{self.batches.seed}; resume with the same config or use a new workdir."
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(
    examples: Examples,
    batch_size: int,
    *,
    bucket_min: int,
    max_length: int,
    process_index: int = 0,
    process_count: int = 1,
):
    """Every example once, in order, as [1, b, ...] batches; the last is padded (weight 0)."""
    if batch_size % process_count:
        raise ValueError(f"eval batch {batch_size} does not split over {process_count} processes.")
    n = len(examples)
    lengths = [max(len(s) for s in g) for g in examples.sequences]
    local = batch_size // process_count
    for start in range(0, n, batch_size):
        ids = np.full((batch_size,), -1, np.int64)
        chunk = np.arange(start, min(start + batch_size, n))
        ids[: len(chunk)] = chunk
        length = bucket_length(max(lengths[i] for i in chunk), bucket_min, max_length)
        mine = ids[process_index * local : (process_index + 1) * local]
        yield {k: v[None] for k, v in collate(examples, mine, length).items()}
