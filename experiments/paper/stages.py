"""The stages of one paper row as commands: what `reproduce.py` runs or prints.

`Planner(row, ckpt, data, out).steps()` lists every command of a row in
order, each with the file whose existence means it already ran. Workdirs
are keyed by stage, not row, so rows that share a proposal (or HH's SFT'd
small model) reuse it. With `tokenizer=` set the plan is a CPU-sized run:
`runlocal` configs, tiny preset models, short generations.
"""

from __future__ import annotations

import dataclasses
import os

from experiments.paper import rows as R
from ram_jax.decoding import sampling as S

PY = "python"
SETTINGS = (
    "objective.name",
    "objective.alpha",
    "objective.beta",
    "objective.negatives",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.clip_norm",
    "optimizer.weight_decay",
    "schedule.name",
    "schedule.warmup_fraction",
    "batch_size",
    "grad_accum",
    "num_epochs",
    "num_steps",
    "data.max_length",
    "data.max_prompt_length",
    "data.prompt_template",
    "data.add_bos",
    "precision",
    "model.dtype",
    "model.remat",
    "mesh.data",
    "mesh.fsdp",
)


@dataclasses.dataclass
class Step:
    """One command and the file whose existence means it already ran."""

    name: str
    argv: list[str]
    done_marker: str


def _get(c, key):
    for part in key.split("."):
        c = c[part]
    return c


