// CIFAR-10 and CIFAR-100 from the public binary batches.
//
// CIFAR-10 (cifar-10-batches-bin/): data_batch_1..5.bin (train), test_batch.bin (test);
// each record is 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B planes, rows of
// 32). CIFAR-100 (cifar-100-binary/): train.bin, test.bin; records are 1 coarse label byte +
// 1 fine label byte + 3072 pixel bytes; the fine label (100 classes) is the true class.
// Records are reordered to (32, 32, 3) interleaved on load, the layout every source shares.
// A file whose size is not a whole number of records is an error naming the file, the
// expected and the actual size; so is a label out of range.
#pragma once

#include <memory>
#include <string>

#include "engine/data/dataset.h"

namespace sela::data {

// `classes` is 10 or 100; `dir` is the folder holding the .bin files or its parent.
std::unique_ptr<InMemoryDataset> open_cifar(const std::string& dir, int classes,
                                            const std::string& split);

// Writes CIFAR-format records (for tests): `images` (N, 32, 32, 3) interleaved, one label
// per image (CIFAR-100 files get coarse label fine/5 as a stand-in).
void write_cifar_batch(const std::string& path, int classes, const std::uint8_t* images,
                       const std::int64_t* labels, std::int64_t count);

}  // namespace sela::data
