#include "client/client.hpp"

#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <stop_token>
#include <system_error>
#include <thread>
#include <variant>

#include "core/dispatch/dispatch.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/error.hpp"
#include "core/package/package.hpp"
#include "core/project/project.hpp"
#include "core/proto/fedcli.grpc.pb.h"
#include "core/proto/rpc.hpp"
#include "core/util/ids.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::client {

namespace {

namespace fs = std::filesystem;
namespace v1 = fedcli::v1;
using Clock = std::chrono::steady_clock;

constexpr std::uint32_t k_protocol_version = 1;
constexpr std::chrono::milliseconds k_default_heartbeat{2000};
/// A welcome on a connection that stayed up this long resets the reconnect backoff (a
/// combiner restarted twice in a row is reached again quickly; one that drops each stream
/// at once is not hammered).
constexpr std::chrono::seconds k_stable_connection{1};
/// Deadline for one report RPC; a report that does not go through is retried.
constexpr std::chrono::seconds k_report_rpc_timeout{30};
/// Without a task deadline, reports are retried for this long.
constexpr std::chrono::minutes k_report_retry_window{5};
/// How many recent tasks' input models stay in work_dir/models.
constexpr std::size_t k_models_kept = 2;
// Entry-point output streamed to the combiner (LogLines): batched for up to this long,
// at most this many lines per task (the log file in the work folder has everything),
// lines cut at this length, and at most this many lines held while disconnected.
constexpr std::chrono::milliseconds k_log_batch_delay{200};
constexpr std::size_t k_log_batch_lines = 256;
constexpr std::size_t k_log_lines_per_task = 20000;
constexpr std::size_t k_log_line_bytes = 4096;
constexpr std::size_t k_log_lines_held = 10000;
constexpr const char* k_startup_marker = ".fedcli-startup-done";

using util::is_sha256;
using util::lowercase;
using util::short_id;
using util::utc_timestamp;

std::string seconds_text(std::chrono::milliseconds duration) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f s", static_cast<double>(duration.count()) / 1000.0);
    return text;
}

std::string first_line(const std::string& text) {
    return text.substr(0, text.find('\n'));
}

/// One line for the log: the first line, and when it announces more ("...output (...):"),
/// the last non-empty line that follows, trimmed ("...: out of memory").
std::string summary_line(const std::string& text) {
    std::string line = first_line(text);
    if (line.empty() || line.back() != ':' || line.size() == text.size()) return line;
    std::string_view rest = std::string_view(text).substr(line.size());
    while (!rest.empty() && (rest.back() == '\n' || rest.back() == ' ')) rest.remove_suffix(1);
    std::string_view last = rest.substr(rest.rfind('\n') + 1);
    while (!last.empty() && last.front() == ' ') last.remove_prefix(1);
    return last.empty() ? line : line + " " + std::string(last);
}

// The log line of a failed package install; install_failure_reason() reads it back.
constexpr std::string_view k_not_installed = " not installed: ";
constexpr std::string_view k_takes_no_tasks =
    "; this client takes no tasks until a working package arrives";

std::string host_name() {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "client";
    return name;
}

/// Writes `text` to `path` through a temporary file renamed into place: readers (and a
/// crash) see the old or the new content, never half of it.
void write_atomically(const fs::path& path, const std::string& text) {
    const fs::path temporary = path.string() + ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        out << text;
        out.flush();
        if (!out) throw Error("cannot write " + temporary.string());
    }
    std::error_code error;
    fs::rename(temporary, path, error);
    if (error) throw Error("cannot rename " + temporary.string() + ": " + error.message());
}

std::string read_trimmed(const fs::path& path) {
    std::ifstream in(path);
    if (!in) return {};
    std::string text;
    std::getline(in, text);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    return text;
}

void remove_quietly(const fs::path& path) {
    std::error_code error;
    fs::remove_all(path, error);
}

/// A task failed: what goes into TaskStatus FAILED.
struct TaskFailure {
    int exit_code = 0;
    std::string message;
    std::vector<std::string> tail;
};

/// The task was cancelled (CancelTask or stop()).
struct TaskCancelled {};

/// The combiner refused a report (already logged with its reason; final, not retried).
struct ReportRefused {};

struct InstallJob {
    std::string sha256;
    std::uint64_t size = 0;
    std::string signature;  ///< empty: unsigned
};

using Job = std::variant<InstallJob, v1::Task>;

}  // namespace

class Client::Impl {
  public:
    explicit Impl(Options options) : m_options(std::move(options)) {
        if (m_options.name.empty()) m_options.name = host_name();
    }

    void run();
    void stop();

  private:
    // Logging -----------------------------------------------------------------------------
    void log(const std::string& message) {
        if (!m_options.log) return;
        std::lock_guard lock(m_log_mutex);
        *m_options.log << utc_timestamp() << ' ' << message << '\n';
        m_options.log->flush();
    }

    // Connection --------------------------------------------------------------------------
    void prepare_work_dir();
    void connection_loop();
    /// One stream: Hello, Welcome, then messages until it ends. Returns whether a Welcome
    /// arrived; `why` says how it ended.
    bool connect_once(std::string& why, grpc::StatusCode& code);
    void heartbeat_loop(std::chrono::milliseconds interval);
    void handle(const v1::ServerMessage& message);
    /// Writes on the current stream; false (message dropped) when not connected.
    bool send(const v1::ClientMessage& message);
    void send_task_status(const std::string& task_id, v1::TaskState state,
                          const std::string& message = {}, const TaskFailure* failure = nullptr);
    void set_status(v1::ClientStatus status);
    /// Queues a line of the running task's entry point for the combiner (heartbeat thread
    /// sends it).
    void stream_line(const std::string& task_id, std::string_view line, dispatch::Stream stream);
    /// Waits up to `delay` or until stop(); false when stopped.
    bool wait_or_stop(std::chrono::milliseconds delay);
    bool stopping() const { return m_stop.stop_requested(); }
    std::string client_id() {
        std::lock_guard lock(m_mutex);
        return m_client_id;
    }

