#include "mqtt/client.h"

#include <MQTTAsync.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <random>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace devbridge::mqtt {
namespace {

constexpr int kConnectTimeoutSeconds = 5;

// Paho MQTT C leaves Nagle's algorithm on. A QoS 1 exchange then stalls: the PUBACK we
// send for a message leaves our next small PUBLISH waiting for the broker's delayed ACK
// (~40 ms on Linux). Paho has no option for it, so after each connect we set TCP_NODELAY
// on this process's TCP sockets connected to the broker's port. The option only changes
// when segments are sent.
void DisableNagleTowards(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  while (dirent* entry = readdir(dir)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2) continue;
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    int peer_port = -1;
    if (peer.ss_family == AF_INET) peer_port = ntohs(reinterpret_cast<sockaddr_in*>(&peer)->sin_port);
    if (peer.ss_family == AF_INET6) peer_port = ntohs(reinterpret_cast<sockaddr_in6*>(&peer)->sin6_port);
    if (peer_port != port) continue;
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  closedir(dir);
}

}  // namespace

// The broker's port in `url` ("tcp://host:1883", "ssl://[::1]:8883", "host"), or the
// scheme's default when the URL names none.
int PortOf(const std::string& url) {
  const size_t scheme_end = url.find("://");
  const std::string scheme = scheme_end == std::string::npos ? "tcp" : url.substr(0, scheme_end);
  const std::string rest = scheme_end == std::string::npos ? url : url.substr(scheme_end + 3);
  const size_t bracket = rest.rfind(']');  // an IPv6 address holds colons of its own
  const size_t colon = rest.rfind(':');
  int port = 0;
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket) &&
      absl::SimpleAtoi(rest.substr(colon + 1), &port) && port > 0 && port < 65536) {
    return port;
  }
  return scheme == "ssl" || scheme == "mqtts" ? 8883 : scheme == "ws" ? 80 : scheme == "wss" ? 443 : 1883;
}

namespace {

std::string PahoError(int rc) {
  const char* text = MQTTAsync_strerror(rc);
  return absl::StrCat(text ? text : "error", " (", rc, ")");
}

}  // namespace

