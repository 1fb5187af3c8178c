"""Exporting a trained ChildNet for inference outside this package: StableHLO and TensorFlow.

StableHLO (`export_stablehlo`) is the primary format: `jax.export` lowers the inference function
(weights closed over, so they are constants inside the artifact) for several platforms at once and
serialises it. The batch dimension is symbolic by default, so one file serves any batch size. A
consumer needs only `jax` (and `flatbuffers`, which `jax.export` serialisation uses), not pnas_jax nor
the checkpoint:

  import jax, numpy as np
  exported = jax.export.deserialize(bytearray(open("model.stablehlo.bin", "rb").read()))
  images = np.zeros((8, 224, 224, 3), np.float32)  # NHWC, already normalised (see the .json sidecar)
  logits = np.asarray(exported.call(images))

A sidecar `<path>.json` tells the input shape, dtype, number of classes, the search space and ops
(enough to rebuild the network with pnas_jax) and, when given, the normalisation the model expects
(training normalises as `(x / 255 - mean) / std`; the artifact itself does not normalise).

TensorFlow (`export_tf`) goes through `jax2tf` to a SavedModel (and optionally a .tflite file).
TensorFlow is an optional dependency, imported only here; without it `ExportError` says how to
install it. `export_network` writes every available format into `<workdir>/export/`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pnas_jax.errors import PnasError, UserValueError
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space.space import Arch, SearchSpace

log = logging.getLogger(__name__)

EXPORT_FORMAT = "pnas_jax.export/1"
STABLEHLO_FILENAME = "model.stablehlo.bin"
SAVED_MODEL_DIRNAME = "saved_model"
TFLITE_FILENAME = "model.tflite"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

_TF_INSTALL = 'pip install "pnas_jax[tf]" (or: pip install tensorflow)'


class ExportError(PnasError, RuntimeError):
  """An export could not be made: a missing optional dependency or a failed conversion."""


def inference_fn(
    space: SearchSpace, arch: Arch, variables: Mapping[str, Any]
) -> Callable[[jax.Array], jax.Array]:
  """`x -> logits` for NHWC float32 images, inference mode, with the variables closed over.

  Uses the generic depthwise lowering (`dw_impl="lax"`), which every backend compiles; it computes
  the same logits as the CPU-specific implementation that "auto" picks.
  """
  space.check_arch(arch)
  missing = [c for c in ("params", "batch_stats") if c not in variables]
  if missing:
    raise ExportError(f"variables lack the collection(s) {missing}; expected 'params' and 'batch_stats'")
  net = ChildNet(space, arch, dropout_rate=0.0, dw_impl="lax")
  consts = {c: jax.tree.map(jnp.asarray, variables[c]) for c in ("params", "batch_stats")}

  def fn(x: jax.Array) -> jax.Array:
    return net.apply(consts, x, train=False)

  return fn


def _input_hwc(space: SearchSpace) -> tuple[int, int, int]:
  return space.resolution, space.resolution, space.in_channels


def _normalization(preprocess: Mapping[str, Any] | None) -> dict[str, list[float]] | None:
  if preprocess is None:
    return None
  if not {"mean", "std"} <= set(preprocess):
    raise UserValueError(f"preprocess needs 'mean' and 'std', got keys {sorted(preprocess)}")
  return {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in preprocess.items()}


def _export(fn: Callable, arg: jax.ShapeDtypeStruct, platforms: Sequence[str]) -> jax.export.Exported:
  platforms = tuple(p.lower() for p in platforms)
  unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
  if unknown or not platforms:
    # jax.export accepts any name silently; an artifact for a misspelt platform would not run there.
    raise UserValueError(f"unknown platform(s) {unknown or platforms}; known: {KNOWN_PLATFORMS}")
  try:
    return jax.export.export(jax.jit(fn), platforms=platforms)(arg)
  except Exception as e:  # any lowering failure: fall back to what surely works here
    if platforms == ("cpu",):
      raise
    log.warning("export for platforms %s failed (%s: %s); exporting for ('cpu',) only",
                platforms, type(e).__name__, e)
    return jax.export.export(jax.jit(fn), platforms=("cpu",))(arg)


def export_stablehlo(
    space: SearchSpace,
    arch: Arch,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    batch_sizes: int | None = None,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    preprocess: Mapping[str, Any] | None = None,
) -> str:
  """Serialises the inference function as StableHLO to `path`, with a JSON sidecar `path + ".json"`.

  Args:
    space: the search space of `arch`.
    arch: the architecture.
    variables: {"params": ..., "batch_stats": ...} of `ChildNet(space, arch)`; baked into the artifact.
    path: the output file, e.g. ".../model.stablehlo.bin"; its directory is created.
    batch_sizes: a fixed batch size, or None (default) for a symbolic batch dimension (any size).
    platforms: the platforms to lower for; when that fails on this machine, ("cpu",) with a warning.
    preprocess: optional {"mean": [...], "std": [...]} recorded in the sidecar as "normalization".

  Returns:
    The path written.

  Raises:
    ExportError: `flatbuffers` (needed by jax.export serialisation) is missing, or bad variables.
  """
  path = os.fspath(path)
  normalization = _normalization(preprocess)
  h, w, c = _input_hwc(space)
  if batch_sizes is None:
    shape: tuple[Any, ...] = jax.export.symbolic_shape(f"b, {h}, {w}, {c}")
  else:
    if int(batch_sizes) < 1:
      raise UserValueError(f"batch_sizes must be >= 1 or None, got {batch_sizes}")
    shape = (int(batch_sizes), h, w, c)
  exported = _export(inference_fn(space, arch, variables), jax.ShapeDtypeStruct(shape, jnp.float32),
                     platforms)
  try:
    blob = exported.serialize()
  except ImportError as e:
    raise ExportError(f"StableHLO serialisation needs flatbuffers: pip install flatbuffers ({e})") from e
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(blob)
  sidecar = {
      "format": EXPORT_FORMAT,
      "input_shape": [batch_sizes, h, w, c],
      "dtype": "float32",
      "layout": "NHWC",
      "n_classes": space.n_classes,
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "space": space.to_dict(),
      "ops": list(arch.ops),
      "normalization": normalization,
  }
  with open(path + ".json", "w") as f:
    json.dump(sidecar, f, indent=2)
    f.write("\n")
  return path


def load_stablehlo(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
  """Loads an `export_stablehlo` artifact as `images (B, H, W, C) float32 -> logits (B, n_classes)`.

  Needs only jax (see the module docstring for the same without pnas_jax).
  """
  with open(os.fspath(path), "rb") as f:
    blob = bytearray(f.read())
  try:
    exported = jax.export.deserialize(blob)
  except ImportError as e:
    raise ExportError(f"StableHLO deserialisation needs flatbuffers: pip install flatbuffers ({e})") from e

  def call(x: np.ndarray) -> np.ndarray:
    return np.asarray(exported.call(jnp.asarray(x, jnp.float32)))

  call.exported = exported  # type: ignore[attr-defined]
  return call


def _import_tf() -> Any:
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ExportError(f"TensorFlow export needs tensorflow, an optional dependency: {_TF_INSTALL}") from e
  return tf


def tf_available() -> bool:
  """Whether tensorflow can be imported (without importing it)."""
  import importlib.util

  return importlib.util.find_spec("tensorflow") is not None


def export_tf(
    space: SearchSpace,
    arch: Arch,
    variables: Mapping[str, Any],
    directory: str | os.PathLike,
    tflite: bool = True,
) -> dict[str, str]:
  """Converts the inference function with jax2tf to a SavedModel (and optionally a .tflite file).

  The SavedModel, in `directory/saved_model`, has a "serving_default" signature taking "images"
  (None, H, W, C) float32 and returning "logits"; the batch dimension is polymorphic.

  Args:
    space: the search space of `arch`.
    arch: the architecture.
    variables: {"params": ..., "batch_stats": ...} of `ChildNet(space, arch)`.
    directory: the output directory (created).
    tflite: also convert the SavedModel to `directory/model.tflite`.

  Returns:
    {"saved_model": dir} plus {"tflite": file} when converted.

  Raises:
    ExportError: tensorflow is not installed, or a conversion failed.
  """
  tf = _import_tf()
  from jax.experimental import jax2tf

  directory = os.fspath(directory)
  h, w, c = _input_hwc(space)
  tf_fn = jax2tf.convert(
      inference_fn(space, arch, variables), polymorphic_shapes=[f"(b, {h}, {w}, {c})"], with_gradient=False
  )
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {"logits": tf_fn(images)},
      input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="images")],
      autograph=False,
  )
  out = {"saved_model": os.path.join(directory, SAVED_MODEL_DIRNAME)}
  os.makedirs(directory, exist_ok=True)
  try:
    tf.saved_model.save(module, out["saved_model"], signatures={"serving_default": module.serve})
  except Exception as e:
    raise ExportError(f"SavedModel export failed: {type(e).__name__}: {e}") from e
  if tflite:
    converter = tf.lite.TFLiteConverter.from_saved_model(out["saved_model"])
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    try:
      blob = converter.convert()
    except Exception as e:
      raise ExportError(f"TFLite conversion failed: {type(e).__name__}: {e}") from e
    out["tflite"] = os.path.join(directory, TFLITE_FILENAME)
    with open(out["tflite"], "wb") as f:
      f.write(blob)
  return out


def export_network(
    space: SearchSpace,
    arch: Arch,
    variables: Mapping[str, Any],
    workdir: str | os.PathLike,
    formats: Sequence[str] = ("stablehlo", "tf"),
    preprocess: Mapping[str, Any] | None = None,
) -> dict[str, str]:
  """Writes the network into `workdir/export/` in the requested formats.

  StableHLO is always written (`export/model.stablehlo.bin` and its `.json` sidecar). "tf" writes
  `export/tf/saved_model` (and `export/tf/model.tflite`) when tensorflow is importable; otherwise it is
  skipped with a logged notice, unless "tf" is the only format asked for, which raises ExportError.

  Args:
    space: the search space of `arch`.
    arch: the architecture.
    variables: {"params": ..., "batch_stats": ...} of `ChildNet(space, arch)`.
    workdir: the run directory; files go to `workdir/export/`.
    formats: any of "stablehlo", "tf".
    preprocess: optional {"mean", "std"} recorded in the StableHLO sidecar.

  Returns:
    {format: path}: "stablehlo" -> the .bin file, "tf" -> the SavedModel directory, "tflite" -> the
    .tflite file.
  """
  formats = tuple(formats)
  unknown = sorted(set(formats) - {"stablehlo", "tf"})
  if unknown:
    raise UserValueError(f"unknown export format(s) {unknown}; known: 'stablehlo', 'tf'")
  out_dir = os.path.join(os.fspath(workdir), "export")
  if formats == ("tf",) and not tf_available():
    _import_tf()  # raises ExportError with the install hint
  out = {
      "stablehlo": export_stablehlo(
          space, arch, variables, os.path.join(out_dir, STABLEHLO_FILENAME), preprocess=preprocess
      )
  }
  if "tf" in formats:
    if tf_available():
      tf_out = export_tf(space, arch, variables, os.path.join(out_dir, "tf"))
      out["tf"] = tf_out["saved_model"]
      if "tflite" in tf_out:
        out["tflite"] = tf_out["tflite"]
    else:
      log.info("tensorflow is not installed: skipping the TF export (%s)", _TF_INSTALL)
  return out
