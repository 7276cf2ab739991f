// Tests of sela/assign/knn.h (weighted kNN, Wu et al. 2018 protocol).
//
// References:
//   - tests/golden/metrics/knn_case.txt, made by tests/golden/make_metrics_golden.py with a
//     plain float64 NumPy implementation of the protocol (m = 301, q = 117, d = 8, 5 classes,
//     ks = {1, 10, 50, 400 > m}); its queries were kept only when no similarity change of
//     1e-4 can alter their prediction, so predictions must agree exactly and top-1 within
//     1e-9 (it is a count / q);
//   - a naive float64 implementation below on fresh random features, compared exactly on
//     the queries that are not within float32 rounding of a tie (similarity gap at the k-th
//     neighbour >= 1e-5 and vote margin above what a 1e-5 similarity change can move);
//     at least 90% of the queries must be decided that way;
//   - hand-built exact ties for the tie rules (lower memory index, then lower class).
// Outputs are poisoned (-777) before each call; every prediction must be a valid class.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/knn.h"

namespace {

constexpr std::int64_t kPoison = -777;

struct KnnProblem {
  std::int64_t m = 0, q = 0, d = 0, num_classes = 0;
  double sigma = 0.1;
  std::vector<std::int64_t> ks;
  std::vector<float> memory, queries;                       // (m, d), (q, d)
  std::vector<std::int64_t> memory_classes, query_classes;  // (m), (q)
};

std::vector<std::int64_t> predict(const KnnProblem& p) {
  std::vector<std::int64_t> out(p.ks.size() * static_cast<std::size_t>(p.q), kPoison);
  sela::weighted_knn_predict(p.memory.data(), p.memory_classes.data(), p.m, p.queries.data(), p.q,
                             p.d, p.ks, p.sigma, p.num_classes, out.data());
  for (std::int64_t c : out) REQUIRE((c >= 0 && c < p.num_classes));
  return out;
}

// Naive float64 protocol. Returns predictions (ks, q); decided (ks, q) is 1 where float32
// rounding of the similarities (|error| < delta) cannot change the prediction.
std::vector<std::int64_t> naive_predict(const KnnProblem& p, double delta,
                                        std::vector<char>* decided) {
  auto normalised = [&](const std::vector<float>& x, std::int64_t rows) {
    std::vector<double> out(x.begin(), x.end());
    for (std::int64_t i = 0; i < rows; ++i) {
      double sum = 0;
      for (std::int64_t k = 0; k < p.d; ++k) sum += out[i * p.d + k] * out[i * p.d + k];
      const double norm = std::max(std::sqrt(sum), 1e-12);
      for (std::int64_t k = 0; k < p.d; ++k) out[i * p.d + k] /= norm;
    }
    return out;
  };
  const std::vector<double> mem = normalised(p.memory, p.m);
  const std::vector<double> qry = normalised(p.queries, p.q);
  std::vector<std::int64_t> predictions(p.ks.size() * static_cast<std::size_t>(p.q));
  decided->assign(predictions.size(), 1);
  std::vector<double> sims(static_cast<std::size_t>(p.m));
  std::vector<std::int64_t> order(static_cast<std::size_t>(p.m));
  for (std::int64_t i = 0; i < p.q; ++i) {
    for (std::int64_t j = 0; j < p.m; ++j) {
      double dot = 0;
      for (std::int64_t k = 0; k < p.d; ++k) dot += qry[i * p.d + k] * mem[j * p.d + k];
      sims[j] = dot;
    }
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) {
      return sims[x] > sims[y] || (sims[x] == sims[y] && x < y);
    });
    for (std::size_t r = 0; r < p.ks.size(); ++r) {
      const std::int64_t k = std::min(p.m, p.ks[r]);
      std::vector<double> votes(static_cast<std::size_t>(p.num_classes), 0.0);
      double total = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        const double weight = std::exp(sims[order[t]] / p.sigma);
        votes[p.memory_classes[order[t]]] += weight;
        total += weight;
      }
      const auto best = std::max_element(votes.begin(), votes.end());  // first maximum
      predictions[r * p.q + i] = best - votes.begin();
      double runner_up = 0;
      for (std::int64_t c = 0; c < p.num_classes; ++c) {
        if (c != best - votes.begin()) runner_up = std::max(runner_up, votes[c]);
      }
      const bool gap_ok = k == p.m || sims[order[k - 1]] - sims[order[k]] >= 2 * delta;
      const bool margin_ok = *best - runner_up > 2 * total * std::expm1(2 * delta / p.sigma);
      (*decided)[r * p.q + i] = gap_ok && margin_ok ? 1 : 0;
    }
  }
  return predictions;
}

// Features with class structure: class centre + noise, random norm per row.
void fill_features(std::mt19937_64& rng, const std::vector<double>& centres, std::int64_t rows,
                   std::int64_t d, std::int64_t num_classes, std::vector<float>* features,
                   std::vector<std::int64_t>* classes) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> scale(0.3, 4.0);
  std::uniform_int_distribution<std::int64_t> pick(0, num_classes - 1);
  features->resize(static_cast<std::size_t>(rows * d));
  classes->resize(static_cast<std::size_t>(rows));
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t c = pick(rng);
    (*classes)[i] = c;
    const double s = scale(rng);
    for (std::int64_t k = 0; k < d; ++k) {
      (*features)[i * d + k] = static_cast<float>(s * (centres[c * d + k] + 1.2 * normal(rng)));
    }
  }
}

