// FlashAttention for x86-64 CPUs with AVX-512, as XLA FFI custom calls (float32, layout BTNH).
//
// Forward: online softmax over key tiles (Rabe & Staats 2021; Dao et al. 2022, "FlashAttention");
// backward: FlashAttention-2 (Dao 2023) tile recomputation from the saved log-sum-exp.
// Causal masking is bottom-right aligned (query i sees key j iff j <= i + Tk - Tq); key tiles that
// are entirely hidden are never computed, and the last visible tile is cut at the diagonal.
//
// Work is split over (example, key/value head) items on XLA's intra-op thread pool; each item owns
// its rows of every output, so no two threads write the same element. Every matrix product is a
// register-blocked AVX-512 micro-kernel (6 rows x 64 columns of accumulators) reading its operands
// in place: rows of q/k/v/o/do are read with their BTNH stride, and only K^T and V^T are packed,
// once per item, into 64-key panels.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 64;  // keys per packed K^T / V^T panel
constexpr int kMR = 6;          // micro-kernel rows

// C[MR x 16*NV] = alpha * A B (+ C if acc). a(r, k) = A[r*rsa + k*csa]; row k of B at B + k*ldb.
template <int MR, int NV>
inline void ukr(int64_t K, const float* __restrict A, int64_t rsa, int64_t csa,
                const float* __restrict B, int64_t ldb, float* __restrict C, int64_t ldc,
                float alpha, bool acc) {
  __m512 c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_ps(b + 16 * j);
    const float* a = A + k * csa;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * rsa]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) c[r][j] = _mm512_fmadd_ps(av, bv[j], c[r][j]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* p = C + r * ldc + 16 * j;
      __m512 v = _mm512_mul_ps(c[r][j], al);
      if (acc) v = _mm512_add_ps(v, _mm512_loadu_ps(p));
      _mm512_storeu_ps(p, v);
    }
}

template <int NV>
void gemm_cols(int64_t M, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B,
               int64_t ldb, float* C, int64_t ldc, float alpha, bool acc) {
  int64_t m0 = 0;
  for (; m0 + kMR <= M; m0 += kMR)
    ukr<kMR, NV>(K, A + m0 * rsa, rsa, csa, B, ldb, C + m0 * ldc, ldc, alpha, acc);
  const float* a = A + m0 * rsa;
  float* c = C + m0 * ldc;
  switch (M - m0) {
    case 5: ukr<5, NV>(K, a, rsa, csa, B, ldb, c, ldc, alpha, acc); break;
    case 4: ukr<4, NV>(K, a, rsa, csa, B, ldb, c, ldc, alpha, acc); break;
    case 3: ukr<3, NV>(K, a, rsa, csa, B, ldb, c, ldc, alpha, acc); break;
    case 2: ukr<2, NV>(K, a, rsa, csa, B, ldb, c, ldc, alpha, acc); break;
    case 1: ukr<1, NV>(K, a, rsa, csa, B, ldb, c, ldc, alpha, acc); break;
    default: break;
  }
}

// C[M x N] = alpha * A[M x K] B[K x N] (+ C if acc), N a multiple of 16.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
          const float* B, int64_t ldb, float* C, int64_t ldc, float alpha, bool acc) {
  int64_t n0 = 0;
  for (; n0 + 64 <= N; n0 += 64)
    gemm_cols<4>(M, K, A, rsa, csa, B + n0, ldb, C + n0, ldc, alpha, acc);
  switch ((N - n0) / 16) {
    case 3: gemm_cols<3>(M, K, A, rsa, csa, B + n0, ldb, C + n0, ldc, alpha, acc); break;
    case 2: gemm_cols<2>(M, K, A, rsa, csa, B + n0, ldb, C + n0, ldc, alpha, acc); break;
    case 1: gemm_cols<1>(M, K, A, rsa, csa, B + n0, ldb, C + n0, ldc, alpha, acc); break;
    default: break;
  }
}

// exp(x) for x <= 0: 2^n * p(f), n = round(x log2 e), |f| <= 1/2, degree-6 polynomial
// (relative error ~2e-7); inputs below -87 give ~0.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5353362e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6180353e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503324e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022652e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1u); }

inline float row_max(const float* s, int64_t n, float init) {
  __m512 m = _mm512_set1_ps(init);
  for (int64_t c = 0; c < n; c += 16)
    m = _mm512_mask_max_ps(m, tail(n - c), m, _mm512_maskz_loadu_ps(tail(n - c), s + c));
  return _mm512_reduce_max_ps(m);
}

