r"""Serving benchmark: continuous batching (`python -m ram_jax.serve`) vs static batches.

  python experiments/bench_serve.py [--quick] [--runs=1]

Random float32 models written as HF directories (the test tokenizer, 384
ids): proposal P, 4 layers of width 256; aligners A and B, 2 layers of width
128. Every request: a prompt of 8-120 random token ids (mixed lengths),
`product` with aligner A, T = 1, top-p 0.95, 48 new tokens (EOS may end it
sooner), its own seed.

The server runs as its own process (16 slots, chunk 8); clients stream
`/v1/completions` over HTTP (`httpx`). The baseline serves the same requests
through `driver.generate` in static batches of 16 in this process (while the
server idles): a batch starts once its 16 requests have arrived and the
previous batch is done, and returns its tokens as it decodes (chunk 8); its
timeline is the measured decode times laid over the arrival times.

Measured, each side in the same run:
  clients16   16 closed-loop clients (each sends its next request when the
              last one ends) against the server; the baseline: every request
              available at once, batches of 16 back to back (its best case).
  poisson_R   open-loop Poisson arrivals at R x the baseline's capacity
              (requests/s at clients16), the same arrival times for both sides.
  Per side: throughput (generated tokens / wall seconds from the first
  arrival to the last token), TTFT p50 / p99 (arrival to first token on the
  client) and inter-token latency p50 / p99 (per request: the mean gap between
  its tokens after the first; tokens reach the client a chunk at a time).
  two_aligners: the server's decode step (`decoder.advance`, 16 busy rows)
              with A and B loaded and rows split between `product` with A
              and with B, over the step with only A loaded, all rows on A.
  mode_table: the same step (only A loaded, every row `product`) through the
              server's default table of every registered mode (`dispatch.PerRow`)
              over the `product` rule compiled alone; mode_table_2: a table of
              `proposal` and `product`, rows alternating, over `product` alone.
  two_pools:  the alternative design, one slot pool per mode: a `product` step
              and a `proposal` step of 8 rows each, over the 2-mode table's
              16-row step.

The last line is one JSON object with the ratios (median and range over
`--runs`) and their targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import jax
import numpy as np

from ram_jax.decoding import decoder, driver, files
from ram_jax.decoding.dispatch import PerRow
from ram_jax.decoding.modes import MODES, get_mode
from ram_jax.decoding.sampling import RowSettings, SamplingParams
from ram_jax.models import convert
from ram_jax.models import tokenizer as T
from ram_jax.models.config import get_preset
from ram_jax.models.transformer import init_params

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer.json")
SLOTS, CHUNK, NEW, BATCH = 16, 8, 48, 16
P_CONFIG = get_preset(
    "tiny-llama",
    vocab_size=384,
    hidden_size=256,
    intermediate_size=768,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    head_dim=32,
    eos_token_ids=(0,),
)
Q_CONFIG = P_CONFIG.replace(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4)
PARAMS = SamplingParams(top_p=0.95, max_new_tokens=NEW)


def write_models(root: str) -> dict[str, str]:
    tok = T.load_tokenizer(TOKENIZER)
    dirs = {}
    for name, config, seed in (("proposal", P_CONFIG, 0), ("A", Q_CONFIG, 1), ("B", Q_CONFIG, 2)):
        dirs[name] = os.path.join(root, name)
        params = init_params(config, jax.random.key(seed))
        convert.save_hf(params, config, dirs[name], tokenizer=tok)
    return dirs


def make_requests(count: int, seed: int) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(10, 380, int(rng.integers(8, 121))).tolist(), int(rng.integers(1 << 30)))
        for _ in range(count)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dirs: dict[str, str], log_path: str):
    port = _free_port()
    args = [
        f"--proposal={dirs['proposal']}",
        f"--aligner=A={dirs['A']}",
        f"--aligner=B={dirs['B']}",
        "--template=human_assistant",
        f"--port={port}",
        f"--slots={SLOTS}",
        f"--chunk={CHUNK}",
        "--max_length=256",
        "--max_prompt_length=128",
        "--max_queue=1024",
    ]
    log = open(log_path, "w")  # noqa: SIM115 (the process writes it until stopped)
    proc = subprocess.Popen([sys.executable, "-m", "ram_jax.serve", *args], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server failed: " + open(log_path).read()[-3000:])
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)


# -- the server side -------------------------------------------------------------------


async def _one(http, request, arrival: float, t0: float) -> dict:
    """Streams one request; returns its arrival, token times and token count (host clock)."""
    prompt, seed = request
    await asyncio.sleep(max(0.0, t0 + arrival - time.perf_counter()))
    start = time.perf_counter()
    body = {
        "model": "A",
        "prompt": prompt,
        "max_tokens": NEW,
        "top_p": 0.95,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    times, tokens = [], 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["text"]:
                times.append(time.perf_counter())
    return {"arrival": start, "times": times, "tokens": tokens}


async def _serve_run(url, requests, arrivals=None, clients=None) -> list[dict]:
    limits = httpx.Limits(max_connections=1024)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        if arrivals is not None:
            return await asyncio.gather(
                *(_one(http, r, a, t0) for r, a in zip(requests, arrivals, strict=True))
            )
        queue = list(requests)
        out = []

        async def client():
            while queue:
                out.append(await _one(http, queue.pop(0), 0.0, t0))

        await asyncio.gather(*(client() for _ in range(clients)))
        return out


def summarize(results: list[dict]) -> dict:
    """Throughput, TTFT and per-request inter-token latency of one side's results."""
    first = min(r["arrival"] for r in results)
    last = max(r["times"][-1] for r in results if r["times"])
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["times"][0] - r["arrival"] for r in results if r["times"]]
    itl = [(r["times"][-1] - r["times"][0]) / (r["tokens"] - 1) for r in results if r["tokens"] > 1]
    pct = lambda xs, q: float(np.percentile(xs, q))
    return {
        "requests": len(results),
        "tokens": tokens,
        "tokens_per_s": tokens / (last - first),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "itl_p50_s": pct(itl, 50),
        "itl_p99_s": pct(itl, 99),
    }


