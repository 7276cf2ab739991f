// Choosing among heads of the same K without true classes (sela/evaluate.h): the label
// stability read from a hand-written metrics.jsonl (the quarter of the steps it averages,
// step 0 left out, a resumed run's repeated steps counted once by their last line, other
// events and heads with no record ignored), the head it selects per K (ties, unknown
// stability), how the report shows the choice in its JSON and its table, and the head
// `sela viz` shows by default.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "sela/evaluate.h"
#include "tests/temp_folder.h"

using namespace sela;

namespace {

// One label_step line with NMI(previous) a for head 0 and b for head 1.
std::string step_line(int step, double a, double b) {
  nlohmann::json line = {{"event", "label_step"}, {"step", step}, {"epoch", step / 2}};
  line["heads"].push_back({{"head", 0}, {"k", 10}, {"nmi_previous", a}});
  line["heads"].push_back({{"head", 1}, {"k", 10}, {"nmi_previous", b}});
  return line.dump();
}

HeadReport head_with(std::int64_t k, double test_nmi) {
  HeadReport head;
  head.k = k;
  head.test.nmi = test_nmi;
  head.test.accuracy = k == 10 ? 0.5 : -1;
  return head;
}

}  // namespace

TEST_CASE("label stability: the mean NMI(previous) over the last quarter of the label steps") {
  sela::test::TempFolder folder("sela_selection_test");
  const std::string path = folder.path + "/metrics.jsonl";
  {
    std::ofstream out(path);
    // Steps 0..7 (8 steps: a quarter is 2). Step 0 would dominate if it counted.
    out << step_line(0, 0.01, 0.99) << "\n";
    for (int step = 1; step <= 5; ++step) out << step_line(step, 0.2, 0.3) << "\n";
    out << R"({"event":"epoch","epoch":3,"loss":1.0})" << "\n";
    out << step_line(6, 0.70, 0.40) << "\n";
    out << step_line(7, 0.10, 0.10) << "\n";
    // The run was resumed after step 6's checkpoint: step 7 again, now the record that counts.
    out << step_line(7, 0.80, 0.60) << "\n";
  }
  std::vector<double> stability = label_stability_from_metrics(path, 3);
  REQUIRE(stability.size() == 3);
  CHECK(stability[0] == doctest::Approx((0.70 + 0.80) / 2).epsilon(1e-12));
  CHECK(stability[1] == doctest::Approx((0.40 + 0.60) / 2).epsilon(1e-12));
  CHECK(stability[2] == -1);  // no record of a third head

  SUBCASE("a run with only the first label step, or no metrics at all, has none") {
    std::ofstream(path) << step_line(0, 0.5, 0.5) << "\n";
    for (double value : label_stability_from_metrics(path, 2)) CHECK(value == -1);
    for (double value : label_stability_from_metrics(folder.path + "/missing.jsonl", 2))
      CHECK(value == -1);
  }
  SUBCASE("three steps after the first: the last one alone") {
    std::ofstream out(path);
    for (int step = 0; step <= 3; ++step) out << step_line(step, 0.1 * step, 0.5) << "\n";
    out.close();
    std::vector<double> short_run = label_stability_from_metrics(path, 2);
    CHECK(short_run[0] == doctest::Approx(0.3));
    CHECK(short_run[1] == doctest::Approx(0.5));
  }
  SUBCASE("a damaged line is an error naming the file and line") {
    std::ofstream(path) << step_line(0, 0.5, 0.5) << "\n{\"event\":\"label_step\", broken\n";
    try {
      label_stability_from_metrics(path, 2);
      FAIL("expected an error");
    } catch (const std::exception& error) {
      std::string message = error.what();
      CHECK(message.find(path) != std::string::npos);
      CHECK(message.find("line 2") != std::string::npos);
    }
  }
}

TEST_CASE("select_by_stability marks the most stable head of each K, and the report shows it") {
  EvalReport report;
  report.heads = {head_with(10, 0.50), head_with(10, 0.60), head_with(30, 0.55),
                  head_with(10, 0.40), head_with(30, 0.52), head_with(50, 0.45)};
  // K=10: head 1 and head 3 tie at 0.8 -> the lower index; K=30: head 4; K=50: head 5 alone
  // has no stability, so nothing of K=50 is selected.
  report.select_by_stability({0.7, 0.8, 0.6, 0.8, 0.9, -1});
  CHECK(!report.heads[0].selected);
  CHECK(report.heads[1].selected);
  CHECK(!report.heads[2].selected);
  CHECK(!report.heads[3].selected);
  CHECK(report.heads[4].selected);
  CHECK(!report.heads[5].selected);
  CHECK(report.heads[2].label_stability == 0.6);

  nlohmann::json json = nlohmann::json::parse(report.to_json());
  CHECK(json["heads"][1]["selected_by_stability"] == true);
  CHECK(json["heads"][0]["selected_by_stability"] == false);
  CHECK(json["heads"][1]["label_stability"] == 0.8);
  CHECK(!json["heads"][5].contains("label_stability"));

  std::string table = report.table();
  CHECK(table.find("head1 *") != std::string::npos);
  CHECK(table.find("head0  ") != std::string::npos);
  CHECK(table.find("head1: the most stable of the 3 heads with K=10") != std::string::npos);
  CHECK(table.find("test NMI 0.600") != std::string::npos);
  CHECK(table.find("head4: the most stable of the 2 heads with K=30") != std::string::npos);
  CHECK(table.find("K=50") == std::string::npos);  // a lone head needs no choosing
  // The PCA's solve: silent when it converged, a warning with its figures when it did not.
  report.knn_pca_components = 128;
  CHECK(report.table().find("WARNING") == std::string::npos);
  report.knn_pca_converged = false;
  report.knn_pca_passes = 300;
  report.knn_pca_residual = 3.5e-7;
  CHECK(report.table().find("WARNING: the PCA stopped after 300 passes with residual 3.5e-07") !=
        std::string::npos);
  json = nlohmann::json::parse(report.to_json());
  CHECK(json["knn_pca_converged"] == false);
  CHECK(json["knn_pca_passes"] == 300);
  CHECK(json["knn_pca_residual"] == 3.5e-7);

  // Shorter stability lists (a run with fewer heads recorded) leave the rest unknown.
  report.select_by_stability({0.1});
  CHECK(report.heads[0].selected);
  CHECK(report.heads[1].label_stability == -1);
  CHECK(!report.heads[4].selected);
}

TEST_CASE("the head a picture shows by default: the most stable of the smallest K") {
  const std::vector<std::int64_t> clusters{30, 10, 10, 50};
  CHECK(default_display_head(clusters, {0.9, 0.5, 0.7, 0.1}) == 2);
  CHECK(default_display_head(clusters, {0.9, 0.7, 0.7, 0.1}) == 1);  // a tie: the lower index
  CHECK(default_display_head(clusters, {0.9, -1, 0.2, 0.1}) == 2);   // unknown never wins
  CHECK(default_display_head(clusters, {-1, -1, -1, -1}) == 1);      // no stability: first K=10
  CHECK(default_display_head(clusters, {}) == 1);
  CHECK(default_display_head({7}, {}) == 0);
  std::vector<bool> marks = most_stable_of_each_k(clusters, {0.9, 0.5, 0.7, -1});
  CHECK(marks == std::vector<bool>{true, false, true, false});
}
