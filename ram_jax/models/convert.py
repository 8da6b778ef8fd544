"""Hugging Face checkpoints <-> ram_jax parameters, through safetensors only.

`load_hf` reads an HF model directory (`config.json` plus `model.safetensors`
or a sharded `model.safetensors.index.json`) without torch, one tensor at a
time, into preallocated stacked arrays, so host memory peaks at about one copy
of the parameters; with `shardings` each finished parameter goes straight to
its devices. `save_hf` writes a directory that `transformers`
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load: weights, `config.json` and `generation_config.json` with the BOS / EOS /
PAD ids, and the tokenizer files. Pickle-based `.bin` checkpoints are never
read or written.

Names: HF `model.layers.{i}.self_attn.q_proj.weight` [out, in] is layer `i` of
our `layers/attn/q_proj/kernel` [L, in, out]; the full table is `_LAYER_NAMES`
and `_GLOBAL_NAMES` below (see also the layout in transformer.py). With tied
embeddings there is no `lm_head` in params; a tied checkpoint's redundant
`lm_head.weight` is ignored.

Padded vocabularies (Qwen2.5) are kept as stored: all `vocab_size` embedding
rows are loaded and saved; the decoder and the losses cut logits to the
tokenizer length (`ram_jax.models.tokenizer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np
import safetensors
import safetensors.numpy
from absl import logging
from tokenizers import Tokenizer
from tqdm import tqdm

from ram_jax.models.config import GENERATION_CONFIG_FILE, ModelConfig, from_hf_config
from ram_jax.models.tokenizer import eos_token_ids
from ram_jax.models.tokenizer_config import TokenizerConfig, write_tokenizer_files
from ram_jax.models.transformer import Params, abstract_params

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
# Checkpoints at least this large show a progress bar unless told otherwise.
_PROGRESS_BYTES = 2**30

# Our per-layer parameter path -> HF name under `model.layers.{i}.`; kernels
# are stored transposed by HF (torch Linear weight is [out, in]).
_LAYER_NAMES = {
    ("attn", "q_proj", "kernel"): "self_attn.q_proj.weight",
    ("attn", "k_proj", "kernel"): "self_attn.k_proj.weight",
    ("attn", "v_proj", "kernel"): "self_attn.v_proj.weight",
    ("attn", "o_proj", "kernel"): "self_attn.o_proj.weight",
    ("attn", "q_proj", "bias"): "self_attn.q_proj.bias",
    ("attn", "k_proj", "bias"): "self_attn.k_proj.bias",
    ("attn", "v_proj", "bias"): "self_attn.v_proj.bias",
    ("mlp", "gate_proj", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "up_proj", "kernel"): "mlp.up_proj.weight",
    ("mlp", "down_proj", "kernel"): "mlp.down_proj.weight",
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
}
_GLOBAL_NAMES = {
    ("embed", "embedding"): "model.embed_tokens.weight",
    ("final_norm", "scale"): "model.norm.weight",
    ("lm_head", "kernel"): "lm_head.weight",
}
# Tensors some checkpoints carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _hf_names(path: tuple[str, ...], num_layers: int) -> list[str]:
    """HF tensor names making up one of our parameters (one per layer if stacked)."""
    if path[0] == "layers":
        suffix = _LAYER_NAMES[path[1:]]
        return [f"model.layers.{i}.{suffix}" for i in range(num_layers)]
    return [_GLOBAL_NAMES[path]]


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one HF tensor of our parameter `path` with (stacked) `shape`."""
    if path[0] == "layers":
        shape = shape[1:]
    return shape[::-1] if path[-1] == "kernel" else shape


