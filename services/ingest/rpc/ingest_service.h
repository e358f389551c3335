// gRPC service devbridge.v1.Ingest on the callback API. Every reaction only posts work to
// the ingest io thread (which owns the core and the event log) or to the store's reader
// thread, and finishes the call from there; nothing here blocks a gRPC thread.
#ifndef DEVBRIDGE_SERVICES_INGEST_RPC_INGEST_SERVICE_H_
#define DEVBRIDGE_SERVICES_INGEST_RPC_INGEST_SERVICE_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/container/flat_hash_map.h"

#include "common/metrics.h"
#include "devbridge/v1/ingest.grpc.pb.h"
#include "services/ingest/core/event_log.h"
#include "services/ingest/core/ingest_core.h"
#include "services/ingest/store/store.h"

namespace devbridge::ingest {

// Runs a function on the io thread.
using Poster = std::function<void(std::function<void()>)>;

// Counts event streams per push node id (io thread only). When a node's last stream ends,
// NODE_DOWN goes into the event log, so every other replica forgets that node's clients.
class NodeTracker {
 public:
  void Joined(const std::string& node);
  void Left(const std::string& node, EventLog* log);

 private:
  absl::flat_hash_map<std::string, int> streams_;
};

// The event stream's metrics, shared by every subscription.
struct StreamMetrics {
  common::Counter* sent = nullptr;
  common::Histogram* wait_ms = nullptr;   // event emitted → handed to gRPC
  common::Histogram* write_ms = nullptr;  // one write: StartWrite → OnWriteDone
};

class IngestService final : public v1::Ingest::CallbackService {
 public:
  // `core` and `log` are touched only inside functions given to `post`. `store` may be null
  // (running without persistence). With an `internal_token`, every call must carry it
  // (authorization: Bearer), else UNAUTHENTICATED.
  IngestService(Poster post, IngestCore* core, EventLog* log, Store* store,
                common::MetricsRegistry* metrics, std::string internal_token = "");

  grpc::ServerUnaryReactor* Dispatch(grpc::CallbackServerContext* ctx, const v1::Command* request,
                                     v1::CommandResult* response) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* ctx,
                                        const v1::ListDevicesRequest* request,
                                        v1::ListDevicesResponse* response) override;
  grpc::ServerUnaryReactor* GetReadings(grpc::CallbackServerContext* ctx,
                                        const v1::GetReadingsRequest* request,
                                        v1::GetReadingsResponse* response) override;
  grpc::ServerWriteReactor<v1::EventBatch>* Subscribe(grpc::CallbackServerContext* ctx,
                                                      const v1::SubscribeRequest* request) override;
  grpc::ServerUnaryReactor* Publish(grpc::CallbackServerContext* ctx, const v1::PushMessage* request,
                                    v1::PublishResponse* response) override;
  grpc::ServerUnaryReactor* Head(grpc::CallbackServerContext* ctx, const v1::HeadRequest* request,
                                 v1::HeadResponse* response) override;

  int subscribers() const { return subscribers_.load(); }

  // A command's outcome: its result, or AlreadyExists when its command_id was used before.
  using CommandDone = std::function<void(absl::StatusOr<v1::CommandResult>)>;
  // Runs `command` on this replica's core (posted to the io thread); `done` runs there.
  void Run(v1::Command command, CommandDone done);
  // In a cluster (--partitions): Dispatch offers each command here first; true when it took
  // the command (another replica owns the device) and will call `done`. Set before serving.
  using Forward = std::function<bool(const v1::Command& command, const CommandDone& done)>;
  void SetForward(Forward forward) { forward_ = std::move(forward); }

  using DevicesDone = std::function<void(v1::ListDevicesResponse)>;
  // This replica's devices: up to request.limit() after request.after(), in id order (no
  // `next`); `done` runs on the io thread.
  void LocalDevices(const v1::ListDevicesRequest& request, DevicesDone done);
  // In a cluster: ListDevices asks this for a page (after, limit) of every replica's devices.
  using Listed = std::function<void(absl::StatusOr<v1::ListDevicesResponse>)>;
  using ListAll = std::function<void(const std::string& after, uint32_t limit, Listed done)>;
  void SetListDevices(ListAll list) { list_devices_ = std::move(list); }

 private:
  Poster post_;
  IngestCore* core_;
  EventLog* log_;
  Store* store_;
  std::string token_;
  Forward forward_;
  ListAll list_devices_;
  std::atomic<int> subscribers_{0};
  StreamMetrics stream_metrics_;
  common::Counter* refused_;
  common::Counter* unauthenticated_;
  NodeTracker nodes_;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_RPC_INGEST_SERVICE_H_
