"""Checksum manifests of checkpoint steps: what was written is what is restored.

Orbax commits a step atomically (it writes `N.orbax-checkpoint-tmp`, then
renames it to `N`), so a crash never leaves a half-written step. It keeps no
checksum of the array data, though: TensorStore's zarr3 layout checksums only
its shard index (crc32c), and Orbax's default layout none, so a truncated,
deleted or bit-flipped data file is either a long TensorStore error naming no
step or, for a bit flip, restored silently. Each step therefore gets a
manifest, `ram_jax_manifest.json`: the size and SHA-256 of every file, and the
training loss of the step when it was saved (Orbax's `_CHECKPOINT_METADATA`,
which it rewrites at commit, is left out). It is written into the step's
temporary directory just before Orbax's rename, so it is committed together
with the step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

MANIFEST = "ram_jax_manifest.json"
# Orbax's own step record (timestamps), rewritten at commit: not covered. A
# damaged one fails Orbax's read, which the restore reports the same way.
_UNCOVERED = (MANIFEST, "_CHECKPOINT_METADATA")
_CHUNK = 1 << 20


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel not in _UNCOVERED:
                out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str, loss: float | None) -> None:
    """Records every file's size and SHA-256 and the step's training loss."""
    files = {}
    for rel in _files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    finite = loss is not None and math.isfinite(loss)
    manifest = {"version": 1, "loss": loss if finite else None, "files": files}
    tmp = os.path.join(step_dir, f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def read_manifest(step_dir: str) -> dict | None:
    """The step's manifest, or None when it has none (older ram_jax, or damaged)."""
    try:
        with open(os.path.join(step_dir, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "files" in manifest else None


def verify(step_dir: str) -> str | None:
    """None if every file of the manifest is present and intact, else what is wrong.

    A step without a manifest is reported as such; callers decide whether
    to trust it.
    """
    if not os.path.isdir(step_dir):
        return "the step directory is missing"
    manifest = read_manifest(step_dir)
    if manifest is None:
        return "it has no readable checksum manifest"
    for rel, want in sorted(manifest["files"].items()):
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        size = os.path.getsize(path)
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} were written"
        if _sha256(path) != want["sha256"]:
            return f"{rel} does not match its checksum (the bytes changed after the save)"
    return None


def saved_loss(step_dir: str) -> float | None:
    """The training loss recorded when the step was saved (None if unknown)."""
    manifest = read_manifest(step_dir)
    return None if manifest is None else manifest.get("loss")
