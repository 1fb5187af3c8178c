"""Export: StableHLO round trip (also in a fresh interpreter without pnas_jax), sidecar, TF path."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnas_jax.export import (
    EXPORT_FORMAT,
    ExportError,
    export_network,
    export_stablehlo,
    export_tf,
    load_stablehlo,
)
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.search_space import Arch, SearchSpace

HAS_TF = importlib.util.find_spec("tensorflow") is not None

SPACE = SearchSpace(
    stage_widths=(8, 16), stage_depths=(1, 2), stage_strides=(1, 2),
    candidates=("3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6"), stem_width=8, first_block_width=8,
    tail_width=16, width_mult=0.5, n_classes=5, resolution=16,
)
ARCH = Arch(("3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6"))
SHAPE = (SPACE.resolution, SPACE.resolution, SPACE.in_channels)


@pytest.fixture(scope="module")
def variables():
  v = init_variables(ChildNet(SPACE, ARCH, dw_impl="lax"), jax.random.key(7), jnp.zeros((1, *SHAPE)))
  # Non-default running statistics, so that inference-mode BN matters.
  rng = np.random.RandomState(11)

  def perturb(path, a):
    if "var" in jax.tree_util.keystr(path):
      return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)
    return jnp.asarray(0.3 * rng.randn(*a.shape), a.dtype)

  return {"params": v["params"], "batch_stats": jax.tree.map_with_path(perturb, v["batch_stats"])}


def _logits(variables, x, dw_impl="auto"):
  return np.asarray(jax.jit(lambda v, x: ChildNet(SPACE, ARCH, dw_impl=dw_impl).apply(v, x))(variables, x))


@pytest.fixture(scope="module")
def images():
  return np.random.RandomState(0).randn(3, *SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def expected(variables, images):
  return _logits(variables, images)  # dw_impl="auto", the default


def test_lax_matches_auto(variables, images, expected):
  lax = _logits(variables, images, dw_impl="lax")
  np.testing.assert_allclose(lax, expected, rtol=1e-5, atol=1e-5)
  fresh = jax.tree.map_with_path(
      lambda p, a: jnp.ones_like(a) if "var" in jax.tree_util.keystr(p) else jnp.zeros_like(a),
      variables["batch_stats"],
  )
  plain = _logits({**variables, "batch_stats": fresh}, images)
  assert np.abs(plain - expected).max() > 1e-3  # the perturbed statistics change the logits


_CONSUMER = textwrap.dedent("""
    import sys
    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    for name in sys.argv[2:]:
      x = np.load(name + ".x.npy")
      np.save(name + ".y.npy", np.asarray(exported.call(x)))
    assert not any(m.split(".")[0] == "pnas_jax" for m in sys.modules), "pnas_jax was imported"
