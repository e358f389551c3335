#include "services/push/ws/ws_server.h"

#include <websocketpp/config/asio_no_tls.hpp>
#include <websocketpp/concurrency/none.hpp>
#include <websocketpp/frame.hpp>
#include <websocketpp/server.hpp>

#include <atomic>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/log.h"
#include "common/metrics.h"

namespace devbridge::push {
namespace {

// Connections not (yet) WebSocket sessions, reading a request or answering plain HTTP, in
// this process (one replica per process in production; tests that run two share it). A
// process-wide count, because a connection can outlive its server's state at shutdown.
// Atomic, since two servers in one process run on two io threads.
std::atomic<size_t> http_connections{0};

// Each connection carries its id from the handshake on.
struct ConnectionData {
  ConnectionData() { ++http_connections; }
  ~ConnectionData() {
    if (!opened) --http_connections;
  }
  ConnectionData(const ConnectionData&) = delete;
  ConnectionData& operator=(const ConnectionData&) = delete;
  // Now a WebSocket session: no longer counted against max_http_connections.
  void MarkOpened() {
    if (!opened) --http_connections;
    opened = true;
  }

  uint64_t id = 0;
  bool opened = false;
  bool in_round = false;       // listed in the coming (or the running, if not reached yet) round
  bool close_queued = false;   // Close() was called: later sends are dropped
  size_t queued_bytes = 0;     // bytes of `queued`
  // Frames waiting for this connection's turn in a round of writes, as websocketpp messages.
  std::vector<websocketpp::config::asio::message_type::ptr> queued;
};

// One io thread runs the server, so websocketpp needs neither locks nor strands.
struct Config : public websocketpp::config::asio {
  using core = websocketpp::config::asio;
  using concurrency_type = websocketpp::concurrency::none;
  using request_type = core::request_type;
  using response_type = core::response_type;
  using message_type = core::message_type;
  using con_msg_manager_type = core::con_msg_manager_type;
  using endpoint_msg_manager_type = core::endpoint_msg_manager_type;
  using alog_type = core::alog_type;
  using elog_type = core::elog_type;
  using rng_type = core::rng_type;
  struct transport_config : public core::transport_config {
    using concurrency_type = websocketpp::concurrency::none;
    static bool const enable_multithreading = false;
  };
  using transport_type = websocketpp::transport::asio::endpoint<transport_config>;
  using endpoint_base = core::endpoint_base;
  using connection_base = ConnectionData;
  // The read buffer lives inside every connection object. Client frames are small (pings,
  // joins, commands), and larger ones are simply read in several steps, so 512 bytes keep an
  // idle connection small (websocketpp's default, 16 KiB, would dominate its memory).
  static const size_t connection_read_buffer_size = 512;
};

using Server = websocketpp::server<Config>;
using ConnectionPtr = Server::connection_ptr;

constexpr int kCloseNoPong = 4010;
// The most a round of writes waits because the previous one was long (Schedule()).
constexpr std::chrono::milliseconds kMaxAdaptiveSpacing{25};
// Connections a round writes before letting other handlers run (see Schedule()): about a
// millisecond of writes on loopback.
constexpr size_t kConnectionsPerStep = 64;

// Runs a websocketpp handler's body. Our handlers do not throw by design; should one throw
// anyway (a bug), the exception is logged and counted here instead of unwinding through
// websocketpp and Asio and ending the process with every connection on it.
template <typename F>
bool Guard(const char* where, common::Counter* errors, F&& body) {
  try {
    body();
    return true;
  } catch (const std::exception& e) {
    common::Logger("push.ws")->error("{} handler failed: {}", where, e.what());
  } catch (...) {
    common::Logger("push.ws")->error("{} handler failed with an unknown exception", where);
  }
  if (errors != nullptr) errors->Inc();
  return false;
}

}  // namespace

struct WsServer::Impl {
  struct Close {
    ConnectionPtr con;
    int code = 0;
    std::string reason;
  };

  Impl(asio::io_context& io_context, WsOptions o, WsHandler* h) : io(io_context), options(std::move(o)), handler(h) {}

