#include "services/push/upstream/bus_link.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/uuid.h"

namespace devbridge::push {
namespace {

constexpr absl::Duration kHealEvery = absl::Seconds(2);
constexpr absl::Duration kStalledAfter = absl::Seconds(5);
// Subjects looked at per round at most (one request each), taken in turn.
constexpr size_t kHealChecks = 100;
// Time a round may take at most (plus one request's timeout).
constexpr absl::Duration kHealBudget = absl::Seconds(1);
constexpr absl::Duration kConsumerRetry = absl::Seconds(10);
// Messages a stalled reader reads on per round (one request each).
constexpr size_t kReadOnBatch = 200;

}  // namespace

BusLink::BusLink(BusLinkOptions options, Poster post, std::function<void(v1::Event, bool)> on_event,
                 std::function<void(bool)> on_state, OnStreamReady on_stream_ready, Upstream* commands,
                 common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      post_(std::move(post)),
      on_event_(std::move(on_event)),
      on_state_(std::move(on_state)),
      on_stream_ready_(std::move(on_stream_ready)),
      commands_(commands),
      log_(common::Logger("push.bus")),
      read_(&metrics->AddCounter("devbridge_push_bus_read_total", "Messages read from the bus.")),
      undecodable_(&metrics->AddCounter("devbridge_push_bus_undecodable_total",
                                        "Messages on the bus that are not an event (skipped).")),
      appended_(&metrics->AddCounter("devbridge_push_bus_appended_total",
                                     "Push API operations and membership updates appended to the bus.")),
      append_errors_(&metrics->AddCounter("devbridge_push_bus_append_errors_total",
                                          "Appends to the bus that failed within publish_deadline (the caller got 503).")),
      streams_(&metrics->AddGauge("devbridge_push_bus_streams",
                                  "Push streams this replica reads from the bus (those its clients hold).")),
      restarts_(&metrics->AddCounter("devbridge_push_bus_reader_restarts_total",
                                     "Readers of the bus started again after they stalled behind their subject.")),
      read_on_(&metrics->AddCounter("devbridge_push_bus_read_on_total",
                                    "Messages read straight from the stream while a stalled reader's consumer "
                                    "could not be created again.")),
      tracking_{0,
                &metrics->AddCounter("devbridge_push_bus_repeated_total",
                                     "Messages the NATS client delivered again after a reader's consumer was "
                                     "recreated (not handed over again)."),
                &metrics->AddCounter("devbridge_push_bus_gaps_total",
                                     "Jumps in a push stream's offsets as read from the bus: events missing from "
                                     "the stream (its clients see a gap).")} {
  metrics->AddGaugeFn("devbridge_push_bus_up", "1 while the bus is connected and read.", {},
                      [this] { return up() ? 1.0 : 0.0; });
}

BusLink::~BusLink() { Stop(); }

void BusLink::Start() {
  thread_ = std::thread([this] { Run(); });
}

bool BusLink::up() const { return up_.load() && connection_->connected(); }

void BusLink::Stop() {
  if (!thread_.joinable()) return;
  if (up()) {
    // Other replicas forget this node's clients now rather than after node_timeout.
    v1::PushMessage down;
    down.set_kind(v1::PushMessage::NODE_DOWN);
    down.set_origin_node(options_.node_id);
    down.set_message_id(common::NewUuid());
    Publish(std::move(down), [](const absl::Status&) {});
  }
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  thread_.join();
  up_ = false;
  reader_.reset();  // no OnMessage runs once this returns
}

void BusLink::Enqueue(Job job) {
  {
    common::MutexLock lock(&mu_);
    if (!stopping_) {
      jobs_.push_back(std::move(job));
      cv_.NotifyAll();
      return;
    }
  }
  job(nullptr);
}

void BusLink::Publish(v1::PushMessage message, std::function<void(absl::Status)> done) {
  // While the bus is away, fail at once rather than queue behind appends that wait for it
  // (a replica announces its clients again when the bus is back: NODE_SNAPSHOT).
  if (!up()) {
    post_([done = std::move(done)] { done(absl::UnavailableError("the bus is unavailable")); });
    return;
  }
  const absl::Time give_up = absl::Now() + options_.publish_deadline;
  Enqueue([this, message = std::move(message), done = std::move(done), give_up](bus::OffsetLog* log) mutable {
    absl::Status status = log == nullptr           ? absl::UnavailableError("push is shutting down")
                          : absl::Now() > give_up ? absl::DeadlineExceededError("waited too long behind other appends")
                                                   : Append(message, give_up, log);
    post_([done = std::move(done), status = std::move(status)] { done(status); });
  });
}

void BusLink::Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) {
  Enqueue([this, done = std::move(done)](bus::OffsetLog* log) mutable {
    absl::StatusOr<v1::HeadResponse> head = absl::UnavailableError("push is shutting down");
    if (log != nullptr) {
      absl::StatusOr<std::optional<bus::Position>> newest = log->Newest(events::ClusterSubject(options_.prefix));
      if (newest.ok()) {
        head = v1::HeadResponse();
        head->set_epoch(epoch_);
        head->set_seq(*newest && (*newest)->sequence > started_after_ ? (*newest)->sequence : 0);
      } else {
        head = newest.status();
      }
    }
    post_([done = std::move(done), head = std::move(head)]() mutable { done(std::move(head)); });
  });
}

absl::Status BusLink::Append(const v1::PushMessage& message, absl::Time give_up, bus::OffsetLog* log) {
  v1::Event event;
  *event.mutable_push() = message;
  event.set_epoch(epoch_);
  const absl::Time now = absl::Now();
  event.set_at_unix_ms(absl::ToUnixMillis(now));
  event.set_at_unix_us(absl::ToUnixMicros(now));
  const std::vector<events::StreamRef> streams = events::PushStreams(message);
  for (const events::StreamRef& stream : streams) {
    v1::StreamOffset* s = event.add_streams();
    s->set_system_id(stream.system_id);
    s->set_group_name(stream.group_name);
  }
  // The same parts as ingest's publisher writes (events/bus_layout.h), named for JetStream's
  // duplicate check so that a try repeated after a lost answer is stored once.
  const std::string id = common::NewUuid();
  std::vector<bus::OffsetLog::Entry> entries;
  auto fanout = std::make_shared<const std::string>(events::EncodeFanoutBase(event));
  for (size_t k = 0; k < streams.size(); ++k) {
    entries.push_back({bus::StreamSubject(options_.prefix, streams[k].system_id, streams[k].group_name),
                       absl::StrCat(id, ":", k),
                       [fanout, stream = streams[k]](uint64_t offset) { return events::EncodeFanout(*fanout, stream, offset); }});
  }
  if (events::HasEffectsPart(event)) {
    auto effects = std::make_shared<const std::string>(events::EncodeEffects(event));
    entries.push_back({events::ClusterSubject(options_.prefix), absl::StrCat(id, ":c"),
                       [effects](uint64_t) { return *effects; }});
  }
  absl::Status status;
  while (!entries.empty()) {
    std::vector<bus::Position> stored;
    status = log->AppendBatch(entries, &stored);
    entries.erase(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(stored.size()));
    appended_->Inc(stored.size());
    if (status.ok() || absl::Now() > give_up) break;
  }
  if (!status.ok()) {
    append_errors_->Inc();
    uint64_t skipped = 0;
    if (error_log_.Allow(absl::Now(), &skipped)) {
      log_->warn("bus: {} not appended: {} ({} line(s) skipped)", v1::PushMessage::Kind_Name(message.kind()),
                 status.message(), skipped);
    }
  }
  return status;
}

void BusLink::OnMessage(bus::Position position, absl::string_view data, StreamRead* stream) {
  read_->Inc();
  // A stream's reader is ready once past its boundary: before a live message, or right after
  // the boundary's own (the recovers waiting for it then run before anything live).
  if (stream != nullptr && !stream->ready_sent && position.sequence > stream->boundary) PostReady(stream);
  v1::Event event;
  if (!event.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    undecodable_->Inc();
    uint64_t skipped = 0;
    if (error_log_.Allow(absl::Now(), &skipped)) {
      log_->warn("bus: message {} is not an event; skipped ({} line(s) skipped)", position.sequence, skipped);
    }
  } else {
    // The cluster subject's order is what Sync waits on; a stream's messages are not in it.
    event.set_seq(stream == nullptr ? position.sequence : 0);
    const bool past = stream != nullptr && position.sequence <= stream->boundary;
    post_([this, event = std::move(event), past]() mutable { on_event_(std::move(event), past); });
  }
  if (stream != nullptr && !stream->ready_sent && position.sequence == stream->boundary) PostReady(stream);
}

void BusLink::PostReady(StreamRead* stream) {
  stream->ready_sent = true;
  post_([this, system = stream->system_id, group = stream->group_name, generation = stream->generation] {
    StreamReady(system, group, generation);
  });
}

bool BusLink::Want(const std::string& system_id, const std::string& group_name) {
  const uint64_t generation = ++generations_;
  wanted_[StreamKey(system_id, group_name)] = generation;
  Enqueue([this, stream = StreamRead{system_id, group_name, 0, generation, false}](bus::OffsetLog* log) mutable {
    if (log != nullptr) StartReading(std::move(stream), log);
  });
  return false;
}

void BusLink::Unwant(const std::string& system_id, const std::string& group_name) {
  const std::string key = StreamKey(system_id, group_name);
  wanted_.erase(key);
  Enqueue([this, key](bus::OffsetLog* log) {
    if (log == nullptr) return;
    readers_.erase(key);
    streams_->Set(static_cast<int64_t>(readers_.size()));
  });
}

void BusLink::StreamReady(const std::string& system_id, const std::string& group_name, uint64_t generation) {
  auto it = wanted_.find(StreamKey(system_id, group_name));
  // Unwanted since, or wanted again by a newer reader that will say so itself.
  if (it == wanted_.end() || it->second != generation) return;
  on_stream_ready_(system_id, group_name);
}

void BusLink::StartReading(StreamRead stream, bus::OffsetLog* log) {
  const std::string key = StreamKey(stream.system_id, stream.group_name);
  readers_.erase(key);
  const std::string subject = bus::StreamSubject(options_.prefix, stream.system_id, stream.group_name);
  // The stream's end first, then the subject's newest: a message appended in between is
  // the newest (and read back) or comes after it (and is live); none is missed.
  uint64_t from = 0;
  absl::Status status;
  const absl::Time began = absl::Now();
  absl::StatusOr<uint64_t> last = bus::LastSequence(*connection_, options_.stream);
  absl::StatusOr<std::optional<bus::Position>> newest = last.ok() ? log->Newest(subject) : last.status();
  const absl::Time looked = absl::Now();
  if (newest.ok() && !*newest) {
    from = *last + 1;
  } else if (newest.ok()) {
    stream.boundary = (*newest)->sequence;
    const uint64_t back = (*newest)->offset > options_.read_back ? (*newest)->offset - options_.read_back : 0;
    absl::StatusOr<bus::Resume> resume = log->Locate(subject, back);
    if (resume.ok()) {
      // Gone: the subject's oldest message still kept is after `back`: from its first.
      from = resume->kind == bus::Resume::kNext       ? resume->sequence
             : resume->kind == bus::Resume::kUpToDate ? (*newest)->sequence + 1
                                                      : 1;
    } else {
      status = resume.status();
    }
  } else {
    status = newest.status();
  }
  if (!status.ok()) {
    // Live from now, without the read-back: a recover here may get 410.
    log_->warn("bus: cannot read back {}: {}; reading it live only", subject, status.message());
    stream.boundary = 0;
    from = 0;
  }
  auto read = std::make_unique<StreamRead>(std::move(stream));
  StreamRead* raw = read.get();
  if (raw->boundary == 0) PostReady(raw);  // nothing to read back: ready before anything live
  absl::StatusOr<std::unique_ptr<bus::SubjectReader>> reader = Read(subject, from, raw);
  if (!reader.ok()) {
    log_->warn("bus: cannot read {}: {}; trying again in {}", subject, reader.status().message(),
               absl::FormatDuration(options_.retry));
    if (!raw->ready_sent) PostReady(raw);  // the recovers waiting for it get their answer (410)
    // (After a bus server's loss the bus may refuse new consumers for a while.) Again, while
    // this generation is still wanted: its clients would otherwise get nothing live.
    post_([this, again = StreamRead{raw->system_id, raw->group_name, 0, raw->generation, true}]() mutable {
      auto it = wanted_.find(StreamKey(again.system_id, again.group_name));
      if (it == wanted_.end() || it->second != again.generation) return;
      Enqueue([this, again = std::move(again)](bus::OffsetLog* on) mutable {
        if (on == nullptr) return;
        WaitToRetry();
        StartReading(std::move(again), on);
      });
    });
    return;
  }
  readers_[key] = Reader{std::move(read), *std::move(reader)};
  streams_->Set(static_cast<int64_t>(readers_.size()));
  // Streams start one at a time: a slow bus delays every client waiting for one.
  const absl::Time now = absl::Now();
  if (now - began > absl::Seconds(1)) {
    log_->warn("bus: starting to read {} took {} (finding where: {}; the reader: {})", subject,
               absl::FormatDuration(now - began), absl::FormatDuration(looked - began),
               absl::FormatDuration(now - looked));
  }
}

void BusLink::Heal(bus::OffsetLog* log) {
  const absl::Time now = absl::Now();
  if (now < next_heal_) return;
  next_heal_ = now + kHealEvery;
  // Readers stopped (reading on from the stream) or quiet: the cluster subject's (key "") and
  // the streams'.
  std::vector<std::string> due;
  auto is_due = [now](const bus::SubjectReader* reader) {
    return reader != nullptr && (reader->stopped() || (reader->last_sequence() > 0 &&
                                                       now - reader->last_delivery() >= kStalledAfter));
  };
  if (is_due(reader_.get())) due.emplace_back();
  for (const auto& [key, r] : readers_) {
    if (is_due(r.reader.get())) due.push_back(key);
  }
  // In turn from round to round: a round may end early.
  if (!due.empty()) {
    std::rotate(due.begin(), due.begin() + static_cast<std::ptrdiff_t>(heal_cursor_++ % due.size()), due.end());
  }
  if (due.size() > kHealChecks) due.resize(kHealChecks);
  // One consumer asked for per round: a refusal costs the request's timeout, and this thread
  // runs the API's appends too.
  bool asked = false;
  uint64_t skipped = 0;
  for (const std::string& key : due) {
    // This thread also runs the API's appends: a round that the bus keeps waiting ends.
    if (absl::Now() - now > kHealBudget) break;
    Reader* r = nullptr;
    if (!key.empty()) {
      auto it = readers_.find(key);
      if (it == readers_.end()) continue;
      r = &it->second;
    }
    std::unique_ptr<bus::SubjectReader>& reader = r ? r->reader : reader_;
    absl::Time& retry = r ? r->consumer_retry : cluster_consumer_retry_;
    StreamRead* stream = r ? r->stream.get() : nullptr;
    const std::string subject = r ? bus::StreamSubject(options_.prefix, stream->system_id, stream->group_name)
                                  : events::ClusterSubject(options_.prefix);
    if (!reader->stopped()) {
      absl::StatusOr<std::optional<bus::Position>> newest = log->Newest(subject);
      if (absl::IsDeadlineExceeded(newest.status())) break;  // the bus does not answer: next round
      if (!newest.ok() || !*newest || (*newest)->sequence <= reader->last_sequence()) continue;
      log_->warn("bus: the reader of {} stalled at sequence {} ({} behind, nothing for {}); starting it again",
                 subject, reader->last_sequence(), (*newest)->sequence - reader->last_sequence(),
                 absl::FormatDuration(absl::Trunc(now - reader->last_delivery(), absl::Milliseconds(100))));
      reader->Stop();
      retry = now;
    }
    if (!asked && now >= retry) {
      asked = true;
      if (Restart(reader, subject, stream)) {
        restarts_->Inc();
        log_->info("bus: reading {} again from sequence {}", subject, reader->last_sequence() + 1);
        continue;
      }
      retry = absl::Now() + kConsumerRetry;  // after the refusal, which may have taken a timeout
    }
    absl::StatusOr<size_t> read = reader->ReadOn(kReadOnBatch);
    if (read.ok()) {
      read_on_->Inc(*read);
      continue;
    }
    if (error_log_.Allow(now, &skipped)) {
      log_->warn("bus: cannot read {} from the stream either: {} ({} line(s) skipped)", subject,
                 read.status().message(), skipped);
    }
    if (absl::IsDeadlineExceeded(read.status())) break;
  }
}

absl::StatusOr<std::unique_ptr<bus::SubjectReader>> BusLink::Read(const std::string& subject, uint64_t from,
                                                                  StreamRead* stream, uint64_t after_offset) {
  bus::ReaderTracking tracking = tracking_;
  tracking.after_offset = after_offset;
  return bus::SubjectReader::Start(connection_.get(), options_.stream, subject, from,
                                   [this, stream](bus::Position position, absl::string_view, absl::string_view data) {
                                     OnMessage(position, data, stream);
                                   },
                                   tracking);
}

bool BusLink::Restart(std::unique_ptr<bus::SubjectReader>& reader, const std::string& subject, StreamRead* stream) {
  const uint64_t after = reader->last_sequence();
  absl::StatusOr<std::unique_ptr<bus::SubjectReader>> again = Read(subject, after + 1, stream, reader->last_offset());
  if (!again.ok()) {
    log_->warn("bus: cannot read {} through a consumer yet: {}; reading it from the stream meanwhile", subject,
               again.status().message());
    return false;
  }
  reader = *std::move(again);
  return true;
}

void BusLink::WaitToRetry() {
  common::MutexLock lock(&mu_);
  cv_.WaitFor(&mu_, options_.retry, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; });
}

