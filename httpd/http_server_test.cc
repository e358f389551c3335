#include "httpd/http_server.h"

#include <asio.hpp>
#include <thread>

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
    auto server = HttpServer::Start(io_, "127.0.0.1:0", [](const Request& r) {
      if (r.path == "/healthz") return Response{200, "text/plain", "ok\n"};
      if (r.path == "/echo") {
        return Response{200, "application/json",
                        r.method + " " + r.query + " " + r.headers.at("systemid") + " " + r.body};
      }
      return Response{404, "text/plain", "not found\n"};
    });
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

TEST(SplitHostPort, ParsesAndRejects) {
  EXPECT_EQ(SplitHostPort("0.0.0.0:9090")->second, 9090);
  EXPECT_EQ(SplitHostPort("[::1]:80")->first, "::1");
  EXPECT_EQ(SplitHostPort(":80")->first, "0.0.0.0");
  EXPECT_FALSE(SplitHostPort("nohost").ok());
  EXPECT_FALSE(SplitHostPort("h:99999").ok());
}

}  // namespace
}  // namespace devbridge::httpd
