#include "tests/component/ws_client.h"

#include <websocketpp/client.hpp>
#include <websocketpp/config/asio_no_tls_client.hpp>

#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {

using Client = websocketpp::client<websocketpp::config::asio_client>;

struct WsClient::Impl {
  Client client;
  websocketpp::connection_hdl hdl;
  std::thread thread;
  mutable std::mutex mu;
  std::vector<nlohmann::json> frames;
  bool open = false;
  bool done = false;  // handshake failed or connection closed
  int http_status = 0;
  int close_code = 0;
};

WsClient::WsClient() : impl_(std::make_unique<Impl>()) {}

std::unique_ptr<WsClient> WsClient::Connect(int port, const std::string& query, absl::Duration timeout) {
  std::unique_ptr<WsClient> c(new WsClient());
  Impl* s = c->impl_.get();
  s->client.clear_access_channels(websocketpp::log::alevel::all);
  s->client.clear_error_channels(websocketpp::log::elevel::all);
  s->client.init_asio();
  s->client.set_open_handler([s](websocketpp::connection_hdl h) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->open = true;
    s->http_status = s->client.get_con_from_hdl(h)->get_response_code();
  });
  s->client.set_fail_handler([s](websocketpp::connection_hdl h) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->done = true;
    s->http_status = s->client.get_con_from_hdl(h)->get_response_code();
  });
  s->client.set_close_handler([s](websocketpp::connection_hdl h) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->done = true;
    s->open = false;
    s->close_code = s->client.get_con_from_hdl(h)->get_remote_close_code();
  });
  s->client.set_message_handler([s](websocketpp::connection_hdl, Client::message_ptr msg) {
    nlohmann::json j = nlohmann::json::parse(msg->get_payload(), nullptr, false);
    std::lock_guard<std::mutex> lock(s->mu);
    s->frames.push_back(std::move(j));
  });
  std::error_code ec;
  Client::connection_ptr con = s->client.get_connection(absl::StrCat("ws://127.0.0.1:", port, "/ws?", query), ec);
  if (ec) return c;
  s->hdl = con->get_handle();
  s->client.connect(con);
  s->thread = std::thread([s] { s->client.run(); });
  devbridge::testing::WaitFor(
      [s] {
        std::lock_guard<std::mutex> lock(s->mu);
        return s->open || s->done;
      },
      timeout);
  return c;
}

WsClient::~WsClient() {
  Close();
  impl_->client.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool WsClient::open() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->open;
}

int WsClient::http_status() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->http_status;
}

void WsClient::Send(const std::string& text) {
  std::error_code ec;
  impl_->client.send(impl_->hdl, text, websocketpp::frame::opcode::text, ec);
}

void WsClient::Close() {
  std::error_code ec;
  if (open()) {
    impl_->client.close(impl_->hdl, websocketpp::close::status::normal, "bye", ec);
    WaitClosed(absl::Seconds(2));
  }
}

bool WsClient::closed() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->done;
}

int WsClient::close_code() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->close_code;
}

std::vector<nlohmann::json> WsClient::Frames() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->frames;
}

std::vector<nlohmann::json> WsClient::Frames(const std::string& type) const {
  std::vector<nlohmann::json> out;
  for (auto& f : Frames()) {
    if (f.is_object() && f.value("type", "") == type) out.push_back(f);
  }
  return out;
}

nlohmann::json WsClient::WaitFor(const std::function<bool(const nlohmann::json&)>& match, absl::Duration timeout) const {
  nlohmann::json found;
  devbridge::testing::WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(impl_->mu);
        for (const auto& f : impl_->frames) {
          if (match(f)) {
            found = f;
            return true;
          }
        }
        return false;
      },
      timeout);
  return found;
}

nlohmann::json WsClient::WaitForType(const std::string& type, absl::Duration timeout) const {
  return WaitFor([&](const nlohmann::json& f) { return f.is_object() && f.value("type", "") == type; }, timeout);
}

bool WsClient::WaitClosed(absl::Duration timeout) const {
  return devbridge::testing::WaitFor([this] { return closed(); }, timeout);
}

}  // namespace devbridge::testing
