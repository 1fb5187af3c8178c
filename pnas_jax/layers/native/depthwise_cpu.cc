// Depthwise convolution on CPU as XLA FFI custom calls: forward, input gradient, kernel gradient.
//
// NHWC input x (B, H, W, C), kernel w (k, k, C), stride s, symmetric padding p = k / 2:
//   y[b, i, j, c]  = sum_{u, v < k} x[b, s*i + u - p, s*j + v - p, c] * w[u, v, c]   (x = 0 outside)
//   dx[b, a, e, c] = sum_{u, v: s | (a + p - u), s | (e + p - v)}
//                        dy[b, (a + p - u) / s, (e + p - v) / s, c] * w[u, v, c]   (dy = 0 outside)
//   dw[u, v, c]    = sum_{b, i, j} x[b, s*i + u - p, s*j + v - p, c] * dy[b, i, j, c]
//
// Each loop nest works on blocks of 16 (then 8, then 1) consecutive channels (contiguous in NHWC)
// held in SIMD registers: an output block accumulates its k*k taps in a register and is stored
// once, and the kernel gradient sums one tap over a whole row in a register. The work is split
// over rows (b, row) across XLA's intra-op thread pool; the kernel gradient keeps one (k, k, C)
// accumulator per chunk of rows and sums them at the end. Accumulating each tap into the output
// in memory instead (three loads and a store per multiply-add) was 1.3-2.6x slower here.
// Built by pnas_jax/layers/native.py; tested against lax.conv in tests/test_depthwise.py.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using pnas::Chunks;
using pnas::ForRanges;

struct Geometry {
  int64_t b, h, w, c, k, ho, wo, s, p;
};

// W consecutive channels as one value: a GCC/Clang vector (one or two SIMD registers) or a float.
template <int W>
struct Lanes {
  typedef float V __attribute__((vector_size(4 * W)));
};
template <>
struct Lanes<1> {
  typedef float V;
};

template <typename V>
inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
inline void Store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// body(lanes, c0) for channel blocks [c0, c0 + W) covering [0, c): W = 16 while they fit, then 8,
// then single channels; `lanes` is std::integral_constant<int, W>.
template <typename F>
inline void ForChannelBlocks(int64_t c, const F& body) {
  int64_t c0 = 0;
  for (; c0 + 16 <= c; c0 += 16) body(std::integral_constant<int, 16>{}, c0);
  for (; c0 + 8 <= c; c0 += 8) body(std::integral_constant<int, 8>{}, c0);
  for (; c0 < c; ++c0) body(std::integral_constant<int, 1>{}, c0);
}

// The rows below keep one output vector (or, in the kernel gradient, one tap's accumulator) in a
// register while the k*k taps (or the row's positions) are summed into it, and store it once:
// two loads per multiply-add. K and S are the kernel size and stride when known at compile time
// (the loops over taps unroll), 0 for "read them from g".

// y[b, i, :, :] (output row i of image b).
template <int K, int S>
struct ForwardRow {
  static void Run(const Geometry& g, const float* __restrict x, const float* __restrict w,
                  float* __restrict y, int64_t b, int64_t i) {
    const int64_t k = K ? K : g.k, s = S ? S : g.s, p = k / 2, c = g.c;
    const float* image = x + b * g.h * g.w * c;
    float* yrow = y + ((b * g.ho + i) * g.wo) * c;
    ForChannelBlocks(c, [&](auto lanes, int64_t c0) {
      using V = typename Lanes<decltype(lanes)::value>::V;
      for (int64_t j = 0; j < g.wo; ++j) {
        V acc = {};
        for (int64_t u = 0; u < k; ++u) {
          const int64_t r = s * i + u - p;
          if (r < 0 || r >= g.h) continue;
          const float* xrow = image + r * g.w * c + c0;
          const float* taps = w + u * k * c + c0;
          for (int64_t v = 0; v < k; ++v) {
            const int64_t col = s * j + v - p;
            if (col < 0 || col >= g.w) continue;
            acc += Load<V>(xrow + col * c) * Load<V>(taps + v * c);
          }
        }
        Store(yrow + j * c + c0, acc);
      }
    });
  }
};

