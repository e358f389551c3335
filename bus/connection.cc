#include "bus/connection.h"

#include <nlohmann/json.hpp>

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace devbridge::bus {

absl::StatusOr<std::vector<std::string>> ParseBusFlag(absl::string_view flag) {
  std::vector<std::string> urls;
  for (absl::string_view entry : absl::StrSplit(flag, ',')) {
    const std::string quoted = absl::StrCat("'", entry, "'");
    absl::string_view rest = entry;
    if (!absl::ConsumePrefix(&rest, "nats://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("--bus: ", quoted, " is not nats://HOST:PORT (list several with commas)"));
    }
    const size_t colon = rest.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(rest.substr(colon + 1), &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--bus: ", quoted, " needs a host and a port from 1 to 65535"));
    }
    urls.emplace_back(entry);
  }
  return urls;
}

absl::Status FromNats(natsStatus status, absl::string_view what, int js_error) {
  if (status == NATS_OK) return absl::OkStatus();
  std::string text = absl::StrCat(what, ": ", natsStatus_GetText(status));
  if (js_error != 0) absl::StrAppend(&text, " (JetStream error ", js_error, ")");
  switch (status) {
    case NATS_TIMEOUT:
      return absl::DeadlineExceededError(text);
    case NATS_NOT_FOUND:
      return absl::NotFoundError(text);
    case NATS_CONNECTION_CLOSED:
    case NATS_NO_SERVER:
    case NATS_STALE_CONNECTION:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_NO_RESPONDERS:
      return absl::UnavailableError(text);
    default:
      break;
  }
  if (js_error == JSStreamWrongLastSequenceErr) return absl::FailedPreconditionError(text);
  if (js_error == JSNoMessageFoundErr || js_error == JSStreamNotFoundErr) {
    return absl::NotFoundError(text);
  }
  return absl::InternalError(text);
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Connect(const ConnectionOptions& options) {
  if (options.urls.empty()) return absl::InvalidArgumentError("--bus: no server given");
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  std::vector<const char*> servers;
  for (const std::string& url : options.urls) servers.push_back(url.c_str());
  const int64_t timeout_ms = absl::ToInt64Milliseconds(options.timeout);
  if (s == NATS_OK) s = natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size()));
  if (s == NATS_OK && !options.name.empty()) s = natsOptions_SetName(opts, options.name.c_str());
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, timeout_ms);
  // Once connected, keep trying for ever: a bus server restarting is not the end of us.
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
  // Readers share the library's delivery threads instead of one thread per subscription (a
  // push replica reads one subject per stream its clients hold: hundreds).
  if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(opts, true);
  natsConnection* nc = nullptr;
  if (s == NATS_OK) s = natsConnection_Connect(&nc, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK) {
    return FromNats(s, absl::StrCat("connecting to the bus (", absl::StrJoin(options.urls, ","), ")"));
  }
  jsOptions jso;
  jsOptions_Init(&jso);
  jso.Wait = timeout_ms;
  jsCtx* js = nullptr;
  s = natsConnection_JetStream(&js, nc, &jso);
  if (s != NATS_OK) {
    natsConnection_Destroy(nc);
    return FromNats(s, "opening JetStream");
  }
  return std::unique_ptr<Connection>(new Connection(nc, js, options.timeout));
}

Connection::~Connection() {
  jsCtx_Destroy(js_);
  natsConnection_Close(nc_);
  natsConnection_Destroy(nc_);
}

void Connection::Close() { natsConnection_Close(nc_); }

bool Connection::connected() const {
  return natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED;
}

uint64_t Connection::reconnects() const {
  natsStatistics* stats = nullptr;
  uint64_t reconnects = 0;
  if (natsStatistics_Create(&stats) == NATS_OK && natsConnection_GetStats(nc_, stats) == NATS_OK) {
    natsStatistics_GetCounts(stats, nullptr, nullptr, nullptr, nullptr, &reconnects);
  }
  natsStatistics_Destroy(stats);
  return reconnects;
}