bool BusLink::Open() {
  const std::string where = absl::StrJoin(options_.urls, ",");
  for (;;) {
    {
      common::MutexLock lock(&mu_);
      if (stopping_) return false;
    }
    uint64_t skipped = 0;
    if (!connection_) {
      bus::ConnectionOptions connect;
      connect.urls = options_.urls;
      connect.name = absl::StrCat("devbridge-push ", options_.node_id);
      absl::StatusOr<std::unique_ptr<bus::Connection>> connection = bus::Connection::Connect(connect);
      if (!connection.ok()) {
        if (error_log_.Allow(absl::Now(), &skipped)) {
          log_->warn("bus: cannot reach {}: {}; trying again", where, connection.status().message());
        }
        WaitToRetry();
        continue;
      }
      connection_ = *std::move(connection);
    }
    // Ingest creates the stream (it knows how many copies to keep).
    absl::StatusOr<std::string> epoch = bus::StreamEpoch(*connection_, options_.stream);
    absl::StatusOr<uint64_t> last = epoch.ok() ? bus::LastSequence(*connection_, options_.stream) : epoch.status();
    if (!last.ok()) {
      if (error_log_.Allow(absl::Now(), &skipped)) {
        log_->warn("bus: stream {} not readable yet ({}); ingest creates it; trying again", options_.stream,
                   last.status().message());
      }
      WaitToRetry();
      continue;
    }
    epoch_ = *epoch;
    started_after_ = *last;
    // What every replica acts on, from now on; the streams come as they are wanted.
    absl::StatusOr<std::unique_ptr<bus::SubjectReader>> reader =
        Read(events::ClusterSubject(options_.prefix), started_after_ + 1, nullptr);
    if (!reader.ok()) {
      if (error_log_.Allow(absl::Now(), &skipped)) log_->warn("bus: {}; trying again", reader.status().message());
      WaitToRetry();
      continue;
    }
    reader_ = *std::move(reader);
    log_->info("bus: reading stream {} at {} (epoch {}) from sequence {}: the cluster subject, and the push "
               "streams this replica's clients hold", options_.stream, where, epoch_, started_after_ + 1);
    return true;
  }
}

