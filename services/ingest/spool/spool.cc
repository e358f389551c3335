#include "services/ingest/spool/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "common/status.h"
#include "common/uuid.h"

namespace devbridge::ingest {
namespace {

constexpr size_t kHeader = 8;                      // body length (and format flag), CRC
constexpr uint32_t kHasPacketId = 0x80000000u;     // length's top bit: the body carries a packet id
constexpr uint32_t kHasOrigin = 0x40000000u;       // and the next: then also the DUP flag and the session
constexpr uint32_t kFlags = kHasPacketId | kHasOrigin;
constexpr size_t kBodyFixedV1 = 8 + 8 + 2;         // seq, taken at, topic length
constexpr size_t kBodyFixedV2 = 8 + 8 + 2 + 2;     // seq, taken at, packet id, topic length
constexpr size_t kBodyFixed = 8 + 8 + 2 + 1 + 8 + 2;  // seq, taken at, packet id, dup, session, topic length
constexpr size_t kMaxBody = size_t{64} << 20;      // larger is a torn or corrupt length
constexpr size_t kReadChunk = size_t{256} << 10;

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

void PutU16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}
void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetLE(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint32_t Crc(const char* p, size_t n) {
  return static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(p), static_cast<uInt>(n)));
}

// Parses the record at the start of [p, p+n). Returns its total size, 0 if the bytes end
// before the record does, or nullopt if the record is corrupt.
std::optional<size_t> ParseRecord(const char* p, size_t n, SpooledMessage* out) {
  if (n < kHeader) return 0;
  const uint32_t length = static_cast<uint32_t>(GetLE(p, 4));
  const bool has_packet_id = (length & kHasPacketId) != 0;
  const bool has_origin = has_packet_id && (length & kHasOrigin) != 0;
  const size_t body = length & ~kFlags;
  const size_t fixed = has_origin ? kBodyFixed : has_packet_id ? kBodyFixedV2 : kBodyFixedV1;
  if (body < fixed || body > kMaxBody) return std::nullopt;
  if (n < kHeader + body) return 0;
  const char* b = p + kHeader;
  if (Crc(b, body) != static_cast<uint32_t>(GetLE(p + 4, 4))) return std::nullopt;
  const size_t topic_len = GetLE(b + fixed - 2, 2);
  if (fixed + topic_len > body) return std::nullopt;
  if (out != nullptr) {
    out->seq = GetLE(b, 8);
    out->taken_at = absl::FromUnixMicros(static_cast<int64_t>(GetLE(b + 8, 8)));
    out->packet_id = has_packet_id ? static_cast<uint16_t>(GetLE(b + 16, 2)) : 0;
    out->dup = has_origin && b[18] != 0;
    out->session = has_origin ? GetLE(b + 19, 8) : 0;
    out->topic.assign(b + fixed, topic_len);
    out->payload.assign(b + fixed + topic_len, body - fixed - topic_len);
  }
  return kHeader + body;
}

bool FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

absl::StatusOr<std::string> ReadOrCreateId(const std::string& dir) {
  const std::string path = dir + "/spool.id";
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    char buf[128] = {};
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    std::string id(absl::StripAsciiWhitespace(absl::string_view(buf, n)));
    if (!id.empty()) return id;
  }
  const std::string id = common::RandomToken(16);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  const std::string line = id + "\n";
  const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) return Errno("cannot write", path);
  FsyncDir(dir);
  return id;
}

}  // namespace

