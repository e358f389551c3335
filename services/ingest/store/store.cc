#include "services/ingest/store/store.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <random>
#include <utility>
#include <stdexcept>
#include <pqxx/pqxx>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "common/log.h"
#include "modbus/payload.h"
#include "nlohmann/json.hpp"

namespace devbridge::ingest {
namespace {

constexpr int64_t kMigrationLock = 0x64657662;  // "devb"
constexpr size_t kRowsPerStatement = 1000;

// A time and bytes as PostgreSQL's text input reads them.
std::string TimeText(absl::Time t) { return absl::FormatTime("%Y-%m-%d %H:%M:%E6S+00", t, absl::UTCTimeZone()); }
std::string ByteaText(const std::string& bytes) {
  return absl::StrCat("\\x", modbus::ToHex({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}));
}

// The same as SQL literals.
std::string TimeLiteral(absl::Time t) { return absl::StrCat("'", TimeText(t), "'::timestamptz"); }
std::string ByteaLiteral(const std::string& bytes) { return absl::StrCat("'", ByteaText(bytes), "'::bytea"); }

// The database a DSN names, or "" when it does not say.
std::string DatabaseOf(const std::string& dsn) {
  if (absl::StartsWith(dsn, "postgresql://") || absl::StartsWith(dsn, "postgres://")) {
    const size_t host = dsn.find("://") + 3;
    const size_t slash = dsn.find('/', host);
    if (slash == std::string::npos) return "";
    return dsn.substr(slash + 1, dsn.find('?', slash) - slash - 1);
  }
  const size_t at = dsn.find("dbname=");
  if (at == std::string::npos) return "";
  const size_t end = dsn.find(' ', at);
  return dsn.substr(at + 7, end == std::string::npos ? std::string::npos : end - at - 7);
}

// `dsn` with libpq's connect_timeout set, unless it sets one itself: a server that accepts
// the TCP connection and then says nothing must not hang the writer.
std::string WithConnectTimeout(const std::string& dsn, absl::Duration timeout) {
  if (absl::StrContains(dsn, "connect_timeout")) return dsn;
  const int64_t seconds = std::max<int64_t>(2, absl::ToInt64Seconds(timeout));
  if (absl::StartsWith(dsn, "postgresql://") || absl::StartsWith(dsn, "postgres://")) {
    return absl::StrCat(dsn, absl::StrContains(dsn, "?") ? "&" : "?", "connect_timeout=", seconds);
  }
  return absl::StrCat(dsn, " connect_timeout=", seconds);
}

std::unique_ptr<pqxx::connection> Connect(const std::string& dsn) {
  try {
    return std::make_unique<pqxx::connection>(dsn);
  } catch (const pqxx::broken_connection& e) {
    const std::string db = DatabaseOf(dsn);
    if (db.empty() || !absl::StrContains(e.what(), "does not exist")) throw;
    // First start against a fresh server: create the database, then connect again.
    pqxx::connection admin(DsnWithDatabase(dsn, "postgres"));
    pqxx::nontransaction tx(admin);
    try {
      tx.exec0("CREATE DATABASE " + tx.quote_name(db));
      common::Logger("ingest.store")->info("created database {}", db);
    } catch (const pqxx::sql_error&) {
      // Another replica created it first.
    }
  }
  return std::make_unique<pqxx::connection>(dsn);
}

void Migrate(pqxx::connection& conn) {
  {
    pqxx::nontransaction tx(conn);
    tx.exec(absl::StrCat("SELECT pg_advisory_lock(", kMigrationLock, ")"));
  }
  try {
    int applied = 0;
    {
      pqxx::work tx(conn);
      tx.exec0(
          "CREATE TABLE IF NOT EXISTS devbridge_migrations ("
          "version integer primary key, applied_at timestamptz not null default now())");
      applied = tx.exec1("SELECT coalesce(max(version), 0) FROM devbridge_migrations")[0].as<int>();
      tx.commit();
    }
    const auto& steps = Migrations();
    for (size_t v = applied + 1; v <= steps.size(); ++v) {
      pqxx::work tx(conn);
      tx.exec0(steps[v - 1]);
      tx.exec0(absl::StrCat("INSERT INTO devbridge_migrations (version) VALUES (", v, ")"));
      tx.commit();
      common::Logger("ingest.store")->info("applied migration {}", v);
    }
  } catch (...) {
    pqxx::nontransaction tx(conn);
    tx.exec(absl::StrCat("SELECT pg_advisory_unlock(", kMigrationLock, ")"));
    throw;
  }
  pqxx::nontransaction tx(conn);
  tx.exec(absl::StrCat("SELECT pg_advisory_unlock(", kMigrationLock, ")"));
}

// The spool position `batch` completes (0: none), written in the same transaction as its
// rows: after a crash, what the spool replays is exactly what PostgreSQL does not have.
uint64_t CoveredBy(absl::Span<const QueuedRecord> batch) {
  uint64_t covers = 0;
  for (const QueuedRecord& q : batch) covers = std::max(covers, q.covers);
  return covers;
}

// A writer's fencing token was overtaken: another owner writes its spool's rows now.
class Fenced : public std::runtime_error {
 public:
  Fenced(const std::string& spool_id, uint64_t fence)
      : std::runtime_error(absl::StrCat(spool_id, ": a newer owner (fencing token above ", fence,
                                        ") writes its checkpoint now")) {}
};

// How the writer tells, after losing the connection during a COMMIT, whether that
// transaction took effect: with a spool, every transaction also stores its own token in the
// spool's checkpoint row, which only this writer updates. The batch is in if the row holds
// the token after a reconnect. (Without a spool there is no row to ask, and such a batch may
// be written twice.)
struct WriteContext {
  const QueuedRecord* batch_begin = nullptr;
  std::string spool_id;
  uint64_t fence = 0;  // StoreOptions::fence
  uint64_t next_token = 0;
  uint64_t pending_token = 0;  // the transaction under way; 0: none
  size_t pending_end = 0;      // index in the batch just past that transaction's records
};

void WriteCheckpoint(pqxx::work& tx, WriteContext& ctx, absl::Span<const QueuedRecord> records) {
  ctx.pending_token = 0;
  if (ctx.spool_id.empty()) return;
  ctx.pending_token = ++ctx.next_token;
  ctx.pending_end = static_cast<size_t>(records.data() + records.size() - ctx.batch_begin);
  // With a fence, the row's lock also orders this transaction against a newer owner's start:
  // it commits before that start reads the checkpoint, or finds the row taken and rolls back.
  pqxx::result moved = tx.exec(absl::StrCat(
      "INSERT INTO spool_checkpoints (spool_id, seq, tx, fence, updated_at) VALUES (", tx.quote(ctx.spool_id), ",",
      CoveredBy(records), ",", ctx.pending_token, ",", ctx.fence,
      ", now()) ON CONFLICT (spool_id) DO UPDATE SET"
      " seq = GREATEST(spool_checkpoints.seq, EXCLUDED.seq), tx = EXCLUDED.tx, updated_at = now()",
      ctx.fence != 0 ? " WHERE spool_checkpoints.fence = EXCLUDED.fence" : ""));
  if (moved.affected_rows() == 0) {
    ctx.pending_token = 0;  // certain: it will not commit
    throw Fenced(ctx.spool_id, ctx.fence);
  }
}

// Readings go in with COPY: PostgreSQL then neither parses nor plans a statement per batch,
// and a row's memory is freed as soon as it is in (a multi-row INSERT of 1,000 readings held
// the parse tree of all of them; it cost the server 2–3× the CPU per frame: ~89 µs against
// 27–40 µs, ingest_bench). Fields are text in COPY's text format; libpqxx escapes them, and
// a null pointer is NULL.
void WriteReadings(pqxx::work& tx, const std::vector<const ReadingRecord*>& readings) {
  static const std::vector<std::string> kColumns = {"device_id", "received_at", "command_id", "unit",
                                                    "function",  "address",     "raw",        "\"values\""};
  pqxx::stream_to copy(tx, "readings", kColumns);
  std::string received_at, unit, function, address, raw;
  for (const ReadingRecord* r : readings) {
    received_at = TimeText(r->received_at);
    unit = absl::StrCat(r->unit);
    function = absl::StrCat(r->function);
    if (r->address) address = absl::StrCat(*r->address);
    raw = ByteaText(r->raw);
    copy << std::make_tuple(r->device_id.c_str(), received_at.c_str(),
                            r->command_id.empty() ? nullptr : r->command_id.c_str(), unit.c_str(),
                            function.c_str(), r->address ? address.c_str() : nullptr, raw.c_str(),
                            r->values_json.c_str());
  }
  copy.complete();
}

// Writes one batch in one transaction. Device rows and command rows are coalesced to their
// latest state first: a command's queued → sent → succeeded in one batch is one upsert.
void WriteBatch(pqxx::connection& conn, absl::Span<const QueuedRecord> batch, WriteContext& ctx) {
  std::map<std::string, DeviceRecord> devices;
  std::vector<const ReadingRecord*> readings;
  std::vector<CommandRecord> commands;
  absl::flat_hash_map<std::string, size_t> command_index;
  for (const QueuedRecord& queued : batch) {
    const StoreRecord& record = queued.record;
    if (const auto* d = std::get_if<DeviceRecord>(&record)) {
      auto [it, inserted] = devices.try_emplace(d->device_id, *d);
      if (!inserted) {
        std::optional<std::string> meta = d->meta_json ? d->meta_json : it->second.meta_json;
        const absl::Time first = std::min(it->second.first_seen, d->first_seen);
        it->second = *d;
        it->second.meta_json = std::move(meta);
        it->second.first_seen = first;
      }
    } else if (const auto* r = std::get_if<ReadingRecord>(&record)) {
      readings.push_back(r);
    } else if (const auto* c = std::get_if<CommandRecord>(&record)) {
      auto [it, inserted] = command_index.try_emplace(c->command_id, commands.size());
      if (inserted) {
        commands.push_back(*c);
      } else {
        CommandRecord& kept = commands[it->second];
        kept.status = c->status;
        kept.code = c->code;
        kept.completed_at = c->completed_at;
        kept.response = c->response;
        kept.error = c->error;
      }
    }
  }

  pqxx::work tx(conn);
  if (!devices.empty()) {
    std::string sql = "INSERT INTO devices (device_id, first_seen, last_seen, online, meta) VALUES ";
    bool first = true;
    for (const auto& [id, d] : devices) {
      absl::StrAppend(&sql, first ? "" : ",", "(", tx.quote(id), ",", TimeLiteral(d.first_seen), ",",
                      TimeLiteral(d.last_seen), ",", d.online ? "true" : "false", ",",
                      d.meta_json ? tx.quote(*d.meta_json) + "::jsonb" : "NULL", ")");
      first = false;
    }
    sql +=
        " ON CONFLICT (device_id) DO UPDATE SET"
        " first_seen = LEAST(devices.first_seen, EXCLUDED.first_seen),"
        " last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen),"
        " online = EXCLUDED.online,"
        " meta = COALESCE(EXCLUDED.meta, devices.meta)";
    tx.exec0(sql);
  }
  if (!readings.empty()) WriteReadings(tx, readings);
  for (size_t start = 0; start < commands.size(); start += kRowsPerStatement) {
    std::string sql =
        "INSERT INTO commands (command_id, device_id, requested_at, completed_at, status, code, "
        "request, response, error) VALUES ";
    const size_t end = std::min(commands.size(), start + kRowsPerStatement);
    for (size_t i = start; i < end; ++i) {
      const CommandRecord& c = commands[i];
      absl::StrAppend(&sql, i == start ? "" : ",", "(", tx.quote(c.command_id), "::uuid,",
                      tx.quote(c.device_id), ",", TimeLiteral(c.requested_at), ",",
                      c.completed_at ? TimeLiteral(*c.completed_at) : "NULL", ",", tx.quote(c.status),
                      ",", c.code, ",", ByteaLiteral(c.request), ",",
                      c.response ? ByteaLiteral(*c.response) : "NULL", ",",
                      c.error.empty() ? "NULL" : tx.quote(c.error), ")");
    }
    sql +=
        " ON CONFLICT (command_id) DO UPDATE SET completed_at = EXCLUDED.completed_at,"
        " status = EXCLUDED.status, code = EXCLUDED.code,"
        " response = COALESCE(EXCLUDED.response, commands.response),"
        " error = EXCLUDED.error"
        // A command id reused for another device (refused by Dispatch, but only as far as
        // ingest remembers) never mixes two devices' frames in one row.
        " WHERE commands.device_id = EXCLUDED.device_id";
    tx.exec0(sql);
  }
  WriteCheckpoint(tx, ctx, batch);
  tx.commit();
  ctx.pending_token = 0;
}

// True for errors about the data of a statement, which no retry can cure: data exceptions
// (class 22: a NUL in jsonb, a value out of range), integrity violations (23) and program
// limits (54). Anything else (a lost connection, a server shutting down) is worth a retry.
bool IsDataError(const pqxx::sql_error& e) {
  const std::string& state = e.sqlstate();
  return state.size() == 5 && (state.compare(0, 2, "22") == 0 || state.compare(0, 2, "23") == 0 ||
                               state.compare(0, 2, "54") == 0);
}

// What table `rejected` keeps of a record: its kind, device and the bytes it carried.
void WriteRejected(pqxx::connection& conn, const QueuedRecord& queued, const std::string& error,
                   WriteContext& ctx) {
  const StoreRecord& record = queued.record;
  std::string kind, device_id, payload;
  if (const auto* d = std::get_if<DeviceRecord>(&record)) {
    kind = "device";
    device_id = d->device_id;
    payload = d->meta_json.value_or("");
  } else if (const auto* r = std::get_if<ReadingRecord>(&record)) {
    kind = "reading";
    device_id = r->device_id;
    payload = r->raw;
  } else if (const auto* c = std::get_if<CommandRecord>(&record)) {
    kind = "command";
    device_id = c->device_id;
    payload = c->request;
  }
  pqxx::work tx(conn);
  // The error text comes from PostgreSQL; keep it printable so it can always be stored.
  std::string text = error;
  for (char& ch : text) {
    if (ch == '\0') ch = ' ';
  }
  tx.exec0(absl::StrCat("INSERT INTO rejected (at, kind, device_id, payload, error) VALUES (now(), ", tx.quote(kind),
                        ",", tx.quote(device_id), ",", ByteaLiteral(payload), ",", tx.quote(text), ")"));
  WriteCheckpoint(tx, ctx, absl::MakeConstSpan(&queued, 1));
  tx.commit();
  ctx.pending_token = 0;
}

// Writes `records` so that a record PostgreSQL refuses for its data cannot hold up the
// others: on a data error the batch is halved until the refused record stands alone, and
// that one goes to table `rejected`. Records committed (or rejected) so far are counted in
// `*done`, always a prefix of `records`, so a caller that retries after a connection error
// resumes after them and nothing is stored twice. Other errors are thrown.
void WriteIsolating(pqxx::connection& conn, absl::Span<const QueuedRecord> records, WriteContext& ctx,
                    size_t* done, std::vector<std::pair<const StoreRecord*, std::string>>* rejected) {
  std::string error;
  try {
    WriteBatch(conn, records, ctx);
    *done += records.size();
    return;
  } catch (const pqxx::sql_error& e) {
    if (!IsDataError(e)) throw;
    error = e.what();
  } catch (const pqxx::argument_error& e) {
    // libpqxx refusing a value while the statement is built: about the data too, and just
    // as sure to fail again.
    error = e.what();
  } catch (const pqxx::conversion_error& e) {
    error = e.what();
  }
  // Anything else (pqxx::usage_error after a connection broke mid-transaction, say) is not
  // about the data: it propagates, and the batch is retried whole.
  if (records.size() == 1) {
    try {
      WriteRejected(conn, records[0], error, ctx);
    } catch (const pqxx::sql_error& e) {
      // Not even its error row can be stored: say so in the log (the caller does) rather than
      // retry a record that can never be written.
      if (!IsDataError(e)) throw;
      error = absl::StrCat(error, "; and not kept in table rejected either: ", e.what());
    }
    rejected->emplace_back(&records[0].record, error);
    ++*done;
    return;
  }
  // Halve at the boundary of a message's records nearest the middle, so that no transaction
  // holds part of a message (only a single message's records are ever split).
  size_t half = records.size() / 2;
  for (size_t d = 0; d < records.size() / 2; ++d) {
    if (half + d < records.size() && records[half + d - 1].ends_unit) {
      half += d;
      break;
    }
    if (half - d > 0 && records[half - d - 1].ends_unit) {
      half -= d;
      break;
    }
  }
  WriteIsolating(conn, records.subspan(0, half), ctx, done, rejected);
  WriteIsolating(conn, records.subspan(half), ctx, done, rejected);
}

std::vector<v1::CommandResult> QueryReadings(pqxx::connection& conn, const std::string& device_id,
                                             absl::Time since, size_t limit) {
  pqxx::read_transaction tx(conn);
  pqxx::result rows = tx.exec_params(
      "SELECT floor(extract(epoch from received_at) * 1000)::bigint, coalesce(command_id::text, ''),"
      " unit, function, address, raw, \"values\"::text FROM readings"
      " WHERE device_id = $1 AND received_at >= to_timestamp($2::double precision / 1000)"
      " ORDER BY received_at DESC, id DESC LIMIT $3",
      device_id, absl::ToUnixMillis(since), static_cast<int64_t>(limit));
  std::vector<v1::CommandResult> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const pqxx::row& row = rows[i];
    v1::CommandResult& r = out[rows.size() - 1 - i];  // oldest first
    r.set_device_id(device_id);
    r.set_received_at_unix_ms(row[0].as<int64_t>());
    r.set_command_id(row[1].as<std::string>());
    r.set_solicited(!r.command_id().empty());
    r.set_unit(row[2].as<uint32_t>(0));
    r.set_function(row[3].as<uint32_t>(0));
    r.set_address(row[4].is_null() ? 0 : row[4].as<uint32_t>());
    r.set_response(pqxx::binarystring(row[5]).str());
    r.set_code(200);
    nlohmann::json values = nlohmann::json::parse(row[6].as<std::string>("{}"), nullptr, false);
    if (values.is_object()) {
      for (const auto& [name, v] : values.items()) {
        v1::DecodedValue* dv = r.add_values();
        dv->set_name(name);
        dv->set_json_value(v.value("value", nlohmann::json()).dump());
        dv->set_unit(v.value("unit", ""));
        for (const auto& w : v.value("raw", nlohmann::json::array())) dv->add_raw(w.get<uint32_t>());
      }
    }
  }
  return out;
}

}  // namespace

