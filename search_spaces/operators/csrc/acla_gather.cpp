// ACLA's attention core (arXiv 2203.03619) as CPU kernels: deform_gather_* (the bilinear sampling
// and weighted sum for given weights and keep mask) and attend_* (the keep decision and the
// softmax over the kept slots too, from the query convolution's output; see the "attention core"
// section). Both share the per-query loops gather_query / grad_query.
//
// out[b, i, j, :] = sum_s keep[b, s, i, j] * w[b, s, i, j] * Bilinear(V[ref(s), b], (j + dx, i + dy))
//
// deform_gather: values (L, B, H, W, C) contiguous (channels last); dx, dy, w: (B, S, H, W) with the last three
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
#include <limits>
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
  bool all;  // all 4 corners on the map (the common case: no per-corner test)
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
  k.all = xin0 && xin1 && yin0 && yin1;
  return k;
}

// The footprints of one row of queries (b, i) for every slot, computed vectorised over the row
// (the per-query loops then only read them): per (slot s, column j), at [s * W + j], the offset
// of the top-left corner in the value map (elements), fx, fy and the state: 0 the footprint misses
// the map, 1 it overlaps the map partly (corners() is asked per query), 2 all 4 corners on it. The
// same numbers as corners(). Offsets are int32 (check_core bounds H * W * C).
template <typename scalar_t>
struct RowPlan {
  int64_t H = 0, W = 0, C = 0, HW = 0, i = 0;
  const scalar_t* qb = nullptr;  // row i of the offsets: dx of slot s at qb[2 s HW + j], dy at + HW
  std::vector<int32_t> off, state;
  std::vector<scalar_t> fx, fy;

  RowPlan(int64_t H_, int64_t W_, int64_t C_, int64_t S) : H(H_), W(W_), C(C_), HW(H_ * W_) {
    off.resize(S * W);
    state.resize(S * W);
    fx.resize(S * W);
    fy.resize(S * W);
  }

  void build(const scalar_t* __restrict__ qrow, int64_t row_i, int64_t S) {
    qb = qrow;
    i = row_i;
    const scalar_t fi = static_cast<scalar_t>(i);
    const scalar_t lo_y = scalar_t(-1) - fi, hi_y = scalar_t(H - 1) - fi, last_x = scalar_t(W - 1);
    const int32_t W32 = static_cast<int32_t>(W), H32 = static_cast<int32_t>(H), C32 = static_cast<int32_t>(C);
    const int32_t n = static_cast<int32_t>(W);
    for (int64_t s = 0; s < S; ++s) {
      const scalar_t* __restrict__ X = qrow + 2 * s * HW;
      const scalar_t* __restrict__ Y = X + HW;
      int32_t* __restrict__ o = off.data() + s * W;
      int32_t* __restrict__ st = state.data() + s * W;
      scalar_t* __restrict__ px = fx.data() + s * W;
      scalar_t* __restrict__ py = fy.data() + s * W;
      for (int32_t j = 0; j < n; ++j) {
        const scalar_t dx = X[j], dy = Y[j];
        const scalar_t flx = std::floor(dx), fly = std::floor(dy);
        const scalar_t jf = static_cast<scalar_t>(j);
        // as corners(): j + floor(dx) in [-1, W-1] and i + floor(dy) in [-1, H-1]; false for NaN
        const bool any = (flx >= scalar_t(-1) - jf) & (flx <= last_x - jf) & (fly >= lo_y) & (fly <= hi_y);
        const int32_t x0 = static_cast<int32_t>(any ? jf + flx : scalar_t(0));
        const int32_t y0 = static_cast<int32_t>(any ? fi + fly : scalar_t(0));
        const bool all = any & (x0 >= 0) & (x0 < W32 - 1) & (y0 >= 0) & (y0 < H32 - 1);
        px[j] = dx - flx;
        py[j] = dy - fly;
        o[j] = (y0 * W32 + x0) * C32;
        st[j] = all ? 2 : (any ? 1 : 0);
      }
    }
  }

  inline Corners<scalar_t> at(int64_t s, int64_t j) const {
    const int64_t e = s * W + j;
    const int32_t st = state[e];
    if (st == 2) {
      Corners<scalar_t> k;
      k.any = k.all = true;
      k.fx = fx[e];
      k.fy = fy[e];
      k.cw[0] = (1 - k.fy) * (1 - k.fx);
      k.cw[1] = (1 - k.fy) * k.fx;
      k.cw[2] = k.fy * (1 - k.fx);
      k.cw[3] = k.fy * k.fx;
      k.off[0] = off[e];
      k.off[1] = k.off[0] + C;
      k.off[2] = k.off[0] + W * C;
      k.off[3] = k.off[2] + C;
      return k;
    }
    if (st == 0) {
      Corners<scalar_t> k;
      k.any = k.all = false;
      return k;
    }
    return corners<scalar_t>(i, j, qb[2 * s * HW + j], qb[(2 * s + 1) * HW + j], H, W, C);
  }
};

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