// s[c] <- exp(s[c] - mu) for c < n and 0 for n <= c < width; returns the sum of the exps.
inline float row_exp(float* s, int64_t n, int64_t width, float mu) {
  __m512 sum = _mm512_setzero_ps();
  const __m512 muv = _mm512_set1_ps(mu);
  int64_t c = 0;
  for (; c < n; c += 16) {
    const __m512 e = _mm512_maskz_mov_ps(tail(n - c), exp512(_mm512_sub_ps(_mm512_loadu_ps(s + c), muv)));
    _mm512_storeu_ps(s + c, e);
    sum = _mm512_add_ps(sum, e);
  }
  for (; c < width; c += 16) _mm512_storeu_ps(s + c, _mm512_setzero_ps());
  return _mm512_reduce_add_ps(sum);
}

// ds[c] <- p[c] * (ds[c] - d) for c < n, 0 for n <= c < width (ds is unwritten past n)
inline void row_ds(const float* p, float* ds, int64_t n, int64_t width, float d) {
  const __m512 dv = _mm512_set1_ps(d);
  int64_t c = 0;
  for (; c < n; c += 16) {
    const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(p + c), _mm512_sub_ps(_mm512_loadu_ps(ds + c), dv));
    _mm512_storeu_ps(ds + c, _mm512_maskz_mov_ps(tail(n - c), x));
  }
  for (; c < width; c += 16) _mm512_storeu_ps(ds + c, _mm512_setzero_ps());
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Shape {
  int64_t B, Tq, Tk, N, KV, H;
  float scale;
  bool causal;
  int64_t bq, bk;
  int64_t G() const { return N / KV; }
  int64_t ldq() const { return N * H; }
  int64_t ldk() const { return KV * H; }
  int64_t offset() const { return Tk - Tq; }
  // element offsets of query row t of head n, key row t of kv head kvh, and lse[b, n, t]
  int64_t q_at(int64_t b, int64_t t, int64_t n) const { return (b * Tq + t) * ldq() + n * H; }
  int64_t k_at(int64_t b, int64_t t, int64_t kvh) const { return (b * Tk + t) * ldk() + kvh * H; }
  int64_t lse_at(int64_t b, int64_t n, int64_t t) const { return (b * N + n) * Tq + t; }
  // keys [0, hi) are visible to some query of the block that ends at qe
  int64_t visible_end(int64_t qe) const { return causal ? std::clamp<int64_t>(qe + offset(), 0, Tk) : Tk; }
  // number of keys of tile [ks, ks+cols) that query row qi sees
  int64_t row_visible(int64_t qi, int64_t ks, int64_t cols) const {
    if (!causal) return cols;
    return std::clamp<int64_t>(qi + offset() - ks + 1, 0, cols);
  }
  // first row of the query block at qs (of `rows` rows) that sees key ks + c
  int64_t first_row(int64_t qs, int64_t ks, int64_t c, int64_t rows) const {
    if (!causal) return 0;
    return std::clamp<int64_t>(ks + c - offset() - qs, 0, rows);
  }
};

// Pack x[t, h] (row stride ld) for t < T into panels P[t / 64][h][t % 64], zero past T.
void pack_transposed(const float* x, int64_t ld, int64_t T, int64_t H, float* panels) {
  const int64_t padded = round_up(std::max<int64_t>(T, 1), kPanel);
  for (int64_t t0 = 0; t0 < padded; t0 += kPanel) {
    float* p = panels + t0 * H;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < kPanel; ++t) p[h * kPanel + t] = t0 + t < T ? x[(t0 + t) * ld + h] : 0.f;
  }
}

// S[rows x ld] = alpha * X[rows, H] (row stride ldx) times keys [ks, ks + ld) from the panels.
// Rows that see no key of a panel (first_row(p) > their index) are left unwritten there.
template <typename FirstRow>
void times_panels(int64_t rows, int64_t H, const float* X, int64_t ldx, const float* panels,
                  int64_t ks, int64_t ld, float* S, float alpha, const FirstRow& first_row) {
  for (int64_t p = 0; p < ld; p += kPanel) {
    const int64_t r0 = first_row(p);
    if (r0 < rows)
      gemm(rows - r0, kPanel, H, X + r0 * ldx, ldx, 1, panels + (ks + p) * H, kPanel,
           S + r0 * ld + p, ld, alpha, false);
  }
}

