"""The reference implementation's PyTorch checkpoints: reading without torch, logits, round trips."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from flax import traverse_util
from spaces import TINY_SPACE

from pnas_jax.errors import UserFileError
from pnas_jax.interop import torch_file, torch_weights, weights_files
from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.search_space import Arch, save_arch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARCH = Arch(("5x5_MBConv3", "3x3_MBConv6", "Zero"))
# float32 logits of the reference network on the fixed batch are ~0.26 at most; ours differ by
# ~1e-7 (summation order), so 1e-6 absolute is a tight bound that still ignores rounding.
LOGITS_ATOL = 1e-6


def _tiny_variables(seed: int = 0):
  x = np.zeros((1, 16, 16, 3), np.float32)
  v = init_variables(ChildNet(TINY_SPACE, TINY_ARCH, dw_impl="lax"), jax.random.key(seed), x)
  # Non-trivial BN statistics, so a swapped mean/var or scale/bias would show.
  flat = traverse_util.flatten_dict(jax.device_get(v))
  rng = np.random.default_rng(seed)
  flat = {k: (rng.uniform(0.5, 2.0, a.shape) if k[-1] in ("var", "scale") else
              rng.normal(size=a.shape) if k[-1] in ("mean", "bias") else a).astype(np.float32)
          for k, a in flat.items()}
  return traverse_util.unflatten_dict(flat)


def _assert_same_tree(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for k in fa:
    assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


def test_logits_match_the_reference_network(reference_dir):
  """The reference PyTorch proxyless_mobile (random weights, random BN statistics) in eval mode vs
  our ChildNet with its converted weights, on the reference's fixed 2x3x224x224 batch (float32)."""
  e = zoo.get("proxyless_mobile")
  sd = torch_file.load_state_dict(reference_dir / "weights" / "proxyless_mobile.pth")
  variables = torch_weights.from_reference(sd, e.space, e.arch)
  io = np.load(reference_dir / "weights" / "proxyless_mobile_io.npz")
  x = io["input_nchw"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
  for impl in ("auto", "lax"):  # the backend's depthwise kernel and lax.conv
    model = ChildNet(e.space, e.arch, dw_impl=impl)
    logits = np.asarray(jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(variables, x))
    diff = float(np.max(np.abs(logits - io["logits"])))
    print(f"dw_impl={impl}: max |logits - reference| = {diff:.3g}")
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=LOGITS_ATOL)
    assert (logits.argmax(-1) == io["logits"].argmax(-1)).all()


def test_reference_checkpoint_round_trip_is_byte_identical(reference_dir, tmp_path):
  e = zoo.get("proxyless_mobile")
  src = reference_dir / "weights" / "proxyless_mobile.pth"
  sd = torch_file.load_state_dict(src)
  variables = weights_files.load_variables(src, e.space, e.arch)
  weights_files.save_variables(tmp_path / "w.msgpack", variables, e.space, e.arch)
  weights_files.save_variables(tmp_path / "back.pth", variables, e.space, e.arch)
  back = torch_file.load_state_dict(tmp_path / "back.pth")
  assert list(back) == list(sd)  # the reference module order, num_batches_tracked included
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v if not k.endswith("num_batches_tracked") else 0)
  _assert_same_tree(weights_files.load_variables(tmp_path / "w.msgpack", e.space, e.arch), variables)


def test_ours_to_reference_to_ours_is_identical(tmp_path):
  variables = _tiny_variables()
  weights_files.save_variables(tmp_path / "tiny.pth", variables, TINY_SPACE, TINY_ARCH)
  _assert_same_tree(weights_files.load_variables(tmp_path / "tiny.pth", TINY_SPACE, TINY_ARCH),
                    variables)
  sd = torch_file.load_state_dict(tmp_path / "tiny.pth")
  # The reference layout: OIHW stem, (C, 1, k, k) depthwise, (out, in) dense; Zero block 2 absent.
  assert sd["first_conv.conv.weight"].shape == (8, 3, 3, 3)
  assert sd["blocks.1.mobile_inverted_conv.depth_conv.conv.weight"].shape == (24, 1, 5, 5)
  assert sd["classifier.linear.weight"].shape == (10, 16)
  assert not any(k.startswith("blocks.3.") for k in sd)
  assert "blocks.0.mobile_inverted_conv.inverted_bottleneck.conv.weight" not in sd  # expand 1
  assert sd["feature_mix_layer.bn.num_batches_tracked"].shape == ()


