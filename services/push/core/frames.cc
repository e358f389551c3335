#include "common/ids.h"
#include "common/json_parse.h"
#include "services/push/core/frames.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace devbridge::push {
namespace {

using Json = nlohmann::json;

absl::Status Bad(absl::string_view msg) { return absl::InvalidArgumentError(msg); }

// Reads an optional unsigned integer member no larger than `max`.
absl::Status ReadUint(const Json& j, const char* key, uint32_t max, uint32_t* out, bool* present = nullptr) {
  auto it = j.find(key);
  if (present != nullptr) *present = it != j.end() && !it->is_null();
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > max) {
    return Bad(absl::StrCat(key, " must be an integer from 0 to ", max));
  }
  *out = static_cast<uint32_t>(it->get<int64_t>());
  return absl::OkStatus();
}

}  // namespace

std::string ServerFrame::ToJson() const {
  std::string out = "{\"type\":";
  out.reserve(96 + data_json.size());
  AppendJsonString(&out, type);
  out.append(",\"messageId\":");
  AppendJsonString(&out, message_id);
  absl::StrAppend(&out, ",\"code\":", code, ",\"msg\":");
  AppendJsonString(&out, msg);
  out.append(",\"data\":");
  out.append(data_json.empty() ? "null" : data_json);
  out.append(",\"systemId\":");
  AppendJsonString(&out, system_id);
  if (!group_name.empty()) {
    out.append(",\"groupName\":");
    AppendJsonString(&out, group_name);
  }
  if (!send_user_id.empty()) {
    out.append(",\"sendUserId\":");
    AppendJsonString(&out, send_user_id);
  }
  if (offset != 0) {
    absl::StrAppend(&out, ",\"offset\":", offset, ",\"epoch\":");
    AppendJsonString(&out, epoch);
  }
  out.push_back('}');
  return out;
}

std::string ErrorFrame(int code, absl::string_view msg, absl::string_view request_id, absl::string_view stream,
                       absl::string_view group) {
  std::string data = "{";
  const std::pair<const char*, absl::string_view> fields[] = {
      {"requestId", request_id}, {"stream", stream}, {"group", group}};
  for (const auto& [name, value] : fields) {
    if (value.empty()) continue;
    if (data.size() > 1) data.push_back(',');
    absl::StrAppend(&data, "\"", name, "\":");
    AppendJsonString(&data, value);
  }
  data.push_back('}');
  std::string out = absl::StrCat("{\"type\":\"error\",\"code\":", code, ",\"msg\":");
  AppendJsonString(&out, msg);
  absl::StrAppend(&out, ",\"data\":", data, "}");
  return out;
}

absl::StatusOr<ClientFrame> ParseClientFrame(absl::string_view text, std::string* request_id) {
  request_id->clear();
  absl::StatusOr<Json> parsed = common::ParseJson(text);
  if (!parsed.ok()) return Bad(absl::StrCat("frame: ", parsed.status().message()));
  const Json& j = *parsed;
  if (!j.is_object()) return Bad("frame must be a JSON object");
  auto action = j.find("action");
  if (action == j.end() || !action->is_string()) return Bad("frame needs \"action\" (ping, join, leave or command)");
  const std::string name = action->get<std::string>();
  ClientFrame frame;
  if (name == "ping") {
    frame.action = ClientFrame::kPing;
    return frame;
  }
  if (name == "join" || name == "leave") {
    frame.action = name == "join" ? ClientFrame::kJoin : ClientFrame::kLeave;
    auto group = j.find("group");
    if (group == j.end() || !group->is_string()) return Bad(absl::StrCat(name, " needs \"group\""));
    frame.group = group->get<std::string>();
    if (!common::IsValidId(frame.group)) return Bad("group must be 1-64 characters of [A-Za-z0-9_.:-]");
    return frame;
  }
  if (name != "command") return Bad("action must be one of ping, join, leave, command");
  frame.action = ClientFrame::kCommand;
  CommandFrame& c = frame.command;
  auto rid = j.find("requestId");
  if (rid != j.end()) {
    if (rid->is_string()) {
      c.request_id = rid->get<std::string>();
    } else if (rid->is_number_integer()) {
      c.request_id = std::to_string(rid->get<int64_t>());
    } else {
      return Bad("requestId must be a string");
    }
    if (c.request_id.size() > 128) return Bad("requestId longer than 128 characters");
    *request_id = c.request_id;
  }
  auto device = j.find("deviceId");
  if (device == j.end() || !device->is_string()) return Bad("command needs \"deviceId\"");
  c.device_id = device->get<std::string>();
  if (!common::IsValidId(c.device_id)) return Bad("deviceId must be 1-64 characters of [A-Za-z0-9_.:-]");
  if (absl::Status s = ReadUint(j, "function", 255, &c.function); !s.ok()) return s;
  if (c.function != 3 && c.function != 4 && c.function != 6 && c.function != 16) {
    return Bad("function must be 3, 4, 6 or 16");
  }
  bool has_unit = false;
  uint32_t unit = 0;
  if (absl::Status s = ReadUint(j, "unit", 247, &unit, &has_unit); !s.ok()) return s;
  if (has_unit) c.unit = unit;
  bool has_address = false;
  if (absl::Status s = ReadUint(j, "address", 65535, &c.address, &has_address); !s.ok()) return s;
  if (!has_address) return Bad("command needs \"address\"");
  if (absl::Status s = ReadUint(j, "timeoutMs", 60000, &c.timeout_ms); !s.ok()) return s;
  const bool read = c.function == 3 || c.function == 4;
  if (read) {
    bool has_count = false;
    if (absl::Status s = ReadUint(j, "count", 125, &c.count, &has_count); !s.ok()) return s;
    if (!has_count || c.count == 0) return Bad("a read needs \"count\" from 1 to 125");
  } else {
    auto values = j.find("values");
    if (values == j.end() || !values->is_array() || values->empty()) return Bad("a write needs \"values\"");
    if (c.function == 6 && values->size() != 1) return Bad("function 6 writes exactly one value");
    if (values->size() > 123) return Bad("function 16 writes at most 123 values");
    for (const auto& v : *values) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 65535) {
        return Bad("values must be integers from 0 to 65535");
      }
      c.values.push_back(static_cast<uint32_t>(v.get<int64_t>()));
    }
  }
  return frame;
}

}  // namespace devbridge::push