Spool::Spool(SpoolOptions options, common::MetricsRegistry* metrics) : options_(std::move(options)) {
  if (options_.segment_bytes == 0) {
    options_.segment_bytes = std::clamp(options_.max_bytes / 16, size_t{4} << 10, size_t{64} << 20);
  }
  auto& r = *metrics;
  m_.appended = &r.AddCounter("devbridge_ingest_spool_appended_total", "Messages written to the spool.");
  m_.append_errors = &r.AddCounter("devbridge_ingest_spool_append_errors_total",
                                   "Messages the spool could not write (disk full, I/O error); kept in memory.");
  m_.fsyncs = &r.AddCounter("devbridge_ingest_spool_fsyncs_total", "fsync calls on spool segments.");
  m_.corrupt = &r.AddCounter("devbridge_ingest_spool_corrupt_total",
                             "Corrupt stretches skipped while reading the spool (each logged).");
  m_.segments_deleted = &r.AddCounter("devbridge_ingest_spool_segments_deleted_total",
                                      "Spool segments deleted once PostgreSQL had all of them.");
  m_.sync_wait_ms = &r.AddHistogram("devbridge_ingest_spool_sync_wait_ms",
                                    "Time a message waited on disk unsynced (the window a power cut can lose), ms.",
                                    common::LatencyBucketsMs());
  r.AddGaugeFn("devbridge_ingest_spool_bytes",
               "Bytes in the spool's segments that PostgreSQL does not have in full (spool_max_mb bounds it).", {},
               [this] { return static_cast<double>(bytes()); });
  r.AddGaugeFn("devbridge_ingest_spool_full", "1 while the spool holds more than spool_max_mb (intake paused).",
               {}, [this] { return Full() ? 1.0 : 0.0; });
  r.AddGaugeFn("devbridge_ingest_spool_unsynced", "Messages written to the spool but not yet fsynced.", {},
               [this] { return static_cast<double>(unsynced()); });
}

absl::StatusOr<std::unique_ptr<Spool>> Spool::Open(SpoolOptions options, common::MetricsRegistry* metrics) {
  std::unique_ptr<Spool> spool(new Spool(std::move(options), metrics));
  const std::string& dir = spool->options_.dir;
  // Like mkdir -p: the folders above may not exist yet either.
  for (size_t slash = dir.find('/', 1); ; slash = dir.find('/', slash + 1)) {
    const std::string part = dir.substr(0, slash);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) return Errno("cannot create spool_dir", part);
    if (slash == std::string::npos) break;
  }
  const std::string lock = dir + "/spool.lock";
  spool->lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (spool->lock_fd_ < 0) return Errno("cannot open", lock);
  if (::flock(spool->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("spool_dir ", dir, " is in use by another ingest (", lock, " is locked); give each its own"));
  }
  ASSIGN_OR_RETURN(spool->id_, ReadOrCreateId(dir));
  RETURN_IF_ERROR(spool->Recover());
  spool->syncer_ = std::thread([s = spool.get()] { s->SyncLoop(); });
  return spool;
}

