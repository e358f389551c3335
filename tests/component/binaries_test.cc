// The real devbridge-ingest and devbridge-sim binaries: configuration errors exit 2 with one
// line naming the option, and SIGTERM shuts ingest down cleanly with exit status 0.
#include <signal.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {
namespace {

const std::string kIngest = DEVBRIDGE_INGEST_BIN;
const std::string kSim = DEVBRIDGE_SIM_BIN;
const std::string kPush = DEVBRIDGE_PUSH_BIN;

// Runs a binary that should fail at once; returns {exit status, output}.
std::pair<int, std::string> RunFailing(std::vector<std::string> argv) {
  const std::string log = absl::StrCat(std::getenv("DEVBRIDGE_TEST_DIR"), "/fail-", getpid(), ".log");
  const int pid = Spawn(argv, log);
  const int status = WaitExit(pid, absl::Seconds(10));
  return {status, ReadFile(log)};
}

TEST(Binaries, BadValuesExitTwoWithOneLineNamingTheOption) {
  struct Case {
    std::vector<std::string> argv;
    std::string expected;
  } cases[] = {
      {{kIngest, "--command_timeout=5"}, "devbridge-ingest: --command_timeout: bad value \"5\""},
      {{kIngest, "--mqtt_qos=3"}, "devbridge-ingest: --mqtt_qos: must be between 0 and 2"},
      {{kIngest, "--register_map=/nonexistent.json"}, "devbridge-ingest: --register_map: /nonexistent.json: cannot open"},
      {{kIngest, "--pg_dsn="}, "devbridge-ingest: --pg_dsn: is required"},
      {{kIngest, "--bogus=1"}, "devbridge-ingest: --bogus: unknown option"},
      {{kPush, "--send_queue_bytes=10"}, "devbridge-push: --send_queue_bytes: must be between 1024 and 1073741824"},
      {{kPush, "--pong_timeout=0s"}, "devbridge-push: --pong_timeout: must be a positive duration"},
      {{kPush, "--flush_interval=2s"}, "devbridge-push: --flush_interval: must be at most 1s"},
      {{kPush, "--listen=nohost"}, "devbridge-push: --listen: bad address"},
      {{kPush, "--web_root=/nonexistent"}, "devbridge-push: --web_root: not a readable directory"},
      {{kIngest, "--poll_failures=0"}, "devbridge-ingest: --poll_failures: must be between 1 and 1000000"},
      {{kSim, "--drop_rate=1.5"}, "devbridge-sim: --drop_rate: must be between 0 and 1"},
      {{kSim, "--mode=master"}, "devbridge-sim: --mode: must be push or slave"},
      {{kSim, "--mode=slave", "--data_interval=1s"}, "devbridge-sim: --data_interval: a slave sends nothing unasked"},
      {{kSim, "--devices=0"}, "devbridge-sim: --devices: must be between 1 and 1000000"},
      {{kSim, "--profile=nope", "--register_map=" DEVBRIDGE_SOURCE_DIR "/config/registers.json"},
       "devbridge-sim: --profile: no such profile"},
  };
  for (const auto& c : cases) {
    auto [status, output] = RunFailing(c.argv);
    EXPECT_EQ(status, 2) << c.argv[1] << ": " << output;
    EXPECT_EQ(output.rfind(c.expected, 0), 0u) << c.argv[1] << ": " << output;
    EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << "one line: " << output;
  }
}

TEST(Binaries, EnvironmentFallbackIsRead) {
  setenv("DEVBRIDGE_MQTT_QOS", "9", 1);
  auto [status, output] = RunFailing({kIngest});
  unsetenv("DEVBRIDGE_MQTT_QOS");
  EXPECT_EQ(status, 2);
  EXPECT_NE(output.find("--mqtt_qos"), std::string::npos) << output;
}

TEST(Binaries, HelpListsEveryContractOption) {
  const std::string log = absl::StrCat(std::getenv("DEVBRIDGE_TEST_DIR"), "/help-", getpid(), ".log");
  ASSERT_EQ(WaitExit(Spawn({kIngest, "--help"}, log), absl::Seconds(10)), 0);
  const std::string help = ReadFile(log);
  for (const char* option :
       {"mqtt_url", "mqtt_client_id", "mqtt_username", "mqtt_password", "mqtt_qos", "topic_prefix", "shared_group",
        "pg_dsn", "grpc_listen", "http_listen", "heartbeat_timeout", "sweep_interval", "register_map",
        "command_timeout", "command_queue_depth", "fleet_system", "replay_buffer", "poll_failures",
        "poll_backoff_max"}) {
    EXPECT_NE(help.find(absl::StrCat("--", option, " (default: ")), std::string::npos) << option;
  }
  ASSERT_EQ(WaitExit(Spawn({kPush, "--help"}, log), absl::Seconds(10)), 0);
  const std::string push_help = ReadFile(log);
  for (const char* option : {"ingest_addr", "listen", "grpc_listen", "node_id", "auth_secret", "web_root",
                             "max_message_bytes", "send_queue_bytes", "ping_interval", "pong_timeout", "history_size",
                             "history_ttl"}) {
    EXPECT_NE(push_help.find(absl::StrCat("--", option, " (default: ")), std::string::npos) << option;
  }
  ASSERT_EQ(WaitExit(Spawn({kSim, "--help"}, log), absl::Seconds(10)), 0);
  const std::string sim_help = ReadFile(log);
  for (const char* option : {"mqtt_url", "topic_prefix", "devices", "id_prefix", "profile", "register_map",
                             "heartbeat_interval", "data_interval", "reply_delay", "crc_error_rate", "drop_rate",
                             "mode"}) {
    EXPECT_NE(sim_help.find(absl::StrCat("--", option, " (default: ")), std::string::npos) << option;
  }
}

TEST(Binaries, IngestShutsDownCleanlyOnSigterm) {
  const std::string dsn = CreateTestDatabase();
  const std::string log = absl::StrCat(std::getenv("DEVBRIDGE_TEST_DIR"), "/ingest-", getpid(), ".log");
  const int pid = Spawn({kIngest, "--mqtt_url=" + MqttUrl(), "--pg_dsn=" + dsn, "--grpc_listen=127.0.0.1:0",
                         "--http_listen=127.0.0.1:0", "--mqtt_client_id=sigterm-" + std::to_string(getpid()),
                         "--topic_prefix=" + UniqueTopicPrefix(),
                         "--register_map=" DEVBRIDGE_SOURCE_DIR "/config/registers.json"},
                        log);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor([&] { return ReadFile(log).find("connected to") != std::string::npos; }))
      << ReadFile(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid, absl::Seconds(20)), 0) << ReadFile(log);
  const std::string out = ReadFile(log);
  EXPECT_NE(out.find("signal 15: shutting down"), std::string::npos) << out;
  EXPECT_NE(out.find("stopped"), std::string::npos) << out;
}

