"""HF checkpoint import/export: logits parity with `transformers`, round trips, bad input."""

import copy
import json
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from jax.sharding import NamedSharding, PartitionSpec

from ram_jax.models.config import get_preset
from ram_jax.models.convert import checkpoint_dtype, load_hf, save_hf
from ram_jax.models.tokenizer import build_tokenizer, load_tokenizer, slice_vocab, tokenizer_length
from ram_jax.models.tokenizer_config import load_tokenizer_config
from ram_jax.models.transformer import forward, init_params
from ram_jax.training.model import export_config
from tests import hf_fixtures as hf

PARITY_ATOL = 1e-4
_forward = jax.jit(forward, static_argnums=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """HF models saved with `save_pretrained`: name -> (torch model, directory)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for seed, (name, config) in enumerate(
        [
            ("llama-untied", hf.llama_config(tied=False)),
            ("llama-tied", hf.llama_config(tied=True)),
            ("qwen-padded-vocab", hf.qwen_config()),
        ]
    ):
        model = hf.random_model(config, seed)
        model.save_pretrained(root / name)
        out[name] = (model, str(root / name))
    return out


@pytest.fixture(scope="module")
def batch():
    return hf.left_padded_batch(256)  # ids valid in every test vocabulary


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {name: load_hf(path) for name, (_, path) in checkpoints.items()}


def _tensors(path):
    return safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))


def _copy_with(src, dst, tensors=None, config_changes=None):
    """A copy of checkpoint `src` with its tensors and/or config.json replaced."""
    shutil.copytree(src, dst)
    if tensors is not None:
        safetensors.numpy.save_file(
            tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"}
        )
    if config_changes is not None:
        with open(os.path.join(dst, "config.json")) as f:
            config = json.load(f)
        config.update(config_changes)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(config, f)
    return str(dst)


@pytest.mark.parametrize("name", ["llama-untied", "llama-tied", "qwen-padded-vocab"])
def test_logits_match_transformers(name, checkpoints, loaded, batch):
    model, _ = checkpoints[name]
    config, params = loaded[name]
    tokens, mask = batch
    ours, _ = _forward(params, tokens, config, mask_BxT=mask)
    ref = hf.hf_logits(model, tokens, mask)
    assert ours.shape == ref.shape == (*tokens.shape, config.vocab_size)
    err = hf.max_real_diff(ours, ref, mask)
    print(f"{name}: max |logits - HF logits| = {err:.2e}")
    assert err <= PARITY_ATOL
    # The variants really exercise what they claim to.
    assert config.tie_embeddings == (name != "llama-untied")
    assert ("lm_head" in params) == (name == "llama-untied")
    if name.startswith("llama"):
        assert config.num_kv_heads < config.num_heads
        assert max(hf.PROMPT_LENGTHS) > config.rope_scaling.original_max_position_embeddings
    else:
        assert config.qkv_bias and np.all(np.asarray(params["layers"]["attn"]["q_proj"]["bias"]))
        assert config.vocab_size > hf.QWEN_TOKENIZER_LENGTH
        sliced = slice_vocab(ours, hf.QWEN_TOKENIZER_LENGTH)
        np.testing.assert_array_equal(sliced, np.asarray(ours)[..., : hf.QWEN_TOKENIZER_LENGTH])


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen"])
@pytest.mark.parametrize("max_shard_bytes", [2**40, 40_000], ids=["single", "sharded"])
def test_export_round_trip(preset, max_shard_bytes, tmp_path, batch):
    config = get_preset(preset)
    params = hf.random_params(init_params(config, jax.random.key(3)), seed=3)
    path = str(tmp_path / "export")
    save_hf(params, config, path, max_shard_bytes=max_shard_bytes)
    files = sorted(os.listdir(path))
    if max_shard_bytes < 2**40:
        assert "model.safetensors.index.json" in files and len(files) > 3
    else:
        assert files == ["config.json", "generation_config.json", "model.safetensors"]
        assert ("lm_head.weight" in _tensors(path)) == (not config.tie_embeddings)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # temp dir renamed away

    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    tokens, mask = batch
    ours, _ = _forward(params, tokens, config, mask_BxT=mask)
    err = hf.max_real_diff(ours, hf.hf_logits(model.eval(), tokens, mask), mask)
    print(f"{preset} export: max |logits - HF logits| = {err:.2e}")
    assert err <= PARITY_ATOL

    config2, params2 = load_hf(path)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_export_bfloat16_replaces_previous_export(loaded, tmp_path):
    config, params = loaded["llama-tied"]
    path = str(tmp_path / "export")
    save_hf(params, config, path, max_shard_bytes=40_000)
    assert len(os.listdir(path)) > 3
    assert checkpoint_dtype(path) == "float32"
    save_hf(params, config, path, dtype="bfloat16")
    assert checkpoint_dtype(path) == "bfloat16"
    files = ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(os.listdir(path)) == files  # shards gone
    assert sorted(os.listdir(tmp_path)) == ["export"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0o700
    config16, params16 = load_hf(path, param_dtype="bfloat16")
    assert config16 == config.replace(param_dtype="bfloat16", dtype="bfloat16")
    rounded = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), params)
    jax.tree.map(np.testing.assert_array_equal, params16, rounded)
    with pytest.raises(ValueError, match="save_hf dtype='int8'"):
        save_hf(params, config, path, dtype="int8")
    with pytest.raises(ValueError, match="params do not match the config"):
        save_hf(params, config.replace(num_layers=3), path)


def test_sharded_hf_checkpoint_loads(checkpoints, loaded, tmp_path):
    model, _ = checkpoints["llama-untied"]
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) > 1
    config, params = load_hf(str(tmp_path))
    assert config == loaded["llama-untied"][0]
    jax.tree.map(np.testing.assert_array_equal, params, loaded["llama-untied"][1])


def test_bfloat16_checkpoint_kept_bit_exact(checkpoints, tmp_path):
    model, _ = checkpoints["qwen-padded-vocab"]
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path)
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"  # read from the safetensors header
    config, params = load_hf(str(tmp_path), param_dtype="bfloat16")
    assert config.param_dtype == config.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jax.numpy.dtype(jax.numpy.bfloat16)}
    stored = _tensors(str(tmp_path))
    q_bias = stored["model.layers.1.self_attn.q_proj.bias"]
    assert q_bias.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(params["layers"]["attn"]["q_proj"]["bias"][1], q_bias)
    np.testing.assert_array_equal(
        params["layers"]["mlp"]["down_proj"]["kernel"][0],
        stored["model.layers.0.mlp.down_proj.weight"].T,
    )
    # The float32 default widens exactly.
    _, params32 = load_hf(str(tmp_path))
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, np.asarray(b, np.float32)), params32, params
    )


def test_shardings_place_each_tensor(checkpoints, loaded, batch, tmp_path):
    _, path = checkpoints["qwen-padded-vocab"]
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

    def spec(x):  # split the last axis 4 ways and the first 2 ways wherever they divide
        axes = [None] * x.ndim
        if x.shape[-1] % 4 == 0:
            axes[-1] = "model"
        if x.ndim >= 2 and x.shape[0] % 2 == 0:
            axes[0] = "data"
        return NamedSharding(mesh, PartitionSpec(*axes))

    config, reference = loaded["qwen-padded-vocab"]
    shardings = jax.tree.map(spec, reference)
    _, params = load_hf(path, shardings=shardings)
    for x, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True):
        assert x.sharding == want
    embed = params["embed"]["embedding"]
    assert {s.data.shape for s in embed.addressable_shards} == {(160, 16)}  # 1/8 per device
    jax.tree.map(np.testing.assert_array_equal, params, reference)
    tokens, mask = batch
    sharded, _ = _forward(params, tokens, config, mask_BxT=mask)
    unsharded, _ = _forward(reference, tokens, config, mask_BxT=mask)
    assert hf.max_real_diff(sharded, unsharded, mask) <= 1e-5
    save_hf(params, config, str(tmp_path / "export"))  # sharded params export too
    jax.tree.map(np.testing.assert_array_equal, load_hf(str(tmp_path / "export"))[1], reference)


def test_tied_checkpoint_with_redundant_lm_head_loads(checkpoints, loaded, tmp_path):
    _, path = checkpoints["llama-tied"]
    tensors = _tensors(path)
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = np.zeros_like(tensors["model.embed_tokens.weight"])
    _, params = load_hf(_copy_with(path, tmp_path / "c", tensors))
    assert "lm_head" not in params
    jax.tree.map(np.testing.assert_array_equal, params, loaded["llama-tied"][1])


def test_unsupported_architecture(checkpoints, tmp_path):
    _, path = checkpoints["llama-untied"]
    mistral = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}
    bad = _copy_with(path, tmp_path / "c", config_changes=mistral)
    with pytest.raises(ValueError, match=r"config\.json: unsupported architecture.*Mistral"):
        load_hf(bad)
    # A supported model_type does not make another head (a reward model) loadable.
    reward = {"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}
    bad = _copy_with(path, tmp_path / "r", config_changes=reward)
    with pytest.raises(ValueError, match=r"unsupported architecture.*SequenceClassification"):
        load_hf(bad)


def test_missing_shard(checkpoints, tmp_path):
    model, _ = checkpoints["llama-untied"]
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[1]
    os.remove(tmp_path / shard)
    with pytest.raises(FileNotFoundError, match=rf"{shard}: shard listed in .*index\.json"):
        load_hf(str(tmp_path))


def test_wrong_shape_tensor(checkpoints, tmp_path):
    _, path = checkpoints["llama-untied"]
    tensors = _tensors(path)
    name = "model.layers.1.self_attn.k_proj.weight"
    assert tensors[name].shape == (32, 64)
    tensors[name] = np.zeros((64, 64), np.float32)
    bad = _copy_with(path, tmp_path / "c", tensors)
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' "
        r"has shape \(64, 64\), expected \(32, 64\)",
    ):
        load_hf(bad)


@pytest.mark.parametrize("missing", ["model.layers.0.mlp.up_proj.weight", "lm_head.weight"])
def test_missing_tensor(missing, checkpoints, tmp_path):
    _, path = checkpoints["llama-untied"]
    tensors = _tensors(path)
    del tensors[missing]
    with pytest.raises(ValueError, match=rf"tensor '{missing}' is missing"):
        load_hf(_copy_with(path, tmp_path / "c", tensors))


def test_unexpected_tensor(checkpoints, tmp_path):
    _, path = checkpoints["llama-untied"]
    tensors = _tensors(path)
    tensors["model.layers.0.mlp.up_proj.bias"] = np.zeros((128,), np.float32)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.bias"):
        load_hf(_copy_with(path, tmp_path / "c", tensors))


def test_missing_config_or_weights(checkpoints, tmp_path):
    _, path = checkpoints["llama-untied"]
    no_config = _copy_with(path, tmp_path / "a")
    os.remove(os.path.join(no_config, "config.json"))
    with pytest.raises(FileNotFoundError, match=rf"{no_config}: no config\.json"):
        load_hf(no_config)
    no_weights = _copy_with(path, tmp_path / "b")
    os.remove(os.path.join(no_weights, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=rf"{no_weights}: no model\.safetensors"):
        load_hf(no_weights)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf(str(tmp_path / "nowhere"))


TOKENIZERS = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")


def test_export_carries_what_transformers_needs(tmp_path):
    """Special ids in config.json and generation_config.json; tokenizer files copied from an
    HF directory, or written for a tokenizer built in memory; AutoTokenizer reports them."""
    source = os.path.join(TOKENIZERS, "llama3-instruct")
    tok = load_tokenizer(source)
    tc = load_tokenizer_config(source, tok)
    eot, eot_name = tok.token_to_id("<|eot_id|>"), "<|eot_id|>"
    config = get_preset("tiny-llama", vocab_size=tokenizer_length(tok))
    trained = export_config(config, tok, tc, eot, own_ids=False)
    assert trained.eos_token_ids == (eot,) and trained.pad_token_id == eot
    assert trained.bos_token_id == tok.token_to_id("<|begin_of_text|>")
    params = init_params(config, jax.random.key(0))
    path = str(tmp_path / "llama")
    save_hf(params, trained, path, tokenizer=tok, tokenizer_config=tc)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        with open(os.path.join(source, name)) as a, open(os.path.join(path, name)) as b:
            assert a.read() == b.read(), name  # copied verbatim
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == (eot_name, eot)
    assert hf_tok.chat_template == tc.chat_template
    generation = transformers.GenerationConfig.from_pretrained(path)
    hf_config = transformers.AutoConfig.from_pretrained(path)
    for c in (generation, hf_config):
        assert (c.eos_token_id, c.pad_token_id) == (eot, eot)
        assert c.bos_token_id == trained.bos_token_id
    assert load_hf(path)[0] == trained  # the ids survive a reload

    # A tokenizer built in memory: its files are written, with the trained EOS and a PAD.
    small = build_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, 300)
    config = get_preset("tiny-qwen", vocab_size=300)
    save_hf(
        init_params(config, jax.random.key(0)), config, str(tmp_path / "small"), tokenizer=small
    )
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "small"))
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1)  # <|endoftext|>, <|pad|>
    assert hf_tok("the fox").input_ids == small.encode("the fox").ids
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "small")).eos_token_id == 0
