"""Running a command-line entry point on its own flag registry.

Each entry point (`ram_jax.main`, `ram_jax.generate`, `ram_jax.sample_proposal`,
`ram_jax.datasets.prepare`) defines its flags on a private `flags.FlagValues`
rather than absl's global one, so the modules can be imported together (by
tests, notebooks or the embedded experiment) without flag-name clashes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags


def run(main: Callable[[list[str]], None], flag_values: flags.FlagValues) -> None:
    """`absl.app.run(main)`, parsing `sys.argv` into `flag_values`."""

    def parse(argv: list[str]) -> list[str]:
        if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
            print(flag_values.get_help())
            sys.exit(0)
        try:
            rest = flag_values(argv)
        except flags.Error as e:
            sys.exit(f"{argv[0]}: {e}\nPass --help to list the flags.")
        flags.FLAGS(argv[:1])  # absl's own flags (logging) at their defaults
        return rest

    app.run(main, flags_parser=parse)
