// The LSTM cell (docs/design.md section 1b), torch's gate order i, f, g, o, with the optional
// projection (proj_size P: h_t = m_t W_hrᵀ, m_t = o ⊙ tanh(c_t), W_hh (4H, P)).
//
// Its step: the recurrent product h_{t-1} W_hhᵀ, block by block (the backend's packed H × H
// step, kStore; with P, BLAS GEMMs on fixed blocks of rows), then its pointwise pass. Layouts,
// N = total rows:
//   gates (N, 4H)  saved: the activated gates of every row
//   c (N, H)       saved: c_t
//   m (N, H)       saved with P only: m_t, for ∂W_hr
//   δ              4 planes (N, H), one per gate block, so that every product reads
//                  contiguous rows
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../recurrence.h"

namespace rnnkern {

struct Lstm {
  static constexpr const char* kName = "lstm";
  static constexpr int64_t kGates = 4;
  static constexpr int kStates = 2;
  static constexpr bool kNonlinearity = false;
  static constexpr bool kProjection = true;
  static constexpr int kWhhDims = 2;
  static constexpr int kSavedCount = 3;
  static constexpr SavedArray kSaved[kMaxSaved] = {{"gates", 4, false}, {"c", 1, false},
                                                   {"m", 1, true}};

  // With P the per-step products are BLAS calls, whose result for a row can depend on how
  // many rows the call has: they run on blocks of this many rows counted from row 0, and row
  // ranges begin on them, so that results do not depend on the thread count.
  static constexpr int64_t kProjRows = 32;

  // The math of one step, for V a scalar or a vector of lanes; M supplies sigmoid and tanh.
  // Forward: pre-activations a_* (both biases included) and c_{t-1} give the gates (stored for
  // backward), c_t and m_t = o ⊙ tanh(c_t) (h_t without proj_size).
  template <typename V, typename M>
  RNNKERN_HOST_DEVICE static void forward_math(const M& math, V a_i, V a_f, V a_g, V a_o,
                                               V c_prev, V& i, V& f, V& g, V& o, V& c, V& m) {
    i = math.sigmoid(a_i);
    f = math.sigmoid(a_f);
    g = math.tanh(a_g);
    o = math.sigmoid(a_o);
    c = f * c_prev + i * g;
    m = o * math.tanh(c);
  }

  // Backward: d = ∂L/∂m_t, dc = ∂L/∂c_t from step t+1 on entry, the whole ∂L/∂c_t on exit;
  // dc_prev = ∂L/∂c_{t-1}; da_* = ∂L/∂a_* (δ_t).
  // d = 0 contributes nothing, selected rather than multiplied: where no gradient reaches h_t
  // (a loss on c_n alone, at a sequence's last step) torch's autograd forms no product with o
  // or τ at all, while rnnkern is handed zeros, and 0 · NaN (τ or o NaN) would be NaN.
  template <typename V, typename M>
  RNNKERN_HOST_DEVICE static void backward_math(const M& math, V d, V i, V f, V g, V o, V c,
                                                V c_prev, V& dc, V& dc_prev, V& da_i,
                                                V& da_f, V& da_g, V& da_o) {
    const V zero{};
    const V one = zero + 1;
    const V tau = math.tanh(c);
    const auto none = d == zero;
    da_o = none ? zero : d * tau * o * (one - o);
    dc = none ? dc : d * o * (one - tau * tau) + dc;
    da_i = dc * g * i * (one - i);
    da_g = dc * i * (one - g * g);
    da_f = dc * c_prev * f * (one - f);
    dc_prev = dc * f;
  }

  // The pointwise passes over `rows` rows: gates hold x W_ihᵀ on entry and the activated gates
  // on exit; acc holds h_{t-1} W_hhᵀ, row r's gate q at acc + r · acc_row + q · acc_plane;
  // delta gets δ's planes at delta + q · plane.
  template <typename T>
  struct ForwardPass {
    int64_t rows, H;
    T* gates;
    const T* acc;
    int64_t acc_row, acc_plane;
    const T *bias, *c_prev;
    T *c, *m;
  };
  template <typename T>
  struct BackwardPass {
    int64_t rows, H;
    const T* d;
    T* dc;
    const T *gates, *c, *c_prev;
    T* delta;
    int64_t plane;
    double *norm_h, *norm_c;
  };

