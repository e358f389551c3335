// One push replica's logic, free of any network: WebSocket sessions (handshake checks,
// client frames, commands, recovery), routing of the cluster's event stream to local
// connections, and the Push API. The transport (websocketpp) and the upstream (ingest over
// gRPC) are interfaces, so all of it runs in unit tests. Io thread only.
#ifndef DEVBRIDGE_SERVICES_PUSH_CORE_PUSH_NODE_H_
#define DEVBRIDGE_SERVICES_PUSH_CORE_PUSH_NODE_H_

#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <variant>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/metrics.h"
#include "devbridge/v1/events.pb.h"
#include "devbridge/v1/ingest.pb.h"
#include "services/push/core/frames.h"
#include "services/push/core/history.h"
#include "services/push/core/jwt.h"
#include "services/push/core/registry.h"

namespace devbridge::push {

// Sends frames to connections. Implementations must not block.
class Transport {
 public:
  virtual ~Transport() = default;
  // Queues `frame` for `conn`; returns the bytes now waiting to be written to it.
  virtual size_t Send(ConnId conn, const std::shared_ptr<const std::string>& frame) = 0;
  virtual void Close(ConnId conn, int code, const std::string& reason) = 0;
};

// The way to ingest. Thread-safe; `done` callbacks run on the io thread.
class Upstream {
 public:
  virtual ~Upstream() = default;
  virtual bool up() const = 0;
  virtual void Publish(v1::PushMessage message, std::function<void(absl::Status)> done) = 0;
  virtual void Dispatch(v1::Command command, std::function<void(absl::StatusOr<v1::CommandResult>)> done) = 0;
  // The newest event of ingest's stream (see Ingest.Head). The default has none to offer,
  // so a node that asks goes on at once.
  virtual void Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) {
    done(absl::UnimplementedError("no stream head"));
  }
  // Interest routing: this node has connections to push stream (system, group) now (Want),
  // or none any more (Unwant). Want is true when every message of the stream already reaches
  // the node (the default: ingest's gRPC stream carries them all); false when the upstream
  // starts reading it and, having read back what a recover may ask for, calls
  // PushNode::OnStreamReady. Io thread.
  virtual bool Want(const std::string& /*system_id*/, const std::string& /*group_name*/) { return true; }
  virtual void Unwant(const std::string& /*system_id*/, const std::string& /*group_name*/) {}
};

struct NodeOptions {
  std::string node_id = "push";
  std::string fleet_system = "fleet";
  std::string auth_secret;                   // empty: no auth
  std::vector<std::string> allowed_origins;  // empty: any
  size_t history_size = 1000;
  absl::Duration history_ttl = absl::Minutes(5);
  size_t send_queue_bytes = 1 << 20;
  size_t max_groups_per_client = 128;        // a join or bind past it: 429
  int error_budget = 20;                     // errors allowed per window before 1008
  // On the bus nobody announces a replica that crashed, so each one says NODE_ALIVE every
  // `alive_interval`, and the others forget the clients of one not heard from for
  // `node_timeout`. Zero: off (ingest's gRPC stream sends NODE_DOWN when a replica's ends).
  absl::Duration node_timeout = absl::ZeroDuration();
  absl::Duration alive_interval = absl::Seconds(5);
  absl::Duration error_window = absl::Seconds(10);
};

// A validated WebSocket handshake.
struct ConnectRequest {
  std::string system_id;
  std::string client_id;
  std::vector<std::string> groups;
  std::map<std::string, std::pair<std::string, uint64_t>> recover;  // stream name → (epoch, offset)
  std::optional<Claims> claims;
};

// An HTTP refusal of a handshake or API call.
struct Refusal {
  int status;
  std::string message;
};

class PushNode {
 public:
  PushNode(NodeOptions options, Transport* transport, Upstream* upstream, common::MetricsRegistry* metrics);

  // Checks GET /ws's query string and Origin header. A refusal carries 400, 401 or 403.
  std::variant<ConnectRequest, Refusal> Validate(absl::string_view query, absl::string_view origin, absl::Time now);
  void OnOpen(ConnId conn, ConnectRequest request, absl::Time now);
  void OnMessage(ConnId conn, absl::string_view text, absl::Time now);
  void OnClose(ConnId conn);

  // Events from ingest's stream, in order. An event that cannot be applied is logged,
  // counted (devbridge_push_events_rejected_total) and skipped; nothing escapes.
  void OnEvent(const v1::Event& event, absl::Time now);
  // An event from before this node started, read back from the bus to fill the recovery
  // histories: kept there (as of its own time, so it expires on time), sent to nobody and
  // acted on by nobody (what it changed, membership, is told again: NODE_SNAPSHOT).
  void OnPastEvent(const v1::Event& event);
  // The event stream came up (true) or went down.
  void OnUpstream(bool up);
  // A stream this node asked the upstream for (Upstream::Want) has been read back: the
  // recovers that waited for it run now, before its live messages.
  void OnStreamReady(const std::string& system_id, const std::string& group_name);
  // Periodic upkeep (every second or so): drops histories whose messages all expired; with
  // node_timeout, says NODE_ALIVE and forgets the clients of replicas gone silent.
  void Sweep(absl::Time now);

  // The Push API (HTTP and gRPC). `message` carries the operation; a message id is chosen
  // here. `done` gets the message id or an error with a result code (400, 404, 503).
  void Submit(v1::PushMessage message, std::function<void(absl::StatusOr<std::string>)> done);
  // Clients online in a system (or one of its groups), across the cluster, as of every
  // Publish that returned before the call (CONTRACT §10.2): `done` runs once this node has
  // applied the stream that far.
  void Online(const std::string& system_id, const std::string& group,
              std::function<void(std::vector<std::string>)> done);
  // Checks an API token (Authorization: Bearer ...): api claim, and sub == system when given.
  absl::Status CheckApiToken(absl::string_view authorization, absl::string_view system_id, absl::Time now) const;

