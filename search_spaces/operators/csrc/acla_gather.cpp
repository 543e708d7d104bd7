// Fused bilinear sampling + weighted sum of ACLA (arXiv 2203.03619), CPU kernel.
//
// out[b, i, j, :] = sum_s keep[b, s, i, j] * w[b, s, i, j] * Bilinear(V[ref(s), b], (j + dx, i + dy))
//
// values: (L, B, H, W, C) contiguous (channels last); dx, dy, w: (B, S, H, W) with the last three
// dimensions contiguous (any batch stride); keep: (B, S, H, W) bool of the same layout, or an
// undefined tensor (every slot kept); keys: slots per value map (slot s reads map ref(s)). Bilinear
// interpolation with pixel centres at integers and zero padding: a corner outside the map reads
// 0 (F.grid_sample(align_corners=False, padding_mode="zeros")); a point with a non-finite
// offset reads 0 with zero gradient. The Python side (acla_fused.py) owns the argument checks,
// the dtype policy, the autograd formula and the FLOPs count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

struct Geometry {
  int64_t L, B, H, W, C, S;
  int64_t plane_stride;  // elements between value maps of consecutive batch items: H*W*C
  int64_t ref_stride;    // elements between value maps of consecutive references: B*H*W*C
  int64_t x_bstride, y_bstride, w_bstride, keep_bstride;  // batch strides of dx, dy, w, keep
};

// One sample point: the 4 corner offsets into a value map (-1: outside) and bilinear weights.
template <typename scalar_t>
struct Corners {
  int64_t off[4];
  scalar_t cw[4];
  scalar_t fx, fy;
  bool any;
};

// The sample point of query pixel (i, j) with offset (dx, dy) in a W x H map. fx, fy come from the
// offset alone (dx - floor(dx), as corner_plan of the sparse path), not from j + dx, which would
// round in float32.
template <typename scalar_t>
inline Corners<scalar_t> corners(int64_t i, int64_t j, scalar_t dx, scalar_t dy, int64_t H, int64_t W,
                                 int64_t C) {
  Corners<scalar_t> k;
  k.any = false;
  const scalar_t flx = std::floor(dx), fly = std::floor(dy);
  // the footprint overlaps the map iff j + floor(dx) in [-1, W-1] and i + floor(dy) in [-1, H-1]
  if (!(flx >= scalar_t(-1 - j) && flx <= scalar_t(W - 1 - j) && fly >= scalar_t(-1 - i) &&
        fly <= scalar_t(H - 1 - i))) {
    return k;  // also for NaN and +-inf
  }
  const int64_t x0 = j + static_cast<int64_t>(flx), y0 = i + static_cast<int64_t>(fly);
  k.fx = dx - flx;
  k.fy = dy - fly;
  k.cw[0] = (1 - k.fy) * (1 - k.fx);
  k.cw[1] = (1 - k.fy) * k.fx;
  k.cw[2] = k.fy * (1 - k.fx);
  k.cw[3] = k.fy * k.fx;
  const bool xin0 = x0 >= 0, xin1 = x0 + 1 < W, yin0 = y0 >= 0, yin1 = y0 + 1 < H;
  k.off[0] = (yin0 && xin0) ? (y0 * W + x0) * C : -1;
  k.off[1] = (yin0 && xin1) ? (y0 * W + x0 + 1) * C : -1;
  k.off[2] = (yin1 && xin0) ? ((y0 + 1) * W + x0) * C : -1;
  k.off[3] = (yin1 && xin1) ? ((y0 + 1) * W + x0 + 1) * C : -1;
  k.any = true;
  return k;
}

// Explicit 32-byte vectors (GCC/Clang vector extensions) for the channel loops: left to itself, the
// compiler vectorised across slots with gathers instead, 9x slower in a micro-benchmark here.
template <typename T>
struct Vec {
  static constexpr int kLanes = 32 / sizeof(T);
  typedef T type __attribute__((vector_size(32)));
  static inline type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static inline void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

// y += a * x (length kC if kC > 0, else n).
template <typename T, int kC>
inline void axpy(T* __restrict__ y, const T* __restrict__ x, T a, int64_t n) {
  using V = Vec<T>;
  if (kC > 0) n = kC;
  int64_t c = 0;
  for (; c + V::kLanes <= n; c += V::kLanes) V::store(y + c, V::load(y + c) + a * V::load(x + c));
  for (; c < n; ++c) y[c] += a * x[c];
}

// One output row sum_t a_t * x_t. With a compile-time length kC the sum is held in registers, in
// two independent accumulators (the caller alternates them) so that consecutive additions do not
// wait on each other; otherwise it accumulates in the output row itself. Accumulating in memory
// (load, FMA, store per added row) made the forward latency-bound: 1.9 -> 0.9 ms, see
// experiments/bench/attention_scaling.py.
template <typename T, int kC>
struct Accumulator {
  using V = Vec<T>;
  static constexpr int kParts = kC > 0 ? (kC + V::kLanes - 1) / V::kLanes : 1;
  static constexpr bool kRegisters = kC > 0 && kC % V::kLanes == 0;
  T* out;
  int64_t n;
  typename V::type acc[2][kParts];

