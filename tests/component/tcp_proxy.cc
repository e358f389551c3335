#include "tests/component/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace devbridge::testing {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

}  // namespace

TcpProxy::TcpProxy(int target_port) : target_port_(target_port) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = Loopback(0);
  bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
  listen(listen_fd_, 16);
  socklen_t len = sizeof a;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  acceptor_ = std::thread([this] { Accept(); });
}

TcpProxy::~TcpProxy() {
  stop_ = true;
  shutdown(listen_fd_, SHUT_RDWR);
  acceptor_.join();
  for (auto& t : pumps_) t.join();
  close(listen_fd_);
}

void TcpProxy::FreezeAnswersAfter(const std::string& marker) {
  std::lock_guard<std::mutex> lock(marker_mu_);
  marker_ = marker;
}

void TcpProxy::ThawAnswers() {
  FreezeAnswersAfter("");
  answers_frozen_ = false;
}

void TcpProxy::Accept() {
  while (!stop_) {
    const int client = accept(listen_fd_, nullptr, nullptr);
    if (client < 0) return;
    const int server = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = Loopback(target_port_);
    if (connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(client);
      close(server);
      continue;
    }
    pumps_.emplace_back([this, client, server] { Pump(client, server); });
  }
}

void TcpProxy::Pump(int client, int server) {
  char buf[16384];
  const int fds_of[2] = {client, server};
  while (!stop_) {
    // Frozen answers are not even polled: they wait in the kernel.
    pollfd fds[2] = {{client, POLLIN, 0}, {server, static_cast<short>(answers_frozen_ ? 0 : POLLIN), 0}};
    if (poll(fds, 2, 50) <= 0 || frozen_) continue;
    bool closed = false;
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (i == 1 && answers_frozen_) continue;
      const ssize_t n = read(fds_of[i], buf, sizeof buf);
      if (n <= 0) {
        closed = true;
        continue;
      }
      if (i == 0 && requests_dropped_) continue;
      if (write(fds_of[1 - i], buf, static_cast<size_t>(n)) != n) closed = true;
      if (i == 0 && n > 0) {
        std::lock_guard<std::mutex> lock(marker_mu_);
        if (!marker_.empty() && std::string(buf, static_cast<size_t>(n)).find(marker_) != std::string::npos) {
          answers_frozen_ = true;
        }
      }
    }
    if (closed) break;
  }
  close(client);
  close(server);
}

}  // namespace devbridge::testing