# -- the static baseline -----------------------------------------------------------------


class Static:
    """`driver.generate` in batches of 16: each batch's decode measured, then laid on arrivals."""

    def __init__(self, dirs):
        tok = T.load_tokenizer(TOKENIZER)
        self.tok = tok
        self.models = files.load_models(dirs["proposal"], [dirs["A"]], "auto", tok)
        self.vocab = T.tokenizer_length(tok)

    def decode(self, batch):
        """Decodes one batch; returns each row's token times (from the batch start) and counts."""
        chunks = []
        keys = jax.numpy.stack([jax.random.split(jax.random.key(s), 1)[0] for _, s in batch])
        t0 = time.perf_counter()
        record = driver.generate(
            self.models,
            [p for p, _ in batch],
            "product",
            PARAMS,
            prompt_keys=keys,
            vocab_size=self.vocab,
            eos_ids=(0,),
            pad_id=0,
            batch_size=BATCH,
            chunk=CHUNK,
            on_chunk=lambda c: chunks.append((time.perf_counter() - t0, c.live.sum(1))),
        )
        times = [[] for _ in batch]
        for at, live in chunks:
            for row in range(len(batch)):
                times[row] += [at] * int(live[row])
        return times, record.lengths.tolist(), time.perf_counter() - t0

    def run(self, requests, arrivals) -> list[dict]:
        out, free = [], 0.0
        for first in range(0, len(requests), BATCH):
            batch = requests[first : first + BATCH]
            start = max(free, max(arrivals[first : first + BATCH]))
            times, lengths, seconds = self.decode(batch)
            free = start + seconds
            for i, (t, n) in enumerate(zip(times, lengths, strict=True)):
                out.append(
                    {"arrival": arrivals[first + i], "times": [start + x for x in t], "tokens": n}
                )
        return out


# -- decoder-level step costs ------------------------------------------------------------


def step_seconds(models, table, rows_modes, weights, repeats=6) -> float:
    """Median seconds of one decode step with every row busy (chunk-8 calls)."""
    static = dict(configs=models.configs, vocab_size=384)
    n, batch = len(models.aligners), len(rows_modes)
    state = decoder.empty(
        models.params, batch=batch, slots=256, num_aligners=n, stop_width=8, **static
    )
    rng = np.random.default_rng(0)
    for row in range(batch):
        params = PARAMS.replace(max_new_tokens=200, aligner_weights=weights[row])
        rows = RowSettings.stack([params], n, (), modes=[rows_modes[row]], stop_width=8)
        tokens = rng.integers(10, 380, (1, 64)).astype(np.int32)
        keys = jax.random.split(jax.random.key(row), 1)
        state = decoder.insert(
            state,
            models.params,
            tokens,
            np.ones_like(tokens, bool),
            keys,
            rows,
            row,
            slots=256,
            **static,
        )
    halt = np.zeros(batch, bool)
    run = lambda s: decoder.advance(
        s, models.params, halt, CHUNK, mode=table, pad_id=0, chunk=CHUNK, **static
    )
    state, out, _ = run(state)  # compile
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, out, count = run(state)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / int(count))
    return statistics.median(times)


