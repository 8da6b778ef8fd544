"""The paper's table rows and the training config of every stage, derived from base.py.

A row is a strategy on a task (RAM.md section 4), e.g. `uc-llama8b-wup-ram1b`
= "W.Up 8B + RAM 1B" on UltraChat. Each row file in this folder declares its
`Row` and exposes `get_config(arg)`; `arg` picks the stage to train
(`stage=aligner`, `stage=proposal`, ...) and accepts base.py's `runlocal`.
Stages are shared between rows (the W.Up 8B proposal serves four UltraChat
rows), so `reproduce.py` keys their workdirs by stage, not by row.

Paper settings (RAM.md sections 2-3, and the reference scripts):
  RMSprop, global batch 64, 1 epoch, linear warm-up over 10% then constant,
  clip 10; LR 2e-7 for RAM aligners, 1e-6 for proposals / SFT / DPO / the
  Aligner corrector; max length 2048 / prompt 1024 (TL;DR 1152 / 640).
  W.Up (proposal warm-up, and the Aligner's copy warm-up): SFT on the first
  (10000 // 64 + 1) * 64 = 10,048 rows = 157 steps, warm-up over half of them.
  HH proposals: SFT 1 epoch, then DPO (beta 0.5) from it. HH aligners start
  from the 1B/3B model SFT'd on HH and use the dataset's rejected responses as
  negatives; UltraChat / TL;DR aligners start from the base model and use
  offline proposal samples.
  Precision as the reference trained: bfloat16 parameters and RMSprop state
  (`precision='reference'`), bf16 compute; no BOS before prompts (`add_bos=False`).
"""

from __future__ import annotations

import dataclasses

from experiments.configs import base
from ram_jax.decoding.sampling import PAPER_TEMPERATURES

WUP_STEPS = 10000 // 64 + 1  # 157 steps of 64 = 10,048 rows

# Model families: HF directory names under $CKPT and base-model presets.
PROPOSALS = {"llama8b": ("Llama-3.1-8B", "llama-3.1-8b"), "qwen14b": ("Qwen2.5-14B", "qwen2.5-14b")}
SMALL = {
    "llama8b": ("1b", "Llama-3.2-1B", "llama-3.2-1b"),
    "qwen14b": ("3b", "Qwen2.5-3B", "qwen2.5-3b"),
}

# Row keys -> the keys of `ram_jax.decoding.sampling.PAPER_TEMPERATURES`, which holds
# the decode temperatures the paper selected (the other settings: `REFERENCE`).
SAMPLING_FAMILY = {"llama8b": "llama", "qwen14b": "qwen"}
SAMPLING_TASK = {
    "uc": "ultrachat",
    "tldr": "tldr",
    "hh-helpful": "hh_helpful",
    "hh-harmless": "hh_harmless",
}

