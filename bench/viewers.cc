#include "bench/viewers.h"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
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
  Latencies received;
  received.ms.reserve(1 << 22);
  client.set_open_handler([&](websocketpp::connection_hdl) { open.fetch_add(1); });
  client.set_message_handler([&](websocketpp::connection_hdl, WsClient::message_ptr msg) {
    const int64_t at = sent(msg->get_payload());
    if (at >= 0) received.Add(at, NowMicros());
  });
  for (const std::string& url : urls) {
    std::error_code ec;
    auto con = client.get_connection(url, ec);
    if (!ec) client.connect(con);
  }
  std::thread io([&] { client.run(); });
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (open.load() < static_cast<int>(urls.size()) && !g_stop && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::printf("ready %d\n", open.load());
  std::fflush(stdout);
  WaitForTermination();
  client.stop();
  io.join();
  WriteLatencies(received, out_file);
  return 0;
}

}  // namespace devbridge::bench
