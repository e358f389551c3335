#include "sim/simulator.h"

#include <asio.hpp>
#include <algorithm>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/uuid.h"
#include "modbus/frame.h"
#include "modbus/payload.h"
#include "mqtt/client.h"
#include "sim/device_model.h"

namespace devbridge::sim {

struct Simulator::Impl {
  struct Device {
    size_t index = 0;
    uint32_t frames = 0;  // unsolicited reads sent (the sequence number of the last)
    std::string id;
    std::unique_ptr<DeviceModel> model;
    mqtt::Client* client = nullptr;
    std::unique_ptr<asio::steady_timer> heartbeat;
    std::unique_ptr<asio::steady_timer> data;
    bool silent = false;
  };

  explicit Impl(SimOptions o) : options(std::move(o)), log(common::Logger("sim")) {}

  std::string Topic(const Device& d, const char* kind) const {
    return absl::StrCat(options.topic_prefix, "/", d.id, "/", kind);
  }

  void Publish(Device& d, const char* kind, const std::string& payload) {
    if (absl::Status s = d.client->Publish(Topic(d, kind), payload, options.qos); !s.ok()) {
      log->debug("[{}] {}", d.id, s.message());
    }
  }

  void Heartbeat(Device& d) {
    if (!d.silent) {
      stats.heartbeats.fetch_add(1);
      Publish(d, "heartbeat",
              absl::StrFormat(R"({"fw":"sim-1.0","uptime":%d,"rssi":%d})",
                              absl::ToInt64Seconds(absl::Now() - started), -50 - static_cast<int>(rng() % 30)));
    }
    d.heartbeat->expires_after(absl::ToChronoMilliseconds(options.heartbeat_interval));
    d.heartbeat->async_wait([this, &d](std::error_code ec) {
      if (!ec) Heartbeat(d);
    });
  }

  void Data(Device& d) {
    if (!d.silent) {
      d.model->Update(absl::Now());
      stats.data_frames.fetch_add(1);
      std::vector<uint8_t> frame = d.model->UnsolicitedRead();
      if (options.sequence && frame.size() >= 3 + 4 + 2) {
        PublishNumbered(d, std::move(frame));
      } else {
        Publish(d, "data", modbus::ToHex(frame));
      }
    }
    d.data->expires_after(absl::ToChronoMicroseconds(options.data_interval));
    d.data->async_wait([this, &d](std::error_code ec) {
      if (!ec) Data(d);
    });
  }

  // Io thread: puts the device's next frame number in the first two registers and publishes,
  // noting the number once the broker acknowledges it.
  void PublishNumbered(Device& d, std::vector<uint8_t> frame) {
    const uint32_t n = ++d.frames;
    frame[3] = static_cast<uint8_t>(n >> 24);
    frame[4] = static_cast<uint8_t>(n >> 16);
    frame[5] = static_cast<uint8_t>(n >> 8);
    frame[6] = static_cast<uint8_t>(n);
    frame.resize(frame.size() - 2);
    modbus::AppendCrc(frame);
    const size_t index = d.index;
    absl::Status s = d.client->Publish(Topic(d, "data"), modbus::ToHex(frame), options.qos, false,
                                       [this, index, n](bool delivered) {
                                         if (!delivered) {
                                           stats.data_unacked.fetch_add(1);
                                           return;
                                         }
                                         stats.data_acked.fetch_add(1);
                                         std::lock_guard<std::mutex> lock(ack_mu);
                                         acked[index].push_back(n);
                                       });
    if (!s.ok()) log->debug("[{}] {}", d.id, s.message());
  }

