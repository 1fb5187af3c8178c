"""Weights of the reference PyTorch implementation <-> our ChildNet's Flax variables.

The reference networks (the published proxyless_mobile / _14 / gpu / cpu checkpoints and any net of
the same family) name their modules

  first_conv.{conv,bn}                                   stem: 3x3 conv, stride 2, BN, ReLU6
  blocks.0.mobile_inverted_conv.*                        the fixed first block (MBConv, expand 1)
  blocks.{i+1}.mobile_inverted_conv.*                    our searchable block i (absent when Zero)
      inverted_bottleneck.{conv,bn}                      1x1 expand (absent when expand == 1)
      depth_conv.{conv,bn}                               kxk depthwise
      point_linear.{conv,bn}                             1x1 project
  feature_mix_layer.{conv,bn}                            1x1 conv to the tail width
  classifier.linear.{weight,bias}                        the dense layer

with conv weights OIHW (depthwise: (C, 1, k, k)), dense weights (out, in), and BN as
`weight, bias, running_mean, running_var, num_batches_tracked`. Ours are NHWC: the stem kernel HWIO,
1x1 kernels (in, out), depthwise kernels (k, k, C), the dense kernel (in, out); BN `scale, bias` are
params and `mean, var` batch_stats. Both frameworks normalise in eval mode with
y = (x - running_mean) / sqrt(running_var + eps) * weight + bias and the same eps (1e-3 in the
reference nets' `bn` settings and in models/layers.py), so the running statistics transfer as they
are. The momentum conventions differ only in name (PyTorch 0.1 = Flax 0.9) and affect training, not
the conversion. `num_batches_tracked` has no counterpart: it is dropped on import and written as 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from pnas_jax.errors import UserFileError
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import Arch, SearchSpace

Path = tuple[str, ...]

# (reference sub-module of an MBConv, our module name of its conv, our module name of its BN, kind)
_MBCONV_PARTS = (
    ("inverted_bottleneck", "expand", "expand_bn", "pointwise"),
    ("depth_conv", "depthwise", "depthwise_bn", "depthwise"),
    ("point_linear", "project", "project_bn", "pointwise"),
)


def _to_ours(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":  # OIHW -> HWIO
    return w.transpose(2, 3, 1, 0)
  if kind == "pointwise":  # (O, I, 1, 1) -> (I, O)
    return w.reshape(w.shape[0], w.shape[1]).T
  if kind == "depthwise":  # (C, 1, k, k) -> (k, k, C)
    return w[:, 0].transpose(1, 2, 0)
  if kind == "dense":  # (out, in) -> (in, out)
    return w.T
  return w


def _to_reference(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":  # HWIO -> OIHW
    return w.transpose(3, 2, 0, 1)
  if kind == "pointwise":  # (I, O) -> (O, I, 1, 1)
    return w.T[:, :, None, None]
  if kind == "depthwise":  # (k, k, C) -> (C, 1, k, k)
    return w.transpose(2, 0, 1)[:, None]
  if kind == "dense":
    return w.T
  return w


@dataclasses.dataclass(frozen=True)
class TensorLink:
  """One reference tensor and the Flax variable it becomes."""

  reference: str  # e.g. "blocks.1.mobile_inverted_conv.depth_conv.conv.weight"
  ours: Path  # e.g. ("params", "block0", "depthwise", "kernel")
  kind: str  # "conv" | "pointwise" | "depthwise" | "dense" | "vector"


def _conv_bn(ref: str, conv: Path, bn: Path, kind: str, bn_first: bool = False) -> Iterator[TensorLink]:
  """A conv and its BN; `bn_first` follows the reference's registration order of its ConvLayer
  (first_conv, feature_mix_layer), so exported state_dicts list tensors in the reference order."""
  conv_link = TensorLink(f"{ref}.conv.weight", ("params", *conv, "kernel"), kind)
  if not bn_first:
    yield conv_link
  for r, col, name in (("weight", "params", "scale"), ("bias", "params", "bias"),
                       ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")):
    yield TensorLink(f"{ref}.bn.{r}", (col, *bn, name), "vector")
  if bn_first:
    yield conv_link


def _mbconv(ref: str, ours: Path, op: str) -> Iterator[TensorLink]:
  spec = ops_lib.get_op(op)
  if not spec.is_mbconv:
    raise UserFileError(f"op {op!r} has no counterpart in the reference implementation's weights")
  for ref_part, conv, bn, kind in _MBCONV_PARTS:
    if ref_part == "inverted_bottleneck" and spec.expand == 1:
      continue
    yield from _conv_bn(f"{ref}.mobile_inverted_conv.{ref_part}", (*ours, conv), (*ours, bn), kind)


def tensor_links(space: SearchSpace, arch: Arch) -> list[TensorLink]:
  """Every tensor of the reference network of (space, arch) with its Flax variable, in the
  reference state_dict's module order."""
  space.check_arch(arch)
  links = list(_conv_bn("first_conv", ("input", "stem", "conv"), ("input", "stem", "bn"), "conv",
                        bn_first=True))
  links += _mbconv("blocks.0", ("input", "first_block"), space.first_block_op)
  for b, op in zip(space.blocks, arch.ops, strict=True):
    if not ops_lib.get_op(op).is_zero:
      links += _mbconv(f"blocks.{b.index + 1}", (f"block{b.index}",), op)
  links += _conv_bn("feature_mix_layer", ("head", "feature_mix", "conv", "pointwise"),
                    ("head", "feature_mix", "bn"), "pointwise", bn_first=True)
  links += [TensorLink("classifier.linear.weight", ("params", "head", "classifier", "dense", "kernel"),
                       "dense"),
            TensorLink("classifier.linear.bias", ("params", "head", "classifier", "dense", "bias"),
                       "vector")]
  return links