  Accumulator(T* out_, int64_t n_) : out(out_), n(n_) {
    if (kRegisters) {
      for (int u = 0; u < kParts; ++u) acc[0][u] = acc[1][u] = typename V::type{};
    } else {
      std::fill(out, out + n, T(0));
    }
  }
  inline void add(int which, const T* __restrict__ x, T a) {
    if (kRegisters) {
      for (int u = 0; u < kParts; ++u) acc[which][u] += a * V::load(x + u * V::kLanes);
    } else {
      axpy<T, kC>(out, x, a, n);
    }
  }
  inline void store() {
    if (kRegisters) {
      for (int u = 0; u < kParts; ++u) V::store(out + u * V::kLanes, acc[0][u] + acc[1][u]);
    }
  }
};

// x · y (length kC if kC > 0, else n); when `scatter` is given, also scatter += coef * x in the
// same pass.
template <typename T, int kC>
inline T dot(const T* __restrict__ x, const T* __restrict__ y, int64_t n, T* __restrict__ scatter = nullptr,
             T coef = 0) {
  using V = Vec<T>;
  if (kC > 0) n = kC;
  typename V::type acc = {};
  int64_t c = 0;
  for (; c + V::kLanes <= n; c += V::kLanes) {
    const typename V::type xv = V::load(x + c);
    acc += xv * V::load(y + c);
    if (scatter != nullptr) V::store(scatter + c, V::load(scatter + c) + coef * xv);
  }
  T out = 0;
  for (int u = 0; u < V::kLanes; ++u) out += acc[u];
  for (; c < n; ++c) {
    out += x[c] * y[c];
    if (scatter != nullptr) scatter[c] += coef * x[c];
  }
  return out;
}

// Calls f(std::integral_constant<int, kC>) with kC = C for the common channel counts, else 0.
template <typename F>
inline void with_channels(int64_t C, F&& f) {
  switch (C) {
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    default: f(std::integral_constant<int, 0>());
  }
}

Geometry geometry(const at::Tensor& values, const at::Tensor& dx, const at::Tensor& dy, const at::Tensor& w,
                  const at::Tensor& keep) {
  Geometry g;
  g.L = values.size(0);
  g.B = values.size(1);
  g.H = values.size(2);
  g.W = values.size(3);
  g.C = values.size(4);
  g.S = w.size(1);
  g.plane_stride = g.H * g.W * g.C;
  g.ref_stride = g.B * g.plane_stride;
  g.x_bstride = dx.stride(0);
  g.y_bstride = dy.stride(0);
  g.w_bstride = w.stride(0);
  g.keep_bstride = keep.defined() ? keep.stride(0) : 0;
  return g;
}

// Both kernels walk the queries in the outer loop and their slots in the inner one: the output
// (gradient) row of a query is finished in one visit. (Slots outer, pixels inner - one
// sequential stream per slot - measured 1.7x slower forward, 1.2-2x slower backward.)
template <typename scalar_t, int kC>
int64_t forward_kernel(const Geometry& g, const scalar_t* __restrict__ V, const scalar_t* __restrict__ DX,
                       const scalar_t* __restrict__ DY, const scalar_t* __restrict__ A,
                       const bool* __restrict__ K, const int64_t* __restrict__ ref,
                       scalar_t* __restrict__ out) {
  const int64_t HW = g.H * g.W, C = kC > 0 ? kC : g.C;
  std::atomic<int64_t> sampled{0};
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / g.H, i = bi % g.H;
      const bool* __restrict__ kb = K == nullptr ? nullptr : K + b * g.keep_bstride;
      const scalar_t* __restrict__ ab = A + b * g.w_bstride;
      const scalar_t* __restrict__ xb = DX + b * g.x_bstride;
      const scalar_t* __restrict__ yb = DY + b * g.y_bstride;
      for (int64_t j = 0; j < g.W; ++j) {
        scalar_t* __restrict__ o = out + (bi * g.W + j) * C;
        Accumulator<scalar_t, kC> acc(o, C);
        const int64_t p = i * g.W + j;
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t e = s * HW + p;
          if (kb != nullptr && !kb[e]) continue;
          const scalar_t a = ab[e];
          auto k = corners<scalar_t>(i, j, xb[e], yb[e], g.H, g.W, C);
          if (!k.any || a == 0) continue;
          ++count;
          const scalar_t* __restrict__ v = V + ref[s] * g.ref_stride + b * g.plane_stride;
          for (int q = 0; q < 4; ++q) {
            if (k.off[q] >= 0) acc.add(q & 1, v + k.off[q], a * k.cw[q]);
          }
        }
        acc.store();
      }
    }
    sampled += count;
  });
  return sampled.load();
}

