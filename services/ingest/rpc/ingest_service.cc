#include "services/ingest/rpc/ingest_service.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/ids.h"
#include "events/bus_layout.h"
#include "events/push_message.h"
#include "grpcutil/security.h"
#include "common/log.h"
#include "services/ingest/core/device_table.h"

namespace devbridge::ingest {
namespace {

constexpr int kMaxBatchEvents = 1000;
constexpr size_t kMaxBatchBytes = size_t{512} * 1024;
constexpr uint32_t kDefaultReadings = 100;
constexpr uint32_t kMaxReadings = 10000;
constexpr uint32_t kDefaultDevicesPage = 1000;
constexpr uint32_t kMaxDevicesPage = 10000;
// The last instant PostgreSQL's timestamptz and absl agree on without surprises.
constexpr int64_t kMaxSinceMs = 253402300799999;

// One subscriber of the event stream. Lives until gRPC calls OnDone; all of its state is
// touched on the io thread only, including its deletion.
class Subscription final : public grpc::ServerWriteReactor<v1::EventBatch> {
 public:
  Subscription(Poster post, EventLog* log, v1::SubscribeRequest request, std::atomic<int>* count,
               const StreamMetrics* metrics, NodeTracker* nodes)
      : post_(std::move(post)), log_(log), request_(std::move(request)), count_(count), m_(metrics), nodes_(nodes) {
    count_->fetch_add(1);
    // Tell the subscriber at once that the stream is up, even if no event comes for a while.
    StartSendInitialMetadata();
    post_([this] { Begin(); });
  }

  void OnWriteDone(bool ok) override {
    post_([this, ok] {
      writing_ = false;
      m_->write_ms->Observe(absl::ToDoubleMilliseconds(absl::Now() - write_started_));
      if (!ok) return FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      if (finish_pending_) return FinishOnce(finish_status_);
      Pump();
    });
  }

  void OnCancel() override {
    post_([this] { FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "subscriber went away")); });
  }

  void OnDone() override {
    post_([this] {
      *alive_ = false;
      count_->fetch_sub(1);
      nodes_->Left(request_.node_id(), log_);
      common::Logger("ingest.rpc")->info("subscriber {} left at seq {}", request_.node_id(), next_ - 1);
      delete this;
    });
  }

 private:
  void Begin() {
    nodes_->Joined(request_.node_id());
    ReadStart start = log_->Start(request_);
    next_ = start.next_seq;
    reset_ = std::move(start.reset);
    common::Logger("ingest.rpc")
        ->info("subscriber {} joined at seq {} of epoch {}{}", request_.node_id(), next_, log_->epoch(),
               reset_ ? " (could not resume: sent a reset)" : "");
    Pump();
  }

  void Pump() {
    if (writing_ || finished_) return;
    batch_.Clear();
    size_t bytes = 0;
    if (reset_) {
      batch_.add_events(*reset_);
      reset_.reset();
    }
    const absl::Time now = absl::Now();
    while (batch_.events_size() < kMaxBatchEvents && bytes < kMaxBatchBytes) {
      std::shared_ptr<const std::string> event = log_->Get(next_);
      if (!event) break;
      m_->wait_ms->Observe(absl::ToDoubleMilliseconds(now - log_->AppendedAt(next_)));
      bytes += event->size();
      batch_.add_events(*event);
      ++next_;
    }
    if (batch_.events_size() == 0) {
      if (next_ < log_->oldest_seq()) {
        return FinishOnce(grpc::Status(
            grpc::StatusCode::DATA_LOSS,
            absl::StrCat("subscriber fell behind the replay buffer at seq ", next_,
                         "; subscribe again with resume to learn what was lost")));
      }
      if (!waiting_) {
        waiting_ = true;
        log_->WaitForAppend([this, alive = alive_] {
          if (!*alive) return;
          waiting_ = false;
          Pump();
        });
      }
      return;
    }
    m_->sent->Inc(static_cast<uint64_t>(batch_.events_size()));
    writing_ = true;
    write_started_ = now;
    StartWrite(&batch_);
  }