// Paho's callbacks, with exactly the function types Paho declares (calling a function
// through a pointer of another type is undefined behaviour). Nothing may escape them as an
// exception: it would unwind through Paho's C threads.
struct PahoCallbacks {
  static int MessageArrived(void* context, char* topic, int topic_len, MQTTAsync_message* message) {
    auto* self = static_cast<Client*>(context);
    const absl::string_view topic_view(topic, topic_len > 0 ? static_cast<size_t>(topic_len) : strlen(topic));
    const absl::string_view payload(static_cast<const char*>(message->payload),
                                    static_cast<size_t>(message->payloadlen));
    try {
      self->OnMessageArrived(topic_view, payload, message->qos, message->dup != 0, message->msgid);
    } catch (const std::exception& e) {
      common::Logger(self->options_.log_name)->error("message on {} dropped: {}", topic_view, e.what());
    }
    MQTTAsync_freeMessage(&message);
    MQTTAsync_free(topic);
    return 1;
  }
  static void ConnectionLost(void* context, char* cause) { static_cast<Client*>(context)->OnConnectionLost(cause); }
  static void ConnectSuccess(void* context, MQTTAsync_successData* /*response*/) {
    static_cast<Client*>(context)->OnConnectSuccess();
  }
  static void ConnectFailure(void* context, MQTTAsync_failureData* response) {
    static_cast<Client*>(context)->OnConnectFailure(response != nullptr ? response->message : nullptr,
                                                     response != nullptr ? response->code : -1);
  }
  // Context: a heap DeliveryHandler, deleted by whichever of the two runs.
  static void PublishSuccess(void* context, MQTTAsync_successData* /*response*/) { Deliver(context, true); }
  static void PublishFailure(void* context, MQTTAsync_failureData* /*response*/) { Deliver(context, false); }
  static void Deliver(void* context, bool delivered) {
    std::unique_ptr<DeliveryHandler> on_done(static_cast<DeliveryHandler*>(context));
    try {
      (*on_done)(delivered);
    } catch (const std::exception&) {
      // Nothing may unwind through Paho.
    }
  }
  static void SubscribeFailure(void* context, MQTTAsync_failureData* response) {
    static_cast<Client*>(context)->OnSubscribeFailure(response != nullptr ? response->code : -1);
  }
  // MQTT 5: Paho calls these instead, with reason codes (a v5 client must not be given the
  // callbacks above).
  static void ConnectSuccess5(void* context, MQTTAsync_successData5* /*response*/) {
    static_cast<Client*>(context)->OnConnectSuccess();
  }
  static void ConnectFailure5(void* context, MQTTAsync_failureData5* response) {
    std::string reason;
    if (response != nullptr && response->reasonCode != MQTTREASONCODE_SUCCESS) {
      reason = absl::StrCat(MQTTReasonCode_toString(response->reasonCode), response->message ? ": " : "",
                            response->message ? response->message : "");
    }
    static_cast<Client*>(context)->OnConnectFailure(reason.empty() ? (response ? response->message : nullptr)
                                                                    : reason.c_str(),
                                                    response != nullptr ? response->code : -1);
  }
  static void PublishSuccess5(void* context, MQTTAsync_successData5* response) {
    // A PUBACK may carry a refusal (reason code 0x80 or more: not authorised, quota exceeded).
    Deliver(context, response == nullptr || response->reasonCode < MQTTREASONCODE_UNSPECIFIED_ERROR);
  }
  static void PublishFailure5(void* context, MQTTAsync_failureData5* /*response*/) { Deliver(context, false); }
  static void SubscribeSuccess5(void* context, MQTTAsync_successData5* response) {
    if (response == nullptr) return;
    // Granted QoS per filter, or a refusal (0x80 and up) for some. Paho fills the array only
    // for more than one filter (1.3.11); for one, the code is in reasonCode.
    if (response->alt.sub.reasonCodeCount > 1) {
      for (int i = 0; i < response->alt.sub.reasonCodeCount; ++i) {
        if (response->alt.sub.reasonCodes[i] >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
          static_cast<Client*>(context)->OnSubscribeFailure(response->alt.sub.reasonCodes[i]);
        }
      }
    } else if (response->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
      static_cast<Client*>(context)->OnSubscribeFailure(response->reasonCode);
    }
  }
  static void SubscribeFailure5(void* context, MQTTAsync_failureData5* response) {
    static_cast<Client*>(context)->OnSubscribeFailure(response != nullptr ? response->reasonCode : -1);
  }
  static int TlsError(const char* text, size_t len, void* context) {
    static_cast<Client*>(context)->OnTlsError(absl::string_view(text, len));
    return 0;
  }
};

absl::StatusOr<int> ParseVersion(absl::string_view text) {
  if (text == "3.1") return MQTTVERSION_3_1;
  if (text == "3.1.1") return MQTTVERSION_3_1_1;
  if (text == "5") return MQTTVERSION_5;
  return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" is not an MQTT version (3.1, 3.1.1 or 5)"));
}

bool IsTlsUrl(absl::string_view url) { return absl::StartsWith(url, "ssl://") || absl::StartsWith(url, "mqtts://"); }

absl::StatusOr<std::unique_ptr<Client>> Client::Create(Options options, MessageHandler on_message,
                                                       StateHandler on_state) {
  if (options.client_id.empty()) return absl::InvalidArgumentError("MQTT client id is empty");
  const Transport& t = options.transport;
  if (!IsTlsUrl(options.url) && (!t.ca_file.empty() || !t.cert_file.empty() || !t.key_file.empty())) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS files are set but ", options.url, " is not a TLS URL (ssl://HOST:PORT or mqtts://HOST:PORT)"));
  }
  if (t.cert_file.empty() != t.key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate needs both its certificate and its key file");
  }
  for (const std::string* file : {&t.ca_file, &t.cert_file, &t.key_file}) {
    if (!file->empty() && ::access(file->c_str(), R_OK) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot read ", *file, ": ", std::strerror(errno)));
    }
  }
  if (t.version != MQTTVERSION_3_1 && t.version != MQTTVERSION_3_1_1 && t.version != MQTTVERSION_5) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported MQTT protocol level ", t.version));
  }
  std::unique_ptr<Client> client(new Client(std::move(options), std::move(on_message), std::move(on_state)));
  MQTTAsync_createOptions create = MQTTAsync_createOptions_initializer;
  create.sendWhileDisconnected = 1;
  create.maxBufferedMessages = client->options_.max_buffered;
  create.MQTTVersion = client->options_.transport.version == MQTTVERSION_5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
  MQTTAsync handle = nullptr;
  int rc = MQTTAsync_createWithOptions(&handle, client->options_.url.c_str(),
                                       client->options_.client_id.c_str(), MQTTCLIENT_PERSISTENCE_NONE,
                                       nullptr, &create);
  if (rc != MQTTASYNC_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create MQTT client for ", client->options_.url, ": ", PahoError(rc)));
  }
  client->client_ = handle;
  rc = MQTTAsync_setCallbacks(handle, client.get(), &PahoCallbacks::ConnectionLost, &PahoCallbacks::MessageArrived,
                              nullptr);
  if (rc != MQTTASYNC_SUCCESS) return absl::InternalError(absl::StrCat("MQTTAsync_setCallbacks: ", PahoError(rc)));
  return client;
}