// The vector part of x · y (length kC if kC > 0, else n; the first n - n % kLanes elements), its
// lanes not yet summed; when `scatter` is given, also scatter += coef * x there in the same pass.
// grad_query sums four of them at once (hsum4).
template <typename T, int kC>
inline typename Vec<T>::type dot_lanes(const T* __restrict__ x, const T* __restrict__ y, int64_t n,
                                       T* __restrict__ scatter, T coef) {
  using V = Vec<T>;
  if (kC > 0) n = kC;
  typename V::type acc = {};
  for (int64_t c = 0; c + V::kLanes <= n; c += V::kLanes) {
    const typename V::type xv = V::load(x + c);
    acc += xv * V::load(y + c);
    if (scatter != nullptr) V::store(scatter + c, V::load(scatter + c) + coef * xv);
  }
  return acc;
}

// x · y (length kC if kC > 0, else n), with the scatter of dot_lanes over every element.
template <typename T, int kC>
inline T dot(const T* __restrict__ x, const T* __restrict__ y, int64_t n, T* __restrict__ scatter = nullptr,
             T coef = 0) {
  using V = Vec<T>;
  if (kC > 0) n = kC;
  const typename V::type acc = dot_lanes<T, kC>(x, y, n, scatter, coef);
  T out = 0;
  for (int u = 0; u < V::kLanes; ++u) out += acc[u];
  for (int64_t c = n - n % V::kLanes; c < n; ++c) {
    out += x[c] * y[c];
    if (scatter != nullptr) scatter[c] += coef * x[c];
  }
  return out;
}

