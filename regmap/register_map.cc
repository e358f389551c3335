#include "regmap/register_map.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "regmap/json_locator.h"

namespace devbridge::regmap {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::pair<absl::string_view, ValueType> kTypes[] = {
    {"bool", ValueType::kBool},       {"int16", ValueType::kInt16},
    {"uint16", ValueType::kUint16},   {"int32", ValueType::kInt32},
    {"uint32", ValueType::kUint32},   {"float32", ValueType::kFloat32},
    {"int64", ValueType::kInt64},     {"uint64", ValueType::kUint64},
    {"float64", ValueType::kFloat64},
};

// Collects the first error met while walking the document, with the path it was met at.
class Loader {
 public:
  Loader(absl::string_view text, absl::string_view source) : text_(text), source_(source) {}

  absl::Status Fail(const std::string& path, absl::string_view reason) const {
    const int line = LineOfPath(text_, path);
    std::string where = line > 0 ? absl::StrCat(source_, ":", line) : std::string(source_);
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", path.empty() ? "top level" : path, ": ", reason));
  }

  absl::Status CheckKeys(const Json& object, const std::string& path,
                         std::initializer_list<absl::string_view> allowed) const {
    for (const auto& [key, value] : object.items()) {
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        return Fail(path, absl::StrCat("unknown key \"", key, "\" (allowed: ",
                                       absl::StrJoin(allowed, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  // Reads an integer member in [min, max]; absent → `def` if `required` is false.
  absl::Status Integer(const Json& object, const std::string& path, const char* key,
                       bool required, int64_t min, int64_t max, int64_t def, int64_t* out) const {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) return Fail(path, absl::StrCat("missing \"", key, "\""));
      *out = def;
      return absl::OkStatus();
    }
    const std::string where = absl::StrCat(path, ".", key);
    if (!it->is_number_integer()) return Fail(where, "must be an integer");
    const int64_t v = it->get<int64_t>();
    if (v < min || v > max) return Fail(where, absl::StrFormat("%d out of range %d..%d", v, min, max));
    *out = v;
    return absl::OkStatus();
  }

  absl::Status Number(const Json& object, const std::string& path, const char* key, double def,
                      double* out) const {
    auto it = object.find(key);
    if (it == object.end()) {
      *out = def;
      return absl::OkStatus();
    }
    if (!it->is_number() || !std::isfinite(it->get<double>())) {
      return Fail(absl::StrCat(path, ".", key), "must be a finite number");
    }
    *out = it->get<double>();
    return absl::OkStatus();
  }

  absl::Status String(const Json& object, const std::string& path, const char* key, bool required,
                      std::string* out) const {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) return Fail(path, absl::StrCat("missing \"", key, "\""));
      return absl::OkStatus();
    }
    if (!it->is_string()) return Fail(absl::StrCat(path, ".", key), "must be a string");
    *out = it->get<std::string>();
    return absl::OkStatus();
  }

  absl::Status ReadRegister(const Json& j, const std::string& path, Register* reg) const {
    if (!j.is_object()) return Fail(path, "a register must be an object");
    RETURN_IF_ERROR(CheckKeys(j, path, {"address", "name", "type", "bit", "scale", "offset", "unit",
                                        "wordOrder"}));
    int64_t address = 0;
    RETURN_IF_ERROR(Integer(j, path, "address", true, 0, 65535, 0, &address));
    reg->address = static_cast<uint16_t>(address);
    RETURN_IF_ERROR(String(j, path, "name", true, &reg->name));
    if (reg->name.empty()) return Fail(path + ".name", "must not be empty");
    std::string type;
    RETURN_IF_ERROR(String(j, path, "type", true, &type));
    auto found = std::find_if(std::begin(kTypes), std::end(kTypes),
                              [&](const auto& t) { return t.first == type; });
    if (found == std::end(kTypes)) {
      std::vector<absl::string_view> names;
      for (const auto& t : kTypes) names.push_back(t.first);
      return Fail(path + ".type", absl::StrCat("unknown type \"", type, "\" (want one of ",
                                               absl::StrJoin(names, ", "), ")"));
    }
    reg->type = found->second;
    if (reg->End() > 0x10000) {
      return Fail(path + ".address", absl::StrCat(type, " at ", address, " runs past register 65535"));
    }
    int64_t bit = 0;
    if (reg->type == ValueType::kBool) {
      RETURN_IF_ERROR(Integer(j, path, "bit", true, 0, 15, 0, &bit));
    } else if (j.contains("bit")) {
      return Fail(path + ".bit", "\"bit\" applies to type bool only");
    }
    reg->bit = static_cast<uint8_t>(bit);
    RETURN_IF_ERROR(Number(j, path, "scale", 1, &reg->scale));
    RETURN_IF_ERROR(Number(j, path, "offset", 0, &reg->offset));
    RETURN_IF_ERROR(String(j, path, "unit", false, &reg->unit));
    std::string order = "big";
    RETURN_IF_ERROR(String(j, path, "wordOrder", false, &order));
    if (order != "big" && order != "little") {
      return Fail(path + ".wordOrder", absl::StrCat("\"", order, "\" is neither \"big\" nor \"little\""));
    }
    reg->little_word_order = order == "little";
    return absl::OkStatus();
  }

  absl::Status ReadProfile(const std::string& name, const Json& j, const std::string& path,
                           Profile* profile) const {
    if (!j.is_object()) return Fail(path, "a profile must be an object");
    RETURN_IF_ERROR(CheckKeys(j, path, {"unit", "registers", "poll"}));
    profile->name = name;
    int64_t unit = 1;
    RETURN_IF_ERROR(Integer(j, path, "unit", false, 0, 247, 1, &unit));
    profile->unit = static_cast<uint8_t>(unit);
    auto regs = j.find("registers");
    if (regs == j.end()) return Fail(path, "missing \"registers\"");
    if (!regs->is_array()) return Fail(path + ".registers", "must be an array");
    std::set<std::string> names;
    for (size_t i = 0; i < regs->size(); ++i) {
      const std::string reg_path = absl::StrCat(path, ".registers[", i, "]");
      Register reg;
      RETURN_IF_ERROR(ReadRegister((*regs)[i], reg_path, &reg));
      if (!names.insert(reg.name).second) {
        return Fail(reg_path + ".name", absl::StrCat("duplicate name \"", reg.name, "\""));
      }
      profile->registers.push_back(std::move(reg));
    }
    std::stable_sort(profile->registers.begin(), profile->registers.end(),
                     [](const Register& a, const Register& b) { return a.address < b.address; });
    if (auto poll = j.find("poll"); poll != j.end()) {
      RETURN_IF_ERROR(ReadPlan(*poll, path + ".poll", &profile->poll));
    }
    return absl::OkStatus();
  }

  // A polling plan: [{"function": 3, "address": 0, "count": 12, "every": "5s"}, ...].
  absl::Status ReadPlan(const Json& j, const std::string& path, std::vector<PollBlock>* plan) const {
    if (!j.is_array()) return Fail(path, "must be an array of blocks");
    if (j.size() > kMaxPollBlocks) return Fail(path, absl::StrCat("more than ", kMaxPollBlocks, " blocks"));
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string at = absl::StrCat(path, "[", i, "]");
      const Json& b = j[i];
      if (!b.is_object()) return Fail(at, "a block must be an object");
      RETURN_IF_ERROR(CheckKeys(b, at, {"function", "address", "count", "every"}));
      PollBlock block;
      int64_t function = 3, address = 0, count = 0;
      RETURN_IF_ERROR(Integer(b, at, "function", false, 3, 4, 3, &function));
      RETURN_IF_ERROR(Integer(b, at, "address", true, 0, 65535, 0, &address));
      RETURN_IF_ERROR(Integer(b, at, "count", true, 1, 125, 0, &count));
      if (address + count > 65536) {
        return Fail(at + ".count", absl::StrCat(count, " registers from ", address, " run past register 65535"));
      }
      std::string every;
      RETURN_IF_ERROR(String(b, at, "every", true, &every));
      if (!absl::ParseDuration(every, &block.every) || block.every == absl::InfiniteDuration()) {
        return Fail(at + ".every", absl::StrCat("\"", every, "\" is not a duration such as \"500ms\", \"5s\" or \"2m\""));
      }
      if (block.every < kMinPollEvery || block.every > absl::Hours(24)) {
        return Fail(at + ".every", absl::StrCat("\"", every, "\" out of range 100ms..24h"));
      }
      block.function = static_cast<uint8_t>(function);
      block.address = static_cast<uint16_t>(address);
      block.count = static_cast<uint16_t>(count);
      plan->push_back(block);
    }
    return absl::OkStatus();
  }

