r"""Plan per-device memory before renting: a training stage, a decoding pair, the README table.

  python -m ram_jax.plan --config=experiments/paper/uc_llama8b_wup_ram1b.py:stage=aligner \
      --device=v5e-8 [--mesh=data=1,fsdp=8,tensor=1]
  python -m ram_jax.plan --decode=llama-3.1-8b+llama-3.2-1b --device=8xH100 --batch=32 --length=2048
  python -m ram_jax.plan --table          # the README table (paper pairs x v5e-8, v4-8, 8xH100)

The estimates and their formulas: `ram_jax.planning.memory`.
"""

from absl import app, flags
from ml_collections import config_flags

from ram_jax import cli
from ram_jax import sharding as shd
from ram_jax.models.config import PRESETS, get_preset
from ram_jax.planning import report
from ram_jax.planning.memory import DEVICES, decode_memory, parse_mesh

FLAGS = flags.FlagValues()  # this command's own flags (see ram_jax.cli)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file.", flag_values=FLAGS
)
_DEVICE = flags.DEFINE_enum(
    "device", "v5e-8", sorted(DEVICES), "Accelerator slice.", flag_values=FLAGS
)
_MESH = flags.DEFINE_string(
    "mesh", None, "data=..,fsdp=..,tensor=.. (-1: the rest; default: config).", flag_values=FLAGS
)
_DECODE = flags.DEFINE_string(
    "decode", None, "Plan decoding of PROPOSAL+ALIGNER presets instead.", flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer("batch", 32, "Decoding batch.", flag_values=FLAGS)
_LENGTH = flags.DEFINE_integer(
    "length", 2048, "Decoding cache slots (prompt + new tokens).", flag_values=FLAGS
)
_DECODE_DTYPE = flags.DEFINE_enum(
    "decode_dtype",
    "bfloat16",
    ["bfloat16", "float16", "float32"],
    "Weights and cache dtype for decoding.",
    flag_values=FLAGS,
)
_TABLE = flags.DEFINE_bool(
    "table", False, "Print the README table for the paper's pairs.", flag_values=FLAGS
)


def _presets(pair: str) -> tuple[str, str]:
    """(proposal, aligner or '') preset names of --decode, each checked."""
    big, _, small = pair.partition("+")
    for name in filter(None, (big, small)):
        if name not in PRESETS:
            raise app.UsageError(
                f"--decode={pair}: unknown preset {name!r}; choose from {sorted(PRESETS)}."
            )
    return big, small


def main(argv):
    del argv
    for name, value in (("batch", _BATCH.value), ("length", _LENGTH.value)):
        if value < 1:
            raise app.UsageError(f"--{name}={value} must be >= 1.")
    device = DEVICES[_DEVICE.value]
    if _TABLE.value:
        print(report.markdown_table(_BATCH.value, _LENGTH.value))
        return
    if _DECODE.value:
        big, small = _presets(_DECODE.value)
        mesh = parse_mesh(_MESH.value or "fsdp=-1", device.chips)
        m = decode_memory(
            get_preset(big),
            get_preset(small) if small else None,
            mesh,
            batch=_BATCH.value,
            length=_LENGTH.value,
            dtype=_DECODE_DTYPE.value,
        )
        print(
            report.report(
                f"decode {_DECODE.value} batch {_BATCH.value} x {_LENGTH.value}", m, device
            )
        )
        return
    if _CONFIG.value is None:
        raise app.UsageError("pass --config=FILE, --decode=BIG+SMALL or --table.")
    config = cli.config_value(_CONFIG)
    mesh_text = _MESH.value or ",".join(f"{a}={config.mesh[a]}" for a in shd.MESH_AXES)
    mesh = parse_mesh(mesh_text, device.chips)
    m = report.plan_training(config, device, mesh)
    print(
        report.report(
            f"train {config.model.preset} ({config.objective.name}, batch {config.batch_size}, "
            f"accum {config.grad_accum}, length {config.data.max_length}, remat "
            f"{config.model.remat}, precision {config.precision}, mesh {dict(mesh.shape)})",
            m,
            device,
        )
    )


if __name__ == "__main__":
    cli.run(main, FLAGS)