constexpr int64_t kChunk = 8 * kMR;  // rows (or keys) per triangular sub-product

// C[rows x H] (+)= alpha * A[rows x K] B, where row r only needs k < need(r) (nondecreasing):
// each chunk of kChunk rows runs to the need of its last row.
template <typename Need>
void gemm_rows_tri(int64_t rows, int64_t H, const float* A, int64_t lda, const float* B,
                   int64_t ldb, float* C, int64_t ldc, float alpha, const Need& need) {
  for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
    const int64_t m = std::min(kChunk, rows - r0), kk = need(r0 + m - 1);
    if (kk > 0) gemm(m, H, kk, A + r0 * lda, lda, 1, B, ldb, C + r0 * ldc, ldc, alpha, true);
  }
}

// C[cols x H] (+)= alpha * A^T B with A [rows x cols] (stride lda), where key c only gets
// contributions from rows r >= first_row(c) (nondecreasing): each chunk of kChunk keys starts at
// the first row of its first key.
template <typename FirstRow>
void gemm_keys_tri(int64_t cols, int64_t rows, int64_t H, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float* C, int64_t ldc, float alpha,
                   const FirstRow& first_row) {
  for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
    const int64_t m = std::min(kChunk, cols - c0), r0 = first_row(c0);
    if (r0 < rows)
      gemm(m, H, rows - r0, A + r0 * lda + c0, 1, lda, B + r0 * ldb, ldb, C + c0 * ldc, ldc,
           alpha, true);
  }
}

// Run body(i) for i in [0, items) on the caller and up to pool.num_threads() - 1 helpers.
// Helpers that start after the work is gone touch only the shared counters, so the caller
// waits only for helpers that are running an item. An exception in any item (std::bad_alloc for
// a workspace) stops the remaining items and comes back as an error, never across the FFI.
template <typename F>
ffi::Error parallel_for(ffi::ThreadPool& pool, int64_t items, const F& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> active{0};
    std::atomic<bool> failed{false};
  };
  auto state = std::make_shared<State>();
  const F* fn = &body;
  auto drain = [items](State& st, const F* f) {  // f is dereferenced only for a claimed item
    try {
      for (int64_t i; (i = st.next.fetch_add(1)) < items;) (*f)(i);
    } catch (...) {
      st.failed.store(true);
      st.next.store(items);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([state, fn, drain]() {
      state->active.fetch_add(1);
      drain(*state, fn);
      state->active.fetch_sub(1);
    });
  }
  drain(*state, fn);
  while (state->active.load() != 0) std::this_thread::yield();
  if (state->failed.load())
    return ffi::Error::Internal("flash attention: a worker failed (out of memory for its workspace?)");
  return ffi::Error::Success();
}

void forward_item(const Shape& s, const float* q, const float* k, const float* v, float* o,
                  float* lse, int64_t b, int64_t kvh) {
  const int64_t H = s.H, ldq = s.ldq(), ldk = s.ldk(), ld_max = round_up(s.bk, kPanel);
  const float* K = k + s.k_at(b, 0, kvh);
  const float* V = v + s.k_at(b, 0, kvh);
  std::vector<float> kt(round_up(std::max<int64_t>(s.Tk, 1), kPanel) * H);
  pack_transposed(K, ldk, s.Tk, H, kt.data());
  std::vector<float> S(s.bq * ld_max), acc(s.bq * H), m(s.bq), l(s.bq);
  for (int64_t n = kvh * s.G(); n < (kvh + 1) * s.G(); ++n) {
    for (int64_t qs = 0; qs < s.Tq; qs += s.bq) {
      const int64_t qe = std::min(qs + s.bq, s.Tq), rows = qe - qs, hi = s.visible_end(qe);
      const float* Q = q + s.q_at(b, qs, n);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t ks = 0; ks < hi; ks += s.bk) {
        const int64_t cols = std::min(s.bk, hi - ks), ld = round_up(cols, kPanel);
        auto first = [&](int64_t c) { return s.first_row(qs, ks, c, rows); };
        auto need = [&](int64_t r) { return s.row_visible(qs + r, ks, cols); };
        times_panels(rows, H, Q, ldq, kt.data(), ks, ld, S.data(), s.scale, first);
        for (int64_t r = 0; r < rows; ++r) {
          float* sr = S.data() + r * ld;
          const int64_t vis = need(r);
          const float m_old = m[r], mx = vis ? row_max(sr, vis, m_old) : m_old;
          const float mu = std::isfinite(mx) ? mx : 0.f;
          const float sum = row_exp(sr, vis, cols, mu);
          const float corr = std::isfinite(m_old) ? std::exp(m_old - mu) : 0.f;
          l[r] = l[r] * corr + sum;
          if (corr != 1.f)
            for (int64_t h = 0; h < H; ++h) acc[r * H + h] *= corr;
          m[r] = mx;
        }
        gemm_rows_tri(rows, H, S.data(), ld, V + ks * ldk, ldk, acc.data(), H, 1.f, need);
      }
      float* O = o + s.q_at(b, qs, n);
      float* L = lse + s.lse_at(b, n, qs);
      for (int64_t r = 0; r < rows; ++r) {  // rows with no visible key: output 0, lse +inf
        const bool empty = l[r] == 0.f;
        const float inv = empty ? 0.f : 1.f / l[r];
        for (int64_t h = 0; h < H; ++h) O[r * ldq + h] = acc[r * H + h] * inv;
        L[r] = empty ? INFINITY : m[r] + std::log(l[r]);
      }
    }
  }
}