const std::vector<std::string>& Migrations() {
  static const std::vector<std::string> kMigrations = {
      "CREATE TABLE IF NOT EXISTS devices ("
      " device_id text primary key, first_seen timestamptz, last_seen timestamptz,"
      " online boolean, meta jsonb);"
      "CREATE TABLE IF NOT EXISTS readings ("
      " id bigserial primary key, device_id text, received_at timestamptz, command_id uuid null,"
      " unit smallint, function smallint, address integer null, raw bytea, \"values\" jsonb);"
      "CREATE INDEX IF NOT EXISTS readings_device_received ON readings (device_id, received_at desc);"
      "CREATE TABLE IF NOT EXISTS commands ("
      " command_id uuid primary key, device_id text, requested_at timestamptz,"
      " completed_at timestamptz null, status text"
      " CHECK (status IN ('queued', 'sent', 'succeeded', 'failed', 'timeout')),"
      " code integer, request bytea, response bytea null, error text null);"
      "CREATE INDEX IF NOT EXISTS commands_device_requested ON commands (device_id, requested_at desc);",
      // 2: records PostgreSQL refused for their data (CONTRACT §10.3).
      "CREATE TABLE IF NOT EXISTS rejected ("
      " id bigserial primary key, at timestamptz, kind text, device_id text, payload bytea, error text);",
      // 3: how far each ingest spool is in PostgreSQL (CONTRACT §10.3), moved in the same
      // transaction as the rows, so a replay after a crash stores nothing twice.
      "CREATE TABLE IF NOT EXISTS spool_checkpoints ("
      " spool_id text primary key, seq bigint not null, tx bigint, updated_at timestamptz);",
      // 4: the fencing token of the spool's writer (a cluster partition's owner; 0: none):
      // a writer with an older one commits nothing.
      "ALTER TABLE spool_checkpoints ADD COLUMN IF NOT EXISTS fence bigint NOT NULL DEFAULT 0;",
  };
  return kMigrations;
}

