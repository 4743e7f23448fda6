// Large host buffers kept for reuse after release. Every fresh large allocation is page-
// faulted in one 4 KiB page at a time (about 1 µs each here), which at mid sizes costs more
// than the kernels: a train step's outputs come back to the pool when freed and are handed
// out again at the next step.
#pragma once

#include <cstddef>

namespace rnnkern::cpu {

// Buffers of at least this many bytes come from the pool; smaller ones are cheap to allocate.
constexpr std::size_t kPoolMinBytes = std::size_t(1) << 16;

// 64-byte aligned memory for `bytes` bytes (a cached block when one fits), or nullptr if the
// system is out of memory.
void* pool_allocate(std::size_t bytes);
// Gives a block from pool_allocate back; it is kept for reuse while the cache is below its
// limit, else freed.
void pool_release(void* block);
// Frees every cached block; returns the bytes freed.
std::size_t pool_clear();

}  // namespace rnnkern::cpu
