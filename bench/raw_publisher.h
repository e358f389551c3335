// Minimal MQTT 3.1.1 clients over a plain socket, so the benchmarks' own load generators and
// viewers cost far less CPU than the systems they measure. The publisher pipelines up to
// `window` unacknowledged QoS 1 PUBLISH packets and reads PUBACKs on a second thread; the
// subscriber takes QoS 0 deliveries on a thread of its own.
#ifndef DEVBRIDGE_BENCH_RAW_PUBLISHER_H_
#define DEVBRIDGE_BENCH_RAW_PUBLISHER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace devbridge::bench {

class RawPublisher {
 public:
  // Connects to tcp://host:port (clean session) or exits with a message.
  RawPublisher(const std::string& url, const std::string& client_id, int window = 2000);
  ~RawPublisher();
  // Sends one QoS 1 PUBLISH; blocks while `window` are unacknowledged.
  void Publish(const std::string& topic, const std::string& payload);
  // Waits until every PUBLISH is acknowledged.
  void Drain();
  uint64_t acked() const { return acked_.load(); }

 private:
  void ReadAcks();
  int fd_ = -1;
  int window_;
  uint16_t next_id_ = 1;
  uint64_t sent_ = 0;
  std::atomic<uint64_t> acked_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::string out_;
  std::thread reader_;
};

class RawSubscriber {
 public:
  // Connects (clean session) and subscribes to `filter` at QoS 0, or exits with a message;
  // then calls `on_message` with each payload, on its own thread.
  RawSubscriber(const std::string& url, const std::string& client_id, const std::string& filter,
                std::function<void(const char* payload, size_t size)> on_message);
  ~RawSubscriber();

 private:
  void Read();
  int fd_;
  std::function<void(const char*, size_t)> on_message_;
  std::thread reader_;
};

}  // namespace devbridge::bench

#endif  // DEVBRIDGE_BENCH_RAW_PUBLISHER_H_
