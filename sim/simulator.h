// devbridge-sim's engine (CONTRACT §9): N simulated devices spread over a few MQTT
// connections, heartbeats, replies to commands after a delay, optional unsolicited reads,
// and injected faults (CRC errors, dropped replies). One io thread owns every device.
#ifndef DEVBRIDGE_SIM_SIMULATOR_H_
#define DEVBRIDGE_SIM_SIMULATOR_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mqtt/client.h"
#include "regmap/register_map.h"

namespace devbridge::sim {

struct SimOptions {
  std::string mqtt_url = "tcp://127.0.0.1:1883";
  mqtt::Transport mqtt_transport;  // TLS files, mqtt_insecure, mqtt_version
  std::string topic_prefix = "devices";
  int devices = 10;
  int first_index = 1;              // ids are id_prefix + 4-digit index from here
  std::string id_prefix = "sim-";
  std::string profile;              // empty: each device's own profile from the map's globs
  std::shared_ptr<const regmap::RegisterMap> register_map;
  absl::Duration heartbeat_interval = absl::Seconds(10);
  absl::Duration data_interval = absl::ZeroDuration();  // 0: no unsolicited reads
  absl::Duration reply_delay = absl::ZeroDuration();
  double crc_error_rate = 0;
  double drop_rate = 0;
  int devices_per_connection = 250;
  int qos = 1;
  std::string client_id_prefix = "devbridge-sim";
  // Fault tests: each unsolicited read carries the device's frame number (1, 2, ...) in its
  // first two registers (high word first), and every one the broker acknowledged is listed
  // in `ack_log` at Stop(): a line "DEVICE COUNT RANGES" per device, e.g. "f-0001 5 1-3,5-6".
  bool sequence = false;
  std::string ack_log;
};

struct SimStats {
  std::atomic<uint64_t> heartbeats{0};
  std::atomic<uint64_t> data_frames{0};
  std::atomic<uint64_t> commands{0};
  std::atomic<uint64_t> replies{0};
  std::atomic<uint64_t> dropped{0};
  std::atomic<uint64_t> corrupted{0};
  std::atomic<uint64_t> data_acked{0};    // data frames the broker acknowledged (--sequence)
  std::atomic<uint64_t> data_unacked{0};  // data frames Paho gave up on (--sequence)
};

class Simulator {
 public:
  static absl::StatusOr<std::unique_ptr<Simulator>> Start(SimOptions options);
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  void Stop();
  const SimStats& stats() const;
  // True once every connection is up.
  bool connected() const;
  // The id of device `i` (0-based), e.g. "sim-0001".
  std::string DeviceId(int i) const;
  // Stops (or resumes) heartbeats, data and replies of device `i`, as if it lost power.
  void SetSilent(int i, bool silent);

 private:
  struct Impl;
  explicit Simulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace devbridge::sim

#endif  // DEVBRIDGE_SIM_SIMULATOR_H_