// The four horizontal sums of a, b, c, d (8 lanes each) by transposing shuffles: 6 shuffles and
// 4 vector additions instead of four serial 8-term sums.
template <typename VT>
inline void hsum4(VT a, VT b, VT c, VT d, float* out) {
  typedef int I __attribute__((vector_size(32)));
  const VT ab = __builtin_shuffle(a, b, I{0, 8, 2, 10, 4, 12, 6, 14}) + __builtin_shuffle(a, b, I{1, 9, 3, 11, 5, 13, 7, 15});
  const VT cd = __builtin_shuffle(c, d, I{0, 8, 2, 10, 4, 12, 6, 14}) + __builtin_shuffle(c, d, I{1, 9, 3, 11, 5, 13, 7, 15});
  const VT t = __builtin_shuffle(ab, cd, I{0, 1, 8, 9, 4, 5, 12, 13}) + __builtin_shuffle(ab, cd, I{2, 3, 10, 11, 6, 7, 14, 15});
  // t = [a, b, c, d partial sums of lanes 0-3 | the same of lanes 4-7]
  for (int u = 0; u < 4; ++u) out[u] = t[u] + t[u + 4];
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

// The value maps' geometry with S slots (the batch strides of the per-slot tensors left 0).
Geometry value_geometry(const at::Tensor& values, int64_t S) {
  Geometry g{};
  g.L = values.size(0);
  g.B = values.size(1);
  g.H = values.size(2);
  g.W = values.size(3);
  g.C = values.size(4);
  g.S = S;
  g.plane_stride = g.H * g.W * g.C;
  g.ref_stride = g.B * g.plane_stride;
  return g;
}

Geometry geometry(const at::Tensor& values, const at::Tensor& dx, const at::Tensor& dy, const at::Tensor& w,
                  const at::Tensor& keep) {
  Geometry g = value_geometry(values, w.size(1));
  g.x_bstride = dx.stride(0);
  g.y_bstride = dy.stride(0);
  g.w_bstride = w.stride(0);
  g.keep_bstride = keep.defined() ? keep.stride(0) : 0;
  return g;
}

// The weighted sum of one query (b, i, j) over its slots into the output row o: slot s has offset
// (xq[s * xys], yq[s * xys]), weight aq[s * HW] and keep flag kq[s * HW] (kq null: every slot kept).
// Returns the number of pairs sampled (kept, footprint on the map, weight != 0).
template <typename scalar_t, int kC>
inline int64_t gather_query(const Geometry& g, const scalar_t* __restrict__ V, int64_t b, int64_t i, int64_t j,
                            const scalar_t* __restrict__ xq, const scalar_t* __restrict__ yq,
                            int64_t xys, const scalar_t* __restrict__ aq, const bool* __restrict__ kq,
                            int64_t HW, const int64_t* __restrict__ ref, scalar_t* __restrict__ o,
                            const RowPlan<scalar_t>* plan = nullptr) {
  const int64_t C = kC > 0 ? kC : g.C;
  Accumulator<scalar_t, kC> acc(o, C);
  int64_t count = 0;
  for (int64_t s = 0; s < g.S; ++s) {
    const int64_t e = s * HW;
    if (kq != nullptr && !kq[e]) continue;
    const scalar_t a = aq[e];
    auto k = plan != nullptr ? plan->at(s, j) : corners<scalar_t>(i, j, xq[s * xys], yq[s * xys], g.H, g.W, C);
    if (!k.any || a == 0) continue;
    ++count;
    const scalar_t* __restrict__ v = V + ref[s] * g.ref_stride + b * g.plane_stride;
    for (int q = 0; q < 4; ++q) {
      if (k.all || k.off[q] >= 0) acc.add(q & 1, v + k.off[q], a * k.cw[q]);
    }
  }
  acc.store();
  return count;
}

// The gradients of one query's weighted sum (layout as gather_query), given its output-gradient
// row gq: dL/dw (probe: of dropped slots too) of slot s is written to gA[s * ostride], dL/ddx and
// dL/ddy to gX/gY[s * oxys] (null: not wanted; slots not reached are left as they are), and
// dL/dV is scattered into gV (null: not wanted). Returns the number of dropped pairs probed.
template <typename scalar_t, int kC>
inline int64_t grad_query(const Geometry& g, const scalar_t* __restrict__ V, int64_t b, int64_t i, int64_t j,
                          const scalar_t* __restrict__ xq, const scalar_t* __restrict__ yq, int64_t xys,
                          const scalar_t* __restrict__ aq, const bool* __restrict__ kq, int64_t HW,
                          const int64_t* __restrict__ ref, const scalar_t* __restrict__ gq, bool probe,
                          scalar_t* __restrict__ gV, scalar_t* __restrict__ gA, scalar_t* __restrict__ gX,
                          scalar_t* __restrict__ gY, int64_t ostride, int64_t oxys,
                          const RowPlan<scalar_t>* plan = nullptr) {
  const int64_t C = kC > 0 ? kC : g.C;
  int64_t count = 0;
  for (int64_t s = 0; s < g.S; ++s) {
    const int64_t e = s * HW;
    const bool kept = kq == nullptr || kq[e];
    if (!kept && !probe) continue;
    auto k = plan != nullptr ? plan->at(s, j) : corners<scalar_t>(i, j, xq[s * xys], yq[s * xys], g.H, g.W, C);
    if (!k.any) continue;
    count += kept ? 0 : 1;
    const int64_t vbase = ref[s] * g.ref_stride + b * g.plane_stride;
    const scalar_t* __restrict__ v = V + vbase;
    const scalar_t a = kept ? aq[e] : scalar_t(0);
    // dL/dV[corner] += a * cw * G (kept pairs only), in the pass of the corner's dot
    scalar_t* __restrict__ gv = (gV != nullptr && kept && a != 0) ? gV + vbase : nullptr;
    scalar_t d[4] = {0, 0, 0, 0};
    if constexpr (std::is_same<scalar_t, float>::value && kC > 0 && kC % Vec<scalar_t>::kLanes == 0 &&
                  Vec<scalar_t>::kLanes == 8) {
      typename Vec<scalar_t>::type acc[4] = {};
      for (int q = 0; q < 4; ++q) {
        if (!k.all && k.off[q] < 0) continue;
        acc[q] = dot_lanes<scalar_t, kC>(gq, v + k.off[q], C, gv == nullptr ? nullptr : gv + k.off[q], a * k.cw[q]);
      }
      hsum4(acc[0], acc[1], acc[2], acc[3], d);
    } else {
      for (int q = 0; q < 4; ++q) {
        if (k.off[q] < 0) continue;
        d[q] = dot<scalar_t, kC>(gq, v + k.off[q], C, gv == nullptr ? nullptr : gv + k.off[q], a * k.cw[q]);
      }
    }
    const int64_t o = s * ostride;
    if (gA != nullptr) gA[o] = k.cw[0] * d[0] + k.cw[1] * d[1] + k.cw[2] * d[2] + k.cw[3] * d[3];
    if (!kept) continue;
    if (gX != nullptr) gX[s * oxys] = a * ((1 - k.fy) * (d[1] - d[0]) + k.fy * (d[3] - d[2]));
    if (gY != nullptr) gY[s * oxys] = a * ((1 - k.fx) * (d[2] - d[0]) + k.fx * (d[3] - d[1]));
  }
  return count;
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
        const int64_t p = i * g.W + j;
        count += gather_query<scalar_t, kC>(g, V, b, i, j, xb + p, yb + p, HW, ab + p,
                                            kb == nullptr ? nullptr : kb + p, HW, ref,
                                            out + (bi * g.W + j) * C);
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
      auto at = [&](scalar_t* t, int64_t p) { return t == nullptr ? nullptr : t + ob + p; };
      for (int64_t i = 0; i < g.H; ++i) {
        for (int64_t j = 0; j < g.W; ++j) {
          const int64_t p = i * g.W + j;
          count += grad_query<scalar_t, kC>(g, V, b, i, j, xb + p, yb + p, HW, ab + p,
                                            kb == nullptr ? nullptr : kb + p, HW, ref,
                                            G + (b * HW + p) * C, probe, gV, at(gA, p), at(gX, p),
                                            at(gY, p), HW, HW);
        }
      }
    }
    probed += count;
  });
  return probed.load();
}

