// Helpers for component tests that run inside tests/harness/with-services: where the real
// broker and database are, a fresh database per test, and polling with a deadline.
#ifndef DEVBRIDGE_TESTS_COMPONENT_TEST_ENV_H_
#define DEVBRIDGE_TESTS_COMPONENT_TEST_ENV_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace devbridge::testing {

// tcp://127.0.0.1:PORT of the harness's mosquitto. Aborts the test binary with a clear
// message when run outside the harness.
std::string MqttUrl();
// The port of the harness's broker.
int MqttPort();
// The value of the line "series value" in a Prometheus text page (series: name{labels}), or -1.
double MetricValue(const std::string& text, const std::string& series);

// postgresql://… of the harness's cluster (maintenance database "postgres").
std::string PgDsn();

// Creates an empty database named after the running test (and this process) and returns
// its DSN, so tests never share tables.
std::string CreateTestDatabase();

// A topic prefix of its own for the running test, so tests never see each other's messages.
std::string UniqueTopicPrefix();

// Runs tests/harness/svc ACTION (stop-mqtt, start-mqtt, stop-pg, start-pg); true on success.
bool Harness(const std::string& action);

// Runs `argv` as a child process with stdout and stderr going to `log_path`; returns its pid.
// The child is killed (SIGKILL) when the thread that spawned it ends: call it from the test's
// own thread.
int Spawn(const std::vector<std::string>& argv, const std::string& log_path);
// Waits up to `timeout` for child `pid` to exit; returns its exit status, or -1 on timeout
// (the child is then killed).
int WaitExit(int pid, absl::Duration timeout);
// Certificates made by openssl in a fresh folder, for TLS tests: a CA, a second CA that signed
// nothing here, a server certificate for localhost and 127.0.0.1 (also good as a client
// certificate) and a client certificate, all signed by the first CA. Removed with the object.
struct TestPki {
  TestPki();
  ~TestPki();
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;
  std::string dir;
  std::string ca, other_ca;              // ca.pem, other.pem
  std::string server_cert, server_key;  // server.pem, server.key
  std::string client_cert, client_key;  // client.pem, client.key
};

// A loopback TCP port free right now (below the ephemeral range, never handed out twice), and
// whether something listens on one.
int FreePort();
bool PortOpen(int port);
// The text of a file ("" if unreadable).
std::string ReadFile(const std::string& path);

// A plain HTTP/1.1 request to 127.0.0.1:port; returns the body and sets *status.
std::string HttpRequest(int port, const std::string& method, const std::string& path,
                        const std::vector<std::pair<std::string, std::string>>& headers = {},
                        const std::string& body = "", int* status = nullptr);

// Polls `condition` every few milliseconds until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10));

}  // namespace devbridge::testing

#endif  // DEVBRIDGE_TESTS_COMPONENT_TEST_ENV_H_
