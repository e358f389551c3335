// Modbus codec benchmarks: CRC throughput, reply parsing, and parse + decode into named
// values with the shipped register map. Targets (issue 2): CRC >= 1.5 GB/s, parse+decode
// >= 3 M frames/s on one core.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "modbus/crc.h"
#include "modbus/frame.h"
#include "modbus/payload.h"
#include "regmap/register_map.h"

namespace devbridge {
namespace {

std::vector<uint16_t> TenRegisters() { return {235, 455, 1, 0x86A0, 0x4366, 0x8000, 0x4120, 0, 0, 2300}; }

void BM_Crc16_256Bytes(benchmark::State& state) {
  std::vector<uint8_t> data(256);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
  for (auto _ : state) {
    benchmark::DoNotOptimize(modbus::Crc16(data.data(), data.size()));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 256);
}
BENCHMARK(BM_Crc16_256Bytes);

void BM_ParseReply_10Registers(benchmark::State& state) {
  const auto frame = modbus::BuildReadReply(1, modbus::kReadHoldingRegisters, TenRegisters());
  modbus::Request request;
  request.count = 10;
  for (auto _ : state) {
    auto reply = modbus::ParseReply(frame, request);
    benchmark::DoNotOptimize(reply);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * frame.size()));
  state.SetLabel("items/s = frames/s");
}
BENCHMARK(BM_ParseReply_10Registers);

// From the hex text on the MQTT topic to named values: read payload, parse, decode.
void BM_ParseDecode_10Registers(benchmark::State& state) {
  auto map = regmap::RegisterMap::LoadFile(DEVBRIDGE_SOURCE_DIR "/config/registers.json");
  if (!map.ok()) {
    state.SkipWithError("cannot load config/registers.json");
    return;
  }
  const regmap::Profile* profile = map->ProfileFor("sim-0001");
  const auto frame = modbus::BuildReadReply(1, modbus::kReadHoldingRegisters, TenRegisters());
  const std::string payload = modbus::ToHex(frame);
  modbus::Request request;
  request.count = 10;
  std::vector<regmap::DecodedValue> values;
  for (auto _ : state) {
    auto bytes = modbus::ReadPayload(payload);
    auto reply = modbus::ParseReply(bytes->span(), request);
    auto status = regmap::Decode(*profile, request.address, reply->data, &values);
    benchmark::DoNotOptimize(status);
    benchmark::DoNotOptimize(values.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(std::to_string(values.size()) + " values/frame, hex payload");
}
BENCHMARK(BM_ParseDecode_10Registers);

}  // namespace
}  // namespace devbridge

BENCHMARK_MAIN();
