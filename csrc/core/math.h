// The math the cells share, written once for every backend (host and device): the
// activations and their derivatives, and float tanh, sigmoid and exp. The cells' own step
// formulas are in core/cells/. The templates take scalars and GCC/Clang vector types alike
// (the CPU kernels pass vectors).
#pragma once

#include <cmath>

// Always inlined: the CPU backend compiles this header once per instruction set, and an
// out-of-line copy built for one set must never be shared with code built for another.
#if defined(__CUDACC__)
#define RNNKERN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RNNKERN_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace rnnkern {

enum class Activation : int { kTanh = 0, kRelu = 1 };

// exp(z) for float lanes z in [-87, 88] (the caller clamps), as Cephes' expf: z = n·ln2 + r
// with |r| <= ln2 / 2, exp(z) = 2^n · (1 + r + r²·Q(r)), 2^n added to the exponent bits.
template <typename V>
RNNKERN_HOST_DEVICE V exp_float(V z) {
  typedef unsigned int U __attribute__((vector_size(sizeof(V))));  // same lanes as V
  const V zero{};
  const V shift = zero + 12582912.0f;  // 1.5 · 2^23: the sum's low bits are round(z / ln2)
  const V k = z * 1.44269504088896341f + shift;
  const V n = k - shift;
  V r = n * -0.693359375f + z;
  r = n * 2.12194440e-4f + r;
  V q = r * 1.9875691500e-4f + 1.3981999507e-3f;
  q = r * q + 8.3334519073e-3f;
  q = r * q + 4.1665795894e-2f;
  q = r * q + 1.6666665459e-1f;
  q = r * q + 5.0000001201e-1f;
  V e = (r * r) * q + r + 1.0f;
  U bits, k_bits, shift_bits;
  __builtin_memcpy(&bits, &e, sizeof(e));
  __builtin_memcpy(&k_bits, &k, sizeof(k));
  __builtin_memcpy(&shift_bits, &shift, sizeof(shift));
  bits += (k_bits - shift_bits) << 23;
  __builtin_memcpy(&e, &bits, sizeof(e));
  return e;
}

// tanh for float within an ulp of the exact value, and ±1 from |a| >= 9.01084 on, exactly where
// torch's float tanh (Sleef) is ±1: a saturated unit passes no gradient. For |a| < 0.9 an odd
// polynomial a + a³·P(a²) (fitted to tanh), above it 1 - 2 / (exp(2|a|) + 1) with Cephes' expf.
// NaN propagates. Both branches run on every lane; V is float or a vector of floats.
template <typename V>
RNNKERN_HOST_DEVICE V tanh_float(V a) {
  const V zero{};
  const V ax = a < zero ? -a : a;
  // The polynomial.
  const V a2 = a * a;
  V p = a2 * -4.06345265e-04f + 2.43631331e-03f;
  p = a2 * p + -8.09153914e-03f;
  p = a2 * p + 2.15608664e-02f;
  p = a2 * p + -5.38975410e-02f;
  p = a2 * p + 1.33325040e-01f;
  p = a2 * p + -3.33332956e-01f;
  V small = (a * a2) * p + a;
  small = a == zero ? a : small;  // keeps -0
  // e = exp(z), z = 2|a| clamped to [1.8, 19] (tanh(9.5) is 1 in float)
  V z = ax + ax;
  z = z > zero + 19.0f ? zero + 19.0f : z;
  z = z < zero + 1.8f ? zero + 1.8f : z;
  const V e = exp_float(z);
  V large = (zero + 1.0f) - (zero + 2.0f) / (e + 1.0f);
  large = large > zero + 0.99999994f ? zero + 0.99999994f : large;  // the float below 1
  large = ax >= zero + 9.01084f ? zero + 1.0f : large;
  // NaN fails the comparison and takes the polynomial, which keeps it.
  return ax >= zero + 0.9f ? (a < zero ? -large : large) : small;
}

// relu(NaN) is NaN, as in torch.
template <typename V>
RNNKERN_HOST_DEVICE V relu(V a) {
  const V zero{};
  return a < zero ? zero : a;
}

// δ = d ⊙ φ'(a), with φ'(a) written through h = φ(a), so pre-activations never need to be
// stored. tanh: d · (1 - h²). relu: d where h > 0, else 0, selected (not multiplied), so that
// d = ±Inf or NaN gives 0 where h <= 0, and h = NaN passes d on: torch's threshold_backward.
template <typename V>
RNNKERN_HOST_DEVICE V tanh_backward(V d, V h) {
  return d * ((V{} + 1) - h * h);
}

template <typename V>
RNNKERN_HOST_DEVICE V relu_backward(V d, V h) {
  const V zero{};
  return h <= zero ? zero : d;
}

// Scalar forms for the reference paths, tails and the CUDA kernels. On the CPU float tanh is
// the vector kernels' so that every lane agrees; on a GPU it is CUDA's tanhf (as in torch's
// CUDA tanh); double uses the math library's tanh.
RNNKERN_HOST_DEVICE float activation(Activation act, float a) {
#if defined(__CUDA_ARCH__)
  return act == Activation::kTanh ? tanhf(a) : relu(a);
#else
  return act == Activation::kTanh ? tanh_float(a) : relu(a);
#endif
}
RNNKERN_HOST_DEVICE double activation(Activation act, double a) {
  return act == Activation::kTanh ? tanh(a) : relu(a);
}
template <typename T>
RNNKERN_HOST_DEVICE T activation_backward(Activation act, T d, T h) {
  return act == Activation::kTanh ? tanh_backward(d, h) : relu_backward(d, h);
}

// σ(a) = 1 / (1 + exp(-a)) for float, as torch computes it (torch.sigmoid: Sleef's expf),
// tails included: exp(-a) overflows to +Inf from -a > 88.7228 (ln FLT_MAX) on, so σ is exactly
// 0 there and for -Inf, and a denormal just above; 1 + exp(-a) rounds to 1 from a > 16.64 on.
// exp_float covers [-87, 88]; for -a in (88, 89] it gives exp(-a - ln 2), doubled, which
// overflows where expf does (-a clamped to [-87, 89]: σ is 1 below, 0 above). NaN propagates.
template <typename V>
RNNKERN_HOST_DEVICE V sigmoid_float(V a) {
  const V zero{};
  V z = -a;
  z = z > zero + 89.0f ? zero + 89.0f : z;
  z = z < zero - 87.0f ? zero - 87.0f : z;
  const auto big = z > zero + 88.0f;
  V e = exp_float(big ? z - 0.693147181f : z);
  e = big ? e + e : e;
  const V s = (zero + 1.0f) / (e + 1.0f);
  return a == a ? s : a;
}

// sigmoid and tanh of scalars for the cells' formulas (core/cells/), which take a math object:
// this one, or the CPU kernels' own that adds vectors of lanes.
struct ScalarMath {
  RNNKERN_HOST_DEVICE float tanh(float a) const { return activation(Activation::kTanh, a); }
  RNNKERN_HOST_DEVICE double tanh(double a) const { return ::tanh(a); }
#if defined(__CUDA_ARCH__)
  RNNKERN_HOST_DEVICE float sigmoid(float a) const { return 1.0f / (1.0f + expf(-a)); }
#else
  RNNKERN_HOST_DEVICE float sigmoid(float a) const { return sigmoid_float(a); }
#endif
  RNNKERN_HOST_DEVICE double sigmoid(double a) const { return 1.0 / (1.0 + ::exp(-a)); }
};

}  // namespace rnnkern
