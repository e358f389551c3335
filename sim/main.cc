// devbridge-sim: simulated Modbus-over-MQTT devices (CONTRACT §9).
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "mqtt/flags.h"
#include "sim/simulator.h"

ABSL_FLAG(std::string, mqtt_url, "tcp://127.0.0.1:1883",
          "MQTT broker URL: tcp://HOST:PORT, or ssl://HOST:PORT (mqtts://) for TLS (see mqtt_ca_file)");
ABSL_FLAG(std::string, topic_prefix, "devices", "topic prefix P of P/ID/heartbeat, P/ID/data, P/ID/command");
ABSL_FLAG(int, devices, 10, "number of simulated devices");
ABSL_FLAG(int, first_index, 1, "number of the first device (ids are id_prefix + 4 digits)");
ABSL_FLAG(std::string, id_prefix, "sim-", "device id prefix");
ABSL_FLAG(std::string, profile, "", "register-map profile for every device; empty: the map's device globs decide");
ABSL_FLAG(std::string, register_map, "config/registers.json", "register map file (JSON)");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(10), "time between heartbeats of one device");
ABSL_FLAG(std::string, mode, "push",
          "push: devices also send unsolicited reads every data_interval; slave: they only answer requests, as a "
          "meter behind a transparent DTU does (ingest polls them on the register map's plan)");
ABSL_FLAG(absl::Duration, data_interval, absl::ZeroDuration(),
          "push mode: time between unsolicited reads of one device; 0: off");
ABSL_FLAG(absl::Duration, reply_delay, absl::ZeroDuration(), "delay before a device answers a command");
ABSL_FLAG(double, crc_error_rate, 0, "fraction of replies sent with a broken CRC (0..1)");
ABSL_FLAG(double, drop_rate, 0, "fraction of commands left unanswered (0..1)");
ABSL_FLAG(int, devices_per_connection, 250, "devices sharing one MQTT connection");
ABSL_FLAG(int, qos, 1, "QoS of published messages");
ABSL_FLAG(bool, sequence, false,
          "number each device's unsolicited reads 1, 2, ... in their first two registers (fault tests)");
ABSL_FLAG(std::string, ack_log, "",
          "at exit, write per device the frame numbers the broker acknowledged (with --sequence)");
ABSL_FLAG(absl::Duration, stats_interval, absl::Seconds(30), "how often to log counters; 0: never");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off");

int main(int argc, char** argv) {
  using devbridge::common::FlagError;
  devbridge::common::BlockShutdownSignals();
  devbridge::common::ParseFlags(argc, argv, "devbridge-sim", "simulated Modbus devices speaking MQTT");
  if (auto s = devbridge::common::SetLogLevel(absl::GetFlag(FLAGS_log_level)); !s.ok()) {
    FlagError("log_level", s.message());
  }
  devbridge::sim::SimOptions o;
  o.mqtt_url = absl::GetFlag(FLAGS_mqtt_url);
  o.mqtt_transport = devbridge::mqtt::TransportFromFlags(o.mqtt_url);
  o.topic_prefix = absl::GetFlag(FLAGS_topic_prefix);
  o.devices = absl::GetFlag(FLAGS_devices);
  devbridge::common::RequireInRange("devices", o.devices, 1, 1000000);
  o.first_index = absl::GetFlag(FLAGS_first_index);
  o.id_prefix = absl::GetFlag(FLAGS_id_prefix);
  o.profile = absl::GetFlag(FLAGS_profile);
  o.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  devbridge::common::RequirePositive("heartbeat_interval", o.heartbeat_interval);
  o.data_interval = absl::GetFlag(FLAGS_data_interval);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "push" && mode != "slave") FlagError("mode", "must be push or slave");
  if (mode == "slave" && o.data_interval != absl::ZeroDuration()) {
    FlagError("data_interval", "a slave sends nothing unasked: leave it 0 with --mode=slave");
  }
  o.reply_delay = absl::GetFlag(FLAGS_reply_delay);
  o.crc_error_rate = absl::GetFlag(FLAGS_crc_error_rate);
  devbridge::common::RequireInRange("crc_error_rate", o.crc_error_rate, 0, 1);
  o.drop_rate = absl::GetFlag(FLAGS_drop_rate);
  devbridge::common::RequireInRange("drop_rate", o.drop_rate, 0, 1);
  o.devices_per_connection = absl::GetFlag(FLAGS_devices_per_connection);
  devbridge::common::RequireInRange("devices_per_connection", o.devices_per_connection, 1, 100000);
  o.qos = absl::GetFlag(FLAGS_qos);
  o.sequence = absl::GetFlag(FLAGS_sequence);
  o.ack_log = absl::GetFlag(FLAGS_ack_log);
  if (!o.ack_log.empty() && !o.sequence) devbridge::common::FlagError("ack_log", "needs --sequence");
  devbridge::common::RequireInRange("qos", o.qos, 0, 2);
  auto map = devbridge::regmap::RegisterMap::LoadFile(absl::GetFlag(FLAGS_register_map));
  if (!map.ok()) FlagError("register_map", map.status().message());
  o.register_map = std::make_shared<const devbridge::regmap::RegisterMap>(*std::move(map));
  if (!o.profile.empty() && o.register_map->FindProfile(o.profile) == nullptr) {
    FlagError("profile", "no such profile in the register map");
  }

  auto sim = devbridge::sim::Simulator::Start(o);
  if (!sim.ok()) {
    devbridge::common::Logger("sim")->error("cannot start: {}", sim.status().message());
    return 1;
  }
  const absl::Duration every = absl::GetFlag(FLAGS_stats_interval);
  auto log = devbridge::common::Logger("sim");
  int sig;
  while ((sig = every > absl::ZeroDuration() ? devbridge::common::WaitForShutdownFor(every)
                                              : devbridge::common::WaitForShutdown()) < 0) {
    const auto& st = (*sim)->stats();
    log->info("heartbeats {} data {} commands {} replies {} dropped {} corrupted {}", st.heartbeats.load(),
              st.data_frames.load(), st.commands.load(), st.replies.load(), st.dropped.load(),
              st.corrupted.load());
  }
  log->info("signal {}: stopping", sig);
  (*sim)->Stop();
  if (absl::GetFlag(FLAGS_sequence)) {
    const auto& st = (*sim)->stats();
    log->info("data frames sent {}, acknowledged by the broker {}, given up {}", st.data_frames.load(),
              st.data_acked.load(), st.data_unacked.load());
  }
  return 0;
}