  void FinishOnce(const grpc::Status& status) {
    if (finished_) return;
    if (writing_) {
      finish_pending_ = true;
      finish_status_ = status;
      return;
    }
    finished_ = true;
    Finish(status);
  }

  Poster post_;
  EventLog* log_;
  v1::SubscribeRequest request_;
  std::atomic<int>* count_;
  const StreamMetrics* m_;
  NodeTracker* nodes_;
  absl::Time write_started_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::shared_ptr<const std::string> reset_;
  v1::EventBatch batch_;
  uint64_t next_ = 0;
  bool writing_ = false;
  bool waiting_ = false;
  bool finished_ = false;
  bool finish_pending_ = false;
  grpc::Status finish_status_;
};

// A unary reactor that refuses at once.
grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx, const grpc::Status& status,
                                 common::Counter* count = nullptr) {
  if (count != nullptr) count->Inc();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}
grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx, grpc::StatusCode code,
                                 const std::string& message) {
  return Refuse(ctx, grpc::Status(code, message));
}

// A stream that ends at once with `status` (a subscriber without the internal token).
class Refused final : public grpc::ServerWriteReactor<v1::EventBatch> {
 public:
  explicit Refused(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

void NodeTracker::Joined(const std::string& node) {
  if (!node.empty()) ++streams_[node];
}

void NodeTracker::Left(const std::string& node, EventLog* log) {
  if (node.empty()) return;
  auto it = streams_.find(node);
  if (it == streams_.end() || --it->second > 0) return;
  streams_.erase(it);
  // The node's last stream ended: its clients are gone as far as the cluster knows.
  v1::Event event;
  v1::PushMessage* m = event.mutable_push();
  m->set_kind(v1::PushMessage::NODE_DOWN);
  m->set_origin_node(node);
  log->Append(std::move(event), {}, absl::Now());
  common::Logger("ingest.rpc")->info("push node {} has no stream left: announced NODE_DOWN", node);
}

IngestService::IngestService(Poster post, IngestCore* core, EventLog* log, Store* store,
                             common::MetricsRegistry* metrics, std::string internal_token)
    : post_(std::move(post)), core_(core), log_(log), store_(store), token_(std::move(internal_token)) {
  stream_metrics_.sent = &metrics->AddCounter("devbridge_ingest_stream_events_sent_total",
                                              "Events written to stream subscribers.");
  stream_metrics_.wait_ms = &metrics->AddHistogram(
      "devbridge_ingest_stream_wait_latency_ms",
      "Event emitted to handed to gRPC for a push replica's stream (waits while the previous write is in flight), ms.",
      common::LatencyBucketsMs());
  stream_metrics_.write_ms = &metrics->AddHistogram(
      "devbridge_ingest_stream_write_latency_ms", "One write of a batch of events to a push replica's stream, ms.",
      common::LatencyBucketsMs());
  unauthenticated_ = &metrics->AddCounter("devbridge_ingest_rpc_unauthenticated_total",
                                          "gRPC calls refused for a missing or wrong internal token.");
  refused_ = &metrics->AddCounter("devbridge_ingest_rpc_refused_total",
                                  "gRPC calls refused for their arguments (INVALID_ARGUMENT, ALREADY_EXISTS).");
  metrics->AddGaugeFn("devbridge_ingest_stream_subscribers", "Push replicas subscribed.", {},
                      [this] { return static_cast<double>(subscribers_.load()); });
}

grpc::ServerUnaryReactor* IngestService::Dispatch(grpc::CallbackServerContext* ctx,
                                                  const v1::Command* request,
                                                  v1::CommandResult* response) {
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) return Refuse(ctx, auth, unauthenticated_);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  CommandDone done = [this, reactor, response](absl::StatusOr<v1::CommandResult> result) {
    if (!result.ok()) {
      refused_->Inc();
      reactor->Finish(grpc::Status(grpc::StatusCode::ALREADY_EXISTS, std::string(result.status().message())));
      return;
    }
    *response = *std::move(result);
    reactor->Finish(grpc::Status::OK);
  };
  if (forward_ && forward_(*request, done)) return reactor;
  Run(*request, std::move(done));
  return reactor;
}

void IngestService::Run(v1::Command command, CommandDone done) {
  post_([this, command = std::move(command), done = std::move(done)]() mutable {
    // A caller's command id names one command only: a second use would write another
    // device's request and response into the first one's row (CONTRACT §10.2).
    if (!command.command_id().empty() && core_->CommandIdUsed(command.command_id())) {
      done(absl::AlreadyExistsError(absl::StrCat("command_id ", command.command_id(), " was used before")));
      return;
    }
    core_->Submit(std::move(command), absl::Now(), [done](const v1::CommandResult& r) { done(r); });
  });
}

grpc::ServerUnaryReactor* IngestService::ListDevices(grpc::CallbackServerContext* ctx,
                                                     const v1::ListDevicesRequest* request,
                                                     v1::ListDevicesResponse* response) {
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) return Refuse(ctx, auth, unauthenticated_);
  if (request->limit() > kMaxDevicesPage) {
    refused_->Inc();
    return Refuse(ctx, grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("limit must be 1..", kMaxDevicesPage));
  }
  const uint32_t limit = request->limit() == 0 ? kDefaultDevicesPage : request->limit();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  DevicesDone done = [reactor, response](v1::ListDevicesResponse page) {
    *response = std::move(page);
    reactor->Finish(grpc::Status::OK);
  };
  if (list_devices_) {
    list_devices_(request->after(), limit, [reactor, done](absl::StatusOr<v1::ListDevicesResponse> page) {
      if (!page.ok()) return reactor->Finish(common::ToGrpcStatus(page.status()));
      done(*std::move(page));
    });
    return reactor;
  }
  v1::ListDevicesRequest ask;
  ask.set_after(request->after());
  ask.set_limit(limit + 1);  // one more than asked for tells whether another page follows
  LocalDevices(ask, [limit, done = std::move(done)](v1::ListDevicesResponse page) {
    const int n = static_cast<int>(limit);
    if (page.devices_size() > n) {
      page.mutable_devices()->DeleteSubrange(n, page.devices_size() - n);
      page.set_next(page.devices(n - 1).device_id());
    }
    done(std::move(page));
  });
  return reactor;
}

