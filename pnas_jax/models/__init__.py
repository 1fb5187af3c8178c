"""Networks: layers and MBConv blocks, the child network for a fixed Arch, and the model zoo.

Submodules are imported explicitly (`from pnas_jax.models import child`) so that the op registry in
`pnas_jax.search_space` can depend on `pnas_jax.models.blocks` without an import cycle.
"""
