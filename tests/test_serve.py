"""`python -m ram_jax.serve` end to end: a real uvicorn server on 127.0.0.1, the official
`openai` client, tokens equal to `generate`'s for the same seed whatever is in flight,
no compilation in steady state, bad requests, a disconnect freeing its slot, SIGTERM.

One server (tiny models, 4 slots) serves the whole module; the SIGTERM test runs last
and stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import jax
import openai
import pytest

from ram_jax.data import templates
from ram_jax.decoding import driver, files
from ram_jax.decoding import sampling as S
from ram_jax.decoding.modes import get_mode
from ram_jax.models import convert
from ram_jax.models import tokenizer as T
from ram_jax.models.config import get_preset
from ram_jax.models.transformer import abstract_params
from ram_jax.serving import protocol
from ram_jax.serving import server as server_lib
from tests.hf_fixtures import random_params

FIXTURE_TOKENIZER = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer.json")
P_CONFIG = get_preset("tiny-llama", vocab_size=384, eos_token_ids=(0,))
Q_CONFIG = P_CONFIG.replace(hidden_size=32, intermediate_size=64, num_layers=1)
SLOTS, MAX_LENGTH, MAX_PROMPT = 4, 256, 32  # prefills compiled: 16 and 32 tokens
MODES = "proposal,product,weighted_product,par_kl"
PROMPTS = ["Say hello.", "Two plus two?", "Name a colour.", "Hi"]


PARAMS = S.SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=12)
# (model, ram extension, generate's mode, aligners and params) of the concurrent mix.
MIX = [
    ("proposal", {}, "proposal", (), PARAMS.replace(stop=("e",))),
    ("cite", {}, "product", ("cite",), PARAMS),
    (
        "style",
        {"mode": "par_kl", "kl_threshold": 5.0},
        "par_kl",
        ("style",),
        PARAMS.replace(kl_threshold=5.0),
    ),
    (
        "proposal",
        {"aligners": {"style": 1.0, "cite": 0.5}},
        "weighted_product",
        ("style", "cite"),
        PARAMS.replace(aligner_weights=(1.0, 0.5)),
    ),
]
# 64 requests: (index, mix entry, prompt, seed), all different.
JOBS = [(i, i % len(MIX), PROMPTS[(i // len(MIX)) % len(PROMPTS)], 100 + i) for i in range(64)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    for name, config, seed in (
        ("proposal", P_CONFIG, 1),
        ("style", Q_CONFIG, 2),
        ("cite", Q_CONFIG, 4),
    ):
        params = random_params(abstract_params(config), seed)
        convert.save_hf(params, config, str(root / name), tokenizer=tok)
    return root


@pytest.fixture(scope="module")
def server(dirs):
    port = _free_port()
    args = [
        f"--proposal={dirs / 'proposal'}",
        f"--aligner=style={dirs / 'style'}",
        f"--aligner=cite={dirs / 'cite'}",
        "--template=human_assistant",
        f"--modes={MODES}",
        f"--port={port}",
        f"--slots={SLOTS}",
        f"--max_length={MAX_LENGTH}",
        f"--max_prompt_length={MAX_PROMPT}",
        "--chunk=4",
        "--max_queue=64",
        "--drain_seconds=20",
    ]
    log = open(dirs / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ram_jax.serve", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    url = f"http://127.0.0.1:{port}"
    refs = _references(dirs)  # while the server compiles
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, (dirs / "server.log").read_text()[-3000:]
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        pytest.fail("server did not start: " + (dirs / "server.log").read_text()[-3000:])
    yield proc, url, refs, dirs / "server.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="none", max_retries=0)


def _generate(dirs, prompt: str, mode: str, params, aligners=(), seed=0, n=1):
    """`generate --seed` on a file holding `prompt` n times: its texts from the command's
    function, and the same decode's ids and log-probs through the library (checked equal)."""
    (dirs / "p.jsonl").write_text("".join(json.dumps({"prompt": prompt}) + "\n" for _ in range(n)))
    texts, _ = files.decode_file(
        proposal=str(dirs / "proposal"),
        aligners=[str(dirs / a) for a in aligners],
        prompts=str(dirs / "p.jsonl"),
        output=str(dirs / "out.json"),
        mode=get_mode(mode),
        params=params,
        template="human_assistant",
        seed=seed,
        batch_size=n,
        progress=False,
    )
    keys = jax.random.split(jax.random.key(seed), n)
    record = _library(dirs, [prompt] * n, keys, mode, params, aligners)
    assert record.texts == texts
    return record


