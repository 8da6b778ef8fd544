"""The train step: sharded == single device, accumulation == large batch, optimizer parity."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ram_jax import data
from ram_jax import sharding as shd
from ram_jax.models.config import get_preset
from ram_jax.models.tokenizer import load_tokenizer
from ram_jax.models.transformer import abstract_params
from ram_jax.training import optim
from ram_jax.training import step as train
from ram_jax.training.losses import Objective
from ram_jax.training.step import model_sequence_logprobs

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIG = get_preset("tiny-llama", vocab_size=384, num_layers=1)
OBJ = Objective("ram_sft", alpha=0.1)


@pytest.fixture(scope="module")
def examples():
    tok = load_tokenizer(os.path.join(FIXTURES, "tokenizer.json"))
    load = lambda name: data.tokenize_rows(
        data.read_rows(os.path.join(FIXTURES, name), need=("sampling",)),
        tok,
        OBJ,
        eos_id=0,
        max_length=48,
        max_prompt_length=24,
    )
    return load("smoke_train.jsonl"), load("smoke_eval.jsonl")


def _setup(mesh, objective=OBJ, lr=1e-2, name="rmsprop", config=CONFIG, steps=10, warmup=0.1):
    schedule = optim.make_schedule("warmup_constant", lr, steps, warmup_fraction=warmup)
    if name == "sgd":  # exact comparisons: rmsprop's first steps amplify rounding to ~lr
        opt = optax.chain(optax.clip_by_global_norm(10.0), optax.sgd(schedule))
    else:
        opt = optim.make_optimizer(name, schedule, clip_norm=10.0)
    shardings = train.state_shardings(train.abstract_state(config, opt), mesh)
    state = train.init_state(config, opt, jax.random.key(0), shardings)
    step = train.make_train_step(config, objective, opt, schedule, shardings, mesh, vocab_limit=384)
    return state, step


def _run(mesh, batches):
    state, step = _setup(mesh, name="sgd", lr=0.5, steps=1)
    for b in batches:
        state, metrics = step(state, train.put_batch(b, mesh), None)
    return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def three_batches(examples):
    it = data.DataIterator(_batches(examples[0]))
    return [next(it) for _ in range(3)]


@pytest.fixture(scope="module")
def single_device_run(three_batches):
    state, metrics = _run(shd.make_mesh(devices=jax.devices()[:1]), three_batches)
    return jax.device_get(state.params), metrics


def _batches(examples, batch_size=8, grad_accum=1):
    return data.Batches(
        examples, batch_size=batch_size, grad_accum=grad_accum, seed=0, bucket_min=16, max_length=48
    )


def test_partition_table():
    mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
    spec = lambda path, shape: shd.spec_for(path, shape, mesh)
    assert spec("layers/attn/q_proj/kernel", (16, 64, 64)) == P(None, "fsdp", "tensor")
    assert spec("layers/mlp/down_proj/kernel", (16, 128, 64)) == P(None, "tensor", "fsdp")
    assert spec("embed/embedding", (384, 64)) == P("tensor", "fsdp")
    assert spec("layers/attn_norm/scale", (16, 64)) == P(None, None)
    # A dimension the axis does not divide is replicated instead of failing.
    assert spec("layers/attn/k_proj/kernel", (2, 64, 5)) == P(None, "fsdp", None)
    # Optimizer-state leaves shard like the parameter they mirror; L is never split.
    opt_state = jax.eval_shape(optax.adam(1e-3).init, abstract_params(CONFIG))
    mu = shd.state_shardings(opt_state, mesh)[0].mu
    assert mu["layers"]["mlp"]["up_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
    with pytest.raises(ValueError, match="needs 3 devices"):
        shd.make_mesh(data=3)
    assert dict(shd.make_mesh(fsdp=4).shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_sharded_step_equals_single_device(three_batches, single_device_run):
    mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
    state, metrics = _run(mesh, three_batches)
    kernel = state.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert len(kernel.addressable_shards) == 8
    p1, m1 = single_device_run
    assert metrics["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    p8 = jax.device_get(state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p8)


def test_gradient_accumulation_equals_large_batch(examples, three_batches, single_device_run):
    # The same rows as 2 microbatches of 4, plus a padding row (weight 0) in each.
    def split(big):
        small = {k: v.reshape(2, v.shape[1] // 2, *v.shape[2:]) for k, v in big.items()}
        return {k: np.concatenate([v, np.zeros_like(v[:, :1])], axis=1) for k, v in small.items()}

    np.testing.assert_array_equal(
        _batches(examples[0], 8, 2).batch(0, 0)["tokens"], split(three_batches[0])["tokens"][:, :4]
    )
    state, metrics = _run(shd.make_mesh(devices=jax.devices()[:1]), map(split, three_batches))
    p_big, m_big = single_device_run
    assert metrics["examples"] == m_big["examples"] == 8
    for key in ("loss", "grad_norm", "chosen_logp", "sample_logp"):
        assert metrics[key] == pytest.approx(m_big[key], rel=1e-5)
    p_acc = jax.device_get(state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_big, p_acc)


def test_rmsprop_matches_torch_defaults_by_hand():
    # torch.optim.RMSprop(lr) defaults: v = 0.99 v + 0.01 g^2; w -= lr g / (sqrt(v) + 1e-8).
    w0 = np.random.default_rng(0).normal(size=(5,))
    grads = [np.random.default_rng(i + 1).normal(size=(5,)) for i in range(4)]
    want, v = w0.copy(), np.zeros(5)
    opt = optim.make_optimizer("rmsprop", optax.constant_schedule(1e-2))
    w = jnp.asarray(w0, jnp.float32)
    s = opt.init(w)
    for g in grads:
        v = 0.99 * v + 0.01 * g * g
        want = want - 1e-2 * g / (np.sqrt(v) + 1e-8)
        u, s = opt.update(jnp.asarray(g, jnp.float32), s, w)
        w = optax.apply_updates(w, u)
    np.testing.assert_allclose(np.asarray(w), want, rtol=1e-5, atol=1e-6)


def test_schedules():
    s = optim.make_schedule("warmup_constant", 2e-7, 100, warmup_fraction=0.1)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(1e-7)
    assert float(s(10)) == pytest.approx(2e-7) and float(s(99)) == pytest.approx(2e-7)
    c = optim.make_schedule("cosine", 1.0, 100, warmup_fraction=0.1, min_lr_fraction=0.1)
    assert float(c(10)) == pytest.approx(1.0) and float(c(100)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        optim.make_schedule("linear", 1.0, 10)


def test_reference_rmsprop_is_torch_rmsprop_on_bfloat16_bit_for_bit():
    """The reference's pure-bf16 RMSprop: parameters and state equal torch's, bit for bit."""
    import torch

    rng = np.random.default_rng(0)
    w0 = (0.02 * rng.standard_normal((64, 48))).astype(np.float32)
    grads = [(1e-3 * rng.standard_normal(w0.shape)).astype(np.float32) for _ in range(3)]
    bits = lambda t: t.detach().view(torch.int16).numpy()
    for lr in (2e-7, 1e-3):
        w_t = torch.nn.Parameter(torch.from_numpy(w0).to(torch.bfloat16))
        opt_t = torch.optim.RMSprop([w_t], lr=lr)
        opt = optim.make_optimizer("rmsprop", optax.constant_schedule(lr), precision="reference")
        update = jax.jit(opt.update)
        w = jnp.asarray(w0, jnp.bfloat16)
        state = opt.init(w)
        for g in grads:
            w_t.grad = torch.from_numpy(g).to(torch.bfloat16)
            opt_t.step()
            u, state = update(jnp.asarray(g), state, w)  # float32 grads, rounded inside
            w = optax.apply_updates(w, u)
            assert w.dtype == state.square_avg.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(w).view(np.int16), bits(w_t), f"lr {lr}")
            avg = opt_t.state[w_t]["square_avg"]
            np.testing.assert_array_equal(np.asarray(state.square_avg).view(np.int16), bits(avg))
        changed = np.mean(np.asarray(w) != np.asarray(jnp.asarray(w0, jnp.bfloat16)))
        assert (changed < 0.2) if lr < 1e-5 else (changed > 0.9), (lr, changed)
    with pytest.raises(ValueError, match="precision='reference' reproduces"):
        optim.make_optimizer("adamw", optax.constant_schedule(1.0), precision="reference")


def _changed_fraction(before, after) -> float:
    """Of the layers' weights (every one gets a gradient, unlike unseen embedding rows)."""
    pairs = zip(jax.tree.leaves(before["layers"]), jax.tree.leaves(after["layers"]), strict=True)
    return float(np.mean(np.concatenate([(np.asarray(a) != b).ravel() for a, b in pairs])))


