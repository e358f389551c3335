// Push's HTTP surface on the WebSocket port (CONTRACT §6): the go-websocket-compatible JSON
// API under /api/ (POST), /healthz, /metrics and the dashboard's static files from web_root;
// and, for the dashboard, two read-only queries answered by ingest:
//   GET /api/devices                                  → {"devices":[{deviceId, online, ...}]}
//   GET /api/readings?deviceId=ID&since=MS&limit=N    → {"readings":[the newest N, oldest first]}
// Runs on the io thread.
#ifndef DEVBRIDGE_SERVICES_PUSH_HTTP_HTTP_API_H_
#define DEVBRIDGE_SERVICES_PUSH_HTTP_HTTP_API_H_

#include <functional>
#include <string>

#include "common/metrics.h"
#include "httpd/http_server.h"
#include "services/push/core/directory.h"
#include "services/push/core/push_node.h"

namespace devbridge::push {

class HttpApi {
 public:
  // `directory` may be null: the read-only queries then answer 503.
  HttpApi(PushNode* node, DeviceDirectory* directory, std::string web_root,
          common::MetricsRegistry* metrics);
  void Handle(const httpd::Request& request, std::function<void(httpd::Response)> reply);

 private:
  void Api(const std::string& op, const httpd::Request& request,
           std::function<void(httpd::Response)> reply);
  void Query(const httpd::Request& request, std::function<void(httpd::Response)> reply);
  // A read token (CONTRACT §5 claims) for the fleet system, or for `device_id` when given.
  absl::Status CheckReadToken(const httpd::Request& request, const std::string& token,
                              const std::string& device_id) const;
  httpd::Response Static(const std::string& path) const;
  // An error reply ({"code":C,"msg":M}), counted in api_errors_.
  httpd::Response Failure(int code, const std::string& msg);

  PushNode* node_;
  DeviceDirectory* directory_;
  std::string web_root_;
  common::MetricsRegistry* metrics_;
  common::Counter* api_calls_;
  common::Counter* api_errors_;
};

// {"code":C,"msg":M,"data":D} with HTTP status 200 for code 0, else the code itself.
httpd::Response ApiReply(int code, const std::string& msg, const std::string& data_json);

// Content-Type for a file name by its extension.
std::string ContentType(const std::string& path);

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_HTTP_HTTP_API_H_
