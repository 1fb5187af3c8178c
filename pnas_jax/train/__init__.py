"""Training: the search state, the two optimisers and the pure weight / arch step functions."""

from pnas_jax.losses import cross_entropy
from pnas_jax.train.optim import (
    arch_optimizer,
    masked_tensor_update,
    masked_update,
    weight_optimizer,
)
from pnas_jax.train.state import SearchState, create_search_state, init_alpha, stream_key
from pnas_jax.train.steps import arch_step, jit_step, train_step, weight_step

__all__ = [
    "SearchState",
    "arch_optimizer",
    "arch_step",
    "create_search_state",
    "init_alpha",
    "jit_step",
    "masked_tensor_update",
    "masked_update",
    "cross_entropy",
    "stream_key",
    "train_step",
    "weight_optimizer",
    "weight_step",
]
