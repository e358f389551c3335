// The WebSocket and HTTP front of push on websocketpp (standalone Asio, no TLS: TLS ends at
// the load balancer). It turns websocketpp's callbacks into calls on a Handler, all on the
// io thread that runs the server, and offers Send/Close by connection id. websocketpp stays
// inside ws_server.cc.
#ifndef DEVBRIDGE_SERVICES_PUSH_WS_WS_SERVER_H_
#define DEVBRIDGE_SERVICES_PUSH_WS_WS_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "httpd/http_server.h"

namespace asio {
class io_context;
}

namespace devbridge::push {

struct WsOptions {
  std::string listen = "0.0.0.0:8080";
  size_t max_message_bytes = 65536;        // larger client frames close the connection (1009)
  size_t max_http_body_bytes = 1 << 20;
  // Connections that are not WebSocket sessions (reading a request, or plain HTTP) past
  // which a request gets 503. A request must arrive within websocketpp's 5 s handshake timeout.
  size_t max_http_connections = 1024;
  absl::Duration ping_interval = absl::Seconds(25);
  absl::Duration pong_timeout = absl::Seconds(10);
  // Least time between two rounds of writes. Frames queued meanwhile go out together, one
  // write per connection, so under load each write carries several frames (fewer system
  // calls and wake-ups on both ends); after a quiet spell a frame goes out at once. Whatever
  // it is, a round also waits until the previous one ended at least its own length ago (at
  // most 25 ms): a long round means busy sockets, and what arrives meanwhile coalesces.
  absl::Duration flush_interval = absl::ZeroDuration();
  // Counts handler bodies that threw (a bug: they are not meant to); may be null.
  common::Counter* handler_errors = nullptr;
};

// Called on the io thread.
class WsHandler {
 public:
  virtual ~WsHandler() = default;
  // A GET /ws upgrade request. Return nullopt to accept, or {HTTP status, message} to refuse.
  virtual std::optional<std::pair<int, std::string>> OnHandshake(uint64_t conn, absl::string_view query,
                                                                 absl::string_view origin) = 0;
  virtual void OnOpen(uint64_t conn) = 0;
  virtual void OnMessage(uint64_t conn, absl::string_view text) = 0;
  // After OnOpen, exactly once; also for handshakes that were accepted but failed later.
  virtual void OnClose(uint64_t conn) = 0;
  // Any other HTTP request; answer through `reply`, now or later (on the io thread).
  virtual void OnHttp(const httpd::Request& request, std::function<void(httpd::Response)> reply) = 0;
};

class WsServer {
 public:
  static absl::StatusOr<std::unique_ptr<WsServer>> Start(asio::io_context& io, WsOptions options, WsHandler* handler);
  ~WsServer();
  WsServer(const WsServer&) = delete;
  WsServer& operator=(const WsServer&) = delete;

  int port() const;
  // Queues a text frame; returns the bytes now waiting to be written to that connection.
  // Sending the same `text` pointer to many connections in a row frames it only once.
  // After Close, frames for that connection are dropped (and 0 returned).
  size_t Send(uint64_t conn, const std::shared_ptr<const std::string>& text);
  // Queues a close; it goes out after the frames queued before it.
  void Close(uint64_t conn, int code, const std::string& reason);
  // Stops accepting and closes every connection with 1001 (going away).
  void Shutdown();
  size_t open_connections() const;

 private:
  struct Impl;
  explicit WsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_WS_WS_SERVER_H_
