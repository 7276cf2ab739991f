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
// docs/results.md measures it on Fashion-MNIST: no gain with dropout 0.5 in the classifier,
// a gain in place of it (dropout 0), which is the default since the seventh session.
#pragma once

#include <cstdint>

#include "engine/tensor.h"
#include "engine/data/loader.h"

namespace sela {

struct RotationBatch {
  Tensor images;   // (R, C, S, S) float32, on the CPU (pinned when `pinned`)
  Tensor targets;  // (R) int64: quarter turns 0..3
};

// The sub-batch of the first `count` images of `batch` (square images; count <= batch size),
// image j turned by (j + batch.number) mod 4 quarter turns counter-clockwise. Host tensors;
// page-locked when `pinned` (a GPU run uploads them without a wait).
RotationBatch make_rotation_batch(const data::Batch& batch, std::int64_t count, bool pinned);

}  // namespace sela