    // Worker ------------------------------------------------------------------------------
    void worker_loop();
    void install_package(const InstallJob& job);
    /// Runs `fedcli ARGS...` (Options::fedcli_executable) as a child under memory and CPU
    /// caps; `what` names it in errors. Returns its stdout.
    struct FedcliRun {
        dispatch::ProcessResult result;
        std::string out;
        /// The child's own error message (its last stderr line, without "fedcli: error: ").
        std::string reason;
    };
    FedcliRun run_fedcli(std::vector<std::string> args, const std::string& what);
    [[noreturn]] static void fail_fedcli(const FedcliRun& run, const std::string& what,
                                         const std::string& command);
    void unpack_package(const fs::path& archive, const fs::path& folder);
    project::Project load_project(const fs::path& folder);
    /// Whether the package may run (Options::package_pins, trusted_keys,
    /// trust_any_package): says why it is trusted, or throws fedcli::Error saying why not.
    std::string check_trust(const InstallJob& job) const;
    void run_startup(const project::Project& project, const fs::path& marker);
    void run_task(const v1::Task& task);
    fs::path fetch_model(const v1::Task& task, std::stop_token stop);
    dispatch::RunResult run_entry(const v1::Task& task, const std::string& entry,
                                  const fs::path& input, const fs::path& output,
                                  std::stop_token stop);
    /// Uploads the update and reports it; returns its id.
    std::string report_update(const v1::Task& task, const dispatch::RunResult& result,
                              const fs::path& output, std::stop_token stop);
    void report_validation(const v1::Task& task, const dispatch::RunResult& result,
                           std::stop_token stop);
    /// Calls a report RPC until it goes through (Ack), the task's deadline or the retry
    /// window passes, or the client stops. Throws TaskFailure when it never went through.
    v1::Ack call_report(const v1::Task& task, const std::string& what,
                        const std::function<grpc::Status(grpc::ClientContext*, v1::Ack*)>& call,
                        std::stop_token stop);
    void prune_models(const std::string& model_id);

    Options m_options;
    std::stop_source m_stop;
    std::mutex m_log_mutex;

    std::shared_ptr<grpc::Channel> m_channel;
    std::unique_ptr<v1::Federation::Stub> m_federation;
    std::unique_ptr<v1::Transfer::Stub> m_transfer;

    // Guards everything below up to the worker's state.
    std::mutex m_mutex;
    std::condition_variable_any m_wake;  // backoff waits, heartbeats, worker queue
    std::string m_client_id;             // from work_dir/client_id, then from Welcome
    grpc::ClientContext* m_stream_context = nullptr;
    v1::ClientStatus m_status = v1::CLIENT_STATUS_IDLE;
    bool m_status_changed = false;
    bool m_heartbeat_stop = false;
    std::string m_installed_package;  // sha256 of the package tasks run with ("" = none)
    std::optional<project::Project> m_project;
    std::deque<Job> m_jobs;
    std::string m_running_task;
    std::optional<std::stop_source> m_task_stop;  // the running task's cancellation

    // Entry-point output not yet sent, oldest first; the heartbeat thread sends it once
    // m_log_due has passed.
    std::deque<v1::LogLines> m_pending_logs;
    std::size_t m_pending_log_lines = 0;
    std::size_t m_task_log_lines = 0;  // lines of the running task so far
    Clock::time_point m_log_due{};

    // Writes on the stream (heartbeats, task statuses, log lines) go one at a time.
    std::mutex m_write_mutex;
    grpc::ClientReaderWriter<v1::ClientMessage, v1::ServerMessage>* m_stream = nullptr;
    std::uint64_t m_sequence = 0;

    // Worker-only state.
    std::deque<std::string> m_recent_models;
};

// ---------------------------------------------------------------------------------------
// Start and stop

void Client::Impl::prepare_work_dir() {
    if (m_options.work_dir.empty()) throw Error("client: no work folder given");
    std::error_code error;
    m_options.work_dir = fs::absolute(m_options.work_dir, error);
    for (const char* folder : {"", "packages", "package", "models", "tasks", "logs"}) {
        fs::create_directories(m_options.work_dir / folder, error);
        if (error) {
            throw Error("client work folder " + (m_options.work_dir / folder).string() +
                        ": cannot create: " + error.message());
        }
    }
    m_client_id = read_trimmed(m_options.work_dir / "client_id");
}

void Client::Impl::run() {
    proto::check_target(m_options.combiner, "combiner address");
    prepare_work_dir();
    if (m_options.project) {
        project::Project project;
        try {
            project = load_project(*m_options.project);
        } catch (const Error& failure) {
            throw failure.with_context("client project " + m_options.project->string());
        }
        for (const std::string& problem : project::check_for_client(project)) {
            log("warning: " + problem);
        }
        log("using local project " + project.directory.string());
        if (project.find("startup")) {
            set_status(v1::CLIENT_STATUS_PREPARING);
            try {
                // A local project may change between daemon runs: startup runs at each start.
                run_startup(project, {});
            } catch (const Error&) {
                if (stopping()) return;
                throw;
            }
            set_status(v1::CLIENT_STATUS_IDLE);
        }
        std::lock_guard lock(m_mutex);
        m_project = std::move(project);
    }
    if (stopping()) return;

    m_channel = proto::make_channel(m_options.combiner, m_options.channel);
    m_federation = v1::Federation::NewStub(m_channel);
    m_transfer = v1::Transfer::NewStub(m_channel);

    std::thread worker([this] { worker_loop(); });
    try {
        connection_loop();
    } catch (...) {
        m_stop.request_stop();
        m_wake.notify_all();
        worker.join();
        throw;
    }
    m_stop.request_stop();
    m_wake.notify_all();
    worker.join();
}

