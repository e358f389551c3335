#include "bus/durable_reader.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace devbridge::bus {
namespace {

constexpr int64_t kFetchWaitMs = 1000;
// Fetches in a row that brought nothing before the reader looks at the stream for what the
// consumer has not delivered (a lost tail: nothing after it shows the gap), and before it
// checks the consumer is still there (one deleted from outside would leave it waiting).
constexpr int kQuietFetchesBeforeTail = 5;
constexpr int kQuietFetchesBeforeCheck = 30;
// Without a consumer, another is asked for this often.
constexpr absl::Duration kRecreateEvery = absl::Seconds(5);

}  // namespace

DurableReader::DurableReader(const Connection* connection, DurableReaderOptions options, OnMessage on_message)
    : connection_(connection), options_(std::move(options)), on_message_(std::move(on_message)),
      name_(options_.consumer) {
  last_ = options_.from > 0 ? options_.from - 1 : 0;
}

absl::StatusOr<std::unique_ptr<DurableReader>> DurableReader::Start(const Connection* connection,
                                                                    DurableReaderOptions options,
                                                                    OnMessage on_message) {
  std::unique_ptr<DurableReader> reader(new DurableReader(connection, std::move(options), std::move(on_message)));
  // Refused, or no answer (right after a server's loss the servers refused for 30 s and
  // more): the thread reads from the stream meanwhile and asks again.
  reader->TakeConsumer();
  reader->thread_ = std::thread([r = reader.get()] { r->Run(); });
  return reader;
}

DurableReader::~DurableReader() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  Acknowledge();
  Unbind();
}

void DurableReader::Commit(uint64_t sequence) {
  uint64_t seen = committed_.load();
  while (sequence > seen && !committed_.compare_exchange_weak(seen, sequence)) {
  }
}

absl::Status DurableReader::Create() {
  jsConsumerConfig cfg;
  jsConsumerConfig_Init(&cfg);
  cfg.Durable = name_.c_str();
  cfg.FilterSubject = options_.subject.c_str();
  cfg.DeliverPolicy = js_DeliverByStartSequence;
  cfg.OptStartSeq = last_ + 1;
  cfg.AckPolicy = js_AckAll;
  cfg.AckWait = absl::ToInt64Nanoseconds(options_.ack_wait);
  cfg.MaxAckPending = options_.max_ack_pending;
  cfg.InactiveThreshold = absl::ToInt64Nanoseconds(options_.inactive_threshold);
  // One copy: a replicated consumer is a raft group of its own, and nats-server 2.9.10 left
  // such groups "not current" (the server unhealthy for good) after consumers were created and
  // dropped around a server's restart. When its server dies, Run reads on from the stream and
  // creates another. (Not in memory: libnats 3.4.1 then refuses to bind to it.)
  cfg.Replicas = 1;
  for (int attempt = 0;; ++attempt) {
    jsConsumerInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_AddConsumer(&info, connection_->js(), options_.stream.c_str(), &cfg, nullptr, &code);
    jsConsumerInfo_Destroy(info);
    if (s == NATS_OK) break;
    // Refused by the servers (not a timeout): a consumer of that name reading from elsewhere,
    // what a previous reader left. Deleted, once, then created anew.
    if (attempt > 0 || code == 0) {
      return FromNats(s, absl::StrCat("creating consumer ", name_, " of ", options_.stream), code);
    }
    code = static_cast<jsErrCode>(0);
    s = js_DeleteConsumer(connection_->js(), options_.stream.c_str(), name_.c_str(), nullptr, &code);
    if (s != NATS_OK && s != NATS_NOT_FOUND && code != JSConsumerNotFoundErr) {
      return FromNats(s, absl::StrCat("deleting consumer ", name_, " of ", options_.stream), code);
    }
  }
  next_delivery_ = 1;
  return absl::OkStatus();
}

bool DurableReader::TakeConsumer() {
  absl::Status ready = Create();
  if (ready.ok()) ready = Bind();
  if (ready.ok()) return true;
  Unbind();
  common::Logger("bus.reader")->warn("{}: {}; reading from the stream meanwhile", options_.subject, ready.message());
  next_create_ = absl::Now() + kRecreateEvery;
  return false;
}

absl::Status DurableReader::Bind() {
  jsSubOptions options;
  jsSubOptions_Init(&options);
  options.Stream = options_.stream.c_str();
  options.Consumer = name_.c_str();  // bound: the client will not delete it on unsubscribing
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_PullSubscribe(&sub_, connection_->js(), options_.subject.c_str(), name_.c_str(),
                                  nullptr, &options, &code);
  if (s != NATS_OK) {
    sub_ = nullptr;
    return FromNats(s, absl::StrCat("reading ", options_.subject, " through consumer ", options_.consumer), code);
  }
  return absl::OkStatus();
}

void DurableReader::Unbind() {
  if (sub_ == nullptr) return;
  natsSubscription_Unsubscribe(sub_);
  natsSubscription_Destroy(sub_);
  sub_ = nullptr;
}