  ConnectionPtr Find(uint64_t id) {
    auto it = conns.find(id);
    return it == conns.end() ? nullptr : it->second;
  }

  // Sends and closes are queued and carried out together in rounds, after the current
  // handler: frames for one connection that pile up before its turn go out in one write.
  // A round hands its connections' frames to websocketpp a step of kConnectionsPerStep
  // connections at a time; each step's writes run before the next step, and so does whatever
  // else became ready meanwhile (an HTTP request, a client frame, an event from upstream), so
  // a round of thousands of writes never holds the io thread for more than about a
  // millisecond at once. The round ends when a marker posted after its last writes runs. The
  // next round starts at once unless the previous one ended less than its own length ago (or
  // less than flush_interval ago): then it waits for that. Idle, a round of a few sockets
  // takes microseconds and a frame goes out at once; under a heavy fan-out a round takes
  // milliseconds, and what arrives meanwhile is coalesced into the next one: writing takes at
  // most about half of the io thread.
  void Schedule() {
    if (flush_scheduled) return;
    flush_scheduled = true;
    if (!round_running) ScheduleRound();  // else RoundEnded() does
  }

  void ScheduleRound() {
    using Duration = std::chrono::steady_clock::duration;
    const Duration spacing = std::max<Duration>(absl::ToChronoNanoseconds(options.flush_interval),
                                                std::min<Duration>(last_round_cost, kMaxAdaptiveSpacing));
    const auto due = last_flush + spacing;
    if (std::chrono::steady_clock::now() >= due) {
      asio::post(io, [this] { Flush(); });
      return;
    }
    flush_timer->expires_at(due);
    flush_timer->async_wait([this](std::error_code ec) {
      if (!ec) Flush();
    });
  }

  void Flush() {
    flush_scheduled = false;
    round_running = true;
    round_start = std::chrono::steady_clock::now();
    round.swap(waiting);
    round_closes.swap(waiting_closes);
    round_next = 0;
    WriteStep();
  }

  void WriteStep() {
    const size_t end = std::min(round.size(), round_next + kConnectionsPerStep);
    for (; round_next < end; ++round_next) Write(*round[round_next]);
    if (round_next < round.size()) {
      asio::post(io, [this] { WriteStep(); });  // after this step's writes
      return;
    }
    round.clear();
    CloseAll(round_closes);
    asio::post(io, [this] { RoundEnded(); });  // after the writes just posted
  }

  // After the frames queued before them.
  static void CloseAll(std::vector<Close>& closes) {
    for (Close& c : closes) {
      std::error_code ec;
      c.con->close(static_cast<websocketpp::close::status::value>(c.code), c.reason, ec);
    }
    closes.clear();
  }

  // Hands a connection's queued frames to websocketpp, which writes them together.
  void Write(Server::connection_type& con) {
    con.in_round = false;
    for (const auto& msg : con.queued) con.send(msg);
    con.queued.clear();
    if (con.queued.capacity() > 16) con.queued.shrink_to_fit();  // after a burst; idle ones stay small
    con.queued_bytes = 0;
  }

  void RoundEnded() {
    round_running = false;
    last_flush = std::chrono::steady_clock::now();
    last_round_cost = last_flush - round_start;
    if (flush_scheduled) ScheduleRound();
  }

  // GET /ws: the path, then the handler's checks. True to upgrade.
  bool Validate(const ConnectionPtr& con) {
    if (http_connections > options.max_http_connections) {
      con->set_status(websocketpp::http::status_code::service_unavailable);
      con->set_body("{\"code\":503,\"msg\":\"too many connections\"}");
      return false;
    }
    const std::string resource = con->get_resource();
    const size_t q = resource.find('?');
    const std::string path = resource.substr(0, q);
    if (path != "/ws") {
      con->set_status(websocketpp::http::status_code::not_found);
      con->set_body("{\"code\":404,\"msg\":\"WebSocket endpoint is /ws\"}");
      return false;
    }
    con->id = next_id++;
    auto refusal = handler->OnHandshake(con->id, q == std::string::npos ? "" : resource.substr(q + 1),
                                        con->get_request_header("Origin"));
    if (refusal) {
      con->set_status(static_cast<websocketpp::http::status_code::value>(refusal->first));
      std::string body = absl::StrCat("{\"code\":", refusal->first, ",\"msg\":");
      common::AppendJsonString(&body, refusal->second);
      body += "}";
      con->set_body(body);
      con->append_header("Content-Type", "application/json");
      return false;
    }
    conns[con->id] = con;
    return true;
  }

