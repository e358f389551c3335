#include "services/ingest/cluster/intake_forwarder.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "services/ingest/cluster/partitions.h"

namespace devbridge::ingest::cluster {
namespace {

constexpr char kKeyHeader[] = "Devbridge-Forward";

// The key a forwarded message carries; 0 if none.
uint64_t KeyOf(natsMsg* msg) {
  const char* text = nullptr;
  uint64_t key = 0;
  if (msg == nullptr || natsMsgHeader_Get(msg, kKeyHeader, &text) != NATS_OK || text == nullptr ||
      !absl::SimpleAtoi(text, &key)) {
    return 0;
  }
  return key;
}

}  // namespace

absl::StatusOr<std::unique_ptr<IntakeForwarder>> IntakeForwarder::Start(const bus::Connection* connection,
                                                                       ForwarderOptions options,
                                                                       std::function<void(uint64_t)> on_forwarded,
                                                                       common::MetricsRegistry* metrics) {
  bus::StreamSpec spec{kIntakeStream, {absl::StrCat(kIntakePrefix, ".>")}, options.replicas, options.max_age};
  if (absl::Status s = bus::EnsureStream(*connection, spec); !s.ok()) return s;
  jsOptions js_options;
  jsOptions_Init(&js_options);
  js_options.Wait = absl::ToInt64Milliseconds(connection->timeout());
  js_options.PublishAsync.ErrHandler = &IntakeForwarder::OnError;
  // The closure is set below, once the forwarder exists: the handler only runs after a publish.
  jsCtx* js = nullptr;
  std::unique_ptr<IntakeForwarder> forwarder;
  // The handler needs the forwarder; the forwarder needs the context: make the object first.
  forwarder.reset(new IntakeForwarder(connection, std::move(options), nullptr, std::move(on_forwarded), metrics));
  js_options.PublishAsync.ErrHandlerClosure = forwarder.get();
  if (natsStatus s = natsConnection_JetStream(&js, connection->nc(), &js_options); s != NATS_OK) {
    return bus::FromNats(s, "opening JetStream for the intake");
  }
  forwarder->js_ = js;
  IntakeForwarder* self = forwarder.get();
  forwarder->thread_ = std::thread([self] { self->Run(); });
  return forwarder;
}

IntakeForwarder::IntakeForwarder(const bus::Connection* connection, ForwarderOptions options, jsCtx* js,
                                 std::function<void(uint64_t)> on_forwarded, common::MetricsRegistry* metrics)
    : connection_(connection),
      options_(std::move(options)),
      js_(js),
      on_forwarded_(std::move(on_forwarded)),
      forwarded_(&metrics->AddCounter("devbridge_ingest_intake_forwarded_total",
                                      "MQTT messages appended to the intake stream for their partition's owner.")),
      errors_(&metrics->AddCounter("devbridge_ingest_intake_forward_errors_total",
                                   "Forwarded batches the bus refused or did not answer in full (sent again).")),
      batch_ms_(&metrics->AddHistogram("devbridge_ingest_intake_forward_batch_ms",
                                       "Time to store one batch of messages in the intake stream.",
                                       common::LatencyBucketsMs())) {
  queue_gauge_ = &metrics->AddGauge("devbridge_ingest_intake_forward_queue_bytes",
                                    "Bytes of messages waiting to be forwarded.");
}

IntakeForwarder::~IntakeForwarder() {
  if (thread_.joinable()) {
    {
      common::MutexLock lock(&mu_);
      stopping_ = true;
      stop_deadline_ = absl::Now() + drain;
    }
    cv_.NotifyAll();
    thread_.join();
  }
  if (js_ != nullptr) jsCtx_Destroy(js_);
}

uint64_t IntakeForwarder::ReadMark(const std::string& mark_path) {
  std::ifstream in(mark_path);
  uint64_t seq = 0;
  if (!(in >> seq)) return 0;
  return seq;
}

void IntakeForwarder::WriteMark(uint64_t seq) {
  // A new file renamed over the old: a crash leaves one or the other, never half of one.
  const std::string tmp = options_.mark_path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string text = absl::StrCat(seq, "\n");
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (ok) std::rename(tmp.c_str(), options_.mark_path.c_str());
}

void IntakeForwarder::Forward(IntakeMessage message) {
  const int partition = std::max(0, PartitionOfTopic(message.topic, options_.partitions));
  message.source = source_;
  Pending pending{++next_key_, message.seq, IntakeSubject(partition), EncodeIntake(message)};
  const size_t bytes = pending.data.size() + pending.subject.size();
  bool wake = false;
  {
    common::MutexLock lock(&mu_);
    wake = queue_.empty();
    queue_.push_back(std::move(pending));
    const size_t queued = queued_bytes_.fetch_add(bytes) + bytes;
    if (queued > options_.max_queue_bytes) was_full_ = true;
    queue_gauge_->Set(static_cast<int64_t>(queued));
  }
  if (wake) cv_.NotifyOne();
}

void IntakeForwarder::SetOnSpace(std::function<void()> on_space) {
  common::MutexLock lock(&mu_);
  on_space_ = std::move(on_space);
}

void IntakeForwarder::OnError(jsCtx*, jsPubAckErr* error, void* closure) {
  auto* self = static_cast<IntakeForwarder*>(closure);
  const uint64_t key = KeyOf(error->Msg);
  if (key == 0) return;
  common::MutexLock lock(&self->failed_mu_);
  self->failed_.push_back(key);
}

bool IntakeForwarder::Send(const std::vector<Pending>& batch) {
  auto log = common::Logger("ingest.cluster");
  std::set<uint64_t> todo;
  for (const Pending& p : batch) todo.insert(p.key);
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    std::set<uint64_t> again;
    for (const Pending& p : batch) {
      if (todo.count(p.key) == 0) continue;
      natsMsg* msg = nullptr;
      natsStatus s = natsMsg_Create(&msg, p.subject.c_str(), nullptr, p.data.data(), static_cast<int>(p.data.size()));
      if (s == NATS_OK) s = natsMsgHeader_Set(msg, kKeyHeader, absl::StrCat(p.key).c_str());
      if (s == NATS_OK && p.seq != 0) {
        s = natsMsgHeader_Set(msg, "Nats-Msg-Id", absl::StrCat(options_.spool_id, "-", p.seq).c_str());
      }
      if (s == NATS_OK) s = js_PublishMsgAsync(js_, &msg, nullptr);
      if (msg != nullptr) natsMsg_Destroy(msg);  // not taken by the client
      if (s != NATS_OK) again.insert(p.key);
    }
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = absl::ToInt64Milliseconds(connection_->timeout());
    if (js_PublishAsyncComplete(js_, &wait) != NATS_OK) {
      // Not answered in time: take the unanswered back, to send again.
      natsMsgList pending;
      if (js_PublishAsyncGetPendingList(&pending, js_) == NATS_OK) {
        for (int i = 0; i < pending.Count; ++i) {
          if (const uint64_t key = KeyOf(pending.Msgs[i]); key != 0) again.insert(key);
        }
        natsMsgList_Destroy(&pending);
      }
    }
    {
      common::MutexLock lock(&failed_mu_);
      again.insert(failed_.begin(), failed_.end());
      failed_.clear();
    }
    if (again.empty()) return true;
    errors_->Inc();
    if (errors_->Value() % 20 == 1) {
      log->warn("intake: the bus did not store {} of {} forwarded message(s); sending them again", again.size(),
                batch.size());
    }
    todo = std::move(again);
    {
      common::MutexLock lock(&mu_);
      if (cv_.WaitFor(&mu_, backoff, [this] {
            mu_.AssertHeld();
            return stopping_ && absl::Now() >= stop_deadline_;
          })) {
        return false;
      }
    }
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

void IntakeForwarder::Run() {
  auto log = common::Logger("ingest.cluster");
  std::vector<Pending> batch;
  while (true) {
    batch.clear();
    {
      common::MutexLock lock(&mu_);
      cv_.Wait(&mu_, [this] {
        mu_.AssertHeld();
        return stopping_ || !queue_.empty();
      });
      if (queue_.empty() || (stopping_ && absl::Now() >= stop_deadline_)) {
        if (!queue_.empty()) {
          log->warn("intake: stopping with {} message(s) not forwarded; the spool keeps them for the next start",
                    queue_.size());
        }
        break;
      }
      while (!queue_.empty() && batch.size() < options_.max_batch) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    const absl::Time start = absl::Now();
    if (!Send(batch)) {
      log->warn("intake: stopping with a batch the bus did not take; the spool keeps it for the next start");
      break;
    }
    batch_ms_->Observe(absl::ToDoubleMilliseconds(absl::Now() - start));
    forwarded_->Inc(batch.size());
    uint64_t last = 0;
    for (const Pending& p : batch) last = std::max(last, p.seq);
    if (last != 0) {
      WriteMark(last);
      on_forwarded_(last);
    }
    size_t bytes = 0;
    for (const Pending& p : batch) bytes += p.data.size() + p.subject.size();
    const size_t left = queued_bytes_.fetch_sub(bytes) - bytes;
    queue_gauge_->Set(static_cast<int64_t>(left));
    std::function<void()> on_space;
    {
      common::MutexLock lock(&mu_);
      if (was_full_ && left <= options_.max_queue_bytes / 2) {
        was_full_ = false;
        on_space = on_space_;
      }
    }
    if (on_space) on_space();
  }
}

}  // namespace devbridge::ingest::cluster