Spool::~Spool() {
  Close();
  CloseCursor();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::string Spool::SegmentPath(uint64_t first_seq) const {
  return absl::StrFormat("%s/%020u.seg", options_.dir, first_seq);
}

absl::Status Spool::Recover() {
  auto log = common::Logger("ingest.spool");
  std::vector<uint64_t> found;
  DIR* d = ::opendir(options_.dir.c_str());
  if (d == nullptr) return Errno("cannot list", options_.dir);
  while (dirent* e = ::readdir(d)) {
    absl::string_view name(e->d_name);
    uint64_t first = 0;
    if (absl::ConsumeSuffix(&name, ".seg") && absl::SimpleAtoi(name, &first) && first > 0) found.push_back(first);
  }
  ::closedir(d);
  std::sort(found.begin(), found.end());

  common::MutexLock lock(&mu_);
  size_t total = 0;
  for (uint64_t first : found) {
    struct stat st{};
    if (::stat(SegmentPath(first).c_str(), &st) != 0) return Errno("cannot stat", SegmentPath(first));
    segments_[first] = Segment{first, static_cast<size_t>(st.st_size)};
    total += static_cast<size_t>(st.st_size);
  }
  if (segments_.empty()) {
    next_seq_ = 1;
    RETURN_IF_ERROR(OpenSegmentForAppend(1, /*create=*/true));
  } else {
    // The newest segment: find its last whole record; cut off a torn one after it.
    Segment& last = segments_.rbegin()->second;
    const std::string path = SegmentPath(last.first_seq);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Errno("cannot open", path);
    std::string data(last.size, '\0');
    size_t got = 0;
    while (got < data.size()) {
      const ssize_t n = ::pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(got));
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    ::close(fd);
    size_t offset = 0;
    uint64_t next = last.first_seq;
    SpooledMessage m;
    while (true) {
      std::optional<size_t> size = ParseRecord(data.data() + offset, got - offset, &m);
      // Sequence numbers run on from the segment's name, one per record: anything else is
      // not a record this spool wrote there.
      if (!size || *size == 0 || m.seq != next) break;
      next = m.seq + 1;
      offset += *size;
    }
    if (offset < last.size) {
      log->warn("segment {}: cut {} byte(s) of a record torn by a crash at offset {}", path, last.size - offset,
                offset);
      if (::truncate(path.c_str(), static_cast<off_t>(offset)) != 0) return Errno("cannot truncate", path);
      total -= last.size - offset;
      last.size = offset;
    }
    next_seq_ = next;
    RETURN_IF_ERROR(OpenSegmentForAppend(last.first_seq, /*create=*/false));
  }
  bytes_ = total;
  appended_ = next_seq_ - 1;
  synced_ = next_seq_ - 1;
  log->info("spool {} (id {}): {} segment(s), {:.1f} MiB, {}; fsync {}", options_.dir, id_, segments_.size(),
            static_cast<double>(total) / (1 << 20),
            next_seq_ > segments_.begin()->first
                ? absl::StrCat("messages ", segments_.begin()->first, "..", next_seq_ - 1)
                : std::string("empty"),
            options_.sync_interval == absl::ZeroDuration()
                ? std::string("after every message")
                : absl::StrCat("at most ", absl::FormatDuration(options_.sync_interval), " apart"));
  return absl::OkStatus();
}

absl::Status Spool::OpenSegmentForAppend(uint64_t first_seq, bool create) {
  const std::string path = SegmentPath(first_seq);
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0644);
  if (fd_ < 0) return Errno("cannot open", path);
  if (create) {
    segments_[first_seq] = Segment{first_seq, 0};
    FsyncDir(options_.dir);  // the segment's name must survive a crash too
  }
  return absl::OkStatus();
}

