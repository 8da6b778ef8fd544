"""The experiment's stages, each through a real ram_jax entry point.

  world      generate the world, write its JSONL files, build the BPE tokenizer
             (`ram_jax.models.tokenizer.build_tokenizer`)
  proposal   pre-train the proposal on the base corpus (`ram_jax.main`'s run)
  samples    K proposal samples per aligned prompt (`ram_jax.sample_proposal`)
  per seed:  train `aligner` (sft), `proposal_sft`, the RAM aligners (ram_sft,
             ram_dpo, ram_mc), the `format` aligner (ram_sft on the format set)
             and the `corrector` (`ram_jax.main`'s run); decode every method
             (`ram_jax.generate`'s `decode_file`), `ram_product` again with an
             int8 proposal, the two aligners composed and a sweep of the format
             aligner's weight; score.

How each entry point is called: `entry_points.py`. The proposal and its offline
samples are built once per run, like the paper's frozen base LLM; each seed
retrains everything trained on the aligned set and redraws every decode.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time

from experiments.demo import scorers
from experiments.demo import world as world_lib
from experiments.demo.entry_points import (
    DECODE,
    MAX_NEW_TOKENS,
    NUM_CANDIDATES,
    generate,
    sample_proposal,
    train,
)
from ram_jax.data import templates
from ram_jax.io import read_objects, write_atomic, write_jsonl

RAM_OBJECTIVES = ("ram_sft", "ram_dpo", "ram_mc")
CORRECTOR_DRAFT = "{question}\n\nDraft: {draft}"
# The format aligner's weights in the two-aligner sweep (the style aligner at 1).
SWEEP_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
# (style, format) aligner weights of the composed decode's rows.
COMPOSED = {
    "ram_product_format": (0.0, 1.0),
    "ram_product_both": (1.0, 1.0),
    **{f"format_w{wf}": (1.0, wf) for wf in SWEEP_WEIGHTS},
}
# What each method trained, when not one RAM objective (for its params and seconds).
TRAINED = {
    "proposal": (),
    "aligner": ("aligner",),
    "proposal_sft": ("proposal_sft",),
    "corrector": ("corrector",),
    "ram_product_format": ("format",),
    "ram_product_both": ("ram_sft", "format"),
}
READS_SAMPLES = ("ram_sft", "ram_mc", "corrector", "format")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run of the experiment does."""

    out: str
    quick: bool
    seeds: int
    world_seed: int = 0
    # RAM decoding modes per objective (the ram_sft aligner gets every mode).
    ram_modes: dict = dataclasses.field(default_factory=dict)
    num_samples: int = 4  # proposal samples per aligned prompt (ram_mc's K)

    @staticmethod
    def make(out: str, quick: bool, seeds: int, world_seed: int = 0) -> Plan:
        if seeds < 1:
            raise ValueError(f"--seeds={seeds}: need at least one seed.")
        if quick:
            modes = {"ram_sft": ("product",), "ram_dpo": (), "ram_mc": ()}
        else:
            # `aligner`: the residual aligner decoded alone, a diagnostic.
            all_modes = ("product", "par", "par_kl", "sir", "seq_sir", "aligner")
            modes = {"ram_sft": all_modes, "ram_dpo": ("product",), "ram_mc": ("product",)}
        return Plan(out=out, quick=quick, seeds=seeds, world_seed=world_seed, ram_modes=modes)

    @property
    def world_spec(self) -> world_lib.WorldSpec:
        if self.quick:
            return world_lib.WorldSpec(num_entities=40, num_eval=48)
        return world_lib.WorldSpec(num_entities=120, num_eval=96)

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(o for o in RAM_OBJECTIVES if self.ram_modes.get(o))


class Progress:
    """Prints each stage with elapsed time and an ETA from expected stage costs."""

    def __init__(self, stages: list[tuple[str, float]]):
        self.weights = dict(stages)
        self.total = sum(self.weights.values())
        self.done = 0.0
        self.t0 = time.time()

    def start(self, name: str) -> float:
        print(f"[{time.time() - self.t0:6.0f}s] {name} ...", flush=True)
        return time.time()

    def end(self, name: str, t_start: float, note: str = "") -> None:
        self.done += self.weights.get(name, 0.0)
        elapsed = time.time() - self.t0
        eta = elapsed / max(self.done, 1e-9) * (self.total - self.done)
        print(
            f"[{elapsed:6.0f}s] {name} done in {time.time() - t_start:.1f}s {note}(ETA {eta:.0f}s)",
            flush=True,
        )