std::string DsnWithDatabase(const std::string& dsn, const std::string& dbname) {
  if (absl::StartsWith(dsn, "postgresql://") || absl::StartsWith(dsn, "postgres://")) {
    const size_t host = dsn.find("://") + 3;
    const size_t slash = dsn.find('/', host);
    const size_t query = dsn.find('?', host);
    if (slash == std::string::npos || (query != std::string::npos && query < slash)) {
      const size_t cut = query == std::string::npos ? dsn.size() : query;
      return absl::StrCat(dsn.substr(0, cut), "/", dbname, dsn.substr(cut));
    }
    const size_t end = query == std::string::npos ? dsn.size() : query;
    return absl::StrCat(dsn.substr(0, slash + 1), dbname, dsn.substr(end));
  }
  return absl::StrCat(dsn, " dbname=", dbname);  // the last dbname= wins
}

std::unique_ptr<Store> Store::Start(StoreOptions options, common::MetricsRegistry* metrics,
                                    std::function<void(uint64_t)> on_ready,
                                    std::function<void(uint64_t)> on_committed) {
  std::unique_ptr<Store> store(new Store(std::move(options), metrics));
  store->on_ready_ = std::move(on_ready);
  store->on_committed_ = std::move(on_committed);
  store->watchdog_ = std::thread([s = store.get()] { s->WatchdogLoop(); });
  store->writer_ = std::thread([s = store.get()] { s->WriterLoop(); });
  store->reader_ = std::thread([s = store.get()] { s->ReaderLoop(); });
  return store;
}

