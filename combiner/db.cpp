// The combiner's SQLite state store: small RAII wrappers over the SQLite C API, the schema
// and its migrations, the writer thread, reads, and the data-folder consistency check.
#include "combiner/db.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>

#include "core/error.hpp"
#include "core/util/ids.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::combiner {

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------
// SQLite wrappers. They throw SqliteError with SQLite's message only; callers add what they
// were doing and on which file.

class SqliteError : public Error {
  public:
    SqliteError(const std::string& message, int code) : Error(message), m_code(code) {}
    /// The primary result code (SQLITE_FULL, SQLITE_NOTADB, ...).
    int code() const { return m_code & 0xff; }

  private:
    int m_code;
};

/// One connection, used by one thread at a time (opened without SQLite's own mutex: every
/// connection here already has a single owner or a lock around it).
class Connection {
  public:
    Connection(const fs::path& file, int flags) {
        sqlite3* handle = nullptr;
        const int code =
            sqlite3_open_v2(file.c_str(), &handle, flags | SQLITE_OPEN_NOMUTEX, nullptr);
        m_handle = handle;  // set even on failure, and must be closed then too
        if (code != SQLITE_OK) {
            std::string message = handle ? sqlite3_errmsg(handle) : sqlite3_errstr(code);
            sqlite3_close_v2(m_handle);
            throw SqliteError("cannot open: " + message, code);
        }
        sqlite3_extended_result_codes(m_handle, 1);
        // Another process (the sqlite3 shell, `fedcli combiner check`) may hold a lock for a
        // moment; wait for it rather than fail.
        sqlite3_busy_timeout(m_handle, 10000);
    }
    ~Connection() { sqlite3_close_v2(m_handle); }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    sqlite3* get() const { return m_handle; }

    [[noreturn]] void fail(int code) const { throw SqliteError(sqlite3_errmsg(m_handle), code); }

    /// Runs one or more statements, ignoring any rows they return.
    void exec(const std::string& sql) {
        char* message = nullptr;
        const int code = sqlite3_exec(m_handle, sql.c_str(), nullptr, nullptr, &message);
        if (code != SQLITE_OK) {
            std::string text = message ? message : sqlite3_errstr(code);
            sqlite3_free(message);
            throw SqliteError(text, code);
        }
    }

    /// The first column of the first row of `sql` as an integer (0 without a row).
    std::int64_t integer(const std::string& sql);

  private:
    sqlite3* m_handle = nullptr;
};

/// A prepared statement, kept for reuse.
class Statement {
  public:
    Statement() = default;
    Statement(Connection& connection, std::string_view sql) : m_connection(&connection) {
        const int code =
            sqlite3_prepare_v3(connection.get(), sql.data(), static_cast<int>(sql.size()),
                               SQLITE_PREPARE_PERSISTENT, &m_statement, nullptr);
        if (code != SQLITE_OK) connection.fail(code);
    }
    ~Statement() { sqlite3_finalize(m_statement); }
    Statement(Statement&& other) noexcept
        : m_connection(other.m_connection),
          m_statement(std::exchange(other.m_statement, nullptr)) {}
    Statement& operator=(Statement&& other) noexcept {
        std::swap(m_connection, other.m_connection);
        std::swap(m_statement, other.m_statement);
        return *this;
    }

    sqlite3_stmt* get() const { return m_statement; }
    Connection& connection() const { return *m_connection; }

  private:
    Connection* m_connection = nullptr;
    sqlite3_stmt* m_statement = nullptr;
};

/// One execution of a statement: binds parameters in order, steps, reads the current row.
/// Resets the statement when destroyed, so that a reused statement never keeps a read
/// transaction open after an exception.
class Execution {
  public:
    explicit Execution(Statement& statement) : m_statement(statement) {}
    ~Execution() {
        sqlite3_reset(m_statement.get());
        sqlite3_clear_bindings(m_statement.get());
    }
    Execution(const Execution&) = delete;
    Execution& operator=(const Execution&) = delete;

    /// Integers and enums. Unsigned 64-bit values are stored as their int64 bit pattern
    /// (SQLite has no unsigned type) and come back unchanged from unsigned_integer().
    template <typename Number>
    requires std::is_integral_v<Number> || std::is_enum_v<Number> Execution& bind(Number value) {
        return check(
            sqlite3_bind_int64(m_statement.get(), ++m_index, static_cast<sqlite3_int64>(value)));
    }
    Execution& bind(std::string_view text) {
        return check(sqlite3_bind_text64(m_statement.get(), ++m_index, text.data(), text.size(),
                                         SQLITE_TRANSIENT, SQLITE_UTF8));
    }
    Execution& bind_blob(std::string_view bytes) {
        return check(sqlite3_bind_blob64(m_statement.get(), ++m_index, bytes.data(), bytes.size(),
                                         SQLITE_TRANSIENT));
    }

    /// Steps: true when a row is ready, false when the statement is done.
    bool next() {
        const int code = sqlite3_step(m_statement.get());
        if (code == SQLITE_ROW) return true;
        if (code == SQLITE_DONE) return false;
        m_statement.connection().fail(code);
    }
    /// Steps to the end (writes).
    void run() {
        while (next()) {
        }
    }

    std::int64_t integer(int column) const {
        return sqlite3_column_int64(m_statement.get(), column);
    }
    std::uint64_t unsigned_integer(int column) const {
        return static_cast<std::uint64_t>(integer(column));
    }
    std::uint32_t uint32(int column) const { return static_cast<std::uint32_t>(integer(column)); }
    std::string text(int column) const {
        const auto* bytes =
            reinterpret_cast<const char*>(sqlite3_column_text(m_statement.get(), column));
        return std::string(bytes ? bytes : "", static_cast<std::size_t>(sqlite3_column_bytes(
                                                   m_statement.get(), column)));
    }
    std::string blob(int column) const {
        const auto* bytes =
            static_cast<const char*>(sqlite3_column_blob(m_statement.get(), column));
        return std::string(bytes ? bytes : "", static_cast<std::size_t>(sqlite3_column_bytes(
                                                   m_statement.get(), column)));
    }