  // Isa (cpu/recurrent_kernel.h): columns, get, put, lane_sum and Math for one instruction set.
  template <typename T, typename Isa>
  static void forward_pass(const ForwardPass<T>& a) {
    const typename Isa::Math math;
    const int64_t H = a.H;
    for (int64_t r = 0; r < a.rows; ++r) {
      T* gr = a.gates + r * 4 * H;
      const T* ar = a.acc + r * a.acc_row;
      Isa::template columns<T>(H, [&](int64_t j, auto vector) {
        constexpr bool kV = decltype(vector)::value;
        auto get = [](const T* q) { return Isa::template get<T, kV>(q); };
        auto pre = [&](int q) {
          return get(gr + q * H + j) + get(ar + q * a.acc_plane + j) + get(a.bias + q * H + j);
        };
        decltype(pre(0)) i, f, g, o, cv, mv;
        forward_math(math, pre(0), pre(1), pre(2), pre(3), get(a.c_prev + r * H + j), i, f, g,
                     o, cv, mv);
        Isa::put(gr + j, i);
        Isa::put(gr + H + j, f);
        Isa::put(gr + 2 * H + j, g);
        Isa::put(gr + 3 * H + j, o);
        Isa::put(a.c + r * H + j, cv);
        Isa::put(a.m + r * H + j, mv);
      });
    }
  }

  template <typename T, typename Isa>
  static void backward_pass(const BackwardPass<T>& a) {
    const typename Isa::Math math;
    const int64_t H = a.H;
    for (int64_t r = 0; r < a.rows; ++r) {
      const T* gr = a.gates + r * 4 * H;
      T sum_h = 0, sum_c = 0;
      Isa::template columns<T>(H, [&](int64_t j, auto vector) {
        constexpr bool kV = decltype(vector)::value;
        auto get = [](const T* q) { return Isa::template get<T, kV>(q); };
        const auto dv = get(a.d + r * H + j);
        auto dcv = get(a.dc + r * H + j);
        decltype(dcv) dc_prev, da_i, da_f, da_g, da_o;
        backward_math(math, dv, get(gr + j), get(gr + H + j), get(gr + 2 * H + j),
                      get(gr + 3 * H + j), get(a.c + r * H + j), get(a.c_prev + r * H + j), dcv,
                      dc_prev, da_i, da_f, da_g, da_o);
        if (a.norm_h) sum_h += Isa::template lane_sum<T>(dv * dv);
        if (a.norm_c) sum_c += Isa::template lane_sum<T>(dcv * dcv);
        Isa::put(a.dc + r * H + j, dc_prev);
        T* dr = a.delta + r * H + j;
        Isa::put(dr, da_i);
        Isa::put(dr + a.plane, da_f);
        Isa::put(dr + 2 * a.plane, da_g);
        Isa::put(dr + 3 * a.plane, da_o);
      });
      if (a.norm_h) a.norm_h[r] = std::sqrt(double(sum_h));
      if (a.norm_c) a.norm_c[r] = std::sqrt(double(sum_c));
    }
  }

  // f(a, b) for [a, b) cut at multiples of kProjRows.
  template <typename F>
  static void by_blocks(int64_t a, int64_t b, F&& f) {
    while (a < b) {
      const int64_t end = (a / kProjRows + 1) * kProjRows;
      const int64_t e = end < b ? end : b;
      f(a, e);
      a = e;
    }
  }

  template <typename T, typename K>
  struct Forward {
    const Problem& p;
    const Inputs<T>& in;
    K& k;
    T *y, *gates, *c_all, *m;
    const T* w_step[4] = {};  // block q: W_hh rows [qH, (q+1)H) as the step reads them (without P)
    T* bias;    // b_ih + b_hh
    T* acc;     // h_{t-1} W_hhᵀ of the rows of one step: 4 planes of B × H, or (B, 4H) rows
                // where the backend's steps read W_hh as it is (one step_gates call)

    static int64_t workspace_size(const Problem& p) {
      const int64_t H = p.hidden_size;
      return (p.proj_size ? 0 : 4 * K::packed_size(H)) + 4 * H + 4 * p.batch * H;
    }

    Forward(const Problem& p_, const Inputs<T>& in_, const Outputs<T>& out, T* workspace, K& k_)
        : p(p_), in(in_), k(k_), y(out.y), gates(out.saved[0]), c_all(out.saved[1]),
          m(p_.proj_size ? out.saved[2] : nullptr) {
      const int64_t H = p.hidden_size;
      if (!p.proj_size)
        for (int64_t q = 0; q < 4; ++q)
          w_step[q] = k.pack(in.w_hh + q * H * H, H, /*transpose=*/true,
                             workspace + q * K::packed_size(H));
      bias = workspace + (p.proj_size ? 0 : 4 * K::packed_size(H));
      acc = bias + 4 * H;
      for (int64_t j = 0; j < 4 * H; ++j)
        bias[j] = (in.b_ih ? element(in.b_ih, j) : T(0)) + (in.b_hh ? element(in.b_hh, j) : T(0));
    }
    T* projection() const { return gates; }
    const T* c() const { return c_all; }
    int64_t row_align() const { return p.proj_size ? kProjRows : 1; }