Store::Store(StoreOptions options, common::MetricsRegistry* metrics) : options_(std::move(options)) {
  options_.dsn = WithConnectTimeout(options_.dsn, options_.statement_timeout);
  auto& r = *metrics;
  m_.batch_size = &r.AddHistogram("devbridge_ingest_db_batch_records", "Records per committed batch.",
                                  common::SizeBuckets());
  m_.batch_ms = &r.AddHistogram("devbridge_ingest_db_batch_ms", "Time to write one batch, ms.",
                                common::LatencyBucketsMs());
  m_.commit_latency_ms = &r.AddHistogram("devbridge_ingest_db_commit_latency_ms",
                                         "Frame taken to reading committed, ms.",
                                         common::LatencyBucketsMs());
  m_.rows = &r.AddCounter("devbridge_ingest_db_records_total", "Records committed.");
  m_.errors = &r.AddCounter("devbridge_ingest_db_errors_total", "Failed database operations.");
  m_.retries = &r.AddCounter("devbridge_ingest_db_retries_total", "Batches written again after an error.");
  m_.rejected = &r.AddCounter("devbridge_ingest_db_rejected_total",
                              "Records PostgreSQL refused for their data, kept in table rejected.");
  m_.abandoned = &r.AddCounter("devbridge_ingest_db_abandoned_total",
                               "Statements abandoned after statement_timeout (PostgreSQL unreachable?).");
  m_.fenced = &r.AddCounter("devbridge_ingest_db_fenced_records_total",
                            "Records not written because a newer owner of their partition writes it now "
                            "(it processes their messages again).");
  last_progress_ms_ = absl::ToUnixMillis(absl::Now());
  if (!options_.register_gauges) return;
  r.AddGaugeFn("devbridge_ingest_db_queue_bytes", "Bytes waiting for the writer.", {},
               [this] { return static_cast<double>(queued_bytes_.load()); });
  r.AddGaugeFn("devbridge_ingest_db_up", "1 when the database answers.", {},
               [this] { return healthy_.load() ? 1.0 : 0.0; });
}

