"""Reports of the memory planner: a training config's plan, the README table, the CLI.

`python -m ram_jax.plan` runs `run()` here; the estimates themselves (and
their formulas) live in `ram_jax.plan`.
"""

from __future__ import annotations

import os

from absl import app, flags
from jax.sharding import AbstractMesh
from ml_collections import config_flags

from ram_jax import sharding as shd
from ram_jax.config import ModelConfig, get_preset
from ram_jax.plan import (
    DEVICES,
    Device,
    abstract_mesh,
    decode_memory,
    gib,
    parse_mesh,
    suggest_grad_accum,
    train_memory,
)


def stage_model_config(config) -> ModelConfig:
    """The trained model's ModelConfig from a training config (HF config.json if present)."""
    from ram_jax.config import from_hf_config

    m = config.model
    dtypes = dict(param_dtype="float32", dtype=m.dtype)
    if m.init == "hf" and m.path and os.path.exists(os.path.join(m.path, "config.json")):
        return from_hf_config(m.path, **dtypes)
    overrides = {k: v for k, v in m.overrides.items() if v is not None}
    return get_preset(m.preset, **overrides, **dtypes)


def plan_training(config, device: Device, mesh: AbstractMesh) -> dict[str, int]:
    """`train_memory` for a training config (the objective, batch and lengths it sets)."""
    from ram_jax import optim

    optimizer, _ = optim.from_config(config, total_steps=1000)
    return train_memory(
        stage_model_config(config),
        optimizer,
        mesh,
        objective=config.objective.name,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        max_length=config.data.max_length,
        remat=config.model.remat,
        num_samples=config.objective.num_samples,
    )


# The paper's pairs and the stages the README table covers.
PAIRS = (("llama-3.1-8b", "llama-3.2-1b"), ("qwen2.5-14b", "qwen2.5-3b"))


def _fit_cell(cfg: ModelConfig, optimizer, mesh, device, objective, remat_options) -> str:
    budget = 0.9 * device.hbm_bytes
    rows = mesh.shape["data"] * mesh.shape["fsdp"]

    def total(grad_accum: int, remat: bool) -> int:
        return train_memory(
            cfg,
            optimizer,
            mesh,
            objective=objective,
            batch_size=64,
            grad_accum=grad_accum,
            max_length=2048,
            remat=remat,
        )["total"]

    for remat in remat_options:
        a = suggest_grad_accum(lambda a, remat=remat: total(a, remat) <= budget, 64, rows)
        if a is not None:
            return f"{gib(total(a, remat))} (accum {a}{', remat' if remat else ''})"
    return f"no: {gib(total(64 // rows, True))} > {gib(int(budget))}"


def markdown_table(decode_batch: int = 32, decode_length: int = 2048) -> str:
    """GiB per device for the paper's stages on each device (batch 64, length 2048, bf16)."""
    from ram_jax import optim

    optimizer = optim.make_optimizer("rmsprop", 1e-6, clip_norm=10.0)
    names = list(DEVICES)
    lines = [
        "| stage (batch 64, length 2048, bf16 compute) | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for big, small in PAIRS:
        big_cfg = get_preset(big, dtype="bfloat16")
        small_cfg = get_preset(small, dtype="bfloat16")
        stages = (
            (f"aligner {small} ram_sft", small_cfg, "ram_sft", (False, True)),
            (f"proposal {big} SFT / W.Up", big_cfg, "sft", (True,)),
            (f"proposal {big} DPO (+ frozen reference)", big_cfg, "dpo", (True,)),
        )
        for label, cfg, objective, remats in stages:
            cells = []
            for name in names:
                dev = DEVICES[name]
                mesh = abstract_mesh(fsdp=dev.chips)
                cells.append(_fit_cell(cfg, optimizer, mesh, dev, objective, remats))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        cells = []
        for name in names:
            dev = DEVICES[name]
            m = decode_memory(
                big_cfg,
                small_cfg,
                abstract_mesh(fsdp=dev.chips),
                batch=decode_batch,
                length=decode_length,
            )
            ok = "" if m["total"] <= 0.9 * dev.hbm_bytes else " (no)"
            cells.append(f"{gib(m['total'])}{ok}")
        lines.append(
            f"| decode {big} + {small}, batch {decode_batch}, {decode_length} slots, bf16 | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _report(title: str, memory: dict[str, int], device: Device) -> str:
    rows = [f"{title} on {device.name} ({gib(device.hbm_bytes)} GiB per chip)"]
    for k, v in memory.items():
        rows.append(f"  {k:<18} {gib(v):>8} GiB")
    verdict = "fits" if memory["total"] <= 0.9 * device.hbm_bytes else "does NOT fit"
    rows.append(f"  -> {verdict} (budget 90% of HBM = {gib(int(0.9 * device.hbm_bytes))} GiB)")
    return "\n".join(rows)


def main(argv):
    del argv
    f = flags.FLAGS
    device = DEVICES[f.device]
    if f.table:
        print(markdown_table(f.batch, f.length))
        return
    if f.decode:
        big, _, small = f.decode.partition("+")
        mesh = parse_mesh(f.mesh or "fsdp=-1", device.chips)
        m = decode_memory(
            get_preset(big),
            get_preset(small) if small else None,
            mesh,
            batch=f.batch,
            length=f.length,
            dtype=f.decode_dtype,
        )
        print(_report(f"decode {f.decode} batch {f.batch} x {f.length}", m, device))
        return
    config = f.config
    if config is None:
        raise ValueError("pass --config=FILE, --decode=BIG+SMALL or --table.")
    mesh_text = f.mesh or ",".join(f"{a}={config.mesh[a]}" for a in shd.MESH_AXES)
    mesh = parse_mesh(mesh_text, device.chips)
    m = plan_training(config, device, mesh)
    print(
        _report(
            f"train {config.model.preset} ({config.objective.name}, batch {config.batch_size}, "
            f"accum {config.grad_accum}, length {config.data.max_length}, remat "
            f"{config.model.remat}, mesh {dict(mesh.shape)})",
            m,
            device,
        )
    )


def run() -> None:
    """`python -m ram_jax.plan`: defines the flags and runs `main`."""

    config_flags.DEFINE_config_file("config", None, "Training config file.")
    flags.DEFINE_enum("device", "v5e-8", sorted(DEVICES), "Accelerator slice.")
    flags.DEFINE_string("mesh", None, "data=..,fsdp=..,tensor=.. (-1: the rest; default: config).")
    flags.DEFINE_string("decode", None, "Plan decoding of PROPOSAL+ALIGNER presets instead.")
    flags.DEFINE_integer("batch", 32, "Decoding batch.")
    flags.DEFINE_integer("length", 2048, "Decoding cache slots (prompt + new tokens).")
    flags.DEFINE_string("decode_dtype", "bfloat16", "Weights and cache dtype for decoding.")
    flags.DEFINE_bool("table", False, "Print the README table for the paper's pairs.")
    app.run(main)
