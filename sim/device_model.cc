#include "sim/device_model.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "modbus/frame.h"

namespace devbridge::sim {
namespace {

constexpr double kPi = 3.14159265358979323846;
// A written register keeps its value this long before drifting again.
constexpr absl::Duration kWriteHold = absl::Minutes(5);

// A plausible engineering value for a register at time t: a slow sine around a base that
// depends on its name, so temperatures look like temperatures.
double Wave(const regmap::Register& reg, uint32_t seed, double t) {
  double base = 50, amplitude = 10, period = 120;
  const std::string& n = reg.name;
  if (n.find("temp") != std::string::npos) base = 21, amplitude = 3, period = 300;
  else if (n.find("humid") != std::string::npos) base = 45, amplitude = 8, period = 420;
  else if (n.find("volt") != std::string::npos) base = 230, amplitude = 4, period = 60;
  else if (n.find("current") != std::string::npos) base = 8, amplitude = 3, period = 90;
  else if (n.find("power") != std::string::npos) base = 1800, amplitude = 600, period = 90;
  else if (n.find("setpoint") != std::string::npos) base = 22, amplitude = 0, period = 1;
  const double phase = (seed % 360) * kPi / 180;
  // kWh, growing by 10 an hour (wrapping every ~40 days so it stays in range).
  if (n.find("energy") != std::string::npos) return 1000 + (seed % 97) * 10 + std::fmod(t, 3.6e6) / 360;
  return base + amplitude * std::sin(2 * kPi * t / period + phase);
}

}  // namespace

DeviceModel::DeviceModel(const regmap::Profile& profile, uint32_t seed, Clock clock)
    : profile_(profile), seed_(seed), clock_(std::move(clock)) {
  for (const auto& reg : profile_.registers) {
    for (uint32_t a = reg.address; a < reg.End(); ++a) words_[static_cast<uint16_t>(a)] = 0;
  }
  Update(clock_());
}

void DeviceModel::Store(const regmap::Register& reg, double value) {
  using regmap::ValueType;
  const int n = regmap::WordCount(reg.type);
  uint64_t bits = 0;
  if (reg.type == ValueType::kBool) {
    uint16_t& w = words_[reg.address];
    w = static_cast<uint16_t>(value != 0 ? (w | (1u << reg.bit)) : (w & ~(1u << reg.bit)));
    return;
  }
  const double raw = (value - reg.offset) / (reg.scale == 0 ? 1 : reg.scale);
  switch (reg.type) {
    case ValueType::kFloat32: {
      const float f = static_cast<float>(raw);
      uint32_t b;
      std::memcpy(&b, &f, 4);
      bits = b;
      break;
    }
    case ValueType::kFloat64:
      std::memcpy(&bits, &raw, 8);
      break;
    case ValueType::kInt16:
    case ValueType::kInt32:
    case ValueType::kInt64: {
      const double lim = std::ldexp(1.0, 16 * n - 1);
      const double clamped = std::fmax(-lim, std::fmin(lim - 1, std::round(raw)));
      bits = static_cast<uint64_t>(static_cast<int64_t>(clamped));
      break;
    }
    default: {
      const double lim = std::ldexp(1.0, 16 * n);
      bits = static_cast<uint64_t>(std::fmax(0.0, std::fmin(lim - 1, std::round(raw))));
    }
  }
  for (int k = 0; k < n; ++k) {
    const int word_index = reg.little_word_order ? k : n - 1 - k;  // k-th least significant word
    words_[static_cast<uint16_t>(reg.address + word_index)] = static_cast<uint16_t>(bits >> (16 * k));
  }
}

void DeviceModel::Update(absl::Time now) {
  const double t = absl::ToDoubleSeconds(now - absl::UnixEpoch());
  for (const auto& reg : profile_.registers) {
    auto pinned = written_.find(reg.name);
    if (pinned != written_.end() && now - pinned->second < kWriteHold) continue;
    if (reg.type == regmap::ValueType::kBool) {
      // Alarms and contacts: mostly off, on for a minute now and then.
      Store(reg, std::fmod(t / 60 + (seed_ + reg.bit) * 7, 11.0) < 1.0 ? 1 : 0);
    } else {
      Store(reg, Wave(reg, seed_, t));
    }
  }
}

int DeviceModel::Word(uint16_t address) const {
  auto it = words_.find(address);
  return it == words_.end() ? -1 : it->second;
}

std::vector<uint8_t> DeviceModel::Answer(absl::Span<const uint8_t> frame) {
  if (frame.size() >= 2 && frame[0] != profile_.unit && frame[0] != 0) return {};
  absl::StatusOr<modbus::Request> request = modbus::ParseRequest(frame);
  if (!request.ok()) {
    if (frame.size() >= 4 && !modbus::IsSupportedFunction(frame[1])) {
      return modbus::BuildExceptionReply(profile_.unit, frame[1], modbus::kIllegalFunction);
    }
    return {};
  }
  const uint32_t count = request->Quantity();
  for (uint32_t a = request->address; a < request->address + count; ++a) {
    if (a > 0xFFFF || !words_.count(static_cast<uint16_t>(a))) {
      return modbus::BuildExceptionReply(profile_.unit, request->function, modbus::kIllegalDataAddress);
    }
  }
  if (request->function == modbus::kReadHoldingRegisters || request->function == modbus::kReadInputRegisters) {
    std::vector<uint16_t> regs;
    regs.reserve(count);
    for (uint32_t a = request->address; a < request->address + count; ++a) regs.push_back(words_[a]);
    return modbus::BuildReadReply(profile_.unit, request->function, regs);
  }
  for (size_t i = 0; i < request->values.size(); ++i) {
    words_[static_cast<uint16_t>(request->address + i)] = request->values[i];
  }
  const absl::Time now = clock_();
  for (const auto& reg : profile_.registers) {
    if (reg.address < request->address + count && reg.End() > request->address) written_[reg.name] = now;
  }
  return modbus::BuildWriteReply(*request);
}

std::vector<uint8_t> DeviceModel::UnsolicitedRead() {
  std::vector<uint16_t> regs;
  if (!words_.empty()) {
    const uint16_t first = words_.begin()->first;
    for (uint32_t a = first; a < first + 125u; ++a) {
      auto it = words_.find(static_cast<uint16_t>(a));
      if (it == words_.end()) break;
      regs.push_back(it->second);
    }
  }
  return modbus::BuildReadReply(profile_.unit, modbus::kReadHoldingRegisters, regs);
}

}  // namespace devbridge::sim
