// CPU training kernels for BC-ResNet's memory-bound layers (kwskit.layers.fused).
//
// A BC-ResBlock's tail, y = ReLU(x + SubSpectralNorm(z) + broadcast(f1(mean_freq(...)))), costs
// a CPU more in passes over whole activations than in arithmetic. These kernels make one pass
// where PyTorch's ops make several:
//   residual_relu:  ReLU(x + a + b) with b (N, C, 1, T) broadcast over frequency; its backward
//                   masks the gradient and sums it over frequency for b in the same pass.
//   sub_band_norm:  training-mode BatchNorm per (channel, sub-band) (SubSpectralNorm; one band
//                   is BatchNorm2d), optionally followed by ReLU and/or returning the output's
//                   mean over frequency; its backward takes the frequency mean's gradient too.
// Tensors are contiguous (N, C, F, T), float32 or bfloat16 (held as uint16 bits and computed in
// float32); statistics are summed in float32 per row and in double across rows.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t u = uint32_t(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// v as a tensor of T holds it: bf16 rounds to nearest even, as torch does (NaN stays NaN).
// The kernels also round where PyTorch's unfused ops write a tensor (a bf16 sum of two
// activations, a bf16 frequency mean), so that a bf16 step computes the numbers the unfused
// step computes, not more precise ones (see kwskit.layers.fused).
template <typename T>
inline float held(float v);
template <>
inline float held<float>(float v) { return v; }
template <>
inline float held<uint16_t>(float v) {  // selects, not branches: it vectorises
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x00400000u) & 0xFFFF0000u : rounded;
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

// a value held<T> already rounded: the upper half of its bits, nothing to round
inline void store_held(float* p, int64_t i, float v) { p[i] = v; }
inline void store_held(uint16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  p[i] = uint16_t(u >> 16);
}

template <typename T>
inline void store(T* p, int64_t i, float v) { store_held(p, i, held<T>(v)); }

struct Shape {
  int64_t n, c, f, t, bands, band;  // band = f / bands rows per sub-band
  explicit Shape(const torch::Tensor& x, int64_t sub_bands = 1)
      : n(x.size(0)), c(x.size(1)), f(x.size(2)), t(x.size(3)), bands(sub_bands),
        band(x.size(2) / sub_bands) {}
  int64_t groups() const { return c * bands; }
  double per_group() const { return double(n * band * t); }
};

template <typename T>
T* ptr(const torch::Tensor& x) { return x.defined() ? reinterpret_cast<T*>(x.data_ptr()) : nullptr; }

void check(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.device().is_cpu(), name,
              " must be a contiguous 4-D CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16");
}

// Row kernels: one frequency row (T contiguous values) each, restrict-qualified and with the
// options as template parameters so that every loop vectorises.

template <typename T, bool HAS_X>
void residual_relu_row(const T* __restrict__ x, const T* __restrict__ a,
                       const float* __restrict__ b, T* __restrict__ y, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    // x + (a + b), rounded as two adds would round
    const float body = held<T>(load(a, t) + b[t]);
    const float v = HAS_X ? held<T>(load(x, t) + body) : body;
    store_held(y, t, v > 0.f ? v : 0.f);
  }
}

template <typename T>
void relu_grad_row(const T* __restrict__ grad, const T* __restrict__ y, T* __restrict__ g,
                   float* __restrict__ acc, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float gv = load(grad, t), yv = load(y, t);
    const float v = yv > 0.f ? gv : 0.f;
    store(g, t, v);
    acc[t] += v;
  }
}

// sum of a row and its sum of squares about the row's own mean (two passes over a row that
// is in cache: no cancellation where activations sit far from zero, as log-mel inputs do)
template <typename T>
void row_moments(const T* __restrict__ z, int64_t n, double& sum, double& sq) {
  float a = 0.f, b = 0.f;
  for (int64_t i = 0; i < n; ++i) a += load(z, i);
  const float mean = a / float(n);
  for (int64_t i = 0; i < n; ++i) {
    const float d = load(z, i) - mean;
    b += d * d;
  }
  sum += a;
  sq += double(b) + double(n) * double(mean) * double(mean);  // sum of squares, in double
}

