// Commands in a cluster (`--partitions`): a push replica's Dispatch reaches whichever ingest
// replica its channel picked, and the device's owner must run it (one command in flight per
// device, and the reply comes back to the owner through the intake stream). So a replica
// that does not own the device forwards the command as a NATS request on
// `devbridge.cmd.<partition>`; the owner answers it with the result once the command is done.
//
// A command the owner cannot answer fails with 503: no replica holds the partition right now
// (the servers say "no responders": a partition moving), the partition's lease changed hands
// while the command waited (its owner died with it in flight: the lease runs out `ttl` after
// the last renewal, and the router looks at the holders of partitions with commands waiting
// every second), or no answer came within the command's timeout and a margin.
#ifndef DEVBRIDGE_SERVICES_INGEST_CLUSTER_COMMAND_ROUTER_H_
#define DEVBRIDGE_SERVICES_INGEST_CLUSTER_COMMAND_ROUTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/leases.h"
#include "bus/subscription.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "devbridge/v1/events.pb.h"

namespace devbridge::ingest::cluster {

inline constexpr char kCommandPrefix[] = "devbridge.cmd";

class CommandRouter {
 public:
  // A result, or AlreadyExists (the command id was used before) as the owner said.
  using Done = std::function<void(absl::StatusOr<v1::CommandResult>)>;
  // Runs a command here (the owner); `done` once, from any thread.
  using Run = std::function<void(v1::Command command, Done done)>;

  // `ttl` and `replicas` as the partition leases' (PartitionOwner), should this open their bucket first.
  static absl::StatusOr<std::unique_ptr<CommandRouter>> Start(const bus::Connection* connection, int partitions,
                                                              absl::Duration ttl, int replicas, Run run,
                                                              common::MetricsRegistry* metrics);
  // Commands still waiting for an owner's answer fail with 503.
  ~CommandRouter();
  CommandRouter(const CommandRouter&) = delete;
  CommandRouter& operator=(const CommandRouter&) = delete;

  // Sends `command` to its device's owner; `done` gets the owner's answer, or a 503 result
  // after `wait`. Any thread.
  void Forward(const v1::Command& command, absl::Duration wait, Done done) ABSL_LOCKS_EXCLUDED(mu_);
  // Starts and stops answering the commands of a partition this replica owns.
  absl::Status Serve(int partition) ABSL_LOCKS_EXCLUDED(mu_);
  void Unserve(int partition) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Waiting {
    Done done;
    absl::Time deadline;
    v1::Command command;  // for a 503 result that names it
    int partition = 0;
    bool looked = false;  // holder is what the lease said at the first look
    std::string holder;
  };
  CommandRouter(const bus::Connection* connection, int partitions, Run run, common::MetricsRegistry* metrics);
  static void OnReply(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  static void OnCommand(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  // The expirer's thread: every 100 ms fails what waited too long, every second what waits for
  // a partition whose lease changed hands.
  void Expire() ABSL_LOCKS_EXCLUDED(mu_);
  void LookAtHolders() ABSL_LOCKS_EXCLUDED(mu_);
  // Takes a waiting command out (done null when it already finished).
  Waiting Take(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);

  const bus::Connection* connection_;
  const int partitions_;
  Run run_;
  std::unique_ptr<bus::Leases> leases_;  // the expirer's
  std::string inbox_;  // replies come to inbox_.<id>
  std::unique_ptr<bus::Subscription> replies_;

  common::Mutex mu_;
  common::CondVar cv_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Waiting> waiting_ ABSL_GUARDED_BY(mu_);
  std::map<int, std::unique_ptr<bus::Subscription>> served_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  common::Counter* forwarded_;
  common::Counter* served_total_;
  common::Counter* unanswered_;
  std::thread expirer_;
};

}  // namespace devbridge::ingest::cluster

#endif  // DEVBRIDGE_SERVICES_INGEST_CLUSTER_COMMAND_ROUTER_H_
