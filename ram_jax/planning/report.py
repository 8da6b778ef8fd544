"""Reports of the memory planner: a training config's plan, the README table.

`python -m ram_jax.plan` prints them; the estimates themselves (and their
formulas) live in `ram_jax.planning.memory`.
"""

from __future__ import annotations

import os

from jax.sharding import AbstractMesh

from ram_jax.models.config import ModelConfig, get_preset
from ram_jax.planning.memory import (
    DEVICES,
    Device,
    abstract_mesh,
    decode_memory,
    gib,
    suggest_grad_accum,
    train_memory,
    training_attention,
)
from ram_jax.training.losses import Objective
from ram_jax.training.model import model_config_for


def stage_model_config(config) -> ModelConfig:
    """The trained model's ModelConfig from a training config.

    Reads the model's own config (HF `config.json`, checkpoint metadata) when
    its path exists here; otherwise, as when planning before downloading,
    the config's `model.preset` stands in for it.
    """
    m = config.model
    if m.init == "preset" or not (m.path and os.path.exists(m.path)):
        m = m.copy_and_resolve_references()
        m.init = "preset"
    return model_config_for(m, m.dtype)


def plan_training(config, device: Device, mesh: AbstractMesh) -> dict[str, int]:
    """`train_memory` for a training config (the objective, batch and lengths it sets)."""
    from ram_jax.training import optim

    optimizer, _ = optim.from_config(config, total_steps=1000)
    model = stage_model_config(config)
    return train_memory(
        model,
        optimizer,
        mesh,
        objective=Objective.from_config(config.objective),
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        max_length=config.data.max_length,
        remat=config.model.remat,
        attention=training_attention(model, config.data.max_length, device.backend),
        param_dtype=optim.param_dtype_for(config.precision),
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
            objective=Objective(objective),
            batch_size=64,
            grad_accum=grad_accum,
            max_length=2048,
            remat=remat,
            attention=training_attention(cfg, 2048, device.backend),
        )["total"]

    for remat in remat_options:
        a = suggest_grad_accum(lambda a, remat=remat: total(a, remat) <= budget, 64, rows)
        if a is not None:
            return f"{gib(total(a, remat))} (accum {a}{', remat' if remat else ''})"
    return f"no: {gib(total(64 // rows, True))} > {gib(int(budget))}"


def markdown_table(decode_batch: int = 32, decode_length: int = 2048) -> str:
    """GiB per device for the paper's stages on each device (batch 64, length 2048, bf16)."""
    from ram_jax.training import optim

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


def report(title: str, memory: dict[str, int], device: Device) -> str:
    rows = [f"{title} on {device.name} ({gib(device.hbm_bytes)} GiB per chip)"]
    for k, v in memory.items():
        rows.append(f"  {k:<18} {gib(v):>8} GiB")
    verdict = "fits" if memory["total"] <= 0.9 * device.hbm_bytes else "does NOT fit"
    rows.append(f"  -> {verdict} (budget 90% of HBM = {gib(int(0.9 * device.hbm_bytes))} GiB)")
    return "\n".join(rows)
