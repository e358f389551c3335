#include "services/ingest/bus/event_publisher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bus/offset_log.h"
#include "devbridge/v1/events.pb.h"

namespace devbridge::ingest {

absl::StatusOr<std::unique_ptr<EventPublisher>> EventPublisher::Start(BusOptions options,
                                                                     common::MetricsRegistry* metrics) {
  bus::ConnectionOptions connect;
  connect.urls = options.urls;
  connect.name = absl::StrCat("devbridge-ingest ", options.node_id);
  absl::StatusOr<std::unique_ptr<bus::Connection>> connection = bus::Connection::Connect(connect);
  if (!connection.ok()) return connection.status();
  bus::StreamSpec spec{options.stream, {options.prefix + ".>"}, options.replicas, options.max_age};
  spec.description = bus::NewEpochDescription();
  if (absl::Status s = bus::EnsureStream(**connection, spec); !s.ok()) return s;
  absl::StatusOr<std::string> epoch = bus::StreamEpoch(**connection, options.stream, absl::Seconds(60));
  if (!epoch.ok()) return epoch.status();
  return std::unique_ptr<EventPublisher>(
      new EventPublisher(std::move(options), *std::move(connection), *std::move(epoch), metrics));
}

EventPublisher::EventPublisher(BusOptions options, std::unique_ptr<bus::Connection> connection,
                               std::string epoch, common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      connection_(std::move(connection)),
      epoch_(std::move(epoch)),
      log_(common::Logger("ingest")),
      appended_(&metrics->AddCounter("devbridge_ingest_bus_appended_total",
                                     "Events appended to the bus (one per push stream they are a message of).")),
      dropped_(&metrics->AddCounter("devbridge_ingest_bus_dropped_total",
                                    "Events not appended to the bus because its queue was full.")),
      errors_(&metrics->AddCounter("devbridge_ingest_bus_errors_total",
                                   "Batches the bus refused or did not answer (tried again).")),
      conflicts_(&metrics->AddCounter(
          "devbridge_ingest_bus_conflicts_total",
          "Batches the stream refused because another writer appended first (read again, sent again).")),
      queue_bytes_(&metrics->AddGauge("devbridge_ingest_bus_queue_bytes", "Bytes of events waiting for the bus.")),
      batch_ms_(&metrics->AddHistogram("devbridge_ingest_bus_batch_ms", "Time to append one batch to the bus.",
                                       common::LatencyBucketsMs())) {
  log_->info("bus: appending events to stream {} ({} replica(s)) at {}, epoch {}", options_.stream,
             options_.replicas, absl::StrJoin(options_.urls, ","), epoch_);
  thread_ = std::thread([this] { Run(); });
}

EventPublisher::~EventPublisher() {
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  thread_.join();
}

void EventPublisher::Publish(std::shared_ptr<const std::string> encoded, const std::vector<StreamRef>& streams,
                             bool effects_part) {
  const uint64_t id = ++next_id_;
  size_t k = 0;
  bool dropped = false;
  {
    common::MutexLock lock(&mu_);
    auto queue = [&](const StreamRef& stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (bytes_ + encoded->size() > options_.max_queue_bytes) {
        dropped_->Inc();
        dropped = true;
        return;
      }
      bytes_ += encoded->size();
      queue_.push_back({encoded, stream, absl::StrCat(options_.node_id, ":", id, ":", k++)});
    };
    for (const StreamRef& stream : streams) queue(stream);
    if (effects_part) queue(StreamRef{});
    queue_bytes_->Set(static_cast<int64_t>(bytes_));
    if (bytes_ >= options_.max_queue_bytes / 2) full_ = true;
  }
  cv_.NotifyOne();
  uint64_t skipped = 0;
  if (dropped && error_log_.Allow(absl::Now(), &skipped)) {
    log_->warn("bus: queue full ({} MiB): events dropped (devbridge_ingest_bus_dropped_total), {} line(s) skipped",
               options_.max_queue_bytes >> 20, skipped);
  }
}

void EventPublisher::SetOnSpace(std::function<void()> on_space) {
  common::MutexLock lock(&mu_);
  on_space_ = std::move(on_space);
}

size_t EventPublisher::queued() const {
  common::MutexLock lock(&mu_);
  return queue_.size();
}

void EventPublisher::Run() {
  bus::OffsetLog log(connection_.get(), options_.stream);
  absl::Time stop_by = absl::InfiniteFuture();
  absl::Duration backoff = absl::Milliseconds(100);
  for (;;) {
    std::vector<Item> batch;
    {
      common::MutexLock lock(&mu_);
      cv_.Wait(&mu_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); });
      if (stopping_ && stop_by == absl::InfiniteFuture()) stop_by = absl::Now() + drain;
      if (queue_.empty() || absl::Now() > stop_by) {
        if (!queue_.empty()) {
          log_->warn("bus: stopping with {} event(s) not appended", queue_.size());
        }
        return;
      }
      // Copies: the queue keeps them until the bus has them.
      for (size_t i = 0; i < queue_.size() && i < options_.max_batch; ++i) batch.push_back(queue_[i]);
    }
    const std::vector<bus::OffsetLog::Entry> entries = Entries(batch);
    const absl::Time start = absl::Now();
    std::vector<bus::Position> appended;
    const uint64_t conflicts_before = log.conflicts();
    const absl::Status status = log.AppendBatch(entries, &appended);
    conflicts_->Inc(log.conflicts() - conflicts_before);
    if (status.ok()) {
      backoff = absl::Milliseconds(100);
      batch_ms_->Observe(absl::ToDoubleMilliseconds(absl::Now() - start));
    } else {
      // The first `appended` are on the bus; the rest go again, first in the next batch.
      errors_->Inc();
      uint64_t skipped = 0;
      if (error_log_.Allow(absl::Now(), &skipped)) {
        log_->warn("bus: {} event(s) not appended yet ({}); trying again in {} ({} line(s) skipped)",
                   batch.size() - appended.size(), status.message(),
                   absl::IsAborted(status) ? "0s" : absl::FormatDuration(backoff), skipped);
      }
    }
    appended_->Inc(appended.size());
    std::function<void()> on_space;
    {
      common::MutexLock lock(&mu_);
      if (absl::IsAborted(status)) {
        // Other writers kept the stream: no outage to wait out, try again at once.
      } else if (!status.ok()) {
        cv_.WaitFor(&mu_, backoff, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; });
        backoff = std::min(backoff * 2, absl::Seconds(5));
      }
      for (size_t i = 0; i < appended.size(); ++i) {
        bytes_ -= queue_.front().encoded->size();
        queue_.pop_front();
      }
      queue_bytes_->Set(static_cast<int64_t>(bytes_));
      if (full_ && bytes_ <= options_.max_queue_bytes / 4) {
        full_ = false;
        on_space = on_space_;
      }
    }
    if (on_space) on_space();
  }
}