void BusLink::Run() {
  if (!Open()) {
    common::MutexLock lock(&mu_);
    for (Job& job : jobs_) job(nullptr);
    jobs_.clear();
    return;
  }
  up_ = true;
  bool connected = true;
  uint64_t reconnects_seen = connection_->reconnects();
  post_([this] { on_state_(true); });
  bus::OffsetLog log(connection_.get(), options_.stream);
  for (;;) {
    Job job;
    {
      common::MutexLock lock(&mu_);
      cv_.WaitFor(&mu_, absl::Seconds(1),
                  [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !jobs_.empty(); });
      // What was asked before the stop still runs (the NODE_DOWN of Stop among it).
      if (stopping_ && jobs_.empty()) break;
      if (!jobs_.empty()) {
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
    }
    // The client reconnects by itself; the node hears of it, so that membership updates that
    // failed meanwhile are told again (a snapshot) once the bus is back. A loss and return
    // between two looks (a server restarted within a second) shows in the count alone.
    const bool now = connection_->connected();
    const uint64_t reconnects = connection_->reconnects();
    if (now != connected || reconnects != reconnects_seen) {
      const bool missed = now && connected;
      connected = now;
      reconnects_seen = reconnects;
      log_->log(connected ? spdlog::level::info : spdlog::level::warn, "bus: {}",
                missed      ? "connection lost and back"
                : connected ? "connected again"
                            : "connection lost; reconnecting");
      post_([this, connected, missed] {
        if (missed) on_state_(false);
        on_state_(connected);
      });
    }
    if (job) job(&log);
    if (connected) Heal(&log);
  }
  // Closed first, the connection stops every reader at once, even with the bus away (each
  // would otherwise ask it to delete its consumer and wait the timeout).
  connection_->Close();
  readers_.clear();  // no OnMessage of theirs runs once this returns
}

}  // namespace devbridge::push