def _leaves(tree) -> list[tuple[tuple[str, ...], object]]:
    return [
        (tuple(k.key for k in keypath), leaf)
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _set_leaf(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _weight_files(path: str) -> dict[str, str]:
    """Maps every tensor name to the safetensors file holding it."""
    index = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object; the index file is malformed.")
        for shard in sorted(set(weight_map.values())):
            if not os.path.exists(os.path.join(path, shard)):
                names = sorted(n for n, s in weight_map.items() if s == shard)
                raise FileNotFoundError(
                    f"{os.path.join(path, shard)}: shard listed in {index} is missing "
                    f"(it holds {len(names)} tensors, e.g. {names[0]}); copy the complete "
                    "checkpoint directory."
                )
        return {name: os.path.join(path, shard) for name, shard in weight_map.items()}
    if os.path.exists(single):
        with safetensors.safe_open(single, framework="numpy") as f:
            return dict.fromkeys(f.keys(), single)
    raise FileNotFoundError(
        f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE}; ram_jax reads safetensors checkpoints only "
        "(re-save a pickle .bin checkpoint with save_pretrained(safe_serialization=True))."
    )


def checkpoint_dtype(path: str) -> str:
    """The dtype an HF checkpoint stores its weights in ("bfloat16", "float32", "float16").

    Read from the safetensors header of the embedding (no tensor data is read),
    so it is right even when `config.json` names none or the wrong one.
    """
    files = _weight_files(path)
    name = _GLOBAL_NAMES[("embed", "embedding")]
    if name not in files:
        raise ValueError(f"{path}: no tensor {name!r}; not a Llama / Qwen2 checkpoint.")
    with safetensors.safe_open(files[name], framework="numpy") as f:
        stored = f.get_slice(name).get_dtype()
    dtypes = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
    if stored not in dtypes:
        raise ValueError(
            f"{files[name]}: weights stored as {stored}; ram_jax reads {sorted(dtypes)}."
        )
    return dtypes[stored]


def load_hf(
    path: str,
    *,
    param_dtype: str | None = None,
    dtype: str | None = None,
    shardings=None,
    progress: bool | None = None,
) -> tuple[ModelConfig, Params]:
    """Loads an HF Llama-3.x / Qwen2.x model directory into `(config, params)`.

    Args:
      path: directory with `config.json` and `model.safetensors` or
        `model.safetensors.index.json` plus its shards.
      param_dtype: storage dtype of the returned params, "float32" (default:
        master weights for training) or "bfloat16" / "float16" (e.g. a frozen
        proposal; a bf16 checkpoint is then kept bit for bit).
      dtype: compute dtype written into the config (default: `param_dtype`).
      shardings: optional pytree of `jax.sharding.Sharding` with the structure
        of params; each parameter is assembled on the host and placed shard by
        shard, so no device ever holds a whole large model.
      progress: show a tqdm bar over tensors (default: for checkpoints of
        1 GiB or more). A one-line summary is logged either way.

    Returns:
      The `ModelConfig` read from `config.json` (with the dtypes above) and a
      params pytree as from `init_params`.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory; pass an HF model directory.")
    if not os.path.exists(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(
            f"{path}: no {CONFIG_FILE}; an HF model directory needs config.json next to "
            f"{WEIGHTS_FILE} (or {INDEX_FILE})."
        )
    param_dtype = param_dtype or "float32"
    config = from_hf_config(path, param_dtype=param_dtype, dtype=dtype or param_dtype)
    files = _weight_files(path)
    leaves = _leaves(abstract_params(config))
    sharding_leaves = None
    if shardings is not None:
        sharding_leaves = jax.tree.leaves(shardings)
        if len(sharding_leaves) != len(leaves):
            raise ValueError(
                f"shardings has {len(sharding_leaves)} leaves but the params of {path} have "
                f"{len(leaves)}; pass one Sharding per parameter, in the params' structure."
            )
    start = time.perf_counter()
    total_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for _, a in leaves)
    if progress is None:
        progress = total_bytes >= _PROGRESS_BYTES
    params: Params = {}
    with contextlib.ExitStack() as stack:
        handles = {
            file: stack.enter_context(safetensors.safe_open(file, framework="numpy"))
            for file in sorted(set(files.values()))
        }
        # Every name and shape is checked from the file headers before any
        # tensor data is read, so a bad checkpoint fails in seconds.
        expected = _check_tensors(path, config, leaves, files, handles)
        bar = stack.enter_context(
            tqdm(total=len(expected), unit="tensor", desc="load_hf", disable=not progress)
        )
        for i, (leaf_path, abstract) in enumerate(leaves):
            host = np.empty(abstract.shape, abstract.dtype)
            for layer, name in enumerate(_hf_names(leaf_path, config.num_layers)):
                tensor = handles[files[name]].get_tensor(name)
                tensor = tensor.T if leaf_path[-1] == "kernel" else tensor
                if leaf_path[0] == "layers":
                    host[layer] = tensor
                else:
                    host[...] = tensor
                bar.update()
            _set_leaf(params, leaf_path, _place(host, sharding_leaves, i))
            del host
    logging.info(
        "load_hf: %s: %d tensors, %.3gB parameters (%s, %.3g GiB) in %.1fs",
        path,
        len(expected),
        sum(int(np.prod(a.shape)) for _, a in leaves) / 1e9,
        param_dtype,
        total_bytes / 2**30,
        time.perf_counter() - start,
    )
    return config, params


def _check_tensors(path, config, leaves, files, handles) -> set[str]:
    """Raises a clear error for missing, unexpected or wrongly shaped tensors."""
    expected = {}
    for leaf_path, abstract in leaves:
        want = _hf_shape(leaf_path, abstract.shape)
        expected.update(dict.fromkeys(_hf_names(leaf_path, config.num_layers), want))
    missing = sorted(set(expected) - set(files))
    if missing:
        raise ValueError(
            f"{path}: tensor {missing[0]!r} is missing from the checkpoint "
            f"({len(missing)} missing in all; config.json: {config.architecture}, "
            f"{config.num_layers} layers, tie_word_embeddings={config.tie_embeddings})."
        )
    unexpected = sorted(
        n
        for n in files
        if n not in expected
        and not n.endswith(_IGNORED_SUFFIXES)
        and not (n == "lm_head.weight" and config.tie_embeddings)
    )
    if unexpected:
        raise ValueError(
            f"{path}: {len(unexpected)} tensors do not fit the model in {CONFIG_FILE} "
            f"(e.g. {unexpected[:3]}); the checkpoint and config.json disagree."
        )
    for name, want in expected.items():
        found = tuple(handles[files[name]].get_slice(name).get_shape())
        if found != want:
            raise ValueError(
                f"{files[name]}: tensor {name!r} has shape {found}, expected {want} "
                f"from {CONFIG_FILE}."
            )
    return set(expected)


def _place(host: np.ndarray, sharding_leaves, i: int) -> jax.Array:
    if sharding_leaves is None:
        return jax.device_put(host)
    # Each device receives only its slice; also works when devices span hosts.
    return jax.make_array_from_callback(host.shape, sharding_leaves[i], lambda idx: host[idx])


def _host_array(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


class _TensorSource:
    """Yields HF tensors from params, one leaf on the host at a time (in order)."""

    def __init__(self, params: Params, config: ModelConfig, dtype: np.dtype):
        self.leaves = _leaves(params)
        self.dtype = dtype
        self.entries = [  # (HF name, leaf index, layer)
            (name, i, layer)
            for i, (leaf_path, _) in enumerate(self.leaves)
            for layer, name in enumerate(_hf_names(leaf_path, config.num_layers))
        ]
        self._cached: tuple[int, np.ndarray] | None = None

    def host_leaf(self, i: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != i:
            self._cached = None  # free the previous leaf first
            self._cached = (i, _host_array(self.leaves[i][1]))
        return self._cached[1]

    def tensor(self, k: int) -> np.ndarray:
        _, i, layer = self.entries[k]
        leaf_path = self.leaves[i][0]
        x = self.host_leaf(i)
        x = x[layer] if leaf_path[0] == "layers" else x
        x = x.T if leaf_path[-1] == "kernel" else x
        return np.ascontiguousarray(x, dtype=self.dtype)  # one pass: cast + layout


def save_hf(
    params: Params,
    config: ModelConfig,
    path: str,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer: Tokenizer | None = None,
    tokenizer_config: TokenizerConfig | None = None,
) -> None:
    """Writes an HF model directory: weights, `config.json`, `generation_config.json`, tokenizer.

    The result loads with `transformers.AutoModelForCausalLM.from_pretrained`, and
    with a `tokenizer` also `AutoTokenizer` (`write_tokenizer_files`). Both JSON
    configs carry the config's BOS / EOS / PAD ids (no EOS in the config: the
    tokenizer's), so `generate` stops where the model was trained to.
    Weights are stored in `dtype` (default: `config.param_dtype`), split into
    `model-0000k-of-0000n.safetensors` shards with an index when they exceed
    `max_shard_bytes`. Everything is written into a temporary directory next
    to `path` and renamed into place, so readers never see a partial export;
    an existing `path` is replaced. In multi-process runs call it on every
    process (sharded params are gathered); only process 0 writes.
    """
    expected = {p: a.shape for p, a in _leaves(abstract_params(config))}
    got = {p: tuple(x.shape) for p, x in _leaves(params)}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))
        raise ValueError(f"params do not match the config: differing (path, shape) {diff[:4]}")
    dtype = dtype or config.param_dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"save_hf dtype={dtype!r}: use float32, bfloat16 or float16.")
    dtype = np.dtype(jax.numpy.dtype(dtype))
    if tokenizer is not None and not config.eos_token_ids:
        config = config.replace(eos_token_ids=eos_token_ids(tokenizer, None, tokenizer_config))
    source = _TensorSource(params, config, dtype)
    if jax.process_index() != 0:
        for i in range(len(source.leaves)):  # take part in the cross-process gathers
            source.host_leaf(i)
        return
    sizes = [  # bytes of each HF tensor, in checkpoint order
        int(np.prod(_hf_shape(source.leaves[i][0], source.leaves[i][1].shape))) * dtype.itemsize
        for _, i, _ in source.entries
    ]
    shards = _plan_shards(sizes, max_shard_bytes)
    start = time.perf_counter()
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        hf_config = config.to_hf_dict()
        hf_config["torch_dtype"] = str(dtype)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2)
        with open(os.path.join(tmp, GENERATION_CONFIG_FILE), "w") as f:
            json.dump(config.special_token_ids(), f, indent=2)
        weight_map = {}
        bar = tqdm(
            total=len(sizes), unit="tensor", desc="save_hf", disable=sum(sizes) < _PROGRESS_BYTES
        )
        for s, members in enumerate(shards):
            file = WEIGHTS_FILE
            if len(shards) > 1:
                file = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
            shard = {}
            for k in members:
                shard[source.entries[k][0]] = source.tensor(k)
                bar.update()
            safetensors.numpy.save_file(shard, os.path.join(tmp, file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            del shard
        bar.close()
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
            with open(os.path.join(tmp, INDEX_FILE), "w") as f:
                json.dump(index, f, indent=2)
        if tokenizer is not None:
            write_tokenizer_files(
                tmp,
                tokenizer,
                tokenizer_config,
                eos_id=config.eos_token_ids[0],
                model_max_length=config.max_position_embeddings,
            )
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info(
        "save_hf: %s: %d tensors in %d file(s), %.3g GiB %s, in %.1fs",
        path,
        len(sizes),
        len(shards),
        sum(sizes) / 2**30,
        dtype.name,
        time.perf_counter() - start,
    )


def _plan_shards(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
    """Groups consecutive tensors into shards of at most `max_shard_bytes` (one may exceed)."""
    shards: list[list[int]] = [[]]
    shard_bytes = 0
    for k, size in enumerate(sizes):
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(k)
        shard_bytes += size
    return shards


def _replace_dir(tmp: str, path: str) -> None:
    """Moves the finished `tmp` to `path`, replacing an older export there."""
    # mkdtemp makes a private directory; give the export the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    if not os.path.exists(path):
        os.replace(tmp, path)
        return
    # A directory cannot be renamed over a non-empty one: move the old one
    # aside first, so `path` is missing only between two renames.
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
    os.replace(path, os.path.join(old, "previous"))
    os.replace(tmp, path)
    shutil.rmtree(old)
