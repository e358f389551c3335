#include "httpd/http_server.h"

#include <asio.hpp>
#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace devbridge::httpd {
namespace {

constexpr size_t kMaxHeaderBytes = size_t{16} * 1024;
// How long the acceptor waits after an error such as EMFILE before it tries again: an
// immediate retry fails the same way and spins the io thread.
constexpr std::chrono::milliseconds kAcceptBackoff{100};

absl::Status HttpError(int status, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(status, " ", why));
}

bool AllDigits(absl::string_view s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

int StatusOfError(const absl::Status& error) {
  int status = 400;
  if (error.message().size() >= 3 && absl::SimpleAtoi(error.message().substr(0, 3), &status)) return status;
  return 400;
}

absl::Status CheckBodyFraming(const std::optional<std::string>& transfer_encoding,
                              const std::optional<std::string>& content_length, size_t* length) {
  *length = 0;
  if (transfer_encoding) return HttpError(411, "Transfer-Encoding is not supported: send Content-Length");
  if (!content_length) return absl::OkStatus();
  const absl::string_view value = absl::StripAsciiWhitespace(*content_length);
  if (!AllDigits(value)) return HttpError(400, "Content-Length must be one decimal number");
  if (!absl::SimpleAtoi(value, length)) return HttpError(400, "Content-Length must be one decimal number");
  return absl::OkStatus();
}

absl::StatusOr<RequestHead> ParseRequestHead(absl::string_view head) {
  if (head.find('\0') != absl::string_view::npos) return HttpError(400, "NUL in the request head");
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  std::vector<absl::string_view> first = absl::StrSplit(lines[0], ' ');
  if (first.size() != 3 || first[0].empty() || first[1].empty() || first[1][0] != '/' ||
      !absl::StartsWith(first[2], "HTTP/1.")) {
    return HttpError(400, "bad request line");
  }
  RequestHead out;
  out.method = std::string(first[0]);
  absl::string_view target = first[1];
  if (size_t q = target.find('?'); q != absl::string_view::npos) {
    out.query = std::string(target.substr(q + 1));
    target = target.substr(0, q);
  }
  out.path = std::string(target);
  std::optional<std::string> transfer_encoding, content_length;
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos || colon == 0) return HttpError(400, "bad header line");
    std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    std::string value(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    if (name == "content-length") {
      if (content_length) return HttpError(400, "Content-Length given twice");
      content_length = value;
    } else if (name == "transfer-encoding") {
      transfer_encoding = value;
    }
    out.headers[std::move(name)] = std::move(value);
  }
  if (absl::Status framing = CheckBodyFraming(transfer_encoding, content_length, &out.content_length);
      !framing.ok()) {
    return framing;
  }
  return out;
}

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::ip::tcp::socket socket, const Handler* handler, const ServerOptions* options,
             std::shared_ptr<size_t> open)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        handler_(handler),
        options_(options),
        open_(std::move(open)) {
    ++*open_;
  }
  ~Connection() { --*open_; }

  void Start() {
    // One deadline for the whole request: a client that sends a head (or body) byte by byte,
    // or nothing at all, holds a socket no longer than this.
    auto self = shared_from_this();
    timer_.expires_after(absl::ToChronoMilliseconds(options_->head_timeout));
    timer_.async_wait([self](std::error_code ec) {
      if (ec) return;
      std::error_code ignored;
      self->socket_.close(ignored);
    });
    ReadHeaders();
  }

  // Answers `response` and closes, without reading the request (connection limit).
  void Refuse(const Response& response) { Reply(response); }

 private:
  void ReadHeaders() {
    auto self = shared_from_this();
    asio::async_read_until(socket_, asio::dynamic_buffer(buffer_, kMaxHeaderBytes), "\r\n\r\n",
                           [self](std::error_code ec, size_t header_end) {
                             if (ec) {
                               if (ec == asio::error::not_found) {
                                 self->Reply({431, "text/plain", "headers too large\n"});
                               } else {
                                 self->timer_.cancel();  // the client went away: let go at once
                               }
                               return;
                             }
                             self->OnHeaders(header_end);
                           });
  }

  void OnHeaders(size_t header_end) {
    absl::StatusOr<RequestHead> head = ParseRequestHead(absl::string_view(buffer_).substr(0, header_end - 4));
    if (!head.ok()) {
      return Reply({StatusOfError(head.status()), "text/plain", absl::StrCat(head.status().message().substr(4), "\n")});
    }
    request_.method = std::move(head->method);
    request_.path = std::move(head->path);
    request_.query = std::move(head->query);
    request_.headers = std::move(head->headers);
    const size_t length = head->content_length;
    if (length > options_->max_body_bytes) return Reply({413, "text/plain", "body too large\n"});
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
                       if (ec) {
                         self->timer_.cancel();
                         return;
                       }
                       self->Dispatch();
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
      self->timer_.cancel();
    });
  }

  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;
  const Handler* handler_;
  const ServerOptions* options_;
  std::shared_ptr<size_t> open_;  // shared with the server: connections open now
  std::string buffer_;
  Request request_;
  std::string out_;
};

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  Impl(asio::io_context& io, Handler h, ServerOptions o)
      : acceptor(io), backoff(io), handler(std::move(h)), options(o) {}

  void Accept() {
    auto self = shared_from_this();
    acceptor.async_accept([self](std::error_code ec, asio::ip::tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (ec) {
        // Out of file descriptors, say: wait a little instead of failing again at once.
        self->backoff.expires_after(kAcceptBackoff);
        self->backoff.async_wait([self](std::error_code e) {
          if (!e && self->acceptor.is_open()) self->Accept();
        });
        return;
      }
      auto conn = std::make_shared<Connection>(std::move(socket), &self->handler, &self->options, self->open);
      if (*self->open > self->options.max_connections) {
        conn->Refuse({503, "text/plain", "too many connections\n"});
      } else {
        conn->Start();
      }
      self->Accept();
    });
  }

  asio::ip::tcp::acceptor acceptor;
  asio::steady_timer backoff;
  Handler handler;
  ServerOptions options;
  std::shared_ptr<size_t> open = std::make_shared<size_t>(0);
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
                                                              ServerOptions options) {
  auto hp = SplitHostPort(listen);
  if (!hp.ok()) return hp.status();
  std::error_code ec;
  const asio::ip::address address = asio::ip::make_address(hp->first, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad host in \"", listen, "\": ", ec.message()));
  auto impl = std::make_shared<Impl>(io, std::move(handler), options);
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

size_t HttpServer::open_connections() const { return *impl_->open; }

void HttpServer::Stop() {
  std::error_code ignored;
  impl_->acceptor.close(ignored);
  impl_->backoff.cancel();
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
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

}  // namespace devbridge::httpd
