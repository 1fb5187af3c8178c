"""Depthwise convolution with an implementation chosen per backend.

XLA:GPU/TPU lower `lax.conv_general_dilated(feature_group_count=C)` well. XLA:CPU does not (5-25x
slower than the same math written as k*k shifted multiply-adds, worse in reverse mode), so on CPU
we use shifted multiply-adds with a hand-written VJP. Every implementation computes, for an NHWC
input x, a (k, k, C) kernel w, stride s and symmetric padding p = k // 2:

  y[b, i, j, c] = sum_{u, v < k} x_pad[b, i*s + u, j*s + v, c] * w[u, v, c]

and its VJP (dy = dL/dy, dy_dil = dy with s - 1 zeros between entries, padded by k - 1 - p):

  dL/dx[b, a, e, c] = sum_{u, v} dy_dil_pad[b, a + u, e + v, c] * w[k-1-u, k-1-v, c]
  dL/dw[u, v, c]    = sum_{b, i, j} x_pad[b, i*s + u, j*s + v, c] * dy[b, i, j, c]

They are tested equal in values and gradients for every k and stride (tests/test_depthwise.py).

Implementations ("auto" = "native" on CPU for float32 where its kernels built, else "shift";
"lax" elsewhere):
  lax             grouped lax.conv_general_dilated, plain autodiff.
  native          the three loop nests above in C++ (layers/native/depthwise_cpu.cc), one XLA FFI
                  custom call each for y, dL/dx and dL/dw: 16-channel blocks in SIMD registers,
                  rows split over XLA's intra-op thread pool, one dL/dw accumulator per thread.
                  Float32, CPU; built once per machine by layers/native.py.
  shift           k*k strided slices of the padded input times one tap each (one XLA loop fusion);
                  custom VJP: dL/dx is again k*k shifted adds (polyphase, per output phase, for s > 1),
                  dL/dw sums the k*k products over the batch in variadic reductions (one fused pass
                  per group of taps, no tap copy materialised), then over the (small) spatial rest.
  shift_autodiff  the same forward with plain autodiff (reference point for the benchmark).

What was tried for dL/dw on XLA:CPU (B=32, 32x32, C=96, loaded 2-core machine, ms; lax conv's
gradient is 250-430 ms at k=3):
  - autodiff of the slices (pad + scatter-add per tap): k=3 ~90-110, k=7 ~500-690.
  - k*k jnp.sum(tap * dy, (0, 1, 2)): XLA:CPU hands each reduction to a YNNPACK fusion that takes
    contiguous operands, so every tap slice is first copied: k=3 ~75-190, k=7 ~370-770.
  - one reduction of the stacked products (tap axis major or minor): 2-3x slower than that.
  - two-stage (reduce (b, i) first, or batch first on the stacked products): no better.
  - rows flattened to (B*H, W*C) so a W shift is a contiguous offset: no better (~110 / ~600).
  - one variadic lax.reduce over all taps and (b, i, j): ~85-117 / ~350-470 (96 outputs: one thread).
  - variadic lax.reduce over the batch axis only, then a small ynn reduce over (i, j): ~16-30 at
    k=3, ~140-270 at k=7 (groups of k taps per reduce best for k >= 5). Kept.
dL/dx for stride 2 first ran the stride-1 shifted adds on the zero-dilated dy (4x the necessary
multiply-adds). Now polyphase: one shifted sum per output parity phase over that phase's taps only,
interleaved by stack + reshape; per op (B=32, loaded machine) 64x64 C=96 k=3: 52 -> 29 ms,
32x32 C=144 k=5: 19 -> 3.6 ms, 16x16 C=240 k=7: 9.3 -> 1.7 ms. Together with the 2-D matmul
Pointwise and the im2col stem (layers.py) the proxyless_mobile step went 1.53 s -> 1.29 s (quick
bench, heavily loaded machine). Summed over proxyless_mobile's 20 depthwise layers
(batch 32, 128px, loaded machine, each op jitted alone): forward 75 ms, dL/dx 105 ms, dL/dw 300 ms.
In the network, XLA fused the producers of x and dy (BN, ReLU6 and their VJPs) into every one of
the k*k tap fusions, recomputing them per tap: an optimization_barrier on x (forward) and dy
(backward) cut the proxyless_mobile step (batch 32, 128px) from 3.06 s to 1.86 s (loaded machine;
plain autodiff of the shifted form: 6.8 s).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pnas_jax.errors import UserValueError
from pnas_jax.layers import native

IMPLS = ("auto", "lax", "native", "shift", "shift_autodiff")


def output_size(size: int, kernel: int, stride: int) -> int:
  """Spatial output size with symmetric padding kernel // 2."""
  pad = kernel // 2
  return (size + 2 * pad - kernel) // stride + 1


