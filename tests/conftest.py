"""Test-suite setup: 8 fake CPU devices for sharding tests, full-precision matmuls."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Parity tolerances (1e-4 against transformers, 1e-5 cache vs full forward) are
# float32 tolerances: on GPUs JAX's default lets float32 matmuls run in TF32
# (~1e-3 relative), so the suite asks for full precision on every backend.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
