"""Data: IDX and CIFAR readers on generated files, the held-out split, batching, augmentation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnas_jax.data import augment, datasets, local_files
from pnas_jax.data.pipeline import EpochIterator, prefetch_to_device
from pnas_jax.data.sources import ArraySource, SubsetSource
from pnas_jax.data.split import class_balanced_split
from pnas_jax.errors import PnasError


def _write_idx(path, array, gz=True):
  code = {np.uint8: 0x08}[array.dtype.type]
  header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.tobytes()
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(data)


def test_fashion_mnist_reader_on_generated_idx(tmp_path):
  rng = np.random.default_rng(0)
  tr, te = rng.integers(0, 256, (12, 28, 28), np.uint8), rng.integers(0, 256, (5, 28, 28), np.uint8)
  trl, tel = rng.integers(0, 10, 12).astype(np.uint8), rng.integers(0, 10, 5).astype(np.uint8)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr)
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", trl)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", te, gz=False)  # plain files work too
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", tel, gz=False)
  d = local_files.load_fashion_mnist(str(tmp_path))
  np.testing.assert_array_equal(d["train"][0][..., 0], tr)
  np.testing.assert_array_equal(d["test"][1], tel.astype(np.int32))
  assert d["train"][0].shape == (12, 28, 28, 1)


def test_idx_errors(tmp_path):
  p = tmp_path / "x-idx"
  p.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
  with pytest.raises(local_files.MissingDataError, match="x-idx: not an IDX file.*download it again"):
    local_files.read_idx(str(p))
  p.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
  with pytest.raises(local_files.MissingDataError, match=r"shape \(10,\) \(10 bytes\), file has 3"):
    local_files.read_idx(str(p))
  p.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00")
  with pytest.raises(local_files.MissingDataError, match="truncated IDX header"):
    local_files.read_idx(str(p))
  with pytest.raises(local_files.MissingDataError, match="apt-get install dataset-fashion-mnist"):
    local_files.load_fashion_mnist(str(tmp_path / "empty"))


@pytest.mark.skipif(
    not os.path.isdir(local_files.FASHION_MNIST_DIR),
    reason=f"{local_files.FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
  ds = datasets.load_dataset("fashion_mnist")
  assert len(ds.train) == 60000 and len(ds.test) == 10000 and ds.image_shape == (28, 28, 1)
  assert np.bincount(ds.train.labels()).tolist() == [6000] * 10
  np.testing.assert_allclose(ds.train.images.mean() / 255, ds.mean[0], atol=1e-3)


def test_cifar10_tarball_reader(tmp_path):
  rng = np.random.default_rng(1)
  path = tmp_path / "cifar-10-python.tar.gz"
  expected = {}
  with tarfile.open(path, "w:gz") as tar:
    for name in ["data_batch_1", "data_batch_2", "test_batch", "batches.meta"]:
      data = rng.integers(0, 256, (4, 3072), np.uint8)
      labels = rng.integers(0, 10, 4).tolist()
      expected[name] = (data, labels)
      blob = pickle.dumps({b"data": data, b"labels": labels})
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  ds = datasets.load_dataset("cifar10", str(tmp_path))
  assert len(ds.train) == 8 and len(ds.test) == 4 and ds.image_shape == (32, 32, 3)
  # CHW rows -> HWC images: red plane first.
  first = ds.train.take(np.array([0]))["image"][0]
  np.testing.assert_array_equal(first[:, :, 0].ravel(), expected["data_batch_1"][0][0, :1024])
  assert ds.test.labels().tolist() == expected["test_batch"][1]
  with pytest.raises(local_files.MissingDataError, match="cifar-10-python.tar.gz"):
    datasets.load_dataset("cifar10", str(tmp_path / "nowhere.tar.gz"))


def test_unknown_dataset_lists_names():
  with pytest.raises(KeyError, match="valid: fashion_mnist, cifar10, tfds:cifar10, .*synthetic"):
    datasets.load_dataset("mnist")


def _fashion_files(directory):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 6), ("t10k", 3)):
    _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8))
    _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[: len(b) // 2], "truncated gzip file"),
    (lambda b: b"this is not gzip at all", "not a valid gzip file"),
    (lambda b: b[:-8] + bytes(8), "not a valid gzip file"),  # CRC / length trailer zeroed
    (lambda b: gzip.compress(b"\x01\x02\x08\x01"), "not an IDX file"),
])
def test_damaged_gz_idx_names_the_file_and_the_fix(tmp_path, damage, problem):
  _fashion_files(tmp_path)
  target = tmp_path / "train-images-idx3-ubyte.gz"
  target.write_bytes(damage(target.read_bytes()))
  with pytest.raises(local_files.MissingDataError) as e:
    datasets.load_dataset("fashion_mnist", str(tmp_path))
  msg = str(e.value)
  assert str(target) in msg and problem in msg and "delete it and download it again" in msg
  assert isinstance(e.value, PnasError)


def test_damaged_file_in_debian_dir_suggests_reinstall(monkeypatch, tmp_path):
  monkeypatch.setattr(local_files, "FASHION_MNIST_DIR", str(tmp_path))
  _fashion_files(tmp_path)
  target = tmp_path / "t10k-labels-idx1-ubyte.gz"
  target.write_bytes(target.read_bytes()[:20])
  with pytest.raises(local_files.MissingDataError,
                     match=r"apt-get install --reinstall dataset-fashion-mnist"):
    local_files.load_fashion_mnist(str(tmp_path))


def _tarball(path, members):
  with tarfile.open(path, "w:gz") as tar:
    for name, blob in members.items():
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar10_batches_are_read_without_unpickling_code(tmp_path, protocol):
  rng = np.random.default_rng(protocol)
  data = {n: (rng.integers(0, 256, (3, 3072), np.uint8), rng.integers(0, 10, 3).tolist())
          for n in ("data_batch_1", "test_batch")}
  _tarball(tmp_path / "c.tar.gz", {n: pickle.dumps({b"batch_label": b"x", b"data": d, b"labels": y,
                                                    b"filenames": [b"a.png"] * 3}, protocol=protocol)
                                   for n, (d, y) in data.items()})
  d = local_files.load_cifar10_tarball(str(tmp_path / "c.tar.gz"))
  np.testing.assert_array_equal(d["train"][0][0, :, :, 0].ravel(), data["data_batch_1"][0][0, :1024])
  assert d["test"][1].tolist() == data["test_batch"][1]


class _Exploit:
  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_cifar10_malicious_pickle_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  exploit = _Exploit()
  exploit.marker = marker
  good = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
  _tarball(tmp_path / "evil.tar.gz", {"data_batch_1": pickle.dumps({b"data": exploit, b"labels": [0]}),
                                      "test_batch": good})
  with pytest.raises(local_files.MissingDataError) as e:
    local_files.load_cifar10_tarball(str(tmp_path / "evil.tar.gz"))
  assert "refusing to load global" in str(e.value) and "system" in str(e.value)
  assert "evil.tar.gz: cifar-10-batches-py/data_batch_1" in str(e.value)
  assert not marker.exists()
  # An object array (which would hold arbitrary objects) and a non-dict are refused too.
  for blob in (pickle.dumps({b"data": np.zeros((1, 3072), object), b"labels": [0]}), pickle.dumps([1])):
    _tarball(tmp_path / "odd.tar.gz", {"data_batch_1": blob, "test_batch": good})
    with pytest.raises(local_files.MissingDataError, match="not a CIFAR-10 batch"):
      local_files.load_cifar10_tarball(str(tmp_path / "odd.tar.gz"))


def test_cifar10_damaged_tarball_names_the_file(tmp_path):
  p = tmp_path / "cifar-10-python.tar.gz"
  _tarball(p, {"data_batch_1": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}),
               "test_batch": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})})
  p.write_bytes(p.read_bytes()[:60])
  with pytest.raises(local_files.MissingDataError, match=r"cifar-10-python.tar.gz: not a readable"
                     r" tarball"):
    local_files.load_cifar10_tarball(str(p))


def test_class_balanced_split():
  labels = np.repeat(np.arange(10), 100)
  np.random.default_rng(0).shuffle(labels)
  train, held = class_balanced_split(labels, 105, seed=3)
  assert len(held) == 105 and len(train) == 895
  assert np.intersect1d(train, held).size == 0
  counts = np.bincount(labels[held], minlength=10)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 105
  again = class_balanced_split(labels, 105, seed=3)
  np.testing.assert_array_equal(again[1], held)
  assert not np.array_equal(class_balanced_split(labels, 105, seed=4)[1], held)
  with pytest.raises(ValueError, match="class .* has 100 examples"):
    class_balanced_split(labels, 1000 - 1, seed=0)


def test_epoch_iterator_resume_and_process_slices():
  source = ArraySource(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100))
  it = EpochIterator(source, global_batch=8, seed=0)
  stream = [next(it)["label"] for _ in range(30)]  # crosses epochs (12 steps per epoch)
  assert it.state() == {"epoch": 2, "step": 6}
  # Every epoch visits 96 distinct examples.
  assert len(set(np.concatenate(stream[:12]).tolist())) == 96
  assert not np.array_equal(np.sort(np.concatenate(stream[:12])), np.sort(np.concatenate(stream[12:24])))
  # Resume from a saved position replays the identical stream.
  it2 = EpochIterator(source, global_batch=8, seed=0, state={"epoch": 1, "step": 3})
  for want in stream[15:30]:
    np.testing.assert_array_equal(next(it2)["label"], want)
  # Two processes each take half of the same global batches.
  parts = [EpochIterator(source, 8, 0, process_index=i, process_count=2) for i in range(2)]
  for want in stream[:5]:
    got = np.concatenate([next(p)["label"] for p in parts])
    np.testing.assert_array_equal(np.sort(got), np.sort(want))
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    EpochIterator(source, 8, 0, process_count=3)


def test_prefetch_to_device_preserves_order():
  batches = [{"x": np.full((2,), i)} for i in range(5)]
  out = list(prefetch_to_device(iter(batches), size=2))
  assert [int(b["x"][0]) for b in out] == list(range(5))
  assert isinstance(out[0]["x"], jax.Array)


def test_pad_crop_flip_windows():
  x = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
  out = augment.pad_crop_flip(jax.random.key(0), x, pad=2)
  assert out.shape == x.shape
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(2):
    windows = [padded[i, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
    windows += [w[:, ::-1] for w in windows]
    assert any(np.array_equal(np.asarray(out[i]), w) for w in windows)
  flips = augment.pad_crop_flip(jax.random.key(1), jnp.tile(x[:1], (256, 1, 1, 1)), pad=0)
  flipped = np.mean([not np.array_equal(np.asarray(f), np.asarray(x[0])) for f in flips])
  assert 0.35 < flipped < 0.65


def test_random_resized_crop():
  x = jax.random.uniform(jax.random.key(0), (4, 20, 20, 3))
  out = augment.random_resized_crop_flip_jitter(jax.random.key(1), x, 12)
  assert out.shape == (4, 12, 12, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
  # Full-image crop, no jitter, same size: the image itself or its mirror.
  same = augment.random_resized_crop_flip_jitter(
      jax.random.key(2), x, 20, scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.0, saturation=0.0
  )
  for a, b in zip(np.asarray(same), np.asarray(x), strict=True):
    assert np.allclose(a, b, atol=1e-5) or np.allclose(a, b[:, ::-1], atol=1e-5)


def test_normalize():
  x = jnp.array([[[[0, 255]]]], jnp.uint8)
  np.testing.assert_allclose(augment.normalize(x, (0.5,), (0.5,)), [[[[-1.0, 1.0]]]])


def test_subset_source_and_split_compose():
  ds = datasets.synthetic(n_train=200, n_test=10, size=4)
  train_idx, held_idx = class_balanced_split(ds.train.labels(), 50, seed=0)
  held = SubsetSource(ds.train, held_idx)
  assert len(held) == 50
  np.testing.assert_array_equal(held.labels(), ds.train.labels()[held_idx])
  np.testing.assert_array_equal(held.take(np.array([3]))["image"], ds.train.take(held_idx[3:4])["image"])


@pytest.mark.parametrize("name,shape", [("tfds:cifar10", (32, 32, 3)), ("tfds:fashion_mnist", (28, 28, 1)),
                                        ("tfds:imagenette", (40, 40, 3)), ("tfds:imagenet2012", (40, 40, 3))])
def test_tfds_sources_on_mock_data(name, shape):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    ds = datasets.load_dataset(name, image_size=40)
    assert ds.image_shape == shape and len(ds.train) == 12
    it = EpochIterator(ds.train, global_batch=4, seed=0)
    batch = next(it)
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and ds.train.labels().shape == (12,)
    assert next(EpochIterator(ds.test, 4, 0))["image"].shape == (4, *shape)


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build imagenet2012 --manual_dir=DIR"):
    datasets.load_dataset("tfds:imagenet2012", data_dir=str(tmp_path))