Store::~Store() { Stop(absl::Seconds(5)); }

void Store::Push(StoreRecord record) {
  std::vector<StoreRecord> one;
  one.push_back(std::move(record));
  PushMessage(&one, 0);
}

void Store::PushMessage(std::vector<StoreRecord>* records, uint64_t seq) {
  size_t bytes = 0;
  for (const StoreRecord& r : *records) bytes += RecordBytes(r);
  bool wake = false;
  {
    common::MutexLock lock(&mu_);
    if (records->empty()) {
      // Nothing to write: the mark goes on the last queued unit (all before it is complete),
      // or, if the writer has everything, on the next record pushed.
      if (seq != 0 && !queue_.empty()) {
        queue_.back().covers = std::max(queue_.back().covers, seq);
      } else if (seq != 0) {
        pending_cover_ = std::max(pending_cover_, seq);
      }
      return;
    }
    const size_t before = queue_.size();
    for (size_t i = 0; i < records->size(); ++i) {
      QueuedRecord q{std::move((*records)[i]), 0, i + 1 == records->size()};
      if (i == 0) q.covers = std::exchange(pending_cover_, 0);
      queue_.push_back(std::move(q));
    }
    queue_.back().covers = std::max(queue_.back().covers, seq);
    pushed_ += records->size();
    if (queued_bytes_.fetch_add(bytes) + bytes > options_.max_queue_bytes) was_full_ = true;
    // The writer waits for the first record, or lingers for a quarter batch: wake it only
    // then, not on every record.
    const size_t quarter = options_.max_batch / 4;
    wake = before == 0 || (before < quarter && queue_.size() >= quarter);
  }
  records->clear();
  if (wake) cv_.NotifyOne();
}

size_t Store::queued_records() const {
  common::MutexLock lock(&mu_);
  return queue_.size();
}

bool Store::Flush(absl::Duration timeout) {
  common::MutexLock lock(&mu_);
  const uint64_t target = pushed_;
  return flushed_cv_.WaitFor(&mu_, timeout, [this, target] {
    mu_.AssertHeld();
    return committed_ >= target;
  });
}

bool Store::writes_failing(absl::Time now) const {
  return queued_bytes_.load() > 0 && now - absl::FromUnixMillis(last_progress_ms_.load()) > kWritesFailingAfter;
}