void backward_item(const Shape& s, const float* q, const float* k, const float* v, const float* o,
                   const float* lse, const float* dout, float* dq, float* dk, float* dv,
                   int64_t b, int64_t kvh) {
  const int64_t H = s.H, ldq = s.ldq(), ldk = s.ldk(), ld_max = round_up(s.bk, kPanel);
  const float* K = k + s.k_at(b, 0, kvh);
  const float* V = v + s.k_at(b, 0, kvh);
  const int64_t padded = round_up(std::max<int64_t>(s.Tk, 1), kPanel);
  std::vector<float> kt(padded * H), vt(padded * H);
  pack_transposed(K, ldk, s.Tk, H, kt.data());
  pack_transposed(V, ldk, s.Tk, H, vt.data());
  std::vector<float> dK(s.Tk * H, 0.f), dV(s.Tk * H, 0.f);
  std::vector<float> P(s.bq * ld_max), dS(s.bq * ld_max), dQ(s.bq * H), D(s.bq);
  for (int64_t n = kvh * s.G(); n < (kvh + 1) * s.G(); ++n) {
    for (int64_t qs = 0; qs < s.Tq; qs += s.bq) {
      const int64_t qe = std::min(qs + s.bq, s.Tq), rows = qe - qs, hi = s.visible_end(qe);
      const float* Q = q + s.q_at(b, qs, n);
      const float* O = o + s.q_at(b, qs, n);
      const float* dO = dout + s.q_at(b, qs, n);
      const float* L = lse + s.lse_at(b, n, qs);
      for (int64_t r = 0; r < rows; ++r) {
        float d = 0.f;
        for (int64_t h = 0; h < H; ++h) d += dO[r * ldq + h] * O[r * ldq + h];
        D[r] = d;
      }
      std::fill(dQ.begin(), dQ.end(), 0.f);
      for (int64_t ks = 0; ks < hi; ks += s.bk) {
        const int64_t cols = std::min(s.bk, hi - ks), ld = round_up(cols, kPanel);
        auto first = [&](int64_t c) { return s.first_row(qs, ks, c, rows); };
        auto need = [&](int64_t r) { return s.row_visible(qs + r, ks, cols); };
        times_panels(rows, H, Q, ldq, kt.data(), ks, ld, P.data(), s.scale, first);
        for (int64_t r = 0; r < rows; ++r)  // lse = +inf (no visible key) gives p = 0
          row_exp(P.data() + r * ld, need(r), ld, std::isfinite(L[r]) ? L[r] : INFINITY);
        // dV[ks:] += P^T dO
        gemm_keys_tri(cols, rows, H, P.data(), ld, dO, ldq, dV.data() + ks * H, H, 1.f, first);
        // dS = P * (dO V^T - D)
        times_panels(rows, H, dO, ldq, vt.data(), ks, ld, dS.data(), 1.f, first);
        for (int64_t r = 0; r < rows; ++r)
          row_ds(P.data() + r * ld, dS.data() + r * ld, need(r), ld, D[r]);
        // dQ += scale dS K; dK[ks:] += scale dS^T Q
        gemm_rows_tri(rows, H, dS.data(), ld, K + ks * ldk, ldk, dQ.data(), H, s.scale, need);
        gemm_keys_tri(cols, rows, H, dS.data(), ld, Q, ldq, dK.data() + ks * H, H, s.scale, first);
      }
      float* dQo = dq + s.q_at(b, qs, n);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(dQo + r * ldq, dQ.data() + r * H, sizeof(float) * H);
    }
  }
  float* dKo = dk + s.k_at(b, 0, kvh);
  float* dVo = dv + s.k_at(b, 0, kvh);
  for (int64_t t = 0; t < s.Tk; ++t) {
    std::memcpy(dKo + t * ldk, dK.data() + t * H, sizeof(float) * H);
    std::memcpy(dVo + t * ldk, dV.data() + t * H, sizeof(float) * H);
  }
}