def _library(dirs, prompts, keys, mode, params, aligners):
    """`driver.generate` as `decode_file` runs it, prompt i with `keys[i]` (prompt j of a
    file decoded with `--seed=S` has `split(key(S), P)[j]`)."""
    proposal, aligners = str(dirs / "proposal"), [str(dirs / a) for a in aligners]
    tok, tc = files.load_tokenizer(proposal, aligners)
    models = files.load_models(proposal, aligners, "auto", tok)
    bos = T.prompt_bos_id(tok, tc, None, "human_assistant", models.proposal[1])
    ids = templates.encode_prompts(tok, prompts, "human_assistant", bos_id=bos)
    return driver.generate(
        models,
        ids,
        mode,
        params,
        prompt_keys=keys,
        vocab_size=T.tokenizer_length(tok),
        eos_ids=T.pair_eos_ids(tok, models.proposal[1], [c for _, c in models.aligners], tc),
        pad_id=0,
        tokenizer=tok,
    )


def _references(dirs) -> dict:
    """Every `generate` output the tests compare the server with."""
    refs = {
        "one": _generate(
            dirs, PROMPTS[1], "product", PARAMS.replace(proposal_top_p=0.9), ["style"], seed=7
        ),
        "n": _generate(dirs, PROMPTS[0], "proposal", PARAMS, seed=3, n=3),
    }
    for m, (_, _, mode, aligners, params) in enumerate(MIX):
        jobs = [j for j in JOBS if j[1] == m]
        # Each request alone: `generate --seed=s` on a one-prompt file.
        keys = jax.numpy.stack([jax.random.split(jax.random.key(s), 1)[0] for *_, s in jobs])
        record = _library(dirs, [p for _, _, p, _ in jobs], keys, mode, params, aligners)
        for row, (i, *_) in enumerate(jobs):
            refs[i] = _ids(record, row)
    return refs


def _ids(record, i=0):
    return record.tokens[i, : record.lengths[i]].tolist()


OK = 'ram_requests_total{route="completions",status="ok"}'


def _metric(url: str, name: str) -> float:
    """A Prometheus sample (summed over labels unless `name` gives them)."""
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name or ("{" not in name and key.startswith(name + "{")):
            total += float(value)
    return total


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["proposal", "style", "cite"]
    health = httpx.get(server[1] + "/health").json()
    assert health == {"status": "ok", "slots": SLOTS, "busy": 0, "queued": 0}