void Store::Stop(absl::Duration timeout) {
  if (!writer_.joinable()) return;
  // After the timeout the writer makes no new attempt; it reports what it could not write.
  Flush(timeout);
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  Abandon(kWriter, "stopping", /*forever=*/true);  // a statement hanging on the network would hold us up
  writer_.join();
  {
    common::MutexLock lock(&read_mu_);
    read_stopping_ = true;
  }
  read_cv_.NotifyAll();
  Abandon(kReader, "stopping", /*forever=*/true);
  reader_.join();
  {
    common::MutexLock lock(&guard_mu_);
    guard_stopping_ = true;
  }
  guard_cv_.NotifyAll();
  watchdog_.join();
}

void Store::Watch(Slot slot, int fd, const char* what) {
  common::MutexLock lock(&guard_mu_);
  watched_[slot] = Watched{fd, absl::Now(), what};
  if (closed_[slot] && fd >= 0) ::shutdown(fd, SHUT_RDWR);  // stopping: no new statement may hang us
}

void Store::Unwatch(Slot slot) {
  common::MutexLock lock(&guard_mu_);
  watched_[slot] = Watched{};
}

void Store::Abandon(Slot slot, const char* why, bool forever) {
  common::MutexLock lock(&guard_mu_);
  if (forever) closed_[slot] = true;
  Watched& w = watched_[slot];
  if (w.fd < 0) return;
  // shutdown(), not close(): the fd stays valid for libpq, whose next read or write fails.
  ::shutdown(w.fd, SHUT_RDWR);
  m_.abandoned->Inc();
  common::Logger("ingest.store")->warn("abandoned {} after {} ({}): connection to PostgreSQL shut down", w.what,
                                       absl::FormatDuration(absl::Trunc(absl::Now() - w.since, absl::Milliseconds(1))),
                                       why);
  w = Watched{};
}

void Store::WatchdogLoop() {
  common::MutexLock lock(&guard_mu_);
  while (!guard_stopping_) {
    guard_cv_.WaitFor(&guard_mu_, absl::Milliseconds(250), [this] {
      guard_mu_.AssertHeld();
      return guard_stopping_;
    });
    const absl::Time now = absl::Now();
    for (Slot slot : {kWriter, kReader}) {
      const Watched& w = watched_[slot];
      if (w.fd >= 0 && now - w.since > options_.statement_timeout) {
        guard_mu_.Unlock();
        Abandon(slot, absl::StrCat("no answer within statement_timeout ",
                                   absl::FormatDuration(options_.statement_timeout))
                          .c_str());
        guard_mu_.Lock();
      }
    }
  }
}

uint64_t Store::StartUp(void* c) {
  auto& conn = *static_cast<pqxx::connection*>(c);
  auto log = common::Logger("ingest.store");
  pqxx::work tx(conn);
  if (options_.started != absl::InfinitePast()) {
    std::string which = absl::StrCat("status IN ('queued', 'sent') AND requested_at < ", TimeLiteral(options_.started));
    if (options_.owns_device) {
      // The devices are picked here, not in SQL: the partition is a hash of the id.
      std::vector<std::string> ids;
      for (const auto& row : tx.exec("SELECT command_id, device_id FROM commands WHERE " + which)) {
        if (options_.owns_device(row[1].as<std::string>())) ids.push_back(tx.quote(row[0].as<std::string>()));
      }
      which = ids.empty() ? "false" : absl::StrCat(which, " AND command_id IN (", absl::StrJoin(ids, ","), ")");
    }
    pqxx::result failed = tx.exec(absl::StrCat(
        "UPDATE commands SET status = 'failed', code = 503, completed_at = now(),"
        " error = 'ingest stopped before the command completed' WHERE ", which));
    if (failed.affected_rows() > 0) {
      log->warn("{} command(s) left queued or sent by an earlier run marked failed (503)", failed.affected_rows());
    }
  }
  uint64_t checkpoint = 0;
  if (!options_.spool_id.empty() && options_.fence != 0) {
    // Marks the row as this owner's; waits for an older owner's transaction on it to end.
    pqxx::result row = tx.exec(absl::StrCat(
        "INSERT INTO spool_checkpoints (spool_id, seq, fence, updated_at) VALUES (", tx.quote(options_.spool_id),
        ", 0, ", options_.fence, ", now()) ON CONFLICT (spool_id) DO UPDATE SET fence = EXCLUDED.fence,"
        " updated_at = now() WHERE spool_checkpoints.fence <= EXCLUDED.fence RETURNING seq"));
    if (row.empty()) throw Fenced(options_.spool_id, options_.fence);
    checkpoint = row[0][0].as<uint64_t>();
  } else if (!options_.spool_id.empty()) {
    pqxx::result row =
        tx.exec(absl::StrCat("SELECT seq FROM spool_checkpoints WHERE spool_id = ", tx.quote(options_.spool_id)));
    if (!row.empty()) checkpoint = row[0][0].as<uint64_t>();
  }
  tx.commit();
  return checkpoint;
}

