// The device-side logic of ingest, free of any network: topics in, liveness, Modbus
// decoding through the register map, command queues and their outcomes, and what to
// publish, store and emit as a result. Runs on the io thread; every input carries `now`
// so tests drive time.
#ifndef DEVBRIDGE_SERVICES_INGEST_CORE_INGEST_CORE_H_
#define DEVBRIDGE_SERVICES_INGEST_CORE_INGEST_CORE_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "devbridge/v1/events.pb.h"
#include "regmap/register_map.h"
#include "services/ingest/core/command_tracker.h"
#include "services/ingest/core/device_table.h"
#include "services/ingest/core/event_log.h"
#include "services/ingest/core/poll_scheduler.h"
#include "services/ingest/core/records.h"

namespace devbridge::ingest {

struct CoreOptions {
  std::string topic_prefix = "devices";
  std::string fleet_system = "fleet";
  absl::Duration heartbeat_timeout = absl::Seconds(90);
  absl::Duration command_timeout = absl::Seconds(5);
  size_t command_queue_depth = 16;
  size_t max_heartbeat_bytes = 4096;
  size_t max_data_bytes = 4096;
  // A device offline for longer is dropped from memory (its rows stay; CONTRACT §10.1).
  absl::Duration forget_after = absl::Hours(24);
  // Polling plans (CONTRACT §10.4): unresponsive after this many polls in a row without a
  // good reply, then probes back off, doubling up to poll_backoff_max.
  uint32_t poll_failures = 3;
  absl::Duration poll_backoff_max = absl::Seconds(60);
};

// Where the core's decisions go. Implementations must not block.
class CoreOutputs {
 public:
  virtual ~CoreOutputs() = default;
  // Publish `hex` on P/ID/command; `poll`: a read of the device's polling plan.
  virtual void PublishCommand(const std::string& device_id, const std::string& hex, bool poll) = 0;
  virtual void Store(StoreRecord record) = 0;
  // Append to the event stream as a message of `streams`.
  virtual void Emit(v1::Event event, const std::vector<StreamRef>& streams) = 0;
};

class IngestCore {
 public:
  IngestCore(CoreOptions options, std::shared_ptr<const regmap::RegisterMap> map,
             CoreOutputs* outputs, common::MetricsRegistry* metrics);

  // A message from the broker on any subscribed topic.
  void OnMessage(absl::string_view topic, absl::string_view payload, absl::Time now);
  void OnHeartbeat(const std::string& device_id, absl::string_view payload, absl::Time now);
  void OnData(const std::string& device_id, absl::string_view payload, absl::Time now);

  // Runs a command; `done` gets its result exactly once (maybe before Submit returns).
  void Submit(v1::Command command, absl::Time now, CommandDone done);

  // Fails commands whose deadline has passed (2002) and starts what waits behind them.
  // Cheap when nothing is due; the app calls it every few milliseconds.
  void ExpireCommands(absl::Time now);
  // ExpireCommands, then the offline sweep unless `sweep_liveness` is false (e.g. while
  // intake is paused and silence means nothing).
  void Tick(absl::Time now, bool sweep_liveness = true);

  // Queues the polls that are due (behind users' commands) and starts them where the device
  // is idle. Cheap when none is due; the app calls it every few milliseconds.
  void RunPolls(absl::Time now);

  // Puts a new register map in force (SIGHUP): decoding uses it at once and every online
  // device's polling plan is taken from it (a device whose plan did not change keeps its
  // schedule and failure count).
  void SetRegisterMap(std::shared_ptr<const regmap::RegisterMap> map, absl::Time now);

  // Fails every command with code 503 and `reason`, for shutdown.
  void FailAll(absl::Time now, const std::string& reason);

  // Lets go of the devices `moved` selects (their partition went to another replica, see
  // services/ingest/cluster/): their commands fail with 503 and `reason`, their polling
  // stops, and they are dropped from memory without an event (the new owner carries on).
  void Release(const std::function<bool(absl::string_view device_id)>& moved, absl::Time now,
               const std::string& reason);

  // True when `command_id` named a command submitted here before (the most recent
  // kRememberedCommandIds of them are remembered).
  bool CommandIdUsed(const std::string& command_id) const { return used_ids_.contains(command_id); }
  static constexpr size_t kRememberedCommandIds = 100000;

  const DeviceTable& devices() const { return devices_; }
  const CommandTracker& commands() const { return commands_; }
  const PollScheduler& polls() const { return polls_; }

 private:
  void Seen(const std::string& device_id, absl::Time now);
  void EmitDeviceState(const DeviceInfo& device);
  void StoreDevice(const DeviceInfo& device, bool with_meta);
  void Finish(PendingCommand cmd, v1::CommandResult result, absl::Time now);
  void FinishPoll(PendingCommand cmd, v1::CommandResult result, absl::Time now);
  void StartPolling(const std::string& device_id, absl::Time now);
  void StartNext(const std::string& device_id, absl::Time now);
  void CompleteWithFrame(PendingCommand cmd, absl::string_view payload, absl::Time now);
  void Unsolicited(const std::string& device_id, absl::string_view payload, absl::Time now);
  void CountBadFrame(const absl::Status& status);
  std::vector<StreamRef> DeviceStreams(const std::string& device_id) const;
  void RememberCommandId(const std::string& command_id);

  CoreOptions options_;
  std::shared_ptr<const regmap::RegisterMap> map_;
  CoreOutputs* out_;
  DeviceTable devices_;
  CommandTracker commands_;
  PollScheduler polls_;
  std::vector<PollRequest> due_polls_;  // scratch for RunPolls
  std::vector<regmap::DecodedValue> scratch_;
  std::string topic_prefix_slash_;
  absl::flat_hash_set<std::string> used_ids_;  // bounded by used_order_
  std::deque<std::string> used_order_;         // oldest first

  struct Metrics {
    common::Counter* heartbeats;
    common::Counter* data;
    common::Counter* invalid_id;
    common::Counter* oversize;
    common::Counter* unknown_topic;
    common::Counter* bad_crc;
    common::Counter* bad_hex;
    common::Counter* bad_malformed;
    common::Counter* bad_mismatch;
    common::Counter* unsolicited;
    common::Counter* meta_refused;
    common::Histogram* command_latency;
    common::Counter* polls_replied;
    common::Counter* polls_no_reply;
    common::Counter* polls_bad_reply;
    common::Counter* polls_skipped;
    common::Counter* polls_sent;
    common::Histogram* poll_start_delay;
    common::Gauge* polled_devices;
    common::Gauge* unresponsive;
    std::map<int, common::Counter*> results;
    common::Counter* results_other;
  } m_;
};

// Frame bad kind for metrics from a codec error: crc, hex, mismatch or malformed.
std::string BadFrameKind(const absl::Status& status);

// The decoded values as the JSON object stored in readings."values" and sent to web pages:
// {"temperature":{"value":23.5,"unit":"°C","raw":[235]}, ...}.
std::string ValuesJson(const std::vector<regmap::DecodedValue>& values);

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_CORE_INGEST_CORE_H_