// ------------------------------------------------------------------------ the attention core
// ACLA's whole attention core in one pass per query: the keep decision, the softmax over the kept
// slots and the weighted sum. q is the query convolution's output (B, Qc, H, W) (last three
// dimensions contiguous, any batch stride): channels 2s and 2s + 1 the offsets dx, dy of slot s,
// [2S, 3S) logits and, for an adaptive module, [3S, 4S) keep logits m. keep: a fixed mask (Kin), or for an adaptive
// module score = m + noise (noise null: score = m), keep = score > 0 or score = max_s score; else
// every slot. weights = softmax of the logits over the kept slots (0 for dropped slots).
struct Core {
  const void* q;
  int64_t q_bstride;
  const void* noise;  // (B, S, H, W) contiguous, or null
  const bool* kin;    // (B, S, H, W) contiguous fixed mask, or null
  bool adaptive;
};

// exp for the core's softmax and straight-through terms. float: a branch-free Cephes-style
// polynomial (relative error ~1e-7, exp(x) = 2^n exp(r), |r| <= ln2 / 2) that the compiler
// vectorises over a row of queries (libm's expf is a call per element, which made the fused core
// slower than PyTorch's vectorised softmax); 0 below -87.3, NaN stays NaN. double: std::exp.
template <typename T>
inline T vexp(T x) {
  return std::exp(x);
}
template <>
inline float vexp<float>(float x) {
  const float xc = std::min(std::max(x, -87.3f), 88.37f);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float y = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = y * scale;
  return x < -87.3f ? 0.0f : (x != x ? x : e);
}

// The softmax terms of the W queries of one row over their kept slots (k8 null: every slot),
// vectorised over the row: mx[j] the largest kept logit, z[j] = sum_s exp(l_s - mx[j]) over the
// kept slots, and with kStore the terms themselves in e[s * HW + j] (0 for dropped slots). The
// forward's softmax and the backward's logsumexp (straight-through term) both use it.
template <typename scalar_t, bool kStore>
void softmax_terms_row(int64_t S, int64_t HW, int64_t W, const scalar_t* __restrict__ lq,
                       const uint8_t* __restrict__ k8, scalar_t* __restrict__ e, scalar_t* __restrict__ mx,
                       scalar_t* __restrict__ z) {
  std::fill(mx, mx + W, -std::numeric_limits<scalar_t>::infinity());
  std::fill(z, z + W, scalar_t(0));
  for (int64_t s = 0; s < S; ++s) {
    const scalar_t* __restrict__ l = lq + s * HW;
    if (k8 == nullptr) {
      for (int64_t j = 0; j < W; ++j) mx[j] = l[j] > mx[j] ? l[j] : mx[j];
    } else {
      const uint8_t* __restrict__ ks = k8 + s * HW;
      for (int64_t j = 0; j < W; ++j) mx[j] = (ks[j] != 0 && l[j] > mx[j]) ? l[j] : mx[j];
    }
  }
  for (int64_t s = 0; s < S; ++s) {
    const scalar_t* __restrict__ l = lq + s * HW;
    scalar_t* __restrict__ es = kStore ? e + s * HW : nullptr;
    if (k8 == nullptr) {
      for (int64_t j = 0; j < W; ++j) {
        const scalar_t t = vexp(l[j] - mx[j]);
        if (kStore) es[j] = t;
        z[j] += t;
      }
    } else {
      const uint8_t* __restrict__ ks = k8 + s * HW;
      for (int64_t j = 0; j < W; ++j) {
        const scalar_t t = ks[j] != 0 ? vexp(l[j] - mx[j]) : scalar_t(0);  // dropped: 0
        if (kStore) es[j] = t;
        z[j] += t;
      }
    }
  }
}