void DurableReader::Run() {
  static auto log = common::Logger("bus.reader");
  int quiet = 0;
  int failures = 0;
  while (!stop_) {
    if (sub_ == nullptr) {
      // No consumer (gone, or its server is): read on from the stream itself, and ask for a
      // consumer again every few seconds (the servers may refuse for a while after a loss).
      const uint64_t before = filled_;
      Fill(UINT64_MAX);
      if (filled_ > before && failures++ % 20 == 0) {
        log->warn("{}: {} messages read from the stream while consumer {} is not there", options_.subject,
                  filled_ - before, name_);
      }
      if (absl::Now() >= next_create_ && TakeConsumer()) {
        log->info("{}: reading through consumer {} again, from {}", options_.subject, name_, last_ + 1);
        quiet = 0;
        failures = 0;
        continue;
      }
      absl::SleepFor(absl::Milliseconds(kFetchWaitMs));
      continue;
    }
    natsMsgList list;
    jsErrCode fetch_code = static_cast<jsErrCode>(0);
    const natsStatus s = natsSubscription_Fetch(&list, sub_, options_.batch, kFetchWaitMs, &fetch_code);
    if (s == NATS_OK) {
      quiet = 0;
      failures = 0;
      for (int i = 0; i < list.Count && !stop_; ++i) Handle(list.Msgs[i]);
      natsMsgList_Destroy(&list);
      Acknowledge();
      continue;
    }
    Acknowledge();
    if (s != NATS_TIMEOUT && failures++ % 20 == 0) {
      log->warn("{}: cannot fetch from consumer {}: {}", options_.subject, name_,
                FromNats(s, "fetching", fetch_code).message());
    }
    if (s != NATS_TIMEOUT) absl::SleepFor(absl::Milliseconds(200));
    ++quiet;
    if (quiet % kQuietFetchesBeforeTail == 0) {
      const uint64_t before = filled_;
      Fill(UINT64_MAX);
      if (filled_ > before) {
        log->warn("{}: {} messages consumer {} did not deliver were read from the stream", options_.subject,
                  filled_ - before, name_);
      }
    }
    if (quiet % kQuietFetchesBeforeCheck != 0) continue;
    jsConsumerInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    const natsStatus got = js_GetConsumerInfo(&info, connection_->js(), options_.stream.c_str(),
                                              name_.c_str(), nullptr, &code);
    jsConsumerInfo_Destroy(info);
    if (got == NATS_OK) continue;
    // Deleted from outside, or on a server that is gone (the consumer has one copy).
    log->warn("{}: consumer {} does not answer ({}); reading from the stream until another is there",
              options_.subject, name_, FromNats(got, "asking for it", code).message());
    Unbind();
    unacknowledged_.clear();  // their acknowledgements would go to the consumer that is gone
    // Under a name of its own (see Start).
    name_ = absl::StrCat(options_.consumer, "-", ++recreations_);
    next_create_ = absl::InfinitePast();
    failures = 0;
  }
}

void DurableReader::Handle(natsMsg* msg) {
  jsMsgMetaData* meta = nullptr;
  if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) return;  // not a message of the stream
  const uint64_t sequence = meta->Sequence.Stream;
  const uint64_t delivery = meta->Sequence.Consumer;
  jsMsgMetaData_Destroy(meta);
  // Deliveries skipped: lost on the way. Hand over what the subject had before this one.
  if (delivery > next_delivery_ && sequence > last_ + 1) Fill(sequence);
  next_delivery_ = std::max(next_delivery_, delivery + 1);
  const char* reply = natsMsg_GetReply(msg);
  if (sequence <= last_) {
    ++copies_;
    // A copy of a message read back from the stream (which has nothing to acknowledge with) is
    // what acknowledges it, once committed.
    if (reply != nullptr && (unacknowledged_.empty() || sequence > unacknowledged_.back().sequence)) {
      unacknowledged_.push_back({sequence, reply});
    }
    return;
  }
  if (stop_) return;
  on_message_(sequence, absl::string_view(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)));
  last_ = sequence;
  if (reply != nullptr) unacknowledged_.push_back({sequence, reply});
}

void DurableReader::Fill(uint64_t until) {
  static auto log = common::Logger("bus.reader");
  int failures = 0;
  while (!stop_ && last_ + 1 < until) {
    absl::StatusOr<std::optional<StoredMessage>> next =
        ReadNext(*connection_, options_.stream, options_.subject, last_ + 1);
    if (!next.ok()) {
      if (failures++ % 20 == 0) log->warn("{}: cannot read back a gap: {}; retrying", options_.subject, next.status().message());
      absl::SleepFor(absl::Milliseconds(200));
      continue;
    }
    if (!next->has_value() || (*next)->sequence >= until) return;
    on_message_((*next)->sequence, (*next)->data);
    last_ = (*next)->sequence;
    ++filled_;
    if (options_.read_back != nullptr) options_.read_back->Inc();
  }
}

void DurableReader::Acknowledge() {
  const uint64_t committed = committed_.load();
  std::string reply;
  while (!unacknowledged_.empty() && unacknowledged_.front().sequence <= committed) {
    reply = std::move(unacknowledged_.front().reply);
    unacknowledged_.pop_front();
  }
  // Policy "all": this one acknowledges every message before it too.
  if (!reply.empty()) natsConnection_PublishString(connection_->nc(), reply.c_str(), "+ACK");
}

}  // namespace devbridge::bus
