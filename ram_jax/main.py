r"""Train a residual aligner (or a baseline proposal): the command-line entry point.

  python -m ram_jax.main --config=experiments/configs/smoke.py --workdir=/tmp/run \
      [--config.optimizer.lr=1e-4 ...]

Any config field can be overridden with `--config.<field>=<value>`. Rerunning
the same command resumes from the latest checkpoint in --workdir. On several
hosts (TPU pod slices, SLURM), run the same command on every host;
`jax.distributed.initialize()` is called when a multi-process launch is
detected (or forced with --distributed). Elsewhere name the processes yourself,
e.g. two processes on one machine (CPU collectives go through gloo):

  python -m ram_jax.main ... --coordinator_address=127.0.0.1:1234 --num_processes=2 \
      --process_id=0    # and --process_id=1 in a second shell

If a process dies, the others stop with "the JAX distributed service detected
fatal errors" once its heartbeats are missing for --heartbeat_timeout seconds;
rerun every process to resume from the last checkpoint.
"""

import logging
import os

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ram_jax import cli
from ram_jax.training import preflight

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file.", flag_values=FLAGS
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, metrics and export go here.", flag_values=FLAGS
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize().",
    flag_values=FLAGS,
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS or the cluster's).",
    flag_values=FLAGS,
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (default: the cluster's).", flag_values=FLAGS
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (default: the cluster's).", flag_values=FLAGS
)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "Seconds without heartbeats after which a process counts as dead and the run stops.",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)

_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def _multi_process_launch() -> bool:
    if _NUM_PROCESSES.value is not None or _COORDINATOR.value:
        return True
    if any(os.environ.get(k) for k in _MULTI_PROCESS_ENV):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    # TPU pod slices list every worker's hostname.
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


class _QuietLibraries(logging.Filter):
    """Drops Orbax's per-save INFO chatter; warnings and errors still show."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
    del argv
    config = cli.config_value(_CONFIG)
    # Flags, paths and config fields first: their errors come before JAX is imported.
    preflight.check_workdir(_WORKDIR.value)
    preflight.check_config(config)
    import jax

    absl_logging.get_absl_handler().addFilter(_QuietLibraries())

    if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _multi_process_launch()):
        jax.distributed.initialize(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            heartbeat_timeout_seconds=_HEARTBEAT.value,
        )
    from ram_jax.training import loop as train_loop

    train_loop.run(config, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, FLAGS)