// dx[b, a, :, :] (input row a of image b).
template <int K, int S>
struct InputGradRow {
  static void Run(const Geometry& g, const float* __restrict dy, const float* __restrict w,
                  float* __restrict dx, int64_t b, int64_t a) {
    const int64_t k = K ? K : g.k, s = S ? S : g.s, p = k / 2, c = g.c;
    const float* image = dy + b * g.ho * g.wo * c;
    float* dxrow = dx + ((b * g.h + a) * g.w) * c;
    ForChannelBlocks(c, [&](auto lanes, int64_t c0) {
      using V = typename Lanes<decltype(lanes)::value>::V;
      for (int64_t e = 0; e < g.w; ++e) {
        V acc = {};
        for (int64_t u = 0; u < k; ++u) {
          const int64_t num_i = a + p - u;
          if (num_i < 0 || num_i % s != 0 || num_i / s >= g.ho) continue;
          const float* dyrow = image + (num_i / s) * g.wo * c + c0;
          const float* taps = w + u * k * c + c0;
          for (int64_t v = 0; v < k; ++v) {
            const int64_t num_j = e + p - v;
            if (num_j < 0 || num_j % s != 0 || num_j / s >= g.wo) continue;
            acc += Load<V>(dyrow + (num_j / s) * c) * Load<V>(taps + v * c);
          }
        }
        Store(dxrow + e * c + c0, acc);
      }
    });
  }
};

// Adds output row (b, i)'s contribution to acc (k, k, C).
template <int K, int S>
struct KernelGradRow {
  static void Run(const Geometry& g, const float* __restrict x, const float* __restrict dy,
                  float* __restrict acc, int64_t b, int64_t i) {
    const int64_t k = K ? K : g.k, s = S ? S : g.s, p = k / 2, c = g.c;
    const float* image = x + b * g.h * g.w * c;
    const float* dyrow = dy + ((b * g.ho + i) * g.wo) * c;
    ForChannelBlocks(c, [&](auto lanes, int64_t c0) {
      using V = typename Lanes<decltype(lanes)::value>::V;
      for (int64_t u = 0; u < k; ++u) {
        const int64_t r = s * i + u - p;
        if (r < 0 || r >= g.h) continue;
        const float* xrow = image + r * g.w * c + c0;
        for (int64_t v = 0; v < k; ++v) {
          // The output columns j whose input column s * j + v - p lies in [0, w).
          const int64_t lo = p > v ? (p - v + s - 1) / s : 0;
          const int64_t last = g.w - 1 + p - v;
          const int64_t hi = last < 0 ? 0 : std::min<int64_t>(g.wo, last / s + 1);
          V sum = {};
          for (int64_t j = lo; j < hi; ++j) {
            sum += Load<V>(xrow + (s * j + v - p) * c) * Load<V>(dyrow + j * c + c0);
          }
          float* out = acc + (u * k + v) * c + c0;
          Store(out, Load<V>(out) + sum);
        }
      }
    });
  }
};

using RowFn = void (*)(const Geometry&, const float*, const float*, float*, int64_t, int64_t);

// The instantiation of Row for g's kernel size and stride (3, 5, 7 x 1, 2), else the generic one.
template <template <int, int> class Row>
RowFn RowFor(const Geometry& g) {
  if (g.s == 1 && g.k == 3) return &Row<3, 1>::Run;
  if (g.s == 1 && g.k == 5) return &Row<5, 1>::Run;
  if (g.s == 1 && g.k == 7) return &Row<7, 1>::Run;
  if (g.s == 2 && g.k == 3) return &Row<3, 2>::Run;
  if (g.s == 2 && g.k == 5) return &Row<5, 2>::Run;
  if (g.s == 2 && g.k == 7) return &Row<7, 2>::Run;
  return &Row<0, 0>::Run;
}

