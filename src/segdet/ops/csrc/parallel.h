// Threads for segdet's C++ kernels (no OpenMP: the kernels must not depend on torch's runtime).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

namespace segdet {

// body(begin, end) on [0, n) cut into `threads` contiguous parts, taken one by one by up to `threads`
// threads (the calling one included): if the system refuses a thread, the others do its parts.
template <typename Body>
void split(int64_t n, int64_t threads, const Body& body) {
  threads = std::max<int64_t>(1, std::min(threads, n));
  const int64_t part = (n + threads - 1) / threads;
  std::atomic<int64_t> next{0};
  const auto run = [&] {
    for (int64_t begin = next.fetch_add(part); begin < n; begin = next.fetch_add(part)) {
      body(begin, std::min(n, begin + part));
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    try {
      pool.emplace_back(run);
    } catch (const std::system_error&) {
      break;
    }
  }
  run();
  for (auto& t : pool) t.join();
}

}  // namespace segdet
