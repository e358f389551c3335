// A minimal HTTP/1.1 server on Asio for operational endpoints (/healthz, /metrics) and
// small JSON APIs: one request per connection, bodies up to a fixed size, handlers run on
// the io_context's thread.
#ifndef DEVBRIDGE_HTTPD_HTTP_SERVER_H_
#define DEVBRIDGE_HTTPD_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace asio {
class io_context;
}

namespace devbridge::httpd {

struct Request {
  std::string method;
  std::string path;    // without the query
  std::string query;   // after '?', not decoded
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using Handler = std::function<Response(const Request&)>;

class HttpServer {
 public:
  // Listens on `listen` ("host:port"; port 0 picks a free one). Handlers run on `io`'s thread.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(asio::io_context& io,
                                                           const std::string& listen,
                                                           Handler handler,
                                                           size_t max_body_bytes = 1 << 20);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  // Stops accepting; connections in progress finish. Call on the io thread or after it stopped.
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Splits "host:port" (IPv6 as "[::1]:80"). Errors name the text.
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& listen);

// A short reason phrase for the status line: 200 → "OK".
const char* ReasonPhrase(int status);

}  // namespace devbridge::httpd

#endif  // DEVBRIDGE_HTTPD_HTTP_SERVER_H_
