// Implementation of engine/data/loader.h.
#include "engine/data/loader.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "engine/error.h"

namespace sela::data {
namespace {

constexpr const char* kOp = "loader";

// load_samples with a flag that abandons the work early (the loader's start_epoch).
std::int64_t load_samples_cancellable(const Dataset& dataset, const AugmentConfig& augment,
                                      std::uint64_t seed, std::int64_t epoch,
                                      const std::int64_t* indices, std::int64_t count,
                                      float* destination, std::int64_t* kept_indices,
                                      std::int64_t* kept_classes, bool skip_bad,
                                      std::string* first_bad, const std::atomic<bool>* cancel) {
  const DatasetInfo& info = dataset.info();
  const std::size_t floats = static_cast<std::size_t>(info.channels) *
                             static_cast<std::size_t>(augment.output_height) *
                             static_cast<std::size_t>(augment.output_width);
  thread_local Image scratch;
  std::int64_t kept = 0;
  for (std::int64_t k = 0; k < count; ++k) {
    if (cancel && cancel->load(std::memory_order_relaxed)) break;
    std::int64_t index = indices[k];
    ImageView view;
    try {
      view = dataset.image(index, &scratch);
    } catch (const Error& error) {
      if (!skip_bad) throw;
      if (first_bad && first_bad->empty()) *first_bad = error.message();
      continue;
    }
    SELA_CHECK(view.channels == info.channels, kOp,
               dataset.sample_name(index)
                   << " has " << view.channels << " channels; the data set has " << info.channels);
    augment_sample(augment, view, seed, epoch, index,
                   destination + static_cast<std::size_t>(kept) * floats);
    kept_indices[kept] = index;
    kept_classes[kept] = dataset.true_classes()[static_cast<std::size_t>(index)];
    ++kept;
  }
  return kept;
}

}  // namespace

// --- buffers ------------------------------------------------------------------------------

ImageAllocator ImageAllocator::host() {
  ImageAllocator allocator;
  allocator.allocate = [](std::size_t floats) { return new float[floats]; };
  allocator.release = [](float* data, std::size_t) { delete[] data; };
  allocator.name = "host";
  return allocator;
}

ImageBuffer::ImageBuffer(ImageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      capacity_(std::exchange(other.capacity_, 0)),
      allocator_(std::move(other.allocator_)) {}

ImageBuffer& ImageBuffer::operator=(ImageBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
    allocator_ = std::move(other.allocator_);
  }
  return *this;
}

void ImageBuffer::ensure(const std::shared_ptr<const ImageAllocator>& allocator,
                         std::size_t floats) {
  if (data_ && capacity_ >= floats && allocator_ == allocator) return;
  reset();
  if (floats == 0) return;
  float* data = allocator->allocate(floats);
  SELA_CHECK(
      data != nullptr, kOp,
      "the " << allocator->name << " allocator returned no memory for " << floats << " floats");
  data_ = data;
  capacity_ = floats;
  allocator_ = allocator;
}

void ImageBuffer::reset() {
  if (data_ && allocator_) allocator_->release(data_, capacity_);
  data_ = nullptr;
  capacity_ = 0;
  allocator_.reset();
}

// --- synchronous loading --------------------------------------------------------------------

std::int64_t load_samples(const Dataset& dataset, const AugmentConfig& augment, std::uint64_t seed,
                          std::int64_t epoch, const std::int64_t* indices, std::int64_t count,
                          float* destination, std::int64_t* kept_indices,
                          std::int64_t* kept_classes, bool skip_bad, std::string* first_bad) {
  augment.validate(dataset.info().channels);
  SELA_CHECK(count >= 0, kOp, "sample count " << count << " is negative");
  SELA_CHECK(count == 0 || (destination && indices && kept_indices && kept_classes), kOp,
             "load_samples needs indices, a destination and room for indices and classes");
  return load_samples_cancellable(dataset, augment, seed, epoch, indices, count, destination,
                                  kept_indices, kept_classes, skip_bad, first_bad, nullptr);
}

std::vector<std::int64_t> shuffled_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  SampleRng rng(seed, static_cast<std::uint64_t>(epoch), 0, /*stream=*/1);
  for (std::int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates
    std::int64_t j = rng.below(i + 1);
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
  }
  return order;
}

// --- loader -----------------------------------------------------------------------------------