void Client::Impl::stop() {
    m_stop.request_stop();
    std::lock_guard lock(m_mutex);
    // A blocked Read on the stream returns once its call is cancelled.
    if (m_stream_context) m_stream_context->TryCancel();
    if (m_task_stop) m_task_stop->request_stop();
    m_wake.notify_all();
}

bool Client::Impl::wait_or_stop(std::chrono::milliseconds delay) {
    std::unique_lock lock(m_mutex);
    m_wake.wait_for(lock, delay, [this] { return stopping(); });
    return !stopping();
}

// ---------------------------------------------------------------------------------------
// Connection

void Client::Impl::connection_loop() {
    std::mt19937_64 random(std::random_device{}());
    std::chrono::milliseconds delay = m_options.backoff_initial;
    while (!stopping()) {
        const auto started = Clock::now();
        std::string why;
        grpc::StatusCode code = grpc::StatusCode::OK;
        const bool welcomed = connect_once(why, code);
        if (stopping()) break;
        // The combiner refused the token: retrying cannot help, the operator must act.
        if (code == grpc::StatusCode::UNAUTHENTICATED ||
            code == grpc::StatusCode::PERMISSION_DENIED) {
            throw Error("the combiner at " + m_options.combiner + " refused this client: " + why);
        }
        if (welcomed && Clock::now() - started >= k_stable_connection) {
            delay = m_options.backoff_initial;
        }
        // ±25% jitter spreads a crowd of clients reconnecting to a restarted combiner.
        std::uniform_real_distribution<double> jitter(0.75, 1.25);
        const auto wait = std::chrono::milliseconds(
            static_cast<std::int64_t>(static_cast<double>(delay.count()) * jitter(random)));
        log((welcomed ? "disconnected from " : "cannot connect to ") + m_options.combiner + ": " +
            why + "; retrying in " + seconds_text(wait));
        if (!wait_or_stop(wait)) break;
        delay = std::min(delay * 2, std::max(m_options.backoff_max, m_options.backoff_initial));
    }
}

bool Client::Impl::connect_once(std::string& why, grpc::StatusCode& code) {
    grpc::ClientContext context;
    {
        std::lock_guard lock(m_mutex);
        if (stopping()) return false;
        m_stream_context = &context;
    }
    auto stream = m_federation->Connect(&context);

    v1::ClientMessage hello_message;
    v1::Hello* hello = hello_message.mutable_hello();
    hello->set_client_id(client_id());
    hello->set_name(m_options.name);
    hello->set_version(FEDCLI_VERSION);
    hello->set_protocol_version(k_protocol_version);
    for (const char* capability : {"train", "validate", "predict", "resume-upload"}) {
        hello->add_capabilities(capability);
    }
    if (m_options.project) hello->add_capabilities("local-package");
    {
        std::lock_guard lock(m_mutex);
        hello->set_package_sha256(m_installed_package);
    }

    bool welcomed = false;
    std::thread heartbeats;
    v1::ServerMessage message;
    if (stream->Write(hello_message) && stream->Read(&message)) {
        if (!message.has_welcome()) {
            why = "the combiner's first message is not a Welcome";
            context.TryCancel();
        } else {
            welcomed = true;
            const v1::Welcome& welcome = message.welcome();
            if (welcome.client_id().empty()) {
                why = "the combiner's Welcome has no client id";
                context.TryCancel();
                welcomed = false;
            } else {
                if (welcome.client_id() != client_id()) {
                    {
                        std::lock_guard lock(m_mutex);
                        m_client_id = welcome.client_id();
                    }
                    try {
                        write_atomically(m_options.work_dir / "client_id",
                                         welcome.client_id() + "\n");
                    } catch (const Error& failure) {
                        log(std::string("warning: client id not saved: ") + failure.what());
                    }
                }
                log("connected to " + m_options.combiner + " as client '" + m_options.name +
                    "' (id " + short_id(welcome.client_id()) + ", combiner " +
                    welcome.combiner_version() + ")");
                const std::chrono::milliseconds interval =
                    welcome.heartbeat_interval_ms() > 0
                        ? std::chrono::milliseconds(welcome.heartbeat_interval_ms())
                        : k_default_heartbeat;
                {
                    std::lock_guard lock(m_write_mutex);
                    m_stream = stream.get();
                    m_sequence = 0;
                }
                {
                    std::lock_guard lock(m_mutex);
                    m_heartbeat_stop = false;
                    m_status_changed = true;  // the first heartbeat goes out at once
                }
                heartbeats = std::thread([this, interval] { heartbeat_loop(interval); });
                while (stream->Read(&message)) handle(message);
            }
        }
    }

    // The stream is over: no more writes on it, then collect its status.
    {
        std::lock_guard lock(m_write_mutex);
        m_stream = nullptr;
    }
    {
        std::lock_guard lock(m_mutex);
        m_heartbeat_stop = true;
    }
    m_wake.notify_all();
    if (heartbeats.joinable()) heartbeats.join();
    grpc::Status status = stream->Finish();
    {
        std::lock_guard lock(m_mutex);
        m_stream_context = nullptr;
    }
    code = status.error_code();
    if (why.empty()) {
        if (status.ok()) {
            why = "the combiner closed the stream";
        } else if (code == grpc::StatusCode::UNAUTHENTICATED ||
                   code == grpc::StatusCode::PERMISSION_DENIED) {
            why = status.error_message();
        } else {
            why = proto::status_text(status) +
                  (welcomed ? std::string()
                            : proto::transport_hint(m_options.combiner, m_options.channel, status));
        }
    }
    return welcomed;
}

