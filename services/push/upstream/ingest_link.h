// Push's link to ingest over gRPC: the event stream (subscribed on a thread of its own,
// resumed after the last event seen, reconnected with backoff), and Dispatch, Publish,
// ListDevices and GetReadings calls on the callback API. Everything it hands back is posted to the
// io thread.
#ifndef DEVBRIDGE_SERVICES_PUSH_UPSTREAM_INGEST_LINK_H_
#define DEVBRIDGE_SERVICES_PUSH_UPSTREAM_INGEST_LINK_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "grpcutil/security.h"
#include "devbridge/v1/ingest.grpc.pb.h"
#include "services/push/core/directory.h"
#include "services/push/core/push_node.h"

namespace devbridge::push {

using Poster = std::function<void(std::function<void()>)>;

struct LinkOptions {
  std::string ingest_addr = "127.0.0.1:7070";
  std::string node_id;
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration publish_deadline = absl::Seconds(5);
  grpcutil::Security security;  // internal_token sent on every call; grpc_tls_* for the channel
  // False with --bus: the events come from the bus, and this link only carries calls.
  bool subscribe = true;
};

class IngestLink : public Upstream, public DeviceDirectory {
 public:
  // `on_events` gets each batch of events in order; `on_state` each change of the stream's
  // state. Both run on the io thread through `post`.
  // Fails (InvalidArgument naming the flag) when the TLS files cannot be read.
  static absl::StatusOr<std::unique_ptr<IngestLink>> Create(LinkOptions options, Poster post,
                                                            std::function<void(std::vector<v1::Event>)> on_events,
                                                            std::function<void(bool)> on_state,
                                                            common::MetricsRegistry* metrics);
  IngestLink(LinkOptions options, Poster post,
             std::function<void(std::vector<v1::Event>)> on_events,
             std::function<void(bool)> on_state, common::MetricsRegistry* metrics);
  ~IngestLink() override;

  void Start();
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  bool up() const override { return up_.load(); }
  void Publish(v1::PushMessage message, std::function<void(absl::Status)> done) override;
  void Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) override;
  void Dispatch(v1::Command command,
                std::function<void(absl::StatusOr<v1::CommandResult>)> done) override;
  void ListDevices(v1::ListDevicesRequest request,
                   std::function<void(absl::StatusOr<v1::ListDevicesResponse>)> done) override;
  void GetReadings(v1::GetReadingsRequest request,
                   std::function<void(absl::StatusOr<v1::GetReadingsResponse>)> done) override;

 private:
  void SubscribeLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void SetUp(bool up);
  template <typename Request, typename Response, typename Method>
  void Call(Method method, Request request, absl::Duration deadline,
            std::function<void(absl::StatusOr<Response>)> done);

  LinkOptions options_;
  Poster post_;
  std::function<void(std::vector<v1::Event>)> on_events_;
  std::function<void(bool)> on_state_;
  // One channel per ingest address (`a:7070,b:7070`: several replicas, any of which takes any
  // call), each resolving its own name again when it fails (a restarted container's address
  // changes). Calls stay on one replica until its channel fails, then go to the next.
  struct Target {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Ingest::Stub> stub;
  };
  std::vector<Target> targets_;
  std::atomic<size_t> preferred_{0};
  // The target to call now: the preferred one if it is connected or may be, else the first
  // that is; every idle channel is asked to connect on the way.
  size_t Pick();
  // A call on `target` found its replica unreachable: the next call starts from the next one.
  void Unreachable(size_t target);
  std::atomic<bool> up_{false};
  std::atomic<bool> stopping_{false};
  common::Mutex mu_;
  common::CondVar cv_;        // stopping: ends SubscribeLoop's back-off
  common::CondVar calls_cv_;  // a call in calls_ finished
  grpc::ClientContext* current_ ABSL_GUARDED_BY(mu_) = nullptr;  // the Subscribe call
  // Unary calls in flight, each kept alive until its callback ran.
  absl::flat_hash_map<grpc::ClientContext*, std::shared_ptr<grpc::ClientContext>> calls_ ABSL_GUARDED_BY(mu_);
  std::string epoch_;                       // last event seen (subscriber thread only)
  uint64_t seq_ = 0;
  std::thread thread_;
  common::Counter* reconnects_;
  common::Counter* resets_;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_UPSTREAM_INGEST_LINK_H_
