// Interleaved timing shared by the kernel labs (gemm_lab.cpp, conv_lab.cpp).
//
// Every body runs once to warm up, then `reps` rounds run the bodies in a shuffled order
// (fixed seed), each after a 10 ms pause, so that no body always follows another: on this
// machine one that always followed another (PyTorch's threads, in a separate process) lost
// up to 7 ms per call to the other's spinning OpenMP threads. A body returns its own time in
// ms when it measured it itself (the PyTorch worker), else a negative number and the wall
// time of the call is used. Returns the samples of each body, in ms.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>
#include <thread>
#include <vector>

namespace sela::lab {

inline std::vector<std::vector<double>> time_interleaved_samples(
    const std::vector<std::function<double()>>& bodies, int reps) {
  for (const auto& body : bodies) body();  // warm-up: page faults, cached primitives, JIT
  std::vector<std::vector<double>> times(bodies.size());
  std::vector<std::size_t> order(bodies.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937 shuffle_rng(12345);
  for (int r = 0; r < reps; ++r) {
    std::shuffle(order.begin(), order.end(), shuffle_rng);
    for (std::size_t i : order) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      auto t0 = std::chrono::steady_clock::now();
      double reported = bodies[i]();
      auto t1 = std::chrono::steady_clock::now();
      times[i].push_back(
          reported >= 0 ? reported : std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
  }
  return times;
}

struct LabStats {
  double median_ms, min_ms;
};

// Median and minimum of each body's samples.
inline std::vector<LabStats> summarize_samples(std::vector<std::vector<double>> samples) {
  std::vector<LabStats> out;
  for (auto& t : samples) {
    std::sort(t.begin(), t.end());
    std::size_t h = t.size() / 2;
    out.push_back({t.size() % 2 ? t[h] : 0.5 * (t[h - 1] + t[h]), t.front()});
  }
  return out;
}

}  // namespace sela::lab
