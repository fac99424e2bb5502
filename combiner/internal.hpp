// Internals of the combiner, shared by its .cpp files (not installed, not included by users).
//
// Pieces:
//  - EventLog: the timestamped event lines of Options::log (one writer at a time).
//  - Store: the content-addressed files in data_dir (models/<sha>.npz, packages/<sha>.tgz)
//    and the per-file transfer locks that keep two uploads of one sha256 apart.
//  - Connection: one Federation.Connect stream; messages to the client go through a queue
//    drained by a writer thread, so nobody else ever blocks on a slow client.
//  - State: everything the combiner knows (clients, models, package, sessions, rounds,
//    tasks) as plain structs of protocol messages, in memory. Every change that must survive
//    a restart is also queued to the Database (combiner/db.hpp, data_dir/state.db) through
//    the persist_* helpers, under m_mutex, so the database sees changes in State's order.
//    At start the State is rebuilt from it (persist.cpp); tasks are not persisted (a
//    restart fails the open round and marks its session INTERRUPTED).
//  - CombinerCore (behind Combiner::Impl): the services' handlers, the session runner and the
//  watchdog.
//
// Locking: `CombinerCore::m_mutex` guards State and is never held across file I/O, folding or a
// blocking gRPC call. `CombinerCore::m_fold_mutex` guards the running session's aggregator (it is
// not thread-safe) and the opening/closing of rounds; when both are needed it is taken
// first. Connection and Store locks are leaves (nothing else is locked under them).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "combiner/auth.hpp"
#include "combiner/combiner.hpp"
#include "combiner/db.hpp"
#include "core/aggregate/aggregator.hpp"
#include "core/npz/npz.hpp"
#include "core/proto/fedcli.grpc.pb.h"
#include "core/util/ids.hpp"

namespace fedcli::combiner {

namespace v1 = fedcli::v1;
using Clock = std::chrono::steady_clock;

using util::is_sha256;
using util::lowercase;
using util::now_unix_ms;
using util::short_id;
/// `count` random lowercase hex digits (ids of clients, sessions, tasks).
std::string random_hex(std::size_t count);
/// "1.8 s" (one decimal).
std::string format_seconds(Clock::duration duration);

// ---------------------------------------------------------------------------------------

/// Event lines "<UTC ISO-8601 with ms>Z <message>" to a stream, each flushed; thread-safe.
class EventLog {
  public:
    explicit EventLog(std::ostream* out) : m_out(out) {}
    void write(const std::string& message);

  private:
    std::mutex m_mutex;
    std::ostream* m_out;
};

// ---------------------------------------------------------------------------------------

/// The combiner's files: data_dir/models/<sha256>.npz (seeds, global models and client
/// updates in one content-addressed store) and data_dir/packages/<sha256>.tgz. Uploads in
/// progress are "<final name>.part" next to them. Thread-safe.
class Store {
  public:
    explicit Store(std::filesystem::path data_dir) : m_root(std::move(data_dir)) {}

    /// Creates the folders; throws fedcli::Error naming the folder.
    void create() const;
    const std::filesystem::path& root() const { return m_root; }

    /// The final path of a file of this kind and (lowercase) sha256.
    std::filesystem::path path(v1::TransferKind kind, const std::string& sha256) const;
    std::filesystem::path model_path(const std::string& id) const {
        return path(v1::TRANSFER_KIND_MODEL, id);
    }
    bool has(v1::TransferKind kind, const std::string& sha256) const;

    /// Writes `parameters` into the model store (temporary file, sha256, rename) and returns
    /// its id.
    std::string add_model(const npz::ParameterSet& parameters) const;

    /// Serializes transfers of one file: waits until no other transfer holds `key`. Returns
    /// false (without the lock) when `give_up()` turns true while waiting.
    bool lock_transfer(const std::string& key, const std::function<bool()>& give_up);
    void unlock_transfer(const std::string& key);
    /// Wakes waiters so they re-check give_up() (used at shutdown).
    void wake_transfers();

  private:
    std::filesystem::path m_root;
    std::mutex m_transfer_mutex;
    std::condition_variable m_transfer_done;
    std::set<std::string> m_transfers;
};

// ---------------------------------------------------------------------------------------

/// One client's Federation.Connect stream. The handler thread reads; a writer thread owned
/// by this object writes what send() queued, in order. Thread-safe.
class Connection {
  public:
    using Stream = grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>;