void IngestService::LocalDevices(const v1::ListDevicesRequest& request, DevicesDone done) {
  post_([this, limit = request.limit(), after = request.after(), done = std::move(done)] {
    v1::ListDevicesResponse response;
    for (const DeviceInfo* device : core_->devices().Page(after, limit)) {
      const DeviceInfo& d = *device;
      v1::Device* out = response.add_devices();
      out->set_device_id(d.id);
      out->set_online(d.online);
      out->set_first_seen_unix_ms(absl::ToUnixMillis(d.first_seen));
      out->set_last_seen_unix_ms(absl::ToUnixMillis(d.last_seen));
      out->set_meta_json(d.meta_json);
      if (const PollStatus* poll = core_->polls().Find(d.id)) {
        v1::DevicePolling* p = out->mutable_polling();
        for (const regmap::PollBlock& b : poll->plan) {
          v1::DevicePollBlock* block = p->add_plan();
          block->set_function(b.function);
          block->set_address(b.address);
          block->set_count(b.count);
          block->set_every_ms(absl::ToInt64Milliseconds(b.every));
        }
        if (poll->last_poll != absl::InfinitePast()) p->set_last_poll_unix_ms(absl::ToUnixMillis(poll->last_poll));
        p->set_last_code(poll->last_code);
        p->set_failures(poll->failures);
        p->set_unresponsive(poll->unresponsive);
        p->set_backoff_ms(absl::ToInt64Milliseconds(poll->backoff));
      }
    }
    done(std::move(response));
  });
}