def variable_shapes(space: SearchSpace, arch: Arch) -> dict[Path, tuple[int, ...]]:
  """Shapes of ChildNet(space, arch)'s variables, flattened (no computation: jax.eval_shape)."""
  x = jax.ShapeDtypeStruct((1, space.resolution, space.resolution, space.in_channels), np.float32)
  tree = jax.eval_shape(lambda x: ChildNet(space, arch, dw_impl="lax").init(jax.random.key(0), x), x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _links_checked(space: SearchSpace, arch: Arch) -> list[TensorLink]:
  links = tensor_links(space, arch)
  shapes = variable_shapes(space, arch)
  covered = {link.ours for link in links}
  if covered != set(shapes):  # A bug, not a user error: the mapping must follow models/.
    raise AssertionError(f"reference mapping out of date: unmapped {sorted(set(shapes) - covered)}, "
                         f"unknown {sorted(covered - set(shapes))}")
  return links


def _describe(name: str) -> str:
  return f"{name!r}" if name else "the network"


def from_reference(state_dict: Mapping[str, np.ndarray], space: SearchSpace, arch: Arch,
                   source: str = "<state_dict>", name: str = "") -> dict[str, Any]:
  """The reference state_dict -> {"params", "batch_stats"} of ChildNet(space, arch) (float32).

  Raises:
    UserFileError: a tensor the network needs is missing, has the wrong shape, or the state_dict
      holds tensors this network does not have (usually: `--arch` is not the checkpoint's network).
  """
  links = _links_checked(space, arch)
  shapes = variable_shapes(space, arch)
  hint = (f"; is {_describe(name)} the network this checkpoint was saved from? Give the matching "
          "--arch (a zoo name or the run's net.config)")
  missing = [link.reference for link in links if link.reference not in state_dict]
  if missing:
    raise UserFileError(f"{source}: {len(missing)} tensors of {_describe(name)} are missing, e.g. "
                        f"{', '.join(missing[:3])}{hint}")
  known = {link.reference for link in links}
  extra = [k for k in state_dict if k not in known and not k.endswith(".num_batches_tracked")]
  if extra:
    raise UserFileError(f"{source}: {len(extra)} tensors have no place in {_describe(name)}, e.g. "
                        f"{', '.join(extra[:3])}{hint}")
  flat: dict[Path, np.ndarray] = {}
  for link in links:
    value = _to_ours(link.kind, np.asarray(state_dict[link.reference], np.float32))
    if value.shape != shapes[link.ours]:
      ref_shape = tuple(np.shape(state_dict[link.reference]))
      raise UserFileError(
          f"{source}: {link.reference} has shape {ref_shape}, {_describe(name)} needs "
          f"{_to_reference(link.kind, np.zeros(shapes[link.ours])).shape}{hint}")
    flat[link.ours] = np.ascontiguousarray(value)
  return traverse_util.unflatten_dict(flat)


def to_reference(variables: Mapping[str, Any], space: SearchSpace, arch: Arch) -> dict[str, np.ndarray]:
  """{"params", "batch_stats"} of ChildNet(space, arch) -> the reference state_dict (float32, in the
  reference module order, `num_batches_tracked` = 0 for every BN), loadable with
  `model.load_state_dict` into the reference network built from the same net.config."""
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  out: dict[str, np.ndarray] = {}
  for link in _links_checked(space, arch):
    out[link.reference] = np.ascontiguousarray(
        _to_reference(link.kind, np.asarray(flat[link.ours], np.float32)))
    if link.reference.endswith(".bn.running_var"):
      out[link.reference[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return out