    Connection(grpc::ServerContext* context, Stream* stream);
    ~Connection();  ///< stops the writer if still running
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    /// Queues a message; never blocks on the network. Dropped after the stream closed.
    void send(v1::ServerMessage message);
    /// Cancels the RPC (a newer stream of the same client, or shutdown): the handler's Read
    /// returns false soon after. Safe after the handler finished (then a no-op).
    void cancel();
    /// Shutdown: lets the writer send what is queued (CancelTask) until `deadline`, then
    /// cancels the RPC.
    void drain_then_cancel(Clock::time_point deadline);
    /// Called by the handler before it returns: stops the writer (cancelling the RPC if a
    /// write is stuck) and forgets the stream. Nothing is written afterwards.
    void finish();

  private:
    void write_loop();

    std::mutex m_mutex;
    std::condition_variable m_changed;
    grpc::ServerContext* m_context;
    Stream* m_stream;
    std::deque<v1::ServerMessage> m_queue;
    bool m_closing = false;
    bool m_writing = false;  ///< a Write is in flight
    bool m_writer_done = false;
    std::thread m_writer;
};

// ---------------------------------------------------------------------------------------
// State

struct ClientRecord {
    v1::ClientInfo info;  ///< id, name, version, online, status, last seen, package
    std::vector<std::string> capabilities;
    Clock::time_point last_message{};
    std::shared_ptr<Connection> connection;  ///< the current stream; null when none
    std::string token_id;  ///< the access token of the current stream ("" in insecure mode)

    bool has_capability(std::string_view name) const;
    /// "client 'c1' (id 3fa2b1c0)"
    std::string label() const;
    /// The name for messages (falls back to the short id).
    std::string display_name() const;
};

struct TaskRecord {
    std::string task_id;
    std::string client_id;
    std::string session_id;
    std::uint64_t round_id = 0;
    v1::TaskKind kind = v1::TASK_KIND_UNSPECIFIED;
    std::string model_id;
    /// While true, the task's phase (the round's training, or its validation) takes answers.
    bool open = true;
    /// Set once the task was answered (report accepted or refused, or a final TaskStatus);
    /// a repeated report gets this Ack again.
    std::optional<v1::Ack> answer;
};

struct SessionRecord {
    std::string id;
    v1::SessionConfig config;  ///< with defaults filled in
    std::string config_json;
    v1::SessionState state = v1::SESSION_STATE_RUNNING;
    std::string message;
    std::vector<v1::RoundInfo> rounds;  ///< every try, in order
    std::int64_t started_unix_ms = 0;
    std::int64_t ended_unix_ms = 0;

    /// Rounds that committed, and the newest committed model (else the starting model).
    std::uint32_t rounds_committed() const;
    std::string latest_model_id() const;
    /// Tries of a session round so far.
    std::uint32_t attempts(std::uint32_t session_round) const;
    v1::SessionInfo info() const;
    static SessionRecord from_info(const v1::SessionInfo& info);
};

/// Everything the combiner knows. Guarded by CombinerCore::m_mutex.
struct State {
    std::map<std::string, ClientRecord> clients;  ///< by client id
    std::vector<v1::ModelInfo> models;            ///< seeds and global models, oldest first
    std::string seed_model_id;
    std::string package_sha256;
    std::string package_signature;  ///< `fedcli package sign` line; empty: unsigned
    std::string package_name;
    std::uint64_t package_size = 0;
    std::vector<SessionRecord> sessions;  ///< oldest first
    std::unordered_map<std::string, TaskRecord> tasks;
    std::uint64_t last_round_id = 0;  ///< round ids increase across sessions and restarts
    std::string last_message;         ///< GetStatus.message
    std::uint64_t last_log_sequence = 0;

    /// Newest global model, else the seed; empty if none.
    std::string latest_model_id() const;
    const v1::ModelInfo* find_model(const std::string& id) const;
    /// By id or unique id prefix; null if none or ambiguous.
    SessionRecord* find_session(const std::string& id);
    const SessionRecord* find_session(const std::string& id) const;
    std::size_t clients_online() const;
};

// ---------------------------------------------------------------------------------------

/// The running session's aggregation state, owned by the session runner. The aggregator and
/// `records` are guarded by CombinerCore::m_fold_mutex.
struct ActiveSession {
    std::string id;
    std::unique_ptr<aggregate::Aggregator> aggregator;
    /// aggregator summary record index -> task id, for the round being folded.
    std::vector<std::string> records;
    bool stop_requested = false;    ///< end now; guarded by CombinerCore::m_mutex
    bool stop_after_round = false;  ///< end after the current round; guarded by m_mutex
    bool tasks_sent = false;        ///< the current round's tasks went out; guarded by m_mutex
    /// Where the aggregator's server state (fedavgm, FedOpt) is kept between rounds, so a
    /// resumed session continues the optimiser: <dir>/aggregator-<round id>.npz.
    std::filesystem::path state_dir;
    std::thread thread;
};

class CombinerCore {
  public:
    explicit CombinerCore(Options options);
    ~CombinerCore();
    CombinerCore(const CombinerCore&) = delete;
    CombinerCore& operator=(const CombinerCore&) = delete;