  private:
    Execution& check(int code) {
        if (code != SQLITE_OK) m_statement.connection().fail(code);
        return *this;
    }

    Statement& m_statement;
    int m_index = 0;
};

std::int64_t Connection::integer(const std::string& sql) {
    Statement statement(*this, sql);
    Execution execution(statement);
    return execution.next() ? execution.integer(0) : 0;
}

/// A transaction that rolls back unless committed.
class Transaction {
  public:
    /// `begin` is "BEGIN IMMEDIATE" for writers (take the write lock up front, so a busy
    /// database waits in the busy handler instead of failing half-way) or "BEGIN" for reads.
    explicit Transaction(Connection& connection, const char* begin = "BEGIN IMMEDIATE")
        : m_connection(connection) {
        try {
            m_connection.exec(begin);
        } catch (const Error& error) {
            throw error.with_context("starting a transaction");
        }
    }
    ~Transaction() {
        // SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
        if (!sqlite3_get_autocommit(m_connection.get())) {
            sqlite3_exec(m_connection.get(), "ROLLBACK", nullptr, nullptr, nullptr);
        }
    }
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;

    void commit() {
        try {
            m_connection.exec("COMMIT");
        } catch (const Error& error) {
            throw error.with_context("committing");
        }
    }

  private:
    Connection& m_connection;
};

// ---------------------------------------------------------------------------------------
// Schema

// Migration i takes the schema from version i to i + 1, in one transaction. A new version is
// one more entry here (and k_schema_version + 1); entries never change once released.
constexpr std::array<std::string_view, Database::k_schema_version> k_migrations = {
    // Version 1. One column per field so the file reads well in the sqlite3 shell; times are
    // Unix milliseconds; enums are their protocol numbers. Tables are rowid tables, and
    // upserts keep the rowid, so "ORDER BY rowid" is the order of first save.
    R"sql(
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    status INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    package_sha256 TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    rounds_contributed INTEGER NOT NULL,
    examples_contributed INTEGER NOT NULL,
    skipped INTEGER NOT NULL
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    config BLOB NOT NULL,  -- serialized fedcli.v1.SessionConfig
    config_json TEXT NOT NULL,
    state INTEGER NOT NULL,
    message TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER NOT NULL,
    rounds_committed INTEGER NOT NULL,
    latest_model_id TEXT NOT NULL
);
CREATE TABLE rounds (
    round_id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    session_round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state INTEGER NOT NULL,
    aggregator TEXT NOT NULL,
    input_model_id TEXT NOT NULL,
    output_model_id TEXT NOT NULL,
    clients_selected INTEGER NOT NULL,
    updates_accepted INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    closed_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE updates (
    task_id TEXT PRIMARY KEY,
    round_id INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    num_examples INTEGER NOT NULL,
    metadata_json TEXT NOT NULL,
    accepted INTEGER NOT NULL,  -- 0: a rejected update (reason says why)
    used INTEGER NOT NULL,
    reason TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE validations (
    task_id TEXT PRIMARY KEY,
    round_id INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE models (
    model_id TEXT PRIMARY KEY,
    parent_id TEXT NOT NULL,
    round_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE logs (
    sequence INTEGER PRIMARY KEY,
    unix_ms INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    round_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    line TEXT NOT NULL
);
-- `fedcli logs --client` and `--round` read these without scanning every line.
CREATE INDEX logs_by_client ON logs (client_id, sequence);
CREATE INDEX logs_by_round ON logs (round_id);
)sql",
    // Version 2: access tokens. Only the SHA-256 of a token's secret is kept.
    R"sql(
CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role INTEGER NOT NULL,        -- fedcli.v1.TokenRole: 1 client, 2 admin
    secret_sha256 TEXT NOT NULL,  -- lowercase hex
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,  -- 0: never
    revoked_ms INTEGER NOT NULL,  -- 0: not revoked
    client_id TEXT NOT NULL,      -- client tokens: the id bound at first connect
    last_used_ms INTEGER NOT NULL
);
)sql",
};

/// "INSERT INTO table (key, a, b) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET
/// a = excluded.a, b = excluded.b": replaces every column but keeps the row (and its rowid).
std::string upsert_sql(std::string_view table, std::initializer_list<std::string_view> columns) {
    std::string names;
    std::string values;
    std::string updates;
    for (std::string_view column : columns) {
        if (!names.empty()) {
            names += ", ";
            values += ", ";
        }
        names += column;
        values += "?";
        if (column == *columns.begin()) continue;
        if (!updates.empty()) updates += ", ";
        updates += std::string(column) + " = excluded." + std::string(column);
    }
    return "INSERT INTO " + std::string(table) + " (" + names + ") VALUES (" + values +
           ") ON CONFLICT (" + std::string(*columns.begin()) + ") DO UPDATE SET " + updates;
}

std::string quoted(const fs::path& file) {
    return "'" + file.string() + "'";
}

/// Whether `db` is a fedcli state database this fedcli can use (or an empty file, which it
/// may turn into one). Returns a message naming the file when not; sets `version`.
std::string identity_problem(Connection& db, const fs::path& file, std::int64_t& version) {
    std::int64_t application_id = 0;
    bool has_tables = false;
    try {
        version = db.integer("PRAGMA user_version");
        application_id = db.integer("PRAGMA application_id");
        has_tables = db.integer("SELECT count(*) FROM sqlite_master") > 0;
    } catch (const SqliteError& error) {
        if (error.code() != SQLITE_NOTADB) throw;
        return quoted(file) + " is not a fedcli state database (" + error.what() + ")";
    }
    if (application_id == Database::k_application_id) {
        if (version > Database::k_schema_version) {
            return "state database " + quoted(file) + ": schema version " +
                   std::to_string(version) + " is newer than this fedcli supports (" +
                   std::to_string(Database::k_schema_version) + "); upgrade fedcli";
        }
        return {};
    }
    if (application_id == 0 && version == 0 && !has_tables) return {};
    return quoted(file) +
           " is not a fedcli state database (it is an SQLite database of another program)";
}

// ---------------------------------------------------------------------------------------
// Queued writes