@pytest.mark.parametrize("precision", ["float32", "reference"])
def test_one_step_at_lr_2e7_under_each_precision(examples, precision):
    """float32 master weights take (nearly) every update; the reference's bf16 parameters
    and RMSprop state keep their dtype and round most of them away."""
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    config = CONFIG.replace(param_dtype=optim.param_dtype_for(precision), dtype="bfloat16")
    schedule = optax.constant_schedule(2e-7)
    opt = optim.make_optimizer("rmsprop", schedule, clip_norm=10.0, precision=precision)
    abstract = train.abstract_state(config, opt)
    shardings = train.state_shardings(abstract, mesh)
    state = train.init_state(config, opt, jax.random.key(0), shardings)
    step = train.make_train_step(config, OBJ, opt, schedule, shardings, mesh, vocab_limit=384)
    before = jax.device_get(state.params)
    batch = _batches(examples[0]).batch(0, 0)
    state, metrics = step(state, train.put_batch(batch, mesh), None)
    assert float(metrics["lr"]) == pytest.approx(2e-7)
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))}
    changed = _changed_fraction(before, jax.device_get(state.params))
    if precision == "float32":
        assert dtypes == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
        assert changed > 0.95, changed
        return
    assert dtypes == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int32)}
    assert 0 < changed < 0.1, changed
    # bf16 parameters with an optimizer that would widen its state are refused while tracing.
    plain = optim.make_optimizer("rmsprop", schedule)
    abstract = train.abstract_state(config, plain)
    widening = train.make_train_step(
        config, OBJ, plain, schedule, train.state_shardings(abstract, mesh), mesh, vocab_limit=384
    )
    shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    with pytest.raises(ValueError, match="turns state .* from bfloat16 into float32"):
        jax.eval_shape(widening, abstract, shapes(batch), None)
    with pytest.raises(ValueError, match="float32 master weights or bfloat16"):
        train.abstract_state(CONFIG.replace(param_dtype="float16"), optax.sgd(1.0))