absl::Status EnsureStream(const Connection& connection, const StreamSpec& spec, absl::Duration patience) {
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = spec.name.c_str();
  std::vector<const char*> subjects;
  for (const std::string& subject : spec.subjects) subjects.push_back(subject.c_str());
  cfg.Subjects = subjects.data();
  cfg.SubjectsLen = static_cast<int>(subjects.size());
  cfg.Storage = js_FileStorage;
  cfg.Replicas = spec.replicas;
  cfg.MaxAge = absl::ToInt64Nanoseconds(spec.max_age);
  cfg.MaxBytes = spec.max_bytes;
  if (!spec.description.empty()) cfg.Description = spec.description.c_str();
  const absl::Time deadline = absl::Now() + patience;
  for (;;) {
    jsErrCode code = static_cast<jsErrCode>(0);
    jsStreamInfo* info = nullptr;
    natsStatus s = js_AddStream(&info, connection.js(), &cfg, nullptr, &code);
    jsStreamInfo_Destroy(info);
    if (s == NATS_OK) return absl::OkStatus();
    // Another process created it a moment ago, with a different but compatible config (its
    // description, with its epoch); or our own creation went on after its answer timed out.
    // It is there once the servers show it: nats-server 2.10 refuses a second creation while
    // the first is still being agreed on, and shows the stream only after (seen: "not found"
    // 30 ms after "name already in use").
    info = nullptr;
    const natsStatus get = js_GetStreamInfo(&info, connection.js(), spec.name.c_str(), nullptr, nullptr);
    jsStreamInfo_Destroy(info);
    if (get == NATS_OK) return absl::OkStatus();
    const bool exists = code == JSStreamNameExistErr;
    // "No suitable peers": a cluster just started, whose servers have not all told the
    // metadata leader about themselves yet (or fewer servers than replicas, for good).
    const bool transient = exists || code == JSClusterNoPeersErr ||
                           (code == 0 && (s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS));
    const absl::Duration pause = exists ? absl::Milliseconds(100) : absl::Seconds(1);
    if (!transient || absl::Now() + pause > deadline) {
      if (exists) return FromNats(get, absl::StrCat("reading stream ", spec.name, ", created by another process"));
      if (code == JSClusterNoPeersErr) {
        return FromNats(s, absl::StrCat("creating stream ", spec.name, " with ", spec.replicas,
                                        " copies: fewer JetStream servers can take one (a server down, or one "
                                        "left out of the metadata group at the cluster's start: restart it; "
                                        "README, Operations)"),
                        code);
      }
      return FromNats(s, absl::StrCat("creating stream ", spec.name), code);
    }
    absl::SleepFor(pause);
  }
}

absl::StatusOr<uint64_t> LastSequence(const Connection& connection, const std::string& name) {
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, connection.js(), name.c_str(), nullptr, &code);
  if (s != NATS_OK) return FromNats(s, absl::StrCat("reading stream ", name), code);
  const uint64_t last = info->State.LastSeq;
  jsStreamInfo_Destroy(info);
  return last;
}

absl::StatusOr<std::optional<StoredMessage>> ReadNext(const Connection& connection, const std::string& stream,
                                                      const std::string& subject, uint64_t from) {
  const std::string api = absl::StrCat("$JS.API.STREAM.MSG.GET.", stream);
  const std::string request = nlohmann::json{{"seq", from}, {"next_by_subj", subject}}.dump();
  natsMsg* reply = nullptr;
  natsStatus s = natsConnection_Request(&reply, connection.nc(), api.c_str(), request.data(),
                                        static_cast<int>(request.size()), absl::ToInt64Milliseconds(connection.timeout()));
  if (s != NATS_OK) return FromNats(s, absl::StrCat("reading ", subject, " of ", stream, " from ", from));
  const nlohmann::json answer = nlohmann::json::parse(
      absl::string_view(natsMsg_GetData(reply), natsMsg_GetDataLength(reply)), nullptr, false);
  natsMsg_Destroy(reply);
  if (answer.is_discarded() || !answer.is_object()) {
    return absl::InternalError(absl::StrCat("reading ", subject, ": the server's answer is not JSON"));
  }
  if (answer.contains("error")) {
    if (answer["error"].value("err_code", 0) == JSNoMessageFoundErr) return std::nullopt;
    return absl::InternalError(absl::StrCat("reading ", subject, " of ", stream, " from ", from, ": ",
                                            answer["error"].value("description", "error")));
  }
  const nlohmann::json& message = answer.value("message", nlohmann::json::object());
  StoredMessage read;
  read.sequence = message.value("seq", uint64_t{0});
  read.subject = message.value("subject", "");
  if (!absl::Base64Unescape(message.value("hdrs", ""), &read.headers) ||
      !absl::Base64Unescape(message.value("data", ""), &read.data)) {
    return absl::DataLossError(absl::StrCat("reading ", subject, ": undecodable message ", read.sequence));
  }
  return read;
}

