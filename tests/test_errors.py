"""Every command on bad input: `error: <message>` naming the problem, exit status 2, no traceback.

Each case runs the command in its own interpreter, as a user would; the
cases run a few at a time. Commands check flags and files before importing
JAX where they can, so most cases cost an interpreter start only.
"""

import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from ram_jax.models.config import get_preset
from ram_jax.models.convert import save_hf
from ram_jax.models.transformer import init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SMOKE = "--config=experiments/configs/smoke.py"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    module: str
    args: tuple[str, ...]
    words: tuple[str, ...]  # all must appear in the `error:` message


def _main(name, args, *words):
    # Cases run concurrently: each its own workdir, or the workdir lock answers first.
    workdir = "--workdir={tmp}/run_" + re.sub(r"\W+", "_", name)
    return Case(name, "ram_jax.main", (SMOKE, workdir, *args), words)


def _sample(name, args, *words, defaults=True):
    base = ("--input={rows}", "--output={tmp}/s.jsonl", "--proposal={proposal}")
    return Case(name, "ram_jax.sample_proposal", (*base, *args) if defaults else args, words)


def _generate(name, args, *words):
    base = ("--proposal={proposal}", "--prompts={prompts}", "--output={tmp}/g.json")
    return Case(name, "ram_jax.generate", (*base, *args), words)


def _prepare(name, args, *words):
    return Case(name, "ram_jax.datasets.prepare", args, words)


def _tok(name, args, *words):
    return Case(name, "ram_jax.build_tokenizer", args, words)


