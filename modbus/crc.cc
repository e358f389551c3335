#include "modbus/crc.h"

#include <array>
#include <cstring>

namespace devbridge::modbus {
namespace {

constexpr uint16_t kPolynomial = 0xA001;  // 0x8005 reflected

// kTables[k][b] is the CRC contribution of byte b followed by k zero bytes, so eight bytes
// can be folded per step ("slicing by 8"); kTables[0] is the classic byte table.
struct Tables {
  std::array<std::array<uint16_t, 256>, 8> t{};
  constexpr Tables() {
    for (int b = 0; b < 256; ++b) {
      uint16_t crc = static_cast<uint16_t>(b);
      for (int bit = 0; bit < 8; ++bit) {
        crc = (crc & 1) ? static_cast<uint16_t>((crc >> 1) ^ kPolynomial)
                        : static_cast<uint16_t>(crc >> 1);
      }
      t[0][b] = crc;
    }
    for (int k = 1; k < 8; ++k) {
      for (int b = 0; b < 256; ++b) {
        const uint16_t prev = t[k - 1][b];
        t[k][b] = static_cast<uint16_t>((prev >> 8) ^ t[0][prev & 0xFF]);
      }
    }
  }
};

constexpr Tables kTables;

}  // namespace

uint16_t Crc16Update(uint16_t crc, const uint8_t* data, size_t size) {
  const auto& t = kTables.t;
  while (size >= 8) {
    const uint8_t b0 = static_cast<uint8_t>(data[0] ^ (crc & 0xFF));
    const uint8_t b1 = static_cast<uint8_t>(data[1] ^ (crc >> 8));
    crc = static_cast<uint16_t>(t[7][b0] ^ t[6][b1] ^ t[5][data[2]] ^ t[4][data[3]] ^
                                t[3][data[4]] ^ t[2][data[5]] ^ t[1][data[6]] ^ t[0][data[7]]);
    data += 8;
    size -= 8;
  }
  while (size-- > 0) {
    crc = static_cast<uint16_t>((crc >> 8) ^ t[0][(crc ^ *data++) & 0xFF]);
  }
  return crc;
}

uint16_t Crc16(const uint8_t* data, size_t size) { return Crc16Update(0xFFFF, data, size); }

}  // namespace devbridge::modbus
