"""Layers: convolution, BatchNorm and dense layers, depthwise kernels and MBConv blocks.

The bottom of the package: nothing here knows about search spaces, architectures or training.

    from pnas_jax.layers import core as layers   # Conv, BatchNorm, Pointwise, Classifier, ...
    from pnas_jax.layers import blocks           # MBConv, Identity, Zero
    from pnas_jax.layers import depthwise        # depthwise_conv and its CPU kernels
"""
