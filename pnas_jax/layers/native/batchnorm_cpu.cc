// Training-mode BatchNorm over the last (channel) axis on CPU, with an optional fused ReLU6, as two
// XLA FFI custom calls: forward and backward.
//
// x viewed as (N, C): N = product of the leading dimensions (batch and spatial positions).
// Forward, per channel c (flax's "fast variance", biased):
//   mu_c = (1/N) sum_i x_ic,  var_c = (1/N) sum_i x_ic^2 - mu_c^2,  r_c = 1 / sqrt(var_c + eps)
//   z_ic = (x_ic - mu_c) * (r_c * gamma_c) + beta_c,
//   y_ic = z_ic or relu6(z_ic) = min(max(z, 0), 6)
// Backward, with xhat_ic = (x_ic - mu_c) r_c, g_ic = dy_ic masked by relu6' (1 where 0 < z < 6, as
// jax.nn.relu6's derivative), and the cotangents dmu, dvar of the returned statistics:
//   dbeta_c = sum_i g_ic,  dgamma_c = sum_i g_ic xhat_ic
//   dx_ic = gamma_c r_c (g_ic - dbeta_c / N - xhat_ic dgamma_c / N)
//           + dmu_c / N + 2 dvar_c xhat_ic / (r_c N)
//
// Each call makes two passes over the data: a per-channel reduction (sum x, sum x^2; or sum g,
// sum g xhat), then the element-wise output. XLA:CPU compiles the same graph into several loop
// fusions and column reductions (four to six passes); these keep two. The rows are split over XLA's
// intra-op thread pool. The sums are shifted by the first row (sum of x - x_0c and its square,
// so a large mean does not cancel the variance) and accumulated in float over blocks of 256 rows,
// then in double. Built by pnas_jax/layers/native.py; tested against flax's BatchNorm in
// tests/test_batchnorm.py.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using pnas::Chunks;
using pnas::ForRanges;

constexpr int64_t kFloatRows = 256;  // rows summed in float before the sums move to double

struct Shape {
  int64_t n, c;
};

ffi::Error GetShape(ffi::Span<const int64_t> x_dims, int64_t params, Shape* s) {
  if (x_dims.size() < 1) return ffi::Error::InvalidArgument("batch norm: x must have rank >= 1");
  s->c = x_dims.back();
  s->n = 1;
  for (size_t d = 0; d + 1 < x_dims.size(); ++d) s->n *= x_dims[d];
  if (params != s->c) {
    return ffi::Error::InvalidArgument("batch norm: scale / bias / statistics must have C entries");
  }
  if (s->n < 1) return ffi::Error::InvalidArgument("batch norm: no rows to normalise");
  return ffi::Error::Success();
}

// Splits rows [0, n) into chunks and returns, per channel, the double sums over all rows of
// a(i, c) and b(i, c), where fill(lo, hi, a, b) adds rows [lo, hi) into float arrays a, b (C each).
template <typename Fill>
void ChannelSums(ffi::ThreadPool& pool, const Shape& s, const Fill& fill, std::vector<double>* sa,
                 std::vector<double>* sb) {
  const int64_t chunks = Chunks(s.n, pool), c = s.c;
  std::vector<double> partial(static_cast<size_t>(2 * chunks * c), 0.0);
  ForRanges(pool, s.n, chunks, [&](int64_t chunk, int64_t lo, int64_t hi) {
    std::vector<float> a(c), b(c);
    double* da = partial.data() + 2 * chunk * c;
    double* db = da + c;
    for (int64_t r0 = lo; r0 < hi; r0 += kFloatRows) {
      std::fill(a.begin(), a.end(), 0.0f);
      std::fill(b.begin(), b.end(), 0.0f);
      fill(r0, std::min(hi, r0 + kFloatRows), a.data(), b.data());
      for (int64_t k = 0; k < c; ++k) {
        da[k] += a[k];
        db[k] += b[k];
      }
    }
  });
  sa->assign(c, 0.0);
  sb->assign(c, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const double* da = partial.data() + 2 * chunk * c;
    for (int64_t k = 0; k < c; ++k) {
      (*sa)[k] += da[k];
      (*sb)[k] += da[c + k];
    }
  }
}

