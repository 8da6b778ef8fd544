"""Memory planner: exact parameter / optimizer bytes against hand counts, stated formulas."""

import os
import subprocess
import sys

import pytest

from ram_jax.models.config import get_preset
from ram_jax.planning import memory as plan
from ram_jax.training import optim
from ram_jax.training.losses import Objective

FSDP8 = plan.abstract_mesh(fsdp=8)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _schedule():
    return optim.make_schedule("warmup_constant", 1e-6, total_steps=100, warmup_fraction=0.1)


def _rmsprop():
    return optim.make_optimizer("rmsprop", _schedule(), clip_norm=10.0)


def test_param_and_optimizer_bytes_are_exact_hand_counts():
    # Llama-3.2-1B: 1,235,814,400 parameters; the RMSNorm scales (16 layers x 2 x 2048
    # + 2048 = 67,584) are replicated, everything else splits 8 ways on its width.
    one_b = get_preset("llama-3.2-1b")
    per_device = (1_235_814_400 - 67_584) // 8 + 67_584
    assert plan.param_bytes(one_b, FSDP8) == 4 * per_device == 618_143_744
    # RMSprop: one float32 accumulator per parameter + one int32 schedule counter.
    assert plan.optimizer_bytes(one_b, _rmsprop(), FSDP8) == 618_143_744 + 4
    # AdamW: two moments + two int32 counters (adam's and the schedule's).
    adamw = optim.make_optimizer("adamw", _schedule(), clip_norm=10.0)
    assert plan.optimizer_bytes(one_b, adamw, FSDP8) == 2 * 618_143_744 + 8
    # Llama-3.1-8B: 8,030,261,248 parameters, 32 x 2 x 4096 + 4096 = 266,240 in norms.
    eight_b = get_preset("llama-3.1-8b")
    assert plan.param_bytes(eight_b, FSDP8) == 4 * ((8_030_261_248 - 266_240) // 8 + 266_240)
    assert plan.param_bytes(eight_b, plan.abstract_mesh(), "bfloat16") == 2 * 8_030_261_248
    # Qwen2.5-3B ties embeddings: 3,085,938,688 parameters, 36 x 2 x 2048 + 2048 in norms;
    # its 16 x 128 = 2048-wide q bias and 2 x 128 k/v biases are split on the head axis by
    # 'tensor' only, so on a pure fsdp mesh they stay whole: 36 x (2048 + 256 + 256).
    three_b = get_preset("qwen2.5-3b")
    replicated = 36 * 2 * 2048 + 2048 + 36 * (2048 + 256 + 256)
    assert plan.param_bytes(three_b, FSDP8) == 4 * ((3_085_938_688 - replicated) // 8 + replicated)


def test_activation_formula_by_hand():
    cfg = get_preset("tiny-llama", dtype="bfloat16")  # D 64, F 128, L 2, N 4, K 2, H 16, V 256
    t = 32
    layer = 2 * (6 * 64 + 2 * 4 * 16 + 2 * 2 * 16 + 3 * 128) + (12 + 2) * 4 * t
    assert layer == 2 * 960 + 1792
    logits = 12 * 256
    assert plan.activation_bytes_per_token(cfg, t, remat=False) == 2 * layer + logits
    assert plan.activation_bytes_per_token(cfg, t, remat=True) == 2 * 2 * 64 + layer + logits
    # Fused kernels keep no T x T tensor: kernel-layout copies of q, k, v and the
    # output, plus a float32 log-sum-exp per head.
    fused = 2 * 960 + 2 * (2 * 4 * 16 + 2 * 2 * 16) + 4 * 4
    for kernel in ("cudnn", "splash"):
        assert plan.activation_bytes_per_token(cfg, t, False, kernel) == 2 * fused + logits
    assert plan.activation_bytes_per_token(cfg, t, False, "xla") == 2 * layer + logits
    m = plan.train_memory(
        cfg,
        _rmsprop(),
        plan.abstract_mesh(data=2, fsdp=4),
        objective=Objective("ram_sft"),
        batch_size=64,
        grad_accum=4,
        max_length=t,
        remat=False,
    )
    # 64 examples / (4 microbatches x 8 shards) = 2 examples x 2 sequences x 32 tokens.
    assert m["activations"] == 2 * 2 * t * (2 * layer + logits)
    assert m["gradients"] == 2 * m["params"] and m["reference"] == 0
    assert m["total"] == sum(v for k, v in m.items() if k != "total")
    stage = dict(objective=Objective("dpo"), batch_size=64, grad_accum=1, max_length=t, remat=True)
    dpo = plan.train_memory(cfg, _rmsprop(), FSDP8, **stage)
    assert dpo["reference"] == dpo["params"] == dpo["gradients"]
    # precision='reference' stores the parameters, their gradients, RMSprop's
    # state and DPO's reference in bfloat16: half of each float32 figure.
    bf16 = plan.train_memory(cfg, _rmsprop(), FSDP8, **stage, param_dtype="bfloat16")
    for key in ("params", "gradients", "reference"):
        assert 2 * bf16[key] == dpo[key] > 0, key
    assert abs(dpo["optimizer"] - 2 * bf16["optimizer"]) <= 16  # int32 step counts
    assert bf16["activations"] == dpo["activations"]
    with pytest.raises(ValueError, match="does not split into 3 microbatches"):
        plan.train_memory(
            cfg,
            _rmsprop(),
            FSDP8,
            objective=Objective("sft"),
            batch_size=64,
            grad_accum=3,
            max_length=t,
            remat=True,
        )


def test_plan_follows_each_backends_attention():
    one_b = get_preset("llama-3.2-1b", dtype="bfloat16")
    assert plan.training_attention(one_b, 2048, plan.DEVICES["8xH100"].backend) == "cudnn"
    assert plan.training_attention(one_b, 2048, plan.DEVICES["v5e-8"].backend) == "splash"
    assert plan.training_attention(one_b.replace(dtype="float32"), 2048, "gpu") == "xla"
    assert plan.training_attention(one_b, 2048, "cpu") == "xla"
    naive = plan.activation_bytes_per_token(one_b, 2048, False, "naive")
    fused = plan.activation_bytes_per_token(one_b, 2048, False, "cudnn")
    # Without remat, at 2048 tokens the naive scores dominate: 16 layers x 14 x 32 x 2048 B.
    assert naive - fused == 16 * (14 * 32 * 2048 - 2 * (2 * 2048 + 2 * 512) - 4 * 32)
    assert naive > 3 * fused


def test_decode_kv_cache_bytes_by_hand():
    big, small = get_preset("llama-3.1-8b"), get_preset("llama-3.2-1b")
    m = plan.decode_memory(big, small, FSDP8, batch=32, length=2048)
    # k and v, 32 layers, 32 / 8 = 4 rows per device, 2048 slots, 8 kv heads x 128, bf16.
    assert m["proposal_kv_cache"] == 2 * 32 * 4 * 2048 * 8 * 128 * 2 == 2**30
    assert m["aligner_kv_cache"] == 2 * 16 * 4 * 2048 * 8 * 64 * 2
    assert m["proposal_weights"] == plan.param_bytes(big, FSDP8, "bfloat16")
    # A batch the shards do not divide stays whole on every device.
    odd = plan.decode_memory(big, None, FSDP8, batch=3, length=16)
    assert (
        odd["proposal_kv_cache"] == 2 * 32 * 3 * 16 * 8 * 128 * 2 and "aligner_weights" not in odd
    )


def test_mesh_parsing_and_devices():
    assert dict(plan.parse_mesh("data=1,fsdp=-1", 8).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(plan.parse_mesh("data=2,fsdp=-1", 4).shape)["fsdp"] == 2
    with pytest.raises(ValueError, match="does not use exactly 8 chips"):
        plan.parse_mesh("data=3", 8)
    assert plan.DEVICES["v4-8"].chips == 4 and plan.DEVICES["v4-8"].hbm_bytes == 32 * 2**30
    assert plan.suggest_grad_accum(lambda a: a >= 3, 64, 8) == 4  # divisors of 8 only


def test_cli_plans_a_paper_config():
    cmd = [
        sys.executable,
        "-m",
        "ram_jax.plan",
        "--config=experiments/paper/uc_llama8b_wup_ram1b.py:stage=aligner",
        "--device=v5e-8",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    # The paper configs train as the reference did: bfloat16 parameters (1.24B / 8 shards).
    assert "precision reference" in res.stdout
    assert "params                  0.3 GiB" in res.stdout and "-> fits" in res.stdout
