#include "httpd/http_server.h"

#include <asio.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace devbridge::httpd {
namespace {

constexpr size_t kMaxHeaderBytes = size_t{16} * 1024;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::ip::tcp::socket socket, const Handler* handler, size_t max_body)
      : socket_(std::move(socket)), handler_(handler), max_body_(max_body) {}

  void Start() { ReadHeaders(); }

 private:
  void ReadHeaders() {
    auto self = shared_from_this();
    asio::async_read_until(socket_, asio::dynamic_buffer(buffer_, kMaxHeaderBytes), "\r\n\r\n",
                           [self](std::error_code ec, size_t header_end) {
                             if (ec) {
                               if (ec == asio::error::not_found) self->Reply({431, "text/plain", "headers too large\n"});
                               return;
                             }
                             self->OnHeaders(header_end);
                           });
  }

  void OnHeaders(size_t header_end) {
    std::vector<absl::string_view> lines =
        absl::StrSplit(absl::string_view(buffer_).substr(0, header_end - 4), "\r\n");
    std::vector<absl::string_view> first = absl::StrSplit(lines[0], ' ');
    if (first.size() != 3) return Reply({400, "text/plain", "bad request line\n"});
    request_.method = std::string(first[0]);
    absl::string_view target = first[1];
    if (size_t q = target.find('?'); q != absl::string_view::npos) {
      request_.query = std::string(target.substr(q + 1));
      target = target.substr(0, q);
    }
    request_.path = std::string(target);
    for (size_t i = 1; i < lines.size(); ++i) {
      const size_t colon = lines[i].find(':');
      if (colon == absl::string_view::npos) continue;
      request_.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    }
    size_t length = 0;
    if (auto it = request_.headers.find("content-length"); it != request_.headers.end()) {
      if (!absl::SimpleAtoi(it->second, &length)) return Reply({400, "text/plain", "bad Content-Length\n"});
    }
    if (length > max_body_) return Reply({413, "text/plain", "body too large\n"});
    request_.body = buffer_.substr(header_end);
    if (request_.body.size() >= length) {
      request_.body.resize(length);
      return Dispatch();
    }
    const size_t missing = length - request_.body.size();
    request_.body.resize(length);
    auto self = shared_from_this();
    asio::async_read(socket_, asio::buffer(&request_.body[length - missing], missing),
                     [self](std::error_code ec, size_t) {
                       if (!ec) self->Dispatch();
                     });
  }

  void Dispatch() { Reply((*handler_)(request_)); }

  void Reply(const Response& response) {
    out_ = absl::StrCat("HTTP/1.1 ", response.status, " ", ReasonPhrase(response.status),
                        "\r\nContent-Type: ", response.content_type,
                        "\r\nContent-Length: ", response.body.size(),
                        "\r\nConnection: close\r\n\r\n", response.body);
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(out_), [self](std::error_code, size_t) {
      std::error_code ignored;
      self->socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    });
  }

  asio::ip::tcp::socket socket_;
  const Handler* handler_;
  size_t max_body_;
  std::string buffer_;
  Request request_;
  std::string out_;
};

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  Impl(asio::io_context& io, Handler h, size_t max) : acceptor(io), handler(std::move(h)), max_body(max) {}

  void Accept() {
    auto self = shared_from_this();
    acceptor.async_accept([self](std::error_code ec, asio::ip::tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) std::make_shared<Connection>(std::move(socket), &self->handler, self->max_body)->Start();
      self->Accept();
    });
  }

  asio::ip::tcp::acceptor acceptor;
  Handler handler;
  size_t max_body;
};

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad address \"", listen, "\": want host:port"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  return std::make_pair(host, port);
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(asio::io_context& io,
                                                              const std::string& listen,
                                                              Handler handler,
                                                              size_t max_body_bytes) {
  auto hp = SplitHostPort(listen);
  if (!hp.ok()) return hp.status();
  std::error_code ec;
  const asio::ip::address address = asio::ip::make_address(hp->first, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad host in \"", listen, "\": ", ec.message()));
  auto impl = std::make_shared<Impl>(io, std::move(handler), max_body_bytes);
  const asio::ip::tcp::endpoint endpoint(address, static_cast<uint16_t>(hp->second));
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, ": ", ec.message()));
  impl->Accept();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::port() const {
  std::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

void HttpServer::Stop() {
  std::error_code ignored;
  impl_->acceptor.close(ignored);
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

}  // namespace devbridge::httpd