KnnProblem random_problem(std::uint64_t seed, std::int64_t m, std::int64_t q, std::int64_t d,
                          std::int64_t num_classes, std::vector<std::int64_t> ks) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> centres(static_cast<std::size_t>(num_classes * d));
  for (auto& c : centres) c = normal(rng);
  KnnProblem p;
  p.m = m;
  p.q = q;
  p.d = d;
  p.num_classes = num_classes;
  p.ks = std::move(ks);
  fill_features(rng, centres, m, d, num_classes, &p.memory, &p.memory_classes);
  fill_features(rng, centres, q, d, num_classes, &p.queries, &p.query_classes);
  return p;
}

KnnProblem load_golden() {
  const std::string path = std::string(SELA_SOURCE_DIR) + "/tests/golden/metrics/knn_case.txt";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    kept += line + '\n';
  }
  std::istringstream tokens(kept);
  std::string word;
  KnnProblem p;
  std::int64_t num_ks = 0;
  tokens >> word >> p.m >> p.q >> p.d >> p.num_classes >> p.sigma >> num_ks;
  REQUIRE(word == "knn");
  p.ks.resize(static_cast<std::size_t>(num_ks));
  for (auto& k : p.ks) tokens >> k;
  p.memory.resize(static_cast<std::size_t>(p.m * p.d));
  p.memory_classes.resize(static_cast<std::size_t>(p.m));
  p.queries.resize(static_cast<std::size_t>(p.q * p.d));
  p.query_classes.resize(static_cast<std::size_t>(p.q));
  // float32 values written with 9 significant digits: strtof gives them back exactly
  auto read_floats = [&](std::vector<float>& out) {
    for (auto& v : out) {
      tokens >> word;
      v = std::strtof(word.c_str(), nullptr);
    }
  };
  read_floats(p.memory);
  for (auto& c : p.memory_classes) tokens >> c;
  read_floats(p.queries);
  for (auto& c : p.query_classes) tokens >> c;
  REQUIRE_FALSE(tokens.fail());
  return p;
}

}  // namespace

TEST_CASE("weighted kNN matches the NumPy golden case exactly (top-1 tol 1e-9)") {
  const KnnProblem p = load_golden();
  // The expectations follow the problem in the file.
  const std::string path = std::string(SELA_SOURCE_DIR) + "/tests/golden/metrics/knn_case.txt";
  std::ifstream in(path);
  std::string line;
  std::vector<double> expected_top1;
  std::vector<std::int64_t> expected_predictions;
  bool after_top1 = false;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream row(line);
    std::string head;
    row >> head;
    if (head == "expect_top1") {
      double v = 0;
      while (row >> v) expected_top1.push_back(v);
      after_top1 = true;
    } else if (after_top1) {
      std::istringstream values(line);
      std::int64_t c = 0;
      while (values >> c) expected_predictions.push_back(c);
    }
  }
  REQUIRE(expected_top1.size() == p.ks.size());
  REQUIRE(expected_predictions.size() == p.ks.size() * static_cast<std::size_t>(p.q));
  REQUIRE(p.ks.back() > p.m);  // the fixture covers k > m

  CHECK(predict(p) == expected_predictions);
  const std::vector<sela::KnnResult> results =
      sela::weighted_knn_top1(p.memory.data(), p.memory_classes.data(), p.m, p.queries.data(),
                              p.query_classes.data(), p.q, p.d, p.ks, p.sigma, p.num_classes);
  REQUIRE(results.size() == p.ks.size());
  for (std::size_t r = 0; r < p.ks.size(); ++r) {
    CAPTURE(p.ks[r]);
    CHECK(std::abs(results[r].top1 - expected_top1[r]) <= 1e-9);
    CHECK(results[r].queries == p.q);
  }
}

TEST_CASE("weighted kNN matches a naive float64 reference on fresh random features") {
  // m not a multiple of the 4-row tile, q over several 16-query tiles and 128-query blocks,
  // d odd; one k beyond m.
  struct Shape {
    std::int64_t m, q, d, classes;
  };
  for (const Shape s : {Shape{517, 300, 37, 7}, Shape{64, 17, 3, 3}, Shape{1203, 129, 128, 10}}) {
    CAPTURE(s.m);
    CAPTURE(s.q);
    KnnProblem p = random_problem(1000 + static_cast<std::uint64_t>(s.m), s.m, s.q, s.d, s.classes,
                                  {20, 1, 5, s.m + 83, 200});
    const std::vector<std::int64_t> got = predict(p);
    std::vector<char> decided;
    const std::vector<std::int64_t> expected = naive_predict(p, 1e-5, &decided);
    std::int64_t compared = 0, mismatched = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (!decided[i]) continue;
      ++compared;
      mismatched += got[i] != expected[i] ? 1 : 0;
    }
    CHECK(mismatched == 0);
    CHECK(compared >= static_cast<std::int64_t>(0.9 * static_cast<double>(got.size())));
    // top-1 is the fraction of correct predictions
    const auto results =
        sela::weighted_knn_top1(p.memory.data(), p.memory_classes.data(), p.m, p.queries.data(),
                                p.query_classes.data(), p.q, p.d, p.ks, p.sigma, p.num_classes);
    for (std::size_t r = 0; r < p.ks.size(); ++r) {
      std::int64_t correct = 0;
      for (std::int64_t i = 0; i < p.q; ++i) correct += got[r * p.q + i] == p.query_classes[i];
      CHECK(results[r].top1 == static_cast<double>(correct) / static_cast<double>(p.q));
    }
    // the features carry class structure: kNN must beat chance clearly
    CHECK(results[0].top1 > 2.0 / static_cast<double>(s.classes));
  }
}