def test_completion_equals_generate(server, client):
    """Completions and chat, streamed or not: the tokens of `generate --seed`."""
    extra = {"ram": {"proposal_top_p": 0.9}}
    want = server[2]["one"]
    # The completions route takes raw text: the human_assistant template by hand.
    text = templates.render("human_assistant", PROMPTS[1])
    common = dict(model="style", max_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    common["extra_body"] = extra
    got = client.completions.create(prompt=text, logprobs=0, **common)
    choice = got.choices[0]
    assert choice.ram["token_ids"] == _ids(want)
    assert choice.text == want.texts[0] and choice.finish_reason == want.finish_reasons[0]
    assert choice.logprobs.token_logprobs == pytest.approx(
        want.logprobs_p[0, : want.lengths[0]].tolist(), abs=1e-5
    )
    assert choice.ram["aligner_logprobs"]["style"] == pytest.approx(
        want.logprobs_q[0, 0, : want.lengths[0]].tolist(), abs=1e-5
    )
    assert got.usage.completion_tokens == want.lengths[0]
    stream = client.completions.create(prompt=text, stream=True, **common)
    assert "".join(c.choices[0].text for c in stream) == want.texts[0]
    # Chat: the server renders one user message with its --template (human_assistant).
    messages = [{"role": "user", "content": PROMPTS[1]}]
    chat = client.chat.completions.create(messages=messages, **common)
    assert chat.choices[0].message.content == want.texts[0]
    stream = client.chat.completions.create(messages=messages, stream=True, **common)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want.texts[0]


def test_concurrent_mixed_requests_are_each_deterministic(server):
    """64 requests from 16 clients, mixed modes, aligners and settings: none lost, each
    the tokens `generate` gives it alone, and no compilation while serving."""
    url, refs = server[1], server[2]
    compiled = _metric(url, "ram_xla_compilations_total")
    assert compiled > 0  # the warm-up's, counted by the same listener
    ok, ttft = _metric(url, OK), _metric(url, "ram_time_to_first_token_seconds_count")

    async def run():
        http = httpx.AsyncClient(base_url=url, timeout=120)
        async_client = openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="none", max_retries=0, http_client=http
        )
        queue = asyncio.Queue()
        for job in JOBS:
            queue.put_nowait(job)
        results = {}

        async def worker():
            while not queue.empty():
                i, m, prompt, seed = queue.get_nowait()
                model, ram, *_ = MIX[m]
                stop = list(MIX[m][4].stop) or None
                out = await async_client.completions.create(
                    stop=stop,
                    model=model,
                    prompt=templates.render("human_assistant", prompt),
                    max_tokens=12,
                    temperature=0.9,
                    top_p=0.95,
                    seed=seed,
                    logprobs=0,
                    extra_body={"ram": ram},
                )
                results[i] = out.choices[0].ram["token_ids"]

        await asyncio.gather(*(worker() for _ in range(16)))
        await http.aclose()
        return results

    results = asyncio.run(run())
    assert sorted(results) == list(range(64))
    assert _metric(url, "ram_xla_compilations_total") == compiled
    for i in range(64):
        assert results[i] == refs[i], f"request {i} ({MIX[JOBS[i][1]][2]})"
    assert len({tuple(r) for r in results.values()}) == 64
    assert any(len(refs[i]) < 12 for i, m, *_ in JOBS if m == 0), "no stop string was hit"
    assert _metric(url, OK) == ok + 64
    assert _metric(url, "ram_time_to_first_token_seconds_count") == ttft + 64
    assert _metric(url, "ram_inter_token_latency_seconds_count") > 0


