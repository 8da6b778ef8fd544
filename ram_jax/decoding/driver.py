"""The one host entry point: prompts in, one `DecodeRecord` out, chunks streamed on the way.

`stream(...)` is the decoding loop, a generator: it validates everything
before any compute, buckets and batches the prompts, and for each batch runs
`decoder.start` (prefill), `decoder.advance` for the first token, then
`decoder.advance` in chunks until every row is done, yielding each `Chunk`
as it reaches the host; its return value is the record. `generate(...)` runs it to the end (with an
optional `on_chunk` callback). The library, the CLI, the demo and the
benchmarks all decode through these two.

Per row: the settings (`SamplingParams`, one per prompt or one for all),
the key (prompt i: `prompt_keys[i]`, default `split(key, P)[i]`), the
length limit and the stop ids. A stop string ends its row at the next chunk
boundary (the host checks the text between chunks); the tokens after it are
dropped, and every count and rate in the record counts only kept tokens.
With `seq_sir`, prompt i decodes its N candidates with `split(prompt key,
N)` and resamples with its own key, so a prompt's output never depends on
its neighbours or the batch size.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from ram_jax.decoding import batching, decoder
from ram_jax.decoding.modes import Mode, get_mode
from ram_jax.decoding.record import BatchTiming, DecodeRecord, Rows, response_texts, stop_ids
from ram_jax.decoding.resample import SeqSir
from ram_jax.decoding.sampling import RowSettings, SamplingParams
from ram_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Models:
    """The proposal (optional) and the aligners, as `(params, config)` pairs."""

    proposal: tuple[Any, ModelConfig] | None = None
    aligners: tuple[tuple[Any, ModelConfig], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "aligners", tuple(tuple(a) for a in self.aligners))

    @property
    def params(self) -> tuple:
        return (self.proposal[0] if self.proposal else None, *(a[0] for a in self.aligners))

    @property
    def configs(self) -> tuple:
        return (self.proposal[1] if self.proposal else None, *(a[1] for a in self.aligners))

    def arranged(self, unroll_layers: bool | None = None) -> Models:
        """The same models in the decoder's layer layout (`decoder.arrange_layers`)."""
        params = decoder.arrange_layers(self.params, unroll_layers)
        proposal = (params[0], self.proposal[1]) if self.proposal else None
        aligners = tuple((p, a[1]) for p, a in zip(params[1:], self.aligners, strict=True))
        return Models(proposal, aligners)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Tokens of one batch that just reached the host.

    prompts: the prompt index of each row (-1: a filler row; with `seq_sir`
    rows are candidates). tokens / live: `[rows, steps]`; a row's tokens
    are those where `live`. final: the batch's last chunk.
    """

    batch: int
    prompts: np.ndarray
    tokens: np.ndarray
    live: np.ndarray
    final: bool


def check_models(mode: Mode, models: Models, vocab_size: int, seq_sir: SeqSir | None) -> None:
    """Rejects a mode/model mismatch or a vocabulary larger than a model's, before compute."""
    n = len(models.aligners)
    if mode.uses_proposal and models.proposal is None:
        raise ValueError(f"mode {mode.name!r} needs the proposal model; pass its params.")
    if n < max(mode.min_aligners, 1 if seq_sir else 0):
        raise ValueError(
            f"mode {mode.name!r}{' with seq_sir' if seq_sir else ''} needs an aligner; pass "
            "aligner params or use mode 'proposal'."
        )
    if mode.max_aligners is not None and n > mode.max_aligners:
        raise ValueError(
            f"mode {mode.name!r} takes {mode.max_aligners} aligner(s), got {n}; to combine "
            "aligners use 'weighted_product' (or 'par', 'par_kl', which pool them)."
        )
    if models.proposal is None and n == 0:
        raise ValueError("no model to decode with; pass the proposal and/or aligners.")
    names = ["proposal"] + [f"aligner {i}" for i in range(n)]
    for name, config in zip(names, models.configs, strict=True):
        if config is not None and vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer length {vocab_size} exceeds the {name}'s {config.vocab_size} "
                "embedding rows; the tokenizer does not belong to this model."
            )