TEST_CASE("weighted kNN predictions do not depend on the thread count") {
  const KnnProblem p = random_problem(42, 700, 400, 24, 6, {1, 10, 200});
  sela::cpu::set_num_threads(1);
  const std::vector<std::int64_t> one = predict(p);
  sela::cpu::set_num_threads(2);
  const std::vector<std::int64_t> two = predict(p);
  sela::cpu::set_num_threads(0);
  CHECK(one == two);
}

TEST_CASE("weighted kNN tie rules: lower memory index, then lower class; k > m uses m") {
  // d = 3. Memory rows 1 and 2 are the same vector with classes 4 and 0; row 5 (in the
  // zero-padded tail tile) repeats it with class 2; rows 0, 3, 4 point elsewhere.
  KnnProblem p;
  p.m = 6;
  p.q = 1;
  p.d = 3;
  p.num_classes = 5;
  // clang-format off
  p.memory = {0, 0, 1,  1, 2, 3,  1, 2, 3,  0, 1, 0,  -1, 0, 0,  2, 4, 6};
  // clang-format on
  p.memory_classes = {3, 4, 0, 1, 1, 2};
  p.queries = {1, 2, 3};
  p.query_classes = {0};

  p.ks = {1};  // three equal nearest neighbours (rows 1, 2, 5): the lowest index, row 1
  CHECK(predict(p) == std::vector<std::int64_t>{4});
  p.ks = {2};  // rows 1 and 2: equal votes for classes 4 and 0 -> class 0
  CHECK(predict(p) == std::vector<std::int64_t>{0});
  p.ks = {3};  // rows 1, 2, 5: classes 4, 0, 2 tie -> class 0
  CHECK(predict(p) == std::vector<std::int64_t>{0});
  p.ks = {6, 1000};  // k > m: identical results
  const std::vector<std::int64_t> both = predict(p);
  CHECK(both[0] == both[1]);

  // k > m counts the m-th neighbour too: three equal rows of classes 0, 1, 1 vote 1 with
  // k = 3 (or more), but 0 with k = 2 (equal votes).
  KnnProblem three = p;
  three.m = 3;
  three.memory = {1, 2, 3, 1, 2, 3, 1, 2, 3};
  three.memory_classes = {0, 1, 1};
  three.ks = {2, 3, 1000};
  CHECK(predict(three) == std::vector<std::int64_t>{0, 1, 1});

  // A zero query: every similarity is 0, every neighbour ties; k = 1 takes memory row 0.
  p.queries = {0, 0, 0};
  p.ks = {1};
  CHECK(predict(p) == std::vector<std::int64_t>{3});
}

TEST_CASE("weighted kNN argument errors") {
  KnnProblem p = random_problem(1, 20, 5, 4, 3, {1, 10});
  auto run = [](const KnnProblem& x) {
    return sela::weighted_knn_top1(x.memory.data(), x.memory_classes.data(), x.m, x.queries.data(),
                                   x.query_classes.data(), x.q, x.d, x.ks, x.sigma, x.num_classes);
  };
  CHECK_NOTHROW(run(p));
  {
    KnnProblem bad = p;
    bad.memory[7] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
  {
    KnnProblem bad = p;
    bad.queries[3] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
  {
    KnnProblem bad = p;
    bad.memory_classes[2] = 3;  // num_classes = 3
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
  {
    KnnProblem bad = p;
    bad.query_classes[0] = -1;
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
  for (std::vector<std::int64_t> ks : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{0},
                                       std::vector<std::int64_t>{5, -2}}) {
    KnnProblem bad = p;
    bad.ks = ks;
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
  for (double sigma : {0.0, -0.1, std::numeric_limits<double>::quiet_NaN()}) {
    KnnProblem bad = p;
    bad.sigma = sigma;
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
  {
    KnnProblem bad = p;
    bad.q = 0;
    CHECK_THROWS_AS(run(bad), sela::Error);
    bad = p;
    bad.m = 0;
    CHECK_THROWS_AS(run(bad), sela::Error);
    bad = p;
    bad.num_classes = 0;
    CHECK_THROWS_AS(run(bad), sela::Error);
  }
}
