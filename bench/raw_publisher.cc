#include "bench/raw_publisher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace devbridge::bench {
namespace {

void PutLength(std::string& out, size_t n) {
  do {
    uint8_t b = n % 128;
    n /= 128;
    if (n > 0) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (n > 0);
}

void PutString(std::string& out, const std::string& s) {
  out.push_back(static_cast<char>(s.size() >> 8));
  out.push_back(static_cast<char>(s.size() & 0xFF));
  out += s;
}

bool ReadFull(int fd, uint8_t* buf, size_t n) {
  while (n > 0) {
    const ssize_t r = read(fd, buf, n);
    if (r <= 0) return false;
    buf += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void WriteFull(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t w = write(fd, data.data() + off, data.size() - off);
    if (w <= 0) {
      std::perror("raw publisher write");
      std::exit(1);
    }
    off += static_cast<size_t>(w);
  }
}

// Connects to tcp://host:port as `client_id` (clean session), or exits with a message.
int ConnectRaw(const std::string& url, const std::string& client_id) {
  const size_t colon = url.rfind(':');
  const std::string host = url.substr(url.find("//") + 2, colon - url.find("//") - 2);
  const int port = std::atoi(url.c_str() + colon + 1);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("raw MQTT connect");
    std::exit(1);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::string body;
  PutString(body, "MQTT");
  body.push_back(4);     // protocol level 3.1.1
  body.push_back(0x02);  // clean session
  body.push_back(0);
  body.push_back(60);    // keepalive
  PutString(body, client_id);
  std::string packet(1, static_cast<char>(0x10));
  PutLength(packet, body.size());
  WriteFull(fd, packet + body);
  uint8_t connack[4];
  if (!ReadFull(fd, connack, 4) || connack[0] != 0x20 || connack[3] != 0) {
    std::fprintf(stderr, "raw MQTT: connection refused by broker\n");
    std::exit(1);
  }
  return fd;
}

}  // namespace

RawPublisher::RawPublisher(const std::string& url, const std::string& client_id, int window)
    : fd_(ConnectRaw(url, client_id)), window_(window) {
  reader_ = std::thread([this] { ReadAcks(); });
}

RawPublisher::~RawPublisher() {
  Drain();
  WriteFull(fd_, std::string("\xE0\x00", 2));  // DISCONNECT
  shutdown(fd_, SHUT_RDWR);
  reader_.join();
  close(fd_);
}

void RawPublisher::ReadAcks() {
  uint8_t buf[4];
  while (ReadFull(fd_, buf, 4)) {  // PUBACK: 0x40 0x02 id_hi id_lo
    acked_.fetch_add(1);
    cv_.notify_all();
  }
  cv_.notify_all();
}

void RawPublisher::Publish(const std::string& topic, const std::string& payload) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return sent_ - acked_.load() < static_cast<uint64_t>(window_); });
  }
  out_.clear();
  out_.push_back(static_cast<char>(0x32));  // PUBLISH, QoS 1
  PutLength(out_, 2 + topic.size() + 2 + payload.size());
  PutString(out_, topic);
  if (next_id_ == 0) next_id_ = 1;
  out_.push_back(static_cast<char>(next_id_ >> 8));
  out_.push_back(static_cast<char>(next_id_ & 0xFF));
  ++next_id_;
  out_ += payload;
  WriteFull(fd_, out_);
  ++sent_;
}

void RawPublisher::Drain() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::seconds(30), [&] { return acked_.load() >= sent_; });
}

RawSubscriber::RawSubscriber(const std::string& url, const std::string& client_id, const std::string& filter,
                             std::function<void(const char* payload, size_t size)> on_message)
    : fd_(ConnectRaw(url, client_id)), on_message_(std::move(on_message)) {
  std::string body(2, '\0');
  body[1] = 1;  // packet id 1
  PutString(body, filter);
  body.push_back(0);  // QoS 0
  std::string packet(1, static_cast<char>(0x82));
  PutLength(packet, body.size());
  WriteFull(fd_, packet + body);
  uint8_t suback[5];
  if (!ReadFull(fd_, suback, 5) || suback[0] != 0x90 || suback[4] > 2) {
    std::fprintf(stderr, "raw MQTT: subscription to %s refused\n", filter.c_str());
    std::exit(1);
  }
  reader_ = std::thread([this] { Read(); });
}

RawSubscriber::~RawSubscriber() {
  shutdown(fd_, SHUT_RDWR);
  reader_.join();
  close(fd_);
}

// Reads in large chunks and cuts them into packets; calls on_message_ for each PUBLISH.
void RawSubscriber::Read() {
  std::string buf;
  char chunk[65536];
  for (;;) {
    const ssize_t r = read(fd_, chunk, sizeof chunk);
    if (r <= 0) return;
    buf.append(chunk, static_cast<size_t>(r));
    size_t at = 0;
    for (;;) {
      // Fixed header: type and flags, then the remaining length (1..4 bytes, 7 bits each).
      size_t length = 0, pos = at + 1;
      int shift = 0;
      bool complete = false;
      while (pos < buf.size() && shift <= 21) {
        const auto b = static_cast<uint8_t>(buf[pos++]);
        length |= static_cast<size_t>(b & 0x7F) << shift;
        shift += 7;
        if ((b & 0x80) == 0) {
          complete = true;
          break;
        }
      }
      if (!complete || buf.size() - pos < length) break;
      const auto type = static_cast<uint8_t>(buf[at]);
      if ((type >> 4) == 3 && length >= 2) {  // PUBLISH at QoS 0: topic, then the payload
        const size_t topic = (static_cast<size_t>(static_cast<uint8_t>(buf[pos])) << 8) | static_cast<uint8_t>(buf[pos + 1]);
        const size_t skip = 2 + topic + (((type >> 1) & 3) != 0 ? 2 : 0);
        if (skip <= length) on_message_(buf.data() + pos + skip, length - skip);
      }
      at = pos + length;
    }
    buf.erase(0, at);
  }
}

}  // namespace devbridge::bench