absl::StatusOr<std::vector<std::string>> BucketKeys(const Connection& connection, const std::string& bucket,
                                                    const std::string& prefix) {
  // A wildcard is a whole token: a prefix ending in "." narrows the filter; the rest of the
  // prefix is matched here.
  const std::string subjects_of = absl::StrCat("$KV.", bucket, ".");
  const std::string filter = absl::StrCat(subjects_of, absl::EndsWith(prefix, ".") ? prefix : "", ">");
  const std::string stream = absl::StrCat("KV_", bucket);
  jsOptions options;
  jsOptions_Init(&options);
  options.Stream.Info.SubjectsFilter = filter.c_str();
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, connection.js(), stream.c_str(), &options, &code);
  if (s != NATS_OK) return FromNats(s, absl::StrCat("listing the keys of ", bucket), code);
  std::vector<std::string> keys;
  if (info->State.Subjects != nullptr) {
    for (int i = 0; i < info->State.Subjects->Count; ++i) {
      absl::string_view key = info->State.Subjects->List[i].Subject;
      if (absl::ConsumePrefix(&key, subjects_of) && absl::StartsWith(key, prefix)) keys.emplace_back(key);
    }
  }
  jsStreamInfo_Destroy(info);
  return keys;
}

absl::StatusOr<kvStore*> EnsureBucket(const Connection& connection, const std::string& name, absl::Duration ttl,
                                      int replicas, absl::Duration patience) {
  kvConfig cfg;
  kvConfig_Init(&cfg);
  cfg.Bucket = name.c_str();
  cfg.History = 1;
  cfg.TTL = absl::ToInt64Nanoseconds(ttl);  // the C client passes it on as MaxAge, in ns
  cfg.StorageType = js_FileStorage;
  cfg.Replicas = replicas;
  const absl::Time deadline = absl::Now() + patience;
  for (;;) {
    kvStore* kv = nullptr;
    natsStatus s = js_KeyValue(&kv, connection.js(), name.c_str());
    if (s == NATS_OK) return kv;
    std::string why;
    if (s == NATS_NOT_FOUND) {
      s = js_CreateKeyValue(&kv, connection.js(), &cfg);
      if (s == NATS_OK) return kv;
      why = nats_GetLastError(nullptr);
    }
    // Not yet: JetStream not answering (a server just started, a busy machine), a cluster
    // that does not know its servers yet ("no suitable peers"), another process's creation
    // not yet agreed on (nats-server 2.10 shows it only then), or ours going on after its
    // answer timed out (a replicated bucket's servers elect a leader first).
    if (absl::Now() + absl::Milliseconds(500) > deadline) {
      return FromNats(s, absl::StrCat("opening bucket ", name, why.empty() ? "" : absl::StrCat(" (", why, ")")));
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
}

namespace {
constexpr absl::string_view kEpochTag = "devbridge epoch ";
}  // namespace

absl::StatusOr<std::string> StreamEpoch(const Connection& connection, const std::string& name,
                                        absl::Duration patience) {
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, connection.js(), name.c_str(), nullptr, &code);
  for (const absl::Time deadline = absl::Now() + patience;
       code == 0 && (s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS) && absl::Now() < deadline;) {
    absl::SleepFor(absl::Seconds(1));
    s = js_GetStreamInfo(&info, connection.js(), name.c_str(), nullptr, &code);
  }
  if (s != NATS_OK) return FromNats(s, absl::StrCat("reading stream ", name), code);
  absl::string_view described =
      info->Config != nullptr && info->Config->Description != nullptr ? info->Config->Description : "";
  std::string epoch = absl::ConsumePrefix(&described, kEpochTag) && !described.empty()
                          ? absl::StrCat("bus-", described)
                          : absl::StrCat("bus-", absl::Hex(info->Created));
  jsStreamInfo_Destroy(info);
  return epoch;
}

std::string NewEpochDescription() {
  absl::BitGen random;
  return absl::StrCat(kEpochTag, absl::Hex(absl::Uniform<uint64_t>(random), absl::kZeroPad16));
}

}  // namespace devbridge::bus
