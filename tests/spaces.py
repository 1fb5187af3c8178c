"""Search spaces shared by the tests (one definition, many users)."""

from __future__ import annotations

from pnas_jax.search_space import SearchSpace

# Blocks: 0 (8->8, shortcut: + Zero), 1 (8->16, stride 2), 2 (16->16, shortcut: + Zero).
# Small enough to compile in seconds; supernet, estimator, step and data-parallel tests use it.
TINY_SPACE = SearchSpace(
    stage_widths=(8, 16), stage_depths=(1, 2), stage_strides=(1, 2), candidates=(
        "3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6"), stem_width=8, first_block_width=8,
    tail_width=16, n_classes=10, resolution=16,
)
