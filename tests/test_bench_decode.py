"""The paper-size decode benchmark's code path and its byte accounting, on tiny shapes."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from experiments import decode_pair
from ram_jax.models.config import get_preset
from ram_jax.models.transformer import abstract_params, count_params


def test_pair_configs_keep_real_shapes_and_refuse_a_bad_pair():
    p, q = decode_pair.pair_configs("llama-3.1-8b+llama-3.2-1b", layers=2)
    assert (p.num_layers, q.num_layers) == (2, 2)
    assert (p.hidden_size, p.intermediate_size, q.hidden_size) == (4096, 14336, 2048)
    assert p.jnp_dtype == jnp.bfloat16 and q.jnp_param_dtype == jnp.bfloat16
    assert decode_pair.pair_configs("qwen2.5-14b+qwen2.5-3b")[0].num_layers == 48
    with pytest.raises(ValueError, match="PROPOSAL\\+ALIGNER"):
        decode_pair.pair_configs("llama-3.1-8b")


def test_cache_bytes_by_hand():
    config = get_preset("llama-3.1-8b", dtype="bfloat16")
    # 32 layers x (K + V) x 8 KV heads x 128 x 2 bytes = 128 KiB per token.
    assert decode_pair.cache_bytes(config, batch=2, context=1056) == 2 * 1056 * 131072


def test_targets_compare_the_right_ratios():
    rec = lambda step, ttft=1.0, frac=0.8: {
        "step_s": step,
        "ttft_s": ttft,
        "roofline_fraction": frac,
    }
    records = {
        "par_kl_b1": rec(4.0, ttft=1.1),
        "proposal_b1": rec(3.5, frac=0.7),
        "par_kl_b64": rec(7.0),
        "int8_par_kl_b1": rec(2.4),
        "int8_proposal_b1": rec(2.0),
    }
    ratios, met = decode_pair.targets(records)
    assert ratios["b64_step_vs_b1"] == 1.75 and ratios["int8_step_vs_bf16_b1"] == 0.6
    assert ratios["ttft_par_kl_vs_proposal_b1"] == pytest.approx(1.1)
    assert met == {
        "par_kl_b1_roofline_fraction": True,
        "proposal_b1_roofline_fraction": False,
        "b64_step_vs_b1": False,
        "ttft_par_kl_vs_proposal_b1": True,
        "int8_step_vs_bf16_b1": True,
    }


def test_run_reports_every_configuration_with_its_bytes():
    """The whole benchmark on tiny bf16 models: every record, and the roofline's bytes
    are the stored weights (int8 for the int8 proposal) plus the caches."""
    p = get_preset("tiny-llama", dtype="bfloat16", param_dtype="bfloat16", num_layers=1)
    q = p.replace(hidden_size=32, intermediate_size=64)
    lines = []
    # par_kl's decoder is tested elsewhere; here its compile would cost most of the time.
    summary = decode_pair.run(
        "tiny",
        batches=(2,),
        prompt=8,
        new=3,
        int8=True,
        repeats=1,
        modes=("proposal",),
        configs=(p, q),
        emit=lines.append,
    )
    records = {r["config"]: r for r in map(json.loads, lines[1:])}
    assert set(records) == {"proposal_b2", "int8_proposal_b1"}
    p_bytes, q_bytes = (2 * count_params(abstract_params(c)) for c in (p, q))
    assert summary["proposal_weight_bytes"] == p_bytes
    assert summary["aligner_weight_bytes"] == q_bytes
    # int8: one byte per weight, float32 scales per output channel, bf16 norms.
    assert p_bytes / 2 < summary["int8_proposal_weight_bytes"] < 0.7 * p_bytes
    b2 = records["proposal_b2"]
    caches = decode_pair.cache_bytes(p, 2, 8 + 1.5)
    # The untied input embedding is looked up, not read whole: its bytes are left out.
    read = p_bytes - 2 * p.vocab_size * p.hidden_size
    assert b2["weight_bytes"] == read and b2["cache_read_bytes"] == caches
    assert b2["roofline_step_s"] == pytest.approx(
        (read + caches) / summary["bandwidth_bytes_per_s"]
    )
    int8_embed = p.vocab_size * (p.hidden_size + 4)  # int8 rows + a float32 scale each
    assert (
        records["int8_proposal_b1"]["weight_bytes"]
        == summary["int8_proposal_weight_bytes"] - int8_embed
    )
    assert summary["targets"] == {}  # no batch-1 bf16 record: no target applies