CASES = [
    # python -m ram_jax.main (training)
    Case("main: no flags", "ram_jax.main", (), ("--config, --workdir are required",)),
    Case(
        "main: config file missing",
        "ram_jax.main",
        ("--config=experiments/configs/nope.py", "--workdir={tmp}/run"),
        ("--config: cannot load the config file", "nope.py"),
    ),
    Case(
        "main: unknown config argument",
        "ram_jax.main",
        (SMOKE + ":bogus", "--workdir={tmp}/run"),
        ("--config=", "config argument 'bogus' is unknown", "runlocal"),
    ),
    _main(
        "main: misspelled field",
        ("--config.optimizer.lrr=1",),
        "--config.optimizer.lrr",
        "no field 'lrr'",
        'Did you mean "lr"',
    ),
    _main("main: field of a wrong type", ("--config.num_steps=abc",), "--config.num_steps=abc"),
    _main("main: unknown flag", ("--bogus=1",), "Unknown command line flag 'bogus'"),
    _main("main: stray argument", ("extra",), "unexpected arguments ['extra']"),
    _main(
        "main: train file missing",
        ("--config.data.train_file={tmp}/nope.jsonl",),
        "data.train_file=",
        "nope.jsonl: data file not found",
    ),
    _main(
        "main: tokenizer missing", ("--config.tokenizer={tmp}/nope.json",), "tokenizer not found"
    ),
    _main("main: batch size 0", ("--config.batch_size=0",), "config.batch_size=0 must be"),
    _main(
        "main: batch vs accumulation", ("--config.grad_accum=3",), "not divisible by grad_accum=3"
    ),
    _main(
        "main: prompt as long as the whole",
        ("--config.data.max_prompt_length=64",),
        "max_prompt_length (64) < data.max_length (64)",
    ),
    _main("main: hf init without path", ("--config.model.init=hf",), "model.path=DIR"),
    Case("main: workdir is a file", "ram_jax.main", (SMOKE, "--workdir={file}"), ("is a file",)),
    Case(
        "main: workdir under a file",
        "ram_jax.main",
        (SMOKE, "--workdir={file}/run"),
        ("is a file, so no folder can be made under it",),
    ),
    _main(
        "main: rows lack samples",
        ("--config.data.train_file={prompts_chosen}",),
        "prompts_chosen.jsonl:1",
        "'sampling'",
        "sample_proposal",
    ),
    _main(
        "main: truncation above the limit",
        ("--config.data.max_length=24", "--config.data.max_prompt_length=16"),
        "had a response cut",
        "max_truncated_fraction",
    ),
    # python -m ram_jax.sample_proposal
    _sample("sample: no flags", (), "--input, --output, --proposal are required", defaults=False),
    _sample("sample: input missing", ("--input={tmp}/nope.jsonl",), "nope.jsonl", "not found"),
    _sample("sample: input not UTF-8", ("--input={utf8}",), "bad_utf8.jsonl:2: not UTF-8 text"),
    _sample(
        "sample: pretty JSON, error on line 4",
        ("--input={pretty}",),
        "pretty.json:4:",
        "invalid JSON",
    ),
    _sample(
        "sample: prompt-only rows",
        ("--input={prompt_only}",),
        "prompt_only.jsonl:1: row has 'prompt' but no 'chosen'",
        "ram_jax.generate",
    ),
    _sample("sample: empty input", ("--input={empty}",), "empty.jsonl", "no rows"),
    _sample("sample: batch size 0", ("--batch_size=0",), "--batch_size=0 must be >= 1"),
    _sample("sample: no samples", ("--num_samples=0",), "--num_samples=0 must be >= 1"),
    _sample("sample: output is a directory", ("--output={tmp}",), "--output", "is a directory"),
    _sample("sample: output under a file", ("--output={file}/s.jsonl",), "is a file"),
    _sample(
        "sample: proposal missing", ("--proposal={tmp}/nope",), "--proposal=", "not a directory"
    ),
    _sample("sample: bad template", ("--prompt_template=Q: {{x}}",), "neither a name", "{prompt}"),
    _sample("sample: config missing", ("--config={tmp}/nope.py",), "cannot load the config file"),
    _sample(
        "sample: longer than the proposal",
        ("--max_new_tokens=500",),
        "with max_new_tokens=500",
        "model context of 128 positions",
    ),
    _sample("sample: bad temperature", ("--temperature=-1",), "temperature"),
    _sample(
        "sample: leftover partial of another job",
        ("--output={partial_out}", "--max_new_tokens=16"),
        "s2.jsonl.partial",
        "no fingerprint header",
        "--restart",
    ),
    # python -m ram_jax.generate
    _generate(
        "generate: prompts missing", ("--prompts={tmp}/nope.jsonl",), "nope.jsonl", "not found"
    ),
    _generate("generate: output is a directory", ("--output={tmp}",), "--output", "is a directory"),
    _generate("generate: batch size 0", ("--batch_size=0",), "--batch_size=0 must be >= 1"),
    _generate(
        "generate: mode needs an aligner", ("--mode=product",), "--mode=product needs --aligner"
    ),
    _generate("generate: output under a file", ("--output={file}/g.json",), "is a file"),
    _generate("generate: prompts not UTF-8", ("--prompts={utf8}",), "bad_utf8.jsonl:2"),
    _generate("generate: pretty JSON, error on line 4", ("--prompts={pretty}",), "pretty.json:4"),
    _generate("generate: prompts empty", ("--prompts={empty}",), "empty.jsonl", "no records"),
    _generate(
        "generate: record without a prompt",
        ("--prompts={rows_no_prompt}",),
        "no_prompt.jsonl:1",
        "'instruction' or 'prompt'",
    ),
    _generate("generate: proposal missing", ("--proposal={tmp}/nope",), "nope"),
    _generate(
        "generate: aligner missing",
        ("--aligner={tmp}/nope_q", "--max_new_tokens=8"),
        "nope_q",
    ),
    _generate("generate: top_p 0", ("--top_p=0",), "top_p=0", "(0, 1]"),
    _generate("generate: negative temperature", ("--temperature=-1",), "temperature=-1"),
    _generate(
        "generate: weights without aligners", ("--aligner_weight=1",), "1 --aligner_weight for 0"
    ),
    _generate("generate: prompt longer than the context", (), "exceeds the model context"),
    _generate("generate: unknown mode", ("--mode=bogus",), "--mode"),
    _generate(
        "generate: chat template missing",
        ("--template=chat", "--max_new_tokens=8"),
        "chat template",
    ),
    _generate(
        "generate: leftover partial of another job",
        ("--output={tmp}/g2.json", "--max_new_tokens=8"),
        "g2.json.partial",
        "no fingerprint header",
        "--restart",
    ),
    # python -m ram_jax.datasets.prepare
    _prepare("prepare: no output", (), "--output is required"),
    _prepare("prepare: no dataset", ("--output={tmp}/p.jsonl",), "--dataset is required"),
    _prepare(
        "prepare: unknown dataset",
        ("--dataset=bogus", "--output={tmp}/p.jsonl"),
        "--dataset",
        "bogus",
    ),
    _prepare(
        "prepare: manual dir missing",
        ("--dataset=tldr", "--config=sft", "--manual_dir={tmp}/nope", "--output={tmp}/p.jsonl"),
        "--manual_dir=",
        "not a directory",
    ),
    _prepare(
        "prepare: correction without input",
        ("--mode=correction", "--output={tmp}/p.jsonl"),
        "--input is required in mode correction",
    ),
    _prepare(
        "prepare: correction input missing",
        ("--mode=correction", "--input={tmp}/nope.jsonl", "--output={tmp}/p.jsonl"),
        "nope.jsonl",
        "not found",
    ),
    _prepare(
        "prepare: export without flags",
        ("--mode=export", "--output={tmp}/p.json"),
        "mode export needs --input, --instructions_from and --generator",
    ),
    _prepare(
        "prepare: export length mismatch",
        (
            "--mode=export",
            "--input={prompts}",
            "--instructions_from={two_prompts}",
            "--generator=g",
            "--output={tmp}/p.json",
        ),
        "1 outputs but 2 eval prompts",
    ),
    _prepare(
        "prepare: output under a file", ("--dataset=tldr", "--output={file}/p.jsonl"), "is a file"
    ),
    _prepare(
        "prepare: negative limit",
        ("--dataset=tldr", "--limit=-1", "--output={tmp}/p.jsonl"),
        "--limit=-1 must be >= 0",
    ),
    # python -m ram_jax.plan
    Case(
        "plan: unknown preset",
        "ram_jax.plan",
        ("--decode=llama-9b+llama-3.2-1b",),
        ("unknown preset 'llama-9b'",),
    ),
    Case(
        "plan: batch 0",
        "ram_jax.plan",
        ("--decode=llama-3.1-8b", "--batch=0"),
        ("--batch=0 must be >= 1",),
    ),
    # python -m ram_jax.build_tokenizer
    _tok("tokenizer: no flags", (), "--input, --output are required"),
    _tok(
        "tokenizer: input missing",
        ("--input={tmp}/nope.jsonl", "--output={tmp}/t.json"),
        "nope.jsonl",
        "not found",
    ),
    _tok(
        "tokenizer: output under a file", ("--input={rows}", "--output={file}/t.json"), "is a file"
    ),
    _tok(
        "tokenizer: vocabulary too small",
        ("--input={rows}", "--vocab_size=10", "--output={tmp}/t.json"),
        "vocab_size=10 is too small",
    ),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    rows = [json.loads(x) for x in open(os.path.join(FIXTURES, "smoke_train.jsonl"))][:4]

    def jsonl(name, objects):
        (tmp / name).write_text("".join(json.dumps(o) + "\n" for o in objects))
        return str(tmp / name)

    (tmp / "bad_utf8.jsonl").write_bytes(b'{"prompt": "a", "chosen": "b"}\n{"prompt": "\xff"}\n')
    (tmp / "pretty.json").write_text(
        '[\n  {"prompt": "a",\n   "chosen": "b"},\n  {"prompt" "c"}\n]\n'
    )
    (tmp / "empty.jsonl").write_text("")
    (tmp / "afile").write_text("x")
    (tmp / "s2.jsonl.partial").write_text('{"prompt": "left over", "sampling": "x"}\n')
    (tmp / "g2.json.partial").write_text('{"instruction": "hi", "output": "x"}\n')
    proposal = tmp / "proposal"
    config = get_preset("tiny-llama", vocab_size=384, num_layers=1, max_position_embeddings=128)
    save_hf(init_params(config, jax.random.key(0)), config, str(proposal))
    (proposal / "tokenizer.json").write_bytes(
        open(os.path.join(FIXTURES, "tokenizer.json"), "rb").read()
    )
    return {
        "tmp": str(tmp),
        "file": str(tmp / "afile"),
        "rows": jsonl("rows.jsonl", rows),
        "prompts_chosen": jsonl(
            "prompts_chosen.jsonl",
            [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in rows] * 8,
        ),
        "prompt_only": jsonl("prompt_only.jsonl", [{"prompt": "hi"}]),
        "prompts": jsonl("prompts.jsonl", [{"instruction": "hi", "output": "yo"}]),
        "two_prompts": jsonl("two.jsonl", [{"instruction": "a"}, {"instruction": "b"}]),
        "utf8": str(tmp / "bad_utf8.jsonl"),
        "pretty": str(tmp / "pretty.json"),
        "empty": str(tmp / "empty.jsonl"),
        "proposal": str(proposal),
        "partial_out": str(tmp / "s2.jsonl"),
        "rows_no_prompt": jsonl("no_prompt.jsonl", [{"text": "hi"}]),
    }


def _run(case: Case, paths: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XLA_FLAGS", None)
    args = [a.format(**paths) for a in case.args]
    return subprocess.run(
        [sys.executable, "-m", case.module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def results(paths):
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.name: pool.submit(_run, c, paths) for c in CASES}
        return {name: f.result() for name, f in futures.items()}


def test_the_table_covers_every_command():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)
    assert {c.module for c in CASES} == {
        "ram_jax.main",
        "ram_jax.sample_proposal",
        "ram_jax.generate",
        "ram_jax.datasets.prepare",
        "ram_jax.plan",
        "ram_jax.build_tokenizer",
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_gives_one_clear_error(case, results):
    proc = results[case.name]
    where = f"{case.module} {case.args}\nout: {proc.stdout[-1500:]}\nerr: {proc.stderr[-3000:]}"
    assert proc.returncode == 2, where
    assert "Traceback" not in proc.stderr, where
    message = proc.stderr[proc.stderr.rfind("error: ") :]
    assert message.startswith("error: "), where
    assert len(message.strip().splitlines()) <= 2, where
    for word in case.words:
        assert word in message, (word, where)


def test_verbose_adds_the_traceback(paths):
    case = _sample("verbose", ("--batch_size=0", "--verbose"), "must be >= 1")
    proc = _run(case, paths)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.rstrip().endswith("error: --batch_size=0 must be >= 1.")


def test_only_worded_errors_lose_their_traceback():
    import numpy as np

    from ram_jax import cli, io

    def raised(fn):
        try:
            fn()
        except Exception as e:
            return e

    assert cli.is_user_error(raised(lambda: io.check_output_path(ROOT)))  # ram_jax's ValueError
    assert cli.is_user_error(raised(lambda: open("/nonexistent/x")))  # OSError: the environment
    # A ValueError from inside a library, or any other exception, is a bug: traceback kept.
    assert not cli.is_user_error(raised(lambda: np.random.default_rng(-1)))
    assert not cli.is_user_error(raised(lambda: {}["x"]))
