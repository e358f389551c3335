#include "services/ingest/core/poll_scheduler.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "common/status.h"

namespace devbridge::ingest {
namespace {

constexpr uint32_t kMaxReadRegisters = 125;

bool GoodReply(int code) {
  return code == common::kCodeSuccess || code == common::kCodeNoRegister || code == common::kCodeModbusException;
}

// Every block of a plan of `n` (at most 64) blocks.
uint64_t AllBlocks(size_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }

bool NoGoodReply(int code) { return code == common::kCodeFrameError || code == common::kCodeTimeout; }

// A hash of the id that stays the same from one run to the next (absl::Hash is seeded per
// process), so a device keeps its slot across restarts: FNV-1a.
uint64_t StableHash(absl::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

}  // namespace

std::vector<PollRequest> PollScheduler::Merge(const std::vector<regmap::PollBlock>& plan, uint64_t blocks) {
  std::vector<size_t> order;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (blocks & (uint64_t{1} << i)) order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (plan[a].function != plan[b].function) return plan[a].function < plan[b].function;
    if (plan[a].address != plan[b].address) return plan[a].address < plan[b].address;
    return a < b;
  });
  std::vector<PollRequest> out;
  uint32_t end = 0;
  for (size_t i : order) {
    const regmap::PollBlock& b = plan[i];
    if (!out.empty()) {
      PollRequest& last = out.back();
      const uint32_t merged_end = std::max(end, b.End());
      if (last.function == b.function && b.address <= end && merged_end - last.address <= kMaxReadRegisters) {
        end = merged_end;
        last.count = static_cast<uint16_t>(end - last.address);
        last.blocks |= uint64_t{1} << i;
        continue;
      }
    }
    PollRequest r;
    r.function = b.function;
    r.address = b.address;
    r.count = b.count;
    r.blocks = uint64_t{1} << i;
    end = b.End();
    out.push_back(std::move(r));
  }
  return out;
}

absl::Time PollScheduler::NextSlot(const Device& d, absl::Duration every, absl::Time after) const {
  const int64_t e = absl::ToInt64Nanoseconds(every);
  const int64_t phase = d.phase_ns % e;
  const int64_t t = absl::ToUnixNanos(after);
  // The first instant phase + k·e strictly after t.
  int64_t k = (t - phase) / e;
  if (phase + k * e <= t) ++k;
  return absl::FromUnixNanos(phase + k * e);
}

absl::Duration PollScheduler::ShortestEvery(const Device& d) const {
  absl::Duration shortest = absl::InfiniteDuration();
  for (const auto& b : d.status.plan) shortest = std::min(shortest, b.every);
  return shortest;
}

void PollScheduler::Schedule(Device* d, absl::Time at) {
  d->scheduled = at;
  heap_.push(Entry{at, d->generation, d->id});
}

void PollScheduler::ScheduleRegular(Device* d, absl::Time now) {
  absl::Time first = absl::InfiniteFuture();
  for (size_t i = 0; i < d->status.plan.size(); ++i) {
    d->next[i] = NextSlot(*d, d->status.plan[i].every, now);
    first = std::min(first, d->next[i]);
  }
  Schedule(d, first);
}

void PollScheduler::Start(absl::string_view device_id, uint8_t unit, const std::vector<regmap::PollBlock>& plan,
                          absl::Time now) {
  if (plan.empty()) return Stop(device_id);
  auto it = devices_.find(device_id);
  if (it != devices_.end() && it->second.unit == unit && it->second.status.plan == plan) return;
  if (it != devices_.end()) Stop(device_id);
  Device& d = devices_[device_id];
  d.id = std::string(device_id);
  d.unit = unit;
  d.status.plan = plan;
  d.next.assign(plan.size(), absl::InfiniteFuture());
  d.generation = ++generations_;
  d.phase_ns = static_cast<int64_t>(StableHash(device_id) >> 1);
  ScheduleRegular(&d, now);
}

void PollScheduler::Stop(absl::string_view device_id) {
  auto it = devices_.find(device_id);
  if (it == devices_.end()) return;
  if (it->second.status.unresponsive) --unresponsive_;
  devices_.erase(it);  // its heap entries are dropped when they come up
}

void PollScheduler::TakeDue(absl::Time now, std::vector<PollRequest>* out) {
  while (!heap_.empty() && heap_.top().at <= now) {
    const Entry e = heap_.top();
    heap_.pop();
    auto it = devices_.find(e.device_id);
    if (it == devices_.end() || it->second.generation != e.generation || it->second.scheduled != e.at) continue;
    Device& d = it->second;
    uint64_t due = 0;
    if (d.status.unresponsive) {
      // One probe: the first read of the whole plan. The next is scheduled by its outcome.
      const std::vector<PollRequest> all = Merge(d.status.plan, AllBlocks(d.status.plan.size()));
      due = all.front().blocks;
      d.scheduled = absl::InfiniteFuture();
    } else {
      for (size_t i = 0; i < d.status.plan.size(); ++i) {
        if (d.next[i] > e.at) continue;
        due |= uint64_t{1} << i;
        d.next[i] = NextSlot(d, d.status.plan[i].every, now);  // missed slots are not made up
      }
    }
    const uint64_t busy = due & d.outstanding;
    skipped_ += static_cast<uint64_t>(__builtin_popcountll(busy));
    due &= ~busy;
    for (PollRequest& r : Merge(d.status.plan, due)) {
      r.device_id = d.id;
      r.unit = d.unit;
      r.generation = d.generation;
      r.due = e.at;
      r.probe = d.status.unresponsive;
      d.outstanding |= r.blocks;
      out->push_back(std::move(r));
    }
    if (d.status.unresponsive) {
      // The probe's block was still waiting: try again after the back-off.
      if (due == 0) Schedule(&d, now + d.status.backoff);
    } else {
      Schedule(&d, *std::min_element(d.next.begin(), d.next.end()));
    }
  }
}

PollTransition PollScheduler::Done(const PollRequest& request, int code, absl::Time now) {
  auto it = devices_.find(request.device_id);
  if (it == devices_.end() || it->second.generation != request.generation) return PollTransition::kNone;
  Device& d = it->second;
  d.outstanding &= ~request.blocks;
  d.status.last_poll = now;
  d.status.last_code = code;
  if (GoodReply(code)) {
    d.status.failures = 0;
    if (!d.status.unresponsive) return PollTransition::kNone;
    d.status.unresponsive = false;
    d.status.backoff = absl::ZeroDuration();
    --unresponsive_;
    ScheduleRegular(&d, now);
    return PollTransition::kResponsive;
  }
  if (!NoGoodReply(code)) return PollTransition::kNone;
  ++d.status.failures;
  if (d.status.unresponsive) {
    // Reads queued before the device turned unresponsive end here too; only a probe's
    // failure moves the next probe.
    if (!request.probe) return PollTransition::kNone;
    d.status.backoff = std::min(d.status.backoff * 2, options_.backoff_max);
    Schedule(&d, now + d.status.backoff);
    return PollTransition::kNone;
  }
  if (d.status.failures < options_.failures) return PollTransition::kNone;
  d.status.unresponsive = true;
  ++unresponsive_;
  d.status.backoff = std::min(ShortestEvery(d) * 2, options_.backoff_max);
  Schedule(&d, now + d.status.backoff);
  return PollTransition::kUnresponsive;
}

const PollStatus* PollScheduler::Find(absl::string_view device_id) const {
  auto it = devices_.find(device_id);
  return it == devices_.end() ? nullptr : &it->second.status;
}

}  // namespace devbridge::ingest
