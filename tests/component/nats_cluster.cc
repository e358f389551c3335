#include "tests/component/nats_cluster.h"

#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/component/test_env.h"

namespace devbridge::testing {

NatsCluster::NatsCluster(int size) {
  char pattern[] = "/tmp/devbridge-nats.XXXXXX";
  dir_ = mkdtemp(pattern);
  std::vector<int> taken;
  auto port = [&taken] {
    for (;;) {
      const int p = FreePort();
      if (std::find(taken.begin(), taken.end(), p) == taken.end()) {
        taken.push_back(p);
        return p;
      }
    }
  };
  nodes_.resize(size);
  for (Node& node : nodes_) {
    node.port = port();
    node.cluster_port = port();
    node.monitor_port = port();
  }
  for (int i = 0; i < size; ++i) {
    std::vector<std::string> routes;
    for (int j = 0; j < size; ++j) {
      if (j != i) routes.push_back(absl::StrCat("nats-route://127.0.0.1:", nodes_[j].cluster_port));
    }
    const std::string name = absl::StrCat("n", i + 1);
    std::ofstream conf(absl::StrCat(dir_, "/", name, ".conf"));
    conf << "server_name: " << name << "\n"
         << "listen: 127.0.0.1:" << nodes_[i].port << "\n"
         << "http: 127.0.0.1:" << nodes_[i].monitor_port << "\n"
         << "jetstream { store_dir: \"" << dir_ << "/" << name << "\" }\n";
    if (size > 1) {
      conf << "cluster { name: devbridge-test, listen: 127.0.0.1:" << nodes_[i].cluster_port
           << ", routes: [" << absl::StrJoin(routes, ", ") << "] }\n";
    }
  }
  for (int i = 0; i < size; ++i) Start(i);
  if (size > 1 && !WaitHealthy()) {
    for (int i : LeftOut()) {
      std::cerr << "nats-server " << i + 1 << " left out of the JetStream metadata group: starting it again (see "
                << log(i) << ")\n";
      Restart(i);
    }
  }
}

NatsCluster::~NatsCluster() {
  for (int i = 0; i < size(); ++i) Kill(i);
  std::error_code ignored;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir_, ignored);
}

std::string NatsCluster::url(int i) const { return absl::StrCat("nats://127.0.0.1:", nodes_[i].port); }

std::string NatsCluster::urls() const {
  std::vector<std::string> all;
  for (int i = 0; i < size(); ++i) all.push_back(url(i));
  return absl::StrJoin(all, ",");
}

std::string NatsCluster::log(int i) const { return absl::StrCat(dir_, "/n", i + 1, ".log"); }

void NatsCluster::Kill(int i) {
  Node& node = nodes_[i];
  if (node.pid <= 0) return;
  kill(node.pid, SIGKILL);
  WaitExit(node.pid, absl::Seconds(10));
  node.pid = -1;
}

void NatsCluster::Start(int i) {
  Node& node = nodes_[i];
  if (node.pid > 0) return;
  node.pid = Spawn({"/usr/sbin/nats-server", "-c", absl::StrCat(dir_, "/n", i + 1, ".conf")},
                   absl::StrCat(dir_, "/n", i + 1, ".log"));
  ASSERT_GT(node.pid, 0) << "could not start /usr/sbin/nats-server (Debian package nats-server)";
  ASSERT_TRUE(WaitFor([&] { return PortOpen(node.port); }))
      << "nats-server " << i + 1 << " did not listen; see " << log(i);
}

bool NatsCluster::Rejoin(int i) {
  Start(i);
  if (WaitHealthy(absl::Seconds(30))) return true;
  std::cerr << "nats-server " << i + 1 << " not healthy 30 s after its start: starting it again (see " << log(i)
            << ")\n";
  Restart(i);
  return WaitHealthy(absl::Seconds(60));
}

void NatsCluster::Restart(int i) {
  Node& node = nodes_[i];
  if (node.pid > 0) {
    kill(node.pid, SIGTERM);
    WaitExit(node.pid, absl::Seconds(20));
    node.pid = -1;
  }
  Start(i);
}

std::vector<int> NatsCluster::LeftOut() const {
  auto meta = [this](int i) {
    int status = 0;
    const std::string body = HttpRequest(nodes_[i].monitor_port, "GET", "/jsz", {}, "", &status);
    nlohmann::json jsz = nlohmann::json::parse(status == 200 ? body : "{}", nullptr, false);
    return jsz.is_object() ? jsz.value("meta_cluster", nlohmann::json::object()) : nlohmann::json::object();
  };
  std::vector<bool> in(nodes_.size(), false);
  for (int i = 0; i < size(); ++i) {
    if (nodes_[i].pid <= 0) continue;
    // Servers are named n1, n2, …: the leader's number tells where to ask it.
    const std::string leader = meta(i).value("leader", "");
    int l = 0;
    if (leader.size() < 2 || !absl::SimpleAtoi(leader.substr(1), &l) || l < 1 || l > size()) continue;
    const nlohmann::json group = meta(l - 1);
    if (group.value("leader", "") != leader) continue;
    in[l - 1] = true;
    for (const nlohmann::json& r : group.value("replicas", nlohmann::json::array())) {
      int n = 0;
      const std::string name = r.value("name", "");
      if (name.size() >= 2 && absl::SimpleAtoi(name.substr(1), &n) && n >= 1 && n <= size()) in[n - 1] = true;
    }
    break;
  }
  std::vector<int> out;
  for (int i = 0; i < size(); ++i) {
    if (nodes_[i].pid > 0 && !in[i]) out.push_back(i);
  }
  return out;
}

bool NatsCluster::WaitHealthy(absl::Duration timeout) const {
  return WaitFor(
      [&] {
        for (const Node& node : nodes_) {
          if (node.pid <= 0) continue;
          int status = 0;
          HttpRequest(node.monitor_port, "GET", "/healthz", {}, "", &status);
          if (status != 200) return false;
        }
        return size() == 1 || LeftOut().empty();
      },
      timeout);
}

}  // namespace devbridge::testing