def test_ram_sft_lowers_proposal_sample_logprob_relative_to_sft(examples):
    train_ex, eval_ex = examples
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    eval_batch = next(data.eval_batches(eval_ex, 32, bucket_min=16, max_length=48))

    @jax.jit
    def mean_logp(params):
        b = {k: v[0] for k, v in eval_batch.items()}
        lp = model_sequence_logprobs(
            params,
            CONFIG,
            b["tokens"].reshape(-1, b["tokens"].shape[-1]),
            b["mask"].reshape(-1, b["mask"].shape[-1]),
            b["targets"].reshape(-1, b["targets"].shape[-1]),
            vocab_limit=384,
        ).reshape(b["tokens"].shape[:2])
        return lp.mean(axis=0)  # [chosen, sample]

    out = {}
    for objective in (Objective("sft"), Objective("ram_sft", alpha=1.0)):
        state, step = _setup(mesh, objective, lr=3e-3, name="adamw", steps=12)
        it = data.DataIterator(_batches(train_ex, 16))
        for _ in range(12):
            batch = next(it)
            if objective.name == "sft":  # sft reads only the target sequence
                batch = {k: (v[:, :, :1] if v.ndim == 4 else v) for k, v in batch.items()}
            state, _ = step(state, train.put_batch(batch, mesh), None)
        out[objective.name] = np.asarray(mean_logp(state.params))
    chosen_sft, sample_sft = out["sft"]
    chosen_ram, sample_ram = out["ram_sft"]
    assert sample_ram < sample_sft - 5.0, out  # samples pushed down by the alpha term
    assert chosen_ram > chosen_sft - 5.0, out  # while the target is still learned
