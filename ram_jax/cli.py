"""Running a command-line entry point: its own flag registry and one error path.

Each entry point (`ram_jax.main`, `ram_jax.generate`, `ram_jax.sample_proposal`,
`ram_jax.build_tokenizer`, `ram_jax.plan`, `ram_jax.datasets.prepare`) defines
its flags on a private `flags.FlagValues` rather than absl's global one, so the
modules can be imported together (by tests, notebooks or the embedded
experiment) without flag-name clashes.

Errors: a user error (a bad flag or config field, a missing or malformed
file, an impossible setting) ends the command with `error: <message>` on
stderr and exit status 2; `--verbose` adds the traceback. A user error is a
`UsageError`, an `OSError` (files, permissions, disk), or a `ValueError` /
`FloatingPointError` raised by ram_jax's own code, which words its messages
for the user. Anything else, a `ValueError` from inside a library included,
is a bug: it keeps Python's traceback and exit status 1.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable

from absl import app, flags

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# Code whose ValueErrors are worded for users: this package and the experiment configs.
_OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("ram_jax", "experiments")
)


def _raised_by_own_code(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OWN_DIRS)


def is_user_error(exc: BaseException) -> bool:
    """True for the errors `run` reports as `error: ...` (see the module docstring)."""
    if isinstance(exc, (app.UsageError, OSError)):
        return True
    return isinstance(exc, (ValueError, FloatingPointError)) and _raised_by_own_code(exc)


def _strip_traceback(message: str) -> str:
    """The first and last lines of a message that embeds a traceback (ml_collections does)."""
    if "Traceback (most recent call last)" not in message:
        return message.strip()
    lines = [ln for ln in message.splitlines() if ln.strip()]
    head = lines[0].removesuffix("Error whilst parsing config file:").strip()
    last = lines[-1].split(": ", 1)[-1] if ": " in lines[-1] else lines[-1]
    return f"{head} {last}".strip()


def _flag_error(message: str) -> str:
    """absl's flag errors in one line; missing required flags listed together."""
    missing = re.findall(r"Flag --(\w+) must have a value other than None", message)
    if missing:
        names = ", ".join(f"--{m}" for m in missing)
        return f"{names} {'is' if len(missing) == 1 else 'are'} required (--help lists the flags)."
    return f"{_strip_traceback(message)} (--help lists the flags)"


def _config_field_error(exc: BaseException, argv: list[str]) -> str:
    """A misspelled `--config.a.b=v`: name the flag and keep the library's suggestion."""
    text = str(exc).replace("\\n", "\n").replace("\\'", "'")
    found = re.search(r"'([^'\s]+)'", text)
    key = found.group(1) if found else text
    hint = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', text)
    culprit = next(
        (a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0]),
        "a --config.<field> flag",
    )
    return f"{culprit}: the config has no field {key!r}." + (f" {hint.group(0)}" if hint else "")


def config_value(holder: flags.FlagHolder):
    """The ConfigDict of a `config_flags` flag; a file that failed to load is a user error.

    ml_collections defers that failure to the first use of the config, with a
    multi-line message; this reports it at once, naming the flag and the file.
    """
    config = holder.value
    try:
        config.keys()
    except OSError as e:
        reason = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
        raise app.UsageError(f"--{holder.name}: cannot load the config file: {reason}") from None
    return config


def fail(message: str, exc: BaseException | None = None, verbose: bool = False) -> None:
    """Prints `error: message` (and with `verbose`, the traceback) and exits with status 2."""
    if verbose and exc is not None:
        traceback.print_exception(exc)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], None], flag_values: flags.FlagValues) -> None:
    """`absl.app.run(main)`, parsing `sys.argv` into `flag_values`, with the one error path."""
    if "verbose" not in flag_values:
        flags.DEFINE_bool(
            "verbose", False, "Print tracebacks with error messages.", flag_values=flag_values
        )
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in sys.argv[1:])

    def parse(argv: list[str]) -> list[str]:
        if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
            print(flag_values.get_help())
            sys.exit(0)
        try:
            rest = flag_values(argv)
        except flags.Error as e:
            fail(_flag_error(str(e)), e, verbose)
        except (AttributeError, KeyError) as e:  # ml_collections: an unknown config field
            fail(_config_field_error(e, argv), e, verbose)
        except (ValueError, TypeError, OSError) as e:
            fail(f"{_strip_traceback(str(e))}", e, verbose)
        if len(rest) > 1:
            fail(f"unexpected arguments {rest[1:]}; flags are written --name=value.")
        flags.FLAGS(argv[:1])  # absl's own flags (logging) at their defaults
        return rest

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except KeyboardInterrupt as e:
            if verbose:
                traceback.print_exception(e)
            print("interrupted.", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:
            if not is_user_error(e):
                raise
            fail(_strip_traceback(str(e)) or type(e).__name__, e, verbose)

    app.run(guarded, flags_parser=parse)