std::vector<bus::OffsetLog::Entry> EventPublisher::Entries(const std::vector<Item>& batch) const {
  std::vector<bus::OffsetLog::Entry> entries;
  entries.reserve(batch.size());
  // An event's parts follow each other in the queue: decode it once for all of them.
  const std::string* decoded_from = nullptr;
  v1::Event event;
  std::shared_ptr<const std::string> fanout;   // what its FANOUT parts share
  std::shared_ptr<const std::string> effects;  // its EFFECTS part
  for (const Item& item : batch) {
    if (decoded_from != item.encoded.get()) {
      decoded_from = item.encoded.get();
      event.ParseFromString(*item.encoded);
      event.set_epoch(epoch_);
      fanout.reset();
      effects.reset();
    }
    if (item.stream.system_id.empty()) {
      if (!effects) effects = std::make_shared<const std::string>(events::EncodeEffects(event));
      entries.push_back({events::ClusterSubject(options_.prefix), item.id, [effects](uint64_t) { return *effects; }});
      continue;
    }
    if (!fanout) fanout = std::make_shared<const std::string>(events::EncodeFanoutBase(event));
    entries.push_back({bus::StreamSubject(options_.prefix, item.stream.system_id, item.stream.group_name), item.id,
                       [fanout, stream = item.stream](uint64_t offset) {
                         return events::EncodeFanout(*fanout, stream, offset);
                       }});
  }
  return entries;
}

}  // namespace devbridge::ingest
