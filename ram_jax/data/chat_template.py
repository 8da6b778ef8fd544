"""Chat templates: a checkpoint's own Jinja template, rendered the way `transformers` renders it.

Instruct checkpoints ship a chat template (`chat_template` in
`tokenizer_config.json`, or a `chat_template.jinja` file) that turns a list of
messages `[{"role": ..., "content": ...}, ...]` into the text the model was
tuned on. `render` reproduces `transformers`' `apply_chat_template(...,
tokenize=False)` without importing it: the same sandboxed Jinja environment
(`ImmutableSandboxedEnvironment`, `trim_blocks`, `lstrip_blocks`, the
`loopcontrols` extension), the same helpers (`raise_exception`,
`strftime_now`, a `tojson` that does not escape HTML, a restricted `dict` and
`namespace`) and the same variables (`messages`, `tools=None`,
`documents=None`, `add_generation_prompt`, and the special-token strings such
as `bos_token`). Keys whose value is None are dropped from messages, as
`transformers` does (its aliasing of reasoning fields and its tool / document
arguments are not reproduced: prompts here are plain conversations). The
rendered text is tokenized without special tokens: a template that wants a
BOS writes `{{ bos_token }}` itself.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox

Message = Mapping[str, object]


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` inside templates, without attribute access to the real type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's `namespace`, refusing underscore names (no route to CPython internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes, got {name!r}."
            )


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (assistant-mask markers) as a no-op."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached: a dataset renders one template many times)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template does not parse (line {e.lineno}): {e}") from None


def _plain(value):
    """JSON-like data only: the sandbox sees dicts, lists and scalars, never user objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise TypeError(f"chat messages hold JSON data only, got {type(value).__name__}: {value!r}")


def check_messages(messages, where: str = "messages") -> list[dict]:
    """Validated messages: a non-empty list of objects with a string `role`."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: a conversation is a non-empty list of messages.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(
                f"{where}: message {i} must be an object with a string 'role' "
                f"(and usually 'content'), got {m!r}."
            )
        out.append({k: _plain(v) for k, v in m.items() if v is not None})
    return out


def render(
    source: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **variables,
) -> str:
    """The text of `messages` under the chat template `source`.

    Args:
      source: the Jinja template (`tokenizer_config.json`'s `chat_template`).
      messages: `[{"role": "user", "content": "..."}, ...]`.
      add_generation_prompt: end with the header that opens an assistant turn
        (what a prompt for decoding needs).
      special_tokens: the tokenizer's special-token strings by name
        (`bos_token`, `eos_token`, ...), visible to the template as variables.
      **variables: further template variables (e.g. Llama-3.1's `date_string`).
    """
    template = compile_template(source)
    context = {**_plain(dict(special_tokens or {})), **_plain(variables)}
    try:
        return template.render(
            messages=check_messages(messages),
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **context,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"the chat template refused the conversation: {e}") from None
