#include "services/ingest/core/ingest_core.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/json_parse.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "common/uuid.h"
#include "modbus/payload.h"
#include "nlohmann/json.hpp"

namespace devbridge::ingest {
namespace {

// How often a device's last_seen is written back while it keeps talking.
constexpr absl::Duration kLastSeenWriteInterval = absl::Seconds(5);
constexpr uint32_t kMaxTimeoutMs = 60000;

std::string Bytes(absl::Span<const uint8_t> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void AddValues(const std::vector<regmap::DecodedValue>& values, v1::CommandResult* result) {
  for (const auto& v : values) {
    v1::DecodedValue* out = result->add_values();
    out->set_name(v.reg->name);
    out->set_json_value(v.value.ToJson());
    out->set_unit(v.reg->unit);
    for (int i = 0; i < v.raw_count; ++i) out->add_raw(v.raw[i]);
  }
}

PollScheduler::Options PollOptions(const CoreOptions& o) {
  PollScheduler::Options p;
  p.failures = o.poll_failures;
  p.backoff_max = o.poll_backoff_max;
  return p;
}

// What a result says about the request it answers: device, unit, function, registers, the
// frame sent, when the answer came and how long after sending.
void DescribeRequest(const PendingCommand& cmd, absl::Time now, v1::CommandResult* result) {
  result->set_device_id(cmd.command.device_id());
  result->set_unit(cmd.request.unit);
  result->set_function(cmd.request.function);
  result->set_address(cmd.request.address);
  result->set_count(cmd.request.Quantity());
  result->set_request(Bytes(cmd.frame));
  result->set_received_at_unix_ms(absl::ToUnixMillis(now));
  result->set_solicited(true);
  if (cmd.sent != absl::InfinitePast()) result->set_latency_ms(absl::ToDoubleMilliseconds(now - cmd.sent));
}

const char* StatusFor(int code) {
  if (code == common::kCodeSuccess) return "succeeded";
  if (code == common::kCodeTimeout) return "timeout";
  return "failed";
}

}  // namespace

size_t RecordBytes(const StoreRecord& record) {
  struct Size {
    size_t operator()(const DeviceRecord& r) const {
      return sizeof r + r.device_id.size() + (r.meta_json ? r.meta_json->size() : 0);
    }
    size_t operator()(const ReadingRecord& r) const {
      return sizeof r + r.device_id.size() + r.raw.size() + r.values_json.size();
    }
    size_t operator()(const CommandRecord& r) const {
      return sizeof r + r.device_id.size() + r.request.size() + (r.response ? r.response->size() : 0) +
             r.error.size();
    }
  };
  return std::visit(Size{}, record);
}

std::string BadFrameKind(const absl::Status& status) {
  const absl::string_view m = status.message();
  if (absl::StartsWith(m, "CRC mismatch")) return "crc";
  if (absl::StartsWith(m, "bad hex") || absl::StartsWith(m, "empty payload") ||
      absl::StartsWith(m, "hex text")) {
    return "hex";
  }
  if (absl::StrContains(m, "mismatch")) return "mismatch";
  return "malformed";
}

using common::AppendJsonString;

std::string ValuesJson(const std::vector<regmap::DecodedValue>& values) {
  std::string out = "{";
  for (const auto& v : values) {
    if (out.size() > 1) out.push_back(',');
    AppendJsonString(&out, v.reg->name);
    absl::StrAppend(&out, ":{\"value\":", v.value.ToJson(), ",\"unit\":");
    AppendJsonString(&out, v.reg->unit);
    out.append(",\"raw\":[");
    for (int i = 0; i < v.raw_count; ++i) absl::StrAppend(&out, i ? "," : "", v.raw[i]);
    out.append("]}");
  }
  out.push_back('}');
  return out;
}

IngestCore::IngestCore(CoreOptions options, std::shared_ptr<const regmap::RegisterMap> map,
                       CoreOutputs* outputs, common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      map_(std::move(map)),
      out_(outputs),
      commands_(options_.command_queue_depth),
      polls_(PollOptions(options_)),
      topic_prefix_slash_(options_.topic_prefix + "/") {
  auto& r = *metrics;
  const char* in = "devbridge_ingest_messages_total";
  const char* in_help = "MQTT messages taken, by kind.";
  m_.heartbeats = &r.AddCounter(in, in_help, {{"kind", "heartbeat"}});
  m_.data = &r.AddCounter(in, in_help, {{"kind", "data"}});
  const char* dropped = "devbridge_ingest_messages_dropped_total";
  const char* dropped_help = "MQTT messages dropped, by reason.";
  m_.invalid_id = &r.AddCounter(dropped, dropped_help, {{"reason", "invalid_id"}});
  m_.oversize = &r.AddCounter(dropped, dropped_help, {{"reason", "oversize"}});
  m_.unknown_topic = &r.AddCounter(dropped, dropped_help, {{"reason", "unknown_topic"}});
  const char* bad = "devbridge_ingest_frames_bad_total";
  const char* bad_help = "Data frames that failed validation, by kind.";
  m_.bad_crc = &r.AddCounter(bad, bad_help, {{"kind", "crc"}});
  m_.bad_hex = &r.AddCounter(bad, bad_help, {{"kind", "hex"}});
  m_.bad_malformed = &r.AddCounter(bad, bad_help, {{"kind", "malformed"}});
  m_.bad_mismatch = &r.AddCounter(bad, bad_help, {{"kind", "mismatch"}});
  m_.meta_refused = &r.AddCounter("devbridge_ingest_heartbeat_meta_refused_total",
                                  "Heartbeat meta not kept: it holds a NUL, which PostgreSQL cannot store.");
  m_.unsolicited = &r.AddCounter("devbridge_ingest_unsolicited_frames_total",
                                 "Valid data frames with no command in flight.");
  m_.command_latency = &r.AddHistogram("devbridge_ingest_command_latency_ms",
                                       "Command publish to reply, milliseconds.",
                                       common::LatencyBucketsMs());
  const char* polls = "devbridge_ingest_polls_total";
  const char* polls_help = "Polls of devices' plans, by outcome (skipped: the block's previous poll still waited).";
  m_.polls_sent = &r.AddCounter(polls, polls_help, {{"outcome", "sent"}});
  m_.polls_replied = &r.AddCounter(polls, polls_help, {{"outcome", "replied"}});
  m_.polls_bad_reply = &r.AddCounter(polls, polls_help, {{"outcome", "bad_reply"}});
  m_.polls_no_reply = &r.AddCounter(polls, polls_help, {{"outcome", "no_reply"}});
  m_.polls_skipped = &r.AddCounter(polls, polls_help, {{"outcome", "skipped"}});
  m_.poll_start_delay = &r.AddHistogram("devbridge_ingest_poll_start_delay_ms",
                                        "From a poll's slot in the plan to its request going out, milliseconds.",
                                        common::LatencyBucketsMs());
  m_.polled_devices = &r.AddGauge("devbridge_ingest_polled_devices", "Online devices with a polling plan.");
  m_.unresponsive = &r.AddGauge("devbridge_ingest_devices_unresponsive",
                                "Polled devices that stopped answering (CONTRACT §10.4).");
  for (int code : {200, 400, 503, 2001, 2002, 2003, 2004, 2005, 2006}) {
    m_.results[code] = &r.AddCounter("devbridge_ingest_commands_total", "Commands by result code.",
                                     {{"code", std::to_string(code)}});
  }
  m_.results_other = &r.AddCounter("devbridge_ingest_commands_total", "Commands by result code.",
                                   {{"code", "other"}});
}

std::vector<StreamRef> IngestCore::DeviceStreams(const std::string& device_id) const {
  std::vector<StreamRef> streams{{device_id, ""}};
  if (options_.fleet_system != device_id) streams.push_back({options_.fleet_system, ""});
  return streams;
}

void IngestCore::OnMessage(absl::string_view topic, absl::string_view payload, absl::Time now) {
  if (!absl::StartsWith(topic, topic_prefix_slash_)) {
    m_.unknown_topic->Inc();
    return;
  }
  absl::string_view rest = topic.substr(topic_prefix_slash_.size());
  const size_t slash = rest.rfind('/');
  if (slash == absl::string_view::npos) {
    m_.unknown_topic->Inc();
    return;
  }
  const absl::string_view id = rest.substr(0, slash);
  const absl::string_view kind = rest.substr(slash + 1);
  if (kind != "heartbeat" && kind != "data") {
    m_.unknown_topic->Inc();
    return;
  }
  if (!common::IsValidId(id)) {
    m_.invalid_id->Inc();
    static auto log = common::Logger("ingest.core");
    log->debug("dropped message on {}: device id must match [A-Za-z0-9_.:-]{{1,64}}", topic);
    return;
  }
  if (kind == "heartbeat") {
    OnHeartbeat(std::string(id), payload, now);
  } else {
    OnData(std::string(id), payload, now);
  }
}

void IngestCore::Seen(const std::string& device_id, absl::Time now) {
  const bool came_online = devices_.Touch(device_id, now);
  DeviceInfo* d = devices_.FindMutable(device_id);
  if (came_online) {
    common::Logger("ingest.core")->info("[{}] online", device_id);
    EmitDeviceState(*d);
    StoreDevice(*d, false);
    StartPolling(device_id, now);
  } else if (now - d->stored_at >= kLastSeenWriteInterval) {
    StoreDevice(*d, false);
  }
}

void IngestCore::EmitDeviceState(const DeviceInfo& device) {
  v1::Event event;
  v1::DeviceState* state = event.mutable_device_state();
  state->set_device_id(device.id);
  state->set_online(device.online);
  state->set_meta_json(device.meta_json);
  out_->Emit(std::move(event), DeviceStreams(device.id));
}

void IngestCore::StoreDevice(const DeviceInfo& device, bool with_meta) {
  DeviceRecord rec;
  rec.device_id = device.id;
  rec.online = device.online;
  rec.first_seen = device.first_seen;
  rec.last_seen = device.last_seen;
  if (with_meta) rec.meta_json = device.meta_json;
  devices_.FindMutable(device.id)->stored_at = device.last_seen;
  out_->Store(std::move(rec));
}

void IngestCore::OnHeartbeat(const std::string& device_id, absl::string_view payload, absl::Time now) {
  if (payload.size() > options_.max_heartbeat_bytes) {
    m_.oversize->Inc();
    return;
  }
  m_.heartbeats->Inc();
  Seen(device_id, now);
  absl::StatusOr<nlohmann::json> meta = common::ParseJson(payload);
  if (meta.ok() && meta->is_object()) {
    // A NUL (which PostgreSQL's jsonb cannot hold) refuses the meta before it reaches SQL;
    // the heartbeat still counts for liveness. (Invalid UTF-8 never parses.)
    std::string text = meta->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (absl::StrContains(text, "\\u0000")) {
      m_.meta_refused->Inc();
      return;
    }
    DeviceInfo* d = devices_.FindMutable(device_id);
    if (text != d->meta_json) {
      d->meta_json = std::move(text);
      StoreDevice(*d, true);
    }
  }
}

void IngestCore::OnData(const std::string& device_id, absl::string_view payload, absl::Time now) {
  if (payload.size() > options_.max_data_bytes) {
    m_.oversize->Inc();
    return;
  }
  m_.data->Inc();
  Seen(device_id, now);
  if (std::optional<PendingCommand> cmd = commands_.TakeInFlight(device_id)) {
    CompleteWithFrame(std::move(*cmd), payload, now);
    StartNext(device_id, now);
  } else {
    Unsolicited(device_id, payload, now);
  }
}

void IngestCore::CountBadFrame(const absl::Status& status) {
  const std::string kind = BadFrameKind(status);
  if (kind == "crc") {
    m_.bad_crc->Inc();
  } else if (kind == "hex") {
    m_.bad_hex->Inc();
  } else if (kind == "mismatch") {
    m_.bad_mismatch->Inc();
  } else {
    m_.bad_malformed->Inc();
  }
}

void IngestCore::CompleteWithFrame(PendingCommand cmd, absl::string_view payload, absl::Time now) {
  v1::CommandResult result;
  absl::StatusOr<modbus::FrameBytes> frame = modbus::ReadPayload(payload);
  if (!frame.ok()) {
    CountBadFrame(frame.status());
    result.set_code(common::kCodeFrameError);
    result.set_msg(std::string(frame.status().message()));
    return Finish(std::move(cmd), std::move(result), now);
  }
  result.set_response(Bytes(frame->span()));
  absl::StatusOr<modbus::Reply> reply = modbus::ParseReply(frame->span(), cmd.request);
  if (!reply.ok()) {
    CountBadFrame(reply.status());
    result.set_code(common::kCodeFrameError);
    result.set_msg(std::string(reply.status().message()));
    return Finish(std::move(cmd), std::move(result), now);
  }
  if (reply->is_exception()) {
    result.set_code(common::kCodeModbusException);
    result.set_msg(std::string(modbus::ExceptionStatus(reply->exception).message()));
    result.set_exception_code(reply->exception);
    result.set_exception_name(std::string(modbus::ExceptionName(reply->exception)));
    return Finish(std::move(cmd), std::move(result), now);
  }
  result.set_code(common::kCodeSuccess);
  result.set_msg("success");
  if (cmd.request.function == modbus::kReadHoldingRegisters ||
      cmd.request.function == modbus::kReadInputRegisters) {
    const regmap::Profile* profile = map_->ProfileFor(cmd.command.device_id());
    absl::Status decoded =
        profile == nullptr
            ? common::Error(common::kCodeNoRegister, absl::StatusCode::kNotFound,
                            absl::StrCat("no register-map profile for device ",
                                         cmd.command.device_id()))
            : regmap::Decode(*profile, cmd.request.address, reply->data, &scratch_);
    if (!decoded.ok()) {
      scratch_.clear();
      result.set_code(common::kCodeNoRegister);
      result.set_msg(std::string(decoded.message()));
    }
    AddValues(scratch_, &result);
    ReadingRecord reading;
    reading.device_id = cmd.command.device_id();
    reading.received_at = now;
    reading.published_at = now;
    reading.command_id = cmd.command_id;
    reading.unit = cmd.request.unit;
    reading.function = cmd.request.function;
    reading.address = cmd.request.address;
    reading.raw = result.response();
    reading.values_json = ValuesJson(scratch_);
    out_->Store(std::move(reading));
  }
  Finish(std::move(cmd), std::move(result), now);
}

void IngestCore::Finish(PendingCommand cmd, v1::CommandResult result, absl::Time now) {
  if (cmd.poll) return FinishPoll(std::move(cmd), std::move(result), now);
  const v1::Command& c = cmd.command;
  DescribeRequest(cmd, now, &result);
  result.set_command_id(cmd.command_id);
  result.set_request_id(c.request_id());
  result.set_origin_node(c.origin_node());
  result.set_client_id(c.client_id());
  result.set_system_id(c.system_id());
  if (cmd.sent != absl::InfinitePast() && result.code() != common::kCodeTimeout) {
    m_.command_latency->Observe(result.latency_ms());
  }
  auto counter = m_.results.find(result.code());
  (counter == m_.results.end() ? m_.results_other : counter->second)->Inc();

  CommandRecord rec;
  rec.command_id = cmd.command_id;
  rec.device_id = c.device_id();
  rec.requested_at = cmd.submitted;
  rec.completed_at = now;
  rec.status = StatusFor(result.code());
  rec.code = result.code();
  rec.request = result.request();
  if (!result.response().empty()) rec.response = result.response();
  if (result.code() != common::kCodeSuccess) rec.error = result.msg();
  out_->Store(std::move(rec));

  if (cmd.done) cmd.done(result);
  v1::Event event;
  *event.mutable_data() = std::move(result);
  out_->Emit(std::move(event), DeviceStreams(c.device_id()));
}

void IngestCore::StartNext(const std::string& device_id, absl::Time now) {
  PendingCommand* next = commands_.StartNext(device_id, now);
  if (next == nullptr) return;
  out_->PublishCommand(device_id, modbus::ToHex(next->frame), next->poll);
  if (next->poll) {
    m_.polls_sent->Inc();
    m_.poll_start_delay->Observe(std::max(0.0, absl::ToDoubleMilliseconds(now - next->poll_request.due)));
    return;  // polls are not rows of `commands`
  }
  CommandRecord rec;
  rec.command_id = next->command_id;
  rec.device_id = device_id;
  rec.requested_at = next->submitted;
  rec.status = "sent";
  rec.request = Bytes(next->frame);
  out_->Store(std::move(rec));
}

void IngestCore::RememberCommandId(const std::string& command_id) {
  if (!used_ids_.insert(command_id).second) return;
  used_order_.push_back(command_id);
  if (used_order_.size() > kRememberedCommandIds) {
    used_ids_.erase(used_order_.front());
    used_order_.pop_front();
  }
}

void IngestCore::Submit(v1::Command command, absl::Time now, CommandDone done) {
  PendingCommand cmd;
  cmd.submitted = now;
  cmd.sent = absl::InfinitePast();
  cmd.done = std::move(done);
  if (command.function() == 0) command.set_function(modbus::kReadHoldingRegisters);
  cmd.command_id = command.command_id().empty() ? common::NewUuid() : command.command_id();

  auto fail = [&](int code, std::string msg) {
    v1::CommandResult result;
    result.set_code(code);
    result.set_msg(std::move(msg));
    cmd.command = std::move(command);
    Finish(std::move(cmd), std::move(result), now);
  };
  if (!common::IsValidId(command.device_id())) {
    return fail(common::kCodeBadRequest, "deviceId must match [A-Za-z0-9_.:-]{1,64}");
  }
  if (!common::IsUuid(cmd.command_id)) return fail(common::kCodeBadRequest, "commandId must be a UUID");
  RememberCommandId(cmd.command_id);
  if (command.timeout_ms() > kMaxTimeoutMs) {
    return fail(common::kCodeBadRequest, absl::StrCat("timeoutMs ", command.timeout_ms(), " exceeds 60000"));
  }
  if (command.unit() > 247) return fail(common::kCodeBadRequest, "unit must be 0..247");
  if (command.function() > 255 || command.address() > 65535 || command.count() > 65535) {
    return fail(common::kCodeBadRequest, "function, address or count out of range");
  }
  if (command.unit() == 0) {
    const regmap::Profile* profile = map_->ProfileFor(command.device_id());
    command.set_unit(profile != nullptr ? profile->unit : 1);
  }
  cmd.request.unit = static_cast<uint8_t>(command.unit());
  cmd.request.function = static_cast<uint8_t>(command.function());
  cmd.request.address = static_cast<uint16_t>(command.address());
  cmd.request.count = static_cast<uint16_t>(command.count());
  for (uint32_t v : command.values()) {
    if (v > 65535) return fail(common::kCodeBadRequest, absl::StrCat("value ", v, " out of range 0..65535"));
    cmd.request.values.push_back(static_cast<uint16_t>(v));
  }
  absl::StatusOr<std::vector<uint8_t>> frame = modbus::BuildRequest(cmd.request);
  if (!frame.ok()) return fail(common::kCodeBadRequest, std::string(frame.status().message()));
  cmd.frame = *std::move(frame);
  if (!devices_.IsOnline(command.device_id())) {
    const bool known = devices_.Find(command.device_id()) != nullptr;
    return fail(common::kCodeDeviceOffline,
                absl::StrCat("device ", command.device_id(), known ? " is offline" : " is unknown"));
  }
  const uint32_t timeout_ms =
      command.timeout_ms() != 0 ? command.timeout_ms()
                                : static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.command_timeout));
  cmd.deadline = now + absl::Milliseconds(timeout_ms);
  const std::string device_id = command.device_id();
  cmd.command = std::move(command);