 private:
  absl::string_view text_;
  absl::string_view source_;
};

int CountLiterals(absl::string_view pattern) {
  return static_cast<int>(std::count_if(pattern.begin(), pattern.end(),
                                        [](char c) { return c != '*' && c != '?'; }));
}

uint64_t CombineWords(const uint16_t* words, int n, bool little) {
  uint64_t v = 0;
  for (int k = 0; k < n; ++k) v = (v << 16) | words[little ? n - 1 - k : k];
  return v;
}

Value Scaled(double raw, const Register& reg) {
  Value v;
  v.kind = Value::kDouble;
  v.d = raw * reg.scale + reg.offset;
  return v;
}

Value Convert(const Register& reg, const uint16_t* words) {
  const bool identity = reg.scale == 1 && reg.offset == 0;
  const uint64_t bits = CombineWords(words, WordCount(reg.type), reg.little_word_order);
  Value v;
  switch (reg.type) {
    case ValueType::kBool:
      v.kind = Value::kBool;
      v.b = ((words[0] >> reg.bit) & 1) != 0;
      return v;
    case ValueType::kInt16:
    case ValueType::kInt32:
    case ValueType::kInt64: {
      const int width = 16 * WordCount(reg.type);
      int64_t s = static_cast<int64_t>(bits);
      if (width < 64) {
        const uint64_t sign = uint64_t{1} << (width - 1);
        s = static_cast<int64_t>((bits ^ sign)) - static_cast<int64_t>(sign);
      }
      if (!identity) return Scaled(static_cast<double>(s), reg);
      v.kind = Value::kInt;
      v.i = s;
      return v;
    }
    case ValueType::kUint16:
    case ValueType::kUint32:
    case ValueType::kUint64:
      if (!identity) return Scaled(static_cast<double>(bits), reg);
      v.kind = Value::kUint;
      v.u = bits;
      return v;
    case ValueType::kFloat32: {
      const uint32_t b32 = static_cast<uint32_t>(bits);
      float f;
      std::memcpy(&f, &b32, sizeof f);
      Value scaled = Scaled(f, reg);
      scaled.digits = 7;
      return scaled;
    }
    case ValueType::kFloat64: {
      double f;
      std::memcpy(&f, &bits, sizeof f);
      return Scaled(f, reg);
    }
  }
  return v;
}

}  // namespace

