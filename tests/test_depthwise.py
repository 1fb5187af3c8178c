"""Every depthwise implementation equals the grouped lax convolution in values and gradients."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import pytest
from numeric_helpers import assert_close_to_scale

from pnas_jax.layers import depthwise, native
from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space.space import Arch

FAST_IMPLS = [i for i in depthwise.IMPLS if i not in ("auto", "lax")]


def _assert_close(actual, expected, rtol=1e-5, floor=1e-6):
  """Within rtol of the expected tensor's scale (float32 sums of k*k products)."""
  assert_close_to_scale(actual, expected, rtol, floor)


@functools.cache
def _value_and_grads(impl: str, stride: int):
  def loss(x, w, ct):
    return jnp.sum(depthwise.depthwise_conv(x, w, stride, impl) * ct)

  def f(x, w, ct):
    y = depthwise.depthwise_conv(x, w, stride, impl)
    return y, jax.grad(loss, argnums=(0, 1))(x, w, ct)

  return jax.jit(f)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
# 43 channels = 16 + 16 + 8 + 3: every lane block of the native kernels; 6: single channels only.
@pytest.mark.parametrize(("hw", "c"), [((9, 9), 43), ((8, 10), 6)])
def test_matches_lax(impl, k, stride, hw, c):
  kx, kw, kc = jax.random.split(jax.random.key(k * 10 + stride), 3)
  x = jax.random.normal(kx, (2, *hw, c), jnp.float32)
  w = jax.random.normal(kw, (k, k, c), jnp.float32)
  ho, wo = (depthwise.output_size(s, k, stride) for s in hw)
  ct = jax.random.normal(kc, (2, ho, wo, c), jnp.float32)
  y_ref, (dx_ref, dw_ref) = _value_and_grads("lax", stride)(x, w, ct)
  y, (dx, dw) = _value_and_grads(impl, stride)(x, w, ct)
  assert y.shape == (2, ho, wo, c)
  _assert_close(y, y_ref)
  _assert_close(dx, dx_ref)
  _assert_close(dw, dw_ref)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_matches_lax_other_kernel_and_stride(impl):
  """A kernel size and stride outside 3/5/7 x 1/2 (the native kernels' generic loops)."""
  kx, kw, kc = jax.random.split(jax.random.key(9), 3)
  x = jax.random.normal(kx, (2, 11, 10, 43), jnp.float32)
  w = jax.random.normal(kw, (9, 9, 43), jnp.float32)
  ho, wo = depthwise.output_size(11, 9, 3), depthwise.output_size(10, 9, 3)
  ct = jax.random.normal(kc, (2, ho, wo, 43), jnp.float32)
  for got, want in zip(_value_and_grads(impl, 3)(x, w, ct), _value_and_grads("lax", 3)(x, w, ct),
                       strict=True):
    for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      _assert_close(a, e)


def test_kernel_grad_is_not_trivially_close():
  """The tolerance above can fail: a one-tap shift of the kernel gradient is far off."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4))
  g = jax.grad(lambda w: jnp.sum(depthwise.depthwise_conv(x, w, 1, "shift") ** 2))(w)
  with pytest.raises(AssertionError):
    _assert_close(jnp.roll(g, 1, axis=0), g)


def test_output_size():
  assert depthwise.output_size(9, 3, 2) == 5
  assert depthwise.output_size(8, 7, 2) == 4
  assert depthwise.output_size(8, 5, 1) == 8


def test_auto_resolves_per_backend():
  expected = "native" if jax.default_backend() == "cpu" else "lax"
  assert depthwise.resolve_impl("auto") == expected, native.why_unavailable()
  assert depthwise.resolve_impl("auto", jnp.bfloat16) == ("shift" if expected == "native" else "lax")
  assert depthwise.resolve_impl("lax") == "lax"


def test_native_builds_once_per_machine(tmp_path, monkeypatch):
  """The library is compiled into the cache once; the second call finds it without compiling."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  cxx = native._compiler()
  assert cxx, "make setup installs g++ (Makefile: compiler)"
  lib = native.build(cxx)
  assert lib.startswith(str(tmp_path)) and os.path.getsize(lib) > 0
  mtime = os.path.getmtime(lib)
  assert native.build(cxx) == lib and os.path.getmtime(lib) == mtime
  monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-DPNAS_OTHER_FLAGS"))
  assert native.build(cxx) != lib  # other flags: another key, another build