// grad_values is written per batch item (parallel over b: no two threads touch one map).
template <typename scalar_t, int kC>
int64_t backward_kernel(const Geometry& g, const scalar_t* __restrict__ V, const scalar_t* __restrict__ DX,
                        const scalar_t* __restrict__ DY, const scalar_t* __restrict__ A,
                        const bool* __restrict__ K, const int64_t* __restrict__ ref,
                        const scalar_t* __restrict__ G, bool probe, scalar_t* __restrict__ gV,
                        scalar_t* __restrict__ gX, scalar_t* __restrict__ gY, scalar_t* __restrict__ gA) {
  const int64_t HW = g.H * g.W, C = kC > 0 ? kC : g.C;
  std::atomic<int64_t> probed{0};
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    for (int64_t b = begin; b < end; ++b) {
      const bool* __restrict__ kb = K == nullptr ? nullptr : K + b * g.keep_bstride;
      const scalar_t* __restrict__ ab = A + b * g.w_bstride;
      const scalar_t* __restrict__ xb = DX + b * g.x_bstride;
      const scalar_t* __restrict__ yb = DY + b * g.y_bstride;
      const int64_t ob = b * g.S * HW;  // gradients are contiguous (B, S, H, W)
      for (int64_t i = 0; i < g.H; ++i) {
        for (int64_t j = 0; j < g.W; ++j) {
          const int64_t p = i * g.W + j;
          const scalar_t* __restrict__ gq = G + (b * HW + p) * C;
          for (int64_t s = 0; s < g.S; ++s) {
            const int64_t e = s * HW + p;
            const bool kept = kb == nullptr || kb[e];
            if (!kept && !probe) continue;
            auto k = corners<scalar_t>(i, j, xb[e], yb[e], g.H, g.W, C);
            if (!k.any) continue;
            count += kept ? 0 : 1;
            const int64_t vbase = ref[s] * g.ref_stride + b * g.plane_stride;
            const scalar_t* __restrict__ v = V + vbase;
            const scalar_t a = kept ? ab[e] : scalar_t(0);
            // dL/dV[corner] += a * cw * G (kept pairs only), in the pass of the corner's dot
            scalar_t* __restrict__ gv = (gV != nullptr && kept && a != 0) ? gV + vbase : nullptr;
            scalar_t d[4] = {0, 0, 0, 0};
            for (int q = 0; q < 4; ++q) {
              if (k.off[q] < 0) continue;
              d[q] = dot<scalar_t, kC>(gq, v + k.off[q], C, gv == nullptr ? nullptr : gv + k.off[q],
                                       a * k.cw[q]);
            }
            if (gA != nullptr) gA[ob + e] = k.cw[0] * d[0] + k.cw[1] * d[1] + k.cw[2] * d[2] + k.cw[3] * d[3];
            if (!kept) continue;
            if (gX != nullptr) gX[ob + e] = a * ((1 - k.fy) * (d[1] - d[0]) + k.fy * (d[3] - d[2]));
            if (gY != nullptr) gY[ob + e] = a * ((1 - k.fx) * (d[2] - d[0]) + k.fx * (d[3] - d[1]));
          }
        }
      }
    }
    probed += count;
  });
  return probed.load();
}

// The layout the kernels index: contiguous channels-last values, per-slot tensors whose last three
// dimensions are contiguous, one floating dtype, CPU.
void check(const at::Tensor& values, const at::Tensor& dx, const at::Tensor& dy, const at::Tensor& w,
           const at::Tensor& keep) {
  TORCH_CHECK(values.device().is_cpu() && values.dim() == 5 && values.is_contiguous(),
              "values must be a contiguous (L, B, H, W, C) CPU tensor");
  const int64_t B = values.size(1), H = values.size(2), W = values.size(3);
  for (const at::Tensor* t : {&dx, &dy, &w, &keep}) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 4 && t->size(0) == B && t->size(1) == w.size(1) &&
                    t->size(2) == H && t->size(3) == W,
                "dx, dy, w and keep must be (B, S, H, W) CPU tensors matching values");
    TORCH_CHECK(t->stride(3) == 1 && t->stride(2) == W && t->stride(1) == H * W,
                "dx, dy, w and keep must have their last three dimensions contiguous");
    TORCH_CHECK(t == &keep ? t->scalar_type() == at::kBool : t->scalar_type() == values.scalar_type(),
                "dx, dy and w must have the values' dtype, keep must be bool");
  }
}

