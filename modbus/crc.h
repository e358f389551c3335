// CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF, sent low byte first.
// The check value of the ASCII bytes "123456789" is 0x4B37.
#ifndef DEVBRIDGE_MODBUS_CRC_H_
#define DEVBRIDGE_MODBUS_CRC_H_

#include <cstddef>
#include <cstdint>

namespace devbridge::modbus {

// The CRC of `size` bytes at `data`. Table-driven, eight bytes per step.
uint16_t Crc16(const uint8_t* data, size_t size);

// Continues a CRC computed over earlier bytes: Crc16(a+b) == Crc16Update(Crc16(a), b).
uint16_t Crc16Update(uint16_t crc, const uint8_t* data, size_t size);

}  // namespace devbridge::modbus

#endif  // DEVBRIDGE_MODBUS_CRC_H_
