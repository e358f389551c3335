#include "httpd/http_server.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <asio.hpp>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace devbridge::httpd {
namespace {

// Sends raw `request` to 127.0.0.1:port and returns everything the server answered.
std::string RoundTrip(int port, const std::string& request) {
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  asio::write(socket, asio::buffer(request));
  std::string out;
  std::error_code ec;
  asio::read(socket, asio::dynamic_buffer(out), ec);
  return out;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.max_connections = 3;
    options.head_timeout = absl::Milliseconds(300);
    auto server = HttpServer::Start(io_, "127.0.0.1:0", [](const Request& r) {
      if (r.path == "/healthz") return Response{200, "text/plain", "ok\n"};
      if (r.path == "/echo") {
        return Response{200, "application/json",
                        r.method + " " + r.query + " " + r.headers.at("systemid") + " " + r.body};
      }
      return Response{404, "text/plain", "not found\n"};
    }, options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    asio::post(io_, [this] { server_->Stop(); });
    io_.stop();
    thread_.join();
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

TEST_F(HttpServerTest, AnswersGetWithStatusAndBody) {
  const std::string reply = RoundTrip(server_->port(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply;
  EXPECT_NE(reply.find("Content-Length: 3\r\n"), std::string::npos);
  EXPECT_EQ(reply.substr(reply.size() - 3), "ok\n");
}

TEST_F(HttpServerTest, PassesMethodQueryHeadersAndBody) {
  const std::string reply = RoundTrip(
      server_->port(),
      "POST /echo?a=1 HTTP/1.1\r\nSystemId: fleet\r\nContent-Length: 7\r\n\r\n{\"x\":1}");
  EXPECT_NE(reply.find("POST a=1 fleet {\"x\":1}"), std::string::npos) << reply;
}

TEST_F(HttpServerTest, UnknownPathIs404AndHugeBodyIs413) {
  EXPECT_EQ(RoundTrip(server_->port(), "GET /nope HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(RoundTrip(server_->port(), "POST /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
                .rfind("HTTP/1.1 413", 0),
            0u);
  EXPECT_EQ(RoundTrip(server_->port(), "garbage\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
}

TEST_F(HttpServerTest, BodyFramingThatCouldBeReadTwoWaysIsRefused) {
  const int port = server_->port();
  EXPECT_EQ(RoundTrip(port, "POST /echo HTTP/1.1\r\nSystemId: s\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "7\r\n{\"x\":1}\r\n0\r\n\r\n")
                .rfind("HTTP/1.1 411", 0),
            0u);
  EXPECT_EQ(RoundTrip(port, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}")
                .rfind("HTTP/1.1 400", 0),
            0u);
  for (const char* length : {"abc", "-1", "1e3", "2, 2", "0x10", ""}) {
    EXPECT_EQ(RoundTrip(port, absl::StrCat("POST /echo HTTP/1.1\r\nContent-Length: ", length, "\r\n\r\n{}"))
                  .rfind("HTTP/1.1 400", 0),
              0u)
        << length;
  }
}

TEST_F(HttpServerTest, AHeadThatNeverCompletesIsClosed) {
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server_->port())});
  asio::write(socket, asio::buffer(std::string("GET /healthz HTTP/1.1\r\nHost:")));
  // Never finished: the server closes it after head_timeout (300 ms here). The read gives up
  // after 30 s so that a regression fails instead of hanging.
  timeval limit{30, 0};
  setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  std::string out;
  std::error_code ec;
  asio::read(socket, asio::dynamic_buffer(out), ec);
  EXPECT_EQ(ec, asio::error::eof) << ec.message();
  EXPECT_EQ(out, "") << "no answer to half a request";
}

TEST_F(HttpServerTest, ConnectionsPastTheLimitGet503) {
  asio::io_context io;
  std::vector<asio::ip::tcp::socket> idle;
  for (int i = 0; i < 3; ++i) {
    idle.emplace_back(io);
    idle.back().connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server_->port())});
  }
  // The acceptor takes connections in order, so the three idle ones count before this one.
  EXPECT_EQ(RoundTrip(server_->port(), "GET /healthz HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 503", 0), 0u);
  idle.clear();
  // Once they are gone (closed by the client, or by the head timeout), requests pass again.
  std::string reply;
  for (int attempt = 0; attempt < 200 && reply.rfind("HTTP/1.1 200", 0) != 0; ++attempt) {
    reply = RoundTrip(server_->port(), "GET /healthz HTTP/1.1\r\n\r\n");
    if (reply.rfind("HTTP/1.1 200", 0) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
}

TEST(ParseRequestHead, ReadsAndRefuses) {
  absl::StatusOr<RequestHead> head = ParseRequestHead("POST /api/x?a=1 HTTP/1.1\r\nContent-Length: 12\r\nX-A: b");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->path, "/api/x");
  EXPECT_EQ(head->query, "a=1");
  EXPECT_EQ(head->content_length, 12u);
  EXPECT_EQ(head->headers.at("x-a"), "b");
  EXPECT_EQ(StatusOfError(ParseRequestHead(std::string("GET /a\0b HTTP/1.1", 17)).status()), 400);
  EXPECT_EQ(StatusOfError(ParseRequestHead("GET / HTTP/1.1\r\nTransfer-Encoding: gzip").status()), 411);
  EXPECT_EQ(StatusOfError(ParseRequestHead("GET / HTTP/1.1\r\ncontent-length: 1\r\nContent-Length: 1").status()), 400);
  EXPECT_EQ(StatusOfError(ParseRequestHead("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999").status()), 400);
  EXPECT_FALSE(ParseRequestHead("GET  / HTTP/1.1").ok());
  EXPECT_FALSE(ParseRequestHead("GET x HTTP/1.1").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.1\r\nno colon").ok());
}

TEST(SplitHostPort, ParsesAndRejects) {
  EXPECT_EQ(SplitHostPort("0.0.0.0:9090")->second, 9090);
  EXPECT_EQ(SplitHostPort("[::1]:80")->first, "::1");
  EXPECT_EQ(SplitHostPort(":80")->first, "0.0.0.0");
  EXPECT_FALSE(SplitHostPort("nohost").ok());
  EXPECT_FALSE(SplitHostPort("h:99999").ok());
}

}  // namespace
}  // namespace devbridge::httpd
