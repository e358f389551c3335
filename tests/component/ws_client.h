// A WebSocket test client on websocketpp: connects to push's /ws, keeps every frame it
// receives (parsed as JSON), sends text, and reports how the connection ended.
#ifndef DEVBRIDGE_TESTS_COMPONENT_WS_CLIENT_H_
#define DEVBRIDGE_TESTS_COMPONENT_WS_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace devbridge::testing {

class WsClient {
 public:
  // Opens ws://127.0.0.1:port/ws?query. Returns the client whether or not the handshake
  // succeeded; see open() and http_status().
  static std::unique_ptr<WsClient> Connect(int port, const std::string& query,
                                           absl::Duration timeout = absl::Seconds(5));
  ~WsClient();

  bool open() const;
  int http_status() const;  // of the handshake response (101 when accepted)
  void Send(const std::string& text);
  void Close();
  bool closed() const;
  int close_code() const;   // the code the server closed with (0 if none yet)

  std::vector<nlohmann::json> Frames() const;
  std::vector<nlohmann::json> Frames(const std::string& type) const;
  // Waits until a frame satisfies `match`; returns it (or null JSON on timeout).
  nlohmann::json WaitFor(const std::function<bool(const nlohmann::json&)>& match,
                         absl::Duration timeout = absl::Seconds(10)) const;
  nlohmann::json WaitForType(const std::string& type, absl::Duration timeout = absl::Seconds(10)) const;
  bool WaitClosed(absl::Duration timeout = absl::Seconds(10)) const;

 private:
  struct Impl;
  WsClient();
  std::unique_ptr<Impl> impl_;
};

}  // namespace devbridge::testing

#endif  // DEVBRIDGE_TESTS_COMPONENT_WS_CLIENT_H_
