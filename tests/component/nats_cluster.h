// A NATS cluster with JetStream for tests: `size` real nats-server processes on loopback,
// each with a folder of its own for its storage, routed to each other. A server can be
// killed (SIGKILL) and started again on the same ports and storage.
//
// The servers start one after another (each once it listens): started all at once,
// nats-server 2.10.27 sometimes leaves one out of the JetStream metadata group for good (the
// leader never hears it, though its /healthz says ok), and nothing with more copies than the
// rest can be created ("no suitable peers", 10005). WaitHealthy checks the group too, and
// the constructor starts a server left out once more.
#ifndef DEVBRIDGE_TESTS_COMPONENT_NATS_CLUSTER_H_
#define DEVBRIDGE_TESTS_COMPONENT_NATS_CLUSTER_H_

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace devbridge::testing {

class NatsCluster {
 public:
  explicit NatsCluster(int size = 3);
  ~NatsCluster();
  NatsCluster(const NatsCluster&) = delete;
  NatsCluster& operator=(const NatsCluster&) = delete;

  // Every server, as a --bus flag: "nats://127.0.0.1:P1,nats://127.0.0.1:P2,…".
  std::string urls() const;
  std::string url(int i) const;
  int size() const { return static_cast<int>(nodes_.size()); }

  void Kill(int i);   // kill -9, and waits until it is gone
  void Start(int i);  // starts server i (again), and waits until it listens
  // True once every running server reports JetStream healthy (GET /healthz) and the
  // metadata leader counts every one in its group, within `timeout`.
  bool WaitHealthy(absl::Duration timeout = absl::Seconds(30)) const;
  // Starts server i again and waits until every server is healthy. nats-server 2.10.27 started
  // again sometimes never gets current with the metadata leader (/healthz: "JetStream is not
  // current with the meta leader"); as README, Operations, tells operators, a server not
  // healthy 30 s after its start is stopped and started once more.
  bool Rejoin(int i);
  // Where server i logs.
  std::string log(int i) const;

 private:
  struct Node {
    int port = 0;
    int cluster_port = 0;
    int monitor_port = 0;
    int pid = -1;
  };
  // The running servers the metadata leader's group lacks (all of them if no leader is known).
  std::vector<int> LeftOut() const;
  // SIGTERM, then started again.
  void Restart(int i);

  std::string dir_;
  std::vector<Node> nodes_;
};

}  // namespace devbridge::testing

#endif  // DEVBRIDGE_TESTS_COMPONENT_NATS_CLUSTER_H_
