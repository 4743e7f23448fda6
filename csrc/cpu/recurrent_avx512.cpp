// The recurrent kernels built for avx512 (compile flags set in CMakeLists.txt).
#define RNNKERN_ISA avx512
#define RNNKERN_ISA_NAME "avx512"
#define RNNKERN_VECTOR_BYTES 64
// 32 registers: 8 × 3 accumulators, and a k block of 128 keeps the three panels' share in L1
// (measured on one core at H = 512: 11.7 -> 10.5 ms forward, 14.8 -> 11.8 ms backward loop).
#define RNNKERN_TILE_ROWS 8
#define RNNKERN_TILE_PANELS 3
#define RNNKERN_KBLOCK 128
// One row: 12 accumulators (and 12 panel loads); two rows: 2 × 8.
#define RNNKERN_WIDE_PANELS_1 12
#define RNNKERN_WIDE_PANELS_2 8
// dot() of 8 rows or more: 12 rows of W × 2 panels of A, 24 accumulators.
#define RNNKERN_PANEL_ROWS_OF_W 12
#include "recurrent_kernel.h"