    void pass(int64_t off, int64_t a, int64_t b, const T* c_prev, T* m_rows,
              bool whole = false) const {
      const int64_t H = p.hidden_size, row = whole ? 4 * H : H;
      k.template forward_pass<Lstm>(ForwardPass<T>{b - a, H, gates + (off + a) * 4 * H,
                                                   acc + a * row, row, whole ? H : p.batch * H,
                                                   bias, c_prev, c_all + (off + a) * H,
                                                   m_rows});
    }

    void step(int64_t off, int64_t a, int64_t b, const T* h_prev, const T* c_prev) const {
      const int64_t H = p.hidden_size, B = p.batch, P = p.proj_size;
      if (!P && k.reads_whole()) {
        k.step_gates(b - a, H, 4, h_prev, in.w_hh, acc + a * 4 * H);
        k.pass_rows(b - a, H, [&](int64_t r0, int64_t r1) {
          pass(off, a + r0, a + r1, c_prev + r0 * H, y + (off + a + r0) * H, /*whole=*/true);
        });
        return;
      }
      if (!P) {
        for (int64_t q = 0; q < 4; ++q)
          k.step(Epilogue::kStore, Activation::kTanh, b - a, H, h_prev, w_step[q],
                 acc + q * B * H + a * H, nullptr, nullptr);
        pass(off, a, b, c_prev, y + (off + a) * H);
        return;
      }
      by_blocks(a, b, [&](int64_t a0, int64_t b0) {
        const T* hp = h_prev + (a0 - a) * P;
        for (int64_t q = 0; q < 4; ++q)
          k.gemm(false, true, b0 - a0, H, P, T(1), hp, P, in.w_hh + q * H * P, P, T(0),
                 acc + q * B * H + a0 * H, H);
        T* mr = m + (off + a0) * H;
        pass(off, a0, b0, c_prev + (a0 - a) * H, mr);
        k.gemm(false, true, b0 - a0, P, H, T(1), mr, H, in.w_hr, H, T(0), y + (off + a0) * P,
               P);
      });
    }
  };

  template <typename T, typename K>
  struct Backward {
    const Problem& p;
    const Inputs<T>& in;
    const Outputs<const T>& out;
    const Gradients<T>& g;
    K& k;
    const T *gates, *c_all, *m;
    const T* w_back[4];  // block q: W_hh rows [qH, (q+1)H) as the backward's step reads them
                         // (k.pack; without P)
    T* delta;   // 4 planes (N, H)
    T* d;       // B × W (W = P or H): the gradient reaching h_t, per row
    T* dc;      // B × H: ∂L/∂c_t
    T* dm;      // B × H: ∂L/∂m_t (P only)
    T* d_all;   // (N, P): ∂L/∂h_t of every row, for ∂W_hr (P only)
    T* h_prev;  // (N, W): the gathered h_{t-1} for ∂W_hh (packed input only)
    int64_t plane;

    static int64_t workspace_size(const Problem& p, bool) {
      const int64_t H = p.hidden_size, N = p.total_rows(), W = p.state_size();
      const int64_t P = p.proj_size;
      return (P ? 0 : 4 * K::packed_size(H)) + 4 * N * H + (P ? N * P : 0) + p.batch * W +
             (P ? 2 : 1) * p.batch * H + (p.uniform() ? 0 : N * W);
    }

    Backward(const Problem& p_, const Inputs<T>& in_, const Outputs<const T>& out_,
             const Gradients<T>& g_, T* workspace, K& k_)
        : p(p_), in(in_), out(out_), g(g_), k(k_), gates(out_.saved[0]), c_all(out_.saved[1]),
          m(p_.proj_size ? out_.saved[2] : nullptr) {
      const int64_t H = p.hidden_size, N = p.total_rows(), B = p.batch, P = p.proj_size;
      const int64_t W = p.state_size();
      plane = N * H;
      if (!P)
        for (int64_t q = 0; q < 4; ++q)
          w_back[q] = k.pack(in.w_hh + q * H * H, H, /*transpose=*/false,
                             workspace + q * K::packed_size(H));
      delta = workspace + (P ? 0 : 4 * K::packed_size(H));
      d_all = delta + 4 * plane;
      d = d_all + (P ? N * P : 0);
      dc = d + B * W;
      dm = dc + B * H;
      h_prev = dm + (P ? B * H : 0);
    }
    const T* c() const { return c_all; }
    int64_t row_align() const { return p.proj_size ? kProjRows : 1; }
    void begin(RowRange) const {}