void Client::Impl::heartbeat_loop(std::chrono::milliseconds interval) {
    std::unique_lock lock(m_mutex);
    auto next_beat = Clock::now() + interval;
    while (!m_heartbeat_stop) {
        const auto now = Clock::now();
        const bool beat = m_status_changed || now >= next_beat;
        const bool flush = !m_pending_logs.empty() && now >= m_log_due;
        if (!beat && !flush) {
            auto deadline = next_beat;
            if (!m_pending_logs.empty()) deadline = std::min(deadline, m_log_due);
            m_wake.wait_until(lock, deadline);
            continue;
        }
        std::vector<v1::ClientMessage> messages;
        if (flush) {
            for (auto& lines : m_pending_logs) {
                *messages.emplace_back().mutable_log_lines() = std::move(lines);
            }
            m_pending_logs.clear();
            m_pending_log_lines = 0;
        }
        if (beat) {
            m_status_changed = false;
            next_beat = now + interval;
            v1::Heartbeat* heartbeat = messages.emplace_back().mutable_heartbeat();
            heartbeat->set_status(m_status);
            heartbeat->set_package_sha256(m_installed_package);
        }
        lock.unlock();
        {
            std::lock_guard write_lock(m_write_mutex);
            for (auto& message : messages) {
                if (!m_stream) break;
                if (message.has_heartbeat())
                    message.mutable_heartbeat()->set_sequence(++m_sequence);
                m_stream->Write(message);
            }
        }
        lock.lock();
    }
}

void Client::Impl::stream_line(const std::string& task_id, std::string_view line,
                               dispatch::Stream stream) {
    {
        std::lock_guard lock(m_mutex);
        if (++m_task_log_lines > k_log_lines_per_task) {
            if (m_task_log_lines != k_log_lines_per_task + 1) return;
            line = "[fedcli: further output is not streamed; it is in the client's log file]";
        }
        const v1::LogStream kind =
            stream == dispatch::Stream::err ? v1::LOG_STREAM_STDERR : v1::LOG_STREAM_STDOUT;
        if (m_pending_logs.empty() || m_pending_logs.back().task_id() != task_id ||
            m_pending_logs.back().stream() != kind) {
            if (m_pending_logs.empty()) m_log_due = Clock::now() + k_log_batch_delay;
            v1::LogLines& lines = m_pending_logs.emplace_back();
            lines.set_task_id(task_id);
            lines.set_stream(kind);
        }
        std::string text(line.substr(0, k_log_line_bytes));
        if (line.size() > k_log_line_bytes) text += " [...]";
        m_pending_logs.back().add_lines(std::move(text));
        ++m_pending_log_lines;
        // While disconnected the oldest lines go first.
        while (m_pending_log_lines > k_log_lines_held && !m_pending_logs.empty()) {
            auto* lines = m_pending_logs.front().mutable_lines();
            lines->erase(lines->begin());
            --m_pending_log_lines;
            if (lines->empty()) m_pending_logs.pop_front();
        }
        if (m_pending_log_lines < k_log_batch_lines) return;
        m_log_due = Clock::now();
    }
    m_wake.notify_all();
}

bool Client::Impl::send(const v1::ClientMessage& message) {
    std::lock_guard lock(m_write_mutex);
    if (!m_stream) return false;
    return m_stream->Write(message);
}

void Client::Impl::send_task_status(const std::string& task_id, v1::TaskState state,
                                    const std::string& text, const TaskFailure* failure) {
    v1::ClientMessage message;
    v1::TaskStatus* status = message.mutable_task_status();
    status->set_task_id(task_id);
    status->set_state(state);
    status->set_message(text);
    if (failure) {
        status->set_exit_code(failure->exit_code);
        for (const std::string& line : failure->tail) status->add_tail(line);
    }
    // Not connected: dropped; the combiner accounts the task to its round's timeout.
    send(message);
}

void Client::Impl::set_status(v1::ClientStatus status) {
    {
        std::lock_guard lock(m_mutex);
        if (m_status == status) return;
        m_status = status;
        m_status_changed = true;
    }
    m_wake.notify_all();
}

void Client::Impl::handle(const v1::ServerMessage& message) {
    if (message.has_package_available()) {
        const v1::PackageAvailable& package = message.package_available();
        if (m_options.project) {
            log("package " + short_id(package.sha256()) +
                " offered; ignored: this client runs the local project " +
                m_options.project->string());
            return;
        }
        std::lock_guard lock(m_mutex);
        // Only the newest offer matters: drop older install jobs still waiting.
        std::erase_if(m_jobs,
                      [](const Job& job) { return std::holds_alternative<InstallJob>(job); });
        if (lowercase(package.sha256()) == m_installed_package) return;
        m_jobs.push_back(
            InstallJob{lowercase(package.sha256()), package.size(), package.signature()});
        m_wake.notify_all();
    } else if (message.has_task()) {
        const v1::Task& task = message.task();
        log("task " + short_id(task.task_id()) +
            " received: " + std::string(proto::task_kind_name(task.kind())) + ", round " +
            std::to_string(task.round_id()) + ", model " + short_id(task.model_id()));
        send_task_status(task.task_id(), v1::TASK_STATE_RECEIVED);
        std::lock_guard lock(m_mutex);
        m_jobs.push_back(task);
        m_wake.notify_all();
    } else if (message.has_cancel_task()) {
        const v1::CancelTask& cancel = message.cancel_task();
        bool queued = false;
        {
            std::lock_guard lock(m_mutex);
            if (m_running_task == cancel.task_id() && m_task_stop) {
                m_task_stop->request_stop();
            } else {
                queued = std::erase_if(m_jobs, [&](const Job& job) {
                             const auto* task = std::get_if<v1::Task>(&job);
                             return task && task->task_id() == cancel.task_id();
                         }) > 0;
            }
        }
        log("task " + short_id(cancel.task_id()) + " cancelled by the combiner" +
            (cancel.reason().empty() ? "" : ": " + cancel.reason()));
        if (queued) send_task_status(cancel.task_id(), v1::TASK_STATE_CANCELLED, cancel.reason());
    }
}

