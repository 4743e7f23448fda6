// The per-step recurrent kernels of the CPU backend, one set per instruction set.
//
// step() computes C (rows × H) from acc = A (rows × H) · Bm (H × H), where Bm was packed by
// pack() from W_hh (Bm = W_hhᵀ for the forward pass, Bm = W_hh for the backward pass), and
// applies the epilogue (core/problem.h) in the same pass; h is the epilogue's Hs (for kForward
// the bias row, or nullptr), d the norm slots of its first row (kBackwardRecord):
// d[r · norm_slots(H) + panel]. Packed layout: ceil(H / lanes) panels, each H × lanes,
// panel p holding columns [p·lanes, (p+1)·lanes) of Bm, zero-padded.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../core/cells/list.h"

namespace rnnkern::cpu {

// The function pointers of cell C's passes, where it has any (ForwardPass, BackwardPass).
template <typename T, typename C, typename = void>
struct PassesOf {};
template <typename T, typename C>
struct PassesOf<T, C, std::void_t<typename C::template ForwardPass<T>>> {
  void (*forward)(const typename C::template ForwardPass<T>&) = nullptr;
  void (*backward)(const typename C::template BackwardPass<T>&) = nullptr;
};

template <typename T, typename List>
struct CellPasses;
template <typename T, typename... C>
struct CellPasses<T, CellList<C...>> : PassesOf<T, C>... {
  template <typename Cell>
  PassesOf<T, Cell>& of() { return *this; }
  template <typename Cell>
  const PassesOf<T, Cell>& of() const { return *this; }
};

// Largest and smallest vector in bytes; buffers are sized so that any instruction set fits.
constexpr int64_t kMaxVectorBytes = 64;
constexpr int64_t kMinVectorBytes = 16;

template <typename T>
constexpr int64_t packed_size(int64_t H) {
  constexpr int64_t lanes = kMaxVectorBytes / sizeof(T);
  return (H + lanes - 1) / lanes * lanes * H;
}

// Per-row slots for partial sums of squares: one per panel of the narrowest vector.
template <typename T>
constexpr int64_t norm_slots(int64_t H) {
  constexpr int64_t lanes = kMinVectorBytes / sizeof(T);
  return (H + lanes - 1) / lanes;
}

template <typename T>
struct RecurrentKernels {
  const char* isa;
  int vector_bytes;  // of this instruction set's vectors
  void (*pack)(const T* w, int64_t H, bool transpose, T* packed);
  void (*step)(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a,
               const T* packed, T* c, const T* h, T* d);
  // step() with W_hh's rows as they are instead of packed panels (Bm = W_hhᵀ: the forward's
  // epilogues kForward, kStore, kAccumulate): dot products, for a row or two per step.
  void (*step_rows)(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a,
                    const T* w, T* c, const T* h, T* d);
  // C (rows × n, ldc) = [C +] A (rows × K, lda) · Wᵀ, W (n × K, ldw) as it is: the same dot
  // products for a few rows, from eight rows on W broadcast against A's rows packed in panels
  // (an order that depends only on the shapes, never on the threads).
  void (*dot)(int64_t rows, int64_t n, int64_t K, const T* a, int64_t lda, const T* w,
              int64_t ldw, bool accumulate, T* c, int64_t ldc);
  // C (rows × n, ldc) = [C +] op(A) · W, W (K × n, ldw) as it is, op(A) = A (rows × K, lda) or
  // with transpose_a Aᵀ of A (K × rows, lda): the backward's δ W_hh for a row or two without
  // packing W_hh, and the weight gradients Σ δᵀ h of a few rows.
  void (*times)(int64_t rows, int64_t n, int64_t K, const T* a, int64_t lda, bool transpose_a,
                const T* w, int64_t ldw, bool accumulate, T* c, int64_t ldc);
  // C (rows × H) = φ(C + b), b one bias row or nullptr: kForward's epilogue alone.
  void (*bias_activate)(Activation act, int64_t rows, int64_t H, T* c, const T* h);
  void (*scale_by_derivative)(Activation act, int64_t rows, int64_t H, T* c, const T* h);
  // Norm slots (see norm_slots) of rows whose d_t is given whole: the sum of squares goes
  // to the first slot, zero to the others.
  void (*row_square_sums)(int64_t rows, int64_t H, const T* d, T* slots);
  // out[r] = the square root of the sum of row r's slots (the first ceil(H / lanes)).
  void (*row_norms)(int64_t rows, int64_t H, const T* slots, double* out);
  // dst[i] += src[i] for i < n.
  void (*accumulate)(int64_t n, const T* src, T* dst);
  // `iterations` rounds of independent vector FMAs (kFmaChains chains of one vector each),
  // for measuring the FMA peak; returns a sum of the chains so they are not optimised out.
  T (*fma_loop)(int64_t iterations, T seed);
  // Each cell's pointwise passes (core/cells/), this instruction set's build of them.
  CellPasses<T, Cells> passes;
};

// Independent FMA chains in fma_loop: more than latency × ports (4 × 2 on these CPUs), and
// few enough to stay in 16 vector registers with the two operands.
constexpr int kFmaChains = 12;

#define RNNKERN_DECLARE_ISA(name)           \
  namespace name {                          \
  RecurrentKernels<float> kernels_float();   \
  RecurrentKernels<double> kernels_double(); \
  }
RNNKERN_DECLARE_ISA(avx512)
RNNKERN_DECLARE_ISA(avx2)
RNNKERN_DECLARE_ISA(generic)
#undef RNNKERN_DECLARE_ISA

// The best set this CPU supports, or the one named by the RNNKERN_ISA environment variable
// (avx512, avx2, generic), read once.
template <typename T>
const RecurrentKernels<T>& recurrent_kernels();

}  // namespace rnnkern::cpu