def test_cli_round_trip(tmp_path):
  arch_file = tmp_path / "arch.json"
  save_arch(arch_file, TINY_SPACE, TINY_ARCH)
  variables = _tiny_variables(1)
  weights_files.save_variables(tmp_path / "w.msgpack", variables, TINY_SPACE, TINY_ARCH)
  env = dict(os.environ, PYTHONPATH=REPO)
  for src, out in (("w.msgpack", "ref.pth"), ("ref.pth", "again.msgpack")):
    proc = subprocess.run([sys.executable, "-m", "pnas_jax.cli", "convert-weights", str(tmp_path / src),
                           "--arch", str(arch_file), "--out", str(tmp_path / out)],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "w.msgpack", "rb") as a, open(tmp_path / "again.msgpack", "rb") as b:
    assert a.read() == b.read()
  proc = subprocess.run([sys.executable, "-m", "pnas_jax.cli", "convert-weights", str(tmp_path / "ref.pth"),
                         "--arch", "proxyless_gpu", "--out", str(tmp_path / "x.msgpack")],
                        capture_output=True, text=True, env=env, check=False)
  assert proc.returncode == 2
  assert "ref.pth" in proc.stderr and "--arch" in proc.stderr and "missing" in proc.stderr


def test_wrong_network_names_the_tensor(tmp_path):
  weights_files.save_variables(tmp_path / "tiny.pth", _tiny_variables(), TINY_SPACE, TINY_ARCH)
  other = Arch(("3x3_MBConv3", "3x3_MBConv6", "Zero"))
  with pytest.raises(UserFileError, match=r"tiny.pth: blocks.1.mobile_inverted_conv.depth_conv.conv."
                                          r"weight has shape \(24, 1, 5, 5\).*--arch"):
    weights_files.load_variables(tmp_path / "tiny.pth", TINY_SPACE, other, "other")


class _Evil:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
  marker = tmp_path / "executed"
  payload = pickle.dumps({"state_dict": {}, "x": _Evil(str(marker))}, protocol=2)
  with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:  # the zip layout of torch.save
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/version", "3\n")
  with open(tmp_path / "evil_legacy.pth", "wb") as f:  # the legacy stream of pickles
    f.write(payload)
  for name in ("evil.pth", "evil_legacy.pth"):
    with pytest.raises(UserFileError, match=rf"{name}: refusing to load the pickled global "
                                            r"(posix|nt)\.system"):
      torch_file.load_checkpoint(tmp_path / name)
  assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
  (tmp_path / "a.pth").write_bytes(b"hello")
  with pytest.raises(UserFileError, match="a.pth: not a PyTorch checkpoint"):
    torch_file.load_checkpoint(tmp_path / "a.pth")
  with pytest.raises(UserFileError, match="no such file"):
    torch_file.load_checkpoint(tmp_path / "missing.pth")