    void start();
    int port() const { return m_port; }
    void wait();
    void shutdown();

    /// Authenticates the call (access.cpp): OK with `caller` set when its token may make calls
    /// needing `needed` (admin tokens may do everything); UNAUTHENTICATED (no, malformed,
    /// unknown, expired or revoked token) or PERMISSION_DENIED otherwise. Everyone passes in
    /// insecure mode.
    grpc::Status authorize(const grpc::ServerContext* context, v1::TokenRole needed,
                           Caller& caller);
    /// PERMISSION_DENIED when a client token reports or uploads for another client than its
    /// own; OK for admin tokens and in insecure mode.
    grpc::Status check_acting_client(const Caller& caller, const std::string& client_id,
                                     std::string_view what) const;
    v1::CreateTokenResponse create_token(const v1::CreateTokenRequest& request,
                                         const Caller& caller, grpc::Status& status);
    v1::ListTokensResponse list_tokens();
    grpc::Status revoke_token(const v1::RevokeTokenRequest& request, const Caller& caller,
                              v1::RevokeTokenResponse* response);

    // Federation (federation.cpp)
    grpc::Status connect(grpc::ServerContext* context, Connection::Stream* stream,
                         const Caller& caller);
    v1::Ack report_update(const v1::UpdateReport& report);
    v1::Ack report_validation(const v1::ValidationReport& report);
    /// The task a report names, after the checks both kinds of report share (known task of
    /// this client, of `kind`, of `round_id`); null with `refusal` set otherwise. An
    /// answered task's earlier Ack also comes back as `refusal` (reports are idempotent).
    TaskRecord* find_reported_task(const std::string& task_id, const std::string& client_id,
                                   std::uint64_t round_id, v1::TaskKind kind,
                                   const std::string& what, v1::Ack& refusal);

    // Transfer (transfer_service.cpp)
    grpc::Status upload(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                        v1::UploadResult* result, const Caller& caller);
    grpc::Status download(grpc::ServerContext* context, const v1::DownloadRequest& request,
                          grpc::ServerWriter<v1::DownloadChunk>* writer);
    grpc::Status query_upload(const v1::UploadQuery& query, v1::UploadState* state);
    /// Counts an upload or download of a client token against
    /// Options::max_transfers_per_client (RESOURCE_EXHAUSTED beyond it); end_transfer()
    /// gives the slot back. Admin callers and unauthenticated mode are not counted.
    grpc::Status begin_transfer(const Caller& caller);
    /// Token bucket per network address for Connect attempts
    /// (Options::max_connects_per_second); false: refuse this one.
    bool admit_connect(const std::string& peer);
    void end_transfer(const Caller& caller);

    // Control (control.cpp)
    v1::Ack set_package(const v1::SetPackageRequest& request);
    v1::Ack set_seed_model(const v1::SetSeedModelRequest& request);
    v1::StartSessionResponse start_session(const v1::StartSessionRequest& request);
    v1::Ack stop_session(const v1::StopSessionRequest& request);
    v1::StatusResponse status();
    v1::ListClientsResponse list_clients();
    grpc::Status list_rounds(const v1::ListRoundsRequest& request, v1::ListRoundsResponse* out);
    v1::ListModelsResponse list_models();
    v1::StartSessionResponse resume_session(const v1::ResumeSessionRequest& request);
    v1::ListSessionsResponse list_sessions();
    /// Streams stored log lines (logs.cpp); with follow, new ones until the call is
    /// cancelled or the combiner stops.
    grpc::Status get_logs(grpc::ServerContext* context, const v1::GetLogsRequest& request,
                          grpc::ServerWriter<v1::LogBatch>* writer);

  private:
    // federation.cpp
    void handle_client_message(const std::string& client_id,
                               const std::shared_ptr<Connection>& connection,
                               const v1::ClientMessage& message);
    void handle_task_status(ClientRecord& client, const v1::TaskStatus& status);
    void watchdog_loop();
    /// Requires m_mutex. READY per docs/protocol.md: online, IDLE, and the current package
    /// installed (or a local project folder).
    bool is_ready(const ClientRecord& client) const;
    /// Requires m_mutex.
    void send_package_available(ClientRecord& client);

    // access.cpp
    /// Start-up with authentication on: makes an admin token and writes it to
    /// data_dir/admin.token (0600) unless a usable admin token exists.
    void bootstrap_admin_token();
    /// Closes the Connect streams of clients whose token is no longer usable (revoked,
    /// expired). Requires m_mutex.
    void close_streams_of_unusable_tokens();