template <typename T, bool RELU>
void norm_row(const T* __restrict__ z, T* __restrict__ y, float* __restrict__ acc, float mean,
              float k, float d, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    float v = held<T>((load(z, t) - mean) * k + d);
    if (RELU) v = v > 0.f ? v : 0.f;
    store_held(y, t, v);
    acc[t] += v;  // the frequency mean of the stored output
  }
}

// the gradient reaching the norm's output: grad_y + grad_m / F (gm: already / F), ReLU-masked
template <typename T, bool HAS_GM, bool RELU>
inline float out_grad(const T* __restrict__ gy, const float* __restrict__ gm,
                      const T* __restrict__ y, int64_t t) {
  float g = HAS_GM ? held<T>(load(gy, t) + gm[t]) : load(gy, t);  // as autograd sums them
  if (RELU) g = load(y, t) > 0.f ? g : 0.f;
  return g;
}

// sum of the gradient and of gradient * (z - mean)
template <typename T, bool HAS_GM, bool RELU>
void grad_sums_row(const T* __restrict__ gy, const float* __restrict__ gm,
                   const T* __restrict__ y, const T* __restrict__ z, float mean, int64_t n,
                   double& sum_g, double& sum_gc) {
  float a = 0.f, b = 0.f;
  for (int64_t t = 0; t < n; ++t) {
    const float g = out_grad<T, HAS_GM, RELU>(gy, gm, y, t);
    a += g;
    b += g * (load(z, t) - mean);
  }
  sum_g += a;
  sum_gc += b;
}

template <typename T, bool HAS_GM, bool RELU>
void grad_input_row(const T* __restrict__ gy, const float* __restrict__ gm,
                    const T* __restrict__ y, const T* __restrict__ z, T* __restrict__ gz,
                    float mean, float ka, float kb, float kc, int64_t n) {
  for (int64_t t = 0; t < n; ++t)
    store(gz, t, ka * out_grad<T, HAS_GM, RELU>(gy, gm, y, t) + kb * (load(z, t) - mean) + kc);
}

// ---- residual + ReLU ----------------------------------------------------------------------

template <typename T>
void residual_relu_fwd(const T* x, const T* a, const T* b, T* y, Shape s) {
  at::parallel_for(0, s.n * s.c, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> row(s.t);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t t = 0; t < s.t; ++t) row[t] = load(b, p * s.t + t);
      for (int64_t f = 0; f < s.f; ++f) {
        const int64_t o = (p * s.f + f) * s.t;
        if (x)
          residual_relu_row<T, true>(x + o, a + o, row.data(), y + o, s.t);
        else
          residual_relu_row<T, false>(nullptr, a + o, row.data(), y + o, s.t);
      }
    }
  });
}

template <typename T>
void residual_relu_bwd(const T* grad, const T* y, T* g, T* g_sum, Shape s) {
  at::parallel_for(0, s.n * s.c, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> acc(s.t);
    for (int64_t p = p0; p < p1; ++p) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t f = 0; f < s.f; ++f) {
        const int64_t o = (p * s.f + f) * s.t;
        relu_grad_row(grad + o, y + o, g + o, acc.data(), s.t);
      }
      for (int64_t t = 0; t < s.t; ++t) store(g_sum, p * s.t + t, acc[t]);
    }
  });
}

// ---- sub-band BatchNorm ---------------------------------------------------------------------

// Per-(channel, band) sums over a whole tensor: each thread walks a contiguous range of
// (batch, channel) planes, summing each band's rows in float, into its own double partials,
// reduced at the end (plane order streams memory; a loop per group would stride across it).
template <typename RowSums>
void group_sums(Shape s, double* out_a, double* out_b, RowSums&& row_sums) {
  const int64_t groups = s.groups();
  std::vector<double> partial(size_t(at::get_num_threads()) * 2 * groups, 0.0);
  at::parallel_for(0, s.n * s.c, 1, [&](int64_t p0, int64_t p1) {
    double* mine = partial.data() + size_t(at::get_thread_num()) * 2 * groups;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % s.c;
      for (int64_t band = 0; band < s.bands; ++band) {
        row_sums(p, band, mine[c * s.bands + band], mine[groups + c * s.bands + band]);
      }
    }
  });
  for (int64_t g = 0; g < groups; ++g) {
    double a = 0, b = 0;
    for (size_t t = 0; t < partial.size() / (2 * groups); ++t) {
      a += partial[t * 2 * groups + g];
      b += partial[t * 2 * groups + groups + g];
    }
    out_a[g] = a;
    out_b[g] = b;
  }
}

