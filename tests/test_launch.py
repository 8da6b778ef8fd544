"""Launch scripts: every row's --dry_run prints commands carrying the paper's settings."""

import concurrent.futures
import os
import re
import shlex
import subprocess
import sys

import pytest

from experiments.paper import rows as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "CKPT": "/ckpt", "DATA": "/data", "OUT": "/out", "PYTHON": sys.executable}

# Hand-written from RAM.md sections 2-3 (not read from the configs under test).
ALIGNER_T = {  # (family, task) -> (aligner T, proposal T_P)
    ("llama8b", "uc"): ("0.7", "0.5"),
    ("llama8b", "tldr"): ("0.3", "0.5"),
    ("llama8b", "hh-helpful"): ("0.5", "0.7"),
    ("llama8b", "hh-harmless"): ("0.3", "0.7"),
    ("qwen14b", "uc"): ("0.3", "0.7"),
    ("qwen14b", "tldr"): ("0.3", "0.5"),
    ("qwen14b", "hh-helpful"): ("0.7", "0.5"),
    ("qwen14b", "hh-harmless"): ("0.3", "0.5"),
}
EXPECTED_ROWS = {
    "uc-llama8b-wup",
    "uc-llama1b-sft",
    "uc-llama8b-wup-aligner1b",
    "uc-llama8b-wup-ram1b",
    "uc-llama8b-sft",
    "uc-llama8b-sft-ram1b",
    "uc-qwen14b-wup",
    "uc-qwen14b-wup-ram3b",
    "uc-qwen14b-sft-ram3b",
    "tldr-llama8b-wup",
    "tldr-llama1b-sft",
    "tldr-llama8b-wup-aligner1b",
    "tldr-llama8b-wup-ram1b",
    "tldr-llama8b-sft",
    "tldr-llama8b-sft-ram1b",
    "tldr-qwen14b-wup",
    "tldr-qwen14b-wup-ram3b",
    "tldr-qwen14b-sft-ram3b",
    "hh-helpful-llama8b-dpo",
    "hh-helpful-llama8b-dpo-aligner1b",
    "hh-helpful-llama8b-dpo-ram1b",
    "hh-helpful-llama8b-dpo-ramdpo1b",
    "hh-helpful-qwen14b-dpo-ram3b",
    "hh-harmless-llama8b-dpo",
    "hh-harmless-llama8b-dpo-aligner1b",
    "hh-harmless-llama8b-dpo-ram1b",
    "hh-harmless-llama8b-dpo-ramdpo1b",
    "hh-harmless-qwen14b-dpo-ram3b",
}


