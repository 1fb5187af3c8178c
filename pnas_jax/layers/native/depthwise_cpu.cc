// Depthwise convolution on CPU as XLA FFI custom calls: forward, input gradient, kernel gradient.
//
// NHWC input x (B, H, W, C), kernel w (k, k, C), stride s, symmetric padding p = k / 2:
//   y[b, i, j, c]  = sum_{u, v < k} x[b, s*i + u - p, s*j + v - p, c] * w[u, v, c]   (x = 0 outside)
//   dx[b, a, e, c] = sum_{u, v: s | (a + p - u), s | (e + p - v)}
//                        dy[b, (a + p - u) / s, (e + p - v) / s, c] * w[u, v, c]   (dy = 0 outside)
//   dw[u, v, c]    = sum_{b, i, j} x[b, s*i + u - p, s*j + v - p, c] * dy[b, i, j, c]
//
// Each loop nest keeps the channel axis innermost (contiguous in NHWC) so the compiler vectorises
// it, and splits the work over rows of the output (b, row) across XLA's intra-op thread pool; the
// kernel gradient keeps one (k, k, C) accumulator per chunk of rows and sums them at the end.
// Built by pnas_jax/layers/native.py; tested against lax.conv in tests/test_depthwise.py.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs body(chunk) for chunk in [0, n): the caller and up to pool.num_threads() pool tasks claim
// chunks from one counter, so the call finishes even if no pool thread ever runs (the caller does
// all chunks). Tasks that start after every chunk is claimed return without touching `body`.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& body) {
  int64_t threads = std::min<int64_t>(pool.num_threads(), n - 1);
  if (threads <= 0) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &body]() {
    int64_t finished = 0;
    for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
      body(i);
      ++finished;
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->done += finished;
      if (state->done == n) state->cv.notify_all();
    }
  };
  for (int64_t t = 0; t < threads; ++t) {
    pool.Schedule(decltype(work)(work));  // each task owns a copy (Schedule takes an rvalue)
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == n; });
}

struct Geometry {
  int64_t b, h, w, c, k, ho, wo, s, p;
};

// Row-chunk count: enough chunks to balance the threads, each a few rows.
int64_t Chunks(int64_t rows, ffi::ThreadPool& pool) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * threads));
}

void ForwardRow(const Geometry& g, const float* x, const float* w, float* y, int64_t b,
                int64_t i) {
  float* yrow = y + ((b * g.ho + i) * g.wo) * g.c;
  std::memset(yrow, 0, sizeof(float) * g.wo * g.c);
  for (int64_t u = 0; u < g.k; ++u) {
    const int64_t r = g.s * i + u - g.p;
    if (r < 0 || r >= g.h) continue;
    const float* xrow = x + ((b * g.h + r) * g.w) * g.c;
    for (int64_t j = 0; j < g.wo; ++j) {
      float* out = yrow + j * g.c;
      for (int64_t v = 0; v < g.k; ++v) {
        const int64_t col = g.s * j + v - g.p;
        if (col < 0 || col >= g.w) continue;
        const float* in = xrow + col * g.c;
        const float* tap = w + (u * g.k + v) * g.c;
        for (int64_t c = 0; c < g.c; ++c) out[c] += in[c] * tap[c];
      }
    }
  }
}

void InputGradRow(const Geometry& g, const float* dy, const float* w, float* dx, int64_t b,
                  int64_t a) {
  float* dxrow = dx + ((b * g.h + a) * g.w) * g.c;
  std::memset(dxrow, 0, sizeof(float) * g.w * g.c);
  for (int64_t u = 0; u < g.k; ++u) {
    const int64_t num_i = a + g.p - u;
    if (num_i < 0 || num_i % g.s != 0) continue;
    const int64_t i = num_i / g.s;
    if (i >= g.ho) continue;
    const float* dyrow = dy + ((b * g.ho + i) * g.wo) * g.c;
    for (int64_t e = 0; e < g.w; ++e) {
      float* out = dxrow + e * g.c;
      for (int64_t v = 0; v < g.k; ++v) {
        const int64_t num_j = e + g.p - v;
        if (num_j < 0 || num_j % g.s != 0) continue;
        const int64_t j = num_j / g.s;
        if (j >= g.wo) continue;
        const float* in = dyrow + j * g.c;
        const float* tap = w + (u * g.k + v) * g.c;
        for (int64_t c = 0; c < g.c; ++c) out[c] += in[c] * tap[c];
      }
    }
  }
}

// Adds row (b, i) of dy's contribution to acc (k, k, C).
void KernelGradRow(const Geometry& g, const float* x, const float* dy, float* acc, int64_t b,
                   int64_t i) {
  const float* dyrow = dy + ((b * g.ho + i) * g.wo) * g.c;
  for (int64_t u = 0; u < g.k; ++u) {
    const int64_t r = g.s * i + u - g.p;
    if (r < 0 || r >= g.h) continue;
    const float* xrow = x + ((b * g.h + r) * g.w) * g.c;
    for (int64_t j = 0; j < g.wo; ++j) {
      const float* grad = dyrow + j * g.c;
      for (int64_t v = 0; v < g.k; ++v) {
        const int64_t col = g.s * j + v - g.p;
        if (col < 0 || col >= g.w) continue;
        const float* in = xrow + col * g.c;
        float* out = acc + (u * g.k + v) * g.c;
        for (int64_t c = 0; c < g.c; ++c) out[c] += in[c] * grad[c];
      }
    }
  }
}

// Calls row(b, r) for every row r < rows of every image, in chunks over the thread pool.
template <typename F>
void ForRows(ffi::ThreadPool& pool, int64_t batch, int64_t rows, const F& row) {
  const int64_t total = batch * rows;
  const int64_t n = Chunks(total, pool);
  ParallelFor(pool, n, [&](int64_t chunk) {
    const int64_t lo = total * chunk / n, hi = total * (chunk + 1) / n;
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
  ForRows(pool, g.b, g.ho, [&](int64_t b, int64_t i) { ForwardRow(g, xd, wd, yd, b, i); });
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
  ForRows(pool, g.b, g.h, [&](int64_t b, int64_t a) { InputGradRow(g, dyd, wd, dxd, b, a); });
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
  ParallelFor(pool, n, [&](int64_t chunk) {
    float* acc = partial.data() + chunk * size;
    const int64_t lo = total * chunk / n, hi = total * (chunk + 1) / n;
    for (int64_t t = lo; t < hi; ++t) KernelGradRow(g, xd, dyd, acc, t / g.ho, t % g.ho);
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