// dy where 0 < z < 6 (ReLU6's derivative, as jax.nn.relu6's), else 0; branch-free, so it
// vectorizes.
inline float Relu6Grad(float dy, float z) { return ((z > 0.0f) & (z < 6.0f)) ? dy : 0.0f; }

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var, float epsilon,
                   int64_t relu6) {
  Shape s;
  if (auto err = GetShape(x.dimensions(), scale.element_count(), &s); !err.success()) return err;
  const int64_t c = s.c;
  const float* __restrict xd = x.typed_data();
  const float* __restrict shift = xd;  // the first row
  std::vector<double> s1, s2;
  ChannelSums(
      pool, s,
      [&](int64_t lo, int64_t hi, float* __restrict a, float* __restrict b) {
        for (int64_t i = lo; i < hi; ++i) {
          const float* __restrict row = xd + i * c;
          for (int64_t k = 0; k < c; ++k) {
            const float v = row[k] - shift[k];
            a[k] += v;
            b[k] += v * v;
          }
        }
      },
      &s1, &s2);
  std::vector<float> mu(c), mul(c);
  const float* gamma = scale.typed_data();
  for (int64_t k = 0; k < c; ++k) {
    const double m = s1[k] / s.n;
    const double v = std::max(0.0, s2[k] / s.n - m * m);
    mu[k] = static_cast<float>(shift[k] + m);
    mean->typed_data()[k] = mu[k];
    var->typed_data()[k] = static_cast<float>(v);
    mul[k] = gamma[k] / std::sqrt(static_cast<float>(v) + epsilon);
  }
  const float* __restrict beta = bias.typed_data();
  const float* __restrict mup = mu.data();
  const float* __restrict mulp = mul.data();
  float* __restrict yd = y->typed_data();
  ForRanges(pool, s.n, Chunks(s.n, pool), [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* __restrict row = xd + i * c;
      float* __restrict out = yd + i * c;
      if (relu6) {
        for (int64_t k = 0; k < c; ++k) {
          out[k] = std::min(std::max((row[k] - mup[k]) * mulp[k] + beta[k], 0.0f), 6.0f);
        }
      } else {
        for (int64_t k = 0; k < c; ++k) out[k] = (row[k] - mup[k]) * mulp[k] + beta[k];
      }
    }
  });
  return ffi::Error::Success();
}

// The backward's two passes; kRelu6 selects the masked g at compile time (both loops vectorize).
template <bool kRelu6>
void BackwardPasses(ffi::ThreadPool& pool, const Shape& s, const float* __restrict xd,
                    const float* __restrict dyd, const float* __restrict mu,
                    const float* __restrict gamma, const float* __restrict beta,
                    const float* __restrict var, const float* __restrict dmean,
                    const float* __restrict dvar, float epsilon, float* __restrict dxd,
                    float* __restrict dscale, float* __restrict dbias) {
  const int64_t c = s.c;
  std::vector<float> r(c), mul(c);  // mul as in the forward, so the ReLU6 mask sees the same z
  for (int64_t k = 0; k < c; ++k) {
    const float sd = std::sqrt(var[k] + epsilon);
    r[k] = 1.0f / sd;
    mul[k] = gamma[k] / sd;
  }
  const float* __restrict rp = r.data();
  const float* __restrict mulp = mul.data();
  std::vector<double> sg, sgx;
  ChannelSums(
      pool, s,
      [&](int64_t lo, int64_t hi, float* __restrict a, float* __restrict b) {
        for (int64_t i = lo; i < hi; ++i) {
          const float* __restrict row = xd + i * c;
          const float* __restrict grow = dyd + i * c;
          for (int64_t k = 0; k < c; ++k) {
            const float xhat = (row[k] - mu[k]) * rp[k];
            const float g =
                kRelu6 ? Relu6Grad(grow[k], (row[k] - mu[k]) * mulp[k] + beta[k]) : grow[k];
            a[k] += g;
            b[k] += g * xhat;
          }
        }
      },
      &sg, &sgx);
  // dx = ca * g + cb * xhat + cc per channel.
  std::vector<float> ca(c), cb(c), cc(c);
  const double n = static_cast<double>(s.n);
  for (int64_t k = 0; k < c; ++k) {
    dbias[k] = static_cast<float>(sg[k]);
    dscale[k] = static_cast<float>(sgx[k]);
    const double a = static_cast<double>(gamma[k]) * rp[k];
    ca[k] = static_cast<float>(a);
    cb[k] = static_cast<float>(-a * sgx[k] / n + 2.0 * dvar[k] / (rp[k] * n));
    cc[k] = static_cast<float>(-a * sg[k] / n + dmean[k] / n);
  }
  const float* __restrict cap = ca.data();
  const float* __restrict cbp = cb.data();
  const float* __restrict ccp = cc.data();
  ForRanges(pool, s.n, Chunks(s.n, pool), [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* __restrict row = xd + i * c;
      const float* __restrict grow = dyd + i * c;
      float* __restrict out = dxd + i * c;
      for (int64_t k = 0; k < c; ++k) {
        const float xhat = (row[k] - mu[k]) * rp[k];
        const float g =
            kRelu6 ? Relu6Grad(grow[k], (row[k] - mu[k]) * mulp[k] + beta[k]) : grow[k];
        out[k] = cap[k] * g + cbp[k] * xhat + ccp[k];
      }
    }
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                    ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> dmean, ffi::Buffer<ffi::F32> dvar,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                    ffi::ResultBuffer<ffi::F32> dbias, float epsilon, int64_t relu6) {
  Shape s;
  if (auto err = GetShape(x.dimensions(), scale.element_count(), &s); !err.success()) return err;
  auto passes = relu6 ? BackwardPasses<true> : BackwardPasses<false>;
  passes(pool, s, x.typed_data(), dy.typed_data(), mean.typed_data(), scale.typed_data(),
         bias.typed_data(), var.typed_data(), dmean.typed_data(), dvar.typed_data(), epsilon,
         dx->typed_data(), dscale->typed_data(), dbias->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PnasBatchNormForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // var
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu6"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PnasBatchNormBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // var
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dmean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dvar
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbias
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu6"));