def read_jsonl(path: str) -> list[dict]:
    return [obj for _, obj in read_objects(path)]


# ----------------------------------------------------------------------------- world


def build_world(plan: Plan) -> dict:
    """Writes the world's files under OUT/world; returns their paths."""
    from experiments.configs.demo_proposal import TEMPLATE, VOCAB_SIZE
    from ram_jax.models.tokenizer import build_tokenizer

    w = world_lib.make_world(plan.world_seed, plan.world_spec)
    d = os.path.join(plan.out, "world")
    os.makedirs(d, exist_ok=True)
    rng = random.Random(plan.world_seed)
    paths = {
        "base": os.path.join(d, "base.jsonl"),
        "aligned": os.path.join(d, "aligned.jsonl"),
        "eval": os.path.join(d, "eval_prompts.jsonl"),
        "facts": os.path.join(d, "facts.json"),
        "tokenizer": os.path.join(d, "tokenizer.json"),
    }
    write_jsonl(paths["base"], [{"prompt": e.question, "chosen": e.answer} for e in w.base])
    write_jsonl(
        paths["aligned"],
        [
            {
                "prompt": e.question,
                "chosen": e.answer,
                "rejected": world_lib.rejected_answer(rng, e),
            }
            for e in w.aligned
        ],
    )
    write_jsonl(paths["eval"], [{"instruction": e.question} for e in w.eval])
    write_atomic(
        paths["facts"],
        json.dumps(
            {
                "facts": w.facts,
                "aligned_entities": w.aligned_entities,
                "eval_entities": w.eval_entities,
            },
            indent=1,
        ),
    )
    # Prompts and answers are tokenized separately in training, so the BPE
    # learns them as separate texts (answers start without a leading space).
    texts = [templates.apply(TEMPLATE, e.question) for e in w.base] + [
        e.answer for e in w.base + w.aligned
    ]
    tok = build_tokenizer(texts, VOCAB_SIZE)
    write_atomic(paths["tokenizer"], tok.to_str())
    return {"world": w, "paths": paths}


def corrector_rows(aligned_sampled: list[dict], k: int) -> list[dict]:
    """(question + proposal draft) -> aligned answer, one row per draft."""
    rows = []
    for r in aligned_sampled:
        drafts = r["sampling"] if isinstance(r["sampling"], list) else [r["sampling"]]
        for d in drafts[:k]:
            rows.append(
                {
                    "prompt": CORRECTOR_DRAFT.format(question=r["prompt"], draft=d),
                    "chosen": r["chosen"],
                }
            )
    return rows


def format_rows(aligned_sampled: list[dict], w: world_lib.World, seed: int) -> list[dict]:
    """The format set: the aligned rows (prompts, proposal samples) with format answers."""
    rng = random.Random(seed + 1)
    rows = []
    for r, ex in zip(aligned_sampled, w.aligned, strict=True):
        assert r["prompt"] == ex.question, "sampled rows out of the aligned set's order"
        rows.append({**r, "chosen": world_lib.format_answer(rng, ex)})
    return rows


def score(outputs: list[str], w: world_lib.World, finished=None) -> dict:
    return scorers.score_answers(outputs, w.eval, w.values, finished)


# ----------------------------------------------------------------------------- a seed