def _per_prompt(params, count: int, mode: Mode, n_aligners: int, seq_sir) -> list:
    if isinstance(params, SamplingParams):
        params = [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(f"{len(params)} SamplingParams for {count} prompts; give one or one each.")
    reads_weights = mode.reads_weights or seq_sir is not None
    for i, p in enumerate(params):
        weights = p.weights(n_aligners)
        if not reads_weights and any(w != 1.0 for w in weights):
            raise ValueError(
                f"prompt {i}: mode {mode.name!r} does not read aligner weights "
                f"(got {weights}); use 'weighted_product', or leave the weights at 1."
            )
    return params


def stream(
    models: Models,
    prompts: Sequence[Sequence[int]],
    mode: Mode | str,
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    *,
    vocab_size: int,
    key: jax.Array | None = None,
    prompt_keys: jax.Array | None = None,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int | None = None,
    min_bucket: int = 16,
    min_slots: int = 0,
    chunk: int = 16,
    seq_sir: SeqSir | None = None,
    tokenizer=None,
) -> Iterator[Chunk]:
    """Decodes `prompts` (token id lists), yielding chunks; returns the `DecodeRecord`.

    Args:
      models: the proposal and aligners (`Models.arranged()` puts them in the
        CPU layer layout once; otherwise every call uses what it gets).
      prompts: token ids per prompt. mode: a `Mode` or a registered name.
      params: one `SamplingParams` for all prompts, or one per prompt.
      vocab_size: tokenizer length (logits are sliced to it).
      key / prompt_keys: the PRNG key (split per prompt), or one key per prompt.
      eos_ids: ids that end every row (each row adds its `stop_token_ids`).
      pad_id: emitted after a row ends. batch_size: prompts per compiled
        batch (default: all; the last batch is filled with copies of its
        first prompt, dropped afterwards). min_bucket: shortest prompt bucket
        (prompts are left padded to a power of two: one compile per bucket).
      min_slots: shortest KV cache. A job that decodes its prompts in several
        calls passes its whole set's `min_bucket` (longest prompt) and
        `min_slots` (that plus the most new tokens), so every call has the
        shapes, and so the outputs, of one call over all prompts.
      chunk: decode steps per device call between host checks.
      seq_sir: resample one of N candidates per prompt (`SeqSir`).
      tokenizer: needed for stop strings and texts.
    """
    mode = get_mode(mode) if isinstance(mode, str) else mode
    check_models(mode, models, vocab_size, seq_sir)
    params = _per_prompt(params, len(prompts), mode, len(models.aligners), seq_sir)
    most_new = max(p.max_new_tokens for p in params)
    batching.check_prompts(prompts, most_new, [c for c in models.configs if c], vocab_size)
    if any(p.stop for p in params) and tokenizer is None:
        raise ValueError("stop strings need the tokenizer; pass tokenizer=.")
    if int(chunk) < 1 or (batch_size is not None and int(batch_size) < 1):
        raise ValueError(f"chunk={chunk} and batch_size={batch_size} must be >= 1.")
    if prompt_keys is None:
        if key is None:
            raise ValueError("pass key= (a PRNG key) or prompt_keys=.")
        prompt_keys = jax.random.split(key, len(prompts))
    elif len(prompt_keys) != len(prompts):
        raise ValueError(f"{len(prompt_keys)} prompt_keys for {len(prompts)} prompts.")

    n = seq_sir.num_candidates if seq_sir else 1
    owner = np.repeat(np.arange(len(prompts)), n)  # row -> prompt
    row_keys = seq_sir.candidate_keys(prompt_keys) if seq_sir else prompt_keys
    width = (batch_size or len(prompts)) * n
    length = batching.bucket_length(max(len(p) for p in prompts), min_bucket)
    # A power of two too: requests of other lengths share the compiled decoder.
    slots = batching.bucket_length(max(length + most_new, int(min_slots)))
    static = dict(configs=models.configs, mode=mode, vocab_size=int(vocab_size), pad_id=int(pad_id))
    eos_ids = tuple(int(e) for e in eos_ids)
    out = Rows(len(owner), most_new, len(models.aligners), models.proposal is not None, pad_id)
    timings = []
    for b, first in enumerate(range(0, len(owner), width)):
        real = min(width, len(owner) - first)
        picks = first + np.where(np.arange(width) < real, np.arange(width), 0)
        batch_params = [params[i] for i in owner[picks]]
        tokens_BxT, mask_BxT = batching.left_pad([prompts[i] for i in owner[picks]], length, pad_id)
        settings = RowSettings.stack(batch_params, len(models.aligners), eos_ids)
        stops = _StopStrings(tokenizer, batch_params[:real], eos_ids)
        prompts_B = np.where(np.arange(width) < real, owner[picks], -1)
        t0 = time.perf_counter()
        state = decoder.start(
            models.params,
            tokens_BxT,
            mask_BxT,
            row_keys[picks],
            settings,
            slots=slots,
            configs=models.configs,
            vocab_size=int(vocab_size),
        )
        parts, steps, halt, limit = [], 0, np.zeros(width, bool), 1
        while True:
            state, dev, count = decoder.advance(
                state, models.params, halt, limit, chunk=int(chunk), **static
            )
            steps += int(count)
            parts.append(_host(dev, int(count)))
            if limit == 1:
                ttft = time.perf_counter() - t0
            halt = np.zeros(width, bool)
            halt[:real] = stops.check(parts)
            done = parts[-1]["done"][-1] | halt | (np.arange(width) >= real)
            yield Chunk(b, prompts_B, parts[-1]["tokens"].T, parts[-1]["live"].T, done.all())
            if done.all():
                break
            limit = int(chunk)
        kept = out.store(first, parts, stops.cuts, real)
        seconds = time.perf_counter() - t0
        timings.append(BatchTiming(seconds if seq_sir else ttft, seconds, steps - 1, kept))
    row_params = [params[i] for i in owner]
    record = out.record(mode.name, batch_size or len(prompts), timings, row_params, eos_ids)
    if seq_sir:
        record = _resample(record, seq_sir, prompt_keys, params, batch_size or len(prompts))
    if tokenizer is not None:
        texts = response_texts(record, tokenizer, params, eos_ids)
        record = dataclasses.replace(record, texts=texts)
    return record


def generate(*args, on_chunk: Callable[[Chunk], None] | None = None, **kwargs) -> DecodeRecord:
    """`stream(...)` run to the end (same arguments); `on_chunk` sees every chunk."""
    chunks = stream(*args, **kwargs)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration as end:
            return end.value
        if on_chunk is not None:
            on_chunk(chunk)


def _host(dev: dict, steps: int) -> dict:
    """A chunk's first `steps` outputs as numpy, `[steps, B, ...]`."""
    return {k: None if v is None else np.asarray(v)[:steps] for k, v in dev.items()}


class _StopStrings:
    """The host-side stop-string check between chunks, for one batch's real rows."""

    def __init__(self, tokenizer, params: Sequence[SamplingParams], eos_ids):
        self.tokenizer = tokenizer
        self.stops = [p.stop for p in params]
        self.stop_ids = [stop_ids(p, eos_ids) for p in params]
        self.cuts: dict[int, int] = {}  # row -> tokens kept
        self.checked = np.zeros(len(params), int)

    def _holds(self, row: int, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in self.stops[row])

    def check(self, parts: list[dict]) -> np.ndarray:
        """Rows whose text now holds a stop string (each row's cut is recorded once)."""
        halt = np.zeros(len(self.stops), bool)
        if not any(self.stops):
            return halt
        tokens = np.concatenate([p["tokens"] for p in parts]).T
        live = np.concatenate([p["live"] for p in parts]).T
        for row in range(len(self.stops)):
            n = int(live[row].sum())
            if not self.stops[row] or row in self.cuts or n <= self.checked[row]:
                continue
            ids = batching.response_ids(tokens[row], n, self.stop_ids[row])
            if self._holds(row, ids):
                # The token that completed the stop string ends the row.
                start = min(int(self.checked[row]), len(ids))
                self.cuts[row] = next(
                    k for k in range(start + 1, len(ids) + 1) if self._holds(row, ids[:k])
                )
                halt[row] = True
            self.checked[row] = n
        return halt


def _resample(record, seq_sir: SeqSir, prompt_keys, params, batch_size) -> DecodeRecord:
    """Keeps one candidate per prompt, drawn by the aligners' sequence likelihoods."""
    n = seq_sir.num_candidates
    count = len(params)
    weights = np.asarray([p.weights(record.logprobs_q.shape[1]) for p in params], np.float32)
    seq_logq = record.logprobs_q.sum(-1).reshape(count, n, -1)  # [P, N, A]
    pick = seq_sir.pick(prompt_keys, np.einsum("pna,pa->pn", seq_logq, weights))
    chosen = np.arange(count) * n + pick
    take = lambda x: None if x is None else x[chosen]
    lengths = record.lengths[chosen]
    timings = [
        dataclasses.replace(t, tokens=int(lengths[b * batch_size : (b + 1) * batch_size].sum()))
        for b, t in enumerate(record.batches)
    ]
    return dataclasses.replace(
        record,
        tokens=record.tokens[chosen],
        lengths=lengths,
        logprobs_p=take(record.logprobs_p),
        logprobs_q=take(record.logprobs_q),
        aligner_branch=record.aligner_branch[chosen],
        finish_reasons=[record.finish_reasons[i] for i in chosen],
        candidate=pick,
        batches=tuple(timings),
    )
