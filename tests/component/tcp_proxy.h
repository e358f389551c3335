// A TCP proxy on loopback for tests about networks that misbehave without closing anything:
// it can stop forwarding altogether (the peer unreachable behind a silent network, not down),
// lose what clients send, or hold back answers from a marker on.
#ifndef DEVBRIDGE_TESTS_COMPONENT_TCP_PROXY_H_
#define DEVBRIDGE_TESTS_COMPONENT_TCP_PROXY_H_

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace devbridge::testing {

class TcpProxy {
 public:
  // Listens on an ephemeral loopback port; each connection is forwarded to 127.0.0.1:target_port.
  explicit TcpProxy(int target_port);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  // Stops (or resumes) forwarding in both directions; connections stay open.
  void Freeze(bool frozen) { frozen_ = frozen; }
  // Discards (or forwards again) what clients send, as a network that loses it; the server's
  // bytes still get through, and a client's close still reaches the server.
  void DropRequests(bool drop) { requests_dropped_ = drop; }
  // From the next request containing `marker` on, forwards requests but holds back every
  // answer: with "COMMIT", a transaction commits and its answer never comes back.
  void FreezeAnswersAfter(const std::string& marker);
  void ThawAnswers();

 private:
  void Accept();
  void Pump(int client, int server);

  int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> frozen_{false};
  std::atomic<bool> requests_dropped_{false};
  std::atomic<bool> answers_frozen_{false};
  std::mutex marker_mu_;
  std::string marker_;
  std::thread acceptor_;
  std::vector<std::thread> pumps_;  // touched by the acceptor only, joined after it
};

}  // namespace devbridge::testing

#endif  // DEVBRIDGE_TESTS_COMPONENT_TCP_PROXY_H_
