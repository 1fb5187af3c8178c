"""pnas_jax: ProxylessNAS (Cai, Zhu, Han, ICLR 2019) in JAX/Flax."""

__version__ = "0.1.0"