// Keep flags and softmax weights of the W queries of one row (b, i), vectorised over the row.
// Slot s of every per-slot pointer is at [s * HW + j]; k is written when the module has a keep
// mask (k != nullptr); mx and z are scratch rows of length W.
template <typename scalar_t>
void keep_softmax_row(int64_t S, int64_t HW, int64_t W, const scalar_t* __restrict__ lq,
                      const scalar_t* __restrict__ mq, const scalar_t* __restrict__ nq,
                      const bool* __restrict__ kin, bool* __restrict__ k, scalar_t* __restrict__ w,
                      scalar_t* __restrict__ mx, scalar_t* __restrict__ z) {
  // the flags as bytes: GCC does not vectorise loads and stores of bool
  uint8_t* __restrict__ k8 = reinterpret_cast<uint8_t*>(k);
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  if (kin != nullptr) {
    for (int64_t s = 0; s < S; ++s) std::memcpy(k + s * HW, kin + s * HW, W * sizeof(bool));
  } else if (k != nullptr) {
    std::fill(mx, mx + W, -inf);
    for (int64_t s = 0; s < S; ++s) {  // w holds the score for now
      const scalar_t* __restrict__ m = mq + s * HW;
      const scalar_t* __restrict__ n = nq == nullptr ? nullptr : nq + s * HW;
      scalar_t* __restrict__ sc = w + s * HW;
      for (int64_t j = 0; j < W; ++j) {
        sc[j] = n == nullptr ? m[j] : m[j] + n[j];
        mx[j] = (sc[j] > mx[j] || sc[j] != sc[j]) ? sc[j] : mx[j];  // NaN sticks, as torch.amax
      }
    }
    for (int64_t s = 0; s < S; ++s) {
      const scalar_t* __restrict__ sc = w + s * HW;
      uint8_t* __restrict__ ks = k8 + s * HW;
      for (int64_t j = 0; j < W; ++j) ks[j] = static_cast<uint8_t>((sc[j] > 0) | (sc[j] == mx[j]));
    }
  }
  softmax_terms_row<scalar_t, true>(S, HW, W, lq, k8, w, mx, z);
  for (int64_t s = 0; s < S; ++s) {
    scalar_t* __restrict__ ws = w + s * HW;
    for (int64_t j = 0; j < W; ++j) ws[j] /= z[j];
  }
}

// Prefetch one row (`n` elements) of each of `planes` planes `stride` elements apart (rw: for a
// row about to be written). The core reads and writes each row of queries across 4S planes HW
// elements apart - more concurrent streams than the hardware prefetcher follows - so each row
// asks for the next one's lines while it works.
template <typename T>
inline void prefetch_planes(const T* p, int64_t planes, int64_t stride, int64_t n, bool rw) {
  if (p == nullptr) return;
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T)), sb = stride * static_cast<int64_t>(sizeof(T));
  for (int64_t k = 0; k < planes; ++k) {
    for (int64_t o = 0; o < bytes; o += 64) {
      if (rw) {
        __builtin_prefetch(c + k * sb + o, 1, 3);
      } else {
        __builtin_prefetch(c + k * sb + o, 0, 3);
      }
    }
  }
}

template <typename scalar_t, int kC>
int64_t core_forward_kernel(const Geometry& g, const Core& c, const scalar_t* __restrict__ V,
                            const int64_t* __restrict__ ref, scalar_t* __restrict__ out,
                            scalar_t* __restrict__ Wt, bool* __restrict__ K) {
  const int64_t HW = g.H * g.W, C = kC > 0 ? kC : g.C, S = g.S;
  const scalar_t* Q = static_cast<const scalar_t*>(c.q);
  const scalar_t* N = static_cast<const scalar_t*>(c.noise);
  std::atomic<int64_t> sampled{0};
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    std::vector<scalar_t> scratch(2 * g.W);
    RowPlan<scalar_t> plan(g.H, g.W, C, S);
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / g.H, i = bi % g.H, row = b * S * HW + i * g.W;
      const scalar_t* __restrict__ qb = Q + b * c.q_bstride + i * g.W;
      bool* kr = K == nullptr ? nullptr : K + row;
      if (i + 1 < g.H && bi + 1 < end) {  // the next row's inputs and outputs
        prefetch_planes(qb + g.W, (c.adaptive ? 4 : 3) * S, HW, g.W, false);
        prefetch_planes(N == nullptr ? nullptr : N + row + g.W, S, HW, g.W, false);
        prefetch_planes(Wt + row + g.W, S, HW, g.W, true);
        prefetch_planes(kr == nullptr ? nullptr : kr + g.W, S, HW, g.W, true);
      }
      keep_softmax_row<scalar_t>(S, HW, g.W, qb + 2 * S * HW, qb + 3 * S * HW,
                                 N == nullptr ? nullptr : N + row, c.kin == nullptr ? nullptr : c.kin + row,
                                 kr, Wt + row, scratch.data(), scratch.data() + g.W);
      plan.build(qb, i, S);
      for (int64_t j = 0; j < g.W; ++j) {
        count += gather_query<scalar_t, kC>(g, V, b, i, j, qb + j, qb + HW + j, 2 * HW, Wt + row + j,
                                            kr == nullptr ? nullptr : kr + j, HW, ref,
                                            out + (bi * g.W + j) * C, &plan);
      }
    }
    sampled += count;
  });
  return sampled.load();
}