    // persist.cpp
    /// Rebuilds m_state from the database (start-up): clients offline, open rounds failed,
    /// running sessions INTERRUPTED.
    void load_state();
    /// Queue the record's current form for the database. Require m_mutex.
    void persist_client(const ClientRecord& client);
    void persist_session(const SessionRecord& session);
    void persist_round(const v1::RoundInfo& round);
    void persist_model(const v1::ModelInfo& model);
    /// Records a train task's outcome on its client's failure streak. Requires m_mutex.
    void count_task_outcome(const std::string& client_id, bool success);

    // logs.cpp
    void handle_log_lines(const ClientRecord& client, const v1::LogLines& lines);

    // control.cpp
    /// Why no session may start now ("" = it may). Reaps the previous runner (unlocking
    /// `lock` meanwhile). Requires m_fold_mutex and m_mutex (held by `lock`).
    std::string refuse_if_busy(std::unique_lock<std::mutex>& lock);
    /// Starts the runner of `session` (state RUNNING already set) and records it. Requires
    /// m_mutex and m_fold_mutex, and no runner left (refuse_if_busy).
    void launch_session(SessionRecord& session, std::unique_ptr<aggregate::Aggregator> aggregator);

    // session.cpp
    void run_session(ActiveSession* session);
    enum class RoundEnd { committed, failed, retry, stopped };
    /// The runner's models: the round's input (`global`, shared with the aggregator), the
    /// memory the next result is written into (`spare`), and the previous input, which
    /// becomes `spare` once the aggregator has let go of it. So a session holds two models
    /// whatever the number of rounds, and reuses their memory (fresh pages are slow).
    struct RoundModels {
        std::shared_ptr<npz::ParameterSet> global;
        std::shared_ptr<npz::ParameterSet> retired;
        npz::ParameterSet spare;
        std::string global_id;
    };
    /// One round; on failure `failure` says why.
    RoundEnd run_round(ActiveSession* session, std::size_t session_index, RoundModels& models,
                       std::uint32_t session_round, std::string& failure);
    /// Requires m_mutex. Why a stopped round ends: the operator's stop or the shutdown.
    std::string stop_reason() const {
        return m_stopping ? "the combiner is shutting down" : "session stopped by the operator";
    }
    /// Whether `client` may be selected by the session (not skipped for failures).
    bool is_selectable(const ClientRecord& client, const v1::SessionConfig& config) const;
    /// Sends validate tasks for the round's new model and waits for the reports. Returns
    /// false when the session was stopped meanwhile.
    bool run_validation(ActiveSession* session, std::size_t session_index, std::uint64_t round_id,
                        const std::vector<std::string>& client_ids, const std::string& model_id);
    /// Requires m_mutex. Closes the given tasks; cancels (CancelTask) those not answered.
    void close_tasks(const std::vector<std::string>& task_ids, const std::string& reason);
    /// Requires m_mutex.
    v1::RoundInfo& round_info(std::size_t session_index, std::uint64_t round_id);
    /// The settings JSON of the session's tasks for `round`: the session's settings plus
    /// round, session_round and session_id.
    std::string task_settings(const SessionRecord& session, const v1::RoundInfo& round) const;

    /// Writes an event line. With `status`, it also becomes GetStatus.message (requires
    /// m_mutex then).
    void log(const std::string& message);
    void log_status(const std::string& message);

    Options m_options;
    /// Open transfers per client token (begin_transfer); guarded by m_mutex.
    std::map<std::string, std::size_t> m_open_transfers;
    /// Connect attempts per network address: tokens left and when they were counted
    /// (admit_connect); guarded by m_mutex.
    struct ConnectBucket {
        double tokens = 0;
        Clock::time_point updated{};
    };
    std::map<std::string, ConnectBucket> m_connect_buckets;
    EventLog m_log;
    Store m_store;
    std::unique_ptr<Database> m_db;          ///< from start()
    TokenRegistry m_tokens;                  ///< access tokens (saved to m_db)
    std::condition_variable m_logs_changed;  ///< new log lines (with m_mutex)

    mutable std::mutex m_mutex;
    std::condition_variable m_changed;       ///< any change the session runner may wait for
    std::condition_variable m_stop_changed;  ///< wakes the watchdog at shutdown
    State m_state;
    std::unique_ptr<ActiveSession> m_active;
    std::mutex m_fold_mutex;

    std::unique_ptr<grpc::Server> m_server;
    std::vector<std::unique_ptr<grpc::Service>> m_services;
    int m_port = 0;
    bool m_started = false;
    bool m_stopping = false;  ///< guarded by m_mutex; read by waiters
    bool m_shut_down = false;
    std::condition_variable m_shut_down_changed;
    std::mutex m_shutdown_mutex;  ///< one shutdown() at a time
    std::thread m_watchdog;
};

}  // namespace fedcli::combiner