TASKS = ("uc", "tldr", "hh-helpful", "hh-harmless")


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: `task`, proposal family, proposal stage and method.

    method: 'alone' (the proposal by itself), 'small' (the 1B/3B model SFT'd
    alone), 'ram' (ram_sft aligner), 'ramdpo' (ram_dpo aligner, beyond the
    tables), 'aligner' (the Aligner corrector baseline).
    """

    task: str
    family: str
    proposal_stage: str  # 'wup' | 'sft' | 'dpo'
    method: str

    @property
    def name(self) -> str:
        size = SMALL[self.family][0]
        if self.method == "small":
            return f"{self.task}-{self.family.replace('8b', size).replace('14b', size)}-sft"
        tail = {
            "alone": "",
            "ram": f"-ram{size}",
            "ramdpo": f"-ramdpo{size}",
            "aligner": f"-aligner{size}",
        }[self.method]
        return f"{self.task}-{self.family}-{self.proposal_stage}{tail}"

    @property
    def data(self) -> str:
        """Training data key: both HH tasks train on all of HH-RLHF."""
        return "hh" if self.task.startswith("hh") else self.task

    @property
    def template(self) -> str:
        return "raw" if self.data == "hh" else "human_assistant"

    @property
    def lengths(self) -> tuple[int, int]:
        return (1152, 640) if self.task == "tldr" else (2048, 1024)

    @property
    def decode_t(self) -> tuple[float, float]:
        """(aligner T, proposal T_P) the paper selected for this family and task."""
        return PAPER_TEMPERATURES[(SAMPLING_FAMILY[self.family], SAMPLING_TASK[self.task])]

    def stages(self) -> list[str]:
        """Training stages of this row, in order (see `stage_config`)."""
        prop = ["proposal_sft", "proposal"] if self.proposal_stage == "dpo" else ["proposal"]
        if self.method == "small":
            return ["small"]
        if self.method == "alone":
            return prop
        if self.method in ("ram", "ramdpo"):
            return prop + (["small"] if self.data == "hh" else []) + ["aligner"]
        return prop + ["corrector_warmup", "corrector"]


def _paper_optim(c, lr: float) -> None:
    c.optimizer.name = "rmsprop"
    c.optimizer.lr = lr
    c.optimizer.clip_norm = 10.0
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "warmup_constant"
    c.schedule.warmup_fraction = 0.1
    c.batch_size = 64
    c.num_epochs = 1.0
    c.num_steps = 0


def stage_config(row: Row, stage: str, runlocal: bool = False):
    """The training config of one stage of `row`, derived from base.py."""
    if stage not in row.stages():
        raise ValueError(f"row {row.name} has stages {row.stages()}; got stage={stage!r}.")
    c = base.get_config("runlocal" if runlocal else None)
    big = stage in ("proposal_sft", "proposal")
    preset = PROPOSALS[row.family][1] if big else SMALL[row.family][2]
    c.model.init = "hf"
    c.model.preset = preset
    c.precision = "reference"
    c.data.add_bos = False
    c.data.prompt_template = row.template
    c.data.max_length, c.data.max_prompt_length = row.lengths
    _paper_optim(c, 1e-6)
    c.objective.name = "sft"
    if stage == "proposal" and row.proposal_stage == "wup":
        c.num_steps = WUP_STEPS
        c.schedule.warmup_fraction = 0.5
    elif stage == "proposal" and row.proposal_stage == "dpo":
        c.objective.name = "dpo"
        c.objective.beta = 0.5
        c.model.init = "checkpoint"  # the proposal_sft stage's result
        c.reference.init = "same"
    elif stage == "aligner":
        _paper_optim(c, 2e-7)
        c.objective.name = "ram_dpo" if row.method == "ramdpo" else "ram_sft"
        c.objective.alpha = 1e-4
        c.objective.beta = 1.0
        c.objective.negatives = "rejected" if row.data == "hh" else "sampling"
        if row.data == "hh":
            c.model.init = "checkpoint"  # the HH-SFT small model (stage 'small')
    elif stage == "corrector_warmup":
        c.num_steps = WUP_STEPS
        c.schedule.warmup_fraction = 0.5
    if stage.startswith("corrector"):
        # The corrector reads prompt + proposal answer: the reference adds 1024 + 10.
        c.data.prompt_template = "{prompt}"  # correction prompts are already templated
        c.data.max_length, c.data.max_prompt_length = 3072 + 10, 2048 + 10
        if stage == "corrector":
            c.model.init = "checkpoint"  # from corrector_warmup
    # Memory (`python -m ram_jax.plan --table`, planned for float32 master weights, so
    # an upper bound for these bf16 parameters): FSDP over every chip, bf16 compute,
    # per-layer remat and 8 microbatches (one example per chip per microbatch on 8
    # chips), which fits the 1B aligner on a v5e-8.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.grad_accum = 8
    if runlocal:
        _shrink_like_base(c)
        c.model.dtype = "float32"
        c.mesh.data, c.mesh.fsdp = -1, 1
    return c


_RUNLOCAL_KEYS = (
    "model.init",
    "model.preset",
    "data.max_length",
    "data.max_prompt_length",
    "data.bucket_min",
    "batch_size",
    "grad_accum",
    "num_steps",
    "optimizer.lr",
    "log_every",
    "checkpoint_every",
)


def _shrink_like_base(c) -> None:
    """Applies base.py's `runlocal` values over the paper settings (a CPU-sized run)."""
    small = base.get_config("runlocal")
    keys = _RUNLOCAL_KEYS
    if c.model.init == "checkpoint":  # keep chaining from the previous stage's result
        keys = tuple(k for k in keys if k != "model.init")
    for key in keys:
        src, dst = small, c
        *path, leaf = key.split(".")
        for p in path:
            src, dst = src[p], dst[p]
        dst[leaf] = src[leaf]


def get_config(row: Row, arg: str | None = None):
    """`get_config` of a row file: `arg` = 'stage=NAME' (default: the row's last stage)."""
    a = base.parse_arg(arg, runlocal=False, stage=row.stages()[-1])
    c = stage_config(row, a.stage, a.runlocal)
    c.row = row.name
    c.stage = a.stage
    return c


def all_rows() -> list[Row]:
    """Every row of the paper's tables (plus the ram_dpo aligner rows for HH)."""
    rows = []
    for task in ("uc", "tldr"):
        rows += [
            Row(task, "llama8b", "wup", "alone"),
            Row(task, "llama8b", "wup", "small"),
            Row(task, "llama8b", "wup", "aligner"),
            Row(task, "llama8b", "wup", "ram"),
            Row(task, "llama8b", "sft", "alone"),
            Row(task, "llama8b", "sft", "ram"),
            Row(task, "qwen14b", "wup", "alone"),
            Row(task, "qwen14b", "wup", "ram"),
            Row(task, "qwen14b", "sft", "ram"),
        ]
    for task in ("hh-helpful", "hh-harmless"):
        rows += [
            Row(task, "llama8b", "dpo", "alone"),
            Row(task, "llama8b", "dpo", "aligner"),
            Row(task, "llama8b", "dpo", "ram"),
            Row(task, "llama8b", "dpo", "ramdpo"),
            Row(task, "qwen14b", "dpo", "ram"),
        ]
    return rows


def by_name(name: str) -> Row:
    rows = {r.name: r for r in all_rows()}
    if name not in rows:
        raise KeyError(f"unknown row {name!r}; `launch/reproduce.sh --list` prints the rows.")
    return rows[name]
