#include "services/ingest/cluster/partition_owner.h"

#include <utility>

#include "bus/leases.h"
#include "common/log.h"
#include "services/ingest/cluster/partitions.h"

namespace devbridge::ingest::cluster {

std::unique_ptr<PartitionOwner> PartitionOwner::Start(const bus::Connection* connection, OwnerOptions options,
                                                      OnChange on_gained, OnChange on_lost,
                                                      common::MetricsRegistry* metrics) {
  std::unique_ptr<PartitionOwner> owner(
      new PartitionOwner(connection, std::move(options), std::move(on_gained), std::move(on_lost)));
  {
    common::MutexLock lock(&owner->mu_);
    owner->owns_.assign(owner->options_.partitions, false);
  }
  PartitionOwner* self = owner.get();
  owner->gained_ = &metrics->AddCounter("devbridge_ingest_partitions_gained_total",
                                        "Partitions this replica took (at start, from a dead replica, to balance).");
  owner->lost_ = &metrics->AddCounter("devbridge_ingest_partitions_lost_total",
                                      "Partitions this replica stopped acting for (given back, or not renewed).");
  owner->held_gauge_ = &metrics->AddGauge("devbridge_ingest_partitions_held", "Partitions this replica acts for now.");
  owner->thread_ = std::thread([self] { self->Run(); });
  return owner;
}

PartitionOwner::~PartitionOwner() {
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  thread_.join();
}

bool PartitionOwner::Owns(int partition) const {
  common::MutexLock lock(&mu_);
  return partition >= 0 && partition < static_cast<int>(owns_.size()) && owns_[partition];
}

int PartitionOwner::held() const {
  common::MutexLock lock(&mu_);
  int n = 0;
  for (bool b : owns_) n += b ? 1 : 0;
  return n;
}

void PartitionOwner::Gain(int partition, absl::Time until) {
  held_until_[partition] = until;
  {
    common::MutexLock lock(&mu_);
    owns_[partition] = true;
  }
  gained_->Inc();
  held_gauge_->Set(held());
  on_gained_(partition);
}

void PartitionOwner::Lose(int partition, const char* why) {
  held_until_[partition] = absl::InfinitePast();
  {
    common::MutexLock lock(&mu_);
    owns_[partition] = false;
  }
  lost_->Inc();
  held_gauge_->Set(held());
  common::Logger("ingest.cluster")->info("partition {}: no longer held ({})", partition, why);
  on_lost_(partition);
}

bool PartitionOwner::Round(bus::Leases* leases) {
  const std::string& self = options_.node_id;
  absl::Time sent = absl::Now();
  if (!leases->Hold(NodeLease(self), self).ok()) return false;
  absl::StatusOr<std::vector<std::string>> members = leases->Names(kNodeLeasePrefix);
  if (!members.ok()) return false;
  members_ = std::max<int>(1, static_cast<int>(members->size()));

  std::vector<std::string> holders(options_.partitions);
  for (int p = 0; p < options_.partitions; ++p) {
    if (held_until_[p] != absl::InfinitePast()) {
      sent = absl::Now();
      absl::StatusOr<bool> renewed = leases->Hold(PartitionLease(p), self);
      if (renewed.ok() && *renewed) {
        held_until_[p] = leases->HeldUntil(sent);
      } else if (renewed.ok()) {
        Lose(p, "another replica holds its lease");
      }
      holders[p] = held_until_[p] != absl::InfinitePast() ? self : "?";
      continue;
    }
    absl::StatusOr<std::string> holder = leases->Holder(PartitionLease(p));
    holders[p] = holder.ok() ? *holder : "?";  // unknown: not taken this round
  }
  const LeasePlan plan = PlanLeases(holders, self, static_cast<int>(members->size()));
  for (int p : plan.release) {
    Lose(p, "given back so that every replica holds its share");
    (void)leases->Release(PartitionLease(p), self);
  }
  for (int p : plan.take) {
    sent = absl::Now();
    absl::StatusOr<bool> taken = leases->Hold(PartitionLease(p), self);
    if (taken.ok() && *taken) {
      common::Logger("ingest.cluster")->info("partition {}: taken ({} replica(s) live)", p, members->size());
      Gain(p, leases->HeldUntil(sent));
    }
  }
  return true;
}

void PartitionOwner::Run() {
  auto log = common::Logger("ingest.cluster");
  std::unique_ptr<bus::Leases> leases;
  int failures = 0;
  while (true) {
    if (!leases) {
      absl::StatusOr<std::unique_ptr<bus::Leases>> opened =
          bus::Leases::Open(connection_, kLeaseBucket, options_.ttl, options_.replicas);
      if (opened.ok()) {
        leases = *std::move(opened);
      } else if (failures++ % 10 == 0) {
        log->warn("cannot open the lease bucket {}: {}; retrying", kLeaseBucket, opened.status().message());
      }
    }
    if (leases && !Round(leases.get()) && failures++ % 10 == 0) {
      log->warn("the bus did not answer a lease round; partitions not renewed in time are let go");
    }
    // Whatever was not renewed by its deadline is no longer ours, whether the bus answered or not.
    const absl::Time now = absl::Now();
    for (int p = 0; p < options_.partitions; ++p) {
      if (held_until_[p] != absl::InfinitePast() && held_until_[p] <= now) Lose(p, "lease not renewed in time");
    }
    bool stop = false;
    {
      common::MutexLock lock(&mu_);
      stop = cv_.WaitFor(&mu_, options_.ttl / 3, [this] {
        mu_.AssertHeld();
        return stopping_;
      });
    }
    if (stop) break;
  }
  for (int p = 0; p < options_.partitions; ++p) {
    if (held_until_[p] == absl::InfinitePast()) continue;
    Lose(p, "stopping");
    if (leases) (void)leases->Release(PartitionLease(p), options_.node_id);
  }
  if (leases) (void)leases->Release(NodeLease(options_.node_id), options_.node_id);
}

}  // namespace devbridge::ingest::cluster