// per group: sum and sum of squares of z
template <typename T>
void norm_stats(const T* z, double* sum, double* sq, Shape s) {
  group_sums(s, sum, sq, [&](int64_t p, int64_t band, double& a, double& b) {
    row_moments(z + (p * s.f + band * s.band) * s.t, s.band * s.t, a, b);
  });
}

// y = z * scale + shift per group (then ReLU), and m = mean of y over frequency
template <typename T, bool RELU>
void norm_apply(const T* z, T* y, T* m, const float* mean, const float* scale,
                const float* shift, Shape s) {
  at::parallel_for(0, s.n * s.c, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> acc(s.t);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % s.c;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t band = 0; band < s.bands; ++band) {
        const int64_t g = c * s.bands + band;
        for (int64_t f = 0; f < s.band; ++f) {
          const int64_t o = (p * s.f + band * s.band + f) * s.t;
          norm_row<T, RELU>(z + o, y + o, acc.data(), mean[g], scale[g], shift[g], s.t);
        }
      }
      if (m)
        for (int64_t t = 0; t < s.t; ++t) store(m, p * s.t + t, held<T>(acc[t]) / float(s.f));
    }
  });
}

// grad_m / F of plane p (the frequency mean's gradient reaches every row), held as T
template <typename T>
void mean_grad_row(const T* gm, int64_t p, Shape s, std::vector<float>& row) {
  for (int64_t t = 0; t < s.t; ++t) row[t] = held<T>(load(gm, p * s.t + t) / float(s.f));
}

// per group: sum of the output gradient and of gradient * (z - mean)
template <typename T, bool HAS_GM, bool RELU>
void norm_grad_sums(const T* gy, const T* gm, const T* y, const T* z, const float* mean,
                    double* sum_g, double* sum_gc, Shape s) {
  std::vector<std::vector<float>> rows(size_t(at::get_num_threads()), std::vector<float>(s.t));
  group_sums(s, sum_g, sum_gc, [&](int64_t p, int64_t band, double& a, double& b) {
    std::vector<float>& row = rows[size_t(at::get_thread_num())];
    if (HAS_GM && band == 0) mean_grad_row(gm, p, s, row);  // bands run in order per plane
    const float mu = mean[(p % s.c) * s.bands + band];
    for (int64_t f = 0; f < s.band; ++f) {
      const int64_t o = (p * s.f + band * s.band + f) * s.t;
      grad_sums_row<T, HAS_GM, RELU>(gy + o, row.data(), RELU ? y + o : nullptr, z + o, mu, s.t,
                                     a, b);
    }
  });
}

// grad_z = ka * g + kb * (z - mean) + kc per group (the BatchNorm input gradient, expanded)
template <typename T, bool HAS_GM, bool RELU>
void norm_grad_input(const T* gy, const T* gm, const T* y, const T* z, T* gz, const float* mean,
                     const float* ka, const float* kb, const float* kc, Shape s) {
  at::parallel_for(0, s.n * s.c, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> row(s.t);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % s.c;
      if (HAS_GM) mean_grad_row(gm, p, s, row);
      for (int64_t band = 0; band < s.bands; ++band) {
        const int64_t k = c * s.bands + band;
        for (int64_t f = 0; f < s.band; ++f) {
          const int64_t o = (p * s.f + band * s.band + f) * s.t;
          grad_input_row<T, HAS_GM, RELU>(gy + o, row.data(), RELU ? y + o : nullptr, z + o,
                                          gz + o, mean[k], ka[k], kb[k], kc[k], s.t);
        }
      }
    }
  });
}

