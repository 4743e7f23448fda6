#include "block_pool.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace rnnkern::cpu {
namespace {

// Freed blocks are kept up to this many bytes in all, the oldest freed first.
constexpr std::size_t kCacheLimit = std::size_t(512) << 20;
constexpr std::size_t kHugePage = std::size_t(2) << 20;

struct Pool {
  std::mutex mutex;
  std::unordered_map<void*, std::size_t> live;  // block -> capacity
  std::vector<std::pair<void*, std::size_t>> cached;  // oldest first
  std::size_t cached_bytes = 0;
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: blocks may be released during shutdown
  return *p;
}

}  // namespace

void* pool_allocate(std::size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  // The smallest cached block that fits without wasting more than half of it.
  std::size_t best = p.cached.size();
  for (std::size_t i = 0; i < p.cached.size(); ++i) {
    const std::size_t cap = p.cached[i].second;
    if (cap >= bytes && cap / 2 <= bytes && (best == p.cached.size() || cap < p.cached[best].second))
      best = i;
  }
  if (best != p.cached.size()) {
    const auto block = p.cached[best];
    p.cached.erase(p.cached.begin() + std::ptrdiff_t(best));
    p.cached_bytes -= block.second;
    p.live.emplace(block.first, block.second);
    return block.first;
  }
  // Whole pages; blocks of huge-page size are aligned to it so the kernel can back them with
  // huge pages (one fault per 2 MiB) where transparent huge pages are on request.
  const std::size_t capacity = (bytes + 4095) / 4096 * 4096;
  const std::size_t align = capacity >= kHugePage ? kHugePage : 64;
  void* block = nullptr;
  if (posix_memalign(&block, align, capacity) != 0) return nullptr;
  if (align == kHugePage) madvise(block, capacity, MADV_HUGEPAGE);
  p.live.emplace(block, capacity);
  return block;
}

void pool_release(void* block) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const auto it = p.live.find(block);
  if (it == p.live.end()) return;
  const std::size_t capacity = it->second;
  p.live.erase(it);
  if (capacity > kCacheLimit) {
    std::free(block);
    return;
  }
  p.cached.emplace_back(block, capacity);
  p.cached_bytes += capacity;
  while (p.cached_bytes > kCacheLimit) {
    std::free(p.cached.front().first);
    p.cached_bytes -= p.cached.front().second;
    p.cached.erase(p.cached.begin());
  }
}

std::size_t pool_clear() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  for (const auto& block : p.cached) std::free(block.first);
  const std::size_t freed = p.cached_bytes;
  p.cached.clear();
  p.cached_bytes = 0;
  return freed;
}

}  // namespace rnnkern::cpu