// Calls row(b, r) for every row r < rows of every image, in chunks over the thread pool.
template <typename F>
void ForRows(ffi::ThreadPool& pool, int64_t batch, int64_t rows, const F& row) {
  const int64_t total = batch * rows;
  ForRanges(pool, total, Chunks(total, pool), [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) row(t / rows, t % rows);
  });
}

// Checks the shapes and stride of one call and fills *g from them.
ffi::Error GetGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                       ffi::Span<const int64_t> y, int64_t stride, Geometry* g) {
  if (x.size() != 4 || w.size() != 3 || y.size() != 4) {
    return ffi::Error::InvalidArgument("depthwise: want x (B, H, W, C), w (k, k, C), y 4-D");
  }
  if (w[0] != w[1] || w[0] % 2 != 1 || w[2] != x[3] || y[3] != x[3] || y[0] != x[0] ||
      stride < 1) {
    return ffi::Error::InvalidArgument("depthwise: inconsistent shapes or stride");
  }
  *g = Geometry{x[0], x[1], x[2], x[3], w[0], y[1], y[2], stride, w[0] / 2};
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  Geometry g;
  if (auto err = GetGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride, &g);
      !err.success()) {
    return err;
  }
  const float *xd = x.typed_data(), *wd = w.typed_data();
  float* yd = y->typed_data();
  const RowFn row = RowFor<ForwardRow>(g);
  ForRows(pool, g.b, g.ho, [&](int64_t b, int64_t i) { row(g, xd, wd, yd, b, i); });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t stride) {
  Geometry g;
  if (auto err = GetGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), stride, &g);
      !err.success()) {
    return err;
  }
  const float *dyd = dy.typed_data(), *wd = w.typed_data();
  float* dxd = dx->typed_data();
  const RowFn row = RowFor<InputGradRow>(g);
  ForRows(pool, g.b, g.h, [&](int64_t b, int64_t a) { row(g, dyd, wd, dxd, b, a); });
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  Geometry g;
  if (auto err = GetGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), stride, &g);
      !err.success()) {
    return err;
  }
  const float *xd = x.typed_data(), *dyd = dy.typed_data();
  const int64_t total = g.b * g.ho, size = g.k * g.k * g.c;
  const int64_t n = std::min<int64_t>(total, std::max<int64_t>(1, pool.num_threads()));
  std::vector<float> partial(static_cast<size_t>(n * size), 0.0f);
  const RowFn row = RowFor<KernelGradRow>(g);
  ForRanges(pool, total, n, [&](int64_t chunk, int64_t lo, int64_t hi) {
    float* acc = partial.data() + chunk * size;
    for (int64_t t = lo; t < hi; ++t) row(g, xd, dyd, acc, t / g.ho, t % g.ho);
  });
  float* out = dw->typed_data();
  std::memcpy(out, partial.data(), sizeof(float) * size);
  for (int64_t chunk = 1; chunk < n; ++chunk) {
    const float* acc = partial.data() + chunk * size;
    for (int64_t t = 0; t < size; ++t) out[t] += acc[t];
  }
  return ffi::Error::Success();
}

}  // namespace

// Every handler: the intra-op thread pool, two float32 operands, one float32 result, the stride.
#define PNAS_DEPTHWISE_HANDLER(symbol, fn)                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, fn,                                \
                                ffi::Ffi::Bind()                           \
                                    .Ctx<ffi::ThreadPool>()                \
                                    .Arg<ffi::Buffer<ffi::F32>>()          \
                                    .Arg<ffi::Buffer<ffi::F32>>()          \
                                    .Ret<ffi::Buffer<ffi::F32>>()          \
                                    .Attr<int64_t>("stride"))

PNAS_DEPTHWISE_HANDLER(PnasDepthwiseForward, Forward);
PNAS_DEPTHWISE_HANDLER(PnasDepthwiseInputGrad, InputGrad);
PNAS_DEPTHWISE_HANDLER(PnasDepthwiseKernelGrad, KernelGrad);
