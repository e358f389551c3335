// Rows ingest writes to PostgreSQL (CONTRACT §8), as plain values handed from the io
// thread to the store's writer thread.
#ifndef DEVBRIDGE_SERVICES_INGEST_CORE_RECORDS_H_
#define DEVBRIDGE_SERVICES_INGEST_CORE_RECORDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "absl/time/time.h"

namespace devbridge::ingest {

struct DeviceRecord {
  std::string device_id;
  bool online = false;
  absl::Time first_seen;
  absl::Time last_seen;
  std::optional<std::string> meta_json;  // set only when a heartbeat brought new meta
};

struct ReadingRecord {
  std::string device_id;
  absl::Time received_at;
  std::string command_id;        // empty: NULL (unsolicited)
  int unit = 0;
  int function = 0;
  std::optional<int> address;
  std::string raw;               // frame bytes
  std::string values_json;       // JSON object of decoded values
  absl::Time published_at;       // when ingest took the frame, for publish→commit latency
};

struct CommandRecord {
  std::string command_id;
  std::string device_id;
  absl::Time requested_at;
  std::optional<absl::Time> completed_at;
  std::string status;            // queued, sent, succeeded, failed, timeout
  int code = 0;
  std::string request;           // frame bytes
  std::optional<std::string> response;
  std::string error;             // empty: NULL
};

using StoreRecord = std::variant<DeviceRecord, ReadingRecord, CommandRecord>;

// Approximate memory a record holds, for the writer queue's byte bound.
size_t RecordBytes(const StoreRecord& record);

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_CORE_RECORDS_H_