struct UpdateWrite {
    std::uint64_t round_id = 0;
    v1::AcceptedUpdate update;
};
struct RejectedWrite {
    std::uint64_t round_id = 0;
    v1::RejectedUpdate update;
};
struct ValidationWrite {
    std::uint64_t round_id = 0;
    std::string task_id;
    v1::ClientMetrics metrics;
};
struct SettingWrite {
    std::string key;
    std::string value;
};
struct LogsWrite {
    std::vector<v1::LogEntry> entries;
};
struct FullDiskWrite {};
struct TokenWrite {
    v1::TokenInfo info;
    std::string secret_hash;
};

using Write = std::variant<v1::ClientInfo, v1::SessionInfo, v1::RoundInfo, UpdateWrite,
                           RejectedWrite, ValidationWrite, v1::ModelInfo, SettingWrite, LogsWrite,
                           FullDiskWrite, TokenWrite>;

template <typename... Handlers>
struct Overloaded : Handlers... {
    using Handlers::operator()...;
};

/// What a write was doing, for its error message.
std::string describe(const Write& queued) {
    return std::visit(
        Overloaded{
            [](const v1::ClientInfo& info) { return "saving client '" + info.client_id() + "'"; },
            [](const v1::SessionInfo& info) {
                return "saving session '" + info.session_id() + "'";
            },
            [](const v1::RoundInfo& round) {
                return "saving round " + std::to_string(round.round_id());
            },
            [](const UpdateWrite& write) {
                return "saving the update of task '" + write.update.task_id() + "'";
            },
            [](const RejectedWrite& write) {
                return "saving the rejected update of task '" + write.update.task_id() + "'";
            },
            [](const ValidationWrite& write) {
                return "saving the validation of task '" + write.task_id + "'";
            },
            [](const v1::ModelInfo& model) { return "saving model '" + model.model_id() + "'"; },
            [](const SettingWrite& write) { return "saving setting '" + write.key + "'"; },
            [](const LogsWrite& write) {
                if (write.entries.empty()) return std::string("saving no log lines");
                return "saving " + std::to_string(write.entries.size()) + " log lines (sequence " +
                       std::to_string(write.entries.front().sequence()) + " to " +
                       std::to_string(write.entries.back().sequence()) + ")";
            },
            [](const FullDiskWrite&) { return std::string("limiting the file size"); },
            [](const TokenWrite& write) { return "saving token '" + write.info.token_id() + "'"; },
        },
        queued);
}

constexpr std::string_view k_log_columns =
    "sequence, unix_ms, client_id, client_name, task_id, round_id, session_id, kind, stream, "
    "line";

v1::LogEntry read_log_entry(const Execution& row) {
    v1::LogEntry entry;
    entry.set_sequence(row.unsigned_integer(0));
    entry.set_unix_ms(row.integer(1));
    entry.set_client_id(row.text(2));
    entry.set_client_name(row.text(3));
    entry.set_task_id(row.text(4));
    entry.set_round_id(row.unsigned_integer(5));
    entry.set_session_id(row.text(6));
    entry.set_kind(static_cast<v1::TaskKind>(row.integer(7)));
    entry.set_stream(static_cast<v1::LogStream>(row.integer(8)));
    entry.set_line(row.text(9));
    return entry;
}