Client::Client(Options options, MessageHandler on_message, StateHandler on_state)
    : options_(std::move(options)),
      on_message_(std::move(on_message)),
      on_state_(std::move(on_state)),
      backoff_(options_.min_backoff) {}

Client::~Client() {
  Stop();
  if (client_ != nullptr) {
    MQTTAsync handle = client_;
    MQTTAsync_destroy(&handle);
  }
}

void Client::Start() {
  {
    common::MutexLock lock(&mu_);
    if (supervisor_.joinable()) return;
    want_connect_ = true;
  }
  supervisor_ = std::thread([this] { Supervise(); });
}

void Client::Stop(absl::Duration timeout) {
  {
    common::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.NotifyAll();
  if (supervisor_.joinable()) supervisor_.join();
  {
    // A connect still in flight would otherwise complete after Stop() and stay connected.
    common::MutexLock lock(&mu_);
    cv_.WaitFor(&mu_, timeout, [this] {
      mu_.AssertHeld();
      return !connecting_;
    });
  }
  if (client_ != nullptr && MQTTAsync_isConnected(client_)) {
    MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer;
    opts.timeout = static_cast<int>(absl::ToInt64Milliseconds(timeout));
    MQTTAsync_disconnect(client_, &opts);
    const absl::Time deadline = absl::Now() + timeout;
    while (MQTTAsync_isConnected(client_) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  }
  SetConnected(false);
}

void Client::Supervise() {
  auto log = common::Logger(options_.log_name);
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  bool first = true;
  mu_.Lock();
  while (!stopping_) {
    cv_.Wait(&mu_, [this] {
      mu_.AssertHeld();
      return stopping_ || (want_connect_ && !connecting_ && !paused_);
    });
    if (stopping_) break;
    if (!first) {
      // Back off before every attempt after the first: exponential with jitter. This also
      // lets Paho finish handling a lost connection before we connect again.
      const absl::Duration wait = backoff_ * jitter(rng);
      backoff_ = std::min(backoff_ * 2, options_.max_backoff);
      const bool stopped = cv_.WaitFor(&mu_, wait, [this] {
        mu_.AssertHeld();
        return stopping_;
      });
      if (stopped) break;
      if (paused_) continue;
    }
    first = false;
    want_connect_ = false;
    connecting_ = true;
    mu_.Unlock();
    const bool v5 = options_.transport.version == MQTTVERSION_5;
    MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions opts5 = MQTTAsync_connectOptions_initializer5;
    if (v5) opts = opts5;
    opts.keepAliveInterval = options_.keepalive_seconds;
    // A session the broker keeps while we are away: MQTT 3.1.1's clean session false; MQTT 5's
    // clean start false with a session expiry interval (0 would end it at the disconnect).
    MQTTProperties props = MQTTProperties_initializer;
    if (v5) {
      opts.cleanstart = options_.clean_session ? 1 : 0;
      if (!options_.clean_session) {
        MQTTProperty expiry;
        expiry.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
        expiry.value.integer4 = 0xFFFFFFFF;  // never: as long as a 3.1.1 persistent session
        MQTTProperties_add(&props, &expiry);
        opts.connectProperties = &props;
      }
    } else {
      opts.cleansession = options_.clean_session ? 1 : 0;
    }
    opts.maxInflight = options_.max_inflight;
    opts.connectTimeout = kConnectTimeoutSeconds;
    opts.automaticReconnect = 0;  // we reconnect ourselves, with our own backoff
    if (!options_.username.empty()) opts.username = options_.username.c_str();
    if (!options_.password.empty()) opts.password = options_.password.c_str();
    if (v5) {
      opts.onSuccess5 = &PahoCallbacks::ConnectSuccess5;
      opts.onFailure5 = &PahoCallbacks::ConnectFailure5;
    } else {
      opts.onSuccess = &PahoCallbacks::ConnectSuccess;
      opts.onFailure = &PahoCallbacks::ConnectFailure;
    }
    opts.context = this;
    opts.MQTTVersion = options_.transport.version;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    if (IsTlsUrl(options_.url)) {
      const Transport& t = options_.transport;
      if (!t.ca_file.empty()) ssl.trustStore = t.ca_file.c_str();
      if (!t.cert_file.empty()) ssl.keyStore = t.cert_file.c_str();
      if (!t.key_file.empty()) ssl.privateKey = t.key_file.c_str();
      ssl.enableServerCertAuth = t.insecure ? 0 : 1;
      ssl.verify = t.insecure ? 0 : 1;  // the broker's name must match its certificate
      ssl.ssl_error_cb = &PahoCallbacks::TlsError;
      ssl.ssl_error_context = this;
      opts.ssl = &ssl;
    }
    const int rc = MQTTAsync_connect(client_, &opts);
    MQTTProperties_free(&props);  // Paho copied them
    mu_.Lock();
    if (rc != MQTTASYNC_SUCCESS) {
      log->warn("connect to {} could not start: {}", options_.url, PahoError(rc));
      connecting_ = false;
      want_connect_ = true;
      continue;
    }
    // Watchdog: a connect that neither succeeds nor fails in time is retried.
    const bool settled = cv_.WaitFor(&mu_, absl::Seconds(kConnectTimeoutSeconds + 3), [this] {
      mu_.AssertHeld();
      return stopping_ || !connecting_;
    });
    if (!settled) {
      log->warn("connect to {} did not complete; retrying", options_.url);
      connecting_ = false;
      want_connect_ = true;
    }
  }
  mu_.Unlock();
}

void Client::RequestConnect() {
  {
    common::MutexLock lock(&mu_);
    connecting_ = false;
    want_connect_ = true;
  }
  cv_.NotifyAll();
}

void Client::SetConnected(bool connected) {
  if (connected_.exchange(connected) != connected && on_state_) on_state_(connected);
}

absl::Status Client::Publish(absl::string_view topic, absl::string_view payload, int qos,
                             bool retained) {
  return Publish(topic, payload, qos, retained, nullptr);
}

absl::Status Client::Publish(absl::string_view topic, absl::string_view payload, int qos, bool retained,
                             DeliveryHandler on_done) {
  MQTTAsync_message msg = MQTTAsync_message_initializer;
  msg.payload = const_cast<char*>(payload.data());
  msg.payloadlen = static_cast<int>(payload.size());
  msg.qos = qos;
  msg.retained = retained ? 1 : 0;
  const std::string topic_z(topic);
  MQTTAsync_responseOptions response = MQTTAsync_responseOptions_initializer;
  DeliveryHandler* context = nullptr;
  if (on_done) {
    context = new DeliveryHandler(std::move(on_done));
    if (options_.transport.version == MQTTVERSION_5) {
      response.onSuccess5 = &PahoCallbacks::PublishSuccess5;
      response.onFailure5 = &PahoCallbacks::PublishFailure5;
    } else {
      response.onSuccess = &PahoCallbacks::PublishSuccess;
      response.onFailure = &PahoCallbacks::PublishFailure;
    }
    response.context = context;
  }
  const int rc = MQTTAsync_sendMessage(client_, topic_z.c_str(), &msg, context != nullptr ? &response : nullptr);
  if (rc != MQTTASYNC_SUCCESS) {
    delete context;  // Paho took no callback
    return absl::UnavailableError(absl::StrCat("MQTT publish to ", topic, ": ", PahoError(rc)));
  }
  return absl::OkStatus();
}

void Client::Pause() {
  if (paused_.exchange(true)) return;
  common::Logger(options_.log_name)->warn("pausing intake: disconnecting from {}; the broker keeps QoS 1 messages", options_.url);
  MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer;
  opts.timeout = 0;
  MQTTAsync_disconnect(client_, &opts);
  SetConnected(false);
}

void Client::Resume() {
  if (!paused_.exchange(false)) return;
  common::Logger(options_.log_name)->info("resuming intake from {}", options_.url);
  {
    common::MutexLock lock(&mu_);
    backoff_ = options_.min_backoff;
  }
  RequestConnect();
}

void Client::OnMessageArrived(absl::string_view topic, absl::string_view payload, int qos, bool dup,
                              int packet_id) {
  if (dup) dup_flagged_.fetch_add(1);
  if (qos > 0 && options_.drop_redeliveries && packet_id > 0 && packet_id <= 65535) {
    common::MutexLock lock(&redelivery_mu_);
    // Recorded before the handler runs: Paho delivers one message at a time, so its
    // redelivery cannot overtake it.
    if (redeliveries_.Redelivered(static_cast<uint16_t>(packet_id), dup, topic, payload)) {
      duplicates_.fetch_add(1);
      return;
    }
  }
  on_message_(topic, payload, qos > 0 && packet_id > 0 && packet_id <= 65535 ? static_cast<uint16_t>(packet_id) : 0,
              dup);
}

void Client::RememberTaken(uint16_t packet_id, absl::string_view topic, absl::string_view payload) {
  common::MutexLock lock(&redelivery_mu_);
  redeliveries_.Taken(packet_id, topic, payload);
}

void Client::OnConnectionLost(const char* cause) {
  SetConnected(false);
  if (paused_) return;
  if (!options_.reconnect) {
    lost_ = true;
    common::Logger(options_.log_name)
        ->warn("connection to {} lost{}{}; not connecting again", options_.url, cause ? ": " : "", cause ? cause : "");
    return;
  }
  common::Logger(options_.log_name)
      ->warn("connection to {} lost{}{}; reconnecting", options_.url, cause ? ": " : "", cause ? cause : "");
  RequestConnect();
}

void Client::OnConnectSuccess() {
  auto log = common::Logger(options_.log_name);
  bool stopping = false;
  {
    common::MutexLock lock(&mu_);
    connecting_ = false;
    backoff_ = options_.min_backoff;
    stopping = stopping_;
  }
  cv_.NotifyAll();
  if (stopping) {
    // Stop() came while this connect was in flight: it waits for it and disconnects.
    return;
  }
  connects_.fetch_add(1);
  if (!options_.subscriptions.empty()) {
    std::vector<char*> topics;
    std::vector<int> qos;
    for (auto& [topic, q] : options_.subscriptions) {
      topics.push_back(topic.data());
      qos.push_back(q);
    }
    MQTTAsync_responseOptions opts = MQTTAsync_responseOptions_initializer;
    if (options_.transport.version == MQTTVERSION_5) {
      opts.onSuccess5 = &PahoCallbacks::SubscribeSuccess5;
      opts.onFailure5 = &PahoCallbacks::SubscribeFailure5;
    } else {
      opts.onFailure = &PahoCallbacks::SubscribeFailure;
    }
    opts.context = this;
    const int rc = MQTTAsync_subscribeMany(client_, static_cast<int>(topics.size()), topics.data(), qos.data(), &opts);
    if (rc != MQTTASYNC_SUCCESS) log->error("subscribe failed to start: {}", PahoError(rc));
  }
  DisableNagleTowards(PortOf(options_.url));
  log->info("connected to {} as {}", options_.url, options_.client_id);
  SetConnected(true);
  if (paused_) {
    MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer;
    MQTTAsync_disconnect(client_, &opts);
    SetConnected(false);
  }
}

void Client::OnConnectFailure(const char* message, int code) {
  connect_failures_.fetch_add(1);
  std::string tls;
  {
    common::MutexLock lock(&tls_error_mu_);
    tls.swap(tls_error_);
  }
  common::Logger(options_.log_name)
      ->warn("cannot connect to {}: {}{}{}", options_.url, message != nullptr ? message : PahoError(code).c_str(),
             tls.empty() ? "" : "; TLS: ", tls);
  RequestConnect();
}

void Client::OnTlsError(absl::string_view text) {
  common::MutexLock lock(&tls_error_mu_);
  tls_error_.assign(text.data(), text.size());
  while (!tls_error_.empty() && (tls_error_.back() == '\n' || tls_error_.back() == '\r')) tls_error_.pop_back();
}

void Client::OnSubscribeFailure(int code) {
  common::Logger(options_.log_name)->error("subscribe refused by {}: code {}", options_.url, code);
}

}  // namespace devbridge::mqtt
