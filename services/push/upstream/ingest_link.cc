#include "services/push/upstream/ingest_link.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/tsan.h"

namespace devbridge::push {

IngestLink::IngestLink(LinkOptions options, Poster post,
                       std::function<void(std::vector<v1::Event>)> on_events,
                       std::function<void(bool)> on_state, common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      post_(std::move(post)),
      on_events_(std::move(on_events)),
      on_state_(std::move(on_state)) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // A restarted ingest may come back on another address (a container gets a new IP): look
  // the name up again after a second, not gRPC's default 30 s, while connections fail.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      grpcutil::ChannelCredentials(options_.security);
  // Several ingest replicas (`a:7070,b:7070`, ingest --partitions): a channel for each.
  for (absl::string_view address : absl::StrSplit(options_.ingest_addr, ',', absl::SkipWhitespace())) {
    Target target;
    target.channel = grpc::CreateCustomChannel(std::string(absl::StripAsciiWhitespace(address)),
                                               credentials.ok() ? *credentials : grpc::InsecureChannelCredentials(),
                                               args);
    target.stub = v1::Ingest::NewStub(target.channel);
    targets_.push_back(std::move(target));
  }
  if (targets_.empty()) {  // Create() refuses it; a channel that fails every call otherwise
    Target target;
    target.channel = grpc::CreateCustomChannel(options_.ingest_addr, grpc::InsecureChannelCredentials(), args);
    target.stub = v1::Ingest::NewStub(target.channel);
    targets_.push_back(std::move(target));
  }
  reconnects_ =
      &metrics->AddCounter("devbridge_push_upstream_reconnects_total", "Event stream reconnects.");
  resets_ = &metrics->AddCounter("devbridge_push_upstream_resets_total",
                                 "Event stream resumes that lost events.");
  if (options_.subscribe) {
    metrics->AddGaugeFn("devbridge_push_upstream_up", "1 while the event stream from ingest is up.",
                        {}, [this] { return up_.load() ? 1.0 : 0.0; });
  }
}

absl::StatusOr<std::unique_ptr<IngestLink>> IngestLink::Create(LinkOptions options, Poster post,
                                                              std::function<void(std::vector<v1::Event>)> on_events,
                                                              std::function<void(bool)> on_state,
                                                              common::MetricsRegistry* metrics) {
  // Checked here so that a bad file is an error at start, not an insecure channel.
  if (absl::Status valid = grpcutil::Validate(options.security, /*server=*/false); !valid.ok()) return valid;
  if (absl::StripAsciiWhitespace(absl::StrReplaceAll(options.ingest_addr, {{",", ""}})).empty()) {
    return absl::InvalidArgumentError("--ingest_addr: no address (HOST:PORT[,HOST:PORT...])");
  }
  return std::make_unique<IngestLink>(std::move(options), std::move(post), std::move(on_events), std::move(on_state),
                                      metrics);
}

IngestLink::~IngestLink() { Stop(); }

size_t IngestLink::Pick() {
  const size_t n = targets_.size();
  const size_t first = preferred_.load() % n;
  size_t fallback = n;
  for (size_t i = 0; i < n; ++i) {
    const size_t k = (first + i) % n;
    const grpc_connectivity_state state = targets_[k].channel->GetState(/*try_to_connect=*/true);
    if (state == GRPC_CHANNEL_READY) return k;
    if (fallback == n && state != GRPC_CHANNEL_TRANSIENT_FAILURE && state != GRPC_CHANNEL_SHUTDOWN) fallback = k;
  }
  return fallback == n ? first : fallback;
}

void IngestLink::Unreachable(size_t target) {
  size_t expected = target;
  preferred_.compare_exchange_strong(expected, (target + 1) % targets_.size());
}

void IngestLink::Start() {
  if (options_.subscribe) thread_ = std::thread([this] { SubscribeLoop(); });
}

void IngestLink::Stop() {
  if (stopping_.exchange(true)) return;
  std::vector<std::shared_ptr<grpc::ClientContext>> calls;
  {
    common::MutexLock lock(&mu_);
    if (current_ != nullptr) current_->TryCancel();
    for (const auto& [ctx, owner] : calls_) calls.push_back(owner);
  }
  // Cancelled outside the lock (a cancel may finish the call at once); the shared pointers
  // keep each context alive until then.
  for (const auto& call : calls) call->TryCancel();
  calls.clear();
  {
    common::MutexLock lock(&mu_);
    calls_cv_.Wait(&mu_, [this] {
      mu_.AssertHeld();
      return calls_.empty();
    });
  }
  cv_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

void IngestLink::SetUp(bool up) {
  if (up_.exchange(up) == up) return;
  post_([this, up] { on_state_(up); });
}

void IngestLink::SubscribeLoop() {
  auto log = common::Logger("push.upstream");
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  absl::Duration backoff = options_.min_backoff;
  bool first = true;
  while (!stopping_) {
    grpc::ClientContext ctx;
    grpcutil::AddToken(&ctx, options_.security.internal_token);
    {
      common::MutexLock lock(&mu_);
      if (stopping_) break;
      current_ = &ctx;
    }
    v1::SubscribeRequest req;
    req.set_node_id(options_.node_id);
    if (epoch_.empty()) {
      req.set_from_oldest(true);  // fill the recovery histories with what ingest still holds
    } else {
      req.set_resume_epoch(epoch_);
      req.set_resume_after_seq(seq_);
    }
    const size_t target = Pick();
    std::unique_ptr<grpc::ClientReader<v1::EventBatch>> reader = targets_[target].stub->Subscribe(&ctx, req);
    reader->WaitForInitialMetadata();
    if (ctx.GetServerInitialMetadata().count("devbridge-epoch") > 0) {
      if (!first) reconnects_->Inc();
      log->info("event stream from {} is up ({})", options_.ingest_addr,
                epoch_.empty() ? std::string("from the oldest event held")
                               : absl::StrCat("resuming after ", epoch_, "/", seq_));
      first = false;
      backoff = options_.min_backoff;
      SetUp(true);
      v1::EventBatch batch;
      while (reader->Read(&batch)) {
        std::vector<v1::Event> events(batch.events_size());
        for (int i = 0; i < batch.events_size(); ++i) {
          if (!events[i].ParseFromString(batch.events(i))) continue;
          if (events[i].has_reset()) resets_->Inc();
          if (events[i].seq() > 0) {
            epoch_ = events[i].epoch();
            seq_ = events[i].seq();
          } else if (events[i].has_reset()) {
            epoch_ = events[i].epoch();
            seq_ = events[i].reset().oldest_seq() > 0 ? events[i].reset().oldest_seq() - 1 : 0;
          }
        }
        post_([this, events = std::move(events)]() mutable { on_events_(std::move(events)); });
      }
    }
    const grpc::Status status = reader->Finish();
    {
      common::MutexLock lock(&mu_);
      current_ = nullptr;
    }
    SetUp(false);
    if (stopping_) break;
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) Unreachable(target);
    log->warn("event stream from {} ended: {}; reconnecting", options_.ingest_addr,
              status.error_message());
    {
      common::MutexLock lock(&mu_);
      cv_.WaitFor(&mu_, backoff * jitter(rng), [this] { return stopping_.load(); });
    }
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

// One unary call on the callback API: `method(async_stub, ctx, request, response, callback)`
// starts it; `done` gets the response or the error on the io thread.
template <typename Request, typename Response, typename Method>
void IngestLink::Call(Method method, Request request, absl::Duration deadline,
                      std::function<void(absl::StatusOr<Response>)> done) {
  struct State {
    grpc::ClientContext ctx;
    Request request;
    Response response;
  };
  auto call = std::make_shared<State>();
  call->request = std::move(request);
  call->ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpcutil::AddToken(&call->ctx, options_.security.internal_token);
  {
    common::MutexLock lock(&mu_);
    if (stopping_) {
      post_([done = std::move(done)] { done(absl::UnavailableError("push is shutting down")); });
      return;
    }
    calls_.emplace(&call->ctx, std::shared_ptr<grpc::ClientContext>(call, &call->ctx));
  }
  // `this` outlives the callback: Stop() cancels every call in flight and waits for its
  // callback, and after Stop() no result is handed on. gRPC runs the callback on its own
  // thread after the call started; TSan is told so (it cannot see inside gRPC).
  common::TsanRelease(call.get());
  const size_t target = Pick();
  method(targets_[target].stub->async(), &call->ctx, &call->request, &call->response,
         [this, call, target, done = std::move(done)](const grpc::Status& status) mutable {
           common::TsanAcquire(call.get());
           if (status.error_code() == grpc::StatusCode::UNAVAILABLE) Unreachable(target);
           if (!stopping_) {
             post_([call, status, done = std::move(done)] {
               if (!status.ok()) return done(common::FromGrpcStatus(status));
               done(std::move(call->response));
             });
           }
           common::MutexLock lock(&mu_);
           calls_.erase(&call->ctx);
           calls_cv_.NotifyAll();
         });
}

void IngestLink::Publish(v1::PushMessage message, std::function<void(absl::Status)> done) {
  Call<v1::PushMessage, v1::PublishResponse>(
      [](auto* stub, auto* ctx, auto* req, auto* resp, auto cb) {
        stub->Publish(ctx, req, resp, std::move(cb));
      },
      std::move(message), options_.publish_deadline,
      [done = std::move(done)](const absl::StatusOr<v1::PublishResponse>& r) { done(r.status()); });
}

void IngestLink::Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) {
  Call<v1::HeadRequest, v1::HeadResponse>(
      [](auto* stub, auto* ctx, auto* req, auto* resp, auto cb) { stub->Head(ctx, req, resp, std::move(cb)); },
      v1::HeadRequest(), options_.publish_deadline, std::move(done));
}

void IngestLink::Dispatch(v1::Command command,
                          std::function<void(absl::StatusOr<v1::CommandResult>)> done) {
  // The command's own timeout, then a margin for ingest to answer with 2002 itself.
  const absl::Duration timeout =
      absl::Milliseconds(command.timeout_ms() == 0 ? 60000 : command.timeout_ms());
  Call<v1::Command, v1::CommandResult>(
      [](auto* stub, auto* ctx, auto* req, auto* resp, auto cb) {
        stub->Dispatch(ctx, req, resp, std::move(cb));
      },
      std::move(command), timeout + absl::Seconds(5), std::move(done));
}

void IngestLink::ListDevices(v1::ListDevicesRequest request,
                             std::function<void(absl::StatusOr<v1::ListDevicesResponse>)> done) {
  Call<v1::ListDevicesRequest, v1::ListDevicesResponse>(
      [](auto* stub, auto* ctx, auto* req, auto* resp, auto cb) {
        stub->ListDevices(ctx, req, resp, std::move(cb));
      },
      std::move(request), options_.publish_deadline, std::move(done));
}

void IngestLink::GetReadings(v1::GetReadingsRequest request,
                             std::function<void(absl::StatusOr<v1::GetReadingsResponse>)> done) {
  Call<v1::GetReadingsRequest, v1::GetReadingsResponse>(
      [](auto* stub, auto* ctx, auto* req, auto* resp, auto cb) {
        stub->GetReadings(ctx, req, resp, std::move(cb));
      },
      std::move(request), options_.publish_deadline, std::move(done));
}

}  // namespace devbridge::push