ffi::Error make_shape(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, float scale,
                      int32_t causal, int64_t block_q, int64_t block_k, Shape* s) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4)
    return ffi::Error::InvalidArgument("flash attention: q and k must be rank 4 (BTNH)");
  *s = Shape{qd[0], qd[1], kd[1], qd[2], kd[2], qd[3], scale, causal != 0, block_q, block_k};
  if (kd[0] != s->B || kd[3] != s->H || s->KV < 1 || s->N % s->KV)
    return ffi::Error::InvalidArgument("flash attention: k must be [B, Tk, K, H] with K dividing N");
  if (s->H % 16 || s->H < 16 || block_q < 1 || block_k < kPanel || block_k % kPanel)
    return ffi::Error::InvalidArgument(
        "flash attention: H must be a multiple of 16 and block_k a multiple of 64");
  return ffi::Error::Success();
}

ffi::Error forward_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> o,
                        ffi::ResultBuffer<ffi::F32> lse, float scale, int32_t causal,
                        int64_t block_q, int64_t block_k) {
  Shape s;
  if (auto err = make_shape(q, k, scale, causal, block_q, block_k, &s); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  return parallel_for(pool, s.B * s.KV, [&](int64_t i) {
    forward_item(s, qp, kp, vp, op, lp, i / s.KV, i % s.KV);
  });
}

ffi::Error backward_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> o,
                         ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                         ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                         ffi::ResultBuffer<ffi::F32> dv, float scale, int32_t causal,
                         int64_t block_q, int64_t block_k) {
  Shape s;
  if (auto err = make_shape(q, k, scale, causal, block_q, block_k, &s); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *op = o.typed_data(), *lp = lse.typed_data(), *dop = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  return parallel_for(pool, s.B * s.KV, [&](int64_t i) {
    backward_item(s, qp, kp, vp, op, lp, dop, dqp, dkp, dvp, i / s.KV, i % s.KV);
  });
}

}  // namespace

namespace {

// The bindings both handlers share: XLA's thread pool, three inputs, and the tiling attributes
// around `middle` (the rest of the inputs and the results).
template <typename Middle>
auto bind(Middle middle) {
  return middle(ffi::Ffi::Bind()
                    .Ctx<ffi::ThreadPool>()
                    .Arg<ffi::Buffer<ffi::F32>>()    // q
                    .Arg<ffi::Buffer<ffi::F32>>()    // k
                    .Arg<ffi::Buffer<ffi::F32>>())   // v
      .template Attr<float>("scale")
      .template Attr<int32_t>("causal")
      .template Attr<int64_t>("block_q")
      .template Attr<int64_t>("block_k");
}

}  // namespace

// forward: (q, k, v) -> (o, lse [B, N, Tq])
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxgenFlashForward, forward_impl, bind([](auto&& b) {
                                return std::move(b).template Ret<ffi::Buffer<ffi::F32>>()
                                    .template Ret<ffi::Buffer<ffi::F32>>();
                              }));

// backward: (q, k, v, o, lse, do) -> (dq, dk, dv)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxgenFlashBackward, backward_impl, bind([](auto&& b) {
                                return std::move(b).template Arg<ffi::Buffer<ffi::F32>>()
                                    .template Arg<ffi::Buffer<ffi::F32>>()
                                    .template Arg<ffi::Buffer<ffi::F32>>()
                                    .template Ret<ffi::Buffer<ffi::F32>>()
                                    .template Ret<ffi::Buffer<ffi::F32>>()
                                    .template Ret<ffi::Buffer<ffi::F32>>();
                              }));