// ---------------------------------------------------------------------------------------
// Worker: package installs and tasks, one at a time

void Client::Impl::worker_loop() {
    while (true) {
        Job job;
        {
            std::unique_lock lock(m_mutex);
            m_wake.wait(lock, [this] { return stopping() || !m_jobs.empty(); });
            if (stopping()) return;
            job = std::move(m_jobs.front());
            m_jobs.pop_front();
            if (auto* task = std::get_if<v1::Task>(&job)) {
                m_running_task = task->task_id();
                m_task_stop.emplace();
                if (m_stop.stop_requested()) m_task_stop->request_stop();
            }
        }
        if (auto* install = std::get_if<InstallJob>(&job)) {
            install_package(*install);
        } else {
            run_task(std::get<v1::Task>(job));
            std::lock_guard lock(m_mutex);
            m_running_task.clear();
            m_task_stop.reset();
        }
#ifdef __GLIBC__
        // Transfers and output lines used a few MiB of heap; an idle daemon gives them back
        // to the system instead of keeping them resident until the next task.
        ::malloc_trim(0);
#endif
    }
}

void Client::Impl::run_startup(const project::Project& project, const fs::path& marker) {
    const auto started = Clock::now();
    log("running startup of " + project.directory.string());
    dispatch::RunRequest request;
    request.client_name = m_options.name;
    request.data_path = m_options.data_path;
    request.python = m_options.python;
    request.environment = m_options.environment;
    request.timeout = m_options.entry_point_timeout;
    request.limits = m_options.entry_point_limits;
    request.log_file = m_options.work_dir / "logs" / "startup.log";
    request.stop = m_stop.get_token();
    if (m_options.echo_output) {
        request.on_line = [this](std::string_view line, dispatch::Stream) {
            log("[startup] " + std::string(line));
        };
    }
    dispatch::run_entry_point(project, "startup", request);
    if (!marker.empty()) write_atomically(marker, "");
    log("startup done in " + seconds_text(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 Clock::now() - started)));
}

std::string Client::Impl::check_trust(const InstallJob& job) const {
    const auto& pins = m_options.package_pins;
    if (std::find(pins.begin(), pins.end(), job.sha256) != pins.end()) {
        return "trusted: its sha256 is pinned (--package-sha256)";
    }
    if (!job.signature.empty() && !m_options.trusted_keys.empty()) {
        try {
            return "trusted: signed by key " +
                   package::verify_package(job.signature, job.sha256, m_options.trusted_keys);
        } catch (const Error& error) {
            if (!m_options.trust_any_package) {
                throw Error(std::string(error.what()) + "; refusing to run its code");
            }
        }
    }
    if (m_options.trust_any_package) {
        return "NOT VERIFIED: running it because of --trust-any-package";
    }
    throw Error("package " + short_id(job.sha256) + " is " +
                (job.signature.empty() ? std::string("unsigned")
                                       : std::string("signed, but no --trust-key was given")) +
                " and its sha256 is not pinned: refusing to run its code (pass --trust-key "
                "PUBLIC_KEY, --package-sha256 " +
                job.sha256 + ", or --trust-any-package)");
}

Client::Impl::FedcliRun Client::Impl::run_fedcli(std::vector<std::string> args,
                                                 const std::string& what) {
    if (m_options.fedcli_executable.empty()) {
        throw Error("cannot " + what +
                    ": no fedcli executable to run (Options::fedcli_executable)");
    }
    FedcliRun run;
    std::string last_error;
    dispatch::ProcessSpec spec;
    spec.executable = m_options.fedcli_executable;
    spec.argv = {"fedcli"};
    spec.argv.insert(spec.argv.end(), std::make_move_iterator(args.begin()),
                     std::make_move_iterator(args.end()));
    spec.limits.memory_bytes = std::uint64_t{1} << 30;
    spec.limits.cpu_seconds = 300;
    spec.tail_lines = 5;
    spec.stop = m_stop.get_token();
    spec.on_line = [&](std::string_view line, dispatch::Stream stream) {
        // Lines over k_max_line_bytes arrive in pieces: stdout is kept whole.
        if (stream == dispatch::Stream::out) run.out.append(line);
        if (stream == dispatch::Stream::err && !line.empty()) last_error = line;
    };
    run.result = dispatch::run_process(spec);
    const std::string prefix = "fedcli: error: ";
    if (last_error.rfind(prefix, 0) == 0) last_error.erase(0, prefix.size());
    run.reason = std::move(last_error);
    return run;
}

void Client::Impl::fail_fedcli(const FedcliRun& run, const std::string& what,
                               const std::string& command) {
    throw Error(what + " failed (`fedcli " + command + "` " + run.result.describe() + ")" +
                (run.reason.empty() ? std::string() : ": " + run.reason));
}

void Client::Impl::unpack_package(const fs::path& archive, const fs::path& folder) {
    // `fedcli package extract` unpacks into a temporary folder renamed into place (a crash
    // never leaves half a package under the final name), in a child process: a hostile
    // archive meets the package limits and the process's own memory and CPU-time caps, and
    // the daemon never loads libarchive.
    const package::Limits& limits = m_options.package_limits;
    FedcliRun run = run_fedcli({"package", "extract", archive.string(), folder.string(),
                                "--max-package-bytes=" + std::to_string(limits.max_package_bytes),
                                "--max-entries=" + std::to_string(limits.max_entries),
                                "--max-bytes=" + std::to_string(limits.max_total_bytes),
                                "--max-file-bytes=" + std::to_string(limits.max_file_bytes)},
                               "unpack the package");
    if (!run.result.succeeded()) fail_fedcli(run, "unpacking", "package extract");
}