absl::string_view TypeName(ValueType type) {
  for (const auto& t : kTypes) {
    if (t.second == type) return t.first;
  }
  return "?";
}

int WordCount(ValueType type) {
  switch (type) {
    case ValueType::kInt32:
    case ValueType::kUint32:
    case ValueType::kFloat32:
      return 2;
    case ValueType::kInt64:
    case ValueType::kUint64:
    case ValueType::kFloat64:
      return 4;
    default:
      return 1;
  }
}

double Value::AsDouble() const {
  switch (kind) {
    case kBool: return b ? 1 : 0;
    case kInt: return static_cast<double>(i);
    case kUint: return static_cast<double>(u);
    default: return d;
  }
}

std::string Value::ToJson() const {
  switch (kind) {
    case kBool: return b ? "true" : "false";
    case kInt: return absl::StrCat(i);
    case kUint: return absl::StrCat(u);
    default:
      if (!std::isfinite(d)) return "null";
      // Significant digits the source can carry: scale artefacts such as
      // 0.30000000000000004 print as 0.3, a float32 as its 7 digits.
      return absl::StrFormat("%.*g", static_cast<int>(digits), d);
  }
}

bool GlobMatch(absl::string_view pattern, absl::string_view text) {
  size_t p = 0, t = 0, star = absl::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

absl::StatusOr<RegisterMap> RegisterMap::LoadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Parse(buffer.str(), path);
}