// calls body(T{}, HAS_GM, RELU) with the options as compile-time constants
template <typename T, typename F>
void with_options(bool has_gm, bool relu, F&& body) {
  if (has_gm && relu) body(std::true_type{}, std::true_type{});
  else if (has_gm) body(std::true_type{}, std::false_type{});
  else if (relu) body(std::false_type{}, std::true_type{});
  else body(std::false_type{}, std::false_type{});
}

template <typename F>
void dispatch(const torch::Tensor& x, F&& body) {
  if (x.scalar_type() == at::kBFloat16)
    body(uint16_t{});
  else
    body(float{});
}

}  // namespace

torch::Tensor residual_relu_forward(const c10::optional<torch::Tensor>& x, const torch::Tensor& a,
                                    const torch::Tensor& b) {
  check(a, "a");
  check(b, "b");
  TORCH_CHECK(b.size(2) == 1 && b.size(3) == a.size(3) && b.size(0) == a.size(0) &&
              b.size(1) == a.size(1) && b.scalar_type() == a.scalar_type(),
              "b must be (N, C, 1, T) like a");
  if (x) {
    check(*x, "x");
    TORCH_CHECK(x->sizes() == a.sizes() && x->scalar_type() == a.scalar_type(), "x must be like a");
  }
  auto y = torch::empty_like(a);
  dispatch(a, [&](auto tag) {
    using T = decltype(tag);
    residual_relu_fwd<T>(x ? ptr<T>(*x) : nullptr, ptr<T>(a), ptr<T>(b), ptr<T>(y), Shape(a));
  });
  return y;
}

std::vector<torch::Tensor> residual_relu_backward(const torch::Tensor& grad, const torch::Tensor& y) {
  check(y, "y");
  auto g_in = grad.to(y.scalar_type()).contiguous();
  auto g = torch::empty_like(y);
  auto g_sum = torch::empty({y.size(0), y.size(1), 1, y.size(3)}, y.options());
  dispatch(y, [&](auto tag) {
    using T = decltype(tag);
    residual_relu_bwd<T>(ptr<T>(g_in), ptr<T>(y), ptr<T>(g), ptr<T>(g_sum), Shape(y));
  });
  return {g, g_sum};
}

static void check_params(const torch::Tensor& p, const Shape& s, const char* name) {
  TORCH_CHECK(p.scalar_type() == at::kFloat && p.is_contiguous() && p.numel() == s.groups(), name,
              " must be float32 with channels x sub_bands entries");
}

static torch::Tensor per_group(const Shape& s) {
  return torch::empty({s.groups()}, torch::TensorOptions().dtype(torch::kFloat32));
}

// (y, freq mean of y or undefined, batch mean, batch invstd, unbiased batch variance)
std::vector<torch::Tensor> sub_band_norm_forward(const torch::Tensor& z, const torch::Tensor& weight,
                                                 const torch::Tensor& bias, int64_t sub_bands,
                                                 double eps, bool relu, bool freq_mean) {
  check(z, "z");
  TORCH_CHECK(sub_bands > 0 && z.size(2) % sub_bands == 0, "sub_bands must divide freq");
  const Shape s(z, sub_bands);
  check_params(weight, s, "weight");
  check_params(bias, s, "bias");
  std::vector<double> sum(s.groups()), sq(s.groups());
  dispatch(z, [&](auto tag) {
    using T = decltype(tag);
    norm_stats<T>(ptr<T>(z), sum.data(), sq.data(), s);
  });
  // the per-group numbers in plain loops: a few hundred values, not worth torch ops
  auto mean = per_group(s), invstd = per_group(s), unbiased = per_group(s);
  auto scale = per_group(s), shift = per_group(s);  // y = (z - mean) * scale + shift
  const double count = s.per_group();
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  for (int64_t g = 0; g < s.groups(); ++g) {
    const double mu = sum[g] / count, var = std::max(sq[g] / count - mu * mu, 0.0);
    const double is = 1.0 / std::sqrt(var + eps);
    mean.data_ptr<float>()[g] = float(mu);
    invstd.data_ptr<float>()[g] = float(is);
    unbiased.data_ptr<float>()[g] = float(var * count / std::max(count - 1.0, 1.0));
    scale.data_ptr<float>()[g] = float(w[g] * is);
    shift.data_ptr<float>()[g] = b[g];
  }
  auto y = torch::empty_like(z);
  torch::Tensor m;
  if (freq_mean) m = torch::empty({s.n, s.c, 1, s.t}, z.options());
  dispatch(z, [&](auto tag) {
    using T = decltype(tag);
    if (relu)
      norm_apply<T, true>(ptr<T>(z), ptr<T>(y), ptr<T>(m), mean.data_ptr<float>(),
                          scale.data_ptr<float>(), shift.data_ptr<float>(), s);
    else
      norm_apply<T, false>(ptr<T>(z), ptr<T>(y), ptr<T>(m), mean.data_ptr<float>(),
                           scale.data_ptr<float>(), shift.data_ptr<float>(), s);
  });
  return {y, m, mean, invstd, unbiased};
}