  // After the clients stopped: the acknowledged frame numbers of every device, as ranges.
  void WriteAckLog() {
    std::FILE* f = std::fopen(options.ack_log.c_str(), "w");
    if (f == nullptr) {
      log->error("cannot write --ack_log {}", options.ack_log);
      return;
    }
    std::lock_guard<std::mutex> lock(ack_mu);
    for (size_t i = 0; i < devices.size(); ++i) {
      std::vector<uint32_t>& seqs = acked[i];
      std::sort(seqs.begin(), seqs.end());
      seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
      std::string ranges;
      for (size_t j = 0; j < seqs.size();) {
        size_t k = j;
        while (k + 1 < seqs.size() && seqs[k + 1] == seqs[k] + 1) ++k;
        absl::StrAppend(&ranges, ranges.empty() ? "" : ",", seqs[j], "-", seqs[k]);
        j = k + 1;
      }
      std::fprintf(f, "%s %zu %s\n", devices[i].id.c_str(), seqs.size(), ranges.empty() ? "-" : ranges.c_str());
    }
    std::fclose(f);
  }

  // Io thread: a command for device `index` arrived.
  void OnCommand(size_t index, const std::string& payload) {
    Device& d = devices[index];
    stats.commands.fetch_add(1);
    if (d.silent) return;
    if (options.drop_rate > 0 && uniform(rng) < options.drop_rate) {
      stats.dropped.fetch_add(1);
      return;
    }
    absl::StatusOr<modbus::FrameBytes> frame = modbus::ReadPayload(payload);
    if (!frame.ok()) return;
    d.model->Update(absl::Now());
    std::vector<uint8_t> reply = d.model->Answer(frame->span());
    if (reply.empty()) return;
    if (options.crc_error_rate > 0 && uniform(rng) < options.crc_error_rate) {
      reply.back() ^= 0x5A;
      stats.corrupted.fetch_add(1);
    }
    std::string hex = modbus::ToHex(reply);
    if (options.reply_delay <= absl::ZeroDuration()) {
      stats.replies.fetch_add(1);
      return Publish(d, "data", hex);
    }
    auto timer = std::make_shared<asio::steady_timer>(io, absl::ToChronoMicroseconds(options.reply_delay));
    timer->async_wait([this, &d, timer, hex = std::move(hex)](std::error_code ec) {
      if (ec) return;
      stats.replies.fetch_add(1);
      Publish(d, "data", hex);
    });
  }