  void Open(const ConnectionPtr& con) {
    con->MarkOpened();
    // websocketpp keeps the handshake's request and response (header maps and strings, about
    // 1 KiB) for the connection's whole life, though nothing reads them after the upgrade:
    // OnHandshake took what it needed. Dropping them keeps idle connections small.
    const_cast<Config::request_type&>(con->get_request()) = Config::request_type();
    const_cast<Config::response_type&>(con->get_response()) = Config::response_type();
    handler->OnOpen(con->id);
  }

  // Any other request; the response is deferred until the handler replies.
  void Http(const ConnectionPtr& con) {
    // The reply keeps the connection alive: a deferred response has no pending I/O holding it.
    auto reply = [con](const httpd::Response& response) {
      std::error_code e;
      con->set_status(static_cast<websocketpp::http::status_code::value>(response.status));
      con->append_header("Content-Type", response.content_type);
      con->set_body(response.body);
      con->send_http_response(e);
    };
    if (http_connections > options.max_http_connections) {
      return reply({503, "application/json", "{\"code\":503,\"msg\":\"too many connections\",\"data\":null}"});
    }
    const auto& raw = con->get_request();
    // websocketpp reads a body by Content-Length only (a chunked body would be left unread and
    // the request seen as empty) and joins a repeated header into "a, b": refuse both.
    auto header = [&raw](const char* name) -> std::optional<std::string> {
      std::string value = raw.get_header(name);
      if (value.empty()) return std::nullopt;
      return value;
    };
    size_t length = 0;
    if (absl::Status framing = httpd::CheckBodyFraming(header("Transfer-Encoding"), header("Content-Length"), &length);
        !framing.ok()) {
      const int status = httpd::StatusOfError(framing);
      std::string body = absl::StrCat("{\"code\":", status, ",\"msg\":");
      common::AppendJsonString(&body, framing.message().substr(4));
      body += ",\"data\":null}";
      return reply({status, "application/json", body});
    }
    httpd::Request request;
    request.method = raw.get_method();
    if (request.method == "POST" && !header("Content-Length")) {
      return reply({400, "application/json", "{\"code\":400,\"msg\":\"Content-Length is required\",\"data\":null}"});
    }
    const std::string resource = con->get_resource();
    const size_t q = resource.find('?');
    request.path = resource.substr(0, q);
    if (q != std::string::npos) request.query = resource.substr(q + 1);
    for (const auto& [name, value] : raw.get_headers()) {
      request.headers[absl::AsciiStrToLower(name)] = value;
    }
    request.body = con->get_request_body();
    handler->OnHttp(request, std::move(reply));
  }

  void ArmPing() {
    ping_timer->expires_after(absl::ToChronoMilliseconds(options.ping_interval));
    ping_timer->async_wait([this](std::error_code ec) {
      if (ec) return;
      for (const auto& [id, con] : conns) {
        std::error_code e;
        if (con->get_state() == websocketpp::session::state::open) con->ping("", e);
      }
      ArmPing();
    });
  }