def depthwise_conv_lax(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """Reference implementation: a grouped lax convolution."""
  k, _, c = w.shape
  pad = k // 2
  return lax.conv_general_dilated(
      x,
      w.reshape(k, k, 1, c),
      window_strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c,
  )


def _pad_hw(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _tap(xp: jax.Array, u: int, v: int, stride: int, ho: int, wo: int) -> jax.Array:
  """xp[:, u + stride * i, v + stride * j, :] for i < ho, j < wo."""
  b, _, _, c = xp.shape
  return lax.slice(
      xp,
      (0, u, v, 0),
      (b, u + (ho - 1) * stride + 1, v + (wo - 1) * stride + 1, c),
      (1, stride, stride, 1),
  )


def _shifted_sum(xp: jax.Array, w: jax.Array, stride: int, ho: int, wo: int) -> jax.Array:
  """sum_{u, v} xp[:, u + s*i, v + s*j, :] * w[u, v] for an already padded xp."""
  k = w.shape[0]
  y = None
  for u in range(k):
    for v in range(k):
      term = _tap(xp, u, v, stride, ho, wo) * w[u, v]
      y = term if y is None else y + term
  return y


def _forward(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  k = w.shape[0]
  _, h, wd, _ = x.shape
  return _shifted_sum(
      _pad_hw(x, k // 2), w, stride, output_size(h, k, stride), output_size(wd, k, stride)
  )


def depthwise_conv_shift_autodiff(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """k*k strided slices of the padded input, each scaled by one kernel tap and summed."""
  return _forward(x, w, stride)


def _input_grad(dy: jax.Array, w: jax.Array, stride: int, h: int, wd: int) -> jax.Array:
  """dL/dx: a stride-1 correlation of the zero-dilated, padded dy with the flipped kernel."""
  k = w.shape[0]
  lo = k - 1 - k // 2
  _, ho, wo, _ = dy.shape
  hi_h = h + k - 1 - lo - ((ho - 1) * stride + 1)
  hi_w = wd + k - 1 - lo - ((wo - 1) * stride + 1)
  zero = jnp.zeros((), dy.dtype)
  dyp = lax.pad(dy, zero, ((0, 0, 0), (lo, hi_h, stride - 1), (lo, hi_w, stride - 1), (0, 0, 0)))
  return _shifted_sum(dyp, w[::-1, ::-1], 1, h, wd)


def _input_grad_polyphase(dy: jax.Array, w: jax.Array, stride: int, h: int, wd: int) -> jax.Array:
  """dL/dx for stride s > 1: one shifted sum per output phase, only over taps of that phase.

  dx[s*m + r, s*n + q] = sum_{u = r + p (mod s), v = q + p (mod s)}
      dy[m + (r + p - u) / s, n + (q + p - v) / s] * w[u, v]   (dy zero out of range),
  computed for the s*s phases on dy itself and interleaved: 1/s^2 of the dilated form's work.
  """
  k = w.shape[0]
  p = k // 2
  b, ho, wo, c = dy.shape
  mh, mw = -(-h // stride), -(-wd // stride)
  offs = [
      [((r + p - u) // stride, u) for u in range(k) if (r + p - u) % stride == 0]
      for r in range(stride)
  ]
  ds = [d for taps in offs for d, _ in taps]
  lo = max(0, -min(ds))
  hi_h = max(0, max(ds) + mh - ho)
  hi_w = max(0, max(ds) + mw - wo)
  zero = jnp.zeros((), dy.dtype)
  dyp = lax.pad(dy, zero, ((0, 0, 0), (lo, hi_h, 0), (lo, hi_w, 0), (0, 0, 0)))
  rows = []
  for r in range(stride):
    cols = []
    for q in range(stride):
      acc = jnp.zeros((b, mh, mw, c), dy.dtype)
      terms = [
          lax.slice(dyp, (0, lo + du, lo + dv, 0), (b, lo + du + mh, lo + dv + mw, c)) * w[u, v]
          for du, u in offs[r]
          for dv, v in offs[q]
      ]
      if terms:
        acc = functools.reduce(lambda a, t: a + t, terms)
      cols.append(acc)
    rows.append(jnp.stack(cols, axis=3))
  dx = jnp.stack(rows, axis=2).reshape(b, mh * stride, mw * stride, c)
  return dx[:, :h, :wd]


def _sum_over_batch(terms: list[jax.Array]) -> tuple[jax.Array, ...]:
  """One variadic reduction over axis 0: XLA fuses the tap slices and products into it."""
  zeros = [jnp.zeros((), t.dtype) for t in terms]
  add = lambda a, b: tuple(p + q for p, q in zip(a, b, strict=True))
  return lax.reduce(terms, zeros, add, (0,))


def _kernel_grad(x: jax.Array, dy: jax.Array, k: int, stride: int) -> jax.Array:
  """dL/dw[u, v, c] = sum_{b, i, j} x_pad[b, s*i + u, s*j + v, c] * dy[b, i, j, c]."""
  _, ho, wo, c = dy.shape
  xp = _pad_hw(x, k // 2)
  taps = [(u, v) for u in range(k) for v in range(k)]
  group = len(taps) if k <= 3 else k
  partial = []
  for g in range(0, len(taps), group):
    terms = [_tap(xp, u, v, stride, ho, wo) * dy for u, v in taps[g : g + group]]
    partial.extend(_sum_over_batch(terms))
  return jnp.sum(jnp.stack(partial), axis=(1, 2)).reshape(k, k, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_shift(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """Shifted multiply-adds with a hand-written VJP (see the module docstring)."""
  return _forward(x, w, stride)


def _shift_fwd(x, w, stride):
  # Materialise x once: otherwise XLA recomputes its producers inside each of the k*k taps.
  x = lax.optimization_barrier(x)
  return _forward(x, w, stride), (x, w)


def _shift_bwd(stride, res, dy):
  x, w = res
  dy = lax.optimization_barrier(dy)
  if stride == 1:
    dx = _input_grad(dy, w, stride, x.shape[1], x.shape[2])
  else:
    dx = _input_grad_polyphase(dy, w, stride, x.shape[1], x.shape[2])
  dw = _kernel_grad(x, dy, w.shape[0], stride)
  return dx.astype(x.dtype), dw.astype(w.dtype)


depthwise_conv_shift.defvjp(_shift_fwd, _shift_bwd)


def _native_call(target: str, out_shape: tuple[int, ...], a: jax.Array, b: jax.Array,
                 stride: int) -> jax.Array:
  out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(a, b, stride=np.int64(stride))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_native(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """The C++ loops of layers/native (XLA FFI custom calls, float32, CPU) with their own VJP."""
  b, h, wd, c = x.shape
  k = w.shape[0]
  shape = (b, output_size(h, k, stride), output_size(wd, k, stride), c)
  return _native_call("pnas_depthwise_forward", shape, x, w, stride)


def _native_fwd(x, w, stride):
  return depthwise_conv_native(x, w, stride), (x, w)


def _native_bwd(stride, res, dy):
  x, w = res
  dx = _native_call("pnas_depthwise_input_grad", x.shape, dy, w, stride)
  dw = _native_call("pnas_depthwise_kernel_grad", w.shape, x, dy, stride)
  return dx, dw


depthwise_conv_native.defvjp(_native_fwd, _native_bwd)

_IMPL_FNS = {
    "lax": depthwise_conv_lax,
    "native": depthwise_conv_native,
    "shift": depthwise_conv_shift,
    "shift_autodiff": depthwise_conv_shift_autodiff,
}


def resolve_impl(impl: str, dtype: jnp.dtype = jnp.float32) -> str:
  """'auto' -> on CPU 'native' for float32 where its kernels built (layers/native.py), else 'shift';
  'lax' elsewhere. An explicit 'native' that cannot run raises, saying why."""
  if impl not in IMPLS:
    raise UserValueError(f"unknown depthwise impl {impl!r}; valid: {', '.join(IMPLS)}")
  cpu_f32 = jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32
  if impl == "auto":
    if not cpu_f32:
      return "shift" if jax.default_backend() == "cpu" else "lax"
    return "native" if native.available() else "shift"
  if impl == "native" and not (cpu_f32 and native.available()):
    why = native.why_unavailable() or (
        f"it runs float32 on CPU only (backend {jax.default_backend()}, dtype {jnp.dtype(dtype)})")
    raise UserValueError(f"depthwise impl 'native' cannot run: {why}; use dw_impl='auto'")
  return impl


def depthwise_conv(x: jax.Array, w: jax.Array, stride: int, impl: str = "auto") -> jax.Array:
  """Depthwise kxk convolution, NHWC input, (k, k, C) kernel, padding k // 2.

  Args:
    x: (B, H, W, C) input.
    w: (k, k, C) kernel, k odd.
    stride: spatial stride s (same along H and W).
    impl: one of IMPLS; "auto" picks the fast one for the default backend.

  Returns:
    (B, Ho, Wo, C) with Ho = (H + 2 * (k // 2) - k) // s + 1, y = sum_{u,v} x_pad[s*i+u, s*j+v] w[u,v].
  """
  return _IMPL_FNS[resolve_impl(impl, x.dtype)](x, w, stride)