absl::Status Spool::Rotate() {
  const int old = fd_;
  if (absl::Status s = OpenSegmentForAppend(next_seq_, /*create=*/true); !s.ok()) {
    fd_ = old;
    return s;
  }
  retired_fds_.push_back(old);  // fsynced and closed by the syncer
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Spool::Append(absl::string_view topic, absl::string_view payload, absl::Time taken_at,
                                       uint16_t packet_id, bool dup, uint64_t session) {
  if (kBodyFixed + std::min<size_t>(topic.size(), 0xffff) + payload.size() > kMaxBody) {
    // Larger than a record may be (the reader would take it for a corrupt length). Such a
    // message is refused by the core anyway; it stays in memory only.
    m_.append_errors->Inc();
    return absl::InvalidArgumentError(absl::StrCat("message of ", payload.size(), " bytes is too large for the spool"));
  }
  common::MutexLock lock(&mu_);
  Segment& seg = segments_.rbegin()->second;
  if (seg.size >= options_.segment_bytes) {
    if (absl::Status s = Rotate(); !s.ok()) {
      m_.append_errors->Inc();
      return s;
    }
  }
  Segment& cur = segments_.rbegin()->second;
  const uint64_t seq = next_seq_;
  const size_t topic_len = std::min<size_t>(topic.size(), 0xffff);
  record_.clear();
  PutU32(record_, 0);  // body length and CRC, filled in below
  PutU32(record_, 0);
  PutU64(record_, seq);
  PutU64(record_, static_cast<uint64_t>(absl::ToUnixMicros(taken_at)));
  PutU16(record_, packet_id);
  record_.push_back(dup ? 1 : 0);
  PutU64(record_, session);
  PutU16(record_, static_cast<uint16_t>(topic_len));
  record_.append(topic.data(), topic_len);
  record_.append(payload.data(), payload.size());
  const size_t body = record_.size() - kHeader;
  std::string head;
  PutU32(head, static_cast<uint32_t>(body) | kFlags);
  PutU32(head, Crc(record_.data() + kHeader, body));
  record_.replace(0, kHeader, head);

  size_t written = 0;
  while (written < record_.size()) {
    const ssize_t n = ::write(fd_, record_.data() + written, record_.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const absl::Status error = Errno("cannot append to", SegmentPath(cur.first_seq));
      // Leave no partial record behind: the next append must start on a record boundary.
      if (written > 0 && ::ftruncate(fd_, static_cast<off_t>(cur.size)) != 0) {
        common::Logger("ingest.spool")->error("cannot cut a partial record from {}: {}", SegmentPath(cur.first_seq),
                                              std::strerror(errno));
      }
      m_.append_errors->Inc();
      return error;
    }
    written += static_cast<size_t>(n);
  }
  cur.size += record_.size();
  bytes_.fetch_add(record_.size());
  ++next_seq_;
  // The first message of a window: after everything was synced, or the first after what the
  // fsync under way covers.
  if (appended_.load() == synced_.load() || seq == sync_target_ + 1) {
    oldest_unsynced_us_ = absl::ToUnixMicros(absl::Now());
  }
  appended_ = seq;
  m_.appended->Inc();
  return seq;
}

void Spool::AfterAppend() {
  if (options_.sync_interval == absl::ZeroDuration()) {
    SyncNow();
  } else {
    sync_cv_.NotifyOne();
  }
}

uint64_t Spool::unsynced() const {
  const uint64_t a = appended_.load();
  const uint64_t s = synced_.load();
  return a > s ? a - s : 0;
}

void Spool::SyncNow() {
  common::MutexLock sync_lock(&sync_mu_);
  int fd = -1;
  uint64_t target = 0;
  std::vector<int> retired;
  int64_t oldest = 0;
  {
    common::MutexLock lock(&mu_);
    fd = fd_;
    target = appended_.load();
    sync_target_ = target;
    oldest = oldest_unsynced_us_.load();
    retired.swap(retired_fds_);
  }
  if (target <= synced_.load() && retired.empty()) return;
  for (int old : retired) {
    ::fdatasync(old);
    ::close(old);
    m_.fsyncs->Inc();
  }
  if (fd >= 0) {
    ::fdatasync(fd);
    m_.fsyncs->Inc();
  }
  const int64_t now = absl::ToUnixMicros(absl::Now());
  if (target > synced_.load()) m_.sync_wait_ms->Observe(static_cast<double>(now - oldest) / 1000.0);
  synced_ = target;
}

void Spool::SyncLoop() {
  while (true) {
    {
      common::MutexLock lock(&sync_mu_);
      sync_cv_.WaitFor(&sync_mu_, absl::Seconds(1), [this] {
        sync_mu_.AssertHeld();
        return sync_stopping_ || appended_.load() > synced_.load();
      });
      if (sync_stopping_) return;
    }
    // Group commit: let messages gather for the rest of the interval, then one fsync for all.
    const absl::Duration waited = absl::Now() - absl::FromUnixMicros(oldest_unsynced_us_.load());
    if (waited < options_.sync_interval) absl::SleepFor(options_.sync_interval - waited);
    SyncNow();
  }
}

void Spool::Close() {
  {
    common::MutexLock lock(&sync_mu_);
    if (sync_stopping_) return;
    sync_stopping_ = true;
  }
  sync_cv_.NotifyAll();
  if (syncer_.joinable()) syncer_.join();
  SyncNow();
  common::MutexLock lock(&mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

uint64_t Spool::next_seq() const {
  common::MutexLock lock(&mu_);
  return next_seq_;
}

uint64_t Spool::first_seq() const {
  common::MutexLock lock(&mu_);
  return segments_.begin()->first;
}

void Spool::CloseCursor() {
  if (cursor_.fd >= 0) ::close(cursor_.fd);
  cursor_ = Cursor{};
}

absl::StatusOr<uint64_t> Spool::Read(uint64_t from, size_t max, std::vector<SpooledMessage>* out) {
  auto log = common::Logger("ingest.spool");
  // Which segment holds `from`, how far it is readable, and what follows it.
  uint64_t segment = 0;
  size_t readable = 0;
  uint64_t following = 0;  // first seq of the next segment; 0: this is the newest
  {
    common::MutexLock lock(&mu_);
    if (from >= next_seq_) return from;
    auto it = segments_.upper_bound(from);
    if (it == segments_.begin()) {
      // Deleted already (committed): start at the oldest still here.
      from = it->first;
    } else {
      --it;
    }
    segment = it->first;
    readable = it->second.size;
    auto next = std::next(it);
    following = next == segments_.end() ? 0 : next->first;
  }
  if (cursor_.segment != segment || cursor_.next_seq != from) {
    CloseCursor();
    const std::string path = SegmentPath(segment);
    cursor_.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (cursor_.fd < 0) return Errno("cannot open", path);
    cursor_.segment = segment;
    cursor_.offset = 0;
    cursor_.next_seq = segment;  // advanced below until it reaches `from`
  }
  // A stretch that cannot be parsed: nothing after it in this segment can be trusted.
  auto skip_corrupt = [&](size_t at) -> uint64_t {
    m_.corrupt->Inc();
    const uint64_t resume = following != 0 ? following : next_seq();
    log->error("segment {}: corrupt or torn record at offset {}; skipping messages {}..{}", SegmentPath(segment),
               at, cursor_.next_seq, resume - 1);
    CloseCursor();
    return resume;
  };
  const size_t before = out->size();
  SpooledMessage m;
  while (out->size() - before < max && cursor_.offset < readable) {
    size_t want = std::min(kReadChunk, readable - cursor_.offset);
    read_buffer_.resize(want);
    ssize_t n = ::pread(cursor_.fd, read_buffer_.data(), want, static_cast<off_t>(cursor_.offset));
    if (n <= 0) return Errno("cannot read", SegmentPath(segment));
    if (static_cast<size_t>(n) >= kHeader) {
      // A record larger than one chunk: read it whole.
      const size_t need = kHeader + (GetLE(read_buffer_.data(), 4) & ~kFlags);
      if (need > static_cast<size_t>(n) && need <= readable - cursor_.offset) {
        read_buffer_.resize(need);
        n = ::pread(cursor_.fd, read_buffer_.data(), need, static_cast<off_t>(cursor_.offset));
        if (n <= 0) return Errno("cannot read", SegmentPath(segment));
      }
    }
    size_t used = 0;
    while (out->size() - before < max) {
      std::optional<size_t> size = ParseRecord(read_buffer_.data() + used, static_cast<size_t>(n) - used, &m);
      if (!size || (*size > 0 && (m.seq != cursor_.next_seq || (following != 0 && m.seq >= following)))) {
        return skip_corrupt(cursor_.offset + used);
      }
      if (*size == 0) break;
      used += *size;
      cursor_.next_seq = m.seq + 1;
      if (m.seq >= from) out->push_back(std::move(m));
    }
    // Bytes up to `readable` that do not hold a whole record: torn by a crash.
    if (used == 0) return skip_corrupt(cursor_.offset);
    cursor_.offset += used;
  }
  if (cursor_.offset >= readable && following != 0) {
    // This segment is done: the next call starts in the next one.
    CloseCursor();
    return following;
  }
  return cursor_.next_seq > from ? cursor_.next_seq : from;
}

void Spool::Committed(uint64_t seq) {
  std::vector<uint64_t> doomed;
  {
    common::MutexLock lock(&mu_);
    // The newest two stay: the last messages taken and their packet ids (see spool.h).
    while (segments_.size() > 2) {
      auto second = std::next(segments_.begin());
      if (second->first > seq + 1) break;  // the oldest segment still holds seq+1 or later
      doomed.push_back(segments_.begin()->first);
      bytes_.fetch_sub(segments_.begin()->second.size);
      segments_.erase(segments_.begin());
    }
    // The older of the two kept, once PostgreSQL has all of it, is history, not backlog.
    const bool history = segments_.size() == 2 && segments_.rbegin()->first <= seq + 1;
    history_bytes_ = history ? segments_.begin()->second.size : 0;
  }
  for (uint64_t first : doomed) {
    if (::unlink(SegmentPath(first).c_str()) != 0) {
      common::Logger("ingest.spool")->warn("cannot delete {}: {}", SegmentPath(first), std::strerror(errno));
    }
    m_.segments_deleted->Inc();
  }
}

}  // namespace devbridge::ingest
