#include "bench/viewers.h"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>
#include <websocketpp/client.hpp>
#include <websocketpp/config/asio_no_tls_client.hpp>

#include "bench/bench_util.h"

namespace devbridge::bench {
namespace {

std::atomic<bool> g_stop{false};

void StopOnSignals() {
  signal(SIGTERM, [](int) { g_stop = true; });
  signal(SIGINT, [](int) { g_stop = true; });
}

}  // namespace

void Latencies::Add(int64_t sent_us, int64_t now_us) {
  if (ms.empty()) first_us = now_us;
  last_us = now_us;
  ms.push_back(static_cast<float>(now_us - sent_us) / 1000.0f);
}

void WriteLatencies(const Latencies& l, const std::string& file) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&l.first_us), sizeof l.first_us);
  out.write(reinterpret_cast<const char*>(&l.last_us), sizeof l.last_us);
  out.write(reinterpret_cast<const char*>(l.ms.data()), static_cast<std::streamsize>(l.ms.size() * sizeof(float)));
}

void WaitForTermination() {
  StopOnSignals();
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

int RunWsViewers(const std::vector<std::string>& urls, const std::string& source_ip, SentMicros sent,
                 const std::string& out_file) {
  using WsClient = websocketpp::client<websocketpp::config::asio_client>;
  StopOnSignals();  // before connecting: a signal during the wait below ends it
  WsClient client;
  client.clear_access_channels(websocketpp::log::alevel::all);
  client.clear_error_channels(websocketpp::log::elevel::all);
  client.init_asio();
  if (!source_ip.empty()) {
    client.set_socket_init_handler([source_ip](websocketpp::connection_hdl, asio::ip::tcp::socket& socket) {
      std::error_code ec;
      if (!socket.is_open()) socket.open(asio::ip::tcp::v4(), ec);
      socket.bind(asio::ip::tcp::endpoint(asio::ip::make_address(source_ip), 0), ec);
    });
  }
  std::atomic<int> open{0};
  std::atomic<int> failed{0};
  Latencies received;
  received.ms.reserve(1 << 22);
  // At most kHandshakesInFlight connections are opening at once, as a fleet of browsers
  // arrives: a server may refuse handshakes past a bound (push: 503 past
  // max_http_connections, 1024, CONTRACT §9), and a burst of thousands overflows the
  // kernel's accept queue, so connects would time out. Each open or failure starts the next.
  constexpr size_t kHandshakesInFlight = 200;
  size_t next = 0;
  std::map<std::string, int> failures;  // why connections failed, by reason (io thread)
  auto connect_next = [&] {
    while (next < urls.size()) {
      std::error_code ec;
      auto con = client.get_connection(urls[next++], ec);
      if (ec) {
        ++failures[ec.message()];
        failed.fetch_add(1);
        continue;
      }
      client.connect(con);
      return;
    }
  };
  client.set_open_handler([&](websocketpp::connection_hdl) {
    open.fetch_add(1);
    connect_next();
  });
  client.set_fail_handler([&](websocketpp::connection_hdl hdl) {
    std::error_code ec;
    WsClient::connection_ptr con = client.get_con_from_hdl(hdl, ec);
    ++failures[con ? con->get_ec().message() : "unknown"];
    failed.fetch_add(1);
    connect_next();
  });
  client.set_message_handler([&](websocketpp::connection_hdl, WsClient::message_ptr msg) {
    const int64_t at = sent(msg->get_payload());
    if (at >= 0) received.Add(at, NowMicros());
  });
  for (size_t i = 0; i < kHandshakesInFlight; ++i) connect_next();
  std::thread io([&] { client.run(); });
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (open.load() + failed.load() < static_cast<int>(urls.size()) && !g_stop && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::printf("ready %d\n", open.load());  // and the failures, by reason, on stderr at the end
  std::fflush(stdout);
  WaitForTermination();
  client.stop();
  io.join();
  for (const auto& [reason, n] : failures) std::fprintf(stderr, "viewers: %d connection(s) failed: %s\n", n, reason.c_str());
  WriteLatencies(received, out_file);
  return 0;
}

}  // namespace devbridge::bench