project::Project Client::Impl::load_project(const fs::path& folder) {
    // The project file and its python_env file are YAML, read by a `fedcli project validate`
    // child that prints the project as JSON, so the daemon never loads yaml-cpp (about
    // 0.3 MiB of its idle RSS). A project with problems (check_for_client) still prints it
    // and exits 1; the caller reports those problems itself.
    FedcliRun run = run_fedcli({"project", "validate", "--json", "--path", folder.string()},
                               "read the project");
    const bool loaded = run.result.succeeded() ||
                        (run.result.exit_code == 1 && !run.out.empty() && run.out[0] == '{');
    if (!loaded) fail_fedcli(run, "reading the project", "project validate");
    return project::from_json(run.out, "`fedcli project validate --json` of " + folder.string());
}

void Client::Impl::install_package(const InstallJob& job) {
    const auto started = Clock::now();
    set_status(v1::CLIENT_STATUS_PREPARING);
    {
        // Until the new package works, the client must not be chosen for tasks.
        std::lock_guard lock(m_mutex);
        m_installed_package.clear();
        m_project.reset();
        m_status_changed = true;
    }
    m_wake.notify_all();
    try {
        if (!is_sha256(job.sha256)) throw Error("malformed package sha256 '" + job.sha256 + "'");
        log("package " + short_id(job.sha256) + " available (" + std::to_string(job.size) +
            " bytes)");
        log("package " + short_id(job.sha256) + " " + check_trust(job));
        const fs::path archive = m_options.work_dir / "packages" / (job.sha256 + ".tgz");
        const fs::path folder = m_options.work_dir / "package" / job.sha256;
        std::error_code error;
        if (!fs::exists(folder, error)) {
            if (!fs::exists(archive, error) || util::sha256_file(archive) != job.sha256) {
                remove_quietly(archive);
                proto::TransferOptions transfer;
                transfer.stop = m_stop.get_token();
                proto::download_file(*m_transfer, v1::TRANSFER_KIND_PACKAGE, job.sha256, archive,
                                     transfer);
                log("package " + short_id(job.sha256) + " received");
            }
            unpack_package(archive, folder);
        }
        project::Project project = load_project(folder);
        for (const std::string& problem : project::check_for_client(project)) {
            log("warning: package " + short_id(job.sha256) + ": " + problem);
        }
        const fs::path marker = folder / k_startup_marker;
        if (project.find("startup") && !fs::exists(marker, error)) run_startup(project, marker);
        {
            std::lock_guard lock(m_mutex);
            m_installed_package = job.sha256;
            m_project = std::move(project);
            m_status_changed = true;
        }
        log("package " + short_id(job.sha256) + " installed in " +
            seconds_text(
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started)));
        // Keep only the package in use.
        for (const char* parent : {"packages", "package"}) {
            for (const auto& entry : fs::directory_iterator(m_options.work_dir / parent, error)) {
                if (entry.path().filename().string().rfind(job.sha256, 0) != 0) {
                    remove_quietly(entry.path());
                }
            }
        }
    } catch (const std::exception& failure) {
        if (!stopping()) {
            log("package " + short_id(job.sha256) + std::string(k_not_installed) +
                summary_line(failure.what()) + std::string(k_takes_no_tasks));
        }
    }
    set_status(v1::CLIENT_STATUS_IDLE);
    m_wake.notify_all();
}

void Client::Impl::prune_models(const std::string& model_id) {
    if (!model_id.empty()) {
        std::erase(m_recent_models, model_id);
        m_recent_models.push_front(model_id);
        while (m_recent_models.size() > k_models_kept) m_recent_models.pop_back();
    }
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(m_options.work_dir / "models", error)) {
        const std::string name = entry.path().filename().string();
        const std::string id = name.substr(0, name.find('.'));
        if (std::find(m_recent_models.begin(), m_recent_models.end(), id) ==
            m_recent_models.end()) {
            remove_quietly(entry.path());
        }
    }
}

fs::path Client::Impl::fetch_model(const v1::Task& task, std::stop_token stop) {
    const std::string expected =
        lowercase(task.model_sha256().empty() ? task.model_id() : task.model_sha256());
    if (!is_sha256(task.model_id()) || !is_sha256(expected)) {
        throw TaskFailure{0, "malformed model id '" + task.model_id() + "'", {}};
    }
    const fs::path path = m_options.work_dir / "models" / (lowercase(task.model_id()) + ".npz");
    std::error_code error;
    if (fs::exists(path, error)) {
        if (util::sha256_file(path) == expected) return path;
        remove_quietly(path);
    }
    proto::TransferOptions transfer;
    transfer.stop = stop;
    proto::DownloadOutcome outcome =
        proto::download_file(*m_transfer, v1::TRANSFER_KIND_MODEL, task.model_id(), path, transfer);
    if (outcome.id != expected) {
        remove_quietly(path);
        throw TaskFailure{
            0, "model " + short_id(task.model_id()) + " has sha256 " + outcome.id, {}};
    }
    return path;
}

