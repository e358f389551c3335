// Per-device command queues (CONTRACT §4): a FIFO of at most `depth` waiting commands and
// one in flight, since Modbus RTU is half duplex. Polls (§10.4) wait in a lane of their own
// behind the users' commands: a device's next read is a user's whenever one waits. Pure
// bookkeeping: it decides what waits, what goes next and what has timed out; IngestCore does
// the talking. Io thread only.
#ifndef DEVBRIDGE_SERVICES_INGEST_CORE_COMMAND_TRACKER_H_
#define DEVBRIDGE_SERVICES_INGEST_CORE_COMMAND_TRACKER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "devbridge/v1/events.pb.h"
#include "modbus/frame.h"
#include "services/ingest/core/poll_scheduler.h"

namespace devbridge::ingest {

// Called once with the outcome of a command.
using CommandDone = std::function<void(const v1::CommandResult&)>;

struct PendingCommand {
  std::string command_id;
  v1::Command command;       // as asked, with defaults filled in
  modbus::Request request;
  std::vector<uint8_t> frame;
  absl::Time submitted;
  absl::Time sent;           // InfinitePast until published
  absl::Time deadline;       // submitted + timeout
  CommandDone done;
  bool poll = false;         // a read of the device's polling plan, not a user's command
  PollRequest poll_request;  // when `poll`
};

class CommandTracker {
 public:
  explicit CommandTracker(size_t depth) : depth_(depth) {}

  // True when `depth` users' commands already wait for the device (code 2003).
  bool Full(const std::string& device_id) const { return waiting(device_id) >= depth_; }
  // Queues `cmd` for its device: a user's command unless Full() (false, and `cmd` dropped),
  // a poll always (the scheduler keeps one per block at most).
  bool Enqueue(PendingCommand cmd);
  // If the device has nothing in flight and something waiting, moves the oldest waiting
  // user's command, else the oldest poll, in flight (stamped sent = now) and returns it.
  PendingCommand* StartNext(const std::string& device_id, absl::Time now);
  // The command in flight for the device, or nullptr.
  PendingCommand* InFlight(const std::string& device_id);
  // Removes and returns the command in flight.
  std::optional<PendingCommand> TakeInFlight(const std::string& device_id);
  // Removes and returns every command, in flight or waiting, whose deadline has passed.
  std::vector<PendingCommand> TakeExpired(absl::Time now);
  // Removes and returns every command of the device (in flight first, then in order).
  std::vector<PendingCommand> TakeAll(const std::string& device_id);
  // Every device that has commands or polls waiting but none in flight.
  std::vector<std::string> IdleDevicesWithWork() const;
  std::vector<std::string> Devices() const;

  // Users' commands waiting for the device (polls not counted).
  size_t waiting(const std::string& device_id) const;
  size_t total() const { return total_; }

 private:
  struct Queue {
    std::optional<PendingCommand> in_flight;
    std::deque<PendingCommand> waiting;
    std::deque<PendingCommand> polls;
    bool Idle() const { return !in_flight && waiting.empty() && polls.empty(); }
  };
  void Forget(const std::string& device_id);

  size_t depth_;
  size_t total_ = 0;
  absl::flat_hash_map<std::string, Queue> queues_;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_CORE_COMMAND_TRACKER_H_