TEST(Binaries, IngestReloadsItsRegisterMapOnSighupAndKeepsTheOldOneWhenTheNewIsBroken) {
  const std::string dir = std::getenv("DEVBRIDGE_TEST_DIR");
  const std::string map = absl::StrCat(dir, "/sighup-", getpid(), ".json");
  const std::string good = ReadFile(DEVBRIDGE_SOURCE_DIR "/config/registers.json");
  ASSERT_FALSE(good.empty());
  auto write = [&](const std::string& text) {
    FILE* f = fopen(map.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs(text.c_str(), f);
    fclose(f);
  };
  write(good);
  const std::string log = absl::StrCat(dir, "/sighup-", getpid(), ".log");
  const int pid = Spawn({kIngest, "--mqtt_url=" + MqttUrl(), "--pg_dsn=none", "--grpc_listen=127.0.0.1:0",
                         "--http_listen=127.0.0.1:0", "--mqtt_client_id=sighup-" + std::to_string(getpid()),
                         "--topic_prefix=" + UniqueTopicPrefix(), "--register_map=" + map},
                        log);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor([&] { return ReadFile(log).find("connected to") != std::string::npos; })) << ReadFile(log);
  write("{\n  \"profiles\": {\n    \"meter\": {\"registers\": [], \"poll\": \"often\"}\n  }\n}\n");
  kill(pid, SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return ReadFile(log).find("register map not reloaded") != std::string::npos; }))
      << ReadFile(log);
  EXPECT_NE(ReadFile(log).find(map + ":3: profiles.meter.poll: must be an array"), std::string::npos) << ReadFile(log);
  write(good);
  kill(pid, SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return ReadFile(log).find("register map reloaded from " + map) != std::string::npos; }))
      << ReadFile(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid, absl::Seconds(20)), 0) << "SIGHUP must not stop ingest: " << ReadFile(log);
}

}  // namespace
}  // namespace devbridge::testing
