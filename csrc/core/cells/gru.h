// The GRU cell (docs/design.md section 1b), torch's gate order r, z, n.
//
// Its step: h_{t-1} W_hhᵀ block by block (the backend's packed H × H step, kStore), then its
// pointwise pass. Layouts, N = total rows:
//   gates (N, 3H)     saved: the activated gates r, z, n of every row
//   hidden_n (N, H)   saved: h_n = h_{t-1} W_hnᵀ + b_hn, the hidden part of n
//   δ                 4 planes (N, H): the input side of r, z, n, and δ_n ⊙ r, the hidden
//                     side of n, so that every product reads contiguous rows
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../recurrence.h"

namespace rnnkern {

struct Gru {
  static constexpr const char* kName = "gru";
  static constexpr int64_t kGates = 3;
  static constexpr int kStates = 1;
  static constexpr bool kNonlinearity = false;
  static constexpr bool kProjection = false;
  static constexpr int kWhhDims = 2;
  static constexpr int kSavedCount = 2;
  static constexpr SavedArray kSaved[kMaxSaved] = {{"gates", 3, false}, {"hidden_n", 1, false}};

  // The math of one step, for V a scalar or a vector of lanes; M supplies sigmoid and tanh.
  // Forward: x_* = x_t W_i*ᵀ + b_i*, h_* = h_{t-1} W_h*ᵀ + b_h*; the gates r, z, n and h_t.
  template <typename V, typename M>
  RNNKERN_HOST_DEVICE static void forward_math(const M& math, V x_r, V x_z, V x_n, V h_r,
                                               V h_z, V h_n, V h_prev, V& r, V& z, V& n,
                                               V& h) {
    r = math.sigmoid(x_r + h_r);
    z = math.sigmoid(x_z + h_z);
    n = math.tanh(x_n + r * h_n);
    h = ((V{} + 1) - z) * n + z * h_prev;
  }

  // Backward: d = the whole ∂L/∂h_t. da_* the input-side gradients, dh_n = da_n ⊙ r the
  // hidden side of n; carry = d ⊙ z, the part of ∂L/∂h_{t-1} that skips W_hh.
  template <typename V>
  RNNKERN_HOST_DEVICE static void backward_math(V d, V r, V z, V n, V h_n, V h_prev, V& da_r,
                                                V& da_z, V& da_n, V& dh_n, V& carry) {
    const V one = V{} + 1;
    da_n = d * (one - z) * (one - n * n);
    da_z = d * (h_prev - n) * z * (one - z);
    da_r = da_n * h_n * r * (one - r);
    dh_n = da_n * r;
    carry = d * z;
  }

  // The pointwise passes over `rows` rows: gates hold x W_ihᵀ on entry and the activated gates
  // on exit; acc holds h_{t-1} W_hhᵀ, gate q's block at acc + q · acc_plane; delta gets δ's
  // planes at delta + q · plane; d gets the carry.
  template <typename T>
  struct ForwardPass {
    int64_t rows, H;
    T* gates;
    const T* acc;  // row r's gate q at acc + r · acc_row + q · acc_plane
    int64_t acc_row, acc_plane;
    const T *b_ih, *b_hh, *h_prev;
    T *hn, *h;
  };
  template <typename T>
  struct BackwardPass {
    int64_t rows, H;
    T* d;
    const T *gates, *hn, *h_prev;
    T* delta;
    int64_t plane;
    double* norm_h;
  };

  // Isa (cpu/recurrent_kernel.h): columns, get, put, lane_sum and Math for one instruction set.
  template <typename T, typename Isa>
  static void forward_pass(const ForwardPass<T>& a) {
    const typename Isa::Math math;
    const int64_t H = a.H;
    for (int64_t r = 0; r < a.rows; ++r) {
      T* gr = a.gates + r * 3 * H;
      const T* ar = a.acc + r * a.acc_row;
      Isa::template columns<T>(H, [&](int64_t j, auto vector) {
        constexpr bool kV = decltype(vector)::value;
        auto get = [](const T* q) { return Isa::template get<T, kV>(q); };
        auto x = [&](int q) { return get(gr + q * H + j) + get(a.b_ih + q * H + j); };
        auto hh = [&](int q) { return get(ar + q * a.acc_plane + j) + get(a.b_hh + q * H + j); };
        const auto h_n = hh(2);
        std::remove_const_t<decltype(h_n)> rv, zv, nv, hv;
        forward_math(math, x(0), x(1), x(2), hh(0), hh(1), h_n, get(a.h_prev + r * H + j), rv,
                     zv, nv, hv);
        Isa::put(gr + j, rv);
        Isa::put(gr + H + j, zv);
        Isa::put(gr + 2 * H + j, nv);
        Isa::put(a.hn + r * H + j, h_n);
        Isa::put(a.h + r * H + j, hv);
      });
    }
  }