void Store::WriterLoop() {
  auto log = common::Logger("ingest.store");
  std::unique_ptr<pqxx::connection> conn;
  absl::Duration backoff = options_.min_backoff;
  int failures = 0;
  std::vector<QueuedRecord> batch;
  bool started_up = false;
  WriteContext ctx;
  ctx.spool_id = options_.spool_id;
  ctx.fence = options_.fence;
  ctx.next_token = (uint64_t{std::random_device{}()} << 20) ^ static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
  // A transaction whose COMMIT lost its answer: its token, and how many records of the batch
  // it held. Resolved after the next connect by asking the checkpoint row.
  uint64_t uncertain_token = 0;
  size_t uncertain_records = 0;

  // Connects, migrates and (once) does the start-up work if needed; false (after logging) if
  // the database is away.
  auto ensure = [&]() -> bool {
    if (fenced_) return false;
    if (conn && conn->is_open() && started_up) return true;
    try {
      if (!conn || !conn->is_open()) conn = Connect(options_.dsn);
      Watch(kWriter, conn->sock(), "migrations and start-up");
      Migrate(*conn);
      if (!started_up) {
        const uint64_t checkpoint = StartUp(conn.get());
        started_up = true;
        Unwatch(kWriter);
        if (on_ready_) on_ready_(checkpoint);
      } else {
        Unwatch(kWriter);
      }
      return true;
    } catch (const Fenced& e) {
      Unwatch(kWriter);
      fenced_ = true;
      log->warn("{}: not writing (fencing token {})", e.what(), options_.fence);
      return false;
    } catch (const std::exception& e) {
      Unwatch(kWriter);
      conn.reset();
      healthy_ = false;
      m_.errors->Inc();
      if (failures++ % 20 == 0) log->warn("database unavailable ({}): {}", options_.dsn, e.what());
      return false;
    }
  };

  if (ensure()) healthy_ = true;  // connect and migrate now, not at the first write
  mu_.Lock();
  while (true) {
    if (batch.empty()) {
      const bool woke = cv_.WaitFor(&mu_, absl::Seconds(2), [this] {
        mu_.AssertHeld();
        return stopping_ || !queue_.empty();
      });
      if (stopping_ && queue_.empty()) break;
      if (queue_.empty()) last_progress_ms_ = absl::ToUnixMillis(absl::Now());  // nothing waits
      if (!woke) {
        // Idle: check the database so /healthz stays true to it.
        mu_.Unlock();
        if (ensure()) {
          try {
            Watch(kWriter, conn->sock(), "a health check");
            pqxx::nontransaction tx(*conn);
            tx.exec("SELECT 1");
            Unwatch(kWriter);
            healthy_ = true;
          } catch (const std::exception&) {
            Unwatch(kWriter);  // before the socket is closed: the watchdog must not touch a reused fd
            conn.reset();
            healthy_ = false;
          }
        }
        mu_.Lock();
        continue;
      }
      // Linger briefly for a fuller batch: one commit of many rows costs the database far
      // less than many commits of a few.
      if (queue_.size() < options_.max_batch / 4) {
        cv_.WaitFor(&mu_, options_.linger, [this] {
          mu_.AssertHeld();
          return stopping_ || queue_.size() >= options_.max_batch / 4;
        });
      }
      const size_t n = std::min(queue_.size(), options_.max_batch);
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      // Never part of one message's records: a replay would write the rest again.
      while (!batch.back().ends_unit && !queue_.empty()) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (stopping_) {
      // Stop() already waited its flush timeout: give up rather than try again.
      log->error("stopping with {} record(s) not written: the database did not take them in time{}",
                 batch.size() + queue_.size(),
                 options_.spool_id.empty() ? "" : "; the spool keeps their messages for the next start");
      break;
    }
    mu_.Unlock();
    if (fenced_) {
      // The newer owner processes their messages again, from the checkpoint it read.
      Discarded(batch);
      mu_.Lock();
      continue;
    }
    const absl::Time start = absl::Now();
    bool ok = false;
    size_t done = 0;  // records of `batch` committed or rejected, a prefix
    std::vector<std::pair<const StoreRecord*, std::string>> rejected;
    if (uncertain_token != 0 && ensure()) {
      try {
        Watch(kWriter, conn->sock(), "a check of the last commit");
        pqxx::read_transaction tx(*conn);
        pqxx::result row = tx.exec("SELECT tx FROM spool_checkpoints WHERE spool_id = " + tx.quote(ctx.spool_id));
        Unwatch(kWriter);
        if (!row.empty() && !row[0][0].is_null() && row[0][0].as<uint64_t>() == uncertain_token) {
          log->info("the transaction whose COMMIT lost its answer did commit: its {} record(s) are not written again",
                    uncertain_records);
          Committed(batch, uncertain_records, absl::Now());
        }
        uncertain_token = 0;
      } catch (const std::exception& e) {
        Unwatch(kWriter);
        conn.reset();
      }
    }
    if (batch.empty()) {
      mu_.Lock();
      continue;
    }
    if (uncertain_token == 0 && ensure()) {
      ctx.batch_begin = batch.data();
      ctx.pending_token = 0;
      try {
        Watch(kWriter, conn->sock(), "a batch");
        WriteIsolating(*conn, batch, ctx, &done, &rejected);
        Unwatch(kWriter);
        ok = true;
      } catch (const Fenced& e) {
        Unwatch(kWriter);
        fenced_ = true;
        log->warn("{}: {} record(s) from here on are left to it (fencing token {})", e.what(), batch.size() - done,
                  options_.fence);
      } catch (const pqxx::broken_connection& e) {
        Unwatch(kWriter);  // before the socket is closed: the watchdog must not touch a reused fd
        conn.reset();
        m_.errors->Inc();
        if (failures++ % 20 == 0) log->warn("database connection lost: {}; retrying", e.what());
      } catch (const std::exception& e) {
        // Not a connection problem: the connection may be fine, the statement is not.
        Unwatch(kWriter);
        conn.reset();
        m_.errors->Inc();
        if (failures++ % 20 == 0) log->error("batch of {} records failed: {}; retrying", batch.size(), e.what());
      }
    }
    for (const auto& [record, error] : rejected) {
      m_.rejected->Inc();
      if (m_.rejected->Value() <= 20 || m_.rejected->Value() % 1000 == 0) {
        log->error("record of device {} refused by PostgreSQL, kept in table rejected ({} so far): {}",
                   std::visit([](const auto& r) { return r.device_id; }, *record), m_.rejected->Value(), error);
      }
    }
    if (!ok && ctx.pending_token != 0) {
      // Lost during a transaction that had sent its last statement: it may have committed.
      uncertain_token = ctx.pending_token;
      uncertain_records = ctx.pending_end - done;
      ctx.pending_token = 0;
    }
    if (!ok && done > 0) {
      // Part of the batch is in: account for it now, and retry only the rest.
      Committed(batch, done, absl::Now());
    }
    if (fenced_) {
      Discarded(batch);
      mu_.Lock();
      continue;
    }
    if (ok) {
      const absl::Time now = absl::Now();
      if (failures > 0) log->info("database writes resumed after {} failed attempts", failures);
      failures = 0;
      backoff = options_.min_backoff;
      healthy_ = true;
      m_.batch_size->Observe(static_cast<double>(batch.size()));
      m_.batch_ms->Observe(absl::ToDoubleMilliseconds(now - start));
      Committed(batch, batch.size(), now);
      mu_.Lock();
    } else {
      m_.retries->Inc();
      mu_.Lock();
      cv_.WaitFor(&mu_, backoff, [this] {
        mu_.AssertHeld();
        return stopping_;
      });
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
  }
  mu_.Unlock();
}

void Store::Committed(std::vector<QueuedRecord>& batch, size_t n, absl::Time now) { Done(batch, n, now, true); }

void Store::Discarded(std::vector<QueuedRecord>& batch) {
  m_.fenced->Inc(batch.size());
  Done(batch, batch.size(), absl::Now(), false);
}

void Store::Done(std::vector<QueuedRecord>& batch, size_t n, absl::Time now, bool stored) {
  if (stored) m_.rows->Inc(n);
  size_t bytes = 0;
  const uint64_t covers = stored ? CoveredBy(absl::MakeConstSpan(batch).subspan(0, n)) : 0;
  for (size_t i = 0; i < n; ++i) {
    bytes += RecordBytes(batch[i].record);
    if (const auto* reading = std::get_if<ReadingRecord>(&batch[i].record); reading && stored) {
      m_.commit_latency_ms->Observe(absl::ToDoubleMilliseconds(now - reading->published_at));
    }
  }
  batch.erase(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
  last_progress_ms_ = absl::ToUnixMillis(now);
  if (covers > 0 && on_committed_) on_committed_(covers);
  const size_t left = queued_bytes_.fetch_sub(bytes) - bytes;
  bool call_on_space = false;
  {
    common::MutexLock lock(&mu_);
    call_on_space = was_full_ && left <= options_.max_queue_bytes / 2;
    if (call_on_space) was_full_ = false;
  }
  // Before Flush() waiters learn of the commit, so they see its effects.
  if (call_on_space && on_space_) on_space_();
  {
    common::MutexLock lock(&mu_);
    committed_ += n;
  }
  flushed_cv_.NotifyAll();
}

void Store::ReaderLoop() {
  std::unique_ptr<pqxx::connection> conn;
  read_mu_.Lock();
  while (true) {
    read_cv_.Wait(&read_mu_, [this] {
      read_mu_.AssertHeld();
      return read_stopping_ || !reads_.empty();
    });
    if (read_stopping_) break;
    auto job = std::move(reads_.front());
    reads_.pop_front();
    read_mu_.Unlock();
    if (!conn || !conn->is_open()) {
      try {
        conn = Connect(options_.dsn);
      } catch (const std::exception&) {
        conn.reset();
      }
    }
    if (conn) Watch(kReader, conn->sock(), "a readings query");
    job(conn.get());
    Unwatch(kReader);
    read_mu_.Lock();
  }
  // Jobs left at shutdown still get an answer, outside the lock (a callback may call back in).
  std::deque<std::function<void(void*)>> left;
  left.swap(reads_);
  read_mu_.Unlock();
  for (auto& job : left) job(nullptr);
}

void Store::GetReadings(std::string device_id, absl::Time since, size_t limit, ReadingsDone done) {
  auto job = [device_id = std::move(device_id), since, limit, done = std::move(done)](void* c) {
    auto* conn = static_cast<pqxx::connection*>(c);
    if (conn == nullptr) return done(absl::UnavailableError("database unavailable"));
    try {
      done(QueryReadings(*conn, device_id, since, limit));
    } catch (const pqxx::broken_connection& e) {
      done(absl::UnavailableError(absl::StrCat("database connection lost: ", e.what())));
    } catch (const std::exception& e) {
      done(absl::InternalError(absl::StrCat("readings query failed: ", e.what())));
    }
  };
  {
    common::MutexLock lock(&read_mu_);
    if (!read_stopping_) {
      reads_.emplace_back(std::move(job));
      read_cv_.NotifyOne();
      return;
    }
  }
  job(nullptr);  // stopping: answer at once
}

}  // namespace devbridge::ingest