  const Registry& registry() const { return registry_; }
  const History& history() const { return history_; }
  const NodeOptions& options() const { return options_; }
  bool upstream_up() const { return upstream_->up(); }

 private:
  void SendTo(ConnId conn, const std::shared_ptr<const std::string>& frame);
  void SendText(ConnId conn, std::string text);
  void ClientError(ConnId conn, int code, const std::string& msg, const std::string& request_id, absl::Time now,
                   absl::string_view group = "");
  void HandleCommand(ConnId conn, const CommandFrame& command, absl::Time now);
  void Join(ConnId conn, const std::string& group, bool reply);
  void Leave(ConnId conn, const std::string& group, bool reply);
  // `published` runs once ingest has answered the publish, whether it took it or not.
  void PublishMembership(v1::PushMessage::Kind kind, const Session& session, const std::string& group = "",
                         std::function<void()> published = nullptr);
  void PublishSnapshot();
  // Builds a frame per stream of `event`, records it in the history and sends it to the
  // stream's local connections.
  void Fanout(const v1::Event& event, ServerFrame frame, absl::Time now);
  absl::Status ApplyEvent(const v1::Event& event, absl::Time now);
  // Ingest's epoch changed under connected clients: a 410 for each stream each one holds.
  void TellStreamsReset();
  void Recover(ConnId conn, const ConnectRequest& request, absl::Time now);
  // One stream of a recover: what `conn` missed after `pos` of stream `key` ("system" or
  // "group:NAME" in `label`), or a 410 when that is gone.
  void RecoverStream(ConnId conn, const std::string& label, const std::string& key,
                     const std::pair<std::string, uint64_t>& pos, absl::Time now);
  // Tells the upstream when stream (system, group) gains its first local connection or
  // loses its last (interest routing).
  void UpdateInterest(const std::string& system_id, const std::string& group_name);
  // Runs `then` once this node has applied every event ingest's stream held when Sync was
  // called (at once when that is already so, or when the stream cannot say).
  void Sync(std::function<void()> then);
  void ReleaseSyncWaiters(uint64_t seq);  // runs the waiters for `seq` and before
  static constexpr size_t kMaxSyncWaiters = 10000;
  // Publishes `m` as an API call and answers `done` with its message id.
  void PublishApi(v1::PushMessage m, std::function<void(absl::StatusOr<std::string>)> done);
  // Whether the clients `m` names are known in its system (the 404 check of the API).
  bool Knows(const v1::PushMessage& m) const;
  // Sends `connected` and then what was held for `conn` while its CLIENT_UP was on its way.
  void Announce(ConnId conn, const std::string& hello);
  // Another replica spoke (node_timeout on): it is alive. One forgotten as gone is asked,
  // with every other, for its clients again (NODE_HELLO).
  void Heard(const std::string& node, absl::Time now);
  void PublishNodeMessage(v1::PushMessage::Kind kind);

  NodeOptions options_;
  Transport* transport_;
  Upstream* upstream_;
  Registry registry_;
  History history_;
  absl::flat_hash_map<ConnId, std::deque<absl::Time>> errors_;
  absl::flat_hash_set<ConnId> closing_;
  // Connections whose `connected` frame waits for ingest to take their CLIENT_UP, with the
  // frames for them meanwhile (sent after it, in order).
  struct Held {
    std::vector<std::shared_ptr<const std::string>> frames;
    size_t bytes = 0;
  };
  absl::flat_hash_map<ConnId, Held> unannounced_;
  uint64_t applied_seq_ = 0;  // the last event of history_.epoch() applied
  bool past_ = false;         // OnPastEvent: record in the history only
  std::multimap<uint64_t, std::function<void()>> sync_waiters_;  // by the seq they wait for
  absl::flat_hash_set<std::string> wanted_;       // streams with local connections (StreamKey)
  absl::flat_hash_set<std::string> catching_up_;  // of those, the ones the upstream still reads back
  struct PendingRecover {
    ConnId conn;
    std::string label;
    std::pair<std::string, uint64_t> pos;
  };
  absl::flat_hash_map<std::string, std::vector<PendingRecover>> pending_recovers_;  // by StreamKey
  absl::flat_hash_map<std::string, absl::Time> heard_;  // other replicas, last heard from (node_timeout)
  absl::flat_hash_set<std::string> lost_;               // replicas forgotten as gone
  absl::Time next_alive_ = absl::InfinitePast();
  bool announce_again_ = false;  // a NODE_HELLO or NODE_SNAPSHOT failed: Sweep repeats them

  struct Metrics {
    common::Gauge* connections;
    common::Counter* connects;
    common::Counter* refused;
    common::Counter* frames_in;
    common::Counter* frames_out;
    common::Counter* bytes_out;
    common::Counter* joins;
    common::Counter* client_errors;
    common::Counter* slow_closes;
    common::Counter* error_closes;
    common::Counter* replaced;
    common::Counter* commands;
    common::Counter* recovered;
    common::Counter* gone;
    common::Counter* events;
    common::Counter* events_rejected;
    common::Counter* frames_repeated;
    common::Counter* membership_unpublished;
    common::Counter* nodes_lost;
    common::Histogram* delivery_ms;
  } m_;
  // A burst of connects while ingest is down fails one membership update per connection.
  common::LogLimiter membership_log_{absl::Seconds(10)};
};

// "2026-11-26T03:10:00.123Z"
std::string IsoTime(int64_t unix_ms);
// The `data` of command.result / device.data (CONTRACT §5).
std::string CommandResultJson(const v1::CommandResult& r);

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_CORE_PUSH_NODE_H_