// The core's backward: dL/dq (B, Qc, H, W) contiguous (q's layout), zero-filled by the caller - dx, dy from
// the bilinear weights; the logits through the softmax; the keep logits, when `st`, by the
// straight-through estimator
//   dL/dm_s = r_s * t_s * sigmoid'(score_s / tau) / tau,  r_s = exp(min(l_s - lse_kept(l), clamp)),
//   t_s = dL/dw_s - sum_i w_i dL/dw_i
// (dL/dw of dropped slots probed: G . sample) - and dL/dV. gW: an extra dL/dweights, or null.
// Per row: the per-query pass (gather gradients, dL/dw parked in the logits' channels), then the
// softmax and straight-through terms vectorised over the row.
template <typename scalar_t, int kC>
int64_t core_backward_kernel(const Geometry& g, const Core& c, const scalar_t* __restrict__ V,
                             const int64_t* __restrict__ ref, const scalar_t* __restrict__ Wt,
                             const bool* __restrict__ K, const scalar_t* __restrict__ G,
                             const scalar_t* __restrict__ gW, bool st, scalar_t tau, scalar_t clamp,
                             scalar_t* __restrict__ gV, scalar_t* __restrict__ gQ) {
  const int64_t HW = g.H * g.W, C = kC > 0 ? kC : g.C, S = g.S, W = g.W;
  const int64_t Qc = (c.adaptive ? 4 : 3) * S;
  const scalar_t* Q = static_cast<const scalar_t*>(c.q);
  const scalar_t* N = static_cast<const scalar_t*>(c.noise);
  std::atomic<int64_t> probed{0};
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    std::vector<scalar_t> scratch(3 * W);
    scalar_t* __restrict__ wg = scratch.data();
    scalar_t* __restrict__ mx = wg + W;
    scalar_t* __restrict__ z = mx + W;
    RowPlan<scalar_t> plan(g.H, W, C, S);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t i = 0; i < g.H; ++i) {
        const int64_t row = b * S * HW + i * W;
        const scalar_t* __restrict__ qb = Q + b * c.q_bstride + i * W;
        scalar_t* __restrict__ gq = gQ + b * Qc * HW + i * W;
        const bool* __restrict__ kr = K == nullptr ? nullptr : K + row;
        const scalar_t* __restrict__ wr = Wt + row;
        scalar_t* __restrict__ ga = gq + 2 * S * HW;  // dL/dw, then dL/dlogits
        if (i + 1 < g.H) {  // the next row's inputs and gradient rows
          prefetch_planes(qb + W, Qc, HW, W, false);
          prefetch_planes(N == nullptr ? nullptr : N + row + W, S, HW, W, false);
          prefetch_planes(wr + W, S, HW, W, false);
          prefetch_planes(kr == nullptr ? nullptr : kr + W, S, HW, W, false);
          prefetch_planes(gq + W, Qc, HW, W, true);
        }
        plan.build(qb, i, S);
        for (int64_t j = 0; j < W; ++j) {
          count += grad_query<scalar_t, kC>(g, V, b, i, j, qb + j, qb + HW + j, 2 * HW, wr + j,
                                            kr == nullptr ? nullptr : kr + j, HW, ref,
                                            G + (b * HW + i * W + j) * C, st, gV, ga + j, gq + j,
                                            gq + HW + j, HW, 2 * HW, &plan);
        }
        std::fill(wg, wg + W, scalar_t(0));
        for (int64_t s = 0; s < S; ++s) {
          scalar_t* __restrict__ gas = ga + s * HW;
          const scalar_t* __restrict__ ws = wr + s * HW;
          if (gW != nullptr) {
            const scalar_t* __restrict__ gws = gW + row + s * HW;
            for (int64_t j = 0; j < W; ++j) gas[j] += gws[j];
          }
          for (int64_t j = 0; j < W; ++j) wg[j] += ws[j] * gas[j];
        }
        if (st) {  // lse over the kept logits, then dL/dm; before ga is overwritten
          const scalar_t* __restrict__ lq = qb + 2 * S * HW;
          softmax_terms_row<scalar_t, false>(S, HW, W, lq, reinterpret_cast<const uint8_t*>(kr), nullptr, mx, z);
          for (int64_t j = 0; j < W; ++j) mx[j] += std::log(z[j]);  // mx: lse
          for (int64_t s = 0; s < S; ++s) {
            const scalar_t* __restrict__ m = qb + (3 * S + s) * HW;
            const scalar_t* __restrict__ n = N == nullptr ? nullptr : N + row + s * HW;
            const scalar_t* __restrict__ l = lq + s * HW;
            const scalar_t* __restrict__ gas = ga + s * HW;
            scalar_t* __restrict__ gm = gq + (3 * S + s) * HW;
            for (int64_t j = 0; j < W; ++j) {
              const scalar_t r = vexp(std::min(l[j] - mx[j], clamp));
              const scalar_t sc = n == nullptr ? m[j] : m[j] + n[j];
              const scalar_t sig = scalar_t(1) / (scalar_t(1) + vexp(-(sc / tau)));
              gm[j] = r * (gas[j] - wg[j]) * (sig * (scalar_t(1) - sig)) / tau;
            }
          }
        }
        for (int64_t s = 0; s < S; ++s) {
          scalar_t* __restrict__ gas = ga + s * HW;
          const scalar_t* __restrict__ ws = wr + s * HW;
          for (int64_t j = 0; j < W; ++j) gas[j] = ws[j] * (gas[j] - wg[j]);
        }
      }
    }
    probed += count;
  });
  return probed.load();
}

