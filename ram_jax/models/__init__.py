"""The models: Llama-3.x / Qwen2.5 decoders as pure functions, their KV cache, HF I/O, tokenizers.

config       frozen `ModelConfig`, presets, `from_hf_config`
transformer  the NNX decoder behind `forward(params, tokens, config, ...)`
cache        the explicit `KVCache` pytree
rope         rotary embeddings (llama3 scaling)
convert      HF safetensors import (`load_hf`) and export (`save_hf`, with the HF metadata)
tokenizer    `tokenizer.json` loading, offline BPE, vocabulary sizes, BOS / EOS ids
tokenizer_config  the HF files around it: special tokens, chat template, export
tokenizer_check   do two tokenizers give the same ids? (before P and Q are combined)
"""