dispatch::RunResult Client::Impl::run_entry(const v1::Task& task, const std::string& entry,
                                            const fs::path& input, const fs::path& output,
                                            std::stop_token stop) {
    project::Project project;
    {
        std::lock_guard lock(m_mutex);
        if (!m_project) throw TaskFailure{0, "no compute package installed", {}};
        project = *m_project;
    }
    dispatch::RunRequest request;
    request.input = input;
    request.output = output;
    request.round_settings = task.settings_json().empty() ? "{}" : task.settings_json();
    request.client_name = m_options.name;
    if (task.round_id() > 0) request.round = static_cast<int>(task.round_id());
    request.data_path = m_options.data_path;
    request.python = m_options.python;
    request.environment = m_options.environment;
    request.timeout = m_options.entry_point_timeout;
    request.limits = m_options.entry_point_limits;
    request.log_file = m_options.work_dir / "logs" / (entry + ".log");
    request.stop = stop;
    {
        std::lock_guard lock(m_mutex);
        m_task_log_lines = 0;
    }
    request.on_line = [this, entry, task_id = task.task_id()](std::string_view line,
                                                              dispatch::Stream stream) {
        stream_line(task_id, line, stream);
        if (m_options.echo_output) log("[" + entry + "] " + std::string(line));
    };
    dispatch::ProcessResult process;
    request.process_result = &process;
    try {
        return dispatch::run_entry_point(project, entry, request);
    } catch (const Error& failure) {
        const bool ran =
            process.exit_code >= 0 || process.signal != 0 || process.cancelled || process.timed_out;
        if (process.cancelled || stop.stop_requested()) throw TaskCancelled{};
        TaskFailure reported;
        reported.tail = process.tail;
        if (ran && !process.succeeded()) {
            if (process.exit_code > 0) reported.exit_code = process.exit_code;
            // "exited with code 3: <last line>"; the task says which entry point it was.
            reported.message = process.describe();
            if (!process.tail.empty()) reported.message += ": " + process.tail.back();
        } else {
            // Started and exited 0, but its output broke the contract (or it never started).
            reported.message = first_line(failure.what());
        }
        throw reported;
    }
}

v1::Ack Client::Impl::call_report(
    const v1::Task& task, const std::string& what,
    const std::function<grpc::Status(grpc::ClientContext*, v1::Ack*)>& call, std::stop_token stop) {
    const auto window_end = std::chrono::system_clock::now() + k_report_retry_window;
    const auto give_up_at = task.deadline_unix_ms() > 0
                                ? std::chrono::system_clock::time_point(
                                      std::chrono::milliseconds(task.deadline_unix_ms()))
                                : window_end;
    std::chrono::milliseconds delay =
        std::max(m_options.backoff_initial, std::chrono::milliseconds(200));
    std::string last;
    while (!stop.stop_requested()) {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + k_report_rpc_timeout);
        std::stop_callback cancel(stop, [&context] { context.TryCancel(); });
        v1::Ack ack;
        grpc::Status status = call(&context, &ack);
        if (status.ok()) return ack;
        last = proto::status_text(status);
        // A refusal of the token does not go away by asking again.
        if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
            status.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
            break;
        }
        if (std::chrono::system_clock::now() + delay >= give_up_at) break;
        log(what + " for task " + short_id(task.task_id()) + " did not go through (" + last +
            "); retrying in " + seconds_text(delay));
        std::unique_lock lock(m_mutex);
        m_wake.wait_for(lock, stop, delay, [] { return false; });
        delay = std::min(delay * 2, std::chrono::milliseconds(15000));
    }
    if (stop.stop_requested()) throw TaskCancelled{};
    throw TaskFailure{0, what + " failed: " + last, {}};
}

std::string Client::Impl::report_update(const v1::Task& task, const dispatch::RunResult& result,
                                        const fs::path& output, std::stop_token stop) {
    // The upload resumes from what the combiner kept, so retrying it is cheap; the output is
    // hashed once, not on every attempt.
    proto::UploadOutcome uploaded;
    std::chrono::milliseconds delay =
        std::max(m_options.backoff_initial, std::chrono::milliseconds(200));
    proto::TransferOptions transfer;
    transfer.stop = stop;
    for (int attempt = 1;; ++attempt) {
        try {
            if (transfer.sha256.empty()) transfer.sha256 = util::sha256_file(output);
            uploaded = proto::upload_file(*m_transfer, v1::TRANSFER_KIND_MODEL, output,
                                          task.task_id(), transfer);
            break;
        } catch (const Error& failure) {
            if (stop.stop_requested()) throw TaskCancelled{};
            if (attempt >= 4) throw TaskFailure{0, first_line(failure.what()), {}};
            log(std::string("upload failed: ") + first_line(failure.what()) + "; retrying in " +
                seconds_text(delay));
            std::unique_lock lock(m_mutex);
            m_wake.wait_for(lock, stop, delay, [] { return false; });
            delay *= 2;
        }
    }
    v1::UpdateReport report;
    report.set_client_id(client_id());
    report.set_task_id(task.task_id());
    report.set_round_id(task.round_id());
    report.set_model_id(uploaded.id);
    report.set_metadata_json(result.metadata_json);
    v1::Ack ack = call_report(
        task, "ReportUpdate",
        [&](grpc::ClientContext* context, v1::Ack* answer) {
            return m_federation->ReportUpdate(context, report, answer);
        },
        stop);
    if (!ack.accepted()) {
        // A refusal is final (docs/protocol.md): logged, never retried.
        log("update for task " + short_id(task.task_id()) + " (round " +
            std::to_string(task.round_id()) + ") refused: " + ack.reason());
        throw ReportRefused{};
    }
    return uploaded.id;
}

void Client::Impl::report_validation(const v1::Task& task, const dispatch::RunResult& result,
                                     std::stop_token stop) {
    v1::ValidationReport report;
    report.set_client_id(client_id());
    report.set_task_id(task.task_id());
    report.set_round_id(task.round_id());
    report.set_model_id(task.model_id());
    report.set_metrics_json(result.output_json);
    v1::Ack ack = call_report(
        task, "ReportValidation",
        [&](grpc::ClientContext* context, v1::Ack* answer) {
            return m_federation->ReportValidation(context, report, answer);
        },
        stop);
    if (!ack.accepted()) {
        log("validation for task " + short_id(task.task_id()) + " refused: " + ack.reason());
        throw ReportRefused{};
    }
}

