"""Continuous batching: a fixed set of decode slots that requests join and leave.

One thread owns the device state (`decoder.empty`: `slots` rows whose caches
have per-row positions) and loops: insert waiting requests into free rows
(`decoder.insert`: a batch-1 prefill of every model at the prompt's bucket
length, copied into the row), run `decoder.advance` for `chunk` steps over
all rows with one per-row mode table (`dispatch.PerRow`), and hand each
request its new tokens. A row that finishes (stop id, length), or whose
request is cancelled (a stop string seen by the HTTP layer, a client that
went away), is free for the next request at once. Requests wait in a
bounded queue; `submit` raises `QueueFull` beyond it (the server answers 429).

A request's tokens depend only on its prompt, key and settings (the
decoder's per-row keys and steps), so they equal `driver.generate`'s for
the same prompt, key and settings whatever else is in flight. Every program
is compiled in `warm_up` (one `insert` per prompt bucket, one `advance`),
so serving compiles nothing new.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Sequence

import jax
import numpy as np

from ram_jax.decoding import batching, decoder
from ram_jax.decoding.dispatch import PerRow
from ram_jax.decoding.driver import Models
from ram_jax.decoding.sampling import RowSettings, SamplingParams
from ram_jax.serving.metrics import ServerMetrics

STOP_WIDTH = 8  # EOS + stop ids per row
MAX_CHOICES = 16  # sequences per request (prompts x n): their keys' programs are compiled
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def choice_keys(seed: int, count: int) -> np.ndarray:
    """`split(key(seed), count)` as raw key data `[count, 2]` (what `generate --seed` gives
    prompts 0..count-1)."""
    return np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), count)))


class QueueFull(Exception):
    """The request queue is at its bound; the client should retry later."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One sequence to decode: prompt ids, its mode's index in the table, settings, key.

    `params.aligner_weights` has one weight per aligner the server holds (0:
    unused); `stop_ids` are the EOS ids of the models it reads.
    """

    prompt_ids: tuple[int, ...]
    mode_index: int
    params: SamplingParams
    key_data: np.ndarray  # the row's PRNG key (`jax.random.key_data`)
    stop_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Tokens:
    """New tokens of one request; `finish` ("stop" / "length") on its last event."""

    ids: list[int]
    logprobs_p: list[float] | None
    logprobs_q: list[list[float]] | None  # per token, one per aligner the server holds
    finish: str | None = None


class Handle:
    """The asynchronous side of one submitted job: its token events, and cancel."""

    def __init__(self, job: Job, engine: Engine, loop: asyncio.AbstractEventLoop):
        self.job, self._engine, self._loop = job, engine, loop
        self._events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.last_time: float | None = None

    def cancel(self) -> None:
        """Frees the request's slot at the next chunk (or drops it from the queue)."""
        if not self.cancelled:
            self.cancelled = True
            self._engine._wake.set()

    def _put(self, item) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    async def events(self) -> AsyncIterator[Tokens]:
        """Token events until the request finishes; raises if the engine failed it."""
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish is not None:
                return