  template <typename T, typename Isa>
  static void backward_pass(const BackwardPass<T>& a) {
    const int64_t H = a.H;
    for (int64_t r = 0; r < a.rows; ++r) {
      const T* gr = a.gates + r * 3 * H;
      T sum_h = 0;
      Isa::template columns<T>(H, [&](int64_t j, auto vector) {
        constexpr bool kV = decltype(vector)::value;
        auto get = [](const T* q) { return Isa::template get<T, kV>(q); };
        const auto dv = get(a.d + r * H + j);
        decltype(dv + dv) da_r, da_z, da_n, dh_n, carry;
        backward_math(dv, get(gr + j), get(gr + H + j), get(gr + 2 * H + j),
                      get(a.hn + r * H + j), get(a.h_prev + r * H + j), da_r, da_z, da_n, dh_n,
                      carry);
        if (a.norm_h) sum_h += Isa::template lane_sum<T>(dv * dv);
        Isa::put(a.d + r * H + j, carry);
        T* dr = a.delta + r * H + j;
        Isa::put(dr, da_r);
        Isa::put(dr + a.plane, da_z);
        Isa::put(dr + 2 * a.plane, da_n);
        Isa::put(dr + 3 * a.plane, dh_n);
      });
      if (a.norm_h) a.norm_h[r] = std::sqrt(double(sum_h));
    }
  }

  template <typename T, typename K>
  struct Forward {
    const Problem& p;
    K& k;
    T *y, *gates, *hidden_n;
    const T* w_step[3] = {};  // block q: W_hh rows [qH, (q+1)H) as the step reads them
    T *bias_x, *bias_h;
    T* acc;     // h_{t-1} W_hhᵀ of the rows of one step: 3 planes of B × H, or (B, 3H) rows
                // where the backend's steps read W_hh as it is (one step_gates call)

    static int64_t workspace_size(const Problem& p) {
      const int64_t H = p.hidden_size;
      return 3 * K::packed_size(H) + 6 * H + 3 * p.batch * H;
    }

    Forward(const Problem& p_, const Inputs<T>& in, const Outputs<T>& out, T* workspace, K& k_)
        : p(p_), k(k_), y(out.y), gates(out.saved[0]), hidden_n(out.saved[1]) {
      const int64_t H = p.hidden_size;
      for (int64_t q = 0; q < 3; ++q)
        w_step[q] = k.pack(in.w_hh + q * H * H, H, /*transpose=*/true,
                           workspace + q * K::packed_size(H));
      bias_x = workspace + 3 * K::packed_size(H);
      bias_h = bias_x + 3 * H;
      acc = bias_h + 3 * H;
      for (int64_t j = 0; j < 3 * H; ++j) {
        bias_x[j] = in.b_ih ? element(in.b_ih, j) : T(0);
        bias_h[j] = in.b_hh ? element(in.b_hh, j) : T(0);
      }
    }
    T* projection() const { return gates; }
    const T* c() const { return nullptr; }
    int64_t row_align() const { return 1; }

    void step(int64_t off, int64_t a, int64_t b, const T* h_prev, const T*) const {
      const int64_t H = p.hidden_size, B = p.batch;
      const bool whole = k.reads_whole();
      if (whole)  // w_step[0] is W_hh itself
        k.step_gates(b - a, H, 3, h_prev, w_step[0], acc + a * 3 * H);
      else
        for (int64_t q = 0; q < 3; ++q)
          k.step(Epilogue::kStore, Activation::kTanh, b - a, H, h_prev, w_step[q],
                 acc + q * B * H + a * H, nullptr, nullptr);
      const int64_t row = whole ? 3 * H : H;
      auto pass = [&](int64_t r0, int64_t r1) {
        const int64_t first = a + r0;
        k.template forward_pass<Gru>(ForwardPass<T>{
            r1 - r0, H, gates + (off + first) * 3 * H, acc + first * row, row,
            whole ? H : B * H, bias_x, bias_h, h_prev + r0 * H, hidden_n + (off + first) * H,
            y + (off + first) * H});
      };
      k.pass_rows(b - a, H, pass);
    }
  };