def step_ratios(dirs) -> dict:
    tok = T.load_tokenizer(TOKENIZER)
    one = files.load_models(dirs["proposal"], [dirs["A"]], "auto", tok)
    two = files.load_models(dirs["proposal"], [dirs["A"], dirs["B"]], "auto", tok)
    names = sorted(MODES)
    table = PerRow(tuple(get_mode(m) for m in names))
    pair = PerRow((get_mode("proposal"), get_mode("product")))
    product, half = names.index("product"), SLOTS // 2
    split = [(1.0, 0.0) if r % 2 else (0.0, 1.0) for r in range(SLOTS)]
    ones = [(1.0,)] * SLOTS
    ratios = {k: [] for k in ("two_aligners", "mode_table", "mode_table_2", "pool_per_mode_2")}
    for _ in range(2):  # alternate, so every side shares the machine's load
        t_one = step_seconds(one, get_mode("product"), [0] * SLOTS, ones)
        t_table = step_seconds(one, table, [product] * SLOTS, ones)
        t_two = step_seconds(two, table, [product] * SLOTS, split)
        t_pair = step_seconds(one, pair, [r % 2 for r in range(SLOTS)], ones)
        # One slot pool per mode: each of the two runs P and Q over half the rows.
        t_half = step_seconds(one, get_mode("product"), [0] * half, ones[:half])
        t_half += step_seconds(one, get_mode("proposal"), [0] * half, ones[:half])
        ratios["two_aligners"].append(t_two / t_table)
        ratios["mode_table"].append(t_table / t_one)
        ratios["mode_table_2"].append(t_pair / t_one)
        ratios["pool_per_mode_2"].append(t_half / t_pair)
    return {k: statistics.median(v) for k, v in ratios.items()}


# -- one run ------------------------------------------------------------------------------


def one_run(dirs, url, static: Static, quick: bool, seed: int) -> dict:
    count = 32 if quick else 64
    records = {}
    requests = make_requests(count, seed)
    srv = summarize(asyncio.run(_serve_run(url, requests, clients=16)))
    base = summarize(static.run(requests, [0.0] * count))
    records["clients16"] = {"server": srv, "static": base}
    capacity = base["tokens_per_s"] / (base["tokens"] / base["requests"])  # requests/s
    for fraction in (0.5,) if quick else (0.25, 0.5, 0.75):
        rng = np.random.default_rng(seed + 1)
        arrivals = np.cumsum(rng.exponential(1 / (fraction * capacity), count)).tolist()
        arrivals = [a - arrivals[0] for a in arrivals]
        requests = make_requests(count, seed + 2)
        srv = summarize(asyncio.run(_serve_run(url, requests, arrivals=arrivals)))
        base = summarize(static.run(requests, arrivals))
        records[f"poisson_{fraction}"] = {
            "rate_rps": fraction * capacity,
            "server": srv,
            "static": base,
        }
    for name, r in records.items():
        print(json.dumps({"run": seed, "config": name, **r}), flush=True)
    mid = records["poisson_0.5"]
    return {
        "throughput_16_clients_vs_static_b16": records["clients16"]["server"]["tokens_per_s"]
        / records["clients16"]["static"]["tokens_per_s"],
        "ttft_p50_vs_static_at_half_capacity": mid["server"]["ttft_p50_s"]
        / mid["static"]["ttft_p50_s"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 requests, one Poisson rate")
    parser.add_argument("--runs", type=int, default=1, help="repeat, report the spread")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench_serve_")
    dirs = write_models(root)
    proc, url = start_server(dirs, os.path.join(root, "server.log"))
    try:
        static = Static(dirs)
        static.decode(make_requests(BATCH, 99))  # compile
        runs = [one_run(dirs, url, static, args.quick, seed) for seed in range(args.runs)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    steps = step_ratios(dirs)
    print(json.dumps({"config": "step_ratios", **steps}), flush=True)
    spread = lambda k: {
        "median": statistics.median(r[k] for r in runs),
        "min": min(r[k] for r in runs),
        "max": max(r[k] for r in runs),
    }
    summary = {
        "throughput_16_clients_vs_static_b16": spread("throughput_16_clients_vs_static_b16"),
        "throughput_target": ">= 0.8",
        "ttft_p50_vs_static_at_half_capacity": spread("ttft_p50_vs_static_at_half_capacity"),
        "ttft_target": "<= 0.5",
        "two_aligners_mixed_vs_one_step": steps["two_aligners"],
        "two_aligners_target": "<= 1.25",
        "mode_table_vs_product_step": steps["mode_table"],
        "mode_table_2_vs_product_step": steps["mode_table_2"],
        "two_pools_vs_table_2_step": steps["pool_per_mode_2"],
        "runs": args.runs,
        "machine": f"{os.cpu_count()} CPUs, backend {jax.default_backend()}",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
