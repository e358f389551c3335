// push's HTTP side as a request arrives: websocketpp's request parser, our body-framing
// rules, then the API, the read queries and static files (CONTRACT §6 and §10.1).
#include <cstddef>
#include <cstdint>
#include <string>

#include <websocketpp/http/request.hpp>

#include "absl/strings/ascii.h"
#include "common/log.h"
#include "fuzz/null_peers.h"
#include "services/push/http/http_api.h"

using devbridge::fuzz::NullTransport;
using devbridge::fuzz::NullUpstream;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = devbridge::common::SetLogLevel("off").ok();
  (void)quiet;
  static NullTransport transport;
  static NullUpstream upstream;
  static devbridge::common::MetricsRegistry metrics;
  static devbridge::push::PushNode node({}, &transport, &upstream, &metrics);
  static devbridge::push::HttpApi api(&node, &upstream, "/nonexistent", &metrics);
  websocketpp::http::parser::request raw;
  raw.set_max_body_size(65536);
  try {
    raw.consume(reinterpret_cast<const char*>(data), size);
  } catch (const websocketpp::http::exception&) {
    return 0;  // websocketpp answers these itself (400, 413, ...)
  }
  if (!raw.ready()) return 0;
  auto header = [&raw](const char* name) -> std::optional<std::string> {
    std::string value = raw.get_header(name);
    if (value.empty()) return std::nullopt;
    return value;
  };
  size_t length = 0;
  if (!devbridge::httpd::CheckBodyFraming(header("Transfer-Encoding"), header("Content-Length"), &length).ok()) {
    return 0;
  }
  devbridge::httpd::Request request;
  request.method = raw.get_method();
  const std::string& uri = raw.get_uri();
  const size_t q = uri.find('?');
  request.path = uri.substr(0, q);
  if (q != std::string::npos) request.query = uri.substr(q + 1);
  for (const auto& [name, value] : raw.get_headers()) request.headers[absl::AsciiStrToLower(name)] = value;
  request.body = raw.get_body();
  api.Handle(request, [](const devbridge::httpd::Response&) {});
  return 0;
}