  template <typename T, typename K>
  struct Backward {
    const Problem& p;
    const Inputs<T>& in;
    const Outputs<const T>& out;
    const Gradients<T>& g;
    K& k;
    const T *gates, *hidden_n;
    const T* w_back[3];  // block q: W_hh rows [qH, (q+1)H) as the backward's step reads them
    T* delta;   // 4 planes (N, H)
    T* d;       // B × H: the gradient reaching h_t, per row (the carry between steps)
    T* h_prev;  // (N, H): the gathered h_{t-1} for ∂W_hh (packed input only)
    int64_t plane;

    static int64_t workspace_size(const Problem& p, bool) {
      const int64_t H = p.hidden_size, N = p.total_rows();
      return 3 * K::packed_size(H) + 4 * N * H + p.batch * H + (p.uniform() ? 0 : N * H);
    }

    Backward(const Problem& p_, const Inputs<T>& in_, const Outputs<const T>& out_,
             const Gradients<T>& g_, T* workspace, K& k_)
        : p(p_), in(in_), out(out_), g(g_), k(k_), gates(out_.saved[0]),
          hidden_n(out_.saved[1]) {
      const int64_t H = p.hidden_size;
      plane = p.total_rows() * H;
      for (int64_t q = 0; q < 3; ++q)
        w_back[q] = k.pack(in.w_hh + q * H * H, H, /*transpose=*/false,
                           workspace + q * K::packed_size(H));
      delta = workspace + 3 * K::packed_size(H);
      d = delta + 4 * plane;
      h_prev = d + p.batch * H;
    }
    const T* c() const { return nullptr; }
    int64_t row_align() const { return 1; }
    void begin(RowRange) const {}

    // dst rows [a, b) += δ rows (off + a …) times W_hh, block by block.
    void add_recurrent(int64_t off, int64_t a, int64_t b, T* dst) const {
      const int64_t H = p.hidden_size;
      for (int64_t q = 0; q < 3; ++q)
        k.step(Epilogue::kAccumulate, Activation::kTanh, b - a, H,
               hidden_delta(q) + (off + a) * H, w_back[q], dst, nullptr, nullptr);
    }
    // d = ∂L/∂y_t + the carry d_{t+1} ⊙ z_{t+1} left in d by the step before.
    void continuing(int64_t off, int64_t prev_off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load_rows(g.grad_y, off + a, b - a, H, d + a * H, H, true);
      add_recurrent(prev_off, a, b, d + a * H);
    }
    void ending(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load_rows(g.grad_y, off + a, b - a, H, d + a * H, H, false);
      if (g.grad_hn)
        for (int64_t r = a; r < b; ++r)
          for (int64_t j = 0; j < H; ++j) d[r * H + j] += element(g.grad_hn, r * H + j);
    }
    void pointwise(int64_t off, int64_t a, int64_t b, const T* h_prev_rows, const T*) const {
      const int64_t H = p.hidden_size;
      k.template backward_pass<Gru>(BackwardPass<T>{
          b - a, H, d + a * H, gates + (off + a) * 3 * H, hidden_n + (off + a) * H,
          h_prev_rows, delta + (off + a) * H, plane, g.norm_h ? g.norm_h + off + a : nullptr});
    }
    // Rows that started from h0 at this step: ∂L/∂h0 = δ W_hh + the carry.
    void initial(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      if (!g.h0) return;
      std::memcpy(g.h0 + a * H, d + a * H, sizeof(T) * (b - a) * H);
      add_recurrent(off, a, b, g.h0 + a * H);
    }
    const T* input_delta(int64_t q) const { return delta + q * plane; }
    const T* hidden_delta(int64_t q) const { return delta + (q == 2 ? 3 : q) * plane; }
    void bias_gradient(const T* plane_q, T* out_b) const {
      k.column_sums(p.total_rows(), p.hidden_size, plane_q, out_b);
    }
    void finish() const {
      const int64_t H = p.hidden_size;
      if (!g.w_hh) return;
      if (!p.uniform()) gather_previous(p, out.y, in.h0, H, h_prev);
      for (int64_t q = 0; q < 3; ++q)
        recurrent_weight_gradient(p, k, hidden_delta(q), H, out.y, in.h0,
                                  static_cast<const T*>(h_prev), H, g.w_hh + q * H * H);
    }
  };
};

}  // namespace rnnkern
