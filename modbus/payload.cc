#include "modbus/payload.h"

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "modbus/crc.h"

namespace devbridge::modbus {
namespace {

template <typename... Args>
absl::Status FrameError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  return common::Error(common::kCodeFrameError, absl::StatusCode::kInvalidArgument,
                       absl::StrFormat(format, args...));
}

// 0..15 for a hex digit, -1 for white space, -2 for anything else.
constexpr std::array<int, 256> MakeHexTable() {
  std::array<int, 256> t{};
  for (auto& v : t) v = -2;
  for (int c = '0'; c <= '9'; ++c) t[c] = c - '0';
  for (int c = 'a'; c <= 'f'; ++c) t[c] = c - 'a' + 10;
  for (int c = 'A'; c <= 'F'; ++c) t[c] = c - 'A' + 10;
  for (unsigned char c : {' ', '\t', '\n', '\r', '\v', '\f'}) t[c] = -1;
  return t;
}
constexpr std::array<int, 256> kHex = MakeHexTable();

bool IsTextByte(uint8_t c) { return (c >= 0x20 && c < 0x7F) || kHex[c] == -1; }

bool HasValidCrc(absl::string_view raw) {
  if (raw.size() < 4) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
  const size_t n = raw.size();
  return Crc16(p, n - 2) == static_cast<uint16_t>(p[n - 2] | (p[n - 1] << 8));
}

absl::StatusOr<FrameBytes> ReadRaw(absl::string_view raw) {
  if (raw.size() > kMaxFrameSize) {
    return FrameError("payload too long: %d bytes, a frame has at most %d", raw.size(), kMaxFrameSize);
  }
  FrameBytes out;
  for (char c : raw) out.bytes[out.size++] = static_cast<uint8_t>(c);
  return out;
}

absl::StatusOr<FrameBytes> ReadHex(absl::string_view text) {
  FrameBytes out;
  int high = -1;
  for (size_t i = 0; i < text.size(); ++i) {
    const int v = kHex[static_cast<uint8_t>(text[i])];
    if (v == -1) continue;
    if (v == -2) return FrameError("bad hex text: '%c' at offset %d", text[i], i);
    if (high < 0) {
      high = v;
      continue;
    }
    if (out.size == kMaxFrameSize) {
      return FrameError("hex text too long: more than %d bytes", kMaxFrameSize);
    }
    out.bytes[out.size++] = static_cast<uint8_t>((high << 4) | v);
    high = -1;
  }
  if (high >= 0) return FrameError("bad hex text: odd number of hex digits");
  if (out.size == 0) return FrameError("empty payload: no hex digits");
  return out;
}

}  // namespace

absl::StatusOr<FrameBytes> ReadPayload(absl::string_view payload) {
  if (payload.empty()) return FrameError("empty payload");
  bool text = true;
  for (char c : payload) {
    if (!IsTextByte(static_cast<uint8_t>(c))) {
      text = false;
      break;
    }
  }
  if (!text) return ReadRaw(payload);
  absl::StatusOr<FrameBytes> hex = ReadHex(payload);
  if (!hex.ok() && HasValidCrc(payload)) return ReadRaw(payload);
  return hex;
}

std::string ToHex(absl::Span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out(2 * bytes.size(), '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0x0F];
  }
  return out;
}

}  // namespace devbridge::modbus
