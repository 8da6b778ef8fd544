"""The curated public API: every exported name resolves; submodules stay reachable."""

import subprocess
import sys
import types

import ram_jax


def test_every_exported_name_resolves():
    missing = [name for name in ram_jax.__all__ if not hasattr(ram_jax, name)]
    assert not missing, missing


def test_exports_do_not_shadow_submodules():
    # `from ram_jax import decode` must give the module the CLIs import, not a function.
    for name in ("decode", "sampling", "transformer", "losses", "train", "convert", "tokenizer"):
        module = __import__(f"ram_jax.{name}", fromlist=["_"])
        assert isinstance(getattr(ram_jax, name), types.ModuleType), name
        assert getattr(ram_jax, name) is module


def test_top_level_import_stays_light():
    code = (
        "import sys, ram_jax; heavy = [m for m in ('torch', 'transformers', "
        "'tensorflow_datasets', 'orbax.checkpoint') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
