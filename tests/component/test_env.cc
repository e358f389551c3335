#include "tests/component/test_env.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio.hpp>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>

#include <cstdio>
#include <cstdlib>
#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"

extern "C" char** environ;

namespace devbridge::testing {
namespace {

std::string Required(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    std::fprintf(stderr,
                 "%s is not set: run component tests through tests/harness/with-services "
                 "(ctest does this for you)\n",
                 name);
    std::abort();
  }
  return value;
}

// "Suite.Name/0" → "suite_name_0", usable in identifiers, at most 40 characters: a longer
// one keeps its start and ends in a hash of the whole, so that two tests whose names differ
// only at the end (a parameter's name) never share a database, topics or a spool.
std::string TestSlug() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string slug = info ? absl::StrCat(info->test_suite_name(), "_", info->name()) : "none";
  for (char& c : slug) c = absl::ascii_isalnum(c) ? absl::ascii_tolower(c) : '_';
  if (slug.size() <= 40) return slug;
  uint32_t hash = 2166136261u;  // FNV-1a
  for (char c : slug) hash = (hash ^ static_cast<uint8_t>(c)) * 16777619u;
  return absl::StrCat(slug.substr(0, 31), "_", absl::Hex(hash, absl::kZeroPad8));
}

}  // namespace

std::string MqttUrl() { return Required("DEVBRIDGE_TEST_MQTT_URL"); }

int MqttPort() {
  const std::string url = MqttUrl();
  return std::stoi(url.substr(url.rfind(':') + 1));
}

double MetricValue(const std::string& text, const std::string& series) {
  const std::string line = "\n" + series + " ";
  const size_t at = text.find(line);
  return at == std::string::npos ? -1 : std::stod(text.substr(at + line.size()));
}

std::string PgDsn() { return Required("DEVBRIDGE_TEST_PG_DSN"); }

std::string CreateTestDatabase() {
  const std::string name = absl::StrCat("t_", TestSlug(), "_", getpid());
  pqxx::connection admin(PgDsn());
  pqxx::nontransaction tx(admin);
  tx.exec0("DROP DATABASE IF EXISTS " + tx.quote_name(name));
  tx.exec0("CREATE DATABASE " + tx.quote_name(name));
  const std::string dsn = PgDsn();
  return dsn.substr(0, dsn.rfind('/') + 1) + name;
}

std::string UniqueTopicPrefix() { return absl::StrCat("test/", TestSlug(), "/", getpid()); }

bool Harness(const std::string& action) {
  const std::string cmd = absl::StrCat(DEVBRIDGE_SOURCE_DIR, "/tests/harness/svc ", action);
  return std::system(cmd.c_str()) == 0;
}

int Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return -1;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls here (the test has other threads). The child dies with the
    // test (a crash, a timeout's SIGKILL): a server left over would hold its ports and files
    // into the next run. (The signal follows the thread that forked: tests spawn from theirs.)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execve(args[0], args.data(), environ);
    _exit(127);
  }
  close(log_fd);
  return pid;
}

int WaitExit(int pid, absl::Duration timeout) {
  int status = 0;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

TestPki::TestPki() {
  char tmpl[] = "/tmp/devbridge-pki.XXXXXX";
  dir = mkdtemp(tmpl);
  const std::string script = absl::StrCat(
      "set -e; cd ", dir, "\n",
      "q() { \"$@\" >/dev/null 2>&1; }\n",
      "q openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=devbridge-test-ca -keyout ca.key -out ca.pem\n",
      "q openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout other.key -out other.pem\n",
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext\n",
      "q openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr\n",
      "q openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext "
      "-out server.pem\n",
      "q openssl req -newkey rsa:2048 -nodes -subj /CN=device-1 -keyout client.key -out client.csr\n",
      "q openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem\n");
  EXPECT_EQ(std::system(script.c_str()), 0) << "openssl failed in " << dir;
  ca = dir + "/ca.pem";
  other_ca = dir + "/other.pem";
  server_cert = dir + "/server.pem";
  server_key = dir + "/server.key";
  client_cert = dir + "/client.pem";
  client_key = dir + "/client.key";
}

TestPki::~TestPki() { std::system(absl::StrCat("rm -rf ", dir).c_str()); }

int FreePort() {
  // Below the kernel's ephemeral range: a port from it (a listen on port 0) can go to another
  // process's outgoing connection before our server binds it (a nats-server once lost its
  // route port to a peer's connection attempt). Never the same port twice in one process.
  static std::mutex mu;
  static std::set<int> handed_out;
  static std::mt19937 random(std::random_device{}());
  int ephemeral_low = 32768;
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  if (!(range >> ephemeral_low)) ephemeral_low = 32768;
  const int low = 10000;
  const int high = std::max(low + 1000, ephemeral_low);
  std::lock_guard<std::mutex> lock(mu);
  for (;;) {
    const int port = std::uniform_int_distribution<int>(low, high - 1)(random);
    if (!handed_out.insert(port).second) continue;
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io);
    std::error_code ec;
    acceptor.open(asio::ip::tcp::v4(), ec);
    if (!ec) acceptor.bind({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)}, ec);
    if (!ec) return port;
  }
}

bool PortOpen(int port) {
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  std::error_code ec;
  socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)}, ec);
  return !ec;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string HttpRequest(int port, const std::string& method, const std::string& path,
                        const std::vector<std::pair<std::string, std::string>>& headers, const std::string& body,
                        int* status) {
  try {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
    std::string req = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (const auto& [k, v] : headers) absl::StrAppend(&req, k, ": ", v, "\r\n");
    absl::StrAppend(&req, "Content-Length: ", body.size(), "\r\n\r\n", body);
    // A server may answer before the body is all sent (413) and close, which resets the
    // rest of the write; its answer is still in the socket, so read it as curl would.
    std::error_code ec;
    asio::write(socket, asio::buffer(req), ec);
    std::string out;
    asio::read(socket, asio::dynamic_buffer(out), ec);
    if (status != nullptr) *status = out.size() > 12 ? std::atoi(out.substr(9, 3).c_str()) : 0;
    const size_t at = out.find("\r\n\r\n");
    return at == std::string::npos ? "" : out.substr(at + 4);
  } catch (const std::exception& e) {
    if (status != nullptr) *status = 0;
    return e.what();
  }
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return condition();
}

}  // namespace devbridge::testing