  SimOptions options;
  std::shared_ptr<spdlog::logger> log;
  SimStats stats;
  absl::Time started = absl::Now();
  std::mt19937 rng{std::random_device{}()};
  std::uniform_real_distribution<double> uniform{0.0, 1.0};
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::vector<Device> devices;
  std::mutex ack_mu;
  std::vector<std::vector<uint32_t>> acked;  // per device, frame numbers acknowledged (--sequence)
  std::vector<std::unique_ptr<mqtt::Client>> clients;
  std::thread io_thread;
  bool stopped = false;
};

absl::StatusOr<std::unique_ptr<Simulator>> Simulator::Start(SimOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  Impl& s = *impl;
  const SimOptions& o = s.options;
  if (o.register_map == nullptr) return absl::InvalidArgumentError("no register map");
  if (o.devices < 1) return absl::InvalidArgumentError("--devices must be at least 1");
  const std::string run = common::RandomToken(6);

  s.devices.resize(static_cast<size_t>(o.devices));
  s.acked.resize(static_cast<size_t>(o.devices));
  for (int i = 0; i < o.devices; ++i) {
    Impl::Device& d = s.devices[static_cast<size_t>(i)];
    d.index = static_cast<size_t>(i);
    d.id = absl::StrFormat("%s%04d", o.id_prefix, o.first_index + i);
    const regmap::Profile* profile =
        o.profile.empty() ? o.register_map->ProfileFor(d.id) : o.register_map->FindProfile(o.profile);
    if (profile == nullptr) {
      return absl::InvalidArgumentError(
          o.profile.empty() ? absl::StrCat("no profile in the register map matches device ", d.id)
                            : absl::StrCat("no profile named \"", o.profile, "\" in the register map"));
    }
    d.model = std::make_unique<DeviceModel>(*profile, static_cast<uint32_t>(i * 37 + 11), absl::Now);
    d.heartbeat = std::make_unique<asio::steady_timer>(s.io);
    d.data = std::make_unique<asio::steady_timer>(s.io);
  }

  const int per = std::max(1, o.devices_per_connection);
  for (int first = 0; first < o.devices; first += per) {
    const int last = std::min(o.devices, first + per);
    mqtt::Options mo;
    mo.url = o.mqtt_url;
    mo.transport = o.mqtt_transport;
    mo.client_id = absl::StrCat(o.client_id_prefix, "-", run, "-", first / per);
    mo.clean_session = true;
    mo.max_inflight = 10000;
    mo.log_name = "sim.mqtt";
    for (int i = first; i < last; ++i) {
      mo.subscriptions.emplace_back(absl::StrCat(o.topic_prefix, "/", s.devices[i].id, "/command"), o.qos);
    }
    // Topic → device index for this connection's devices.
    auto index = std::make_shared<std::unordered_map<std::string, size_t>>();
    for (int i = first; i < last; ++i) index->emplace(s.devices[i].id, static_cast<size_t>(i));
    const std::string prefix = o.topic_prefix + "/";
    auto client = mqtt::Client::Create(
        mo, [&s, index, prefix](absl::string_view topic, absl::string_view payload, uint16_t, bool) {
          absl::string_view rest = topic.substr(std::min(prefix.size(), topic.size()));
          const size_t slash = rest.find('/');
          auto it = index->find(std::string(rest.substr(0, slash)));
          if (it != index->end()) {
            asio::post(s.io, [&s, i = it->second, p = std::string(payload)] { s.OnCommand(i, p); });
          }
        });
    if (!client.ok()) return client.status();
    for (int i = first; i < last; ++i) s.devices[i].client = client->get();
    s.clients.push_back(*std::move(client));
  }

  // Spread first heartbeats and data over their intervals so devices do not beat in step.
  for (size_t i = 0; i < s.devices.size(); ++i) {
    Impl::Device& d = s.devices[i];
    const double frac = static_cast<double>(i) / static_cast<double>(s.devices.size());
    d.heartbeat->expires_after(absl::ToChronoMicroseconds(std::min(o.heartbeat_interval, absl::Seconds(1)) * frac));
    d.heartbeat->async_wait([&s, &d](std::error_code ec) {
      if (!ec) s.Heartbeat(d);
    });
    if (o.data_interval > absl::ZeroDuration()) {
      d.data->expires_after(absl::ToChronoMicroseconds(o.data_interval * frac) + std::chrono::milliseconds(200));
      d.data->async_wait([&s, &d](std::error_code ec) {
        if (!ec) s.Data(d);
      });
    }
  }
  for (auto& c : s.clients) c->Start();
  s.io_thread = std::thread([&s] { s.io.run(); });
  s.log->info("{} device(s) {}..{} on {} connection(s) to {}", o.devices, s.devices.front().id,
              s.devices.back().id, s.clients.size(), o.mqtt_url);
  return std::unique_ptr<Simulator>(new Simulator(std::move(impl)));
}

Simulator::Simulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Simulator::~Simulator() { Stop(); }

void Simulator::Stop() {
  Impl& s = *impl_;
  if (s.stopped) return;
  s.stopped = true;
  asio::post(s.io, [&s] {
    for (auto& d : s.devices) {
      d.heartbeat->cancel();
      d.data->cancel();
    }
  });
  s.work.reset();
  s.io.stop();
  if (s.io_thread.joinable()) s.io_thread.join();
  if (s.options.sequence) {
    // Give publishes in flight a moment to be acknowledged, so the log is complete.
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    uint64_t sent = 0;
    for (const auto& d : s.devices) sent += d.frames;
    while (s.stats.data_acked.load() + s.stats.data_unacked.load() < sent && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  for (auto& c : s.clients) c->Stop();
  if (!s.options.ack_log.empty()) s.WriteAckLog();
}

const SimStats& Simulator::stats() const { return impl_->stats; }

bool Simulator::connected() const {
  for (const auto& c : impl_->clients) {
    if (!c->connected()) return false;
  }
  return true;
}

std::string Simulator::DeviceId(int i) const { return impl_->devices.at(static_cast<size_t>(i)).id; }

void Simulator::SetSilent(int i, bool silent) {
  asio::post(impl_->io, [this, i, silent] { impl_->devices.at(static_cast<size_t>(i)).silent = silent; });
}

}  // namespace devbridge::sim