class Engine:
    """The decode slots and the thread that runs them (`start`, `submit`, `shutdown`)."""

    def __init__(
        self,
        models: Models,
        modes: PerRow,
        *,
        vocab_size: int,
        pad_id: int,
        slots: int = 32,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        chunk: int = 8,
        max_queue: int = 256,
        min_bucket: int = 16,
        metrics: ServerMetrics | None = None,
    ):
        if slots < 1 or chunk < 1 or max_queue < 0:
            raise ValueError(f"slots={slots}, chunk={chunk} must be >= 1, max_queue >= 0.")
        context = min(c.max_position_embeddings for c in models.configs if c)
        if max_length > context:
            raise ValueError(
                f"max_length={max_length} exceeds the models' context of {context} positions; "
                f"pass --max_length <= {context}."
            )
        self.models, self.modes = models, modes
        self.vocab_size, self.pad_id = int(vocab_size), int(pad_id)
        self.slots, self.max_length, self.chunk = int(slots), int(max_length), int(chunk)
        if max_length <= min_bucket:
            raise ValueError(
                f"max_length={max_length} must exceed the shortest bucket, {min_bucket}."
            )
        largest = batching.bucket_length(1, min_bucket)  # the longest bucket the cache holds
        while largest * 2 <= max_length:
            largest *= 2
        self.max_prompt_length = min(int(max_prompt_length or max_length), largest)
        self.max_queue, self.min_bucket = int(max_queue), int(min_bucket)
        self.metrics = metrics or ServerMetrics(self.slots)
        self._static = dict(configs=models.configs, vocab_size=self.vocab_size)
        self._queue: collections.deque[Handle] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._owner: list[Handle | None] = [None] * self.slots
        self._stopping = False
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._state = None
        self.error: BaseException | None = None
        # Every XLA compilation in the process: serving after `warm_up` should add none.
        jax.monitoring.register_event_duration_secs_listener(self._count_compile)

    def _count_compile(self, event: str, duration: float, **_) -> None:
        if event == _COMPILE_EVENT:
            self.metrics.compilations.inc()

    # -- the event loop's side --------------------------------------------------

    def buckets(self) -> list[int]:
        """Prompt lengths compiled: powers of two from `min_bucket`, up to the one that holds
        `max_prompt_length`."""
        out, b = [], batching.bucket_length(1, self.min_bucket)
        while not out or out[-1] < self.max_prompt_length:
            out.append(b)
            b *= 2
        return out

    def room(self, prompt_len: int) -> int:
        """The most new tokens the cache holds after a prompt of this length."""
        return self.max_length - batching.bucket_length(prompt_len, self.min_bucket) + 1

    def check_fits(self, prompt_len: int, max_new_tokens: int) -> str | None:
        """Why a prompt of this length with this many new tokens cannot run, or None."""
        if prompt_len > self.max_prompt_length:
            return (
                f"the prompt has {prompt_len} tokens; this server takes at most "
                f"{self.max_prompt_length} (--max_prompt_length). Shorten the prompt."
            )
        bucket = batching.bucket_length(prompt_len, self.min_bucket)
        if max_new_tokens > self.room(prompt_len):
            room = self.room(prompt_len)
            return (
                f"the prompt has {prompt_len} tokens (padded to {bucket}); with max_tokens="
                f"{max_new_tokens} it exceeds this server's {self.max_length} cache slots. "
                + (
                    f"Ask for at most {room} tokens or shorten the prompt."
                    if room > 0
                    else "Shorten the prompt."
                )
            )
        return None

    def submit(self, jobs: Sequence[Job]) -> list[Handle]:
        """Queues `jobs` (all or none); raises `QueueFull` past the bound."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._accepting:
                raise QueueFull("the server is shutting down; retry on another instance.")
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull(
                    f"{len(self._queue)} requests are waiting (the bound is {self.max_queue}); "
                    "retry later."
                )
            handles = [Handle(job, self, loop) for job in jobs]
            self._queue.extend(handles)
            self.metrics.queue_length.set(len(self._queue))
        self._wake.set()
        return handles

    def busy_slots(self) -> int:
        return sum(h is not None for h in self._owner)

    def queued(self) -> int:
        return len(self._queue)

    # -- lifecycle ----------------------------------------------------------------

    def warm_up(self) -> None:
        """Builds the state and compiles every program serving will run."""
        self._state = decoder.empty(
            self.models.params,
            batch=self.slots,
            slots=self.max_length,
            num_aligners=len(self.models.aligners),
            stop_width=STOP_WIDTH,
            **self._static,
        )
        for count in range(1, MAX_CHOICES + 1):
            choice_keys(0, count)
        job = Job((0,), 0, SamplingParams(max_new_tokens=1), choice_keys(0, 1)[0], ())
        for bucket in self.buckets():
            self._insert(job, 0, bucket)
        self._advance(np.zeros(self.slots, bool))  # row 0 emits its one token: free again
        jax.block_until_ready(self._state)

    def start(self) -> None:
        """Compiles (`warm_up`) and starts the decode thread."""
        if self._state is None:
            self.warm_up()
        self._thread = threading.Thread(target=self._run, name="ram-decode", daemon=True)
        self._thread.start()

    def shutdown(self, drain_seconds: float = 0.0) -> int:
        """Stops taking requests; lets in-flight ones run up to `drain_seconds`, cancels the
        rest (their clients get an error), and stops the thread. Returns how many it cancelled."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + drain_seconds
        while (self.busy_slots() or self._queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        failure = RuntimeError("the server shut down before this request finished.")
        left = [h for h in [*self._owner, *self._queue] if h is not None and not h.cancelled]
        for h in left:
            h._put(failure)
        return len(left)

    # -- the decode thread ----------------------------------------------------------

    def _insert(self, job: Job, row: int, bucket: int | None = None) -> None:
        bucket = bucket or batching.bucket_length(len(job.prompt_ids), self.min_bucket)
        tokens, mask = batching.left_pad([job.prompt_ids], bucket, self.pad_id)
        rows = RowSettings.stack(
            [job.params],
            len(self.models.aligners),
            job.stop_ids,
            modes=[job.mode_index],
            stop_width=STOP_WIDTH,
        )
        self._state = decoder.insert(
            self._state,
            self.models.params,
            tokens,
            mask,
            jax.random.wrap_key_data(job.key_data[None]),
            rows,
            row,
            slots=self.max_length,
            **self._static,
        )

    def _advance(self, halt: np.ndarray):
        self._state, dev, count = decoder.advance(
            self._state,
            self.models.params,
            halt,
            self.chunk,
            mode=self.modes,
            pad_id=self.pad_id,
            chunk=self.chunk,
            **self._static,
        )
        count = int(count)
        return {k: None if v is None else np.asarray(v)[:count] for k, v in dev.items()}

    def _fill(self) -> None:
        """Moves queued requests into free rows."""
        for row in range(self.slots):
            if self._owner[row] is not None:
                continue
            with self._lock:
                handle = None
                while self._queue and handle is None:
                    handle = self._queue.popleft()
                    if handle.cancelled:
                        handle = None
                self.metrics.queue_length.set(len(self._queue))
            if handle is None:
                return
            self._insert(handle.job, row)
            self._owner[row] = handle
            self.metrics.prompt_tokens.inc(len(handle.job.prompt_ids))

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._fill()
                self.metrics.slots_busy.set(self.busy_slots())
                if not self.busy_slots():
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                halt = np.asarray([h is not None and h.cancelled for h in self._owner])
                out = self._advance(halt)
                self._deliver(out, halt)
        except BaseException as e:  # the device loop failed: fail every request, say why
            self.error = e
            with self._lock:
                self._accepting = False
            for h in [*self._owner, *self._queue]:
                if h is not None:
                    h._put(RuntimeError(f"the decode loop failed: {e!r}"))
            raise

    def _deliver(self, out: dict, halt: np.ndarray) -> None:
        now = time.perf_counter()
        done = out["done"][-1] if len(out["done"]) else np.zeros(self.slots, bool)
        for row, handle in enumerate(self._owner):
            if handle is None:
                continue
            if halt[row]:  # cancelled: the row is done without a token
                self._owner[row] = None
                continue
            live = out["live"][:, row]
            ids = out["tokens"][live, row].tolist()
            finish = None
            if done[row]:
                finish = "stop" if ids and ids[-1] in handle.job.stop_ids else "length"
                self._owner[row] = None
            if ids:
                self._observe(handle, len(ids), now)
            if ids or finish:
                lp = out["logprobs_p"]
                lq = out["logprobs_q"]
                handle._put(
                    Tokens(
                        ids,
                        None if lp is None else lp[live, row].tolist(),
                        None if lq is None else lq[live, row].tolist(),
                        finish,
                    )
                )

    def _observe(self, handle: Handle, count: int, now: float) -> None:
        self.metrics.completion_tokens.inc(count)
        if handle.last_time is None:  # the chunk's later tokens arrive with the first
            self.metrics.ttft.observe(now - handle.submitted)
        else:
            # Tokens reach the host a chunk at a time: each gets the chunk's mean gap.
            gap = (now - handle.last_time) / count
            for _ in range(count):
                self.metrics.inter_token.observe(gap)
        handle.last_time = now