absl::StatusOr<RegisterMap> RegisterMap::Parse(absl::string_view text, absl::string_view source) {
  Json doc;
  try {
    doc = Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    auto [line, column] = LineAndColumn(text, e.byte > 0 ? e.byte - 1 : 0);
    std::string what = e.what();
    if (auto pos = what.find("syntax error"); pos != std::string::npos) what = what.substr(pos);
    return absl::InvalidArgumentError(absl::StrCat(source, ":", line, ":", column, ": ", what));
  } catch (const Json::exception& e) {
    // Not a syntax error but a value nlohmann cannot hold, such as a number like 1e999
    // (out_of_range.406): found by fuzz/register_map_fuzz.cc.
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  Loader loader(text, source);
  if (!doc.is_object()) return loader.Fail("", "the map must be a JSON object");
  RETURN_IF_ERROR(loader.CheckKeys(doc, "", {"profiles", "devices"}));
  auto profiles = doc.find("profiles");
  if (profiles == doc.end()) return loader.Fail("", "missing \"profiles\"");
  if (!profiles->is_object() || profiles->empty()) {
    return loader.Fail("profiles", "must be an object with at least one profile");
  }
  RegisterMap map;
  for (const auto& [name, body] : profiles->items()) {
    Profile profile;
    RETURN_IF_ERROR(loader.ReadProfile(name, body, absl::StrCat("profiles.", name), &profile));
    map.profiles_.push_back(std::move(profile));
  }
  if (auto devices = doc.find("devices"); devices != doc.end()) {
    if (!devices->is_object()) return loader.Fail("devices", "must be an object of pattern: profile");
    size_t order = 0;
    for (const auto& [pattern, target] : devices->items()) {
      const std::string path = absl::StrCat("devices.", pattern);
      if (pattern.empty()) return loader.Fail(path, "empty pattern");
      Route route;
      std::string name;
      if (target.is_object()) {
        // {"profile": "meter", "poll": [...]}: the device's own plan replaces the profile's.
        RETURN_IF_ERROR(loader.CheckKeys(target, path, {"profile", "poll"}));
        RETURN_IF_ERROR(loader.String(target, path, "profile", true, &name));
        if (auto poll = target.find("poll"); poll != target.end()) {
          route.own_poll = true;
          RETURN_IF_ERROR(loader.ReadPlan(*poll, path + ".poll", &route.poll));
        }
      } else if (target.is_string()) {
        name = target.get<std::string>();
      } else {
        return loader.Fail(path, "must name a profile, or be an object {\"profile\": ..., \"poll\": [...]}");
      }
      auto it = std::find_if(map.profiles_.begin(), map.profiles_.end(),
                             [&](const Profile& p) { return p.name == name; });
      if (it == map.profiles_.end()) {
        return loader.Fail(path, absl::StrCat("unknown profile \"", name, "\""));
      }
      route.pattern = pattern;
      route.profile = static_cast<size_t>(it - map.profiles_.begin());
      route.literals = CountLiterals(pattern);
      route.exact = route.literals == static_cast<int>(pattern.size());
      route.stars = static_cast<int>(std::count(pattern.begin(), pattern.end(), '*'));
      route.order = order++;
      map.routes_.push_back(std::move(route));
    }
    std::sort(map.routes_.begin(), map.routes_.end(), [](const Route& a, const Route& b) {
      if (a.exact != b.exact) return a.exact;
      if (a.literals != b.literals) return a.literals > b.literals;
      if (a.stars != b.stars) return a.stars < b.stars;
      return a.order < b.order;
    });
  }
  return map;
}

const RegisterMap::Route* RegisterMap::RouteFor(absl::string_view device_id) const {
  for (const Route& route : routes_) {
    if (route.exact ? route.pattern == device_id : GlobMatch(route.pattern, device_id)) return &route;
  }
  return nullptr;
}

const Profile* RegisterMap::ProfileFor(absl::string_view device_id) const {
  const Route* route = RouteFor(device_id);
  return route == nullptr ? nullptr : &profiles_[route->profile];
}

const std::vector<PollBlock>& RegisterMap::PollPlanFor(absl::string_view device_id) const {
  static const std::vector<PollBlock> kNone;
  const Route* route = RouteFor(device_id);
  if (route == nullptr) return kNone;
  return route->own_poll ? route->poll : profiles_[route->profile].poll;
}

const Profile* RegisterMap::FindProfile(absl::string_view name) const {
  for (const Profile& p : profiles_) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

absl::Status Decode(const Profile& profile, uint16_t address, absl::Span<const uint8_t> data,
                    std::vector<DecodedValue>* out) {
  out->clear();
  const uint32_t count = static_cast<uint32_t>(data.size() / 2);
  const uint32_t end = address + count;
  auto it = std::lower_bound(profile.registers.begin(), profile.registers.end(), address,
                             [](const Register& r, uint32_t a) { return r.address < a; });
  for (; it != profile.registers.end() && it->address < end; ++it) {
    if (it->End() > end) continue;
    DecodedValue dv;
    dv.reg = &*it;
    dv.raw_count = static_cast<uint8_t>(WordCount(it->type));
    const size_t first = it->address - address;
    for (size_t k = 0; k < dv.raw_count; ++k) {
      dv.raw[k] = static_cast<uint16_t>((data[2 * (first + k)] << 8) | data[2 * (first + k) + 1]);
    }
    dv.value = Convert(*it, dv.raw.data());
    out->push_back(dv);
  }
  if (out->empty()) {
    return common::Error(common::kCodeNoRegister, absl::StatusCode::kNotFound,
                         absl::StrFormat("no register-map entry of profile \"%s\" lies within "
                                         "registers %d..%d",
                                         profile.name, address, end == 0 ? 0 : end - 1));
  }
  return absl::OkStatus();
}

}  // namespace devbridge::regmap
