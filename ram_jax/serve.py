r"""Serve one proposal with many aligners behind an OpenAI-compatible HTTP API.

Usage:
  python -m ram_jax.serve --proposal=runs/demo/proposal/export \
    --aligner=style=runs/demo/ram_sft/export --aligner=format=runs/demo/format/export \
    --template=human_assistant [--host=127.0.0.1 --port=8000 --slots=32 --max_length=128]

Routes: POST /v1/completions, POST /v1/chat/completions (both with
`stream: true`), GET /v1/models, GET /health, GET /metrics (Prometheus).
A request's `model` names the proposal (`--proposal_name`) or an aligner; the
`ram` body field (OpenAI clients: `extra_body`) chooses the mode, composes
aligners with weights and sets P's warper and the KL threshold (README:
Serving). `--slots` requests decode at once (continuous batching); up to
`--max_queue` more wait, beyond that requests get 429. SIGTERM stops taking
requests, gives in-flight ones `--drain_seconds`, cancels the rest and exits.
This module only reads flags: `ram_jax.serving.server` does the work.
"""

from __future__ import annotations

from absl import flags

from ram_jax import cli
from ram_jax.data import templates
from ram_jax.training.model import DTYPES

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_PROPOSAL = flags.DEFINE_string(
    "proposal",
    None,
    "Proposal HF directory (or training workdir).",
    required=True,
    flag_values=FLAGS,
)
_PROPOSAL_NAME = flags.DEFINE_string(
    "proposal_name", "proposal", "The proposal's model name in requests.", flag_values=FLAGS
)
_ALIGNER = flags.DEFINE_multi_string(
    "aligner", [], "NAME=DIR: an aligner and its model name (repeatable).", flag_values=FLAGS
)
_TEMPLATE = flags.DEFINE_string(
    "template",
    "chat",
    "How chat requests are rendered: 'chat' (the checkpoint's chat template) or a template "
    f"name / string ({sorted(templates.TEMPLATES)}; one user message).",
    flag_values=FLAGS,
)
_MODES = flags.DEFINE_list(
    "modes", None, "Modes served (default: every registered mode).", flag_values=FLAGS
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.", flag_values=FLAGS)
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.", flag_values=FLAGS)
_SLOTS = flags.DEFINE_integer("slots", 32, "Requests decoded at once.", flag_values=FLAGS)
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length",
    None,
    "Cache slots per request (default: the context, <= 2048).",
    flag_values=FLAGS,
)
_MAX_PROMPT = flags.DEFINE_integer(
    "max_prompt_length",
    None,
    "Longest prompt in tokens (default: --max_length); one prefill compiled per power of two.",
    flag_values=FLAGS,
)
_MAX_TOKENS = flags.DEFINE_integer(
    "max_tokens", 256, "New tokens when a request gives no max_tokens.", flag_values=FLAGS
)
_CHUNK = flags.DEFINE_integer(
    "chunk", 8, "Decode steps per device call (new requests join between).", flag_values=FLAGS
)
_MAX_QUEUE = flags.DEFINE_integer(
    "max_queue", 256, "Requests that may wait for a slot (more: 429).", flag_values=FLAGS
)
_DRAIN = flags.DEFINE_float(
    "drain_seconds",
    30.0,
    "On SIGTERM, time in-flight requests get to finish.",
    flag_values=FLAGS,
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "auto", list(DTYPES), "Parameter dtype (auto: the checkpoint's).", flag_values=FLAGS
)
_ASSUME_SAME = flags.DEFINE_bool(
    "assume_same_tokenizer",
    False,
    "Serve aligners whose directory holds no tokenizer.json.",
    flag_values=FLAGS,
)


def aligners_from_flags() -> dict[str, str]:
    """`NAME=DIR` flags as a dict, checked before loading."""
    out = {}
    for value in _ALIGNER.value:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--aligner={value!r}: write NAME=DIR (e.g. style=runs/ram/export).")
        out[name] = path
    return out


def main(argv):
    del argv
    from ram_jax.serving import server

    for flag in (_SLOTS, _CHUNK, _MAX_TOKENS):
        if flag.value < 1:
            raise ValueError(f"--{flag.name}={flag.value} must be >= 1.")
    aligners = aligners_from_flags()
    modes = tuple(_MODES.value) if _MODES.value else server.ALL_MODES
    server.check_names(_PROPOSAL_NAME.value, aligners, modes)
    built = server.build(
        proposal=_PROPOSAL.value,
        aligners=aligners,
        proposal_name=_PROPOSAL_NAME.value,
        template=_TEMPLATE.value,
        modes=modes,
        slots=_SLOTS.value,
        max_length=_MAX_LENGTH.value,
        max_prompt_length=_MAX_PROMPT.value,
        chunk=_CHUNK.value,
        max_queue=_MAX_QUEUE.value,
        max_tokens=_MAX_TOKENS.value,
        dtype=_DTYPE.value,
        assume_same_tokenizer=_ASSUME_SAME.value,
    )
    server.serve(built, host=_HOST.value, port=_PORT.value, drain_seconds=_DRAIN.value)


if __name__ == "__main__":
    cli.run(main, FLAGS)