def test_legacy_format_and_views(tmp_path):
  """A legacy-format file (PyTorch < 1.6) written opcode by opcode: a transposed view of a storage
  and a second tensor at an offset into the same storage."""
  f4 = torch_file.STORAGE_DTYPES["FloatStorage"]
  data = np.arange(12, dtype=f4)

  def g(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()

  def tensor(offset, size, stride):
    ints = lambda xs: pickle.MARK + b"".join(pickle.BININT1 + bytes([x]) for x in xs) + pickle.TUPLE
    pid = (pickle.MARK + torch_file._op_str("storage") + g("torch", "FloatStorage")
           + torch_file._op_str("7") + torch_file._op_str("cpu") + pickle.BININT1 + bytes([12])
           + pickle.NONE + pickle.TUPLE + pickle.BINPERSID)
    return (g("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + pid + pickle.BININT1
            + bytes([offset]) + ints(size) + ints(stride) + pickle.NEWFALSE
            + g("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.TUPLE
            + pickle.REDUCE)

  obj = (pickle.PROTO + bytes([2]) + pickle.EMPTY_DICT + torch_file._op_str("t") + tensor(0, (4, 3), (1, 4))
         + pickle.SETITEM + torch_file._op_str("v") + tensor(8, (2,), (1,)) + pickle.SETITEM + pickle.STOP)
  with open(tmp_path / "legacy.pth", "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(obj)
    pickle.dump(["7"], f, protocol=2)
    f.write(np.int64(12).tobytes() + data.tobytes())
  sd = torch_file.load_state_dict(tmp_path / "legacy.pth")
  np.testing.assert_array_equal(sd["t"], data.reshape(3, 4).T)
  np.testing.assert_array_equal(sd["v"], [8, 9])


def test_torch_reads_ours_and_we_read_torch(tmp_path):
  """Only where PyTorch is installed (not a test dependency): torch.load(weights_only=True) reads our
  files; our reader reads torch.save's zip and legacy formats."""
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional interop check)")
  variables = _tiny_variables()
  weights_files.save_variables(tmp_path / "ours.pth", variables, TINY_SPACE, TINY_ARCH)
  sd = torch.load(tmp_path / "ours.pth", weights_only=True)["state_dict"]
  ours = torch_weights.to_reference(variables, TINY_SPACE, TINY_ARCH)
  assert list(sd) == list(ours)
  for k, v in ours.items():
    np.testing.assert_array_equal(sd[k].numpy(), v)
  t = {"w": torch.randn(4, 3, 3, 3), "t": torch.randn(6, 5).t(), "s": torch.randn(9)[2:7],
       "n": torch.tensor(3), "h": torch.randn(3).bfloat16()}
  for legacy in (False, True):
    torch.save({"state_dict": t}, tmp_path / "t.pth", _use_new_zipfile_serialization=not legacy)
    back = torch_file.load_state_dict(tmp_path / "t.pth")
    for k, v in t.items():
      np.testing.assert_array_equal(back[k].astype(np.float32), v.float().numpy())


def test_eval_and_export_take_converted_weights(tmp_path, capsys):
  """`pnas eval --arch FILE --weights X.pth` and `pnas export FILE --weights X.pth --out DIR`."""
  from pnas_jax import cli
  from pnas_jax.data.augment import normalize
  from pnas_jax.data.datasets import synthetic
  from pnas_jax.export import load_stablehlo

  arch_file = str(tmp_path / "arch.json")
  save_arch(arch_file, TINY_SPACE, TINY_ARCH)
  variables = _tiny_variables(2)
  pth = str(tmp_path / "w.pth")
  weights_files.save_variables(pth, variables, TINY_SPACE, TINY_ARCH)
  net = ChildNet(TINY_SPACE, TINY_ARCH, dw_impl="lax")

  assert cli.main(["eval", "--arch", arch_file, "--weights", pth, "--data", "synthetic", "--batch", "128",
                   "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  data = synthetic(size=16)
  x = normalize(data.test.images, data.mean, data.std)
  logits = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x))
  assert out["weights"] == pth
  assert out["top1"] == pytest.approx(100 * np.mean(logits.argmax(-1) == data.test.labels()),
                                      abs=100 / out["count"] + 1e-9)

  assert cli.main(["export", arch_file, "--weights", pth, "--out", str(tmp_path / "exp"),
                   "--formats", "stablehlo"]) == 0
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  got = load_stablehlo(str(tmp_path / "exp" / "export" / "model.stablehlo.bin"))(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(net.apply(variables, x, train=False)),
                             rtol=1e-5, atol=1e-5)


def test_corrupt_checkpoints_are_user_errors(tmp_path):
  weights_files.save_variables(tmp_path / "ok.pth", _tiny_variables(), TINY_SPACE, TINY_ARCH)
  with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "cut.pth", "w") as dst:
    for name in src.namelist():
      data = src.read(name)
      dst.writestr(name, data[: len(data) // 2] if name.endswith("data.pkl") else data)
  with pytest.raises(UserFileError, match="cut.pth: corrupt or truncated"):
    torch_file.load_checkpoint(tmp_path / "cut.pth")
  # A tensor reaching outside its storage (negative stride) is refused, not read out of bounds.
  pkl = (pickle.PROTO + bytes([2]) + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK
         + pickle.MARK + torch_file._op_str("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n"
         + torch_file._op_str("0") + torch_file._op_str("cpu") + pickle.BININT1 + b"\x04" + pickle.TUPLE
         + pickle.BINPERSID + pickle.BININT1 + b"\x03" + pickle.MARK + pickle.BININT1 + b"\x04"
         + pickle.TUPLE + pickle.MARK + pickle.BININT + struct.pack("<i", -1000) + pickle.TUPLE
         + pickle.NEWFALSE + pickle.EMPTY_TUPLE + pickle.TUPLE + pickle.REDUCE + pickle.STOP)
  with zipfile.ZipFile(tmp_path / "bad.pth", "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
  with pytest.raises(UserFileError, match="bad.pth: a tensor with offset 3.*does not fit"):
    torch_file.load_checkpoint(tmp_path / "bad.pth")
