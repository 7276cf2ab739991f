// The loader: batches of augmented samples made by worker threads ahead of the trainer.
//
// Shape: each worker builds whole batches (decode + augment every sample of batch b into the
// batch's own image buffer) and puts them in a ring of `prefetch` slots; next() hands the
// batches out strictly in order. A worker may start batch b only when b < consumed +
// prefetch, so memory is bounded and a slow trainer simply leaves the workers idle.
// Whole batches per worker keep the threads independent (no per-sample locking); every
// random choice comes from (seed, epoch, dataset index), and the epoch's order from
// (seed, epoch), so the bytes of batch b are the same with 1 or 16 workers.
//
// Memory: a Batch owns its image buffer through an ImageAllocator (plain new[] by default;
// a CUDA backend passes one that returns pinned host memory so copies to the device run
// asynchronously). next(&batch) swaps: the caller's previous batch goes back into the ring
// and its buffer is reused, so a steady-state epoch allocates nothing.
//
// The time next() spends blocked waiting for a batch is measured (LoaderStats::wait_seconds):
// that is the time the trainer waits for data. The Loader keeps a reference to its Dataset,
// which must outlive it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/data/augment.h"
#include "engine/data/dataset.h"

namespace sela::data {

// Where batch images live. allocate(n) returns room for n floats (never null: throw
// instead); release(p, n) frees it.
struct ImageAllocator {
  std::function<float*(std::size_t floats)> allocate;
  std::function<void(float* data, std::size_t floats)> release;
  std::string name = "host";

  static ImageAllocator host();  // operator new[] / delete[]
};

// A move-only float buffer owned through an ImageAllocator.
class ImageBuffer {
 public:
  ImageBuffer() = default;
  ~ImageBuffer() { reset(); }
  ImageBuffer(ImageBuffer&& other) noexcept;
  ImageBuffer& operator=(ImageBuffer&& other) noexcept;
  ImageBuffer(const ImageBuffer&) = delete;
  ImageBuffer& operator=(const ImageBuffer&) = delete;

  // Makes room for `floats`, reallocating only when too small or from another allocator.
  void ensure(const std::shared_ptr<const ImageAllocator>& allocator, std::size_t floats);
  void reset();
  float* data() { return data_; }
  const float* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }

 private:
  float* data_ = nullptr;
  std::size_t capacity_ = 0;
  std::shared_ptr<const ImageAllocator> allocator_;
};

struct Batch {
  std::int64_t size = 0, channels = 0, height = 0, width = 0;
  ImageBuffer images;                  // (size, channels, height, width), normalised
  std::vector<std::int64_t> indices;   // (size,) dataset index of each sample
  std::vector<std::int64_t> classes;   // (size,) true class or -1 (evaluation only)
  std::int64_t epoch = 0, number = 0;  // batch `number` of `epoch`
  std::int64_t skipped_bad = 0;        // samples of this batch left out (skip_bad)

  std::size_t image_floats() const { return static_cast<std::size_t>(channels * height * width); }
  const float* image(std::int64_t i) const {
    return images.data() + static_cast<std::size_t>(i) * image_floats();
  }
};

// Loads and augments `count` samples synchronously: sample k = dataset[indices[k]] goes to
// destination + kept * (C*H*W) where kept counts the samples written so far. Writes the
// kept samples' indices and true classes to kept_indices / kept_classes (each room for
// `count`). With skip_bad a sample whose file fails to decode is left out (the first such
// reason goes to *first_bad when given and still empty); otherwise the Error propagates,
// naming the file. Returns the number kept. `destination` is the caller's: any host memory.
std::int64_t load_samples(const Dataset& dataset, const AugmentConfig& augment, std::uint64_t seed,
                          std::int64_t epoch, const std::int64_t* indices, std::int64_t count,
                          float* destination, std::int64_t* kept_indices,
                          std::int64_t* kept_classes, bool skip_bad = false,
                          std::string* first_bad = nullptr);

// Order of the dataset indices in `epoch`: a permutation of 0..n-1 from (seed, epoch).
std::vector<std::int64_t> shuffled_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch);

struct LoaderConfig {
  std::int64_t batch_size = 256;
  bool shuffle = true;     // false: dataset order (evaluation)
  bool drop_last = false;  // leave out the last, smaller batch
  std::uint64_t seed = 0;
  int workers = 2;        // threads decoding and augmenting (>= 1)
  int prefetch = 0;       // batches queued or being made at most; 0 = 2 x workers
  bool skip_bad = false;  // leave out samples whose file fails to decode, and count them
  ImageAllocator allocator = ImageAllocator::host();
};

struct LoaderStats {
  std::int64_t epoch = -1;
  std::int64_t batches = 0;      // handed out this epoch
  std::int64_t samples = 0;      // in those batches
  std::int64_t skipped_bad = 0;  // left out this epoch (skip_bad)
  double wait_seconds = 0;       // next() blocked waiting for a batch (the trainer's data wait)
  double epoch_seconds = 0;      // since start_epoch
  std::string first_bad;         // the first skipped file and why
};

class Loader {
 public:
  Loader(const Dataset& dataset, AugmentConfig augment, LoaderConfig config);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  std::int64_t batches_per_epoch() const { return batches_per_epoch_; }
  std::int64_t samples_per_epoch() const { return samples_per_epoch_; }
  const AugmentConfig& augment() const { return augment_; }
  const LoaderConfig& config() const { return config_; }

  // Starts making `epoch`'s batches (an unfinished epoch is abandoned).
  void start_epoch(std::int64_t epoch);
  // The next batch of the epoch into *batch (its old buffer is recycled); false when the
  // epoch is done. Rethrows a worker's Error (e.g. a corrupt file without skip_bad).
  bool next(Batch* batch);
  LoaderStats stats() const;

 private:
  enum class SlotState { empty, filling, ready };
  struct Slot {
    SlotState state = SlotState::empty;
    std::int64_t number = -1;
    Batch batch;
    std::exception_ptr error;
    std::string first_bad;
  };

  void worker_loop();
  void fill(std::int64_t number, Batch* batch, std::string* first_bad);
  void abandon_epoch(std::unique_lock<std::mutex>& lock);

  const Dataset& dataset_;
  const AugmentConfig augment_;
  const LoaderConfig config_;
  std::shared_ptr<const ImageAllocator> allocator_;
  std::int64_t batches_per_epoch_ = 0;
  std::int64_t samples_per_epoch_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;   // workers: a batch may be claimed, or stop
  std::condition_variable ready_cv_;  // consumer: a slot became ready; start_epoch: idle
  std::vector<Slot> slots_;
  std::vector<std::int64_t> order_;  // (samples in dataset,) this epoch's index order
  std::int64_t epoch_ = -1;
  bool active_ = false;
  bool stop_ = false;
  std::atomic<bool> cancel_{false};  // abandon work in progress (checked per sample)
  std::int64_t next_claim_ = 0;
  std::int64_t next_consume_ = 0;
  int in_flight_ = 0;
  LoaderStats stats_;
  std::chrono::steady_clock::time_point epoch_start_;
  std::vector<std::thread> threads_;
};

}  // namespace sela::data
