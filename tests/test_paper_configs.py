"""Paper configs: every row and stage loads, full-size shapes via eval_shape, the step compiles."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import base
from experiments.paper import rows as R
from ram_jax import sharding as shd
from ram_jax.models.config import PRESETS, get_preset
from ram_jax.training import losses, optim
from ram_jax.training import step as train

PAPER_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "paper"
)
ROW_FILES = sorted(
    f[:-3]
    for f in os.listdir(PAPER_DIR)
    if f.endswith(".py")
    and f not in ("__init__.py", "rows.py", "reproduce.py", "stages.py", "check_plan_gpu.py")
)
# Real parameter counts of the paper's checkpoints (their HF model cards / safetensors).
PARAMS = {
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-3b": 3_085_938_688,
}


def _keys(c, prefix=""):
    out = set()
    for k, v in c.items():
        out |= _keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
    return out


def test_one_file_per_row_and_every_stage_loads():
    assert len(ROW_FILES) == len(R.all_rows()) == 28
    base_keys = _keys(base.get_config())
    for name in ROW_FILES:
        mod = importlib.import_module(f"experiments.paper.{name}")
        row = mod.ROW
        assert row.name.replace("-", "_") == name
        assert mod.get_config().stage == row.stages()[-1]
        for stage in row.stages():
            for arg in (f"stage={stage}", f"stage={stage},runlocal"):
                c = mod.get_config(arg)
                assert _keys(c) == base_keys | {"row", "stage"}, (name, arg)
                assert c.row == row.name and c.model.preset in PRESETS
                # As the reference trained: bf16 parameters and RMSprop state, no BOS.
                assert c.precision == "reference" and c.data.add_bos is False
                big = stage.startswith("proposal")
                family = R.PROPOSALS[row.family][1] if big else R.SMALL[row.family][2]
                if "runlocal" in arg:
                    assert c.model.preset == "tiny-llama" and c.data.max_length == 128
                else:
                    assert c.model.preset == family
        with pytest.raises(ValueError, match="has stages"):
            mod.get_config("stage=nope")


@pytest.mark.parametrize("preset", sorted(PARAMS))
def test_full_size_state_shapes_via_eval_shape(preset):
    cfg = get_preset(preset, dtype="bfloat16")
    opt, _ = optim.from_config(base.get_config(), total_steps=100)
    state = train.abstract_state(cfg, opt)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    assert n == PARAMS[preset]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    nu = state.opt_state[1][0].nu  # clip (empty) -> (rms accumulators, schedule count)
    assert jax.tree.map(lambda x: x.shape, nu) == jax.tree.map(lambda x: x.shape, state.params)


def _abstract_batch(accum, rows, group, length):
    shape = (accum, rows, group, length)
    return {
        "tokens": jax.ShapeDtypeStruct(shape, jnp.int32),
        "mask": jax.ShapeDtypeStruct(shape, jnp.bool_),
        "targets": jax.ShapeDtypeStruct(shape, jnp.bool_),
        "weight": jax.ShapeDtypeStruct((accum, rows), jnp.float32),
    }


def _step_for(c, mesh, *, preset=None):
    param_dtype = optim.param_dtype_for(c.precision)
    cfg = get_preset(preset or c.model.preset, dtype=c.model.dtype, param_dtype=param_dtype)
    objective = losses.Objective(c.objective.name, alpha=c.objective.alpha, beta=c.objective.beta)
    opt, schedule = optim.from_config(c, total_steps=100)
    abstract = train.abstract_state(cfg, opt)
    shardings = train.state_shardings(abstract, mesh)
    ref_sh = shardings.params if objective.needs_reference else None
    step = train.make_train_step(
        cfg,
        objective,
        opt,
        schedule,
        shardings,
        mesh,
        vocab_limit=None,
        remat=c.model.remat,
        ref_config=cfg,
        ref_shardings=ref_sh,
    )
    return cfg, objective, abstract, shardings, step


def test_full_size_paper_steps_trace_via_eval_shape():
    mesh = shd.make_mesh(data=1, fsdp=8)
    for row, stage in (
        (R.by_name("uc-llama8b-wup-ram1b"), "aligner"),
        (R.by_name("hh-helpful-llama8b-dpo"), "proposal"),
    ):
        c = R.get_config(row, f"stage={stage}")
        cfg, objective, abstract, _, step = _step_for(c, mesh)
        rows = c.batch_size // c.grad_accum
        batch = _abstract_batch(c.grad_accum, rows, objective.group_size, c.data.max_length)
        ref = abstract.params if objective.needs_reference else None
        new_state, metrics = jax.eval_shape(step, abstract, batch, ref)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
            lambda x: (x.shape, x.dtype), abstract
        )
        assert {x.dtype for x in jax.tree.leaves(abstract.params)} == {jnp.dtype(jnp.bfloat16)}
        assert metrics["loss"].shape == () and metrics["grad_norm"].dtype == jnp.float32


def test_runlocal_step_compiles_on_a_fake_fsdp_mesh():
    # The DPO proposal stage: the paper's step with the most arguments (frozen reference
    # params sharded like the trained ones); one compile (~10-20 s on 2 busy cores).
    c = R.get_config(R.by_name("hh-helpful-llama8b-dpo"), "stage=proposal,runlocal")
    c.model.dtype = "bfloat16"  # the paper's compute dtype
    mesh = shd.make_mesh(data=2, fsdp=4)
    cfg, objective, abstract, shardings, step = _step_for(c, mesh)
    batch = _abstract_batch(2, 8, objective.group_size, 32)
    ref = abstract.params if objective.needs_reference else None
    compiled = step.lower(abstract, batch, ref).compile()
    out_state, _ = compiled.output_shardings
    want = jax.tree.map(lambda s: s.spec, shardings)
    got = jax.tree.map(lambda s: s.spec, out_state)
    assert got == want
    # FSDP really shards: the embedding is split over fsdp and the step gathers weights.
    assert want.params["embed"]["embedding"] == jax.sharding.PartitionSpec(None, "fsdp")
    hlo = compiled.as_text()
    assert "all-gather" in hlo or "all-reduce" in hlo
