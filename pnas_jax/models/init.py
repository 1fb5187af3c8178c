"""Variable initialisation that compiles fast on CPU.

`module.init` draws every parameter from its own threefry stream; XLA:CPU spends most of a network's
init compile in LLVM optimising those ~150 random-number kernels (46 s for proxyless_mobile on 2
busy cores), although init runs once. On CPU we therefore compile init with LLVM's expensive passes
off (10 s for the same network). The random bits are the same; the float transforms that turn them
into normals may round differently in the last place (max relative difference ~2e-7), and every
init in this library goes through this function, so runs stay reproducible. Other backends use
the default compiler options.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

FAST_COMPILE_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def init_variables(module: nn.Module, key: jax.Array, *args: Any, **kwargs: Any) -> Any:
  """`module.init(key, *args, **kwargs)`, jitted; compiled for speed of compilation on CPU."""
  lowered = jax.jit(lambda k, *a: module.init(k, *a, **kwargs)).lower(key, *args)
  options = FAST_COMPILE_OPTIONS if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(key, *args)