  CommandRecord rec;
  rec.command_id = cmd.command_id;
  rec.device_id = device_id;
  rec.requested_at = now;
  rec.status = "queued";
  rec.request = Bytes(cmd.frame);
  if (commands_.Full(device_id)) {
    return fail(common::kCodeQueueFull,
                absl::StrCat("device ", device_id, " has ", options_.command_queue_depth,
                             " commands waiting"));
  }
  out_->Store(std::move(rec));
  commands_.Enqueue(std::move(cmd));
  StartNext(device_id, now);
}

void IngestCore::ExpireCommands(absl::Time now) {
  if (commands_.total() == 0) return;
  for (PendingCommand& cmd : commands_.TakeExpired(now)) {
    v1::CommandResult result;
    result.set_code(common::kCodeTimeout);
    const auto waited = absl::ToInt64Milliseconds(cmd.deadline - cmd.submitted);
    result.set_msg(cmd.sent == absl::InfinitePast()
                       ? absl::StrCat("no reply: timed out after ", waited, " ms waiting in the queue")
                       : absl::StrCat("no reply within ", waited, " ms"));
    Finish(std::move(cmd), std::move(result), now);
  }
  for (const std::string& id : commands_.IdleDevicesWithWork()) StartNext(id, now);
}

void IngestCore::Tick(absl::Time now, bool sweep_liveness) {
  ExpireCommands(now);
  // Offline devices are forgotten after forget_after, so the table is bounded by the devices
  // seen within that time, not by every id ever seen. (Offline devices have no commands.)
  for (const std::string& id : devices_.Forget(now, options_.forget_after)) {
    common::Logger("ingest.core")->debug("[{}] forgotten: offline for more than {}", id,
                                         absl::FormatDuration(options_.forget_after));
  }
  if (sweep_liveness) {
    for (const std::string& id : devices_.Sweep(now, options_.heartbeat_timeout)) {
      common::Logger("ingest.core")->info("[{}] offline: silent for more than {}", id,
                                          absl::FormatDuration(options_.heartbeat_timeout));
      const DeviceInfo& d = *devices_.Find(id);
      EmitDeviceState(d);
      StoreDevice(d, false);
      polls_.Stop(id);  // offline is its own state: polls resume when it comes back
      m_.polled_devices->Set(static_cast<int64_t>(polls_.size()));
      m_.unresponsive->Set(static_cast<int64_t>(polls_.unresponsive()));
      for (PendingCommand& cmd : commands_.TakeAll(id)) {
        v1::CommandResult result;
        result.set_code(common::kCodeDeviceOffline);
        result.set_msg(absl::StrCat("device ", id, " went offline"));
        Finish(std::move(cmd), std::move(result), now);
      }
    }
  }
}

void IngestCore::StartPolling(const std::string& device_id, absl::Time now) {
  const regmap::Profile* profile = map_->ProfileFor(device_id);
  polls_.Start(device_id, profile != nullptr ? profile->unit : 1, map_->PollPlanFor(device_id), now);
  m_.polled_devices->Set(static_cast<int64_t>(polls_.size()));
  m_.unresponsive->Set(static_cast<int64_t>(polls_.unresponsive()));
}

void IngestCore::RunPolls(absl::Time now) {
  if (polls_.next_due() > now) return;
  const uint64_t skipped = polls_.skipped();
  due_polls_.clear();
  polls_.TakeDue(now, &due_polls_);
  m_.polls_skipped->Inc(polls_.skipped() - skipped);
  for (PollRequest& r : due_polls_) {
    PendingCommand cmd;
    cmd.poll = true;
    cmd.command.set_device_id(r.device_id);
    cmd.command.set_function(r.function);
    cmd.command.set_unit(r.unit);
    cmd.command.set_address(r.address);
    cmd.command.set_count(r.count);
    cmd.request.unit = r.unit;
    cmd.request.function = r.function;
    cmd.request.address = r.address;
    cmd.request.count = r.count;
    absl::StatusOr<std::vector<uint8_t>> frame = modbus::BuildRequest(cmd.request);
    if (!frame.ok()) continue;  // cannot happen: the map checked function, address and count
    cmd.frame = *std::move(frame);
    cmd.submitted = now;
    cmd.sent = absl::InfinitePast();
    cmd.deadline = now + options_.command_timeout;
    const std::string device_id = r.device_id;
    cmd.poll_request = std::move(r);
    commands_.Enqueue(std::move(cmd));
    StartNext(device_id, now);
  }
}

void IngestCore::FinishPoll(PendingCommand cmd, v1::CommandResult result, absl::Time now) {
  const std::string& device_id = cmd.command.device_id();
  const int code = result.code();
  if (code == common::kCodeTimeout) {
    m_.polls_no_reply->Inc();
  } else if (code == common::kCodeFrameError) {
    m_.polls_bad_reply->Inc();
  } else if (code == common::kCodeSuccess || code == common::kCodeNoRegister ||
             code == common::kCodeModbusException) {
    m_.polls_replied->Inc();
  }
  const PollTransition transition = polls_.Done(cmd.poll_request, code, now);
  // A reply, good or garbled, is shown like any device data; silence (2002) and the end of
  // polling (offline, shutdown) are not.
  const bool replied = code == common::kCodeSuccess || code == common::kCodeNoRegister ||
                       code == common::kCodeModbusException || code == common::kCodeFrameError;
  if (replied) {
    DescribeRequest(cmd, now, &result);
    result.set_poll(true);
    v1::Event event;
    *event.mutable_data() = std::move(result);
    out_->Emit(std::move(event), DeviceStreams(device_id));
  }
  if (transition == PollTransition::kNone) return;
  const PollStatus* status = polls_.Find(device_id);
  v1::Event event;
  v1::DeviceResponsive* r = event.mutable_responsive();
  r->set_device_id(device_id);
  r->set_responsive(transition == PollTransition::kResponsive);
  r->set_failures(status != nullptr ? status->failures : 0);
  r->set_backoff_ms(status != nullptr ? absl::ToInt64Milliseconds(status->backoff) : 0);
  if (transition == PollTransition::kUnresponsive) {
    common::Logger("ingest.core")
        ->warn("[{}] unresponsive: {} polls in a row without a good reply; probing every {}", device_id,
               r->failures(), absl::FormatDuration(status != nullptr ? status->backoff : absl::ZeroDuration()));
  } else {
    common::Logger("ingest.core")->info("[{}] responsive again", device_id);
  }
  m_.unresponsive->Set(static_cast<int64_t>(polls_.unresponsive()));
  out_->Emit(std::move(event), DeviceStreams(device_id));
}

void IngestCore::SetRegisterMap(std::shared_ptr<const regmap::RegisterMap> map, absl::Time now) {
  map_ = std::move(map);
  for (const DeviceInfo& d : devices_.Snapshot()) {
    if (d.online) StartPolling(d.id, now);
  }
}

void IngestCore::FailAll(absl::Time now, const std::string& reason) {
  for (const std::string& id : commands_.Devices()) {
    for (PendingCommand& cmd : commands_.TakeAll(id)) {
      v1::CommandResult result;
      result.set_code(common::kCodeUnavailable);
      result.set_msg(reason);
      Finish(std::move(cmd), std::move(result), now);
    }
  }
}

void IngestCore::Release(const std::function<bool(absl::string_view)>& moved, absl::Time now,
                         const std::string& reason) {
  for (const std::string& id : commands_.Devices()) {
    if (!moved(id)) continue;
    for (PendingCommand& cmd : commands_.TakeAll(id)) {
      v1::CommandResult result;
      result.set_code(common::kCodeUnavailable);
      result.set_msg(reason);
      Finish(std::move(cmd), std::move(result), now);
    }
  }
  std::vector<std::string> gone;
  for (const DeviceInfo& d : devices_.Snapshot()) {
    if (moved(d.id)) gone.push_back(d.id);
  }
  for (const std::string& id : gone) {
    polls_.Stop(id);
    devices_.Erase(id);
  }
}

void IngestCore::Unsolicited(const std::string& device_id, absl::string_view payload, absl::Time now) {
  absl::StatusOr<modbus::FrameBytes> frame = modbus::ReadPayload(payload);
  if (!frame.ok()) {
    CountBadFrame(frame.status());
    return;
  }
  absl::StatusOr<modbus::Reply> reply = modbus::ParseUnsolicited(frame->span());
  if (!reply.ok()) {
    CountBadFrame(reply.status());
    return;
  }
  const regmap::Profile* profile = map_->ProfileFor(device_id);
  if (profile != nullptr && reply->unit != profile->unit) {
    // Not from the meter the register map describes for this device: storing it would put
    // another device's registers under this one's names.
    CountBadFrame(absl::InvalidArgumentError(
        absl::StrCat("unit mismatch: frame from unit ", reply->unit, ", the profile's unit is ", profile->unit)));
    return;
  }
  m_.unsolicited->Inc();
  v1::CommandResult result;
  result.set_device_id(device_id);
  result.set_unit(reply->unit);
  result.set_function(reply->function);
  result.set_response(Bytes(frame->span()));
  result.set_received_at_unix_ms(absl::ToUnixMillis(now));
  result.set_solicited(false);
  result.set_code(common::kCodeSuccess);
  result.set_msg("success");
  scratch_.clear();
  ReadingRecord reading;
  if (reply->is_exception()) {
    result.set_code(common::kCodeModbusException);
    result.set_msg(std::string(modbus::ExceptionStatus(reply->exception).message()));
    result.set_exception_code(reply->exception);
    result.set_exception_name(std::string(modbus::ExceptionName(reply->exception)));
  } else if (reply->data.empty()) {
    result.set_address(reply->address);
    result.set_count(reply->quantity);
    reading.address = reply->address;
  } else {
    // A read reply names no address: it is taken as the profile's registers from its first.
    const uint16_t address =
        profile != nullptr && !profile->registers.empty() ? profile->registers.front().address : 0;
    result.set_address(address);
    result.set_count(reply->quantity);
    reading.address = address;
    if (profile == nullptr || !regmap::Decode(*profile, address, reply->data, &scratch_).ok()) {
      scratch_.clear();
      result.set_code(common::kCodeNoRegister);
      result.set_msg(profile == nullptr ? "no register-map profile for this device"
                                        : "no register-map entry within the registers read");
    }
    AddValues(scratch_, &result);
  }
  reading.device_id = device_id;
  reading.received_at = now;
  reading.published_at = now;
  reading.unit = reply->unit;
  reading.function = reply->function;
  reading.raw = result.response();
  reading.values_json = ValuesJson(scratch_);
  out_->Store(std::move(reading));
  v1::Event event;
  *event.mutable_data() = std::move(result);
  out_->Emit(std::move(event), DeviceStreams(device_id));
}

}  // namespace devbridge::ingest
