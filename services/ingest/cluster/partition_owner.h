// A replica's share of the partitions (`--partitions`), held as leases in the bus's
// key-value bucket (bus::Leases): every ttl / 3 a thread of its own renews this replica's
// node lease and its partitions' leases, counts the live replicas, and takes or gives back
// partitions so each holds ceil(partitions / replicas) (PlanLeases). A partition whose holder
// died is free `ttl` after the holder's last renewal, and taken at the next round.
//
// It calls on_gained(p, fence) when this replica may start acting for partition p, and
// on_lost(p) when it must stop: a partition given back is released only after on_lost(p)
// returned (so the next holder starts where this one stopped), and one whose renewal failed
// stops being held (Owns) when its lease's margin runs out (Leases::HeldUntil). That deadline
// is kept by a thread of its own: a round waits for the bus, one request after another, and
// while the bus does not answer a round can outlast every lease it holds (a server's kill -9:
// 25 s, during which another replica took the partitions and both stored the same messages).
// The keeper never waits for a callback: on_lost(p) runs on a thread of its own, and p is not
// taken again before it returned (a loss that waits for PostgreSQL or the bus once held every
// other partition past its deadline). The callbacks run one at a time per partition.
//
// A deadline kept on this replica's clock is not enough on its own: on_lost may still be
// committing when the next holder starts. `fence` is the lease's revision when this replica
// took it (bus::Leases::Held), greater for every later holding; the partition's writer stores
// it with its checkpoint and PostgreSQL refuses an older holder's writes (see Store).
#ifndef DEVBRIDGE_SERVICES_INGEST_CLUSTER_PARTITION_OWNER_H_
#define DEVBRIDGE_SERVICES_INGEST_CLUSTER_PARTITION_OWNER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/leases.h"
#include "common/metrics.h"
#include "common/mutex.h"

namespace devbridge::ingest::cluster {

struct OwnerOptions {
  int partitions = 16;
  std::string node_id;  // this replica, unique in the cluster
  absl::Duration ttl = absl::Seconds(6);
  int replicas = 3;  // copies of the lease bucket
};

class PartitionOwner {
 public:
  using OnGained = std::function<void(int partition, uint64_t fence)>;
  using OnLost = std::function<void(int partition)>;
  // Starts the thread; the first round runs at once. `connection` outlives the owner.
  static std::unique_ptr<PartitionOwner> Start(const bus::Connection* connection, OwnerOptions options,
                                               OnGained on_gained, OnLost on_lost,
                                               common::MetricsRegistry* metrics);
  // Gives every partition back (on_lost, then the release), then stops.
  ~PartitionOwner();
  PartitionOwner(const PartitionOwner&) = delete;
  PartitionOwner& operator=(const PartitionOwner&) = delete;

  // Thread-safe: whether this replica acts for `partition` now.
  bool Owns(int partition) const ABSL_LOCKS_EXCLUDED(mu_);
  int held() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  PartitionOwner(const bus::Connection* connection, OwnerOptions options, OnGained on_gained, OnLost on_lost)
      : connection_(connection), options_(std::move(options)), on_gained_(std::move(on_gained)),
        on_lost_(std::move(on_lost)),
        held_until_(options_.partitions, absl::InfinitePast()),
        losing_(options_.partitions, false),
        callbacks_mu_(new common::Mutex[options_.partitions]) {}
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  // Lets go of every partition whose lease runs out, when it does.
  void Keep() ABSL_LOCKS_EXCLUDED(mu_);
  // One round; false if the bus did not answer (the next round tries again).
  bool Round(bus::Leases* leases);
  void Gain(int partition, absl::Time until, uint64_t fence) ABSL_LOCKS_EXCLUDED(mu_);
  // False if it was not held (the keeper let it go meanwhile).
  bool Lose(int partition, const char* why) ABSL_LOCKS_EXCLUDED(mu_);
  // on_lost of a partition no longer held, and the end of its `losing_`.
  void Lost(int partition, const char* why) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether this replica acts for `partition`; its lease's end if so.
  bool Held(int partition) const ABSL_LOCKS_EXCLUDED(mu_);
  bool Losing(int partition) const ABSL_LOCKS_EXCLUDED(mu_);

  const bus::Connection* connection_;
  const OwnerOptions options_;
  OnGained on_gained_;
  OnLost on_lost_;
  int members_ = 0;  // live replicas at the last round (the rounds' thread only), for the log

  mutable common::Mutex mu_;
  common::CondVar cv_;
  std::vector<absl::Time> held_until_ ABSL_GUARDED_BY(mu_);  // InfinitePast(): not held
  std::vector<bool> losing_ ABSL_GUARDED_BY(mu_);  // run out, on_lost still running: not to be taken
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Held while on_gained or on_lost of its partition runs: a partition taken again waits
  // until its loss is done; different partitions do not wait for each other.
  std::unique_ptr<common::Mutex[]> callbacks_mu_;

  common::Counter* gained_ = nullptr;
  common::Counter* lost_ = nullptr;
  common::Gauge* held_gauge_ = nullptr;
  std::thread thread_;
  std::thread keeper_;
};

}  // namespace devbridge::ingest::cluster

#endif  // DEVBRIDGE_SERVICES_INGEST_CLUSTER_PARTITION_OWNER_H_
