// A minimal HTTP/1.1 server on Asio for operational endpoints (/healthz, /metrics) and
// small JSON APIs: one request per connection, bodies up to a fixed size, handlers run on
// the io_context's thread. Bounded against hostile clients (CONTRACT §10.1): a head that is
// not complete in time is closed, connections past a limit get 503, and the body framing
// rules (ParseRequestHead) refuse anything that could be read two ways.
#ifndef DEVBRIDGE_HTTPD_HTTP_SERVER_H_
#define DEVBRIDGE_HTTPD_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

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

struct ServerOptions {
  size_t max_body_bytes = size_t{1} << 20;  // a longer body gets 413
  size_t max_connections = 1024;            // past it, a new connection gets 503 and is closed
  absl::Duration head_timeout = absl::Seconds(10);  // the whole request must arrive within it
};

// A request line and headers, checked. `content_length` is set when the request has a body.
struct RequestHead {
  std::string method;
  std::string path;
  std::string query;
  std::map<std::string, std::string> headers;  // names in lower case
  size_t content_length = 0;
};

// Parses a request head (up to, not including, the blank line). Errors carry the HTTP status
// to answer in their message's first three characters ("400 bad request line"): 400 for a bad
// request line, a NUL, or a repeated, non-numeric or negative Content-Length; 411 for a
// chunked (or any Transfer-Encoding) body, which this server does not read.
absl::StatusOr<RequestHead> ParseRequestHead(absl::string_view head);

// The same framing rules for a head someone else parsed (websocketpp joins a repeated header
// into "a, b"): OK, or an error like ParseRequestHead's. `transfer_encoding` and
// `content_length` are the raw header values, absent when the header is.
absl::Status CheckBodyFraming(const std::optional<std::string>& transfer_encoding,
                              const std::optional<std::string>& content_length, size_t* length);

// The HTTP status an error of ParseRequestHead or CheckBodyFraming stands for.
int StatusOfError(const absl::Status& error);

class HttpServer {
 public:
  // Listens on `listen` ("host:port"; port 0 picks a free one). Handlers run on `io`'s thread.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(asio::io_context& io,
                                                           const std::string& listen,
                                                           Handler handler,
                                                           ServerOptions options = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  // Connections open now (for tests and metrics).
  size_t open_connections() const;
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
