// The combiner's persistent state: one SQLite file (data_dir/state.db) holding what State
// holds in memory — clients, sessions, rounds with their updates and validations, models,
// settings — plus the clients' log lines, so a restarted combiner picks up where it stopped.
//
// Writes never wait for the disk: save_*() copies the record into a queue, and one writer
// thread applies everything queued so far in one transaction (group commit), in call order.
// A failed write is reported to the error callback at once and thrown by the next flush();
// the in-memory state stays authoritative, and the next save of the same record repairs it.
// Reads (load(), logs()) use a second connection and see committed data only.
//
// The schema is plain tables with one column per field, so an operator can query the file
// with the sqlite3 shell; its version is PRAGMA user_version and each newer version is one
// more step in db.cpp's migration list.
//
// Thread-safety: every member function may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/proto/fedcli.pb.h"

namespace fedcli::combiner {

namespace v1 = fedcli::v1;

/// An access token as stored: its record and the SHA-256 (hex) of its secret.
struct StoredToken {
    v1::TokenInfo info;
    std::string secret_hash;
};

/// Everything load() gives back.
struct StoredState {
    /// All fields as saved except `online`, which is not stored (always false here).
    std::vector<v1::ClientInfo> clients;
    std::vector<v1::SessionInfo> sessions;  ///< oldest first (order of first save)
    /// Ascending round_id; header fields plus updates, rejected and validations, each in
    /// order of first save.
    std::vector<v1::RoundInfo> rounds;
    std::vector<v1::ModelInfo> models;            ///< oldest first (order of first save)
    std::map<std::string, std::string> settings;  ///< save_setting key/values
    std::uint64_t last_log_sequence = 0;          ///< highest LogEntry.sequence stored (0 = none)
    std::vector<StoredToken> tokens;              ///< oldest first (order of first save)
};

/// Which log entries Database::logs() returns.
struct LogQuery {
    std::string client_id;             ///< exact id; empty = all
    std::uint64_t round_id = 0;        ///< 0 = all
    std::string session_id;            ///< empty = all
    std::uint64_t after_sequence = 0;  ///< only entries with sequence > this
    std::uint32_t tail = 0;     ///< 0 = all; else only the last N matching (returned oldest first)
    std::size_t limit = 10000;  ///< at most this many, oldest first (after tail)
};

class Database {
  public:
    static constexpr int k_schema_version = 2;
    /// PRAGMA application_id of fedcli state databases ("FEDC"), so that another program's
    /// SQLite file is refused instead of migrated.
    static constexpr std::int32_t k_application_id = 0x46454443;

    /// Opens or creates the file (WAL, synchronous=FULL) and migrates it up to
    /// k_schema_version, each step in one transaction. Throws Error naming the file when it
    /// cannot be opened, is not a fedcli state database, or has a newer schema version.
    explicit Database(std::filesystem::path file);
    /// Writes what is queued (failures go to the error callback, never thrown) and joins the
    /// writer.
    ~Database();
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;

    const std::filesystem::path& file() const { return m_file; }
    /// The schema version the file had when it was opened (0 for a new file); it is
    /// k_schema_version now.
    int opened_schema_version() const;

    /// Reads everything but logs, as one snapshot. Meant for start-up: flushes queued
    /// writes first (and throws like flush() if one failed).
    StoredState load();

    // Queued writes, applied in call order. Each copies its arguments; none touches the disk.
    void save_client(const v1::ClientInfo& info);    ///< upsert by client_id
    void save_session(const v1::SessionInfo& info);  ///< upsert by session_id
    /// Upserts the header by round_id (its updates, rejected and validations are ignored:
    /// they have their own save_*).
    void save_round(const v1::RoundInfo& round);
    /// Upserts by task_id. Updates and rejected updates share one table, so a task saved
    /// as accepted and then as rejected (or the other way round) ends up as the latter.
    void save_update(std::uint64_t round_id, const v1::AcceptedUpdate& update);
    void save_rejected(std::uint64_t round_id, const v1::RejectedUpdate& update);
    /// Upserts by task_id.
    void save_validation(std::uint64_t round_id, const std::string& task_id,
                         const v1::ClientMetrics& metrics);
    void save_model(const v1::ModelInfo& model);  ///< upsert by model_id
    void save_setting(const std::string& key, const std::string& value);
    /// Upserts by token_id (schema version 2).
    void save_token(const v1::TokenInfo& info, const std::string& secret_hash);
    /// Sequences are set by the caller and increase; an entry with a stored sequence
    /// replaces it.
    void append_logs(std::vector<v1::LogEntry> entries);

    /// Blocks until everything queued before the call is committed to disk. Throws Error
    /// (naming the file and SQLite's message) if a queued write failed since the last flush.
    void flush();
    /// Called from the writer thread when a write fails (e.g. disk full), with a message
    /// naming the file. The callback must not call back into this Database's flush().
    void set_error_callback(std::function<void(const std::string&)> callback);

    /// Log entries matching `query`. Sees committed data only: flush() first to read
    /// one's own writes.
    std::vector<v1::LogEntry> logs(const LogQuery& query);

    /// Test hook: from this point in the queue on, writes that need the file to grow fail
    /// as on a full disk (SQLITE_FULL; PRAGMA max_page_count on the writer's connection).
    void simulate_full_disk();

  private:
    struct Impl;
    std::filesystem::path m_file;
    std::unique_ptr<Impl> m_impl;
};

/// Consistency check of a combiner data folder, for `fedcli combiner check` and crash tests:
/// data_dir/state.db must exist, be a fedcli state database and pass PRAGMA
/// integrity_check; every model row needs models/<id>.npz of that size and sha256; rounds
/// need known input models and, when committed, a known output model; accepted updates need
/// their models/<id>.npz; within a session (session_round, attempt) pairs are distinct and the
/// committed session rounds are 1..n; the package_sha256 setting needs packages/<sha>.tgz with
/// that sha256. Returns one line per problem (empty = consistent). Never creates the
/// database or changes its contents (it opens it read-only where SQLite can); leftover
/// "*.part" files are not problems (uploads resume from them).
std::vector<std::string> check_data_dir(const std::filesystem::path& data_dir);

}  // namespace fedcli::combiner