def test_n_choices_equal_generate_on_repeated_prompt(server, client):
    want = server[2]["n"]
    got = client.completions.create(
        model="proposal",
        prompt=templates.render("human_assistant", PROMPTS[0]),
        n=3,
        max_tokens=12,
        temperature=0.9,
        top_p=0.95,
        seed=3,
        logprobs=0,
    )
    assert [c.ram["token_ids"] for c in got.choices] == [_ids(want, i) for i in range(3)]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "nope", "prompt": "x"}, "model"),
        ({"prompt": "x"}, "model"),
        ({"model": "style", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "style", "prompt": "x", "max_tokens": -3}, "max_tokens"),
        ({"model": "style", "prompt": "x " * 200}, "prompt"),
        ({"model": "style", "prompt": "x", "max_tokens": 250}, "max_tokens"),
        (
            {"model": "proposal", "prompt": "x", "ram": {"aligners": {"style": -1}}},
            "ram.aligners.style",
        ),
        ({"model": "style", "prompt": "x", "ram": {"mode": "sir"}}, "ram.mode"),
        ({"model": "proposal", "prompt": "x", "ram": {"mode": "product"}}, "ram.mode"),
        ({"model": "style", "prompt": "x", "ram": {"tau": 1}}, "ram.tau"),
        ({"model": "style", "messages": []}, "messages"),
    ],
)
def test_bad_requests_get_400_naming_the_field(server, body, param):
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(server[1] + route, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_malformed_json_gets_400_and_server_keeps_serving(server, client):
    r = httpx.post(
        server[1] + "/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    out = client.completions.create(model="proposal", prompt="Hi", max_tokens=3, seed=1)
    assert out.usage.completion_tokens >= 1


def test_full_queue_answers_429(dirs):
    """Past --max_queue waiting requests the server refuses at once (429), in process: an
    engine whose decode thread is not started keeps its queue full."""
    built = server_lib.build(
        proposal=str(dirs / "proposal"),
        aligners={"style": str(dirs / "style")},
        template="human_assistant",
        modes=("proposal", "product"),
        slots=1,
        max_length=64,
        max_queue=2,
    )
    body = {"model": "style", "prompt": "Hi", "max_tokens": 4}

    async def run():
        jobs = built.resolver.completion(protocol.CompletionRequest.model_validate(body))
        built.engine.submit(jobs + jobs)  # the queue's bound
        transport = httpx.ASGITransport(app=built.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
            return await http.post("/v1/completions", json=body)

    r = asyncio.run(run())
    assert r.status_code == 429 and "retry later" in r.json()["error"]["message"], r.text
    assert built.engine.queued() == 2


def test_proposal_only_server_and_bad_settings_rejected_before_compiling(dirs):
    built = server_lib.build(
        proposal=str(dirs / "proposal"), aligners={}, template="raw", max_length=64
    )
    assert [m.name for m in built.engine.modes.modes] == ["proposal"]
    # No max_tokens: --max_tokens (256), at most what the cache leaves (64 - 16 + 1).
    req = protocol.CompletionRequest.model_validate({"model": "proposal", "prompt": "Hi"})
    req.max_tokens = None
    assert built.resolver.completion(req)[0].params.max_new_tokens == 49
    with pytest.raises(ValueError, match="need an aligner"):
        server_lib.build(proposal=str(dirs / "proposal"), aligners={}, modes=("product",))
    with pytest.raises(ValueError, match="no chat template"):
        server_lib.build(proposal=str(dirs / "proposal"), aligners={})
    with pytest.raises(ValueError, match="use letters"):
        server_lib.check_names("proposal", {"a b": "x"}, ("product",))


def test_disconnect_mid_stream_frees_the_slot(server):
    """The client hangs up after one event of a 200-token request: its slot is freed at
    the next chunk, long before the request would have ended."""
    url = server[1]
    tokens = _metric(url, "ram_completion_tokens_total")
    body = {"model": "style", "prompt": "Hi", "max_tokens": 200, "stream": True, "seed": 2}
    body["ram"] = {"proposal_top_p": 1.0}  # the whole vocabulary: EOS stays unlikely
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one event, then hang up
    deadline = time.time() + 30
    while time.time() < deadline:
        health = httpx.get(url + "/health").json()
        if health["busy"] == 0 and health["queued"] == 0:
            break
        time.sleep(0.05)
    assert health["busy"] == 0, health
    assert _metric(url, "ram_slots_busy") == 0
    assert _metric(url, 'ram_requests_total{route="completions",status="disconnected"}') == 1
    assert _metric(url, "ram_completion_tokens_total") - tokens < 200


def test_sigterm_finishes_in_flight_requests_and_exits(server):
    proc, url, _, log = server
    body = {"model": "proposal", "prompt": "Hi", "max_tokens": 40, "seed": 5}

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            pending = asyncio.create_task(http.post("/v1/completions", json=body))
            while httpx.get(url + "/health").json()["busy"] == 0 and not pending.done():
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            return await pending

    response = asyncio.run(run())
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
    assert proc.wait(timeout=60) == 0
    assert "decode loop stopped; 0 unfinished requests cancelled" in log.read_text()
