"""Architecture search: gate sampling, arch-gradient estimators, derivation.

The mixed op itself is `pnas_jax.arch.mixed_op` (imported as a module).

Binary gates and their gradients follow Cai et al. 2019, Sec. 3.2; REINFORCE, Sec. 3.3.2.
"""

from pnas_jax.arch.derive import derive, derive_within_budget, probabilities
from pnas_jax.arch.estimators import (
    ArchGrads,
    BinaryGateEstimator,
    Estimator,
    ReinforceEstimator,
    estimator_from_config,
    estimator_names,
    get_estimator,
    mode_probs,
    reference_reward,
    register_estimator,
    two_mode_shift,
)
from pnas_jax.arch.sampling import MODES, Sample, fixed_sample, one_hot_gates, sample_gates

__all__ = [
    "MODES",
    "ArchGrads",
    "BinaryGateEstimator",
    "ReinforceEstimator",
    "Sample",
    "Estimator",
    "derive",
    "derive_within_budget",
    "estimator_from_config",
    "estimator_names",
    "fixed_sample",
    "get_estimator",
    "register_estimator",
    "mode_probs",
    "one_hot_gates",
    "probabilities",
    "reference_reward",
    "sample_gates",
    "two_mode_shift",
]
