// The rotation task: an auxiliary loss for `sela train --rotation-weight W`.
//
// RotNet's pretext task (Gidaris, Singh & Komodakis, ICLR 2018) added to SeLa's loss, as some
// deep-clustering methods add it to theirs (e.g. Multi-Modal Deep Clustering, arXiv
// 1912.02678): besides the clustering heads, a 4-way linear head on fc7 predicts by how many
// quarter turns an image was rotated. It costs one extra forward and backward of a small
// sub-batch per step: the first R images of each (already augmented) training batch, image j
// turned by (j + batch number) mod 4 quarter turns, so every sub-batch holds the four turns
// in equal shares (R a multiple of 4) and the turn an image gets depends only on its place in
// the batch, not on timing (resume stays exact). The step's loss is then
//     mean over heads of CE(head_t(fc7(x)), labels_t)  +  W · CE(rot(fc7(turned x)), turns).
// Labels are still solved from the clustering heads' logits of the upright batch only.
// The turned images either take a pass of their own (`--rotation-pass separate`, BatchNorm
// statistics of their own), or are appended to the batch (`joint`, the tenth session's
// default: one pass of B + R images, about a quarter faster on the CPU because the small
// second pass used the cores poorly; docs/perf.md; but BatchNorm then normalises the B + R
// images together, which cost about 0.6 points of kNN), or are appended with BatchNorm
// statistics kept per group (`grouped`, the default since the twelfth session: the separate
// pass's values at the joint pass's cost; batch_norm2d_grouped in engine/ops.h).
// docs/results.md measures it on Fashion-MNIST: no gain with dropout 0.5 in the classifier,
// a gain in place of it (dropout 0), which is the default since the seventh session.
#pragma once

#include <cstdint>

#include <string>
#include <vector>

#include "engine/data/loader.h"
#include "engine/nn.h"
#include "engine/tensor.h"
#include "models/alexnet.h"

namespace sela {

struct RotationBatch {
  Tensor images;   // (R, C, S, S) float32, on the CPU (pinned when `pinned`)
  Tensor targets;  // (R) int64: quarter turns 0..3
};

// The sub-batch of the first `count` images of `batch` (square images; count <= batch size),
// image j turned by (j + batch.number) mod 4 quarter turns counter-clockwise. Host tensors;
// page-locked when `pinned` (a GPU run uploads them without a wait).
RotationBatch make_rotation_batch(const data::Batch& batch, std::int64_t count, bool pinned);

enum class RotationPass { separate, joint, grouped };

// The --rotation-pass value: "separate", "joint" or "grouped", else a clear error naming
// `command` (e.g. "sela train").
RotationPass parse_rotation_pass(const std::string& name, const char* command);

// With BatchNorm in the fc layers (ModelConfig::fc_batch_norm) the grouped and separate
// passes normalise the R turned images as a batch of their own, and one image alone has no
// fc statistics (a conv BatchNorm still has its H x W values): a clear error naming `command`
// for R = 1 there, before anything runs. R = 0 (no rotation task) and the joint pass pass.
void check_rotation_batch(bool fc_batch_norm, RotationPass pass, std::int64_t rotation_batch,
                          const char* command);

// The clustering heads' logits of `images` (B, C, S, S) -> (B, K_t) per head, and the
// rotation head's of `turned` (R, C, S, S) -> (R, 4), differentiable. `separate` runs the
// network twice; `joint` once over concat_rows(images, turned), slicing fc7 (B + R, F) into
// the two; `grouped` as joint, with the BatchNorm statistics of the B and the R rows kept
// apart (the values of `separate`). In eval mode (no batch statistics) the three agree.
struct RotationForward {
  std::vector<Tensor> logits;  // (B, K_t) per head
  Tensor turn_logits;          // (R, 4)
};
RotationForward forward_with_rotation(SelaNet& model, Linear& rotation_head, const Tensor& images,
                                      const Tensor& turned, RotationPass pass);

}  // namespace sela