""")


def test_stablehlo_round_trip(tmp_path, variables, images, expected):
  path = export_stablehlo(SPACE, ARCH, variables, tmp_path / "out" / "model.stablehlo.bin")
  assert path == str(tmp_path / "out" / "model.stablehlo.bin")
  fn = load_stablehlo(path)
  for b in (1, 3):
    np.testing.assert_allclose(fn(images[:b]), expected[:b], rtol=1e-5, atol=1e-5)
  # A fresh interpreter that imports only jax and numpy.
  names = []
  for b in (1, 3):
    name = str(tmp_path / f"b{b}")
    np.save(name + ".x.npy", images[:b])
    names.append(name)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  proc = subprocess.run([sys.executable, "-c", _CONSUMER, path, *names], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  for b, name in zip((1, 3), names, strict=True):
    np.testing.assert_allclose(np.load(name + ".y.npy"), expected[:b], rtol=1e-5, atol=1e-5)


def test_stablehlo_sidecar_and_fixed_batch(tmp_path, variables, images, expected):
  preprocess = {"mean": (0.485, 0.456, 0.406), "std": np.array([0.229, 0.224, 0.225])}
  path = export_stablehlo(SPACE, ARCH, variables, tmp_path / "m.bin", preprocess=preprocess)
  with open(path + ".json") as f:
    side = json.load(f)
  assert side["format"] == EXPORT_FORMAT
  assert side["input_shape"] == [None, *SHAPE]
  assert side["dtype"] == "float32"
  assert side["n_classes"] == 5
  assert side["space"] == json.loads(json.dumps(SPACE.to_dict()))
  assert side["ops"] == list(ARCH.ops)
  assert side["platforms"] == ["cpu", "cuda", "tpu"]
  np.testing.assert_allclose(side["normalization"]["mean"], [0.485, 0.456, 0.406])
  np.testing.assert_allclose(side["normalization"]["std"], [0.229, 0.224, 0.225])

  fixed = export_stablehlo(SPACE, ARCH, variables, tmp_path / "f.bin", batch_sizes=2, platforms=("cpu",))
  with open(fixed + ".json") as f:
    side = json.load(f)
  assert side["input_shape"] == [2, *SHAPE] and side["normalization"] is None
  fn = load_stablehlo(fixed)
  assert fn.exported.in_avals[0].shape == (2, *SHAPE)
  np.testing.assert_allclose(fn(images[:2]), expected[:2], rtol=1e-5, atol=1e-5)


def test_stablehlo_platform_fallback(tmp_path, variables, caplog, monkeypatch):
  with pytest.raises(ValueError, match="unknown platform"):
    export_stablehlo(SPACE, ARCH, variables, tmp_path / "m.bin", platforms=("cpu", "nosuchchip"))
  real_export = jax.export.export

  def cpu_only_export(fn, platforms=None, **kw):  # a machine whose jax cannot lower for accelerators
    if tuple(platforms) != ("cpu",):
      raise RuntimeError("no lowering for cuda here")
    return real_export(fn, platforms=platforms, **kw)

  monkeypatch.setattr(jax.export, "export", cpu_only_export)
  with caplog.at_level(logging.WARNING, logger="pnas_jax.export"):
    path = export_stablehlo(SPACE, ARCH, variables, tmp_path / "m.bin")
  assert "exporting for ('cpu',) only" in caplog.text and "no lowering for cuda here" in caplog.text
  with open(path + ".json") as f:
    assert json.load(f)["platforms"] == ["cpu"]


def test_export_rejects_bad_input(tmp_path, variables):
  with pytest.raises(ExportError, match="batch_stats"):
    export_stablehlo(SPACE, ARCH, {"params": variables["params"]}, tmp_path / "m.bin")
  with pytest.raises(ValueError, match="mean"):
    export_stablehlo(SPACE, ARCH, variables, tmp_path / "m.bin", preprocess={"std": [1.0]})
  with pytest.raises(ValueError, match="unknown export format"):
    export_network(SPACE, ARCH, variables, tmp_path, formats=("onnx",))


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_export_tf(tmp_path, variables, images, expected):
  if not HAS_TF:
    with pytest.raises(ExportError) as e:
      export_tf(SPACE, ARCH, variables, tmp_path / "tf")
    assert "pip install tensorflow" in str(e.value) and 'pnas_jax[tf]' in str(e.value)
    return
  import tensorflow as tf

  out = export_tf(SPACE, ARCH, variables, tmp_path / "tf", tflite=True)
  model = tf.saved_model.load(out["saved_model"])
  for b in (1, 3):
    y = model.signatures["serving_default"](images=tf.constant(images[:b]))["logits"].numpy()
    np.testing.assert_allclose(y, expected[:b], rtol=1e-5, atol=1e-5)
  interp = tf.lite.Interpreter(model_path=out["tflite"])
  inp = interp.get_input_details()[0]
  interp.resize_tensor_input(inp["index"], images.shape)
  interp.allocate_tensors()
  interp.set_tensor(inp["index"], images)
  interp.invoke()
  y = interp.get_tensor(interp.get_output_details()[0]["index"])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_export_network(tmp_path, variables, caplog):
  with caplog.at_level(logging.INFO, logger="pnas_jax.export"):
    out = export_network(SPACE, ARCH, variables, tmp_path)
  assert out["stablehlo"] == str(tmp_path / "export" / "model.stablehlo.bin")
  assert os.path.exists(out["stablehlo"] + ".json")
  if HAS_TF:
    assert os.path.isdir(out["tf"]) and os.path.exists(out["tflite"])
  else:
    assert set(out) == {"stablehlo"} and "skipping the TF export" in caplog.text
    with pytest.raises(ExportError, match="pip install tensorflow"):
      export_network(SPACE, ARCH, variables, tmp_path / "w2", formats=("tf",))
    assert not os.path.exists(tmp_path / "w2" / "export")
