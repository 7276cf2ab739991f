// Weighted k-nearest-neighbour evaluation of features (the CIFAR protocol of Wu et al. 2018,
// "instance discrimination", as used by the SeLa reference code):
//   - memory and query features are L2-normalised (a zero vector stays zero: its norm is
//     clamped to 1e-12 like torch.nn.functional.normalize, so all its similarities are 0);
//   - each query's cosine similarity to every memory item; its k most similar items;
//   - each neighbour votes for its class with weight exp(sim / sigma) (sigma = 0.1 in the
//     reference); the class with the largest summed vote is the prediction.
//
// Deterministic tie rules: neighbours of equal similarity are taken in increasing memory
// index; equal votes go to the lowest class index. k > m uses all m memory items.
// Weights are computed as exp((sim - sim_top) / sigma), sim_top being the query's largest
// similarity: a common factor per query, which leaves the argmax unchanged and cannot
// overflow for small sigma.
//
// Shape of the computation: queries are processed in blocks (threaded with
// sela::cpu::parallel_for over blocks), each block's (block, m) similarities are computed
// by a register-tiled float32 dot-product kernel (float32 accumulation over d in index
// order, like a float32 matmul) and then selected and voted on; the full (q, m) similarity
// matrix never exists. Predictions do not depend on the thread count.
#pragma once

#include <cstdint>
#include <vector>

namespace sela {

struct KnnResult {
  double top1;           // fraction of queries predicted correctly, in [0, 1]
  std::int64_t queries;  // number of queries it was measured on
};

// memory (m, d) float32 row-major with classes (m); queries (q, d) with classes (q);
// classes in [0, num_classes). Returns one result per entry of ks (each k >= 1), in the
// order given. Errors (sela::Error): m, q, d or num_classes < 1; a class out of range;
// NaN/Inf in a feature; k < 1; sigma not finite and > 0; null pointers.
std::vector<KnnResult> weighted_knn_top1(const float* memory, const std::int64_t* memory_classes,
                                         std::int64_t m, const float* queries,
                                         const std::int64_t* query_classes, std::int64_t q,
                                         std::int64_t d, const std::vector<std::int64_t>& ks,
                                         double sigma, std::int64_t num_classes);

// The predictions behind weighted_knn_top1: predictions (ks.size(), q) row-major, the
// predicted class of query i for ks[r] at predictions[r * q + i]. Same rules and errors
// (no query classes needed).
void weighted_knn_predict(const float* memory, const std::int64_t* memory_classes, std::int64_t m,
                          const float* queries, std::int64_t q, std::int64_t d,
                          const std::vector<std::int64_t>& ks, double sigma,
                          std::int64_t num_classes, std::int64_t* predictions);

}  // namespace sela
