// The IndRNN cell (Li et al., CVPR 2018, "Independently Recurrent Neural Network"):
// h_t = φ(x_t W_ihᵀ + b_ih + u ⊙ h_{t-1} + b_hh), u = w_hh a vector of H: each unit sees only
// its own previous value, so ∂h_t/∂h_{t-1} = diag(φ'(a_t) ⊙ u) and the gradient reaching h_t
// from k steps later is, unit by unit, Π φ' · u^k.
// Its step is its pointwise pass alone (no product); nothing saved but y. Backward's δ is one
// (N, H) plane that starts as ∂L/∂y.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../recurrence.h"

namespace rnnkern {

struct IndRnn {
  static constexpr const char* kName = "indrnn";
  static constexpr int64_t kGates = 1;
  static constexpr int kStates = 1;
  static constexpr bool kNonlinearity = true;
  static constexpr bool kProjection = false;
  static constexpr int kWhhDims = 1;
  static constexpr int kSavedCount = 0;
  static constexpr SavedArray kSaved[kMaxSaved] = {};

  // Forward over `rows` rows: y holds x W_ihᵀ on entry and h_t on exit,
  // y = φ(y + bias + u ⊙ h_prev).
  template <typename T>
  struct ForwardPass {
    int64_t rows, H;
    Activation act;
    T* y;
    const T *bias, *u, *h_prev;
  };
  // Backward over `rows` rows: d holds the whole ∂L/∂h_t on entry and δ_t = d ⊙ φ'(a_t) on
  // exit; norm_h (or nullptr) gets ‖d‖₂ of each row.
  template <typename T>
  struct BackwardPass {
    int64_t rows, H;
    Activation act;
    T* d;
    const T* h;
    double* norm_h;
  };

  template <typename T, typename Isa>
  static void forward_pass(const ForwardPass<T>& a) {
    for (int64_t r = 0; r < a.rows; ++r) {
      T* yr = a.y + r * a.H;
      const T* hr = a.h_prev + r * a.H;
      Isa::template columns<T>(a.H, [&](int64_t j, auto vector) {
        constexpr bool kV = decltype(vector)::value;
        auto get = [](const T* q) { return Isa::template get<T, kV>(q); };
        Isa::put(yr + j, Isa::activation(a.act, get(yr + j) + get(a.bias + j) +
                                                    get(a.u + j) * get(hr + j)));
      });
    }
  }

  template <typename T, typename Isa>
  static void backward_pass(const BackwardPass<T>& a) {
    for (int64_t r = 0; r < a.rows; ++r) {
      T* dr = a.d + r * a.H;
      const T* hr = a.h + r * a.H;
      T sum = 0;
      Isa::template columns<T>(a.H, [&](int64_t j, auto vector) {
        constexpr bool kV = decltype(vector)::value;
        auto get = [](const T* q) { return Isa::template get<T, kV>(q); };
        const auto dv = get(dr + j);
        if (a.norm_h) sum += Isa::template lane_sum<T>(dv * dv);
        Isa::put(dr + j, Isa::activation_backward(a.act, dv, get(hr + j)));
      });
      if (a.norm_h) a.norm_h[r] = std::sqrt(double(sum));
    }
  }

  template <typename T, typename K>
  struct Forward {
    const Problem& p;
    K& k;
    T* y;
    const T* u;
    T* bias;  // b_ih + b_hh (zeros without them)

    static int64_t workspace_size(const Problem& p) { return p.hidden_size; }

    Forward(const Problem& p_, const Inputs<T>& in, const Outputs<T>& out, T* workspace, K& k_)
        : p(p_), k(k_), y(out.y), u(in.w_hh), bias(workspace) {
      for (int64_t j = 0; j < p.hidden_size; ++j)
        bias[j] = (in.b_ih ? element(in.b_ih, j) : T(0)) + (in.b_hh ? element(in.b_hh, j) : T(0));
    }
    T* projection() const { return y; }
    const T* c() const { return nullptr; }
    int64_t row_align() const { return 1; }

    void step(int64_t off, int64_t a, int64_t b, const T* h_prev, const T*) const {
      const int64_t H = p.hidden_size;
      k.template forward_pass<IndRnn>(
          ForwardPass<T>{b - a, H, p.act, y + (off + a) * H, bias, u, h_prev});
    }
  };

  template <typename T, typename K>
  struct Backward {
    const Problem& p;
    const Inputs<T>& in;
    const Outputs<const T>& out;
    const Gradients<T>& g;
    K& k;
    T* delta;   // (N, H)
    T* h_prev;  // (N, H): the gathered h_{t-1}, for ∂u

    static int64_t workspace_size(const Problem& p, bool) {
      return 2 * p.total_rows() * p.hidden_size;
    }

    Backward(const Problem& p_, const Inputs<T>& in_, const Outputs<const T>& out_,
             const Gradients<T>& g_, T* workspace, K& k_)
        : p(p_), in(in_), out(out_), g(g_), k(k_), delta(workspace),
          h_prev(workspace + p_.total_rows() * p_.hidden_size) {}
    const T* c() const { return nullptr; }
    int64_t row_align() const { return 1; }
    void begin(RowRange) const {}

    // d_t = ∂L/∂y_t + δ_{t+1} ⊙ u
    void continuing(int64_t off, int64_t prev_off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load_rows(g.grad_y, off + a, b - a, H, delta + (off + a) * H, H, false);
      for (int64_t r = a; r < b; ++r)
        for (int64_t j = 0; j < H; ++j)
          delta[(off + r) * H + j] += delta[(prev_off + r) * H + j] * element(in.w_hh, j);
    }
    // No later step: d_t = ∂L/∂y_t + grad_hn.
    void ending(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load_rows(g.grad_y, off + a, b - a, H, delta + (off + a) * H, H, false);
      if (g.grad_hn)
        for (int64_t r = a; r < b; ++r)
          for (int64_t j = 0; j < H; ++j) delta[(off + r) * H + j] += element(g.grad_hn, r * H + j);
    }
    void pointwise(int64_t off, int64_t a, int64_t b, const T*, const T*) const {
      const int64_t H = p.hidden_size;
      k.template backward_pass<IndRnn>(BackwardPass<T>{
          b - a, H, p.act, delta + (off + a) * H, out.y + (off + a) * H,
          g.norm_h ? g.norm_h + off + a : nullptr});
    }
    // ∂L/∂h0 = δ ⊙ u for rows that began from h0.
    void initial(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      if (!g.h0) return;
      for (int64_t r = a; r < b; ++r)
        for (int64_t j = 0; j < H; ++j)
          g.h0[r * H + j] = delta[(off + r) * H + j] * element(in.w_hh, j);
    }
    const T* input_delta(int64_t) const { return delta; }
    const T* hidden_delta(int64_t) const { return delta; }
    void bias_gradient(const T* plane, T* out_b) const {
      k.column_sums(p.total_rows(), p.hidden_size, plane, out_b);
    }
    // ∂u = Σ_t δ_t ⊙ h_{t-1}, summed over every row.
    void finish() const {
      const int64_t H = p.hidden_size, N = p.total_rows();
      if (!g.w_hh) return;
      gather_previous(p, out.y, in.h0, H, h_prev);
      for (int64_t j = 0; j < H; ++j) g.w_hh[j] = T(0);
      for (int64_t r = 0; r < N; ++r)
        for (int64_t j = 0; j < H; ++j) g.w_hh[j] += delta[r * H + j] * h_prev[r * H + j];
    }
  };
};

}  // namespace rnnkern
