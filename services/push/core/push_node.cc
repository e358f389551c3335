#include "services/push/core/push_node.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/json_parse.h"
#include "common/log.h"
#include "common/status.h"
#include "common/url.h"
#include "common/uuid.h"
#include "events/bus_layout.h"
#include "events/push_message.h"
#include "nlohmann/json.hpp"

namespace devbridge::push {
namespace {

using Json = nlohmann::json;
using common::kCodeBadRequest;
using common::kCodeForbidden;
using common::kCodeNotFound;
using common::kCodeUnauthorized;
using common::kCodeUnavailable;

// Close codes (RFC 6455 and ours).
constexpr int kClosePolicy = 1008;
constexpr int kCloseSlowConsumer = 4008;
constexpr int kCloseReplaced = 4009;
constexpr int kCloseByApi = 4000;

absl::Status ApiError(int code, absl::string_view msg) {
  return common::Error(static_cast<common::ResultCode>(code),
                       code == kCodeNotFound                ? absl::StatusCode::kNotFound
                       : code == kCodeUnavailable           ? absl::StatusCode::kUnavailable
                       : code == common::kCodeRateLimited   ? absl::StatusCode::kResourceExhausted
                                                            : absl::StatusCode::kInvalidArgument,
                       msg);
}

std::string Hex(const std::string& bytes) {
  return absl::AsciiStrToUpper(absl::BytesToHexString(bytes));
}

}  // namespace

std::string IsoTime(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string CommandResultJson(const v1::CommandResult& r) {
  std::string out = "{\"commandId\":";
  AppendJsonString(&out, r.command_id());
  out.append(",\"requestId\":");
  AppendJsonString(&out, r.request_id());
  out.append(",\"deviceId\":");
  AppendJsonString(&out, r.device_id());
  absl::StrAppend(&out, ",\"unit\":", r.unit(), ",\"function\":", r.function(), ",\"address\":", r.address(),
                  ",\"count\":", r.count(), ",\"request\":");
  AppendJsonString(&out, Hex(r.request()));
  out.append(",\"response\":");
  AppendJsonString(&out, Hex(r.response()));
  out.append(",\"values\":{");
  for (int i = 0; i < r.values_size(); ++i) {
    const v1::DecodedValue& v = r.values(i);
    if (i > 0) out.push_back(',');
    AppendJsonString(&out, v.name());
    absl::StrAppend(&out, ":{\"value\":", v.json_value().empty() ? "null" : v.json_value(), ",\"unit\":");
    AppendJsonString(&out, v.unit());
    out.append(",\"raw\":[");
    for (int k = 0; k < v.raw_size(); ++k) absl::StrAppend(&out, k ? "," : "", v.raw(k));
    out.append("]}");
  }
  absl::StrAppend(&out, "},\"latencyMs\":", absl::StrFormat("%.3f", r.latency_ms()), ",\"receivedAt\":");
  AppendJsonString(&out, IsoTime(r.received_at_unix_ms()));
  absl::StrAppend(&out, ",\"solicited\":", r.solicited() ? "true" : "false", ",\"poll\":",
                  r.poll() ? "true" : "false", ",\"exception\":");
  if (r.exception_code() != 0) {
    absl::StrAppend(&out, "{\"code\":", r.exception_code(), ",\"name\":");
    AppendJsonString(&out, r.exception_name());
    out.push_back('}');
  } else {
    out.append("null");
  }
  out.push_back('}');
  return out;
}

PushNode::PushNode(NodeOptions options, Transport* transport, Upstream* upstream, common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      transport_(transport),
      upstream_(upstream),
      history_(options_.history_size, options_.history_ttl) {
  auto& r = *metrics;
  m_.connections = &r.AddGauge("devbridge_push_connections", "WebSocket connections open on this replica.");
  m_.connects = &r.AddCounter("devbridge_push_connects_total", "WebSocket connections accepted.");
  m_.refused = &r.AddCounter("devbridge_push_handshakes_refused_total", "Handshakes refused (400/401/403).");
  m_.frames_in = &r.AddCounter("devbridge_push_frames_in_total", "Client frames received.");
  m_.frames_out = &r.AddCounter("devbridge_push_frames_out_total", "Frames sent to clients.");
  m_.bytes_out = &r.AddCounter("devbridge_push_bytes_out_total", "Bytes of frames sent to clients.");
  m_.joins = &r.AddCounter("devbridge_push_joins_total", "Group joins.");
  m_.client_errors = &r.AddCounter("devbridge_push_client_errors_total", "Error frames sent for bad client frames.");
  m_.slow_closes = &r.AddCounter("devbridge_push_slow_consumer_closes_total", "Connections closed with 4008.");
  m_.error_closes = &r.AddCounter("devbridge_push_error_budget_closes_total", "Connections closed for too many errors.");
  m_.replaced = &r.AddCounter("devbridge_push_replaced_total", "Sessions replaced by a reused clientId (4009).");
  m_.commands = &r.AddCounter("devbridge_push_commands_total", "Commands accepted from web pages.");
  m_.recovered = &r.AddCounter("devbridge_push_recovered_messages_total", "Messages replayed by recover.");
  m_.gone = &r.AddCounter("devbridge_push_recover_gone_total", "Streams that could not be recovered (410).");
  m_.events = &r.AddCounter("devbridge_push_events_total", "Events received from ingest.");
  m_.frames_repeated = &r.AddCounter("devbridge_push_frames_repeated_total",
                                     "Stream messages received again with an offset already sent (not sent again).");
  m_.events_rejected = &r.AddCounter("devbridge_push_events_rejected_total",
                                     "Events from ingest that could not be applied: logged and skipped.");
  m_.membership_unpublished = &r.AddCounter(
      "devbridge_push_membership_unpublished_total",
      "Membership updates (client up or down, group join or leave) ingest did not take; the next snapshot repairs them.");
  m_.nodes_lost = &r.AddCounter("devbridge_push_nodes_lost_total",
                                "Replicas not heard from for node_timeout (bus mode) whose clients were forgotten.");
  m_.delivery_ms = &r.AddHistogram("devbridge_push_delivery_latency_ms", "Event emitted by ingest to frame queued, ms.",
                                   common::LatencyBucketsMs());
}

std::variant<ConnectRequest, Refusal> PushNode::Validate(absl::string_view query, absl::string_view origin,
                                                         absl::Time now) {
  auto refuse = [this](int status, std::string message) -> std::variant<ConnectRequest, Refusal> {
    m_.refused->Inc();
    return Refusal{status, std::move(message)};
  };
  // With an allow-list, a handshake must name an allowed Origin: one without the header is
  // refused too (CONTRACT §10.1), or any non-browser client could walk past the list.
  if (!options_.allowed_origins.empty() &&
      std::find(options_.allowed_origins.begin(), options_.allowed_origins.end(), origin) ==
          options_.allowed_origins.end()) {
    return refuse(403, origin.empty() ? std::string("an Origin header is required")
                                      : absl::StrCat("origin ", origin, " is not allowed"));
  }
  std::map<std::string, std::string> params = ParseQuery(query);
  ConnectRequest req;
  req.system_id = params["systemId"];
  if (req.system_id.empty()) return refuse(400, "systemId is required");
  if (!common::IsValidId(req.system_id)) return refuse(400, "systemId must be 1-64 characters of [A-Za-z0-9_.:-]");
  req.client_id = params["clientId"];
  if (!req.client_id.empty() && !common::IsValidId(req.client_id)) {
    return refuse(400, "clientId must be 1-64 characters of [A-Za-z0-9_.:-]");
  }
  for (absl::string_view g : absl::StrSplit(params["groups"], ',', absl::SkipEmpty())) {
    if (!common::IsValidId(g)) return refuse(400, absl::StrCat("group \"", g, "\" must be 1-64 characters of [A-Za-z0-9_.:-]"));
    req.groups.emplace_back(g);
  }
  if (auto it = params.find("recover"); it != params.end() && !it->second.empty()) {
    absl::StatusOr<Json> r = common::ParseJson(it->second);
    if (!r.ok() || !r->is_object()) return refuse(400, "recover must be a JSON object of stream: [epoch, offset]");
    for (const auto& [stream, pos] : r->items()) {
      if (!pos.is_array() || pos.size() != 2 || !pos[0].is_string() || !pos[1].is_number_unsigned()) {
        return refuse(400, absl::StrCat("recover.", stream, " must be [epoch, offset]"));
      }
      if (stream != "system" && !(absl::StartsWith(stream, "group:") && common::IsValidId(stream.substr(6)))) {
        return refuse(400, absl::StrCat("recover stream \"", stream, "\" must be \"system\" or \"group:NAME\""));
      }
      req.recover[stream] = {pos[0].get<std::string>(), pos[1].get<uint64_t>()};
    }
  }
  if (!options_.auth_secret.empty()) {
    const std::string token = params["token"];
    if (token.empty()) return refuse(401, "token is required");
    absl::StatusOr<Claims> claims = VerifyJwt(token, options_.auth_secret, now);
    if (!claims.ok()) return refuse(401, std::string(claims.status().message()));
    if (claims->sub != req.system_id) return refuse(401, "token is for another systemId");
    if (!claims->cid.empty()) {
      if (!req.client_id.empty() && req.client_id != claims->cid) return refuse(401, "token is for another clientId");
      req.client_id = claims->cid;
    }
    if (claims->groups) {
      for (const auto& g : req.groups) {
        if (std::find(claims->groups->begin(), claims->groups->end(), g) == claims->groups->end()) {
          return refuse(403, absl::StrCat("token does not allow group ", g));
        }
      }
    }
    req.claims = *std::move(claims);
  }
  if (req.client_id.empty()) req.client_id = common::NewUuid();
  return req;
}

void PushNode::SendTo(ConnId conn, const std::shared_ptr<const std::string>& frame) {
  if (closing_.count(conn) > 0) return;
  if (!unannounced_.empty()) {
    if (auto it = unannounced_.find(conn); it != unannounced_.end()) {
      // Held until `connected` has gone out; bounded like any client's queue.
      Held& held = it->second;
      if (held.bytes + frame->size() > options_.send_queue_bytes) {
        closing_.insert(conn);
        m_.slow_closes->Inc();
        transport_->Close(conn, kCloseSlowConsumer, "slow consumer");
        return;
      }
      held.bytes += frame->size();
      held.frames.push_back(frame);
      return;
    }
  }
  const size_t waiting = transport_->Send(conn, frame);
  m_.frames_out->Inc();
  m_.bytes_out->Inc(frame->size());
  if (waiting > options_.send_queue_bytes) {
    closing_.insert(conn);
    m_.slow_closes->Inc();
    transport_->Close(conn, kCloseSlowConsumer, "slow consumer");
  }
}

void PushNode::SendText(ConnId conn, std::string text) {
  SendTo(conn, std::make_shared<const std::string>(std::move(text)));
}

void PushNode::OnOpen(ConnId conn, ConnectRequest request, absl::Time now) {
  Session s;
  s.conn = conn;
  s.client_id = request.client_id;
  s.system_id = request.system_id;
  s.connected_at = now;
  if (request.claims) {
    s.allowed_groups = request.claims->groups;
    s.may_command = request.claims->cmd;
  }
  if (std::optional<ConnId> old = registry_.Add(s)) {
    m_.replaced->Inc();
    closing_.insert(*old);
    errors_.erase(*old);
    transport_->Close(*old, kCloseReplaced, "replaced by a new connection with the same clientId");
  }
  m_.connects->Inc();
  m_.connections->Set(static_cast<int64_t>(registry_.local_sessions()));
  ServerFrame hello;
  hello.type = "connected";
  hello.system_id = request.system_id;
  hello.data_json = common::JsonStringObject({{"clientId", request.client_id},
                                              {"systemId", request.system_id},
                                              {"node", options_.node_id},
                                              {"epoch", history_.epoch()}});
  // `connected` waits until ingest has taken this client's CLIENT_UP, so an API call on any
  // replica after it sees the client (CONTRACT §10.2). Frames for it meanwhile are held.
  // Without a stream to ingest there is no one to tell (the snapshot does when it returns):
  // the client gets `connected` at once.
  unannounced_[conn];
  if (upstream_->up()) {
    PublishMembership(v1::PushMessage::CLIENT_UP, s, "",
                      [this, conn, text = hello.ToJson()]() mutable { Announce(conn, std::move(text)); });
  } else {
    PublishMembership(v1::PushMessage::CLIENT_UP, s);
    Announce(conn, hello.ToJson());
  }
  for (const auto& g : request.groups) Join(conn, g, /*reply=*/false);
  UpdateInterest(request.system_id, "");
  Recover(conn, request, now);
}

void PushNode::Announce(ConnId conn, const std::string& hello) {
  auto it = unannounced_.find(conn);
  if (it == unannounced_.end()) return;  // closed meanwhile
  std::vector<std::shared_ptr<const std::string>> held = std::move(it->second.frames);
  unannounced_.erase(it);
  SendText(conn, hello);
  for (const auto& frame : held) SendTo(conn, frame);
}

void PushNode::Recover(ConnId conn, const ConnectRequest& request, absl::Time now) {
  for (const auto& [stream, pos] : request.recover) {
    std::string key;
    if (stream == "system") {
      key = StreamKey(request.system_id, "");
    } else {
      const std::string group = stream.substr(6);
      Session* s = registry_.ByConn(conn);
      if (s == nullptr || s->groups.count(group) == 0) {
        SendText(conn, ErrorFrame(kCodeBadRequest, "recover a group only together with joining it (groups=...)", "",
                                  stream));
        continue;
      }
      key = StreamKey(request.system_id, group);
    }
    // The upstream is still reading this stream back: recover once it has (OnStreamReady).
    if (catching_up_.contains(key)) {
      pending_recovers_[key].push_back({conn, stream, pos});
      continue;
    }
    RecoverStream(conn, stream, key, pos, now);
  }
}

void PushNode::RecoverStream(ConnId conn, const std::string& label, const std::string& key,
                             const std::pair<std::string, uint64_t>& pos, absl::Time now) {
  std::vector<std::shared_ptr<const std::string>> missed;
  if (!history_.Since(key, pos.first, pos.second, now, &missed)) {
    m_.gone->Inc();
    SendText(conn, ErrorFrame(common::kCodeGone,
                              absl::StrCat("messages after offset ", pos.second, " of epoch ", pos.first,
                                           " are gone; continuing live"),
                              "", label));
    return;
  }
  m_.recovered->Inc(missed.size());
  for (const auto& frame : missed) SendTo(conn, frame);
}

void PushNode::UpdateInterest(const std::string& system_id, const std::string& group_name) {
  const std::string key = StreamKey(system_id, group_name);
  const bool local = registry_.HasLocal(system_id, group_name);
  if (local == wanted_.contains(key)) return;
  if (local) {
    wanted_.insert(key);
    if (!upstream_->Want(system_id, group_name)) catching_up_.insert(key);
  } else {
    wanted_.erase(key);
    catching_up_.erase(key);
    pending_recovers_.erase(key);
    upstream_->Unwant(system_id, group_name);
  }
}

void PushNode::OnStreamReady(const std::string& system_id, const std::string& group_name) {
  const std::string key = StreamKey(system_id, group_name);
  catching_up_.erase(key);
  auto it = pending_recovers_.find(key);
  if (it == pending_recovers_.end()) return;
  std::vector<PendingRecover> pending = std::move(it->second);
  pending_recovers_.erase(it);
  const absl::Time now = absl::Now();
  for (const PendingRecover& p : pending) {
    if (registry_.ByConn(p.conn) != nullptr) RecoverStream(p.conn, p.label, key, p.pos, now);
  }
}

// Ingest restarted (a new epoch): whatever it emitted that this replica had not received is
// gone. Every connected client hears it once per stream it holds, as a client that recovers
// into a lost stretch does (410), and goes on with the new epoch's messages (offsets from 1).
void PushNode::TellStreamsReset() {
  for (const Session* s : registry_.LocalSessions()) {
    m_.gone->Inc();
    SendText(s->conn, ErrorFrame(common::kCodeGone, "the event stream restarted (ingest restarted); messages may be "
                                                    "missing; continuing live with a new epoch",
                                 "", "system"));
    for (const std::string& g : s->groups) {
      m_.gone->Inc();
      SendText(s->conn, ErrorFrame(common::kCodeGone, "the event stream restarted (ingest restarted); messages may "
                                                      "be missing; continuing live with a new epoch",
                                   "", absl::StrCat("group:", g)));
    }
  }
}

void PushNode::OnClose(ConnId conn) {
  closing_.erase(conn);
  unannounced_.erase(conn);
  errors_.erase(conn);
  std::optional<Session> s = registry_.Remove(conn);
  m_.connections->Set(static_cast<int64_t>(registry_.local_sessions()));
  if (!s) return;
  UpdateInterest(s->system_id, "");
  for (const auto& g : s->groups) {
    UpdateInterest(s->system_id, g);
    PublishMembership(v1::PushMessage::UNBIND_GROUP, *s, g);
  }
  // If the same clientId has already reconnected here, it is not gone.
  if (registry_.ByClient(s->client_id) == nullptr) PublishMembership(v1::PushMessage::CLIENT_DOWN, *s);
}

void PushNode::ClientError(ConnId conn, int code, const std::string& msg, const std::string& request_id,
                           absl::Time now, absl::string_view group) {
  m_.client_errors->Inc();
  SendText(conn, ErrorFrame(code, msg, request_id, "", group));
  std::deque<absl::Time>& times = errors_[conn];
  times.push_back(now);
  while (!times.empty() && now - times.front() > options_.error_window) times.pop_front();
  if (static_cast<int>(times.size()) > options_.error_budget && closing_.insert(conn).second) {
    m_.error_closes->Inc();
    transport_->Close(conn, kClosePolicy,
                      absl::StrCat("more than ", options_.error_budget, " errors in ",
                                   absl::FormatDuration(options_.error_window)));
  }
}

void PushNode::OnMessage(ConnId conn, absl::string_view text, absl::Time now) {
  m_.frames_in->Inc();
  if (registry_.ByConn(conn) == nullptr || closing_.count(conn) > 0) return;
  std::string request_id;
  absl::StatusOr<ClientFrame> frame = ParseClientFrame(text, &request_id);
  if (!frame.ok()) return ClientError(conn, kCodeBadRequest, std::string(frame.status().message()), request_id, now);
  switch (frame->action) {
    case ClientFrame::kPing: {
      ServerFrame pong;
      pong.type = "pong";
      pong.system_id = registry_.ByConn(conn)->system_id;
      SendText(conn, pong.ToJson());
      return;
    }
    case ClientFrame::kJoin: {
      const Session* s = registry_.ByConn(conn);
      if (s->allowed_groups && std::find(s->allowed_groups->begin(), s->allowed_groups->end(), frame->group) ==
                                   s->allowed_groups->end()) {
        return ClientError(conn, kCodeForbidden, absl::StrCat("token does not allow group ", frame->group), "", now);
      }
      if (s->groups.size() >= options_.max_groups_per_client && !s->groups.contains(frame->group)) {
        return ClientError(conn, common::kCodeRateLimited,
                           absl::StrCat("at most ", options_.max_groups_per_client, " groups per client"), "", now,
                           frame->group);
      }
      return Join(conn, frame->group, /*reply=*/true);
    }
    case ClientFrame::kLeave:
      return Leave(conn, frame->group, /*reply=*/true);
    case ClientFrame::kCommand:
      return HandleCommand(conn, frame->command, now);
  }
}

void PushNode::Join(ConnId conn, const std::string& group, bool reply) {
  Session* s = registry_.ByConn(conn);
  const bool changed = registry_.Join(conn, group);
  if (changed) {
    m_.joins->Inc();
    UpdateInterest(s->system_id, group);
    PublishMembership(v1::PushMessage::BIND_GROUP, *s, group);
  }
  if (reply) {
    ServerFrame joined;
    joined.type = "joined";
    joined.system_id = s->system_id;
    joined.group_name = group;
    SendText(conn, joined.ToJson());
  }
}

void PushNode::Leave(ConnId conn, const std::string& group, bool reply) {
  Session* s = registry_.ByConn(conn);
  if (registry_.Leave(conn, group)) {
    UpdateInterest(s->system_id, group);
    PublishMembership(v1::PushMessage::UNBIND_GROUP, *s, group);
  }
  if (reply) {
    ServerFrame left;
    left.type = "left";
    left.system_id = s->system_id;
    left.group_name = group;
    SendText(conn, left.ToJson());
  }
}

void PushNode::PublishMembership(v1::PushMessage::Kind kind, const Session& session, const std::string& group,
                                 std::function<void()> published) {
  v1::PushMessage m;
  m.set_kind(kind);
  m.set_system_id(session.system_id);
  m.add_client_ids(session.client_id);
  m.set_group_name(group);
  m.set_user_id(session.user_id);
  m.set_extend(session.extend);
  m.set_origin_node(options_.node_id);
  m.set_message_id(common::NewUuid());
  if (kind == v1::PushMessage::CLIENT_UP) registry_.MemberUp(session.client_id, session.system_id, options_.node_id);
  if (kind == v1::PushMessage::BIND_GROUP) registry_.MemberJoin(session.client_id, group);
  if (kind == v1::PushMessage::UNBIND_GROUP) registry_.MemberLeave(session.client_id, group);
  if (kind == v1::PushMessage::CLIENT_DOWN) registry_.MemberDown(session.client_id, options_.node_id);
  upstream_->Publish(std::move(m), [this, published = std::move(published)](const absl::Status& s) {
    if (!s.ok()) {
      m_.membership_unpublished->Inc();
      uint64_t skipped = 0;
      if (membership_log_.Allow(absl::Now(), &skipped)) {
        common::Logger("push.node")->warn("membership update not published: {} ({} more failed since the last line)",
                                          s.message(), skipped);
      }
    }
    if (published) published();
  });
}

void PushNode::PublishSnapshot() {
  std::vector<events::SnapshotMember> members;
  for (const Session* s : registry_.LocalSessions()) {
    members.push_back({s->client_id, s->system_id, std::vector<std::string>(s->groups.begin(), s->groups.end())});
  }
  v1::PushMessage m;
  m.set_kind(v1::PushMessage::NODE_SNAPSHOT);
  m.set_origin_node(options_.node_id);
  m.set_message_id(common::NewUuid());
  m.set_data(events::EncodeSnapshot(members));
  upstream_->Publish(std::move(m), [this](const absl::Status& s) {
    if (!s.ok()) announce_again_ = true;  // Sweep tries again
  });
}

void PushNode::OnUpstream(bool up) {
  if (!up) {
    // No stream to catch up with: whoever waits for it goes on with what this node knows.
    ReleaseSyncWaiters(UINT64_MAX);
    return;
  }
  PublishNodeMessage(v1::PushMessage::NODE_HELLO);
  PublishSnapshot();
}

void PushNode::PublishNodeMessage(v1::PushMessage::Kind kind) {
  v1::PushMessage m;
  m.set_kind(kind);
  m.set_origin_node(options_.node_id);
  m.set_message_id(common::NewUuid());
  upstream_->Publish(std::move(m), [this, kind](const absl::Status& s) {
    if (!s.ok() && kind == v1::PushMessage::NODE_HELLO) announce_again_ = true;
  });
}

void PushNode::Sweep(absl::Time now) {
  history_.Expire(now);
  // A hello or snapshot the upstream did not take (it was coming back): once more.
  if (announce_again_ && upstream_->up()) {
    announce_again_ = false;
    OnUpstream(true);
  }
  if (options_.node_timeout <= absl::ZeroDuration()) return;
  if (upstream_->up() && now >= next_alive_) {
    PublishNodeMessage(v1::PushMessage::NODE_ALIVE);
    next_alive_ = now + options_.alive_interval;
  }
  for (auto it = heard_.begin(); it != heard_.end();) {
    auto next = std::next(it);
    if (now - it->second > options_.node_timeout) {
      common::Logger("push.node")
          ->warn("replica {} not heard from for {}: forgetting its clients", it->first,
                 absl::FormatDuration(absl::Trunc(now - it->second, absl::Milliseconds(1))));
      registry_.NodeGone(it->first);
      lost_.insert(it->first);
      m_.nodes_lost->Inc();
      heard_.erase(it);
    }
    it = next;
  }
}

void PushNode::Heard(const std::string& node, absl::Time now) {
  if (node.empty() || node == options_.node_id) return;
  heard_[node] = now;
  if (lost_.erase(node) > 0) {
    common::Logger("push.node")->info("replica {} is back: asking every replica for its clients", node);
    PublishNodeMessage(v1::PushMessage::NODE_HELLO);
  }
}

void PushNode::HandleCommand(ConnId conn, const CommandFrame& c, absl::Time now) {
  const Session* s = registry_.ByConn(conn);
  if (!s->may_command) return ClientError(conn, kCodeForbidden, "token does not allow commands (cmd)", c.request_id, now);
  if (!options_.auth_secret.empty() && c.device_id != s->system_id && s->system_id != options_.fleet_system) {
    return ClientError(conn, kCodeForbidden,
                       absl::StrCat("commands from system ", s->system_id, " may only address device ", s->system_id),
                       c.request_id, now);
  }
  if (!upstream_->up()) return ClientError(conn, kCodeUnavailable, "ingest is unavailable; try again", c.request_id, now);
  v1::Command cmd;
  cmd.set_command_id(common::NewUuid());
  cmd.set_request_id(c.request_id);
  cmd.set_device_id(c.device_id);
  cmd.set_function(c.function);
  if (c.unit) cmd.set_unit(*c.unit);
  cmd.set_address(c.address);
  cmd.set_count(c.count);
  for (uint32_t v : c.values) cmd.add_values(v);
  cmd.set_timeout_ms(c.timeout_ms);
  cmd.set_origin_node(options_.node_id);
  cmd.set_client_id(s->client_id);
  cmd.set_system_id(s->system_id);
  m_.commands->Inc();
  ServerFrame accepted;
  accepted.type = "command.accepted";
  accepted.system_id = s->system_id;
  accepted.data_json = common::JsonStringObject({{"requestId", c.request_id}, {"commandId", cmd.command_id()}});
  SendText(conn, accepted.ToJson());
  const std::string client_id = s->client_id;
  v1::Command sent = cmd;
  upstream_->Dispatch(std::move(cmd), [this, client_id, sent](const absl::StatusOr<v1::CommandResult>& result) {
    if (result.ok()) return;  // the outcome arrives through the event stream, to every replica
    Session* asker = registry_.ByClient(client_id);
    if (asker == nullptr) return;
    v1::CommandResult failed;
    failed.set_command_id(sent.command_id());
    failed.set_request_id(sent.request_id());
    failed.set_device_id(sent.device_id());
    failed.set_function(sent.function());
    failed.set_address(sent.address());
    failed.set_count(sent.count());
    failed.set_solicited(true);
    failed.set_received_at_unix_ms(absl::ToUnixMillis(absl::Now()));
    ServerFrame frame;
    frame.type = "command.result";
    frame.code = kCodeUnavailable;
    frame.msg = absl::StrCat("ingest unavailable: ", result.status().message());
    frame.system_id = asker->system_id;
    frame.data_json = CommandResultJson(failed);
    SendText(asker->conn, frame.ToJson());
  });
}

void PushNode::Fanout(const v1::Event& event, ServerFrame frame, absl::Time now) {
  // On the bus, the EFFECTS part names the streams its FANOUT parts went to (events/bus_layout.h).
  if (event.part() == v1::Event::EFFECTS) return;
  for (const v1::StreamOffset& s : event.streams()) {
    frame.system_id = s.system_id();
    frame.group_name = s.group_name();
    frame.offset = s.offset();
    frame.epoch = event.epoch();
    auto bytes = std::make_shared<const std::string>(frame.ToJson());
    // A message seen before (the bus delivered it again) went to these clients already.
    if (!history_.Add(StreamKey(s.system_id(), s.group_name()), s.offset(), bytes, now)) {
      if (!past_) m_.frames_repeated->Inc();
      continue;
    }
    if (past_) continue;
    const std::vector<ConnId> conns =
        s.group_name().empty() ? registry_.SystemConns(s.system_id()) : registry_.GroupConns(s.system_id(), s.group_name());
    for (ConnId c : conns) SendTo(c, bytes);
  }
}

void PushNode::OnEvent(const v1::Event& event, absl::Time now) {
  m_.events->Inc();
  absl::Status applied;
  // The last line of defence of the stream boundary: whatever an event holds, the replica
  // logs it, counts it, skips it and goes on with the next (a poison event must not abort
  // every replica again and again while it sits in ingest's replay buffer).
  try {
    applied = ApplyEvent(event, now);
  } catch (const std::exception& e) {
    applied = absl::InternalError(absl::StrCat("exception: ", e.what()));
  }
  if (!applied.ok()) {
    m_.events_rejected->Inc();
    common::Logger("push.node")
        ->warn("event {} of epoch {} skipped: {} ({})", event.seq(), event.epoch(), applied.message(),
               event.has_push() ? v1::PushMessage::Kind_Name(event.push().kind()) : "not a push message");
  }
  if (event.epoch() == history_.epoch()) {
    applied_seq_ = std::max(applied_seq_, event.seq());
    ReleaseSyncWaiters(applied_seq_);
  }
  if (options_.node_timeout > absl::ZeroDuration() && !past_ && event.has_push()) {
    if (event.push().kind() == v1::PushMessage::NODE_DOWN) {
      heard_.erase(event.push().origin_node());
    } else {
      Heard(event.push().origin_node(), now);
    }
  }
}

void PushNode::OnPastEvent(const v1::Event& event) {
  const absl::Time at = event.at_unix_us() > 0 ? absl::FromUnixMicros(event.at_unix_us())
                                               : absl::FromUnixMillis(event.at_unix_ms());
  past_ = true;
  OnEvent(event, at);
  past_ = false;
}

void PushNode::ReleaseSyncWaiters(uint64_t seq) {
  while (!sync_waiters_.empty() && sync_waiters_.begin()->first <= seq) {
    std::function<void()> then = std::move(sync_waiters_.begin()->second);
    sync_waiters_.erase(sync_waiters_.begin());
    then();
  }
}

void PushNode::Sync(std::function<void()> then) {
  if (!upstream_->up()) return then();
  upstream_->Head([this, then = std::move(then)](absl::StatusOr<v1::HeadResponse> head) mutable {
    // Another epoch means ingest restarted: this node resets when the stream tells it, and
    // what it knows now is all there is to know. Past the bound, answer from what is known.
    if (!head.ok() || head->epoch() != history_.epoch() || head->seq() <= applied_seq_ ||
        sync_waiters_.size() >= kMaxSyncWaiters) {
      return then();
    }
    sync_waiters_.emplace(head->seq(), std::move(then));
  });
}

absl::Status PushNode::ApplyEvent(const v1::Event& event, absl::Time now) {
  if (event.has_reset() || event.epoch() != history_.epoch()) {
    if (event.has_reset()) {
      common::Logger("push.node")->warn("event stream reset: {}", event.reset().reason());
    }
    const bool restarted = !history_.epoch().empty() && history_.epoch() != event.epoch();
    history_.Reset(event.epoch());
    applied_seq_ = 0;
    if (restarted) TellStreamsReset();
    ReleaseSyncWaiters(UINT64_MAX);  // the seqs they wait for belong to the old epoch
    if (event.has_reset()) return absl::OkStatus();
  }
  // The past is kept, not acted on: only a stream's frame goes on (into the history).
  if (past_ && event.part() != v1::Event::FANOUT) return absl::OkStatus();
  if (!past_ && (event.at_unix_us() > 0 || event.at_unix_ms() > 0)) {
    const absl::Time at = event.at_unix_us() > 0 ? absl::FromUnixMicros(event.at_unix_us())
                                                  : absl::FromUnixMillis(event.at_unix_ms());
    m_.delivery_ms->Observe(std::max(0.0, absl::ToDoubleMilliseconds(now - at)));
  }
  ServerFrame frame;
  if (event.has_device_state()) {
    const v1::DeviceState& d = event.device_state();
    frame.type = d.online() ? "device.online" : "device.offline";
    frame.code = common::kCodeSuccess;
    std::string data = "{\"deviceId\":";
    AppendJsonString(&data, d.device_id());
    absl::StrAppend(&data, ",\"online\":", d.online() ? "true" : "false", ",\"meta\":",
                    d.meta_json().empty() ? "null" : d.meta_json(), ",\"at\":");
    AppendJsonString(&data, IsoTime(event.at_unix_ms()));
    data.push_back('}');
    frame.data_json = std::move(data);
    Fanout(event, std::move(frame), now);
    return absl::OkStatus();
  }
  if (event.has_responsive()) {
    // CONTRACT §10.4: a polled device stopped answering, or answered again.
    const v1::DeviceResponsive& d = event.responsive();
    frame.type = d.responsive() ? "device.responsive" : "device.unresponsive";
    frame.code = d.responsive() ? common::kCodeSuccess : common::kCodeTimeout;
    frame.msg = d.responsive() ? "success"
                               : absl::StrCat("no good reply to ", d.failures(), " polls in a row");
    std::string data = "{\"deviceId\":";
    AppendJsonString(&data, d.device_id());
    absl::StrAppend(&data, ",\"responsive\":", d.responsive() ? "true" : "false", ",\"failures\":", d.failures(),
                    ",\"backoffMs\":", d.backoff_ms(), ",\"at\":");
    AppendJsonString(&data, IsoTime(event.at_unix_ms()));
    data.push_back('}');
    frame.data_json = std::move(data);
    Fanout(event, std::move(frame), now);
    return absl::OkStatus();
  }
  if (event.has_data()) {
    const v1::CommandResult& r = event.data();
    // A poll's result is solicited (it answers a request) but no one's command: device.data.
    frame.type = r.solicited() && !r.poll() ? "command.result" : "device.data";
    frame.message_id = r.command_id();
    frame.code = r.code();
    frame.msg = r.msg();
    frame.data_json = CommandResultJson(r);
    Fanout(event, frame, now);
    // The asker gets it once: directly, unless it already got it as a member of a stream.
    if (r.solicited() && r.origin_node() == options_.node_id && !r.client_id().empty() &&
        event.part() != v1::Event::FANOUT) {
      Session* asker = registry_.ByClient(r.client_id());
      bool got_it = false;
      for (const auto& s : event.streams()) got_it |= asker != nullptr && s.group_name().empty() && s.system_id() == asker->system_id;
      if (asker != nullptr && !got_it) {
        frame.system_id = asker->system_id;
        frame.group_name.clear();
        frame.offset = 0;
        SendText(asker->conn, frame.ToJson());
      }
    }
    return absl::OkStatus();
  }
  if (!event.has_push()) return absl::OkStatus();
  const v1::PushMessage& m = event.push();
  // Ingest checks what it forwards, but the stream is an input like any other.
  RETURN_IF_ERROR(events::ValidatePushMessage(m));
  if (event.part() == v1::Event::FANOUT && events::PushStreams(m).empty()) {
    return absl::InvalidArgumentError("a fan-out part of an operation that is of no stream");
  }
  const bool is_send = m.kind() == v1::PushMessage::SEND_TO_SYSTEM || m.kind() == v1::PushMessage::SEND_TO_GROUP ||
                       m.kind() == v1::PushMessage::SEND_TO_CLIENTS;
  if (is_send) {
    frame.type = "message";
    frame.message_id = m.message_id();
    frame.code = m.code();
    frame.msg = m.msg();
    frame.data_json = m.data();
    frame.send_user_id = m.send_user_id();
  }
  switch (m.kind()) {
    case v1::PushMessage::SEND_TO_SYSTEM:
    case v1::PushMessage::SEND_TO_GROUP:
      Fanout(event, std::move(frame), now);
      return absl::OkStatus();
    case v1::PushMessage::SEND_TO_CLIENTS: {
      frame.system_id = m.system_id();
      std::shared_ptr<const std::string> bytes;
      for (const auto& id : m.client_ids()) {
        Session* s = registry_.ByClient(id);
        if (s == nullptr || s->system_id != m.system_id()) continue;
        if (!bytes) bytes = std::make_shared<const std::string>(frame.ToJson());
        SendTo(s->conn, bytes);
      }
      return absl::OkStatus();
    }
    case v1::PushMessage::BIND_GROUP:
    case v1::PushMessage::UNBIND_GROUP: {
      const bool bind = m.kind() == v1::PushMessage::BIND_GROUP;
      const std::string& client = m.client_ids_size() > 0 ? m.client_ids(0) : std::string();
      // A client's own join or leave was applied here before it was published; a bind
      // through the API is applied by every replica, the one that took the call too.
      if ((m.origin_node() != options_.node_id || m.via_api()) && event.part() != v1::Event::FANOUT) {
        if (bind) {
          registry_.MemberJoin(client, m.group_name());
        } else {
          registry_.MemberLeave(client, m.group_name());
        }
        // A bind through the API for a client connected here.
        if (Session* s = registry_.ByClient(client); s != nullptr && s->system_id == m.system_id()) {
          if (bind) {
            s->user_id = m.user_id();
            s->extend = m.extend();
            registry_.Join(s->conn, m.group_name());
          } else {
            registry_.Leave(s->conn, m.group_name());
          }
          UpdateInterest(m.system_id(), m.group_name());
        }
      }
      frame.type = "presence";
      frame.code = bind ? common::kCodeJoined : common::kCodeLeft;
      frame.msg = bind ? "joined" : "left";
      frame.data_json =
          common::JsonStringObject({{"clientId", client}, {"userId", m.user_id()}, {"extend", m.extend()}});
      Fanout(event, std::move(frame), now);
      return absl::OkStatus();
    }
    case v1::PushMessage::CLOSE_CLIENT:
      for (const auto& id : m.client_ids()) {
        Session* s = registry_.ByClient(id);
        if (s != nullptr && closing_.insert(s->conn).second) transport_->Close(s->conn, kCloseByApi, "closed by the API");
      }
      return absl::OkStatus();
    case v1::PushMessage::CLIENT_UP:
      if (m.origin_node() != options_.node_id && m.client_ids_size() > 0) {
        registry_.MemberUp(m.client_ids(0), m.system_id(), m.origin_node());
        // The same clientId connected elsewhere: this older session is replaced.
        if (Session* s = registry_.ByClient(m.client_ids(0)); s != nullptr && closing_.insert(s->conn).second) {
          m_.replaced->Inc();
          transport_->Close(s->conn, kCloseReplaced, "replaced by a new connection with the same clientId");
        }
      }
      return absl::OkStatus();
    case v1::PushMessage::CLIENT_DOWN:
      if (m.origin_node() != options_.node_id && m.client_ids_size() > 0) {
        registry_.MemberDown(m.client_ids(0), m.origin_node());
      }
      return absl::OkStatus();
    case v1::PushMessage::NODE_HELLO:
      if (m.origin_node() != options_.node_id) PublishSnapshot();
      return absl::OkStatus();
    case v1::PushMessage::NODE_SNAPSHOT: {
      if (m.origin_node() == options_.node_id) return absl::OkStatus();
      ASSIGN_OR_RETURN(std::vector<events::SnapshotMember> members, events::DecodeSnapshot(m.data()));
      registry_.NodeGone(m.origin_node());
      for (const events::SnapshotMember& member : members) {
        registry_.MemberUp(member.client_id, member.system_id, m.origin_node());
        for (const std::string& g : member.groups) registry_.MemberJoin(member.client_id, g);
      }
      return absl::OkStatus();
    }
    case v1::PushMessage::NODE_DOWN:
      if (m.origin_node() != options_.node_id) registry_.NodeGone(m.origin_node());
      return absl::OkStatus();
    case v1::PushMessage::NODE_ALIVE:
      return absl::OkStatus();  // what it says, OnEvent notes
    default:
      return absl::InvalidArgumentError("unknown push message kind");
  }
}

void PushNode::Submit(v1::PushMessage m, std::function<void(absl::StatusOr<std::string>)> done) {
  if (!common::IsValidId(m.system_id())) return done(ApiError(kCodeBadRequest, "systemId must be 1-64 characters of [A-Za-z0-9_.:-]"));
  if (absl::Status data = events::ValidateData(m.data()); !data.ok()) {
    return done(ApiError(kCodeBadRequest, std::string(data.message())));
  }
  bool names_clients = false;
  switch (m.kind()) {
    case v1::PushMessage::SEND_TO_CLIENTS:
    case v1::PushMessage::CLOSE_CLIENT: {
      if (m.client_ids_size() == 0) return done(ApiError(kCodeBadRequest, "clientId is required"));
      if (m.client_ids_size() > events::kMaxClientIds) {
        return done(ApiError(kCodeBadRequest, absl::StrCat("at most ", events::kMaxClientIds, " clientIds")));
      }
      for (const auto& id : m.client_ids()) {
        if (!common::IsValidId(id)) return done(ApiError(kCodeBadRequest, absl::StrCat("bad clientId \"", id, "\"")));
      }
      names_clients = true;
      break;
    }
    case v1::PushMessage::SEND_TO_GROUP:
      if (!common::IsValidId(m.group_name())) return done(ApiError(kCodeBadRequest, "groupName is required"));
      break;
    case v1::PushMessage::BIND_GROUP:
    case v1::PushMessage::UNBIND_GROUP: {
      if (!common::IsValidId(m.group_name())) return done(ApiError(kCodeBadRequest, "groupName is required"));
      if (m.client_ids_size() != 1 || !common::IsValidId(m.client_ids(0))) {
        return done(ApiError(kCodeBadRequest, "clientId is required"));
      }
      m.set_via_api(true);
      names_clients = true;
      break;
    }
    case v1::PushMessage::SEND_TO_SYSTEM:
      break;
    default:
      return done(ApiError(kCodeBadRequest, "unsupported operation"));
  }
  if (!upstream_->up()) return done(ApiError(kCodeUnavailable, "ingest is unavailable; try again"));
  if (m.kind() == v1::PushMessage::BIND_GROUP) {
    const Member* member = registry_.FindMember(m.client_ids(0));
    if (member != nullptr && member->groups.size() >= options_.max_groups_per_client &&
        !member->groups.contains(m.group_name())) {
      return done(ApiError(common::kCodeRateLimited,
                           absl::StrCat("at most ", options_.max_groups_per_client, " groups per client")));
    }
  }
  if (names_clients && !Knows(m)) {
    // Maybe connected, bound or unbound elsewhere a moment ago: catch up with the stream
    // before answering 404 (CONTRACT §10.2).
    return Sync([this, m = std::move(m), done = std::move(done)]() mutable {
      if (!Knows(m)) return done(ApiError(kCodeNotFound, "client is not online"));
      PublishApi(std::move(m), std::move(done));
    });
  }
  PublishApi(std::move(m), std::move(done));
}

bool PushNode::Knows(const v1::PushMessage& m) const {
  for (const auto& id : m.client_ids()) {
    const Member* member = registry_.FindMember(id);
    if (member != nullptr && member->system_id == m.system_id()) return true;
  }
  return false;
}

void PushNode::PublishApi(v1::PushMessage m, std::function<void(absl::StatusOr<std::string>)> done) {
  const std::string id = common::NewUuid();
  m.set_message_id(id);
  m.set_origin_node(options_.node_id);
  upstream_->Publish(std::move(m), [id, done = std::move(done)](const absl::Status& s) {
    if (!s.ok()) return done(ApiError(kCodeUnavailable, absl::StrCat("ingest unavailable: ", s.message())));
    done(id);
  });
}

void PushNode::Online(const std::string& system_id, const std::string& group,
                      std::function<void(std::vector<std::string>)> done) {
  Sync([this, system_id, group, done = std::move(done)] { done(registry_.Online(system_id, group)); });
}

absl::Status PushNode::CheckApiToken(absl::string_view authorization, absl::string_view system_id, absl::Time now) const {
  if (options_.auth_secret.empty()) return absl::OkStatus();
  if (!absl::StartsWith(authorization, "Bearer ")) {
    return absl::UnauthenticatedError("Authorization: Bearer <token> is required");
  }
  absl::StatusOr<Claims> claims = VerifyJwt(authorization.substr(7), options_.auth_secret, now);
  if (!claims.ok()) return claims.status();
  if (!claims->api) return absl::UnauthenticatedError("token lacks the api claim");
  if (!system_id.empty() && claims->sub != system_id) return absl::UnauthenticatedError("token is for another systemId");
  return absl::OkStatus();
}

}  // namespace devbridge::push
