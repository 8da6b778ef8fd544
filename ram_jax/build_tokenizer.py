r"""Train a byte-level BPE tokenizer on your texts and save it as `tokenizer.json`.

  python -m ram_jax.build_tokenizer --input=base.jsonl --input=aligned.jsonl \
      --prompt_template=human_assistant --vocab_size=512 --output=tokenizer.json

Only needed for a proposal pre-trained from scratch (as in the embedded
experiment); a pre-trained HF proposal brings its own `tokenizer.json`, which
the aligner must share. Inputs are training rows (JSON / JSONL: prompt, chosen
and any rejected / sampling answers, or Anthropic-HH conversations) or plain
`.txt` files (one text per line). Train on what the models will read, split
the way training tokenizes it: each prompt inside its template and each
answer on its own (prompts and answers are tokenized separately, and answers
start without a leading space), so no merge spans the prompt/answer boundary.
Include the proposal's whole pre-training corpus and the aligned set. The
result (`ram_jax.models.tokenizer.build_tokenizer`) is deterministic:
`<|endoftext|>` = 0 is the EOS, `<|pad|>` = 1 the padding id, and every byte
is in the base alphabet, so any text round-trips. Set the models'
`vocab_size` (`--config.model.overrides.vocab_size`) to at least the printed
length.
"""

from __future__ import annotations

import os

from absl import flags

from ram_jax import cli, io
from ram_jax.data import rows as rows_lib
from ram_jax.data import sources, templates

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_INPUT = flags.DEFINE_multi_string(
    "input", None, "Training rows (.jsonl/.json) or .txt files; repeatable.", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write tokenizer.json.", flag_values=FLAGS)
_VOCAB = flags.DEFINE_integer("vocab_size", 8000, "Tokens, specials included.", flag_values=FLAGS)
_MIN_FREQ = flags.DEFINE_integer(
    "min_frequency", 2, "Merge only pairs seen at least this often.", flag_values=FLAGS
)
_TEMPLATE = flags.DEFINE_string(
    "prompt_template",
    "raw",
    "Template the prompts are trained inside (as data.prompt_template).",
    flag_values=FLAGS,
)
_FORMAT = flags.DEFINE_enum(
    "format", "auto", ["auto", "rows", "hh"], "Layout of row files.", flag_values=FLAGS
)


def training_texts(paths: list[str], template: str = "raw", fmt: str = "auto") -> list[str]:
    """Templated prompts and every answer of row files, and the lines of .txt files."""
    texts = []
    for path in paths:
        if path.endswith(".txt"):
            if not os.path.isfile(path):
                raise io.DataError(f"{path}: not found; pass a text file or a JSONL file.")
            with open(path, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
            continue
        for row in rows_lib.rows_from(sources.records(path), path, fmt):
            texts.append(templates.apply(template, row.prompt))
            texts += [row.chosen, *filter(None, [row.rejected]), *row.sampling]
    if not texts:
        raise io.DataError(f"{', '.join(paths)}: no texts to train a tokenizer on.")
    return texts


def main(argv):
    del argv
    if _VOCAB.value < 1 or _MIN_FREQ.value < 1:
        raise ValueError("--vocab_size and --min_frequency must be >= 1.")
    templates.resolve(_TEMPLATE.value)
    io.check_output_path(_OUTPUT.value, "--output")
    texts = training_texts(_INPUT.value, _TEMPLATE.value, _FORMAT.value)

    from ram_jax.models.tokenizer import build_tokenizer, tokenizer_length

    tok = build_tokenizer(texts, _VOCAB.value, min_frequency=_MIN_FREQ.value)
    io.write_atomic(_OUTPUT.value, tok.to_str())
    print(
        f"tokenizer with {tokenizer_length(tok)} tokens from {len(texts)} texts -> "
        f"{_OUTPUT.value} (models need vocab_size >= {tokenizer_length(tok)})"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output"], flag_values=FLAGS)
    cli.run(main, FLAGS)