void Client::Impl::run_task(const v1::Task& task) {
    const auto started = Clock::now();
    const std::string id = short_id(task.task_id());
    const std::string entry = std::string(proto::task_kind_name(task.kind()));
    std::stop_token stop;
    {
        std::lock_guard lock(m_mutex);
        stop = m_task_stop->get_token();
    }
    // The id names a folder that is removed afterwards: it must be one plain name.
    const std::string& task_id = task.task_id();
    if (task_id.empty() || task_id.size() > 200 || task_id == "." || task_id == ".." ||
        task_id.find_first_of("/\\") != std::string::npos ||
        task_id.find('\0') != std::string::npos) {
        log("task '" + task_id + "' rejected: malformed task id");
        send_task_status(task_id, v1::TASK_STATE_REJECTED, "malformed task id");
        return;
    }
    const fs::path folder = m_options.work_dir / "tasks" / task_id;
    bool keep_folder = false;
    auto elapsed = [&] {
        return seconds_text(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started));
    };
    // The folder goes before the final status: once the combiner hears the task is over,
    // nothing of it is left behind (a prediction stays).
    auto remove_task_folder = [&] {
        if (!keep_folder) remove_quietly(folder);
    };
    auto finish = [&](v1::TaskState state, const std::string& message, const TaskFailure* failure) {
        remove_task_folder();
        send_task_status(task.task_id(), state, message, failure);
    };
    set_status(v1::CLIENT_STATUS_BUSY);
    try {
        if (entry == "unknown") throw TaskFailure{0, "unknown task kind", {}};
        bool installed = false;
        {
            std::lock_guard lock(m_mutex);
            installed = m_project.has_value();
        }
        if (!installed) {
            log("task " + id + " rejected: no compute package installed");
            send_task_status(task.task_id(), v1::TASK_STATE_REJECTED,
                             "no compute package installed");
            set_status(v1::CLIENT_STATUS_IDLE);
            return;
        }
        send_task_status(task.task_id(), v1::TASK_STATE_RUNNING);
        log("task " + id + " started: " + entry + ", round " + std::to_string(task.round_id()));
        remove_quietly(folder);
        std::error_code error;
        fs::create_directories(folder, error);
        if (error) throw TaskFailure{0, "cannot create " + folder.string(), {}};

        fs::path input;
        try {
            input = fetch_model(task, stop);
        } catch (const Error& failure) {
            if (stop.stop_requested()) throw TaskCancelled{};
            throw TaskFailure{0, first_line(failure.what()), {}};
        }
        prune_models(lowercase(task.model_id()));

        std::string summary;
        if (task.kind() == v1::TASK_KIND_TRAIN) {
            const fs::path output = folder / "model.npz";
            dispatch::RunResult result = run_entry(task, entry, input, output, stop);
            const std::string update = report_update(task, result, output, stop);
            summary = std::to_string(result.num_examples.value_or(0)) + " examples, update " +
                      short_id(update) + " accepted";
        } else if (task.kind() == v1::TASK_KIND_VALIDATE) {
            dispatch::RunResult result =
                run_entry(task, entry, input, folder / "validation.json", stop);
            report_validation(task, result, stop);
            summary = "metrics " + result.output_json;
        } else {
            const fs::path output = folder / "prediction.json";
            run_entry(task, entry, input, output, stop);
            keep_folder = true;
            summary = "prediction in " + output.string();
        }
        finish(v1::TASK_STATE_SUCCEEDED, summary, nullptr);
        log("task " + id + " finished in " + elapsed() + ": " + entry + ", " + summary);
    } catch (const TaskFailure& failure) {
        log("task " + id + " failed after " + elapsed() + ": " + failure.message);
        finish(v1::TASK_STATE_FAILED, failure.message, &failure);
    } catch (const TaskCancelled&) {
        log("task " + id + " cancelled after " + elapsed());
        if (!stopping()) finish(v1::TASK_STATE_CANCELLED, "cancelled", nullptr);
    } catch (const ReportRefused&) {
        // Refused report: logged where it was refused; the combiner has recorded why.
    } catch (const std::exception& failure) {
        // fedcli::Error, and anything unexpected (a filesystem error): the task failed, the
        // client carries on.
        log("task " + id + " failed after " + elapsed() + ": " + first_line(failure.what()));
        TaskFailure reported{0, first_line(failure.what()), {}};
        finish(v1::TASK_STATE_FAILED, reported.message, &reported);
    }
    remove_task_folder();
    set_status(v1::CLIENT_STATUS_IDLE);
}

// ---------------------------------------------------------------------------------------

Client::Client(Options options) : m_impl(std::make_unique<Impl>(std::move(options))) {}
Client::~Client() = default;

void Client::run() {
    m_impl->run();
}

void Client::stop() {
    m_impl->stop();
}

std::optional<std::string> install_failure_reason(std::string_view log_line) {
    auto at = log_line.find(k_not_installed);
    if (at == std::string_view::npos) return std::nullopt;
    std::string_view reason = log_line.substr(at + k_not_installed.size());
    if (reason.ends_with(k_takes_no_tasks)) reason.remove_suffix(k_takes_no_tasks.size());
    return std::string(reason);
}

int serve(Options options, std::ostream& out) {
    // Before any thread exists: the client's and gRPC's threads inherit the blocked mask.
    dispatch::SignalWaiter signals;
    out.setf(std::ios::unitbuf);
    options.log = &out;
    out << "client '" << options.name << "' connecting to " << options.combiner << " (work dir "
        << options.work_dir.string() << ", "
        << (options.project ? "project " + options.project->string()
                            : std::string("package from the combiner"))
        << ")" << std::endl;
    Client daemon(std::move(options));
    signals.start([&daemon](int) { daemon.stop(); });
    daemon.run();
    if (int signal = signals.received()) {
        out << utc_timestamp() << " client stopped (" << dispatch::signal_name(signal) << ")"
            << std::endl;
    }
    return 0;
}

}  // namespace fedcli::client