// The layout the kernels index: contiguous channels-last values, per-slot tensors whose last three
// dimensions are contiguous, one floating dtype, CPU.
void check_values(const at::Tensor& values) {
  TORCH_CHECK(values.device().is_cpu() && values.dim() == 5 && values.is_contiguous(),
              "values must be a contiguous (L, B, H, W, C) CPU tensor");
}

void check(const at::Tensor& values, const at::Tensor& dx, const at::Tensor& dy, const at::Tensor& w,
           const at::Tensor& keep) {
  check_values(values);
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

namespace {

// The checks of the core's arguments; returns the slot count S = sum(keys).
int64_t check_core(const at::Tensor& q, const at::Tensor& values, const c10::optional<at::Tensor>& noise,
                   const c10::optional<at::Tensor>& key_mask, bool adaptive, at::IntArrayRef keys) {
  check_values(values);
  int64_t S = 0;
  for (auto k : keys) S += k;
  TORCH_CHECK(static_cast<int64_t>(keys.size()) == values.size(0), "one key count per value map");
  const int64_t B = values.size(1), H = values.size(2), W = values.size(3);
  TORCH_CHECK(H * W * values.size(4) < (int64_t(1) << 31), "a value map must have fewer than 2^31 elements");
  TORCH_CHECK(q.device().is_cpu() && q.dim() == 4 && q.size(0) == B && q.size(1) == (adaptive ? 4 : 3) * S &&
                  q.size(2) == H && q.size(3) == W && q.stride(3) == 1 && q.stride(2) == W &&
                  q.stride(1) == H * W && q.scalar_type() == values.scalar_type(),
              "q must be (B, 3S or 4S, H, W) with its last three dimensions contiguous, in the values' dtype");
  for (const auto* t : {&noise, &key_mask}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const at::Tensor& u = **t;
    TORCH_CHECK(u.device().is_cpu() && u.is_contiguous() && u.dim() == 4 && u.size(0) == B && u.size(1) == S &&
                    u.size(2) == H && u.size(3) == W,
                "noise and key_mask must be contiguous (B, S, H, W) CPU tensors");
    TORCH_CHECK(t == &key_mask ? u.scalar_type() == at::kBool : u.scalar_type() == values.scalar_type(),
                "noise must have the values' dtype, key_mask must be bool");
  }
  return S;
}

const void* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr() : nullptr;
}

}  // namespace

// Returns the output (B, H, W, C), the weights (B, S, H, W), the keep mask (B, S, H, W) - empty
// (0,) for a non-adaptive module without key_mask - and the number of pairs sampled.
std::tuple<at::Tensor, at::Tensor, at::Tensor, int64_t> attend_forward(
    const at::Tensor& q, const at::Tensor& values, const c10::optional<at::Tensor>& noise,
    const c10::optional<at::Tensor>& key_mask, bool adaptive, at::IntArrayRef keys) {
  const int64_t S = check_core(q, values, noise, key_mask, adaptive, keys);
  const Geometry g = value_geometry(values, S);
  const auto ref = slot_refs(keys);
  const Core c{q.data_ptr(), q.stride(0), opt_ptr(noise), static_cast<const bool*>(opt_ptr(key_mask)),
               adaptive};
  auto out = at::empty({g.B, g.H, g.W, g.C}, values.options());
  auto wt = at::empty({g.B, S, g.H, g.W}, values.options());
  const bool has_keep = adaptive || c.kin != nullptr;
  auto keep = at::empty(has_keep ? at::IntArrayRef({g.B, S, g.H, g.W}) : at::IntArrayRef({0}),
                        values.options().dtype(at::kBool));
  int64_t sampled = 0;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "acla_attend_forward", [&] {
    with_channels(g.C, [&](auto kc) {
      sampled = core_forward_kernel<scalar_t, decltype(kc)::value>(
          g, c, values.data_ptr<scalar_t>(), ref.data(), out.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
          has_keep ? keep.data_ptr<bool>() : nullptr);
    });
  });
  return {out, wt, keep, sampled};
}