class Planner:
    """Builds the command list of a row from the row configs and the locations."""

    def __init__(self, row: R.Row, ckpt: str, data: str, out: str, tokenizer: str | None = None):
        """`tokenizer` set: a CPU-sized run (`runlocal` configs, tiny preset models)."""
        self.runlocal = tokenizer is not None
        self.row, self.ckpt, self.data, self.out = row, ckpt, data, out
        self.big_hf = os.path.join(ckpt, R.PROPOSALS[row.family][0])
        self.size, small_hf, _ = R.SMALL[row.family]
        self.small_hf = os.path.join(ckpt, small_hf)
        self.train_jsonl = os.path.join(out, "data", f"{row.data}_train.jsonl")
        self.eval_json = os.path.join(out, "data", f"{row.task}_eval.json")
        self.row_file = f"experiments/paper/{row.name.replace('-', '_')}.py"
        self.tokenizer = tokenizer or self.big_hf
        self.local = ",runlocal" if self.runlocal else ""

    # --- names of shared outputs
    def workdir(self, stage: str) -> str:
        r = self.row
        prop = f"{r.data}-{r.family}"
        key = {
            "proposal_sft": f"{prop}-sft",
            "proposal": f"{prop}-{r.proposal_stage}",
            "small": f"{r.data}-{r.family.replace('8b', self.size).replace('14b', self.size)}-sft",
            "aligner": f"{prop}-{r.proposal_stage}-{r.method}{self.size}",
            "corrector_warmup": f"{prop}-{r.proposal_stage}-aligner{self.size}-warmup",
            "corrector": f"{prop}-{r.proposal_stage}-aligner{self.size}",
        }[stage]
        return os.path.join(self.out, "train", key)

    def export(self, stage: str) -> str:
        return os.path.join(self.workdir(stage), "export")

    @property
    def samples(self) -> str:
        r = self.row
        return os.path.join(self.out, "samples", f"{r.data}-{r.family}-{r.proposal_stage}.jsonl")

    @property
    def vocab_size(self) -> int:
        """Embedding rows for the CPU run's tiny models: the tokenizer's length."""
        from tokenizers import Tokenizer

        return Tokenizer.from_file(self.tokenizer).get_vocab_size(with_added_tokens=True)

    @property
    def lengths(self) -> tuple[int, int]:
        return (48, 32) if self.runlocal else self.row.lengths

    @property
    def dtype(self) -> str:
        return "float32" if self.runlocal else "bfloat16"

    @property
    def max_new_tokens(self) -> int:
        max_length, max_prompt = self.lengths
        return max_length - max_prompt - 1

    # --- steps
    def data_steps(self) -> list[Step]:
        r, d = self.row, self.data
        prep = [PY, "-m", "ram_jax.datasets.prepare"]
        train = {
            "hh": ["--dataset=hh_rlhf", "--config=all", f"--manual_dir={d}/hh-rlhf"],
            "tldr": ["--dataset=tldr", "--config=sft", f"--manual_dir={d}/tldr"],
            "uc": [
                "--dataset=ultrachat",
                "--config=first_round_120k",
                f"--manual_dir={d}/ultrachat",
                f"--tokenizer={self.tokenizer}",
            ],
        }[r.data]
        evals = {
            "uc": [
                "--dataset=alpaca_eval",
                f"--manual_dir={d}/alpaca_eval",
                "--split=test",
                "--reference_name=gpt4_1106_preview",
            ],
            "tldr": ["--dataset=tldr", "--config=sft", f"--manual_dir={d}/tldr", "--split=test300"],
            "hh-helpful": [
                "--dataset=hh_rlhf",
                "--config=helpful-base",
                f"--manual_dir={d}/hh-rlhf",
                "--split=test300",
            ],
            "hh-harmless": [
                "--dataset=hh_rlhf",
                "--config=harmless-base",
                f"--manual_dir={d}/hh-rlhf",
                "--split=test300",
            ],
        }[r.task]
        return [
            Step(
                "data: training rows",
                prep + train + ["--split=train", f"--output={self.train_jsonl}"],
                self.train_jsonl,
            ),
            Step(
                "data: eval prompts + references",
                prep + evals + ["--format=alpaca_eval", f"--output={self.eval_json}"],
                self.eval_json,
            ),
        ]

    def train_step(self, stage: str, *, init_path: str, train_file: str) -> Step:
        c = R.get_config(self.row, f"stage={stage}{self.local}")
        argv = [
            PY,
            "-m",
            "ram_jax.main",
            f"--config={self.row_file}:stage={stage}{self.local}",
            f"--workdir={self.workdir(stage)}",
            f"--config.model.init={c.model.init}",
            f"--config.model.path={init_path}",
            f"--config.tokenizer={self.tokenizer}",
            f"--config.data.train_file={train_file}",
        ]
        skip = set()
        if c.objective.name not in ("ram_sft",):
            skip.add("objective.alpha")
        if c.objective.name not in ("dpo", "ram_dpo"):
            skip.add("objective.beta")
        if c.objective.name not in ("ram_sft", "ram_mc"):
            skip.add("objective.negatives")
        argv += [f"--config.{k}={_get(c, k)}" for k in SETTINGS if k not in skip]
        if self.runlocal:
            argv.append(f"--config.model.overrides.vocab_size={self.vocab_size}")
        return Step(
            f"train: {stage} ({c.objective.name}, lr {c.optimizer.lr:g})",
            argv,
            os.path.join(self.export(stage), "config.json"),
        )

    def negatives_step(self, proposal: str) -> Step:
        s = S.REFERENCE_NEGATIVES
        argv = [
            PY,
            "-m",
            "ram_jax.sample_proposal",
            f"--proposal={proposal}",
            f"--tokenizer={self.tokenizer}",
            f"--input={self.train_jsonl}",
            f"--output={self.samples}",
            f"--prompt_template={self.row.template}",
            "--noadd_bos",
            f"--max_prompt_length={self.lengths[1]}",
            f"--temperature={s.temperature}",
            f"--top_p={s.top_p}",
            f"--repetition_penalty={s.repetition_penalty}",
            "--num_samples=1",
            f"--max_new_tokens={self.max_new_tokens}",
            f"--stop={S.REFERENCE_STOPS[0]}",
            f"--batch_size={16 if self.runlocal else 64}",
            f"--dtype={self.dtype}",
        ]
        return Step("negatives: one proposal sample per training prompt", argv, self.samples)

    def generate_step(
        self, name, output, *, proposal, aligner=None, prompts=None, template=None, temperature
    ) -> Step:
        argv = [PY, "-m", "ram_jax.generate", "--preset=reference", f"--proposal={proposal}"]
        if aligner:
            argv.append(f"--aligner={aligner}")
        t, t_p = self.row.decode_t
        argv += [
            f"--tokenizer={self.tokenizer}",
            f"--prompts={prompts or self.eval_json}",
            f"--template={template or self.row.template}",
            "--noadd_bos",
            f"--output={output}",
        ]
        if aligner:
            argv += [
                "--mode=par_kl",
                f"--temperature={t}",
                f"--proposal_temperature={t_p}",
                f"--top_p={S.REFERENCE.top_p}",
                f"--proposal_top_p={S.REFERENCE.proposal_top_p}",
                f"--kl_threshold={S.REFERENCE.kl_threshold}",
            ]
        else:
            argv += [
                "--mode=proposal",
                f"--temperature={temperature}",
                f"--top_p={S.REFERENCE.top_p}",
            ]
        argv += [
            f"--repetition_penalty={S.REFERENCE.repetition_penalty}",
            f"--max_new_tokens={self.max_new_tokens}",
            f"--batch_size={16 if self.runlocal else 32}",
            "--seed=0",
            f"--stop={S.REFERENCE_STOPS[0]}",
            f"--dtype={self.dtype}",
            f"--generator={self.row.name}",
        ]
        return Step(name, argv, output)

    def steps(self) -> list[Step]:
        r = self.row
        gen_dir = os.path.join(self.out, "generations", r.name)
        raw = os.path.join(gen_dir, "outputs.json")
        t, t_p = r.decode_t
        steps = self.data_steps()
        stages = r.stages()
        if "proposal_sft" in stages:
            steps.append(
                self.train_step("proposal_sft", init_path=self.big_hf, train_file=self.train_jsonl)
            )
        if "proposal" in stages:
            init = self.workdir("proposal_sft") if r.proposal_stage == "dpo" else self.big_hf
            steps.append(self.train_step("proposal", init_path=init, train_file=self.train_jsonl))
        proposal = self.export("proposal")
        if "small" in stages:
            steps.append(
                self.train_step("small", init_path=self.small_hf, train_file=self.train_jsonl)
            )
        answers = self.train_jsonl  # HH: the dataset's rejected responses are the negatives
        if r.method in ("ram", "ramdpo", "aligner") and r.data != "hh":
            steps.append(self.negatives_step(proposal))
            answers = self.samples
        if "aligner" in stages:
            init = self.workdir("small") if r.data == "hh" else self.small_hf
            steps.append(self.train_step("aligner", init_path=init, train_file=answers))
            steps.append(
                self.generate_step(
                    "generate: RAM (par_kl)",
                    raw,
                    proposal=proposal,
                    aligner=self.export("aligner"),
                    temperature=t,
                )
            )
        elif r.method == "aligner":
            prep = [
                PY,
                "-m",
                "ram_jax.datasets.prepare",
                "--mode=correction",
                f"--input={answers}",
                f"--template={r.template}",
            ]
            data_dir = os.path.join(self.out, "data")
            warm = os.path.join(
                data_dir, os.path.basename(self.workdir("corrector_warmup")) + ".jsonl"
            )
            main = os.path.join(data_dir, os.path.basename(self.workdir("corrector")) + ".jsonl")
            steps.append(
                Step(
                    "data: corrector warm-up (copy)",
                    prep + ["--target=answer", f"--limit={R.WUP_STEPS * 64}", f"--output={warm}"],
                    warm,
                )
            )
            steps.append(
                Step("data: corrector", prep + ["--target=chosen", f"--output={main}"], main)
            )
            steps.append(
                self.train_step("corrector_warmup", init_path=self.small_hf, train_file=warm)
            )
            steps.append(
                self.train_step(
                    "corrector", init_path=self.workdir("corrector_warmup"), train_file=main
                )
            )
            first = os.path.join(gen_dir, "proposal_outputs.json")
            fix = os.path.join(gen_dir, "correction_prompts.json")
            steps.append(
                self.generate_step(
                    "generate: proposal answers", first, proposal=proposal, temperature=t_p
                )
            )
            steps.append(
                Step(
                    "data: correction prompts",
                    [
                        PY,
                        "-m",
                        "ram_jax.datasets.prepare",
                        "--mode=correction",
                        f"--input={first}",
                        f"--template={r.template}",
                        f"--output={fix}",
                    ],
                    fix,
                )
            )
            steps.append(
                self.generate_step(
                    "generate: Aligner corrections",
                    raw,
                    proposal=self.export("corrector"),
                    prompts=fix,
                    template="raw",
                    temperature=t,
                )
            )
        elif r.method == "small":
            steps.append(
                self.generate_step(
                    "generate: small model alone", raw, proposal=self.export("small"), temperature=t
                )
            )
        else:
            steps.append(
                self.generate_step(
                    "generate: proposal alone", raw, proposal=proposal, temperature=t_p
                )
            )
        final = os.path.join(gen_dir, "model_outputs.json")
        steps.append(
            Step(
                "export: AlpacaEval 2 model_outputs.json",
                [
                    PY,
                    "-m",
                    "ram_jax.datasets.prepare",
                    "--mode=export",
                    f"--input={raw}",
                    f"--instructions_from={self.eval_json}",
                    f"--generator={r.name}",
                    f"--output={final}",
                ],
                final,
            )
        )
        return steps