std::int64_t clamp_to_int64(std::uint64_t value) {
    return static_cast<std::int64_t>(
        std::min<std::uint64_t>(value, std::numeric_limits<std::int64_t>::max()));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Database

struct Database::Impl {
    explicit Impl(const fs::path& file);
    ~Impl();

    /// Checks what the file is, switches it to WAL and applies the missing migrations.
    void migrate();
    void write_loop();
    /// Applies one batch in one transaction; returns the error message if it failed.
    std::optional<std::string> write_batch(const std::vector<Write>& batch);
    void enqueue(Write write);

    void apply(const v1::ClientInfo& info);
    void apply(const v1::SessionInfo& info);
    void apply(const v1::RoundInfo& round);
    void apply(const UpdateWrite& write);
    void apply(const RejectedWrite& write);
    void apply(const ValidationWrite& write);
    void apply(const v1::ModelInfo& model);
    void apply(const SettingWrite& write);
    void apply(const LogsWrite& write);
    void apply(const FullDiskWrite& write);
    void apply(const TokenWrite& write);

    StoredState load();
    std::vector<v1::LogEntry> logs(const LogQuery& query);

    const fs::path file;
    const std::string label;  ///< "state database '<file>'", the context of messages

    // The writer's connection and statements: used by the constructor, then only by the
    // writer thread. (Statements are declared after their connection: destroyed first.)
    Connection writer;
    std::int64_t opened_version = 0;
    Statement upsert_client;
    Statement upsert_session;
    Statement upsert_round;
    Statement upsert_update;
    Statement upsert_validation;
    Statement upsert_model;
    Statement upsert_setting;
    Statement upsert_log;
    Statement upsert_token;

    // Reads, on their own connection so they never wait for a batch being written.
    std::mutex reader_mutex;
    std::unique_ptr<Connection> reader;            ///< opened once the schema is current
    std::map<std::string, Statement> log_queries;  ///< by SQL text (one per filter shape)

    std::mutex mutex;  ///< guards everything below
    std::condition_variable queue_changed;
    std::condition_variable written_changed;
    std::vector<Write> queue;
    std::uint64_t queued = 0;   ///< writes ever queued
    std::uint64_t written = 0;  ///< writes ever applied or failed
    bool stopping = false;
    std::optional<std::string> failure;  ///< first failure since the last flush()
    std::size_t later_failures = 0;
    std::function<void(const std::string&)> on_error;
    std::thread thread;  ///< last: started once everything above exists
};

Database::Impl::Impl(const fs::path& file_path)
    : file(file_path),
      label("state database " + quoted(file_path)),
      writer(file_path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) {
    migrate();
    try {
        reader = std::make_unique<Connection>(file_path, SQLITE_OPEN_READWRITE);
        reader->exec("PRAGMA query_only = 1");
        upsert_client = Statement(
            writer,
            upsert_sql("clients", {"client_id", "name", "version", "status", "first_seen_ms",
                                   "last_seen_ms", "package_sha256", "consecutive_failures",
                                   "rounds_contributed", "examples_contributed", "skipped"}));
        upsert_session =
            Statement(writer, upsert_sql("sessions", {"session_id", "config", "config_json",
                                                      "state", "message", "started_ms", "ended_ms",
                                                      "rounds_committed", "latest_model_id"}));
        upsert_round = Statement(
            writer, upsert_sql("rounds", {"round_id", "session_id", "session_round", "attempt",
                                          "state", "aggregator", "input_model_id",
                                          "output_model_id", "clients_selected", "updates_accepted",
                                          "started_ms", "closed_ms", "reason"}));
        upsert_update = Statement(
            writer,
            upsert_sql("updates", {"task_id", "round_id", "client_id", "model_id", "num_examples",
                                   "metadata_json", "accepted", "used", "reason", "received_ms"}));
        upsert_validation = Statement(
            writer, upsert_sql("validations", {"task_id", "round_id", "client_id", "model_id",
                                               "metrics_json", "received_ms"}));
        upsert_model =
            Statement(writer, upsert_sql("models", {"model_id", "parent_id", "round_id",
                                                    "session_id", "size", "created_ms"}));
        upsert_setting = Statement(writer, upsert_sql("settings", {"key", "value"}));
        upsert_log = Statement(
            writer,
            upsert_sql("logs", {"sequence", "unix_ms", "client_id", "client_name", "task_id",
                                "round_id", "session_id", "kind", "stream", "line"}));
        upsert_token = Statement(
            writer,
            upsert_sql("tokens", {"token_id", "name", "role", "secret_sha256", "created_ms",
                                  "expires_ms", "revoked_ms", "client_id", "last_used_ms"}));
    } catch (const Error& error) {
        throw error.with_context(label + ": preparing statements");
    }
    thread = std::thread([this] { write_loop(); });
}

Database::Impl::~Impl() {
    {
        std::lock_guard lock(mutex);
        stopping = true;
    }
    queue_changed.notify_all();
    thread.join();
}

void Database::Impl::migrate() {
    std::string problem = identity_problem(writer, file, opened_version);
    if (!problem.empty()) throw Error(problem);
    try {
        // WAL: readers (logs(), `fedcli combiner check`) never block the writer, and a commit
        // is one append to the log plus one fsync, which synchronous=FULL makes durable.
        writer.exec("PRAGMA journal_mode = WAL");
        writer.exec("PRAGMA synchronous = FULL");
    } catch (const Error& error) {
        throw error.with_context(label + ": setting up the journal");
    }
    for (std::int64_t version = opened_version;;) {
        try {
            Transaction transaction(writer);
            // Read again under the write lock: another process may have migrated meanwhile.
            version = writer.integer("PRAGMA user_version");
            if (version >= Database::k_schema_version) break;
            writer.exec(std::string(k_migrations[static_cast<std::size_t>(version)]));
            if (version == 0) {
                writer.exec("PRAGMA application_id = " + std::to_string(k_application_id));
            }
            writer.exec("PRAGMA user_version = " + std::to_string(version + 1));
            transaction.commit();
        } catch (const Error& error) {
            throw error.with_context(label + ": migrating the schema from version " +
                                     std::to_string(version));
        }
    }
    // Between our check and the write lock another fedcli could have moved the file on.
    std::int64_t ignored = 0;
    problem = identity_problem(writer, file, ignored);
    if (!problem.empty()) throw Error(problem);
}

void Database::Impl::enqueue(Write write) {
    {
        std::lock_guard lock(mutex);
        queue.push_back(std::move(write));
        ++queued;
    }
    queue_changed.notify_one();
}

void Database::Impl::write_loop() {
    std::unique_lock lock(mutex);
    for (;;) {
        queue_changed.wait(lock, [&] { return !queue.empty() || stopping; });
        if (queue.empty()) return;  // stopping, and everything is written
        // Everything queued so far goes into one transaction: one fsync for the lot.
        std::vector<Write> batch;
        batch.swap(queue);
        const std::uint64_t batch_end = queued;
        lock.unlock();
        std::optional<std::string> error = write_batch(batch);
        batch.clear();
        lock.lock();
        if (error) {
            if (failure) {
                ++later_failures;
            } else {
                failure = *error;
            }
            // Reported before flush() returns, and without the lock, so that the callback
            // may queue writes.
            if (std::function<void(const std::string&)> callback = on_error) {
                lock.unlock();
                callback(*error);
                lock.lock();
            }
        }
        written = batch_end;
        written_changed.notify_all();
    }
}

std::optional<std::string> Database::Impl::write_batch(const std::vector<Write>& batch) {
    try {
        Transaction transaction(writer);
        for (const Write& write : batch) {
            try {
                std::visit([this](const auto& record) { apply(record); }, write);
            } catch (const Error& error) {
                throw error.with_context(describe(write));
            }
        }
        transaction.commit();
        return std::nullopt;
    } catch (const std::exception& error) {
        // The transaction rolled back: none of the batch is on disk. The caller's memory
        // still has it; the next save of the same records writes them again.
        return label + ": " + error.what() + " (this batch of " + std::to_string(batch.size()) +
               (batch.size() == 1 ? " write was" : " writes was") + " not saved)";
    }
}

void Database::Impl::apply(const v1::ClientInfo& info) {
    // `online` is not stored: after a restart nobody is connected.
    Execution(upsert_client)
        .bind(info.client_id())
        .bind(info.name())
        .bind(info.version())
        .bind(info.status())
        .bind(info.first_seen_unix_ms())
        .bind(info.last_seen_unix_ms())
        .bind(info.package_sha256())
        .bind(info.consecutive_failures())
        .bind(info.rounds_contributed())
        .bind(info.examples_contributed())
        .bind(info.skipped())
        .run();
}

void Database::Impl::apply(const v1::SessionInfo& info) {
    Execution(upsert_session)
        .bind(info.session_id())
        .bind_blob(info.config().SerializeAsString())
        .bind(info.config_json())
        .bind(info.state())
        .bind(info.message())
        .bind(info.started_unix_ms())
        .bind(info.ended_unix_ms())
        .bind(info.rounds_committed())
        .bind(info.latest_model_id())
        .run();
}

void Database::Impl::apply(const v1::RoundInfo& round) {
    Execution(upsert_round)
        .bind(round.round_id())
        .bind(round.session_id())
        .bind(round.session_round())
        .bind(round.attempt())
        .bind(round.state())
        .bind(round.aggregator())
        .bind(round.input_model_id())
        .bind(round.output_model_id())
        .bind(round.clients_selected())
        .bind(round.updates_accepted())
        .bind(round.started_unix_ms())
        .bind(round.closed_unix_ms())
        .bind(round.reason())
        .run();
}

void Database::Impl::apply(const UpdateWrite& write) {
    const v1::AcceptedUpdate& update = write.update;
    Execution(upsert_update)
        .bind(update.task_id())
        .bind(write.round_id)
        .bind(update.client_id())
        .bind(update.model_id())
        .bind(update.num_examples())
        .bind(update.metadata_json())
        .bind(1)  // accepted
        .bind(update.used())
        .bind("")  // reason
        .bind(update.received_unix_ms())
        .run();
}

void Database::Impl::apply(const RejectedWrite& write) {
    const v1::RejectedUpdate& update = write.update;
    Execution(upsert_update)
        .bind(update.task_id())
        .bind(write.round_id)
        .bind(update.client_id())
        .bind("")  // model_id
        .bind(0)   // num_examples
        .bind("")  // metadata_json
        .bind(0)   // accepted
        .bind(0)   // used
        .bind(update.reason())
        .bind(update.received_unix_ms())
        .run();
}

void Database::Impl::apply(const ValidationWrite& write) {
    const v1::ClientMetrics& metrics = write.metrics;
    Execution(upsert_validation)
        .bind(write.task_id)
        .bind(write.round_id)
        .bind(metrics.client_id())
        .bind(metrics.model_id())
        .bind(metrics.metrics_json())
        .bind(metrics.received_unix_ms())
        .run();
}

void Database::Impl::apply(const v1::ModelInfo& model) {
    Execution(upsert_model)
        .bind(model.model_id())
        .bind(model.parent_id())
        .bind(model.round_id())
        .bind(model.session_id())
        .bind(model.size())
        .bind(model.created_unix_ms())
        .run();
}

void Database::Impl::apply(const SettingWrite& write) {
    Execution(upsert_setting).bind(write.key).bind(write.value).run();
}

void Database::Impl::apply(const LogsWrite& write) {
    for (const v1::LogEntry& entry : write.entries) {
        Execution(upsert_log)
            .bind(entry.sequence())
            .bind(entry.unix_ms())
            .bind(entry.client_id())
            .bind(entry.client_name())
            .bind(entry.task_id())
            .bind(entry.round_id())
            .bind(entry.session_id())
            .bind(entry.kind())
            .bind(entry.stream())
            .bind(entry.line())
            .run();
    }
}

void Database::Impl::apply(const TokenWrite& write) {
    const v1::TokenInfo& info = write.info;
    Execution(upsert_token)
        .bind(info.token_id())
        .bind(info.name())
        .bind(info.role())
        .bind(write.secret_hash)
        .bind(info.created_unix_ms())
        .bind(info.expires_unix_ms())
        .bind(info.revoked_unix_ms())
        .bind(info.client_id())
        .bind(info.last_used_unix_ms())
        .run();
}

void Database::Impl::apply(const FullDiskWrite&) {
    // SQLite raises the maximum to the current size, so the file cannot grow any more.
    writer.exec("PRAGMA max_page_count = 1");
}

StoredState Database::Impl::load() {
    StoredState state;
    std::lock_guard lock(reader_mutex);
    try {
        // One read transaction: a consistent snapshot even while the writer commits.
        Transaction transaction(*reader, "BEGIN");
        auto query = [&](const std::string& sql, const auto& on_row) {
            Statement statement(*reader, sql);
            Execution rows(statement);
            while (rows.next()) on_row(rows);
        };

        query(
            "SELECT client_id, name, version, status, first_seen_ms, last_seen_ms, "
            "package_sha256, consecutive_failures, rounds_contributed, examples_contributed, "
            "skipped FROM clients ORDER BY rowid",
            [&](const Execution& row) {
                v1::ClientInfo& info = state.clients.emplace_back();
                info.set_client_id(row.text(0));
                info.set_name(row.text(1));
                info.set_version(row.text(2));
                info.set_status(static_cast<v1::ClientStatus>(row.integer(3)));
                info.set_first_seen_unix_ms(row.integer(4));
                info.set_last_seen_unix_ms(row.integer(5));
                info.set_package_sha256(row.text(6));
                info.set_consecutive_failures(row.uint32(7));
                info.set_rounds_contributed(row.uint32(8));
                info.set_examples_contributed(row.unsigned_integer(9));
                info.set_skipped(row.integer(10) != 0);
            });

        query(
            "SELECT session_id, config, config_json, state, message, started_ms, ended_ms, "
            "rounds_committed, latest_model_id FROM sessions ORDER BY rowid",
            [&](const Execution& row) {
                v1::SessionInfo& info = state.sessions.emplace_back();
                info.set_session_id(row.text(0));
                if (!info.mutable_config()->ParseFromString(row.blob(1))) {
                    throw Error("session '" + info.session_id() +
                                "': the stored configuration does not parse");
                }
                info.set_config_json(row.text(2));
                info.set_state(static_cast<v1::SessionState>(row.integer(3)));
                info.set_message(row.text(4));
                info.set_started_unix_ms(row.integer(5));
                info.set_ended_unix_ms(row.integer(6));
                info.set_rounds_committed(row.uint32(7));
                info.set_latest_model_id(row.text(8));
            });

        std::map<std::uint64_t, std::size_t> round_index;
        query(
            "SELECT round_id, session_id, session_round, attempt, state, aggregator, "
            "input_model_id, output_model_id, clients_selected, updates_accepted, started_ms, "
            "closed_ms, reason FROM rounds ORDER BY round_id",
            [&](const Execution& row) {
                v1::RoundInfo& round = state.rounds.emplace_back();
                round.set_round_id(row.unsigned_integer(0));
                round.set_session_id(row.text(1));
                round.set_session_round(row.uint32(2));
                round.set_attempt(row.uint32(3));
                round.set_state(static_cast<v1::RoundState>(row.integer(4)));
                round.set_aggregator(row.text(5));
                round.set_input_model_id(row.text(6));
                round.set_output_model_id(row.text(7));
                round.set_clients_selected(row.uint32(8));
                round.set_updates_accepted(row.uint32(9));
                round.set_started_unix_ms(row.integer(10));
                round.set_closed_unix_ms(row.integer(11));
                round.set_reason(row.text(12));
                round_index[round.round_id()] = state.rounds.size() - 1;
            });
        // Updates and validations of a round that was never saved have nowhere to go (and
        // `fedcli combiner check` reports them).
        auto round_of = [&](const Execution& row) -> v1::RoundInfo* {
            auto found = round_index.find(row.unsigned_integer(1));
            return found == round_index.end() ? nullptr : &state.rounds[found->second];
        };
        query(
            "SELECT task_id, round_id, client_id, model_id, num_examples, metadata_json, "
            "accepted, used, reason, received_ms FROM updates ORDER BY rowid",
            [&](const Execution& row) {
                v1::RoundInfo* round = round_of(row);
                if (!round) return;
                if (row.integer(6) != 0) {
                    v1::AcceptedUpdate& update = *round->add_updates();
                    update.set_task_id(row.text(0));
                    update.set_client_id(row.text(2));
                    update.set_model_id(row.text(3));
                    update.set_num_examples(row.unsigned_integer(4));
                    update.set_metadata_json(row.text(5));
                    update.set_used(row.integer(7) != 0);
                    update.set_received_unix_ms(row.integer(9));
                } else {
                    v1::RejectedUpdate& update = *round->add_rejected();
                    update.set_task_id(row.text(0));
                    update.set_client_id(row.text(2));
                    update.set_reason(row.text(8));
                    update.set_received_unix_ms(row.integer(9));
                }
            });
        query(
            "SELECT task_id, round_id, client_id, model_id, metrics_json, received_ms "
            "FROM validations ORDER BY rowid",
            [&](const Execution& row) {
                v1::RoundInfo* round = round_of(row);
                if (!round) return;
                v1::ClientMetrics& metrics = *round->add_validations();
                metrics.set_client_id(row.text(2));
                metrics.set_model_id(row.text(3));
                metrics.set_metrics_json(row.text(4));
                metrics.set_received_unix_ms(row.integer(5));
            });

        query(
            "SELECT model_id, parent_id, round_id, session_id, size, created_ms FROM models "
            "ORDER BY rowid",
            [&](const Execution& row) {
                v1::ModelInfo& model = state.models.emplace_back();
                model.set_model_id(row.text(0));
                model.set_parent_id(row.text(1));
                model.set_round_id(row.unsigned_integer(2));
                model.set_session_id(row.text(3));
                model.set_size(row.unsigned_integer(4));
                model.set_created_unix_ms(row.integer(5));
            });
        query("SELECT key, value FROM settings",
              [&](const Execution& row) { state.settings[row.text(0)] = row.text(1); });
        query("SELECT max(sequence) FROM logs", [&](const Execution& row) {
            state.last_log_sequence = row.unsigned_integer(0);  // NULL (no logs) reads as 0
        });
        query(
            "SELECT token_id, name, role, secret_sha256, created_ms, expires_ms, revoked_ms, "
            "client_id, last_used_ms FROM tokens ORDER BY rowid",
            [&](const Execution& row) {
                StoredToken& token = state.tokens.emplace_back();
                token.info.set_token_id(row.text(0));
                token.info.set_name(row.text(1));
                token.info.set_role(static_cast<v1::TokenRole>(row.integer(2)));
                token.secret_hash = row.text(3);
                token.info.set_created_unix_ms(row.integer(4));
                token.info.set_expires_unix_ms(row.integer(5));
                token.info.set_revoked_unix_ms(row.integer(6));
                token.info.set_client_id(row.text(7));
                token.info.set_last_used_unix_ms(row.integer(8));
            });
        transaction.commit();
    } catch (const Error& error) {
        throw error.with_context(label + ": loading");
    }
    return state;
}

std::vector<v1::LogEntry> Database::Impl::logs(const LogQuery& query) {
    // One SQL text per combination of filters, so that SQLite picks the index that fits
    // (a "? = '' OR client_id = ?" condition would defeat it).
    std::string where = "sequence > ?";
    if (!query.client_id.empty()) where += " AND client_id = ?";
    if (query.round_id != 0) where += " AND round_id = ?";
    if (!query.session_id.empty()) where += " AND session_id = ?";
    const std::string columns(k_log_columns);
    std::string sql;
    if (query.tail != 0) {
        sql = "SELECT " + columns + " FROM (SELECT " + columns + " FROM logs WHERE " + where +
              " ORDER BY sequence DESC LIMIT ?) ORDER BY sequence LIMIT ?";
    } else {
        sql = "SELECT " + columns + " FROM logs WHERE " + where + " ORDER BY sequence LIMIT ?";
    }

    std::vector<v1::LogEntry> entries;
    std::lock_guard lock(reader_mutex);
    try {
        auto found = log_queries.find(sql);
        if (found == log_queries.end()) {
            found = log_queries.emplace(sql, Statement(*reader, sql)).first;
        }
        Execution rows(found->second);
        rows.bind(clamp_to_int64(query.after_sequence));
        if (!query.client_id.empty()) rows.bind(query.client_id);
        if (query.round_id != 0) rows.bind(clamp_to_int64(query.round_id));
        if (!query.session_id.empty()) rows.bind(query.session_id);
        if (query.tail != 0) rows.bind(query.tail);
        rows.bind(clamp_to_int64(query.limit));
        while (rows.next()) entries.push_back(read_log_entry(rows));
    } catch (const Error& error) {
        throw error.with_context(label + ": reading logs");
    }
    return entries;
}

Database::Database(fs::path file) : m_file(std::move(file)) {
    try {
        m_impl = std::make_unique<Impl>(m_file);
    } catch (const SqliteError& error) {
        // Errors of opening and of the first reads come without context.
        throw Error("state database " + quoted(m_file) + ": " + error.what());
    }
}

Database::~Database() = default;

int Database::opened_schema_version() const {
    return static_cast<int>(m_impl->opened_version);
}

StoredState Database::load() {
    flush();
    return m_impl->load();
}

void Database::save_client(const v1::ClientInfo& info) {
    m_impl->enqueue(info);
}

void Database::save_session(const v1::SessionInfo& info) {
    m_impl->enqueue(info);
}

void Database::save_round(const v1::RoundInfo& round) {
    v1::RoundInfo header = round;
    header.clear_updates();
    header.clear_rejected();
    header.clear_validations();
    m_impl->enqueue(std::move(header));
}

void Database::save_update(std::uint64_t round_id, const v1::AcceptedUpdate& update) {
    m_impl->enqueue(UpdateWrite{round_id, update});
}

void Database::save_rejected(std::uint64_t round_id, const v1::RejectedUpdate& update) {
    m_impl->enqueue(RejectedWrite{round_id, update});
}

void Database::save_validation(std::uint64_t round_id, const std::string& task_id,
                               const v1::ClientMetrics& metrics) {
    m_impl->enqueue(ValidationWrite{round_id, task_id, metrics});
}

void Database::save_model(const v1::ModelInfo& model) {
    m_impl->enqueue(model);
}

void Database::save_setting(const std::string& key, const std::string& value) {
    m_impl->enqueue(SettingWrite{key, value});
}

void Database::save_token(const v1::TokenInfo& info, const std::string& secret_hash) {
    m_impl->enqueue(TokenWrite{info, secret_hash});
}

void Database::append_logs(std::vector<v1::LogEntry> entries) {
    if (entries.empty()) return;
    m_impl->enqueue(LogsWrite{std::move(entries)});
}

void Database::simulate_full_disk() {
    m_impl->enqueue(FullDiskWrite{});
}

void Database::flush() {
    Impl& impl = *m_impl;
    std::unique_lock lock(impl.mutex);
    const std::uint64_t target = impl.queued;
    impl.written_changed.wait(lock, [&] { return impl.written >= target; });
    if (!impl.failure) return;
    std::string message = std::move(*impl.failure);
    if (impl.later_failures > 0) {
        message += " (and " + std::to_string(impl.later_failures) + " later failed batches)";
    }
    impl.failure.reset();
    impl.later_failures = 0;
    throw Error(message);
}

void Database::set_error_callback(std::function<void(const std::string&)> callback) {
    std::lock_guard lock(m_impl->mutex);
    m_impl->on_error = std::move(callback);
}

std::vector<v1::LogEntry> Database::logs(const LogQuery& query) {
    return m_impl->logs(query);
}

// ---------------------------------------------------------------------------------------
// check_data_dir

namespace {

/// The checks of check_data_dir, each adding lines to `problems`.
class DataDirCheck {
  public:
    explicit DataDirCheck(fs::path data_dir) : m_root(std::move(data_dir)) {}

    std::vector<std::string> run() {
        const fs::path db_file = m_root / "state.db";
        std::error_code error;
        if (!fs::exists(db_file, error)) {
            m_problems.push_back(db_file.string() + " is missing (no state database)");
            return m_problems;
        }
        std::unique_ptr<Connection> db = open(db_file);
        if (!db) return m_problems;
        try {
            check_integrity(*db);
            check_models(*db);
            check_rounds(*db);
            check_updates(*db);
            check_package(*db);
        } catch (const Error& failure) {
            m_problems.push_back(db_file.string() + ": cannot read: " + failure.what());
        }
        return m_problems;
    }

  private:
    /// Opens without creating or migrating anything. Returns null (with the problem noted)
    /// when the file is not a current fedcli state database.
    std::unique_ptr<Connection> open(const fs::path& db_file) {
        // Read-only first; that fails for a WAL database whose -shm is missing in a folder we
        // may not write, and then read-write (still without creating) is the way in.
        std::string last_error;
        for (int flags : {SQLITE_OPEN_READONLY, SQLITE_OPEN_READWRITE}) {
            try {
                auto db = std::make_unique<Connection>(db_file, flags);
                std::int64_t version = 0;
                std::string problem = identity_problem(*db, db_file, version);
                if (!problem.empty()) {
                    m_problems.push_back(problem);
                    return nullptr;
                }
                if (version == 0) return nullptr;  // an empty database: nothing to contradict
                if (version < Database::k_schema_version) {
                    m_problems.push_back(db_file.string() + " has schema version " +
                                         std::to_string(version) +
                                         "; start this fedcli's combiner once to migrate it");
                    return nullptr;
                }
                return db;
            } catch (const Error& error) {
                last_error = error.what();
            }
        }
        m_problems.push_back(db_file.string() + ": " + last_error);
        return nullptr;
    }

    void check_integrity(Connection& db) {
        Statement statement(db, "PRAGMA integrity_check");
        Execution rows(statement);
        while (rows.next()) {
            std::string result = rows.text(0);
            if (result != "ok") m_problems.push_back("state.db: integrity_check: " + result);
        }
    }

    /// models/<id>.npz relative to the data folder, for messages.
    static std::string model_file(const std::string& id) { return "models/" + id + ".npz"; }

    bool has_model_file(const std::string& id) const {
        std::error_code error;
        return util::is_sha256(id) && fs::is_regular_file(m_root / model_file(id), error);
    }

    /// Problem text when `file` (relative) is not `size` bytes (unless size < 0) with sha256
    /// `sha256`; empty when it is.
    std::string file_problem(const std::string& file, std::int64_t size,
                             const std::string& sha256) const {
        const fs::path path = m_root / file;
        std::error_code error;
        if (!fs::is_regular_file(path, error)) return file + " is missing";
        const std::uintmax_t actual_size = fs::file_size(path, error);
        if (error) return file + ": cannot read its size: " + error.message();
        if (size >= 0 && actual_size != static_cast<std::uintmax_t>(size)) {
            return file + " is " + std::to_string(actual_size) + " bytes, the database says " +
                   std::to_string(size);
        }
        try {
            const std::string actual = util::sha256_file(path);
            if (actual != sha256) return file + " has sha256 " + actual + " (corrupt)";
        } catch (const Error& failure) {
            return failure.what();
        }
        return {};
    }

    void check_models(Connection& db) {
        Statement statement(db, "SELECT model_id, size FROM models ORDER BY rowid");
        Execution rows(statement);
        while (rows.next()) {
            const std::string id = rows.text(0);
            m_models.insert(id);
            if (!util::is_sha256(id)) {
                m_problems.push_back("model '" + id + "': the id is not a sha256");
                continue;
            }
            std::string problem = file_problem(model_file(id), rows.integer(1), id);
            if (!problem.empty()) m_problems.push_back("model " + id + ": " + problem);
        }
    }

    /// A round's reference to a global model: a models row with its file.
    void check_model_reference(const std::string& round, const std::string& what,
                               const std::string& id) {
        if (m_models.count(id) == 0) {
            m_problems.push_back(round + ": " + what + " " + id + " is not in the models table");
        } else if (!has_model_file(id)) {
            m_problems.push_back(round + ": " + what + " " + id + " has no file " + model_file(id));
        }
    }

    void check_rounds(Connection& db) {
        std::set<std::string> sessions;
        {
            Statement statement(db, "SELECT session_id FROM sessions");
            Execution rows(statement);
            while (rows.next()) sessions.insert(rows.text(0));
        }
        // Per session: (session_round, attempt) -> round id, and committed session_round ->
        // round ids.
        std::map<std::string, std::map<std::pair<std::int64_t, std::int64_t>, std::int64_t>>
            attempts;
        std::map<std::string, std::map<std::int64_t, std::vector<std::int64_t>>> committed;

        Statement statement(db,
                            "SELECT round_id, session_id, session_round, attempt, state, "
                            "input_model_id, output_model_id FROM rounds ORDER BY round_id");
        Execution rows(statement);
        while (rows.next()) {
            const std::int64_t round_id = rows.integer(0);
            const std::string session = rows.text(1);
            const std::int64_t session_round = rows.integer(2);
            const std::int64_t attempt = rows.integer(3);
            const bool is_committed = rows.integer(4) == v1::ROUND_STATE_COMMITTED;
            const std::string name = "round " + std::to_string(round_id);
            m_rounds.insert(round_id);

            if (sessions.count(session) == 0) {
                m_problems.push_back(name + ": session '" + session +
                                     "' is not in the sessions table");
            }
            if (rows.text(5).empty()) {
                m_problems.push_back(name + ": has no input model");
            } else {
                check_model_reference(name, "input model", rows.text(5));
            }
            if (is_committed) {
                if (rows.text(6).empty()) {
                    m_problems.push_back(name + ": committed without an output model");
                } else {
                    check_model_reference(name, "output model", rows.text(6));
                }
                committed[session][session_round].push_back(round_id);
            }
            auto [where, added] =
                attempts[session].emplace(std::make_pair(session_round, attempt), round_id);
            if (!added) {
                m_problems.push_back(
                    "session " + session + ": rounds " + std::to_string(where->second) + " and " +
                    std::to_string(round_id) + " are both session round " +
                    std::to_string(session_round) + ", attempt " + std::to_string(attempt));
            }
        }

        for (const auto& [session, by_session_round] : committed) {
            const std::int64_t last = by_session_round.rbegin()->first;
            for (std::int64_t expected = 1; expected <= last; ++expected) {
                if (by_session_round.count(expected) == 0) {
                    m_problems.push_back("session " + session + ": session round " +
                                         std::to_string(expected) +
                                         " has no committed round, but session round " +
                                         std::to_string(last) + " has");
                }
            }
            for (const auto& [session_round, round_ids] : by_session_round) {
                if (session_round < 1) {
                    m_problems.push_back(
                        "session " + session + ": round " + std::to_string(round_ids.front()) +
                        " is committed as session round " + std::to_string(session_round));
                }
                if (round_ids.size() > 1) {
                    std::string list;
                    for (std::int64_t id : round_ids) {
                        list += (list.empty() ? "" : ", ") + std::to_string(id);
                    }
                    m_problems.push_back("session " + session + ": session round " +
                                         std::to_string(session_round) +
                                         " was committed more than once (rounds " + list + ")");
                }
            }
        }
    }

    void check_updates(Connection& db) {
        Statement statement(db,
                            "SELECT task_id, round_id, model_id, accepted FROM updates "
                            "UNION ALL SELECT task_id, round_id, model_id, -1 FROM "
                            "validations");
        Execution rows(statement);
        while (rows.next()) {
            const std::int64_t kind = rows.integer(3);
            const std::string name = std::string(kind < 0 ? "validation" : "update") +
                                     " of task '" + rows.text(0) + "' (round " +
                                     std::to_string(rows.integer(1)) + ")";
            if (m_rounds.count(rows.integer(1)) == 0) {
                m_problems.push_back(name + ": the round is not in the rounds table");
            }
            if (kind == 1 && !has_model_file(rows.text(2))) {
                m_problems.push_back(name + ": its model file " + model_file(rows.text(2)) +
                                     " is missing");
            }
        }
    }

    void check_package(Connection& db) {
        Statement statement(db, "SELECT value FROM settings WHERE key = 'package_sha256'");
        Execution rows(statement);
        if (!rows.next()) return;
        const std::string sha256 = rows.text(0);
        if (sha256.empty()) return;
        if (!util::is_sha256(sha256)) {
            m_problems.push_back("package '" + sha256 + "': not a sha256");
            return;
        }
        std::string problem = file_problem("packages/" + sha256 + ".tgz", -1, sha256);
        if (!problem.empty()) m_problems.push_back("package " + sha256 + ": " + problem);
    }

    fs::path m_root;
    std::vector<std::string> m_problems;
    std::set<std::string> m_models;
    std::set<std::int64_t> m_rounds;
};

}  // namespace

std::vector<std::string> check_data_dir(const fs::path& data_dir) {
    return DataDirCheck(data_dir).run();
}

}  // namespace fedcli::combiner