def _run(*args, env=ENV):
    res = subprocess.run(
        ["bash", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def dry_runs():
    """Every row's dry run through launch/reproduce.sh (each a Python start, run 4 at a time)."""
    names = _run("launch/reproduce.sh", "--list").split()
    assert set(names) == EXPECTED_ROWS and len(names) == len(EXPECTED_ROWS)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        runs = pool.map(lambda n: _run("launch/reproduce.sh", n, "--dry_run"), names)
        return dict(zip(names, runs, strict=True))


_ANSI_C = re.compile(r"\$'((?:[^'\\]|\\.)*)'")
_ESCAPES = {"n": "\n", "t": "\t", "'": "'", "\\": "\\"}


def _bash_words(line):
    """Splits a printed command as bash would, including $'..' (ANSI-C) quoting."""

    def decode(m):
        body = re.sub(r"\\(.)", lambda e: _ESCAPES[e.group(1)], m.group(1))
        return shlex.quote(body)

    return shlex.split(_ANSI_C.sub(decode, line))


def _commands(text):
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return [_bash_words(line) for line in lines]


def _flags(argv):
    out = {}
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def test_every_training_command_carries_the_paper_settings(dry_runs):
    for name, text in dry_runs.items():
        row = R.by_name(name)
        trains = [_flags(c) for c in _commands(text) if c[:3] == ["python", "-m", "ram_jax.main"]]
        assert trains, name
        for f in trains:
            stage = f["config"].split("stage=")[1]
            assert f["config.optimizer.name"] == "rmsprop", name
            assert float(f["config.optimizer.clip_norm"]) == 10.0
            assert float(f["config.optimizer.weight_decay"]) == 0.0
            assert f["config.schedule.name"] == "warmup_constant"
            assert f["config.batch_size"] == "64"
            lr = float(f["config.optimizer.lr"])
            assert lr == (2e-7 if stage == "aligner" else 1e-6), (name, stage)
            if stage in ("proposal", "corrector_warmup") and (
                row.proposal_stage == "wup" or stage == "corrector_warmup"
            ):
                # W.Up: 10,048 rows = 157 steps of 64, warm-up over half of them.
                assert (f["config.num_steps"], f["config.schedule.warmup_fraction"]) == (
                    "157",
                    "0.5",
                )
            else:
                assert f["config.num_steps"] == "0" and f["config.num_epochs"] == "1.0"
                assert float(f["config.schedule.warmup_fraction"]) == 0.1
            lengths = (f["config.data.max_length"], f["config.data.max_prompt_length"])
            if stage.startswith("corrector"):
                assert lengths == ("3082", "2058")
            elif row.task == "tldr":
                assert lengths == ("1152", "640")
            else:
                assert lengths == ("2048", "1024")
            obj = f["config.objective.name"]
            if stage == "aligner":
                assert obj == ("ram_dpo" if row.method == "ramdpo" else "ram_sft")
                if obj == "ram_sft":
                    assert float(f["config.objective.alpha"]) == 1e-4
                    assert f["config.objective.negatives"] == (
                        "rejected" if row.task.startswith("hh") else "sampling"
                    )
                else:
                    assert float(f["config.objective.beta"]) == 1.0
            elif stage == "proposal" and row.proposal_stage == "dpo":
                assert obj == "dpo" and float(f["config.objective.beta"]) == 0.5
            else:
                assert obj == "sft"
            template = f["config.data.prompt_template"]
            if row.task.startswith("hh") or stage.startswith("corrector"):
                assert template in ("raw", "{prompt}")
            else:
                assert template == "human_assistant"


def test_every_generation_uses_the_paper_decode_settings(dry_runs):
    for name, text in dry_runs.items():
        row = R.by_name(name)
        t, t_p = ALIGNER_T[(row.family, row.task)]
        gens = [_flags(c) for c in _commands(text) if c[:3] == ["python", "-m", "ram_jax.generate"]]
        assert gens, name
        for g in gens:
            assert g["repetition_penalty"] == "1.05" and g["top_p"] == "0.9"
            assert g["stop"] == "\n\nHuman"
            assert g["max_new_tokens"] == ("511" if row.task == "tldr" else "1023")
            if "aligner" in g:
                assert row.method in ("ram", "ramdpo")
                assert (g["mode"], g["temperature"], g["proposal_temperature"]) == (
                    "par_kl",
                    t,
                    t_p,
                )
                assert g["proposal_top_p"] == "0.95" and g["kl_threshold"] == "0.1"
            else:
                assert g["mode"] == "proposal"
        last = gens[-1]
        if row.method == "alone":
            assert last["temperature"] == t_p
        elif row.method in ("small", "aligner"):
            assert last["temperature"] == t
        eval_tpl = (
            "raw" if row.task.startswith("hh") or row.method == "aligner" else "human_assistant"
        )
        assert last["template"] == eval_tpl


def test_stage_chain_of_a_ram_row(dry_runs):
    text = dry_runs["uc-llama8b-wup-ram1b"]
    names = re.findall(r"^# \[\d+/\d+\] (\w+)", text, flags=re.M)
    assert names == ["data", "data", "train", "negatives", "train", "generate", "export"]
    cmds = _commands(text)
    neg = _flags(cmds[3])
    assert neg["proposal"] == "/out/train/uc-llama8b-wup/export"
    assert (neg["temperature"], neg["top_p"], neg["repetition_penalty"], neg["stop"]) == (
        "0.5",
        "0.95",
        "1.05",
        "\n\nHuman",
    )
    aligner = _flags(cmds[4])
    assert aligner["config.data.train_file"] == neg["output"]
    assert aligner["config.model.path"] == "/ckpt/Llama-3.2-1B"
    gen = _flags(cmds[5])
    assert gen["aligner"] == "/out/train/uc-llama8b-wup-ram1b/export"
    assert _flags(cmds[6])["input"] == gen["output"]
    # HH uses the dataset's rejected responses: no sampling stage.
    assert "ram_jax.sample_proposal" not in dry_runs["hh-helpful-llama8b-dpo-ram1b"]


def test_runlocal_dry_run_chains_tiny_stages_on_the_fixtures():
    env = {k: v for k, v in ENV.items() if k not in ("CKPT", "DATA", "OUT")}
    text = _run("launch/reproduce.sh", "uc-llama8b-wup-ram1b", "--runlocal", "--dry_run", env=env)
    cmds = [_flags(c) for c in _commands(text)]
    assert cmds[0]["manual_dir"].endswith("tests/fixtures/datasets/ultrachat")
    assert cmds[0]["tokenizer"].endswith("tests/fixtures/tokenizer.json")
    trains = [c for c in cmds if "workdir" in c]
    assert [c["config"].split(":")[1] for c in trains] == [
        "stage=proposal,runlocal",
        "stage=aligner,runlocal",
    ]
    for c in trains:
        assert (
            c["config.model.init"] == "preset" and c["config.model.overrides.vocab_size"] == "384"
        )
        assert c["config.data.max_length"] == "128"
    assert cmds[-2]["max_new_tokens"] == "15" and cmds[-2]["dtype"] == "float32"


def test_wrappers_dry_run_and_usage(tmp_path):
    out = _run("launch/gpu.sh", "--dry_run", "--", "python", "-m", "ram_jax.main", "--config=x")
    assert "xla_gpu_enable_latency_hiding_scheduler=true" in out and "ram_jax.main" in out
    out = _run(
        "launch/tpu_vm.sh",
        "--name=n",
        "--zone=z",
        "--create",
        "--install",
        "--dry_run",
        "--",
        "python",
        "-m",
        "ram_jax.main",
    )
    lines = out.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create n --zone=z")
    assert lines[1].startswith("git -C") and " archive " in lines[1]  # tracked sources only
    assert all("--worker=all" in line for line in lines[2:]) and "LIBTPU_INIT_ARGS" in lines[-1]
    out = _run("launch/slurm.sbatch", "python", "-m", "ram_jax.main", env={**ENV, "DRY_RUN": "1"})
    assert "srun --ntasks-per-node=1" in out
    for script in ("launch/gpu.sh", "launch/tpu_vm.sh", "launch/reproduce.sh"):
        assert "Usage:" in _run(script, "--help")
    bad = subprocess.run(
        ["bash", "launch/reproduce.sh", "no-such-row", "--dry_run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=60,
    )
    assert bad.returncode == 2 and "--list" in bad.stderr
