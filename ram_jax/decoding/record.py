"""What a decode gives back: per-prompt tokens, log-probs and texts, timings, and metrics.

`DecodeRecord` is the driver's result; `Rows` fills it batch by batch on the
host; `decode_metrics` summarises per-prompt counts and per-batch timings
(`DecodeRecord.metrics`, and `decoding.files` for a resumed run whose earlier
batches left only their counts); `response_texts` turns ids into responses.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import numpy as np

from ram_jax.decoding import batching
from ram_jax.decoding.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class BatchTiming:
    """Wall seconds of one batch: to its first token, in all, and its decode steps."""

    ttft_seconds: float
    seconds: float
    steps: int
    tokens: int


@dataclasses.dataclass(frozen=True)
class DecodeRecord:
    """Everything one decode produced, one row per prompt (R = the most new tokens).

    tokens: `[P, R]` ids, `pad_id` after a row's end. lengths: `[P]` kept
    tokens (a final EOS / stop id included; a stop string ends the row at the
    token that completed it). logprobs_p `[P, R]`, logprobs_q `[P, A, R]`:
    each model's `log_softmax` of the token at T = 1 (0 after the end; None
    without that model). aligner_branch: `[P, R]` the aligner shaped the
    token (`par_kl`: the `par` branch). finish_reasons: "stop" (EOS, stop id
    or stop string) or "length". texts: the responses (with a tokenizer):
    ids up to the first stop id, cut before the first stop string, stripped
    on the right when asked. candidate: `seq_sir`'s chosen candidate.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logprobs_p: np.ndarray | None
    logprobs_q: np.ndarray | None
    aligner_branch: np.ndarray
    finish_reasons: list[str]
    texts: list[str] | None
    candidate: np.ndarray | None
    mode: str
    batch_size: int
    batches: tuple[BatchTiming, ...]

    def metrics(self) -> dict:
        """Counts, timings and aligner rates (see `decode_metrics`)."""
        live = np.arange(self.tokens.shape[1])[None] < self.lengths[:, None]
        return decode_metrics(
            self.mode,
            self.batch_size,
            self.lengths,
            (self.aligner_branch & live).sum(1),
            self.aligner_branch[:, 0],
            self.batches,
        )


def decode_metrics(mode, batch_size, lengths, branch_tokens, branch_first, batches) -> dict:
    """A decode's summary from per-prompt counts and per-batch timings.

    lengths / branch_tokens: `[P]` kept tokens and those the aligner shaped;
    branch_first: `[P]` whether it shaped the first token. Timings skip the
    first (compiling) batch when there are later ones.
    """
    warm = batches[1:] if len(batches) > 1 else batches
    steps = sum(x.steps for x in warm)
    lengths = np.asarray(lengths)
    total = int(lengths.sum())
    return {
        "mode": mode,
        "num_prompts": len(lengths),
        "batch_size": batch_size,
        "generated_tokens": total,
        "ttft_seconds": float(statistics.median(x.ttft_seconds for x in warm)),
        "tokens_per_second": sum(x.tokens for x in warm) / sum(x.seconds for x in warm),
        "step_seconds": sum(x.seconds - x.ttft_seconds for x in warm) / max(steps, 1),
        "first_batch_seconds": batches[0].seconds,
        "batch_seconds": float(np.mean([x.seconds for x in warm])),
        "wall_seconds": sum(x.seconds for x in batches),
        "timings_include_compile": len(batches) == 1,
        "aligner_branch_rate": float(np.sum(branch_tokens)) / total if total else 0.0,
        "aligner_branch_rate_first_token": float(np.mean(branch_first)) if len(lengths) else 0.0,
    }


def stop_ids(params: SamplingParams, eos_ids: Sequence[int]) -> set[int]:
    return set(eos_ids) | set(params.stop_token_ids)


class Rows:
    """Host buffers of every row's outputs, filled batch by batch."""

    def __init__(self, count: int, width: int, aligners: int, proposal: bool, pad_id: int):
        self.tokens = np.full((count, width), pad_id, np.int32)
        self.live = np.zeros((count, width), bool)
        self.branch = np.zeros((count, width), bool)
        self.logprobs_p = np.zeros((count, width), np.float32) if proposal else None
        self.logprobs_q = np.zeros((count, aligners, width), np.float32) if aligners else None
        self.cut = np.zeros(count, bool)
        self.pad_id = pad_id

    def store(self, first: int, parts: list[dict], cuts: dict[int, int], real: int) -> int:
        """Copies one batch's real rows (trimmed at their stop strings); returns tokens kept."""
        cat = lambda name: np.concatenate([p[name] for p in parts])[:, :real]  # [S, rows, ...]
        steps = sum(len(p["tokens"]) for p in parts)
        live = cat("live").T
        for row, cut in cuts.items():
            live[row, cut:] = False
            self.cut[first + row] = True
        rows = slice(first, first + real)
        self.live[rows, :steps] = live
        self.tokens[rows, :steps] = np.where(live, cat("tokens").T, self.pad_id)
        self.branch[rows, :steps] = cat("branch").T & live
        if self.logprobs_p is not None:
            self.logprobs_p[rows, :steps] = cat("logprobs_p").T * live
        if self.logprobs_q is not None:
            q_BxAxS = np.transpose(cat("logprobs_q"), (1, 2, 0))
            self.logprobs_q[rows, :, :steps] = q_BxAxS * live[:, None]
        return int(live.sum())

    def record(self, mode: str, batch_size: int, timings, params, eos_ids) -> DecodeRecord:
        lengths = self.live.sum(1).astype(np.int32)
        last = self.tokens[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
        stopped = [
            bool(cut) or (n > 0 and int(t) in stop_ids(p, eos_ids))
            for cut, n, t, p in zip(self.cut, lengths, last, params, strict=True)
        ]
        return DecodeRecord(
            tokens=self.tokens,
            lengths=lengths,
            logprobs_p=self.logprobs_p,
            logprobs_q=self.logprobs_q,
            aligner_branch=self.branch,
            finish_reasons=["stop" if s else "length" for s in stopped],
            texts=None,
            candidate=None,
            mode=mode,
            batch_size=batch_size,
            batches=tuple(timings),
        )


def response_texts(record: DecodeRecord, tokenizer, params, eos_ids) -> list[str]:
    """Response texts: ids before the first stop id, cut before the first stop string."""
    ids = [
        batching.response_ids(row, n, stop_ids(p, eos_ids))
        for row, n, p in zip(record.tokens, record.lengths, params, strict=True)
    ]
    texts = tokenizer.decode_batch(ids, skip_special_tokens=True)
    out = []
    for text, p in zip(texts, params, strict=True):
        text = batching.cut_at_stops(text, p.stop)
        out.append(text.rstrip() if p.rstrip else text)
    return out