std::vector<int64_t> slot_refs(at::IntArrayRef keys) {
  std::vector<int64_t> ref;
  for (size_t l = 0; l < keys.size(); ++l) ref.insert(ref.end(), keys[l], static_cast<int64_t>(l));
  return ref;
}

const bool* keep_ptr(const c10::optional<at::Tensor>& keep) {
  return keep.has_value() && keep->defined() ? keep->data_ptr<bool>() : nullptr;
}

}  // namespace

// Returns the output and the number of (query, slot) pairs sampled (kept, footprint on the map,
// weight != 0): a test/debug counter.
std::tuple<at::Tensor, int64_t> deform_gather_forward(const at::Tensor& values, const at::Tensor& dx, const at::Tensor& dy,
                                 const at::Tensor& w, const c10::optional<at::Tensor>& keep,
                                 at::IntArrayRef keys) {
  const at::Tensor kp = keep.has_value() ? *keep : at::Tensor();
  check(values, dx, dy, w, kp);
  const Geometry g = geometry(values, dx, dy, w, kp);
  const auto ref = slot_refs(keys);
  TORCH_CHECK(static_cast<int64_t>(ref.size()) == g.S, "keys must sum to S");
  auto out = at::empty({g.B, g.H, g.W, g.C}, values.options());
  int64_t sampled = 0;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "acla_deform_gather_forward", [&] {
    with_channels(g.C, [&](auto kc) {
    sampled = forward_kernel<scalar_t, decltype(kc)::value>(g, values.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                             dy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), keep_ptr(keep),
                             ref.data(), out.data_ptr<scalar_t>());
    });
  });
  return {out, sampled};
}

// Returns the gradients (undefined where not needed) and the number of dropped pairs probed.
std::tuple<std::vector<at::Tensor>, int64_t> deform_gather_backward(const at::Tensor& grad, const at::Tensor& values,
                                               const at::Tensor& dx, const at::Tensor& dy,
                                               const at::Tensor& w, const c10::optional<at::Tensor>& keep,
                                               at::IntArrayRef keys, bool probe,
                                               bool need_values, bool need_dx, bool need_dy, bool need_w) {
  const at::Tensor kp = keep.has_value() ? *keep : at::Tensor();
  check(values, dx, dy, w, kp);
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == values.scalar_type() && grad.dim() == 4,
              "grad must be contiguous (B, H, W, C) of the values' dtype");
  const Geometry g = geometry(values, dx, dy, w, kp);
  const auto ref = slot_refs(keys);
  TORCH_CHECK(static_cast<int64_t>(ref.size()) == g.S, "keys must sum to S");
  auto slot_opts = values.options();
  at::Tensor gV = need_values ? at::zeros_like(values) : at::Tensor();
  at::Tensor gX = need_dx ? at::zeros({g.B, g.S, g.H, g.W}, slot_opts) : at::Tensor();
  at::Tensor gY = need_dy ? at::zeros({g.B, g.S, g.H, g.W}, slot_opts) : at::Tensor();
  at::Tensor gA = need_w ? at::zeros({g.B, g.S, g.H, g.W}, slot_opts) : at::Tensor();
  int64_t probed = 0;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "acla_deform_gather_backward", [&] {
    auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    with_channels(g.C, [&](auto kc) {
    probed = backward_kernel<scalar_t, decltype(kc)::value>(g, values.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                              dy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), keep_ptr(keep),
                              ref.data(), grad.data_ptr<scalar_t>(), probe, ptr(gV), ptr(gX),
                              ptr(gY), ptr(gA));
    });
  });
  return {std::vector<at::Tensor>{gV, gX, gY, gA}, probed};
}

TORCH_LIBRARY(acla_nas_cpu, m) {
  m.def("deform_gather_forward(Tensor values, Tensor dx, Tensor dy, Tensor w, Tensor? keep, int[] keys) -> (Tensor, int)",
        &deform_gather_forward);
  m.def("deform_gather_backward(Tensor grad, Tensor values, Tensor dx, Tensor dy, Tensor w, Tensor? keep, "
        "int[] keys, bool probe, bool need_values, bool need_dx, bool need_dy, bool need_w) -> (Tensor[], int)",
        &deform_gather_backward);
}
