#include "events/push_message.h"

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/json_parse.h"
#include "nlohmann/json.hpp"

namespace devbridge::events {
namespace {

using Kind = v1::PushMessage;

absl::Status Bad(absl::string_view why) { return absl::InvalidArgumentError(why); }

absl::Status CheckId(absl::string_view field, absl::string_view value) {
  if (common::IsValidId(value)) return absl::OkStatus();
  return Bad(absl::StrCat(field, " must match [A-Za-z0-9_.:-]{1,64}"));
}

absl::Status CheckClients(const v1::PushMessage& m, bool exactly_one) {
  if (m.client_ids_size() == 0) return Bad("client_ids must not be empty");
  if (exactly_one && m.client_ids_size() != 1) return Bad("client_ids must hold exactly one id");
  if (m.client_ids_size() > kMaxClientIds) return Bad(absl::StrCat("client_ids holds more than ", kMaxClientIds, " ids"));
  for (const std::string& id : m.client_ids()) {
    if (!common::IsValidId(id)) return Bad("client_ids must match [A-Za-z0-9_.:-]{1,64}");
  }
  return absl::OkStatus();
}

absl::Status CheckOrigin(const v1::PushMessage& m) {
  if (m.origin_node().empty() || m.origin_node().size() > 256) return Bad("origin_node must be 1-256 characters");
  return absl::OkStatus();
}

absl::Status CheckData(const v1::PushMessage& m) { return ValidateData(m.data()); }

}  // namespace

absl::Status ValidateData(absl::string_view data) {
  if (data.empty()) return absl::OkStatus();
  // Spliced as it is into every recipient's frame, so it must be exactly one JSON value.
  if (absl::Status depth = common::CheckJsonDepth(data); !depth.ok()) {
    return Bad(absl::StrCat("data: ", depth.message()));
  }
  if (!nlohmann::json::accept(data.begin(), data.end())) return Bad("data must be one valid JSON value");
  return absl::OkStatus();
}

absl::Status ValidatePushMessage(const v1::PushMessage& m) {
  switch (m.kind()) {
    case Kind::SEND_TO_CLIENTS:
    case Kind::CLOSE_CLIENT:
      if (absl::Status s = CheckId("system_id", m.system_id()); !s.ok()) return s;
      if (absl::Status s = CheckClients(m, /*exactly_one=*/false); !s.ok()) return s;
      return CheckData(m);
    case Kind::SEND_TO_GROUP:
      if (absl::Status s = CheckId("system_id", m.system_id()); !s.ok()) return s;
      if (absl::Status s = CheckId("group_name", m.group_name()); !s.ok()) return s;
      return CheckData(m);
    case Kind::SEND_TO_SYSTEM:
      if (absl::Status s = CheckId("system_id", m.system_id()); !s.ok()) return s;
      return CheckData(m);
    case Kind::BIND_GROUP:
    case Kind::UNBIND_GROUP:
      if (absl::Status s = CheckId("system_id", m.system_id()); !s.ok()) return s;
      if (absl::Status s = CheckId("group_name", m.group_name()); !s.ok()) return s;
      return CheckClients(m, /*exactly_one=*/true);
    case Kind::CLIENT_UP:
    case Kind::CLIENT_DOWN:
      if (absl::Status s = CheckId("system_id", m.system_id()); !s.ok()) return s;
      if (absl::Status s = CheckClients(m, /*exactly_one=*/true); !s.ok()) return s;
      return CheckOrigin(m);
    case Kind::NODE_HELLO:
    case Kind::NODE_DOWN:
    case Kind::NODE_ALIVE:
      return CheckOrigin(m);
    case Kind::NODE_SNAPSHOT: {
      if (absl::Status s = CheckOrigin(m); !s.ok()) return s;
      return DecodeSnapshot(m.data()).status();
    }
    default:
      return Bad(absl::StrCat("unknown kind ", static_cast<int>(m.kind())));
  }
}

std::string EncodeSnapshot(const std::vector<SnapshotMember>& members) {
  nlohmann::json out = nlohmann::json::array();
  for (const SnapshotMember& m : members) {
    out.push_back({{"c", m.client_id}, {"s", m.system_id}, {"g", m.groups}});
  }
  return out.dump();
}

absl::StatusOr<std::vector<SnapshotMember>> DecodeSnapshot(absl::string_view data) {
  absl::StatusOr<nlohmann::json> parsed = common::ParseJson(data);
  if (!parsed.ok()) return Bad(absl::StrCat("snapshot: ", parsed.status().message()));
  if (!parsed->is_array()) return Bad("snapshot must be an array of {c, s, g}");
  std::vector<SnapshotMember> members;
  members.reserve(parsed->size());
  for (const nlohmann::json& item : *parsed) {
    SnapshotMember m;
    std::optional<std::string> c = common::JsonString(item, "c");
    std::optional<std::string> s = common::JsonString(item, "s");
    if (!c || !s || !common::IsValidId(*c) || !common::IsValidId(*s)) {
      return Bad("snapshot members need valid \"c\" (clientId) and \"s\" (systemId)");
    }
    m.client_id = *std::move(c);
    m.system_id = *std::move(s);
    if (const nlohmann::json* g = common::JsonMember(item, "g"); g != nullptr) {
      if (!g->is_array()) return Bad("snapshot member \"g\" must be an array of group names");
      for (const nlohmann::json& name : *g) {
        if (!name.is_string() || !common::IsValidId(name.get_ref<const std::string&>())) {
          return Bad("snapshot member \"g\" must be an array of group names");
        }
        m.groups.push_back(name.get<std::string>());
      }
    }
    members.push_back(std::move(m));
  }
  return members;
}

}  // namespace devbridge::events
