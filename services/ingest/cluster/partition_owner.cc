#include "services/ingest/cluster/partition_owner.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

#include "absl/strings/str_join.h"
#include "bus/leases.h"
#include "common/log.h"
#include "services/ingest/cluster/partitions.h"

namespace devbridge::ingest::cluster {

std::unique_ptr<PartitionOwner> PartitionOwner::Start(const bus::Connection* connection, OwnerOptions options,
                                                      OnGained on_gained, OnLost on_lost,
                                                      common::MetricsRegistry* metrics) {
  std::unique_ptr<PartitionOwner> owner(
      new PartitionOwner(connection, std::move(options), std::move(on_gained), std::move(on_lost)));
  PartitionOwner* self = owner.get();
  owner->gained_ = &metrics->AddCounter("devbridge_ingest_partitions_gained_total",
                                        "Partitions this replica took (at start, from a dead replica, to balance).");
  owner->lost_ = &metrics->AddCounter("devbridge_ingest_partitions_lost_total",
                                      "Partitions this replica stopped acting for (given back, or not renewed).");
  owner->held_gauge_ = &metrics->AddGauge("devbridge_ingest_partitions_held", "Partitions this replica acts for now.");
  owner->thread_ = std::thread([self] { self->Run(); });
  owner->keeper_ = std::thread([self] { self->Keep(); });
  return owner;
}

PartitionOwner::~PartitionOwner() {
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  keeper_.join();  // first: the rounds' thread gives everything back as it ends
  thread_.join();
}

bool PartitionOwner::Owns(int partition) const { return Held(partition); }

bool PartitionOwner::Held(int partition) const {
  common::MutexLock lock(&mu_);
  return partition >= 0 && partition < static_cast<int>(held_until_.size()) &&
         held_until_[partition] != absl::InfinitePast();
}

int PartitionOwner::held() const {
  common::MutexLock lock(&mu_);
  int n = 0;
  for (absl::Time t : held_until_) n += t != absl::InfinitePast() ? 1 : 0;
  return n;
}

bool PartitionOwner::Losing(int partition) const {
  common::MutexLock lock(&mu_);
  return losing_[partition];
}

void PartitionOwner::Gain(int partition, absl::Time until, uint64_t fence) {
  common::MutexLock callbacks(&callbacks_mu_[partition]);
  {
    common::MutexLock lock(&mu_);
    held_until_[partition] = until;
  }
  cv_.NotifyAll();  // the keeper's next deadline may be this one
  gained_->Inc();
  held_gauge_->Set(held());
  on_gained_(partition, fence);
}

bool PartitionOwner::Lose(int partition, const char* why) {
  {
    common::MutexLock lock(&mu_);
    if (held_until_[partition] == absl::InfinitePast()) return false;
    held_until_[partition] = absl::InfinitePast();
    losing_[partition] = true;
  }
  Lost(partition, why);
  return true;
}

void PartitionOwner::Lost(int partition, const char* why) {
  {
    common::MutexLock callbacks(&callbacks_mu_[partition]);
    lost_->Inc();
    held_gauge_->Set(held());
    common::Logger("ingest.cluster")->info("partition {}: no longer held ({})", partition, why);
    on_lost_(partition);
  }
  common::MutexLock lock(&mu_);
  losing_[partition] = false;
}

void PartitionOwner::Keep() {
  // Often enough to act well within the lease's margin (Leases::HeldUntil keeps ttl / 5).
  const absl::Duration tick = std::min(absl::Milliseconds(50), options_.ttl / 20);
  struct Loss {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Loss> losses;
  for (;;) {
    std::vector<int> expired;
    {
      common::MutexLock lock(&mu_);
      if (stopping_) break;
      const absl::Time now = absl::Now();
      absl::Time next = absl::InfiniteFuture();
      for (int p = 0; p < options_.partitions; ++p) {
        if (held_until_[p] == absl::InfinitePast()) continue;
        if (held_until_[p] <= now) {
          // No longer ours from this moment, whether the bus answered or not.
          held_until_[p] = absl::InfinitePast();
          losing_[p] = true;
          expired.push_back(p);
        } else {
          next = std::min(next, held_until_[p]);
        }
      }
      if (expired.empty()) {
        cv_.WaitFor(&mu_, std::min(tick, std::max(absl::ZeroDuration(), next - now)), [this] {
          mu_.AssertHeld();
          return stopping_;
        });
      }
    }
    // Each loss on a thread of its own (it waits for the partition's writer): the next
    // deadline is kept meanwhile.
    for (int p : expired) {
      auto done = std::make_shared<std::atomic<bool>>(false);
      losses.push_back(Loss{std::thread([this, p, done] {
                              Lost(p, "lease not renewed in time");
                              *done = true;
                            }),
                            done});
    }
    for (auto it = losses.begin(); it != losses.end();) {
      if (!*it->done) {
        ++it;
        continue;
      }
      it->thread.join();
      it = losses.erase(it);
    }
  }
  for (Loss& loss : losses) loss.thread.join();
}

bool PartitionOwner::Round(bus::Leases* leases) {
  const std::string& self = options_.node_id;
  absl::Time sent = absl::Now();
  if (!leases->Hold(NodeLease(self), self).ok()) return false;
  absl::StatusOr<std::vector<std::string>> members = leases->Names(kNodeLeasePrefix);
  if (!members.ok()) return false;
  if (static_cast<int>(members->size()) != members_) {
    members_ = static_cast<int>(members->size());
    common::Logger("ingest.cluster")->info("{} replica(s) live: {}", members_, absl::StrJoin(*members, ", "));
  }

  std::vector<std::string> holders(options_.partitions);
  for (int p = 0; p < options_.partitions; ++p) {
    if (Held(p)) {
      sent = absl::Now();
      bus::Leases::Held how;
      absl::StatusOr<bool> renewed = leases->Hold(PartitionLease(p), self, &how);
      if (renewed.ok() && *renewed) {
        bool late = false;
        {
          common::MutexLock lock(&mu_);
          if (held_until_[p] == absl::InfinitePast() || !how.renewed) {
            // The keeper let it go while the bus took its time, or the lease ran out before
            // this write (which took it afresh, under a fence this holding does not have):
            // not ours to use.
            late = true;
          } else {
            held_until_[p] = leases->HeldUntil(sent);
          }
        }
        if (late) {
          Lose(p, "its lease ran out before the renewal");
          (void)leases->Release(PartitionLease(p), self);
        }
      } else if (renewed.ok()) {
        Lose(p, "another replica holds its lease");
      }
      holders[p] = Held(p) ? self : "?";
      continue;
    }
    if (Losing(p)) {
      holders[p] = "?";  // let go, and its writer not done yet: not taken again before it is
      continue;
    }
    absl::StatusOr<std::string> holder = leases->Holder(PartitionLease(p));
    holders[p] = holder.ok() ? *holder : "?";  // unknown: not taken this round
  }
  const LeasePlan plan = PlanLeases(holders, self, static_cast<int>(members->size()));
  for (int p : plan.release) {
    if (Lose(p, "given back so that every replica holds its share")) (void)leases->Release(PartitionLease(p), self);
  }
  for (int p : plan.take) {
    sent = absl::Now();
    bus::Leases::Held how;
    absl::StatusOr<bool> taken = leases->Hold(PartitionLease(p), self, &how);
    if (!taken.ok() || !*taken) continue;
    if (absl::Now() >= leases->HeldUntil(sent)) {
      (void)leases->Release(PartitionLease(p), self);  // the answer came too late to act on
      continue;
    }
    common::Logger("ingest.cluster")->info("partition {}: taken ({} replica(s) live)", p, members->size());
    Gain(p, leases->HeldUntil(sent), how.revision);
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
    if (!Lose(p, "stopping")) continue;
    if (leases) (void)leases->Release(PartitionLease(p), options_.node_id);
  }
  if (leases) (void)leases->Release(NodeLease(options_.node_id), options_.node_id);
}

}  // namespace devbridge::ingest::cluster