Loader::Loader(const Dataset& dataset, AugmentConfig augment, LoaderConfig config)
    : dataset_(dataset), augment_(std::move(augment)), config_(std::move(config)) {
  augment_.validate(dataset_.info().channels);
  SELA_CHECK(config_.batch_size >= 1, kOp,
             "batch size " << config_.batch_size << "; expected >= 1");
  SELA_CHECK(config_.workers >= 1 && config_.workers <= 256, kOp,
             "workers " << config_.workers << "; expected 1..256");
  SELA_CHECK(config_.prefetch >= 0, kOp, "prefetch " << config_.prefetch << "; expected >= 0");
  SELA_CHECK(config_.allocator.allocate && config_.allocator.release, kOp,
             "the image allocator '" << config_.allocator.name << "' lacks allocate or release");
  SELA_CHECK(dataset_.size() > 0, kOp, "the data set " << dataset_.info().spec << " is empty");
  allocator_ = std::make_shared<const ImageAllocator>(config_.allocator);
  std::int64_t n = dataset_.size();
  batches_per_epoch_ = config_.drop_last ? n / config_.batch_size
                                         : (n + config_.batch_size - 1) / config_.batch_size;
  samples_per_epoch_ = config_.drop_last ? batches_per_epoch_ * config_.batch_size : n;
  SELA_CHECK(batches_per_epoch_ > 0, kOp,
             "drop_last with batch size " << config_.batch_size << " leaves no batch of the " << n
                                          << " samples");
  int prefetch = config_.prefetch > 0 ? config_.prefetch : 2 * config_.workers;
  slots_.resize(static_cast<std::size_t>(std::max(prefetch, 1)));
  threads_.reserve(static_cast<std::size_t>(config_.workers));
  for (int i = 0; i < config_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    cancel_.store(true);
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void Loader::abandon_epoch(std::unique_lock<std::mutex>& lock) {
  active_ = false;
  cancel_.store(true);
  ready_cv_.wait(lock, [&] { return in_flight_ == 0; });
  cancel_.store(false);
  for (Slot& slot : slots_) {
    slot.state = SlotState::empty;
    slot.number = -1;
    slot.error = nullptr;
    slot.first_bad.clear();
  }
}

void Loader::start_epoch(std::int64_t epoch) {
  std::unique_lock<std::mutex> lock(mutex_);
  abandon_epoch(lock);
  if (config_.shuffle) {
    order_ = shuffled_order(dataset_.size(), config_.seed, epoch);
  } else {
    order_.resize(static_cast<std::size_t>(dataset_.size()));
    std::iota(order_.begin(), order_.end(), 0);
  }
  epoch_ = epoch;
  next_claim_ = 0;
  next_consume_ = 0;
  stats_ = LoaderStats{};
  stats_.epoch = epoch;
  epoch_start_ = std::chrono::steady_clock::now();
  active_ = true;
  lock.unlock();
  work_cv_.notify_all();
}

void Loader::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  const std::int64_t capacity = static_cast<std::int64_t>(slots_.size());
  while (true) {
    work_cv_.wait(lock, [&] {
      return stop_ || (active_ && next_claim_ < batches_per_epoch_ &&
                       next_claim_ < next_consume_ + capacity);
    });
    if (stop_) return;
    std::int64_t number = next_claim_++;
    Slot& slot = slots_[static_cast<std::size_t>(number % capacity)];
    slot.state = SlotState::filling;
    slot.number = number;
    ++in_flight_;
    Batch work = std::move(slot.batch);  // filled outside the lock
    std::string first_bad;
    lock.unlock();
    std::exception_ptr error;
    try {
      fill(number, &work, &first_bad);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    --in_flight_;
    slot.batch = std::move(work);
    slot.error = error;
    slot.first_bad = std::move(first_bad);
    slot.state = SlotState::ready;
    ready_cv_.notify_all();
  }
}

void Loader::fill(std::int64_t number, Batch* batch, std::string* first_bad) {
  const DatasetInfo& info = dataset_.info();
  std::int64_t begin = number * config_.batch_size;
  std::int64_t count = std::min(config_.batch_size, samples_per_epoch_ - begin);
  batch->channels = info.channels;
  batch->height = augment_.output_height;
  batch->width = augment_.output_width;
  batch->epoch = epoch_;
  batch->number = number;
  batch->images.ensure(allocator_, static_cast<std::size_t>(count) * batch->image_floats());
  batch->indices.resize(static_cast<std::size_t>(count));
  batch->classes.resize(static_cast<std::size_t>(count));
  std::int64_t kept = load_samples_cancellable(
      dataset_, augment_, config_.seed, epoch_, order_.data() + begin, count, batch->images.data(),
      batch->indices.data(), batch->classes.data(), config_.skip_bad, first_bad, &cancel_);
  batch->size = kept;
  batch->skipped_bad = cancel_.load() ? 0 : count - kept;
  batch->indices.resize(static_cast<std::size_t>(kept));
  batch->classes.resize(static_cast<std::size_t>(kept));
}

bool Loader::next(Batch* batch) {
  SELA_CHECK(batch != nullptr, kOp, "next() needs a Batch to fill");
  std::unique_lock<std::mutex> lock(mutex_);
  SELA_CHECK(active_, kOp, "next() before start_epoch(): call start_epoch(epoch) first");
  if (next_consume_ >= batches_per_epoch_) return false;
  Slot& slot =
      slots_[static_cast<std::size_t>(next_consume_ % static_cast<std::int64_t>(slots_.size()))];
  auto waited_from = std::chrono::steady_clock::now();
  ready_cv_.wait(lock,
                 [&] { return slot.state == SlotState::ready && slot.number == next_consume_; });
  auto now = std::chrono::steady_clock::now();
  stats_.wait_seconds += std::chrono::duration<double>(now - waited_from).count();
  stats_.epoch_seconds = std::chrono::duration<double>(now - epoch_start_).count();
  if (slot.error) std::rethrow_exception(slot.error);  // stays: the epoch cannot go on
  std::swap(*batch, slot.batch);
  stats_.batches += 1;
  stats_.samples += batch->size;
  stats_.skipped_bad += batch->skipped_bad;
  if (stats_.first_bad.empty() && !slot.first_bad.empty()) stats_.first_bad = slot.first_bad;
  slot.state = SlotState::empty;
  slot.error = nullptr;
  slot.first_bad.clear();
  ++next_consume_;
  lock.unlock();
  work_cv_.notify_all();
  return true;
}

LoaderStats Loader::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace sela::data