// Returns dL/dq (B, Qc, H, W), dL/dvalues (undefined unless need_values) and the number of dropped
// pairs probed (st: the straight-through gradient of the keep logits).
std::tuple<at::Tensor, at::Tensor, int64_t> attend_backward(
    const at::Tensor& grad, const c10::optional<at::Tensor>& grad_weights, const at::Tensor& q,
    const at::Tensor& values, const c10::optional<at::Tensor>& noise, const at::Tensor& weights,
    const at::Tensor& keep, bool adaptive, at::IntArrayRef keys, bool st, double tau, double clamp,
    bool need_values) {
  const int64_t S = check_core(q, values, noise, c10::nullopt, adaptive, keys);
  const Geometry g = value_geometry(values, S);
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == values.scalar_type() && grad.dim() == 4,
              "grad must be contiguous (B, H, W, C) of the values' dtype");
  TORCH_CHECK(weights.is_contiguous() && weights.scalar_type() == values.scalar_type() &&
                  weights.sizes() == at::IntArrayRef({g.B, S, g.H, g.W}),
              "weights must be the forward's contiguous (B, S, H, W) weights");
  const bool has_keep = keep.numel() > 0;
  TORCH_CHECK(!has_keep || (keep.is_contiguous() && keep.scalar_type() == at::kBool && keep.sizes() == weights.sizes()),
              "keep must be the forward's (B, S, H, W) keep mask");
  TORCH_CHECK(!st || (adaptive && has_keep), "the straight-through gradient needs an adaptive module");
  const at::Tensor* gw = grad_weights.has_value() && grad_weights->defined() ? &*grad_weights : nullptr;
  TORCH_CHECK(gw == nullptr || (gw->is_contiguous() && gw->scalar_type() == values.scalar_type() &&
                                gw->sizes() == weights.sizes()),
              "grad_weights must be contiguous (B, S, H, W) of the values' dtype");
  const Core c{q.data_ptr(), q.stride(0), opt_ptr(noise), nullptr, adaptive};
  const auto ref = slot_refs(keys);
  at::Tensor gq = at::zeros({g.B, q.size(1), g.H, g.W}, values.options());
  at::Tensor gv = need_values ? at::zeros_like(values) : at::Tensor();
  int64_t probed = 0;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "acla_attend_backward", [&] {
    with_channels(g.C, [&](auto kc) {
      probed = core_backward_kernel<scalar_t, decltype(kc)::value>(
          g, c, values.data_ptr<scalar_t>(), ref.data(), weights.data_ptr<scalar_t>(),
          has_keep ? keep.data_ptr<bool>() : nullptr, grad.data_ptr<scalar_t>(),
          gw == nullptr ? nullptr : gw->data_ptr<scalar_t>(), st, static_cast<scalar_t>(tau),
          static_cast<scalar_t>(clamp), need_values ? gv.data_ptr<scalar_t>() : nullptr, gq.data_ptr<scalar_t>());
    });
  });
  return {gq, gv, probed};
}

TORCH_LIBRARY(acla_nas_cpu, m) {
  m.def("deform_gather_forward(Tensor values, Tensor dx, Tensor dy, Tensor w, Tensor? keep, int[] keys) -> (Tensor, int)",
        &deform_gather_forward);
  m.def("deform_gather_backward(Tensor grad, Tensor values, Tensor dx, Tensor dy, Tensor w, Tensor? keep, "
        "int[] keys, bool probe, bool need_values, bool need_dx, bool need_dy, bool need_w) -> (Tensor[], int)",
        &deform_gather_backward);
  m.def("attend_backward(Tensor grad, Tensor? grad_weights, Tensor q, Tensor values, Tensor? noise, "
        "Tensor weights, Tensor keep, bool adaptive, int[] keys, bool st, float tau, float clamp, "
        "bool need_values) -> (Tensor, Tensor, int)",
        &attend_backward);
}

// attend_forward's schema is declared in Python (acla_fused.py) so that the op, and the FLOP formula
// keyed on it, exist before this file is built; here only its CPU kernel.
TORCH_LIBRARY_IMPL(acla_nas_cpu, CPU, m) { m.impl("attend_forward", &attend_forward); }