def run_seed(plan: Plan, seed: int, shared: dict, progress: Progress) -> tuple[dict, dict]:
    """Trains and decodes every method for one seed; returns ({method: metrics},
    {format weight: metrics})."""
    w, paths = shared["world"], shared["paths"]
    sd = os.path.join(plan.out, f"seed{seed}")
    gen_dir = os.path.join(sd, "generations")
    os.makedirs(gen_dir, exist_ok=True)
    q = "quick" if plan.quick else None
    common = {"tokenizer": paths["tokenizer"], "seed": seed}
    trained = {}

    def stage_train(key, config, arg, data, extra=None):
        name = f"seed {seed}: train {key}"
        t = progress.start(name)
        s = train(
            config, arg, os.path.join(sd, key), {**common, "data.train_file": data, **(extra or {})}
        )
        trained[key] = s
        progress.end(name, t)

    aligned = shared["aligned_sampled"]
    qa = lambda obj: ",".join(filter(None, [q, f"objective={obj}"]))
    stage_train("aligner", "demo_aligner", qa("sft"), aligned)
    stage_train(
        "proposal_sft", "demo_proposal_sft", q, aligned, {"model.path": shared["proposal_dir"]}
    )
    for obj in plan.objectives:
        stage_train(obj, "demo_aligner", qa(obj), aligned)
    stage_train("format", "demo_aligner", qa("ram_sft"), shared["format_train"])
    stage_train("corrector", "demo_corrector", q, shared["corrector_train"])

    results, decoded = {}, {}

    def stage_decode(
        method, proposal, aligners, decoding, prompts=paths["eval"], params=DECODE, int8=False
    ):
        name = f"seed {seed}: decode {method}"
        t = progress.start(name)
        out = os.path.join(gen_dir, f"{method}.json")
        decoded[method] = generate(proposal, aligners, prompts, out, decoding, seed, params, int8)
        progress.end(name, t)
        return decoded[method]

    export = lambda key: trained[key]["export_dir"]
    stage_decode("proposal", shared["proposal_dir"], [], "proposal")
    stage_decode("aligner", export("aligner"), [], "proposal")
    stage_decode("proposal_sft", export("proposal_sft"), [], "proposal")
    # The corrector rewrites the proposal's (already decoded) answers.
    corr_prompts = os.path.join(sd, "corrector_prompts.jsonl")
    write_jsonl(
        corr_prompts,
        [
            {"instruction": CORRECTOR_DRAFT.format(question=e.question, draft=d)}
            for e, d in zip(w.eval, decoded["proposal"].outputs, strict=True)
        ],
    )
    stage_decode("corrector", export("corrector"), [], "proposal", corr_prompts)
    for obj in plan.objectives:
        for mode in plan.ram_modes[obj]:
            method = f"ram_{mode}" if obj == "ram_sft" else f"{obj}_{mode}"
            stage_decode(method, shared["proposal_dir"], [export(obj)], mode)
    # The same product with the proposal's weights stored as int8 (`--int8_proposal`).
    stage_decode(
        "ram_product_int8", shared["proposal_dir"], [export("ram_sft")], "product", int8=True
    )
    # The second behaviour: the format aligner alone, both aligners composed and the
    # format weight swept, all in one decode: one row per (prompt, weights), so the
    # per-row weights share one compiled decoder. A zero weight cancels its aligner.
    both = [export("ram_sft"), export("format")]
    prompts = os.path.join(sd, "composed_prompts.jsonl")
    write_jsonl(prompts, [{"instruction": e.question} for _ in COMPOSED for e in w.eval])
    rows = [DECODE.replace(aligner_weights=ws) for ws in COMPOSED.values() for _ in w.eval]
    composed = stage_decode(
        "composed", shared["proposal_dir"], both, "weighted_product", prompts, rows
    )
    del decoded["composed"]
    n = len(w.eval)
    parts = {k: composed.outputs[i * n : (i + 1) * n] for i, k in enumerate(COMPOSED)}
    for method in ("ram_product_format", "ram_product_both"):
        decoded[method] = dataclasses.replace(composed, outputs=parts[method])
    sweep = {str(wf): score(parts[f"format_w{wf}"], w) for wf in SWEEP_WEIGHTS}

    sampling_s = shared["sampling_seconds"]
    for method, d in decoded.items():
        m = score(d.outputs, w)
        ttft, tps = d.ttft_seconds, d.tokens_per_second
        if method == "corrector":
            # Its first token waits for the proposal's whole answer.
            p = decoded["proposal"]
            ttft = p.batch_seconds + d.ttft_seconds
            # Tokens the user receives per second of the two stages together.
            tps = d.tokens_per_second * d.batch_seconds / (p.batch_seconds + d.batch_seconds)
        keys = TRAINED.get(method, (_objective_of(method),))
        train_s = sum(trained[k]["seconds"] for k in keys)
        # Offline proposal samples are part of the cost of the methods that read them.
        if any(k in READS_SAMPLES for k in keys):
            train_s += sampling_s
        m.update(
            trainable_params=sum(trained[k]["trainable_params"] for k in keys),
            train_seconds=train_s,
            ttft_seconds=ttft,
            tokens_per_second=tps,
        )
        results[method] = m
    write_atomic(
        os.path.join(sd, "metrics.json"), json.dumps({**results, "sweep": sweep}, indent=1)
    )
    return results, sweep


