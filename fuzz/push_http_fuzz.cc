// push's HTTP side as a request arrives: websocketpp's request parser, our body-framing
// rules, then the API, the read queries and static files (CONTRACT §6 and §10.1).
#include <cstddef>
#include <cstdint>
#include <string>

#include <websocketpp/http/request.hpp>

#include "absl/strings/ascii.h"
#include "services/push/http/http_api.h"

namespace {

using devbridge::push::ConnId;

class NullTransport : public devbridge::push::Transport {
 public:
  size_t Send(ConnId, const std::shared_ptr<const std::string>&) override { return 0; }
  void Close(ConnId, int, const std::string&) override {}
};

class NullUpstream : public devbridge::push::Upstream, public devbridge::push::DeviceDirectory {
 public:
  bool up() const override { return true; }
  void Publish(devbridge::v1::PushMessage, std::function<void(absl::Status)> done) override { done(absl::OkStatus()); }
  void Dispatch(devbridge::v1::Command,
                std::function<void(absl::StatusOr<devbridge::v1::CommandResult>)> done) override {
    done(absl::UnavailableError("fuzz"));
  }
  void ListDevices(devbridge::v1::ListDevicesRequest,
                   std::function<void(absl::StatusOr<devbridge::v1::ListDevicesResponse>)> done) override {
    devbridge::v1::ListDevicesResponse r;
    r.add_devices()->set_meta_json(R"({"fw":"1"})");
    done(r);
  }
  void GetReadings(devbridge::v1::GetReadingsRequest,
                   std::function<void(absl::StatusOr<devbridge::v1::GetReadingsResponse>)> done) override {
    done(devbridge::v1::GetReadingsResponse());
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
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
