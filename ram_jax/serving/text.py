"""One choice's text as its tokens arrive: incremental, cut at stop strings, with log-probs.

The text follows `driver.generate`'s rules exactly (`DecodeRecord.texts`):
the ids before the first stop id, decoded without special tokens, cut before
the first stop string; the kept tokens end at the token that completed the
stop string. Streamed deltas never show text that a later stop string could
remove (a tail that may begin a stop string, or an incomplete UTF-8
character, waits for the next tokens).
"""

from __future__ import annotations

import dataclasses

from ram_jax.decoding import batching
from ram_jax.serving.engine import Job, Tokens


@dataclasses.dataclass(frozen=True)
class Delta:
    text: str
    count: int  # tokens this delta adds


class TextStream:
    """The accumulated output of one job (feed it the engine's `Tokens` events)."""

    def __init__(self, tokenizer, job: Job):
        self.tokenizer, self.job = tokenizer, job
        self.stops = tuple(job.params.stop)
        self.stop_ids = set(job.stop_ids) | set(job.params.stop_token_ids)
        self.ids: list[int] = []
        self.logprobs_p: list[float] = []
        self.logprobs_q: list[list[float]] = []
        self.emitted = ""
        self.finish_reason: str | None = None
        self.prompt_tokens = len(job.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        return len(self.ids)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _text_ids(self) -> list[int]:
        return batching.response_ids(self.ids, len(self.ids), self.stop_ids)

    @property
    def text(self) -> str:
        return batching.cut_at_stops(self._decode(self._text_ids()), self.stops)

    def add(self, event: Tokens) -> Delta:
        """Takes new tokens; returns the text that is now final. Sets `finish_reason`."""
        if self.finished:
            return Delta("", 0)
        before = len(self.ids)
        self.ids += event.ids
        if event.logprobs_p is not None:
            self.logprobs_p += event.logprobs_p
        if event.logprobs_q is not None:
            self.logprobs_q += event.logprobs_q
        if self.stops and any(s in self._decode(self._text_ids()) for s in self.stops):
            ids = self._text_ids()
            # The token that completed the stop string ends the choice (as in generate).
            keep = next(
                k
                for k in range(min(before, len(ids)) + 1, len(ids) + 1)
                if any(s in self._decode(ids[:k]) for s in self.stops)
            )
            self.ids, self.finish_reason = self.ids[:keep], "stop"
            self.logprobs_p, self.logprobs_q = self.logprobs_p[:keep], self.logprobs_q[:keep]
        elif event.finish is not None:
            self.finish_reason = event.finish
        full = self.text
        if not self.finished:
            full = _hold_back(full, self.stops)
        delta = full[len(self.emitted) :] if full.startswith(self.emitted) else ""
        self.emitted += delta
        return Delta(delta, len(self.ids) - before)

    def token_strings(self) -> list[str]:
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in self.ids]

    def ram_extension(self, aligner_names) -> dict:
        """Token ids and each model's log-prob of each token (the response's `ram` object)."""
        out = {"token_ids": list(self.ids)}
        if self.logprobs_p:
            out["proposal_logprobs"] = list(self.logprobs_p)
        if self.logprobs_q:
            used = [i for i, w in enumerate(self.job.params.aligner_weights or ()) if w > 0]
            out["aligner_logprobs"] = {
                aligner_names[i]: [row[i] for row in self.logprobs_q] for i in used
            }
        return out


def _hold_back(text: str, stops) -> str:
    """`text` without a tail that could still grow into a stop string or a UTF-8 character."""
    if text.endswith("\ufffd"):
        text = text.rstrip("\ufffd")
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-k:]):
                text = text[:-k]
                break
    return text