  asio::io_context& io;
  WsOptions options;
  WsHandler* handler;
  Server server;
  uint64_t next_id = 1;
  absl::flat_hash_map<uint64_t, ConnectionPtr> conns;  // validated until closed
  // Connections with frames queued, and closes, for the coming round; then for the running one.
  std::vector<ConnectionPtr> waiting, round;
  std::vector<Close> waiting_closes, round_closes;
  size_t round_next = 0;  // the first connection of `round` not written yet
  std::chrono::steady_clock::time_point round_start;
  bool flush_scheduled = false;  // a round is due (posted, on the timer, or after the running one)
  bool round_running = false;    // a round's writes are posted and not all done
  bool nodelay_warned = false;
  std::chrono::steady_clock::time_point last_flush;      // when the last round of writes ended
  std::chrono::steady_clock::duration last_round_cost{};  // and how long it took
  std::unique_ptr<asio::steady_timer> flush_timer;
  std::unique_ptr<asio::steady_timer> ping_timer;
  bool shut_down = false;
  // The last frame sent and its prepared message (see Send).
  std::shared_ptr<const std::string> prepared_for;
  Server::message_ptr prepared;
};

absl::StatusOr<std::unique_ptr<WsServer>> WsServer::Start(asio::io_context& io, WsOptions options, WsHandler* handler) {
  auto impl = std::make_unique<Impl>(io, std::move(options), handler);
  Impl* s = impl.get();
  Server& server = s->server;
  server.clear_access_channels(websocketpp::log::alevel::all);
  server.clear_error_channels(websocketpp::log::elevel::all);
  std::error_code ec;
  server.init_asio(&io, ec);
  if (ec) return absl::InternalError(absl::StrCat("websocketpp init: ", ec.message()));
  server.set_reuse_addr(true);
  server.set_user_agent("");  // no Server header, and no copy of it in every connection
  server.set_max_message_size(s->options.max_message_bytes);
  server.set_max_http_body_size(s->options.max_http_body_bytes);
  server.set_listen_backlog(4096);
  server.set_pong_timeout(static_cast<long>(absl::ToInt64Milliseconds(s->options.pong_timeout)));

  // Frames go out when written (as Node's ws does): Nagle's algorithm would hold a small
  // frame back while the client's delayed ACK of the previous one is pending, up to 40 ms.
  // Set once the connection is accepted: websocketpp's socket_init handler runs before the
  // socket is open, where setting an option fails (measured: p50 device → browser 15 ms at
  // 1,000 frames/s with it there, the write path's share of it ~12 ms).
  server.set_tcp_pre_init_handler([s](const websocketpp::connection_hdl& hdl) {
    std::error_code e;
    ConnectionPtr con = s->server.get_con_from_hdl(hdl, e);
    if (!e) con->get_raw_socket().set_option(asio::ip::tcp::no_delay(true), e);
    if (e && !s->nodelay_warned) {  // once: a peer that is already gone fails it too
      s->nodelay_warned = true;
      common::Logger("push.ws")->warn("cannot set TCP_NODELAY on a connection: {}", e.message());
    }
  });
  server.set_validate_handler([s](const websocketpp::connection_hdl& hdl) {
    bool accepted = false;
    ConnectionPtr con = s->server.get_con_from_hdl(hdl);
    const bool ok = Guard("handshake", s->options.handler_errors, [&] { accepted = s->Validate(con); });
    if (!ok) {
      con->set_status(websocketpp::http::status_code::internal_server_error);
      con->set_body("{\"code\":500,\"msg\":\"internal error\"}");
    }
    return ok && accepted;
  });
  server.set_open_handler([s](const websocketpp::connection_hdl& hdl) {
    ConnectionPtr con = s->server.get_con_from_hdl(hdl);
    Guard("open", s->options.handler_errors, [&] { s->Open(con); });
  });
  server.set_message_handler([s](const websocketpp::connection_hdl& hdl, const Server::message_ptr& msg) {
    ConnectionPtr con = s->server.get_con_from_hdl(hdl);
    Guard("message", s->options.handler_errors, [&] { s->handler->OnMessage(con->id, msg->get_payload()); });
  });
  auto closed = [s](const websocketpp::connection_hdl& hdl) {
    std::error_code e;
    ConnectionPtr con = s->server.get_con_from_hdl(hdl, e);
    if (e || con->id == 0) return;
    if (s->conns.erase(con->id) > 0) Guard("close", s->options.handler_errors, [&] { s->handler->OnClose(con->id); });
  };
  server.set_close_handler(closed);
  server.set_fail_handler(closed);
  server.set_pong_timeout_handler([s](const websocketpp::connection_hdl& hdl, const std::string&) {
    std::error_code e;
    ConnectionPtr con = s->server.get_con_from_hdl(hdl, e);
    if (!e) con->close(kCloseNoPong, "no pong", e);
  });
  server.set_http_handler([s](const websocketpp::connection_hdl& hdl) {
    ConnectionPtr con = s->server.get_con_from_hdl(hdl);
    con->defer_http_response();
    if (!Guard("http", s->options.handler_errors, [&] { s->Http(con); })) {
      std::error_code e;
      con->set_status(websocketpp::http::status_code::internal_server_error);
      con->set_body("{\"code\":500,\"msg\":\"internal error\"}");
      con->send_http_response(e);
    }
  });

  auto hp = httpd::SplitHostPort(s->options.listen);
  if (!hp.ok()) return hp.status();
  const asio::ip::address address = asio::ip::make_address(hp->first, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad host in \"", s->options.listen, "\""));
  server.listen(asio::ip::tcp::endpoint(address, static_cast<uint16_t>(hp->second)), ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", s->options.listen, ": ", ec.message()));
  server.start_accept(ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot accept on ", s->options.listen, ": ", ec.message()));
  s->flush_timer = std::make_unique<asio::steady_timer>(io);
  s->ping_timer = std::make_unique<asio::steady_timer>(io);
  s->ArmPing();
  return std::unique_ptr<WsServer>(new WsServer(std::move(impl)));
}

WsServer::WsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WsServer::~WsServer() = default;

int WsServer::port() const {
  std::error_code ec;
  auto ep = impl_->server.get_local_endpoint(ec);
  return ec ? 0 : ep.port();
}

size_t WsServer::Send(uint64_t conn, const std::shared_ptr<const std::string>& text) {
  ConnectionPtr con = impl_->Find(conn);
  if (!con) return 0;
  // A fan-out sends the same frame to many connections in a row: frame it once (a server
  // frame is unmasked, so it is the same for all) and queue the one message everywhere.
  if (impl_->prepared_for != text) {
    Server::message_ptr msg = con->get_message(websocketpp::frame::opcode::text, 0);
    websocketpp::frame::basic_header header(websocketpp::frame::opcode::text, text->size(), true, false);
    websocketpp::frame::extended_header extended(text->size());
    msg->set_header(websocketpp::frame::prepare_header(header, extended));
    msg->set_payload(*text);
    msg->set_prepared(true);
    impl_->prepared = std::move(msg);
    impl_->prepared_for = text;
  }
  if (con->close_queued) return 0;
  con->queued.push_back(impl_->prepared);
  con->queued_bytes += text->size();
  if (!con->in_round) {
    con->in_round = true;
    impl_->waiting.push_back(con);
  }
  impl_->Schedule();
  // What waits for this client now: what websocketpp holds plus the frames not yet handed
  // over, so a slow consumer is caught as its queue grows, not a round later.
  return con->get_buffered_amount() + con->queued_bytes;
}

void WsServer::Close(uint64_t conn, int code, const std::string& reason) {
  ConnectionPtr con = impl_->Find(conn);
  if (!con || con->close_queued) return;
  con->close_queued = true;
  impl_->waiting_closes.push_back({con, code, reason});
  impl_->Schedule();
}

void WsServer::Shutdown() {
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  std::error_code ec;
  impl_->server.stop_listening(ec);
  if (impl_->ping_timer) impl_->ping_timer->cancel();
  if (impl_->flush_timer) impl_->flush_timer->cancel();
  std::vector<uint64_t> ids;
  for (const auto& [id, con] : impl_->conns) ids.push_back(id);
  for (uint64_t id : ids) Close(id, websocketpp::close::status::going_away, "server shutting down");
  // Everything queued goes now, the rest of a running round included.
  Impl& s = *impl_;
  for (; s.round_next < s.round.size(); ++s.round_next) s.Write(*s.round[s.round_next]);
  s.round.clear();
  for (const ConnectionPtr& con : s.waiting) s.Write(*con);
  s.waiting.clear();
  Impl::CloseAll(s.round_closes);
  Impl::CloseAll(s.waiting_closes);
}

size_t WsServer::open_connections() const { return impl_->conns.size(); }

}  // namespace devbridge::push
