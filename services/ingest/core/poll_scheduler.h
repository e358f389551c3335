// When to poll which device (CONTRACT §10.4): each online device's plan from the register
// map, spread over the interval, due blocks merged into as few reads as the 125-register
// limit allows, a block skipped while its previous read still waits, and a device that stops
// answering backed off on its own. Pure bookkeeping with `now` passed in: IngestCore queues
// the reads and reports their outcome. Io thread only.
//
// Spreading: a block of interval E is due at the instants t with t ≡ h (mod E), h a hash of
// the device id, so 10,000 devices on a 5 s plan fall evenly over the 5 s, and a device's
// blocks whose intervals divide each other fall due together and can share one read.
#ifndef DEVBRIDGE_SERVICES_INGEST_CORE_POLL_SCHEDULER_H_
#define DEVBRIDGE_SERVICES_INGEST_CORE_POLL_SCHEDULER_H_

#include <cstdint>
#include <queue>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "regmap/register_map.h"

namespace devbridge::ingest {

// One read to send to a device now; it covers one or more blocks of the device's plan.
struct PollRequest {
  std::string device_id;
  uint8_t unit = 1;
  uint8_t function = 3;
  uint16_t address = 0;
  uint16_t count = 0;
  uint64_t blocks = 0;      // bit i: block i of the plan
  uint64_t generation = 0;  // of the plan it was made from (a reload starts a new one)
  absl::Time due;           // when it was scheduled to start
  bool probe = false;       // the one read that tests an unresponsive device
};

// What a device's polling looks like from outside (dashboard, ListDevices).
struct PollStatus {
  std::vector<regmap::PollBlock> plan;
  absl::Time last_poll = absl::InfinitePast();  // when the last read ended
  int last_code = 0;                            // its result code (200, 2001, 2002, ...)
  uint32_t failures = 0;                        // reads in a row with no good reply
  bool unresponsive = false;
  absl::Duration backoff;                       // while unresponsive: time between probes
};

enum class PollTransition { kNone, kUnresponsive, kResponsive };

class PollScheduler {
 public:
  struct Options {
    uint32_t failures = 3;                          // poll_failures
    absl::Duration backoff_max = absl::Seconds(60);  // poll_backoff_max
  };
  explicit PollScheduler(Options options) : options_(options) {}

  // Starts polling a device on `plan` (its first reads fall in the next slots after `now`).
  // With the same unit and plan as now it keeps the device's state; otherwise it starts
  // afresh and outcomes of reads made from the old plan are ignored. An empty plan stops.
  void Start(absl::string_view device_id, uint8_t unit, const std::vector<regmap::PollBlock>& plan,
             absl::Time now);
  void Stop(absl::string_view device_id);

  // Appends the reads due at or before `now`. Cheap when nothing is due.
  void TakeDue(absl::Time now, std::vector<PollRequest>* out);

  // The outcome of a read from TakeDue: `code` 200, 2005 or 2006 is a good reply (the device
  // answered), 2001 (garbled) and 2002 (none) are failures. Other codes (the device went
  // offline, shutdown) only release the blocks.
  PollTransition Done(const PollRequest& request, int code, absl::Time now);

  const PollStatus* Find(absl::string_view device_id) const;
  absl::Time next_due() const { return heap_.empty() ? absl::InfiniteFuture() : heap_.top().at; }
  size_t size() const { return devices_.size(); }
  size_t unresponsive() const { return unresponsive_; }
  // Block runs not started because the block's previous read was still waiting.
  uint64_t skipped() const { return skipped_; }

  // Every block of `plan` in `blocks` merged into reads: the same function, contiguous or
  // overlapping, at most 125 registers each; in address order.
  static std::vector<PollRequest> Merge(const std::vector<regmap::PollBlock>& plan, uint64_t blocks);

 private:
  struct Device {
    std::string id;
    uint8_t unit = 1;
    std::vector<absl::Time> next;  // per block: when it is due next
    uint64_t outstanding = 0;      // blocks whose read is queued or in flight
    uint64_t generation = 0;
    int64_t phase_ns = 0;          // h above
    absl::Time scheduled = absl::InfiniteFuture();  // the heap entry that counts
    PollStatus status;  // status.plan is the plan
  };
  struct Entry {
    absl::Time at;
    uint64_t generation;
    std::string device_id;
    bool operator>(const Entry& o) const { return at > o.at; }
  };

  absl::Time NextSlot(const Device& d, absl::Duration every, absl::Time after) const;
  void Schedule(Device* d, absl::Time at);
  void ScheduleRegular(Device* d, absl::Time now);
  absl::Duration ShortestEvery(const Device& d) const;

  Options options_;
  absl::flat_hash_map<std::string, Device> devices_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
  uint64_t generations_ = 0;
  uint64_t skipped_ = 0;
  size_t unresponsive_ = 0;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_CORE_POLL_SCHEDULER_H_