def test_native_off_falls_back_and_says_why(monkeypatch):
  monkeypatch.setenv(native.ENV_VAR, "off")
  native.available.cache_clear()
  try:
    assert depthwise.resolve_impl("auto") == "shift"
    with pytest.raises(ValueError, match="PNAS_NATIVE=off.*use dw_impl='auto'"):
      depthwise.resolve_impl("native")
  finally:
    monkeypatch.delenv(native.ENV_VAR)
    native.available.cache_clear()
  assert native.available()


def test_no_compiler_falls_back_with_a_warning(monkeypatch):
  monkeypatch.setattr(native, "_compiler", lambda: None)
  native.available.cache_clear()
  try:
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*apt-get install g\\+\\+"):
      assert depthwise.resolve_impl("auto") == "shift"
    with pytest.raises(ValueError, match="no C\\+\\+ compiler found"):
      depthwise.resolve_impl("native")
  finally:
    monkeypatch.undo()
    native.available.cache_clear()
  assert native.available()


def test_export_checks_register_the_kernels_on_cpu_only(monkeypatch):
  """A cached trace loaded on CPU calls the kernels, so export_checks registers them; on another
  backend it must not try to build them (no compiler needed, no misleading warning)."""
  calls = []
  monkeypatch.setattr(native, "available", lambda: calls.append(1) or True)
  names = lambda checks: {str(c) for c in checks}  # noqa: E731
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  on_cpu = native.export_checks()
  assert calls == [1] and len(on_cpu) == len(native.TARGETS)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert names(native.export_checks()) == names(on_cpu) and calls == [1]


def test_native_under_vmap_and_threads():
  """vmap over a leading axis (sequential custom calls) and a large batch (several row chunks on
  XLA's thread pool) both match the lax convolution."""
  x = jax.random.normal(jax.random.key(0), (3, 16, 9, 9, 8))
  w = jax.random.normal(jax.random.key(1), (5, 5, 8))
  f = lambda impl: jax.jit(jax.vmap(lambda x: depthwise.depthwise_conv(x, w, 2, impl)))
  _assert_close(f("native")(x), f("lax")(x))
  xb = jax.random.normal(jax.random.key(2), (64, 12, 12, 8))
  g = lambda impl: jax.jit(jax.grad(lambda w: jnp.sum(depthwise.depthwise_conv(xb, w, 1, impl) ** 2)))
  _assert_close(g("native")(w[1:4, 1:4]), g("lax")(w[1:4, 1:4]), rtol=1e-4)


def test_bad_impl_lists_valid_names():
  with pytest.raises(ValueError, match="valid: auto, lax, native, shift"):
    depthwise.depthwise_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2)), 1, impl="cudnn")


def test_childnet_lax_and_shift_agree():
  """Same logits, batch stats and parameter gradients through a small real network."""
  entry = zoo.get("proxyless_mobile")
  space = entry.space.replace(resolution=64, stage_depths=(1, 1, 1, 1, 1, 1), n_classes=10)
  arch = Arch(("3x3_MBConv3", "5x5_MBConv3", "7x7_MBConv6", "5x5_MBConv6", "7x7_MBConv3",
               "3x3_MBConv6"))
  x = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
  labels = jnp.array([1, 7, 3, 0])
  variables = ChildNet(space, arch, dw_impl="lax").init(jax.random.key(1), x)

  def run(impl):
    net = ChildNet(space, arch, dw_impl=impl)

    def loss(params):
      logits, upd = net.apply(
          {"params": params, "batch_stats": variables["batch_stats"]},
          x, train=True, mutable=["batch_stats"],
      )
      ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
      return ce, (logits, upd["batch_stats"])

    (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return aux, grads

  (logits_ref, stats_ref), grads_ref = run("lax")
  (logits, stats), grads = run("shift")
  _assert_close(logits, logits_ref, rtol=1e-4)
  # Batch means of BN-normalised inputs are ~0 (round-off): compare them at the network's scale.
  stats_floor = 0.01 * max(float(jnp.max(jnp.abs(s))) for s in jax.tree.leaves(stats_ref))
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_ref), strict=True):
    _assert_close(a, b, rtol=1e-4, floor=stats_floor)
  # Some gradients are exactly 0 in exact arithmetic (a BN bias followed by a batch-stat BN) and
  # round-off in float32: compare those against the largest gradient of the network.
  floor = 0.1 * max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_ref))
  paths = jax.tree_util.tree_leaves_with_path(grads_ref)
  for (path, b), a in zip(paths, jax.tree.leaves(grads), strict=True):
    try:
      _assert_close(a, b, rtol=1e-4, floor=floor)
    except AssertionError as e:
      raise AssertionError(f"gradient of {jax.tree_util.keystr(path)} differs") from e
