"""Search space: the candidate-op registry, SearchSpace and Arch, and their file formats."""

from pnas_jax.search_space.io import (
    from_net_config,
    load_arch,
    load_net_config,
    save_arch,
    save_net_config,
    to_net_config,
)
from pnas_jax.search_space.ops import (
    OpSpec,
    get_op,
    register_op,
    registered_op_names,
    unregister_op,
)
from pnas_jax.search_space.space import (
    DEFAULT_CANDIDATES,
    Arch,
    BlockSpec,
    SearchSpace,
    SearchSpaceError,
    make_divisible,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "Arch",
    "BlockSpec",
    "OpSpec",
    "SearchSpace",
    "SearchSpaceError",
    "from_net_config",
    "get_op",
    "load_arch",
    "load_net_config",
    "make_divisible",
    "register_op",
    "registered_op_names",
    "save_arch",
    "save_net_config",
    "to_net_config",
    "unregister_op",
]
