// Implementation of sela/rotation.h.
#include "sela/rotation.h"

#include "engine/data/augment.h"
#include "engine/error.h"
#include "engine/ops.h"

namespace sela {

RotationBatch make_rotation_batch(const data::Batch& batch, std::int64_t count, bool pinned) {
  SELA_CHECK(batch.height == batch.width, "sela train --rotation-weight",
             "the rotation task needs square images, got " << batch.height << "x" << batch.width);
  SELA_CHECK(count >= 1 && count <= batch.size, "sela train --rotation-batch",
             "must be between 1 and the batch size (" << batch.size << "), got " << count);
  const Shape shape{count, batch.channels, batch.height, batch.width};
  RotationBatch out;
  out.images = pinned ? Tensor::pinned(shape) : Tensor::empty(shape);
  out.targets = pinned ? Tensor::pinned({count}, DType::i64) : Tensor::empty({count}, DType::i64);
  float* images = out.images.data<float>();
  std::int64_t* targets = out.targets.data<std::int64_t>();
  const std::size_t floats = batch.image_floats();
  for (std::int64_t j = 0; j < count; ++j) {
    const int turns = static_cast<int>((j + batch.number) % 4);
    targets[j] = turns;
    data::rotate_quarter_turns(batch.image(j), static_cast<int>(batch.channels),
                               static_cast<int>(batch.height), turns,
                               images + static_cast<std::size_t>(j) * floats);
  }
  return out;
}

RotationPass parse_rotation_pass(const std::string& name, const char* command) {
  if (name == "separate") return RotationPass::separate;
  if (name == "joint") return RotationPass::joint;
  if (name == "grouped") return RotationPass::grouped;
  SELA_FAIL_HINT(command, "--rotation-pass must be grouped, joint or separate, got '" << name << "'",
                 "see `sela train --help`");
}

void check_rotation_batch(bool fc_batch_norm, RotationPass pass, std::int64_t rotation_batch,
                          const char* command) {
  SELA_CHECK(!fc_batch_norm || pass == RotationPass::joint || rotation_batch != 1, command,
             "--fc-batch-norm on needs --rotation-batch >= 2 with --rotation-pass "
                 << (pass == RotationPass::grouped ? "grouped" : "separate")
                 << " (the turned images are normalised as a group of their own), got 1");
}

RotationForward forward_with_rotation(SelaNet& model, Linear& rotation_head, const Tensor& images,
                                      const Tensor& turned, RotationPass pass) {
  RotationForward out;
  if (pass == RotationPass::separate) {
    out.logits = model.forward_heads(images);
    out.turn_logits = rotation_head.forward(model.forward_fc7(turned));
    return out;
  }
  const std::int64_t b = images.size(0), r = turned.size(0);
  Tensor both = concat_rows({images, turned});  // (B + R, C, S, S)
  Tensor fc7 = pass == RotationPass::grouped ? model.forward_fc7_grouped(both, b)
                                             : model.forward_fc7(both);  // (B + R, F)
  out.logits = model.heads->forward_heads(slice_rows(fc7, 0, b));
  out.turn_logits = rotation_head.forward(slice_rows(fc7, b, b + r));
  return out;
}

}  // namespace sela
