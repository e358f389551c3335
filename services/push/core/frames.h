// The WebSocket protocol of CONTRACT §5: server frames (the go-websocket envelope plus
// type, stream offset and epoch) and client frames (ping, join, leave, command), parsed
// strictly so every malformed frame gets a clear 400.
#ifndef DEVBRIDGE_SERVICES_PUSH_CORE_FRAMES_H_
#define DEVBRIDGE_SERVICES_PUSH_CORE_FRAMES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/json.h"

namespace devbridge::push {

// One server frame. `data_json` is JSON text inserted as it is ("null" when empty).
// groupName, sendUserId, offset and epoch are left out when empty / 0.
struct ServerFrame {
  std::string type;
  std::string message_id;
  int code = 0;
  std::string msg = "success";
  std::string data_json;
  std::string system_id;
  std::string group_name;
  std::string send_user_id;
  uint64_t offset = 0;
  std::string epoch;

  std::string ToJson() const;
};

// {"type":"error","code":C,"msg":M,"data":{...}}; `request_id` adds data.requestId,
// `stream` adds data.stream, `group` adds data.group.
std::string ErrorFrame(int code, absl::string_view msg, absl::string_view request_id = "",
                       absl::string_view stream = "", absl::string_view group = "");

struct CommandFrame {
  std::string request_id;
  std::string device_id;
  uint32_t function = 3;
  std::optional<uint32_t> unit;
  uint32_t address = 0;
  uint32_t count = 0;
  std::vector<uint32_t> values;
  uint32_t timeout_ms = 0;
};

struct ClientFrame {
  enum Action { kPing, kJoin, kLeave, kCommand };
  Action action = kPing;
  std::string group;     // join, leave
  CommandFrame command;  // command
};

// Parses a client text frame. Errors are InvalidArgument with a message fit for the
// client ("action must be one of ping, join, leave, command"); for a command whose
// requestId could be read, `request_id` is set so the error can carry it.
absl::StatusOr<ClientFrame> ParseClientFrame(absl::string_view text, std::string* request_id);

using common::AppendJsonString;

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_CORE_FRAMES_H_
