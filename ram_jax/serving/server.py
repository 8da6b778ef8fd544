"""Builds and runs a server: models from directories, the engine, the app, uvicorn.

`build(...)` checks the cheap things first (names, template, the aligners'
tokenizers against the proposal's), loads every model once in the decoder's
layer layout and returns the pieces; `serve(...)` compiles everything
(`Engine.start`), then runs uvicorn until SIGTERM / SIGINT: the listening
socket closes, in-flight requests get up to `drain_seconds` to finish, the
rest are cancelled (their clients get an error), and the process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import signal
import time
from collections.abc import Mapping, Sequence

from ram_jax.data import templates
from ram_jax.decoding import files
from ram_jax.decoding.dispatch import PerRow
from ram_jax.decoding.modes import MODES, get_mode
from ram_jax.models import tokenizer as T
from ram_jax.serving.engine import Engine
from ram_jax.serving.requests import Resolver

# Every registered mode (with its default fields), the default `modes` of a server.
ALL_MODES = tuple(sorted(MODES))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass
class Server:
    engine: Engine
    resolver: Resolver

    def app(self):
        from ram_jax.serving.app import create_app

        return create_app(self.engine, self.resolver)


def check_names(proposal_name: str, aligners: Mapping[str, str], modes: Sequence[str]) -> None:
    """Rejects bad model names and unknown modes (cheap: before loading anything)."""
    names = [proposal_name, *aligners]
    for name in names:
        if not _NAME.match(name):
            raise ValueError(
                f"model name {name!r}: use letters, digits, '.', '_' or '-' (--aligner=NAME=DIR)."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"model names {names} repeat; give each aligner its own NAME.")
    for mode in modes:
        get_mode(mode)
    if not modes:
        raise ValueError("no modes to serve; pass at least one (e.g. --modes=product).")


def _runnable(modes: Sequence[str], num_aligners: int, explicit: bool) -> tuple[str, ...]:
    """The modes these models can run (every default one; an explicit one or an error)."""
    needs = {m: get_mode(m).min_aligners for m in modes}
    missing = [m for m, n in needs.items() if n > num_aligners]
    if missing and explicit:
        raise ValueError(
            f"--modes {missing} need an aligner; pass --aligner=NAME=DIR or leave them out."
        )
    return tuple(m for m in modes if m not in missing)


def build(
    *,
    proposal: str,
    aligners: Mapping[str, str],
    proposal_name: str = "proposal",
    template: str = "chat",
    modes: Sequence[str] = ALL_MODES,
    slots: int = 32,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    chunk: int = 8,
    max_queue: int = 256,
    max_tokens: int = 256,
    dtype: str = "auto",
    assume_same_tokenizer: bool = False,
) -> Server:
    """Loads the models and makes the engine and the request resolver (not yet started).

    `aligners`: name -> HF directory or training workdir. `template`: how chat
    requests are rendered ('chat': the checkpoint's own chat template; or a
    `ram_jax.data.templates` name / string, which takes one user message).
    `max_length`: cache slots per request (prompt bucket + new tokens; default
    the models' context, at most 2048); `max_prompt_length`: the longest prompt
    (default `max_length`); one prefill program is compiled per power of two up to it.
    """
    check_names(proposal_name, aligners, modes)
    modes = _runnable(modes, len(aligners), explicit=tuple(modes) != ALL_MODES)
    templates.resolve(template)
    tok, tc = files.load_tokenizer(proposal, list(aligners.values()), None, assume_same_tokenizer)
    if templates.resolve(template) == templates.CHAT and not tc.chat_template:
        raise ValueError(
            f"--template=chat: {proposal}'s tokenizer has no chat template; pass "
            "--template=NAME (e.g. human_assistant) to render chat requests."
        )
    models = files.load_models(proposal, list(aligners.values()), dtype, tok)
    context = min(c.max_position_embeddings for c in models.configs if c)
    max_length = max_length or min(context, 2048)
    table = PerRow(tuple(get_mode(m) for m in modes))
    eos = T.pair_eos_ids(tok, models.proposal[1], [c for _, c in models.aligners], tc)
    pad = tok.token_to_id(T.PAD_TOKEN)
    engine = Engine(
        models,
        table,
        vocab_size=T.tokenizer_length(tok),
        pad_id=eos[0] if pad is None else pad,
        slots=slots,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        chunk=chunk,
        max_queue=max_queue,
    )
    resolver = Resolver(
        engine,
        proposal_name=proposal_name,
        aligner_names=tuple(aligners),
        tokenizer=tok,
        tokenizer_config=tc,
        template=template,
        default_max_tokens=max_tokens,
    )
    return Server(engine, resolver)


def serve(server: Server, host: str = "127.0.0.1", port: int = 8000, drain_seconds: float = 30):
    """Compiles, then serves until SIGTERM / SIGINT (graceful: see the module doc)."""
    import uvicorn

    engine = server.engine
    logging.info("compiling the decoder (%d prompt buckets)...", len(engine.buckets()))
    t0 = time.perf_counter()
    engine.start()
    logging.info(
        "compiled in %.1f s; serving on http://%s:%d", time.perf_counter() - t0, host, port
    )
    app = server.app()

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        # uvicorn has waited for in-flight requests (up to drain_seconds): cancel the rest.
        cancelled = engine.shutdown(0.0)
        logging.info("decode loop stopped; %d unfinished requests cancelled", cancelled)

    app.router.lifespan_context = lifespan
    # uvicorn hands a signal it shut down for back to the handler before it; this one
    # lets the process end with status 0 once the shutdown above is done.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: logging.info("stopped on signal %d", signum))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=drain_seconds,
        log_level="info",
    )
    uvicorn.Server(config).run()
