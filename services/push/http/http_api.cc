#include "services/push/http/http_api.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/ids.h"
#include "common/json_parse.h"
#include "common/status.h"
#include "common/url.h"
#include "nlohmann/json.hpp"

namespace devbridge::push {
namespace {

using Json = nlohmann::json;

// A member as go-websocket reads it: a string as it is, any other JSON value as its text.
std::string Str(const Json& j, const char* key) {
  const Json* m = common::JsonMember(j, key);
  if (m == nullptr || m->is_null()) return "";
  return m->is_string() ? m->get<std::string>() : m->dump();
}

// A device's polling (CONTRACT §10.4) for /api/devices: null when it has no plan.
Json PollingJson(const v1::Device& d) {
  if (!d.has_polling()) return nullptr;
  const v1::DevicePolling& p = d.polling();
  Json plan = Json::array();
  for (const v1::DevicePollBlock& b : p.plan()) {
    plan.push_back({{"function", b.function()}, {"address", b.address()}, {"count", b.count()},
                    {"everyMs", b.every_ms()}});
  }
  return {{"plan", std::move(plan)},
          {"lastPollAt", p.last_poll_unix_ms() > 0 ? Json(IsoTime(p.last_poll_unix_ms())) : Json(nullptr)},
          {"lastCode", p.last_code() != 0 ? Json(p.last_code()) : Json(nullptr)},
          {"failures", p.failures()},
          {"unresponsive", p.unresponsive()},
          {"backoffMs", p.backoff_ms()}};
}

}  // namespace

httpd::Response ApiReply(int code, const std::string& msg, const std::string& data_json) {
  std::string body = absl::StrCat("{\"code\":", code, ",\"msg\":");
  AppendJsonString(&body, msg);
  absl::StrAppend(&body, ",\"data\":", data_json.empty() ? "null" : data_json, "}");
  return {code == 0 ? 200 : code, "application/json", body};
}

std::string ContentType(const std::string& path) {
  static const std::pair<const char*, const char*> kTypes[] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".webmanifest", "application/manifest+json"}};
  for (const auto& [ext, type] : kTypes) {
    if (absl::EndsWith(path, ext)) return type;
  }
  return "application/octet-stream";
}

HttpApi::HttpApi(PushNode* node, DeviceDirectory* directory, std::string web_root,
                 common::MetricsRegistry* metrics)
    : node_(node), directory_(directory), web_root_(std::move(web_root)), metrics_(metrics) {
  api_calls_ = &metrics->AddCounter("devbridge_push_api_calls_total", "HTTP API calls.");
  api_errors_ = &metrics->AddCounter("devbridge_push_api_errors_total",
                                     "HTTP API calls answered with an error.");
}

void HttpApi::Handle(const httpd::Request& request, std::function<void(httpd::Response)> reply) {
  if (request.path == "/healthz") {
    const bool up = node_->upstream_up();
    return reply({up ? 200 : 503, "text/plain; charset=utf-8",
                  up ? "ok\n" : "unavailable: no event stream from ingest\n"});
  }
  if (request.path == "/metrics") {
    return reply({200, "text/plain; version=0.0.4; charset=utf-8", metrics_->Render()});
  }
  if (request.path == "/api/devices" || request.path == "/api/readings") {
    if (request.method != "GET") return reply(ApiReply(405, "use GET", ""));
    return Query(request, std::move(reply));
  }
  if (absl::StartsWith(request.path, "/api/")) {
    if (request.method != "POST") return reply(ApiReply(405, "use POST", ""));
    return Api(request.path.substr(5), request, std::move(reply));
  }
  if (request.method != "GET" && request.method != "HEAD")
    return reply({405, "text/plain", "method not allowed\n"});
  reply(Static(request.path));
}

