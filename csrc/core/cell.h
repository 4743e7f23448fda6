// The Elman cell's activation and its derivative, written once for every backend.
// The templates take scalars and GCC/Clang vector types alike (the CPU kernels pass vectors).
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

// Eigen's rational approximation of tanh for float: odd degree-13 numerator over even
// degree-6 denominator on [-7.9053, 7.9053], max absolute error about 2.4e-7.
template <typename V>
RNNKERN_HOST_DEVICE V tanh_rational(V a) {
  const V zero{};
  const V hi = zero + 7.90531110763549805f;
  const V lo = zero - 7.90531110763549805f;
  V x = a > hi ? hi : a;
  x = x < lo ? lo : x;
  const V x2 = x * x;
  V p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  V q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}

template <typename V>
RNNKERN_HOST_DEVICE V relu(V a) {
  const V zero{};
  return a > zero ? a : zero;
}

// φ'(a) written through h = φ(a), so pre-activations never need to be stored:
// tanh' = 1 - h², relu' = [h > 0].
template <typename V>
RNNKERN_HOST_DEVICE V tanh_derivative(V h) {
  return (V{} + 1) - h * h;
}

template <typename V>
RNNKERN_HOST_DEVICE V relu_derivative(V h) {
  const V zero{};
  return h > zero ? zero + 1 : zero;
}

// Scalar forms for the reference paths and tails. float tanh uses the same rational
// approximation as the vector kernels so that every lane agrees; double uses libm's tanh.
RNNKERN_HOST_DEVICE float activation(Activation act, float a) {
  return act == Activation::kTanh ? tanh_rational(a) : relu(a);
}
RNNKERN_HOST_DEVICE double activation(Activation act, double a) {
  return act == Activation::kTanh ? tanh(a) : relu(a);
}
template <typename T>
RNNKERN_HOST_DEVICE T activation_derivative(Activation act, T h) {
  return act == Activation::kTanh ? tanh_derivative(h) : relu_derivative(h);
}

}  // namespace rnnkern