grpc::ServerUnaryReactor* IngestService::GetReadings(grpc::CallbackServerContext* ctx,
                                                     const v1::GetReadingsRequest* request,
                                                     v1::GetReadingsResponse* response) {
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) return Refuse(ctx, auth, unauthenticated_);
  if (!common::IsValidId(request->device_id())) {
    return Refuse(ctx, grpc::StatusCode::INVALID_ARGUMENT, "device_id must match [A-Za-z0-9_.:-]{1,64}");
  }
  if (store_ == nullptr) {
    return Refuse(ctx, grpc::StatusCode::FAILED_PRECONDITION, "ingest runs without persistence (pg_dsn=none)");
  }
  if (request->since_unix_ms() < 0 || request->since_unix_ms() > kMaxSinceMs) {
    refused_->Inc();
    return Refuse(ctx, grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("since_unix_ms must be 0..", kMaxSinceMs));
  }
  if (request->limit() > kMaxReadings) {
    refused_->Inc();
    return Refuse(ctx, grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("limit must be 1..", kMaxReadings));
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const uint32_t limit = request->limit() == 0 ? kDefaultReadings : request->limit();
  store_->GetReadings(request->device_id(), absl::FromUnixMillis(request->since_unix_ms()), limit,
                      [reactor, response](absl::StatusOr<std::vector<v1::CommandResult>> readings) {
                        if (!readings.ok()) {
                          // The database's own words stay in ingest's log, not in the reply.
                          common::Logger("ingest.rpc")->warn("GetReadings failed: {}", readings.status().message());
                          reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                                       "readings are unavailable: the database did not answer"));
                          return;
                        }
                        for (auto& r : *readings) *response->add_readings() = std::move(r);
                        reactor->Finish(grpc::Status::OK);
                      });
  return reactor;
}

grpc::ServerWriteReactor<v1::EventBatch>* IngestService::Subscribe(
    grpc::CallbackServerContext* ctx, const v1::SubscribeRequest* request) {
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) {
    unauthenticated_->Inc();
    return new Refused(std::move(auth));
  }
  // The epoch never changes in a process, so reading it here is safe. Subscribers see this
  // initial metadata as soon as the stream is established.
  ctx->AddInitialMetadata("devbridge-epoch", log_->epoch());
  return new Subscription(post_, log_, *request, &subscribers_, &stream_metrics_, &nodes_);
}

grpc::ServerUnaryReactor* IngestService::Publish(grpc::CallbackServerContext* ctx,
                                                 const v1::PushMessage* request,
                                                 v1::PublishResponse* response) {
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) return Refuse(ctx, auth, unauthenticated_);
  // Everything forwarded reaches every replica: refuse what a replica could not apply, and
  // data that would not splice into a frame as one JSON value (CONTRACT §10.2).
  if (absl::Status valid = events::ValidatePushMessage(*request); !valid.ok()) {
    refused_->Inc();
    return Refuse(ctx, grpc::StatusCode::INVALID_ARGUMENT, std::string(valid.message()));
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  post_([this, message = *request, reactor, response]() mutable {
    const std::vector<StreamRef> streams = events::PushStreams(message);
    v1::Event event;
    *event.mutable_push() = std::move(message);
    response->set_seq(log_->Append(std::move(event), streams, absl::Now()));
    response->set_epoch(log_->epoch());
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* IngestService::Head(grpc::CallbackServerContext* ctx, const v1::HeadRequest* /*request*/,
                                              v1::HeadResponse* response) {
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) return Refuse(ctx, auth, unauthenticated_);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  post_([this, reactor, response] {
    response->set_epoch(log_->epoch());
    response->set_seq(log_->last_seq());
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace devbridge::ingest
