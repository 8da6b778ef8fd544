"""The curated public API and the package layout: exports resolve, boundaries hold."""

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
import types

import ram_jax


def test_every_exported_name_resolves():
    missing = [name for name in ram_jax.__all__ if not hasattr(ram_jax, name)]
    assert not missing, missing


def test_subpackages_hold_their_modules():
    layout = {
        "models": (
            "config",
            "transformer",
            "attention",
            "quantize",
            "cache",
            "rope",
            "convert",
            "tokenizer",
            "tokenizer_config",
            "tokenizer_check",
        ),
        "decoding": (
            "sampling",
            "processors",
            "modes",
            "compose",
            "decoder",
            "driver",
            "resample",
            "batching",
            "files",
        ),
        "training": ("losses", "step", "loop", "model", "optim", "checkpoint", "metrics"),
        "data": ("rows", "templates", "chat_template", "tokenize", "pipeline"),
        "planning": ("memory", "report"),
    }
    for package, modules in layout.items():
        for name in modules:
            module = importlib.import_module(f"ram_jax.{package}.{name}")
            assert isinstance(module, types.ModuleType), (package, name)
    # The commands stay at the top: `python -m ram_jax.X`.
    for command in ("main", "generate", "sample_proposal", "build_tokenizer", "plan"):
        assert importlib.util.find_spec(f"ram_jax.{command}") is not None, command


def _fresh_modules(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout)  # a printed list of module names


def test_top_level_import_stays_light():
    loaded = _fresh_modules("import ram_jax")
    heavy = ("torch", "transformers", "tensorflow_datasets", "orbax", "flax", "jax")
    assert not [m for m in loaded if m.split(".")[0] in heavy], loaded


def test_commands_check_their_input_before_importing_jax():
    # Bad flags and files are reported before the seconds JAX takes to import.
    for module in (
        "ram_jax.main",
        "ram_jax.sample_proposal",
        "ram_jax.build_tokenizer",
        "ram_jax.datasets.prepare",
        "ram_jax.training.preflight",
        "ram_jax.resumable",
    ):
        loaded = _fresh_modules(f"import {module}")
        heavy = ("jax", "orbax", "flax", "tensorflow_datasets")
        assert not [m for m in loaded if m.split(".")[0] in heavy], module


def test_losses_and_data_import_no_model_code():
    loaded = _fresh_modules("import ram_jax.training.losses, ram_jax.data")
    assert "ram_jax.models.transformer" not in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("flax", "orbax", "torch")], loaded


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ram_jax modules it imports anywhere in its source (lazy imports too)."""
    modules = {m.name: m for m in pkgutil.walk_packages(ram_jax.__path__, "ram_jax.")}
    graph = {}
    for name in modules:
        path = importlib.util.find_spec(name).origin
        tree = ast.parse(open(path).read())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                # `from pkg import submodule` needs the submodule; `from pkg import name`, pkg.
                targets = [t if t in modules else node.module for t in subs]
            else:
                continue
            # A module's own parent packages are initialised before it, always.
            edges |= {t for t in targets if t in modules and not name.startswith(t + ".")}
        graph[name] = edges
    return graph


def test_no_import_cycles_between_modules():
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
