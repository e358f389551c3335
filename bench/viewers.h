// Viewers for the benchmarks: many WebSocket connections on one thread, each message's
// latency taken from the send time (µs since the epoch, NowMicros) that the message carries.
// Used by push_bench's client processes and by e2e_bench.
#ifndef DEVBRIDGE_BENCH_VIEWERS_H_
#define DEVBRIDGE_BENCH_VIEWERS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace devbridge::bench {

// The send time a message carries, in µs, or -1 if it carries none (push's "connected" frame).
using SentMicros = int64_t (*)(const std::string& payload);

// What viewers received: when the first and last message came (µs) and every latency (ms).
struct Latencies {
  int64_t first_us = 0;
  int64_t last_us = 0;
  std::vector<float> ms;
  void Add(int64_t sent_us, int64_t now_us);
};

// Writes `l` to `file`: first_us and last_us (int64), then the latencies (float32, ms).
void WriteLatencies(const Latencies& l, const std::string& file);

// Connects to every URL (from `source_ip` if not empty: one address has ~28k ports), prints
// "ready N" on stdout once all are open or failed (or after 60 s; at most 200 handshakes at a
// time, as clients arrive), records until SIGTERM or SIGINT,
// then writes what it received to `out_file`. Returns the process's exit status.
int RunWsViewers(const std::vector<std::string>& urls, const std::string& source_ip, SentMicros sent,
                 const std::string& out_file);

// Blocks until SIGTERM or SIGINT (installs the handlers).
void WaitForTermination();

}  // namespace devbridge::bench

#endif  // DEVBRIDGE_BENCH_VIEWERS_H_
