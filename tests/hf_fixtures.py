"""Tiny random-init `transformers` models and left-padded prompt batches for parity tests.

Test-only: imports torch and transformers, which library code never does.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
import transformers

# Llama-3-style rope scaling with a small original context, so that test
# positions (up to `PROMPT_LENGTHS` max) run past it into the rescaled range.
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
PROMPT_LENGTHS = (40, 23, 7, 31)

# Qwen: the tokenizer covers fewer ids than the embedding has rows (as Qwen2.5).
QWEN_VOCAB_ROWS = 320
QWEN_TOKENIZER_LENGTH = 300


def llama_config(*, tied: bool, vocab_size: int = 256) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, 2 query heads per kv head
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_scaling=dict(LLAMA3_SCALING),
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=None,
    )


def qwen_config() -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        vocab_size=QWEN_VOCAB_ROWS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=None,
    )


def random_model(hf_config, seed: int) -> torch.nn.Module:
    """A float32 eager-attention causal LM with every weight random and non-trivial.

    Norm scales and q/k/v biases are randomised too (HF inits them to 1 and 0,
    which would hide a transposed or dropped tensor).
    """
    torch.manual_seed(seed)
    hf_config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def left_padded_batch(vocab_limit: int, lengths=PROMPT_LENGTHS, seed: int = 0):
    """Random prompts of different lengths, left padded: (tokens_BxT, mask_BxT) int32/bool."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros((len(lengths), t), bool)
    for row, n in enumerate(lengths):
        tokens[row, t - n :] = rng.integers(1, vocab_limit, n)
        mask[row, t - n :] = True
    return tokens, mask


def hf_logits(model: torch.nn.Module, tokens_BxT: np.ndarray, mask_BxT: np.ndarray) -> np.ndarray:
    """HF float32 logits with positions counted over real tokens only (as ram_jax does)."""
    positions = np.maximum(np.cumsum(mask_BxT, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens_BxT.astype(np.int64)),
            attention_mask=torch.from_numpy(mask_BxT.astype(np.int64)),
            position_ids=torch.from_numpy(positions.astype(np.int64)),
        )
    return out.logits.float().numpy()


def max_real_diff(a_BxTxV, b_BxTxV, mask_BxT) -> float:
    """Largest |a - b| over real (non-padding) positions."""
    return float(np.max(np.abs(np.asarray(a_BxTxV) - np.asarray(b_BxTxV))[mask_BxT]))


def random_params(params, seed: int):
    """`params` replaced by values as large as `random_model`'s, so logits are O(1).

    (`init_params` uses std 0.02, whose near-zero logits would make any
    tolerance trivially met.)
    """
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        value = 1.0 + 0.2 * noise if "norm" in name else (0.5 if "bias" in name else 0.1) * noise
        return jax.numpy.asarray(value, x.dtype)

    return jax.tree_util.tree_map_with_path(draw, params)