def _objective_of(method: str) -> str:
    for obj in RAM_OBJECTIVES[1:]:
        if method.startswith(obj + "_"):
            return obj
    return "ram_sft"


# ----------------------------------------------------------------------------- the run


def stage_costs(plan: Plan) -> list[tuple[str, float]]:
    """Expected relative cost of each stage (seconds on 2 idle cores), for the ETA."""
    stages = [
        ("world", 2.0),
        ("train proposal", 45.0 if plan.quick else 120.0),
        ("sample proposal", 8.0),
    ]
    for s in range(plan.seeds):
        stages += [(f"seed {s}: train aligner", 10.0), (f"seed {s}: train proposal_sft", 14.0)]
        stages += [(f"seed {s}: train {o}", 10.0) for o in (*plan.objectives, "format")]
        stages += [(f"seed {s}: train corrector", 12.0)]
        for m in ("proposal", "aligner", "proposal_sft", "corrector"):
            stages.append((f"seed {s}: decode {m}", 4.0))
        for obj in plan.objectives:
            for mode in plan.ram_modes[obj]:
                method = f"ram_{mode}" if obj == "ram_sft" else f"{obj}_{mode}"
                stages.append((f"seed {s}: decode {method}", 8.0 if "sir" in mode else 5.0))
        stages.append((f"seed {s}: decode ram_product_int8", 5.0))
        stages.append((f"seed {s}: decode composed", 10.0))
    return stages


def run(plan: Plan) -> dict:
    """The whole experiment; writes OUT/results.{json,md} and plots."""
    from experiments.demo import report

    t0 = time.time()
    # A training workdir that holds a checkpoint would be resumed, not retrained:
    # drop a previous run's stage directories (only those) before starting.
    for name in os.listdir(plan.out) if os.path.isdir(plan.out) else ():
        if name in ("world", "proposal") or name.startswith("seed"):
            shutil.rmtree(os.path.join(plan.out, name))
    progress = Progress(stage_costs(plan))
    t = progress.start("world")
    shared = build_world(plan)
    progress.end("world", t)
    paths = shared["paths"]

    t = progress.start("train proposal")
    s = train(
        "demo_proposal",
        "quick" if plan.quick else None,
        os.path.join(plan.out, "proposal"),
        {
            "tokenizer": paths["tokenizer"],
            "data.train_file": paths["base"],
            "seed": plan.world_seed,
        },
    )
    shared["proposal_dir"] = s["export_dir"]
    progress.end("train proposal", t)

    t = progress.start("sample proposal")
    sampled = os.path.join(plan.out, "world", "aligned_sampled.jsonl")
    sample_proposal(
        shared["proposal_dir"], paths["aligned"], sampled, plan.num_samples, seed=plan.world_seed
    )
    shared["sampling_seconds"] = time.time() - t
    shared["aligned_sampled"] = sampled
    shared["corrector_train"] = os.path.join(plan.out, "world", "corrector.jsonl")
    write_jsonl(shared["corrector_train"], corrector_rows(read_jsonl(sampled), plan.num_samples))
    shared["format_train"] = os.path.join(plan.out, "world", "format_sampled.jsonl")
    rows = format_rows(read_jsonl(sampled), shared["world"], plan.world_seed)
    write_jsonl(shared["format_train"], rows)
    progress.end("sample proposal", t)

    runs = [run_seed(plan, s, shared, progress) for s in range(plan.seeds)]
    per_seed, sweeps = [r[0] for r in runs], [r[1] for r in runs]
    info = {
        "quick": plan.quick,
        "seeds": plan.seeds,
        "world_seed": plan.world_seed,
        "wall_seconds": time.time() - t0,
        "decode": {
            **dataclasses.asdict(DECODE),
            "num_candidates": NUM_CANDIDATES,
            "max_new_tokens": MAX_NEW_TOKENS,
            "sweep_weights": SWEEP_WEIGHTS,
        },
        "world": dataclasses.asdict(plan.world_spec),
    }
    results = report.write_results(plan.out, per_seed, info, sweeps)
    print(
        f"done: {plan.seeds} seed(s) in {time.time() - t0:.0f}s; results in "
        f"{os.path.join(plan.out, 'results.md')}",
        flush=True,
    )
    return results