    // dst rows [a, b) (W values each) += δ rows (off + a …) times W_hh, or = with overwrite.
    void add_recurrent(int64_t off, int64_t a, int64_t b, T* dst, bool overwrite = false) const {
      const int64_t W = p.state_size();
      if (overwrite && !p.proj_size) std::memset(dst, 0, sizeof(T) * (b - a) * W);
      const int64_t H = p.hidden_size, P = p.proj_size;
      if (!P) {
        for (int64_t q = 0; q < 4; ++q)
          k.step(Epilogue::kAccumulate, Activation::kTanh, b - a, H,
                 delta + q * plane + (off + a) * H, w_back[q], dst, nullptr, nullptr);
        return;
      }
      by_blocks(a, b, [&](int64_t a0, int64_t b0) {
        for (int64_t q = 0; q < 4; ++q)
          k.gemm(false, false, b0 - a0, P, H, T(1), delta + q * plane + (off + a0) * H, H,
                 in.w_hh + q * H * P, P, overwrite && q == 0 ? T(0) : T(1), dst + (a0 - a) * P,
                 P);
      });
    }
    void continuing(int64_t off, int64_t prev_off, int64_t a, int64_t b) const {
      const int64_t W = p.state_size();
      load_rows(g.grad_y, off + a, b - a, W, d + a * W, W, false);
      add_recurrent(prev_off, a, b, d + a * W);
    }
    // No later step: grad_hn, grad_cn instead.
    void ending(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size, W = p.state_size();
      load_rows(g.grad_y, off + a, b - a, W, d + a * W, W, false);
      for (int64_t r = a; r < b; ++r) {
        if (g.grad_hn)
          for (int64_t j = 0; j < W; ++j) d[r * W + j] += element(g.grad_hn, r * W + j);
        for (int64_t j = 0; j < H; ++j) dc[r * H + j] = g.grad_cn ? element(g.grad_cn, r * H + j) : T(0);
      }
    }
    void pointwise(int64_t off, int64_t a, int64_t b, const T*, const T* c_prev) const {
      const int64_t H = p.hidden_size, P = p.proj_size;
      const T* dh = d + a * H;
      double* nh = g.norm_h ? g.norm_h + off + a : nullptr;
      if (P) {  // ∂L/∂m_t = ∂L/∂h_t W_hr; the norms of ∂L/∂h_t, of P values
        std::memcpy(d_all + (off + a) * P, d + a * P, sizeof(T) * (b - a) * P);
        if (nh)
          for (int64_t r = a; r < b; ++r) {
            double sum = 0;
            for (int64_t j = 0; j < P; ++j) sum += double(d[r * P + j]) * double(d[r * P + j]);
            g.norm_h[off + r] = std::sqrt(sum);
          }
        by_blocks(a, b, [&](int64_t a0, int64_t b0) {
          k.gemm(false, false, b0 - a0, H, P, T(1), d + a0 * P, P, in.w_hr, H, T(0),
                 dm + a0 * H, H);
        });
        dh = dm + a * H;
        nh = nullptr;
      }
      k.template backward_pass<Lstm>(BackwardPass<T>{
          b - a, H, dh, dc + a * H, gates + (off + a) * 4 * H, c_all + (off + a) * H, c_prev,
          delta + (off + a) * H, plane, nh, g.norm_c ? g.norm_c + off + a : nullptr});
    }
    // Rows that started from h0 at this step: ∂L/∂h0 = δ W_hh, ∂L/∂c0.
    void initial(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size, W = p.state_size();
      if (g.h0) add_recurrent(off, a, b, g.h0 + a * W, /*overwrite=*/true);
      if (g.c0) std::memcpy(g.c0 + a * H, dc + a * H, sizeof(T) * (b - a) * H);
    }
    const T* input_delta(int64_t q) const { return delta + q * plane; }
    const T* hidden_delta(int64_t q) const { return delta + q * plane; }
    void bias_gradient(const T* plane_q, T* out_b) const {
      k.column_sums(p.total_rows(), p.hidden_size, plane_q, out_b);
    }
    void finish() const {
      const int64_t H = p.hidden_size, N = p.total_rows(), P = p.proj_size, W = p.state_size();
      if (P && g.w_hr) k.gemm(true, false, P, H, N, T(1), d_all, P, m, H, T(0), g.w_hr, H);
      if (!g.w_hh) return;
      if (!p.uniform()) gather_previous(p, out.y, in.h0, W, h_prev);
      for (int64_t q = 0; q < 4; ++q)
        recurrent_weight_gradient(p, k, input_delta(q), H, out.y, in.h0,
                                  static_cast<const T*>(h_prev), W, g.w_hh + q * H * W);
    }
  };
};

}  // namespace rnnkern
