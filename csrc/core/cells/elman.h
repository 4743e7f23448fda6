// The Elman RNN cell (docs/design.md section 1): h_t = φ(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh).
// Its whole step is the backend's packed step kernel with the activation fused into its
// epilogue (kForward; backward kBackward / kBackwardRecord): no pass of its own, nothing
// saved but y. Backward's δ is one (N, H) plane that starts as ∂L/∂y.
#pragma once

#include <cstdint>
#include <cstring>

#include "../recurrence.h"

namespace rnnkern {

struct Elman {
  static constexpr const char* kName = "rnn";
  static constexpr int64_t kGates = 1;
  static constexpr int kStates = 1;
  static constexpr bool kNonlinearity = true;
  static constexpr bool kProjection = false;
  static constexpr int kWhhDims = 2;
  static constexpr int kSavedCount = 0;
  static constexpr SavedArray kSaved[kMaxSaved] = {};

  template <typename T, typename K>
  struct Forward {
    const Problem& p;
    K& k;
    T* y;
    const T* w_step;  // W_hh as the step reads it (k.pack: packed, or as it is)
    T* bias;  // b_ih + b_hh, added by the step's epilogue; nullptr for none

    static int64_t workspace_size(const Problem& p) {
      return K::packed_size(p.hidden_size) + p.hidden_size;
    }

    Forward(const Problem& p_, const Inputs<T>& in, const Outputs<T>& out, T* workspace, K& k_)
        : p(p_), k(k_), y(out.y) {
      const int64_t H = p.hidden_size;
      w_step = k.pack(in.w_hh, H, /*transpose=*/true, workspace);
      bias = in.b_ih || in.b_hh ? workspace + K::packed_size(H) : nullptr;
      if (bias)
        for (int64_t j = 0; j < H; ++j)
          bias[j] = (in.b_ih ? element(in.b_ih, j) : T(0)) + (in.b_hh ? element(in.b_hh, j) : T(0));
    }
    T* projection() const { return y; }
    const T* c() const { return nullptr; }
    int64_t row_align() const { return 1; }

    void step(int64_t off, int64_t a, int64_t b, const T* h_prev, const T*) const {
      const int64_t H = p.hidden_size;
      k.step(Epilogue::kForward, p.act, b - a, H, h_prev, w_step, y + (off + a) * H, bias,
             nullptr);
    }
  };

  template <typename T, typename K>
  struct Backward {
    const Problem& p;
    const Inputs<T>& in;
    const Outputs<const T>& out;
    const Gradients<T>& g;
    K& k;
    const T* packed;  // W_hh as the backward's step reads it (k.pack: packed, or as it is)
    T* delta;      // (N, H)
    T* h_prev;     // (N, H): the gathered h_{t-1} for ∂W_hh (packed input only)
    T* slots;      // partial sums of d_t² per row, norm_slots(H) of them (norms only)
    T* bias_rows;  // Σ_t δ_t per batch row, summed while δ_t is still in cache; ∂b is their sum
    int64_t slots_per_row;
    bool bias;

    static int64_t workspace_size(const Problem& p, bool record_norms) {
      const int64_t nh = p.total_rows() * p.hidden_size;
      const int64_t slots = record_norms ? p.total_rows() * K::norm_slots(p.hidden_size) : 0;
      return K::packed_size(p.hidden_size) + nh + (p.uniform() ? 0 : nh) + slots +
             p.batch * p.hidden_size;
    }

    Backward(const Problem& p_, const Inputs<T>& in_, const Outputs<const T>& out_,
             const Gradients<T>& g_, T* workspace, K& k_)
        : p(p_), in(in_), out(out_), g(g_), k(k_) {
      const int64_t H = p.hidden_size, N = p.total_rows();
      delta = workspace + K::packed_size(H);
      h_prev = delta + N * H;
      slots = g.norm_h ? delta + N * H * (p.uniform() ? 1 : 2) : nullptr;
      slots_per_row = K::norm_slots(H);
      bias_rows = delta + N * H * (p.uniform() ? 1 : 2) + (slots ? N * slots_per_row : 0);
      bias = g.b_ih || g.b_hh;
      packed = k.pack(in.w_hh, H, /*transpose=*/false, workspace);
    }
    const T* c() const { return nullptr; }
    int64_t row_align() const { return 1; }

    void begin(RowRange rows) const {
      const int64_t H = p.hidden_size;
      if (bias)
        std::memset(bias_rows + rows.begin * H, 0, sizeof(T) * (rows.end - rows.begin) * H);
    }
    // δ starts as ∂L/∂y, copied in just before use (still in cache when the step reads it).
    void load(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load_rows(g.grad_y, off + a, b - a, H, delta + (off + a) * H, H, false);
    }
    void sum_bias(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      if (bias) k.accumulate((b - a) * H, delta + (off + a) * H, bias_rows + a * H);
    }
    // δ_t = (∂L/∂y_t + δ_{t+1} W_hh) ⊙ φ'(h_t)
    void continuing(int64_t off, int64_t prev_off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load(off, a, b);
      k.step(slots ? Epilogue::kBackwardRecord : Epilogue::kBackward, p.act, b - a, H,
             delta + (prev_off + a) * H, packed, delta + (off + a) * H, out.y + (off + a) * H,
             slots ? slots + (off + a) * slots_per_row : nullptr);
      sum_bias(off, a, b);
    }
    // No recurrent gradient: δ = (∂L/∂y_t + grad_hn) ⊙ φ'(h).
    void ending(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      load(off, a, b);
      T* d = delta + (off + a) * H;
      if (g.grad_hn)
        for (int64_t r = a; r < b; ++r)
          for (int64_t j = 0; j < H; ++j) delta[(off + r) * H + j] += element(g.grad_hn, r * H + j);
      if (slots) k.row_square_sums(b - a, H, d, slots + (off + a) * slots_per_row);
      k.scale_by_derivative(p.act, b - a, H, d, out.y + (off + a) * H);
      sum_bias(off, a, b);
    }
    void pointwise(int64_t, int64_t, int64_t, const T*, const T*) const {}
    // ∂L/∂h0 = δ W_hh for rows that began from h0.
    void initial(int64_t off, int64_t a, int64_t b) const {
      const int64_t H = p.hidden_size;
      if (g.h0)
        k.step(Epilogue::kStore, p.act, b - a, H, delta + (off + a) * H, packed, g.h0 + a * H,
               nullptr, nullptr);
    }
    const T* input_delta(int64_t) const { return delta; }
    const T* hidden_delta(int64_t) const { return delta; }
    void bias_gradient(const T*, T* out_b) const {
      k.column_sums(p.batch, p.hidden_size, bias_rows, out_b);
    }
    void finish() const {
      const int64_t H = p.hidden_size;
      if (slots) k.row_norms(p.total_rows(), H, slots, g.norm_h);
      if (!g.w_hh) return;
      if (!p.uniform()) gather_previous(p, out.y, in.h0, H, h_prev);
      recurrent_weight_gradient(p, k, static_cast<const T*>(delta), H, out.y, in.h0,
                                static_cast<const T*>(h_prev), H, g.w_hh);
    }
  };
};

}  // namespace rnnkern