// (grad z, grad weight, grad bias); y (the saved output) only when the norm ended in ReLU
std::vector<torch::Tensor> sub_band_norm_backward(const torch::Tensor& grad_y,
                                                  const c10::optional<torch::Tensor>& grad_m,
                                                  const torch::Tensor& z,
                                                  const c10::optional<torch::Tensor>& y,
                                                  const torch::Tensor& weight,
                                                  const torch::Tensor& mean,
                                                  const torch::Tensor& invstd, int64_t sub_bands) {
  check(z, "z");
  const Shape s(z, sub_bands);
  check_params(weight, s, "weight");
  auto gy = grad_y.to(z.scalar_type()).contiguous();
  torch::Tensor gm, out;
  if (grad_m) gm = grad_m->to(z.scalar_type()).contiguous();
  if (y) out = y->contiguous();
  const float* mu = mean.data_ptr<float>();
  std::vector<double> sum_g(s.groups()), centred(s.groups());  // centred: sum g * (z - mean)
  dispatch(z, [&](auto tag) {
    using T = decltype(tag);
    with_options<T>(gm.defined(), out.defined(), [&](auto has_gm, auto relu) {
      norm_grad_sums<T, decltype(has_gm)::value, decltype(relu)::value>(
          ptr<T>(gy), ptr<T>(gm), ptr<T>(out), ptr<T>(z), mu, sum_g.data(), centred.data(), s);
    });
  });
  // dz = w*is*g - w*is^3*(z - mean)*centred/M - w*is*sum_g/M = ka*g + kb*(z - mean) + kc;
  // grad weight = centred * is, grad bias = sum_g
  auto ka = per_group(s), kb = per_group(s), kc = per_group(s);
  auto grad_w = per_group(s), grad_b = per_group(s);
  const double count = s.per_group();
  const float* w = weight.data_ptr<float>();
  for (int64_t g = 0; g < s.groups(); ++g) {
    const double is = invstd.data_ptr<float>()[g];
    ka.data_ptr<float>()[g] = float(w[g] * is);
    kb.data_ptr<float>()[g] = float(-w[g] * is * is * is * centred[g] / count);
    kc.data_ptr<float>()[g] = float(-w[g] * is * sum_g[g] / count);
    grad_w.data_ptr<float>()[g] = float(centred[g] * is);
    grad_b.data_ptr<float>()[g] = float(sum_g[g]);
  }
  auto gz = torch::empty_like(z);
  dispatch(z, [&](auto tag) {
    using T = decltype(tag);
    with_options<T>(gm.defined(), out.defined(), [&](auto has_gm, auto relu) {
      norm_grad_input<T, decltype(has_gm)::value, decltype(relu)::value>(
          ptr<T>(gy), ptr<T>(gm), ptr<T>(out), ptr<T>(z), ptr<T>(gz), mu, ka.data_ptr<float>(),
          kb.data_ptr<float>(), kc.data_ptr<float>(), s);
    });
  });
  return {gz, grad_w, grad_b};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("residual_relu_forward", &residual_relu_forward);
  m.def("residual_relu_backward", &residual_relu_backward);
  m.def("sub_band_norm_forward", &sub_band_norm_forward);
  m.def("sub_band_norm_backward", &sub_band_norm_backward);
}
