"""pnas train / eval / export on a tiny network and synthetic data: resume, inherit, round trips."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from pnas_jax import cli
from pnas_jax.config_loading import load_config
from pnas_jax.data.augment import normalize
from pnas_jax.data.datasets import synthetic
from pnas_jax.export import load_stablehlo
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.search_space import Arch, SearchSpace
from pnas_jax.search_space.io import save_arch
from pnas_jax.train.loop import Status
from pnas_jax.train.retrain import decay_mask, train, trained_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CFG = os.path.join(REPO, "configs", "train", "fashion_mnist.py")
SPACE = SearchSpace(
    stage_widths=(8, 16), stage_depths=(2, 1), stage_strides=(1, 2),
    candidates=("3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6"), stem_width=8, first_block_width=8,
    tail_width=16, n_classes=10, resolution=16,
)
ARCH = Arch(("5x5_MBConv3", "Zero", "3x3_MBConv6"))


def _config(arch_path, *extra):
  return load_config(TRAIN_CFG, [
      f"--config.arch={arch_path}", "--config.data.name=synthetic", "--config.data.batch_size=32",
      "--config.data.eval_batch_size=64", "--config.schedule.steps_per_epoch=4",
      "--config.schedule.epochs=2.0", "--config.checkpoint.every_steps=3",
      "--config.model.dw_impl=lax", "--config.report.latency_batch=1",
      "--config.report.latency_repeats=3", "--config.log.every_steps=2",
      "--config.log.progress=False", *extra])


@pytest.fixture(scope="module")
def arch_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("arch") / "arch.json")
  save_arch(path, SPACE, ARCH, name="tiny")
  return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, arch_path):
  wd = str(tmp_path_factory.mktemp("train") / "run")
  result = train(_config(arch_path, "--config.optim.ema_decay=0.9"), wd)
  return wd, result


def test_train_writes_report_weights_and_metrics(trained):
  wd, result = trained
  assert result.status is Status.DONE and result.step == 8
  with open(os.path.join(wd, "report.json")) as f:
    rep = json.load(f)
  assert rep["arch"] == list(ARCH.ops) and rep["test_examples"] == 512
  assert 0 <= rep["test_top1"] <= 100 and rep["latency_ms_b1"] > 0 and rep["params"] > 0
  assert rep["test_top1"] == pytest.approx(result.test_top1)
  with open(os.path.join(wd, "report.md")) as f:
    md = f.read()
  assert "test top-1" in md and "latency, batch 1 (measured)" in md
  space, arch, variables = trained_network(wd)
  assert arch == ARCH and space.n_classes == 10
  assert jax.tree.structure(variables) == jax.tree.structure(
      init_variables(ChildNet(space, arch), jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32)))


def test_interrupted_training_resumes_bit_identical(tmp_path, arch_path, trained):
  ref_wd, _ = trained
  wd = str(tmp_path / "resumed")
  r1 = train(_config(arch_path, "--config.optim.ema_decay=0.9", "--config.schedule.max_steps=5"), wd)
  assert r1.status is Status.STOPPED and r1.step == 5
  r2 = train(_config(arch_path, "--config.optim.ema_decay=0.9"), wd)
  assert r2.status is Status.DONE and r2.step == 8
  _, _, a = trained_network(ref_wd)
  _, _, b = trained_network(wd)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert r2.test_top1 == trained[1].test_top1


def test_weight_decay_skips_bn_and_biases():
  v = init_variables(ChildNet(SPACE, ARCH), jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  mask = decay_mask(v["params"])
  flat = {jax.tree_util.keystr(k): m for k, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert not any(m for k, m in flat.items() if "bn" in k or "bias" in k)
  assert all(m for k, m in flat.items() if "kernel" in k)


def test_eval_of_zoo_net_matches_direct_computation(capsys):
  rc = cli.main(["eval", "proxyless_mobile", "--data", "synthetic", "--resolution", "32",
                 "--batch", "100", "--json"])
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  assert out["count"] == 512 and out["resolution"] == 32
  # Independent computation: the same random init applied to the whole test split at once.
  from pnas_jax.models import zoo

  data = synthetic(size=16)
  space, arch = zoo.resolve_network("proxyless_mobile", resolution=32, n_classes=10)
  net = ChildNet(space, arch, dw_impl="lax")
  variables = init_variables(net, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  x = normalize(data.test.images, data.mean, data.std)
  x = jax.image.resize(x, (x.shape[0], 32, 32, 3), method="linear")
  logits = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x))
  top1 = 100 * np.mean(logits.argmax(-1) == data.test.labels())
  assert out["top1"] == pytest.approx(top1, abs=100 / 512 + 1e-9)  # at most one tie flips


def test_export_round_trip_matches_trained_logits(trained, capsys):
  wd, _ = trained
  assert cli.main(["export", wd, "--formats", "stablehlo"]) == 0
  path = os.path.join(wd, "export", "model.stablehlo.bin")
  assert os.path.exists(path)
  space, arch, variables = trained_network(wd)
  x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
  want = np.asarray(ChildNet(space, arch, dw_impl="lax").apply(variables, x, train=False))
  np.testing.assert_allclose(np.asarray(load_stablehlo(path)(x)), want, rtol=1e-5, atol=1e-5)
  with open(path + ".json") as f:
    side = json.load(f)
  assert side["normalization"]["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("sharing", ["none", "mbconv"])
def test_training_from_inherited_supernet_weights(tmp_path, arch_path, sharing):
  """config.init = a search workdir: the ChildNet starts from that search's chosen-path weights
  (with entangled weights, its op's slice of the block's master MBConv)."""
  from pnas_jax.file_io import load_msgpack
  from pnas_jax.train.search import CHOSEN_PATH_FILE, search

  tiny = os.path.join(REPO, "configs", "search", "tiny.py")
  sdir = str(tmp_path / "search")
  found = search(load_config(tiny, ["--config.schedule.epochs=1.0", "--config.eval.every_epochs=0",
                                    f"--config.model.weight_sharing={sharing}"]), sdir)
  fpath = os.path.join(sdir, "arch.json")
  assert found.status is Status.DONE
  wd = str(tmp_path / "inherit")
  # lr 0 and no dropout randomness in the params: weights must stay the inherited ones.
  train(_config(fpath, f"--config.init={sdir}", "--config.optim.lr=0.0", "--config.schedule.epochs=0.25"),
        wd)
  space, arch, variables = trained_network(wd)
  like = init_variables(ChildNet(space, arch), jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  inherited = load_msgpack(os.path.join(sdir, CHOSEN_PATH_FILE), like)
  for x, y in zip(jax.tree.leaves(inherited["params"]), jax.tree.leaves(variables["params"]),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