httpd::Response HttpApi::Static(const std::string& path) const {
  const httpd::Response not_found{404, "text/plain; charset=utf-8", "not found\n"};
  if (web_root_.empty()) return {404, "text/plain; charset=utf-8", "no web_root configured\n"};
  const std::string rel = path == "/" || path.empty() ? "/index.html" : path;
  // CONTRACT §10.1: a NUL or ".." is refused outright (a NUL would cut the name short at
  // open(), so "/index.html%00.png" would serve index.html).
  if (rel.find('\0') != std::string::npos || absl::StrContains(rel, "..")) {
    return {400, "text/plain; charset=utf-8", "bad path\n"};
  }
  // Only regular files, never hidden ones or the dashboard's own tests.
  if (rel[0] != '/' || absl::StrContains(rel, "//") || absl::StrContains(rel, "/.") ||
      absl::StartsWith(rel, "/test/") || rel == "/test") {
    return not_found;
  }
  struct stat st {};
  const std::string file = web_root_ + rel;
  if (stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return not_found;
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found;
  std::stringstream body;
  body << in.rdbuf();
  return {200, ContentType(rel), body.str()};
}

absl::Status HttpApi::CheckReadToken(const httpd::Request& request, const std::string& token,
                                     const std::string& device_id) const {
  const NodeOptions& o = node_->options();
  if (o.auth_secret.empty()) return absl::OkStatus();
  std::string jwt = token;
  if (auto it = request.headers.find("authorization");
      it != request.headers.end() && absl::StartsWith(it->second, "Bearer ")) {
    jwt = it->second.substr(7);
  }
  if (jwt.empty())
    return absl::UnauthenticatedError("a token is required (Authorization: Bearer or ?token=)");
  ASSIGN_OR_RETURN(Claims claims, VerifyJwt(jwt, o.auth_secret, absl::Now()));
  if (claims.sub == o.fleet_system || (!device_id.empty() && claims.sub == device_id)) {
    return absl::OkStatus();
  }
  return absl::UnauthenticatedError(
      absl::StrCat("token is for system ", claims.sub, ", not ", o.fleet_system,
                   device_id.empty() ? "" : absl::StrCat(" or ", device_id)));
}

httpd::Response HttpApi::Failure(int code, const std::string& msg) {
  api_errors_->Inc();
  return ApiReply(code, msg, "");
}

void HttpApi::Query(const httpd::Request& request, std::function<void(httpd::Response)> reply) {
  api_calls_->Inc();
  // Only until `answer` takes `reply` over; after that, errors go through `answer`.
  auto fail = [this, &reply](int code, const std::string& msg) { reply(Failure(code, msg)); };
  std::map<std::string, std::string> params = ParseQuery(request.query);
  const bool readings = request.path == "/api/readings";
  const std::string device = params["deviceId"];
  if (readings && !common::IsValidId(device)) {
    return fail(400, "deviceId must be 1-64 characters of [A-Za-z0-9_.:-]");
  }
  if (absl::Status auth = CheckReadToken(request, params["token"], device); !auth.ok()) {
    return fail(401, std::string(auth.message()));
  }
  if (directory_ == nullptr || !node_->upstream_up()) return fail(503, "ingest is unavailable");
  auto answer = [this, reply = std::move(reply)](const absl::Status& status,
                                                 const std::string& data) {
    if (!status.ok()) {
      const int code = common::ResultCodeOf(status);
      return reply(Failure(code >= 400 && code < 600 ? code : 503, std::string(status.message())));
    }
    reply(ApiReply(0, "success", data));
  };
  if (!readings) {
    // Paged (CONTRACT §10.1): limit (1000, at most 10000) and after, the last id of the
    // previous page; the reply's next is the id to pass on, or null at the end.
    v1::ListDevicesRequest page;
    int limit = 1000;
    if (!params["limit"].empty() && (!absl::SimpleAtoi(params["limit"], &limit) || limit < 1 || limit > 10000)) {
      return answer(common::Error(common::kCodeBadRequest, absl::StatusCode::kInvalidArgument, "limit must be 1..10000"),
                    "");
    }
    page.set_limit(static_cast<uint32_t>(limit));
    if (!params["after"].empty()) {
      if (!common::IsValidId(params["after"])) {
        return answer(common::Error(common::kCodeBadRequest, absl::StatusCode::kInvalidArgument,
                                    "after must be a device id"),
                      "");
      }
      page.set_after(params["after"]);
    }
    return directory_->ListDevices(std::move(page), [answer](absl::StatusOr<v1::ListDevicesResponse> r) {
      if (!r.ok()) return answer(r.status(), "");
      Json list = Json::array();
      for (const v1::Device& d : r->devices()) {
        Json meta = Json::parse(d.meta_json().empty() ? "{}" : d.meta_json(), nullptr, false);
        list.push_back({{"deviceId", d.device_id()},
                        {"online", d.online()},
                        {"firstSeen", IsoTime(d.first_seen_unix_ms())},
                        {"lastSeen", IsoTime(d.last_seen_unix_ms())},
                        {"meta", meta.is_discarded() ? Json::object() : meta},
                        {"polling", PollingJson(d)}});
      }
      Json data = {{"devices", std::move(list)}, {"next", nullptr}};
      if (!r->next().empty()) data["next"] = r->next();
      answer(absl::OkStatus(), data.dump());
    });
  }
  v1::GetReadingsRequest req;
  req.set_device_id(device);
  int64_t since = 0;
  int limit = 100;
  // The last millisecond of year 9999: past it PostgreSQL cannot hold the time.
  constexpr int64_t kMaxSinceMs = 253402300799999;
  if (!params["since"].empty() &&
      (!absl::SimpleAtoi(params["since"], &since) || since < 0 || since > kMaxSinceMs)) {
    return answer(common::Error(common::kCodeBadRequest, absl::StatusCode::kInvalidArgument,
                                absl::StrCat("since must be a Unix time in milliseconds, 0..", kMaxSinceMs)),
                  "");
  }
  if (!params["limit"].empty() &&
      (!absl::SimpleAtoi(params["limit"], &limit) || limit < 1 || limit > 10000)) {
    return answer(common::Error(common::kCodeBadRequest, absl::StatusCode::kInvalidArgument,
                                "limit must be 1..10000"),
                  "");
  }
  req.set_since_unix_ms(since);
  req.set_limit(static_cast<uint32_t>(limit));
  directory_->GetReadings(std::move(req), [answer](absl::StatusOr<v1::GetReadingsResponse> r) {
    if (!r.ok()) return answer(r.status(), "");
    std::string data = "{\"readings\":[";
    for (int i = 0; i < r->readings_size(); ++i) {
      if (i > 0) data.push_back(',');
      data += CommandResultJson(r->readings(i));
    }
    data += "]}";
    answer(absl::OkStatus(), data);
  });
}

void HttpApi::Api(const std::string& op, const httpd::Request& request,
                  std::function<void(httpd::Response)> reply) {
  api_calls_->Inc();
  auto fail = [this, &reply](int code, const std::string& msg) { reply(Failure(code, msg)); };
  auto header = [&](const char* name) {
    auto it = request.headers.find(name);
    return it == request.headers.end() ? std::string() : it->second;
  };
  absl::StatusOr<Json> parsed =
      request.body.empty() ? Json::object() : common::ParseJson(request.body);
  if (!parsed.ok()) return fail(400, absl::StrCat("body: ", parsed.status().message()));
  const Json& body = *parsed;
  if (!body.is_object()) return fail(400, "body must be a JSON object");
  std::string system = header("systemid");
  // go-websocket clients register before anything else, naming the system in the body.
  if (system.empty() && op == "register") system = Str(body, "systemId");
  if (system.empty()) return fail(400, "header SystemId is required");
  if (!common::IsValidId(system)) return fail(400, "SystemId must match [A-Za-z0-9_.:-]{1,64}");
  if (absl::Status auth = node_->CheckApiToken(header("authorization"), system, absl::Now());
      !auth.ok()) {
    return fail(401, std::string(auth.message()));
  }
  // devbridge needs no registration (CONTRACT §10.2); the call exists for compatibility.
  if (op == "register") return reply(ApiReply(0, "success", ""));
  if (op == "get_online_list") {
    return node_->Online(system, Str(body, "groupName"), [reply = std::move(reply)](std::vector<std::string> list) {
      Json data = {{"count", list.size()}, {"list", std::move(list)}};
      reply(ApiReply(0, "success", data.dump()));
    });
  }
  v1::PushMessage m;
  m.set_system_id(system);
  m.set_send_user_id(Str(body, "sendUserId"));
  m.set_msg(Str(body, "msg"));
  if (std::optional<int64_t> code = common::JsonInt(body, "code");
      code && *code >= INT32_MIN && *code <= INT32_MAX) {
    m.set_code(static_cast<int32_t>(*code));
  }
  if (auto data = body.find("data"); data != body.end()) m.set_data(data->dump());
  if (op == "send_to_client") {
    m.set_kind(v1::PushMessage::SEND_TO_CLIENTS);
    m.add_client_ids(Str(body, "clientId"));
  } else if (op == "send_to_clients") {
    m.set_kind(v1::PushMessage::SEND_TO_CLIENTS);
    auto ids = body.find("clientIds");
    if (ids == body.end() || !ids->is_array()) return fail(400, "clientIds must be an array");
    for (const auto& id : *ids)
      m.add_client_ids(id.is_string() ? id.get<std::string>() : id.dump());
  } else if (op == "send_to_group") {
    m.set_kind(v1::PushMessage::SEND_TO_GROUP);
    m.set_group_name(Str(body, "groupName"));
  } else if (op == "send_to_system") {
    m.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
  } else if (op == "bind_to_group") {
    m.set_kind(v1::PushMessage::BIND_GROUP);
    m.add_client_ids(Str(body, "clientId"));
    m.set_group_name(Str(body, "groupName"));
    m.set_user_id(Str(body, "userId"));
    m.set_extend(Str(body, "extend"));
  } else if (op == "unbind_from_group") {
    m.set_kind(v1::PushMessage::UNBIND_GROUP);
    m.add_client_ids(Str(body, "clientId"));
    m.set_group_name(Str(body, "groupName"));
  } else if (op == "close_client") {
    m.set_kind(v1::PushMessage::CLOSE_CLIENT);
    m.add_client_ids(Str(body, "clientId"));
  } else {
    return fail(404, absl::StrCat("no API /api/", op));
  }
  const bool returns_id = m.kind() == v1::PushMessage::SEND_TO_CLIENTS ||
                          m.kind() == v1::PushMessage::SEND_TO_GROUP ||
                          m.kind() == v1::PushMessage::SEND_TO_SYSTEM;
  node_->Submit(std::move(m), [this, returns_id,
                               reply = std::move(reply)](absl::StatusOr<std::string> id) {
    if (!id.ok()) {
      return reply(Failure(common::ResultCodeOf(id.status()), std::string(id.status().message())));
    }
    std::string data;
    if (returns_id) {
      data = "{\"messageId\":";
      AppendJsonString(&data, *id);
      data.push_back('}');
    }
    reply(ApiReply(0, "success", data));
  });
}

}  // namespace devbridge::push
