// Operator commands that talk to a running combiner (Control and Transfer services):
// `package push`, `model push|pull|list`, `session start|status|stop`, `clients list`;
// plus the helpers of cli/federation.hpp shared with the daemon commands.
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/app.hpp"
#include "cli/cmd_model.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "cli/text.hpp"
#include "core/aggregate/aggregator.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/error.hpp"
#include "core/package/package.hpp"
#include "core/project/project.hpp"
#include "core/proto/rpc.hpp"
#include "core/util/ids.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;
using util::lowercase;
using util::now_unix_ms;
using util::utc_timestamp;

// ---------------------------------------------------------------------------------------
// Shared helpers (cli/federation.hpp)

SignalWaiter::SignalWaiter() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &m_previous_mask);
}

void SignalWaiter::start(std::function<void(int)> on_signal) {
    m_thread = std::thread([this, on_signal = std::move(on_signal)] {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        while (true) {
            int signal = 0;
            if (sigwait(&set, &signal) != 0) continue;
            if (m_closing.load()) return;
            int expected = 0;
            if (m_received.compare_exchange_strong(expected, signal)) {
                on_signal(signal);
            } else {
                std::_Exit(128 + signal);  // a second Ctrl-C: the user does not want to wait
            }
        }
    });
}

SignalWaiter::~SignalWaiter() {
    if (m_thread.joinable()) {
        m_closing.store(true);
        pthread_kill(m_thread.native_handle(), SIGTERM);
        m_thread.join();
    }
    // Drop signals still pending so that unblocking them does not kill the process.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    timespec zero{};
    while (sigtimedwait(&set, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &m_previous_mask, nullptr);
}

std::string signal_name(int signal) {
    if (signal == SIGINT) return "SIGINT";
    if (signal == SIGTERM) return "SIGTERM";
    return "signal " + std::to_string(signal);
}

CombinerConnection::CombinerConnection(std::string target, std::chrono::milliseconds deadline)
    : m_target(std::move(target)), m_deadline(deadline) {
    proto::check_target(m_target, "--combiner");
    m_channel = proto::make_channel(m_target);
    m_control = v1::Control::NewStub(m_channel);
    m_transfer = v1::Transfer::NewStub(m_channel);
}

v1::StatusResponse CombinerConnection::status() {
    return call(&Stub::GetStatus, v1::GetStatusRequest{}, "asking for the status");
}

void CombinerConnection::fail(const grpc::Status& status, std::string_view what) const {
    const auto code = status.error_code();
    if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED) {
        throw Error("cannot reach the combiner at " + m_target + ": " + status.error_message() +
                    " (is `fedcli combiner start` running?)");
    }
    throw Error("combiner at " + m_target + ": " + std::string(what) +
                " failed: " + status.error_message());
}

std::string short_id(std::string_view id) {
    return id.empty() ? "-" : util::short_id(id);
}

std::string utc_time(std::int64_t unix_ms) {
    if (unix_ms <= 0) return "-";
    std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
    std::tm parts{};
    gmtime_r(&seconds, &parts);
    char text[40];
    std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%SZ", &parts);
    return text;
}

std::string duration_text(double seconds) {
    char text[32];
    if (seconds < 0) seconds = 0;
    if (seconds < 10) {
        std::snprintf(text, sizeof text, "%.1f s", seconds);
    } else if (seconds < 60) {
        std::snprintf(text, sizeof text, "%.0f s", std::floor(seconds));
    } else if (seconds < 3600) {
        std::snprintf(text, sizeof text, "%.0f min", std::floor(seconds / 60));
    } else {
        std::snprintf(text, sizeof text, "%.0f h", std::floor(seconds / 3600));
    }
    return text;
}

namespace {

// ---------------------------------------------------------------------------------------
// Names and small helpers

std::string_view session_state_name(v1::SessionState state) {
    switch (state) {
        case v1::SESSION_STATE_IDLE:
            return "idle";
        case v1::SESSION_STATE_RUNNING:
            return "running";
        case v1::SESSION_STATE_FINISHED:
            return "finished";
        case v1::SESSION_STATE_STOPPED:
            return "stopped";
        case v1::SESSION_STATE_FAILED:
            return "failed";
        default:
            return "unknown";
    }
}

std::string_view round_state_name(v1::RoundState state) {
    switch (state) {
        case v1::ROUND_STATE_OPEN:
            return "open";
        case v1::ROUND_STATE_COMMITTED:
            return "committed";
        case v1::ROUND_STATE_FAILED:
            return "failed";
        default:
            return "unknown";
    }
}

std::string_view client_status_name(v1::ClientStatus status) {
    switch (status) {
        case v1::CLIENT_STATUS_IDLE:
            return "idle";
        case v1::CLIENT_STATUS_PREPARING:
            return "preparing";
        case v1::CLIENT_STATUS_BUSY:
            return "busy";
        default:
            return "unknown";
    }
}

bool is_hex(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(),
                                        [](unsigned char c) { return std::isxdigit(c) != 0; });
}

/// A JSON payload field as an object: parsed when it is JSON, else {"raw": text}.
nlohmann::ordered_json parse_payload(const std::string& text) {
    if (text.empty()) return nlohmann::ordered_json::object();
    try {
        return nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::exception&) {
        return nlohmann::ordered_json{{"raw", text}};
    }
}

std::string dump(const nlohmann::ordered_json& json) {
    return json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string plural(std::uint64_t count, std::string_view word) {
    return group_digits(count) + " " + std::string(word) + (count == 1 ? "" : "s");
}

double seconds_between(std::int64_t start_ms, std::int64_t end_ms) {
    if (start_ms <= 0 || end_ms < start_ms) return 0;
    return static_cast<double>(end_ms - start_ms) / 1000.0;
}

/// Adds the `--combiner` option every operator command has.
void add_combiner_option(CLI::App& command, std::string& target) {
    command.add_option("--combiner", target, "The combiner to talk to")
        ->type_name("HOST:PORT")
        ->envname(k_combiner_env)
        ->capture_default_str();
}

/// Client names by id, fetched once (and again when an unknown id shows up).
class ClientNames {
  public:
    explicit ClientNames(CombinerConnection& connection) : m_connection(connection) {}

    std::string name(const std::string& client_id) {
        auto found = m_names.find(client_id);
        if (found == m_names.end() && !m_refreshed_for.count(client_id)) {
            m_refreshed_for.insert(client_id);
            auto clients = m_connection.call(&Stub::ListClients, v1::ListClientsRequest{},
                                             "listing the clients");
            for (const auto& client : clients.clients()) {
                m_names[client.client_id()] = client.name();
            }
            found = m_names.find(client_id);
        }
        return found == m_names.end() ? std::string() : found->second;
    }

    /// "client 'c2' (3fa2b1c0)", or "client 3fa2b1c0" when the name is unknown.
    std::string describe(const std::string& client_id) {
        std::string client_name = name(client_id);
        if (client_name.empty()) return "client " + short_id(client_id);
        return "client '" + client_name + "' (" + short_id(client_id) + ")";
    }

  private:
    CombinerConnection& m_connection;
    std::map<std::string, std::string> m_names;
    std::set<std::string> m_refreshed_for;
};

/// A private temporary folder, removed with its contents on destruction.
class TemporaryFolder {
  public:
    TemporaryFolder() {
        const char* base = std::getenv("TMPDIR");
        std::string pattern = std::string(base && *base ? base : "/tmp") + "/fedcli-push.XXXXXX";
        if (!::mkdtemp(pattern.data())) {
            throw Error("cannot create a temporary folder under " + pattern + ": " +
                        std::strerror(errno));
        }
        m_path = pattern;
    }
    ~TemporaryFolder() {
        std::error_code ignored;
        std::filesystem::remove_all(m_path, ignored);
    }
    TemporaryFolder(const TemporaryFolder&) = delete;
    TemporaryFolder& operator=(const TemporaryFolder&) = delete;
    const std::filesystem::path& path() const { return m_path; }

  private:
    std::filesystem::path m_path;
};

/// Full model id for what the user typed: "latest", a full id, or a unique prefix of a
/// model the combiner lists (at least 4 hex digits).
std::string resolve_model_id(CombinerConnection& connection, const std::string& typed,
                             const std::string& command) {
    if (typed == "latest") return typed;
    std::string id = lowercase(typed);
    if (!is_hex(id) || id.size() > 64) {
        throw UsageError("'" + typed +
                             "' is not a model id (64 hex digits, a prefix of one, or "
                             "'latest')",
                         command);
    }
    if (id.size() == 64) return id;
    if (id.size() < 4) {
        throw UsageError("model id prefix '" + typed + "' is too short (at least 4 hex digits)",
                         command);
    }
    auto models = connection.call(&Stub::ListModels, v1::ListModelsRequest{}, "listing the models");
    std::vector<std::string> matches;
    for (const auto& model : models.models()) {
        if (model.model_id().starts_with(id)) matches.push_back(model.model_id());
    }
    if (matches.empty()) {
        throw Error("no model on the combiner at " + connection.target() +
                    " has an id starting "
                    "with '" +
                    typed +
                    "' (`fedcli model list` shows them; client updates need "
                    "their full id)");
    }
    if (matches.size() > 1) {
        throw Error("model id prefix '" + typed + "' is ambiguous: " + short_id(matches[0]) + ", " +
                    short_id(matches[1]) + (matches.size() > 2 ? ", ..." : "") +
                    "; give more digits");
    }
    return matches.front();
}

// ---------------------------------------------------------------------------------------
// package push

struct PackagePushOptions {
    std::string combiner = k_default_combiner;
    std::filesystem::path file;
    std::filesystem::path path;
};

int package_push(const PackagePushOptions& options, std::ostream& out) {
    const std::string command = "fedcli package push";
    if (options.file.empty() == options.path.empty()) {
        throw UsageError("give either a package FILE or --path DIR (a project folder to pack)",
                         command);
    }
    CombinerConnection connection(options.combiner);
    std::optional<TemporaryFolder> temporary;
    std::filesystem::path file = options.file;
    std::string name = options.file.filename().string();
    std::string source;
    if (!options.path.empty()) {
        project::Project project = project::load(options.path);
        temporary.emplace();
        file = temporary->path() / package::k_default_package_name;
        package::create(project.directory, file);
        name = project.name + ".tgz";
        source = " (packed from " + options.path.string() + ")";
    } else {
        if (!std::filesystem::is_regular_file(options.file)) {
            throw Error(options.file.string() + ": no such package file");
        }
        // A package that does not unpack would only fail on every client: check it here.
        package::list(options.file);
    }
    connection.status();  // a clear error before any upload when the combiner is away
    auto uploaded = proto::upload_file(connection.transfer(), v1::TRANSFER_KIND_PACKAGE, file);
    v1::SetPackageRequest request;
    request.set_sha256(uploaded.id);
    request.set_name(name);
    auto ack = connection.call(&Stub::SetPackage, request, "setting the package");
    if (!ack.accepted()) {
        throw Error("the combiner at " + connection.target() + " refused package " +
                    short_id(uploaded.id) + ": " + ack.reason());
    }
    out << "package  " << (options.path.empty() ? options.file.string() : name) << source << '\n'
        << "size     " << human_bytes(uploaded.size) << " (" << group_digits(uploaded.size)
        << " bytes)\n"
        << "id       " << uploaded.id << '\n'
        << "status   " << (uploaded.skipped ? "already stored on" : "uploaded to")
        << " the combiner at " << connection.target() << "; now its compute package\n";
    return k_exit_success;
}

Action setup_package_push(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<PackagePushOptions>();
    command.add_option("file", options->file, "Package to upload (.tgz)")->type_name("FILE");
    command.add_option("--path,-p", options->path, "Pack this project folder and upload that")
        ->type_name("DIR");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return package_push(*options, out); };
}

// ---------------------------------------------------------------------------------------
// model push / pull / list

struct ModelPushOptions {
    std::string combiner = k_default_combiner;
    std::filesystem::path file;
};

int model_push(const ModelPushOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    // Every member is read and CRC-checked: a broken seed is refused before it is sent.
    InspectReport report = inspect_parameter_file(options.file);
    if (report.format != InspectReport::Format::npz) {
        throw Error(options.file.string() +
                    ": a model must be an .npz file (save it with "
                    "numpy.savez or fedcli_sdk.save_parameters)");
    }
    connection.status();
    auto uploaded =
        proto::upload_file(connection.transfer(), v1::TRANSFER_KIND_MODEL, options.file);
    v1::SetSeedModelRequest request;
    request.set_model_id(uploaded.id);
    auto ack = connection.call(&Stub::SetSeedModel, request, "setting the seed model");
    if (!ack.accepted()) {
        throw Error("the combiner at " + connection.target() + " refused model " +
                    short_id(uploaded.id) + " as seed: " + ack.reason());
    }
    out << "model    " << options.file.string() << " (" << plural(report.arrays.size(), "array")
        << ", " << plural(report.total_parameters, "parameter") << ")\n"
        << "size     " << human_bytes(uploaded.size) << " (" << group_digits(uploaded.size)
        << " bytes)\n"
        << "id       " << uploaded.id << '\n'
        << "status   " << (uploaded.skipped ? "already stored on" : "uploaded to")
        << " the combiner at " << connection.target() << "; now the seed model\n";
    return k_exit_success;
}

Action setup_model_push(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ModelPushOptions>();
    command.add_option("file", options->file, "Seed model (.npz)")->type_name("FILE")->required();
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return model_push(*options, out); };
}

struct ModelPullOptions {
    std::string combiner = k_default_combiner;
    std::string id = "latest";
    std::filesystem::path output;
};

int model_pull(const ModelPullOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    std::string id = resolve_model_id(connection, options.id, "fedcli model pull");
    connection.status();
    std::filesystem::path folder = options.output.parent_path();
    if (!folder.empty()) std::filesystem::create_directories(folder);
    auto downloaded =
        proto::download_file(connection.transfer(), v1::TRANSFER_KIND_MODEL, id, options.output);
    out << "model " << downloaded.id << " (" << human_bytes(downloaded.size) << ") -> "
        << options.output.string() << '\n';
    return k_exit_success;
}

Action setup_model_pull(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ModelPullOptions>();
    command
        .add_option("id", options->id,
                    "Model id (or a unique prefix of at least 4 digits), or 'latest'")
        ->type_name("ID")
        ->capture_default_str();
    command.add_option("--output,-o", options->output, "Where to write the model")
        ->type_name("FILE")
        ->required();
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return model_pull(*options, out); };
}

struct ModelListOptions {
    std::string combiner = k_default_combiner;
    bool json = false;
};

int model_list(const ModelListOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto models = connection.call(&Stub::ListModels, v1::ListModelsRequest{}, "listing the models");
    if (options.json) {
        auto json = nlohmann::ordered_json::array();
        for (const auto& model : models.models()) {
            json.push_back({{"model_id", model.model_id()},
                            {"size", model.size()},
                            {"parent_id", model.parent_id()},
                            {"round_id", model.round_id()},
                            {"session_id", model.session_id()},
                            {"created_unix_ms", model.created_unix_ms()}});
        }
        out << dump(json) << '\n';
        return k_exit_success;
    }
    if (models.models().empty()) {
        out << "no models on the combiner at " << connection.target()
            << " (push a seed with `fedcli model push seed.npz`)\n";
        return k_exit_success;
    }
    Table table({"id", "size", "round", "parent", "session", "created"},
                {Table::Align::left, Table::Align::right, Table::Align::right, Table::Align::left,
                 Table::Align::left, Table::Align::left});
    for (const auto& model : models.models()) {
        table.add_row({short_id(model.model_id()), human_bytes(model.size()),
                       model.round_id() ? std::to_string(model.round_id()) : "seed",
                       short_id(model.parent_id()), short_id(model.session_id()),
                       utc_time(model.created_unix_ms())});
    }
    table.print(out);
    return k_exit_success;
}

Action setup_model_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ModelListOptions>();
    command.add_flag("--json", options->json, "Print one JSON array instead of a table");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return model_list(*options, out); };
}

// ---------------------------------------------------------------------------------------
// session start / status / stop

struct SessionStartOptions {
    std::string combiner = k_default_combiner;
    unsigned rounds = 0;
    std::string aggregator = "fedavg";
    std::vector<std::string> config;
    unsigned min_clients = 1;
    unsigned clients_per_round = 0;
    double round_timeout = 300;
    bool validate = false;
    std::string model;
    std::vector<std::string> settings;
    bool detach = false;
};

/// `--settings` items: KEY=VALUE (VALUE as JSON when it parses, else a string) or a whole
/// JSON object; later items win.
nlohmann::ordered_json parse_settings(const std::vector<std::string>& items,
                                      const std::string& command) {
    auto settings = nlohmann::ordered_json::object();
    for (const auto& item : items) {
        if (!item.empty() && item.front() == '{') {
            nlohmann::ordered_json object;
            try {
                object = nlohmann::ordered_json::parse(item);
            } catch (const nlohmann::json::exception& error) {
                throw UsageError("--settings '" + item + "': not a JSON object: " + error.what(),
                                 command);
            }
            if (!object.is_object()) {
                throw UsageError("--settings '" + item + "': not a JSON object", command);
            }
            for (auto& [key, value] : object.items()) settings[key] = value;
            continue;
        }
        auto equals = item.find('=');
        if (equals == std::string::npos || equals == 0) {
            throw UsageError("--settings '" + item + "': expected KEY=VALUE or a JSON object",
                             command);
        }
        std::string key = item.substr(0, equals);
        std::string text = item.substr(equals + 1);
        if (key == "round" || key == "session_id") {
            throw UsageError("--settings: '" + key + "' is set by the combiner for each task",
                             command);
        }
        try {
            settings[key] = nlohmann::ordered_json::parse(text);
        } catch (const nlohmann::json::exception&) {
            settings[key] = text;
        }
    }
    return settings;
}

void print_round_line(std::ostream& out, const v1::RoundInfo& round, std::size_t index,
                      std::uint32_t rounds, ClientNames& names) {
    std::uint64_t examples = 0;
    std::uint64_t used = 0;
    for (const auto& update : round.updates()) {
        if (update.used()) {
            examples += update.num_examples();
            ++used;
        }
    }
    const double seconds = seconds_between(round.started_unix_ms(), round.closed_unix_ms());
    out << "round " << round.round_id() << " (" << index << "/" << rounds << ") ";
    if (round.state() == v1::ROUND_STATE_COMMITTED) {
        out << "committed in " << duration_text(seconds) << ": "
            << plural(round.updates_accepted(), "update") << " (" << group_digits(examples)
            << " examples), " << round.rejected_size() << " rejected -> model "
            << short_id(round.output_model_id());
        if (used != round.updates_accepted()) out << " (" << used << " used by the aggregator)";
    } else {
        out << "FAILED after " << duration_text(seconds) << ": " << round.reason();
    }
    out << '\n';
    for (const auto& rejected : round.rejected()) {
        out << "  rejected " << names.describe(rejected.client_id()) << ": " << rejected.reason()
            << '\n';
    }
    out.flush();
}

std::string metrics_text(const std::string& metrics_json) {
    auto metrics = parse_payload(metrics_json);
    if (!metrics.is_object()) return metrics_json;
    std::string text;
    for (const auto& [key, value] : metrics.items()) {
        if (!text.empty()) text += ", ";
        if (value.is_number_float()) {
            char number[32];
            std::snprintf(number, sizeof number, "%.4g", value.get<double>());
            text += key + " " + number;
        } else {
            text += key + " " + value.dump();
        }
    }
    return text.empty() ? "{}" : text;
}

/// Follows a session until it ends or the user presses Ctrl-C (which only detaches).
int follow_session(CombinerConnection& connection, const std::string& session_id,
                   std::ostream& out) {
    dispatch::InterruptGuard interrupt;
    ClientNames names(connection);
    std::set<std::uint64_t> printed;
    std::set<std::pair<std::uint64_t, std::string>> printed_validations;
    const auto started = std::chrono::steady_clock::now();
    while (true) {
        auto status = connection.status();
        v1::ListRoundsRequest request;
        request.set_session_id(session_id);
        auto rounds = connection.call(&Stub::ListRounds, request, "listing the rounds");
        std::size_t index = 0;
        for (const auto& round : rounds.rounds()) {
            ++index;
            if (round.state() != v1::ROUND_STATE_OPEN && !printed.count(round.round_id())) {
                printed.insert(round.round_id());
                print_round_line(out, round, index, status.rounds(), names);
            }
            for (const auto& validation : round.validations()) {
                auto key = std::make_pair(round.round_id(), validation.client_id());
                if (printed.count(round.round_id()) && !printed_validations.count(key)) {
                    printed_validations.insert(key);
                    out << "  validation of round " << round.round_id() << " by "
                        << names.describe(validation.client_id()) << ": "
                        << metrics_text(validation.metrics_json()) << '\n';
                    out.flush();
                }
            }
        }
        if (status.session_id() == session_id &&
            status.session_state() != v1::SESSION_STATE_RUNNING) {
            const double seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
            switch (status.session_state()) {
                case v1::SESSION_STATE_FINISHED:
                    out << "session " << short_id(session_id) << " finished in "
                        << duration_text(seconds) << ": " << plural(printed.size(), "round")
                        << " -> model " << short_id(status.latest_model_id()) << '\n';
                    return k_exit_success;
                default: {
                    // The combiner's message usually names the session already.
                    std::string message = status.message();
                    std::string what = "session " + short_id(session_id) + " " +
                                       std::string(session_state_name(status.session_state()));
                    if (message.empty()) throw Error(what);
                    if (message.starts_with("session ")) throw Error(message);
                    throw Error(what + ": " + message);
                }
            }
        }
        pollfd wait{interrupt.fd(), POLLIN, 0};
        if (::poll(&wait, 1, 300) > 0) {
            out << "detached; session " << short_id(session_id)
                << " keeps running. Watch it with `fedcli session status`, stop it with "
                   "`fedcli session stop`.\n";
            out.flush();
            return 128 + interrupt.signal();
        }
    }
}

int session_start(const SessionStartOptions& options, std::ostream& out) {
    const std::string command = "fedcli session start";
    // Everything that can be checked here is checked before anything is sent.
    auto config = aggregate::Config::from_items(options.config);
    aggregate::make_aggregator(options.aggregator, config);
    if (options.rounds < 1) throw UsageError("--rounds must be at least 1", command);
    if (options.min_clients < 1) throw UsageError("--min-clients must be at least 1", command);
    if (options.clients_per_round != 0 && options.clients_per_round < options.min_clients) {
        throw UsageError("--clients-per-round " + std::to_string(options.clients_per_round) +
                             " is below --min-clients " + std::to_string(options.min_clients) +
                             ": no round could commit",
                         command);
    }
    if (!std::isfinite(options.round_timeout) || options.round_timeout <= 0) {
        throw UsageError("--round-timeout must be a positive number of seconds", command);
    }
    auto settings = parse_settings(options.settings, command);
    CombinerConnection connection(options.combiner);

    nlohmann::ordered_json aggregator_config = nlohmann::ordered_json::object();
    for (const auto& [key, value] : config.values()) aggregator_config[key] = value;
    v1::StartSessionRequest request;
    v1::SessionConfig& session = *request.mutable_config();
    session.set_rounds(options.rounds);
    session.set_aggregator(options.aggregator);
    session.set_aggregator_config_json(dump(aggregator_config));
    session.set_min_clients(options.min_clients);
    session.set_clients_per_round(options.clients_per_round);
    session.set_round_timeout_ms(
        static_cast<std::uint64_t>(std::llround(options.round_timeout * 1000)));
    session.set_validate(options.validate);
    if (!options.model.empty()) {
        session.set_model_id(resolve_model_id(connection, options.model, command));
    }
    session.set_settings_json(dump(settings));
    nlohmann::ordered_json recorded = {{"rounds", options.rounds},
                                       {"aggregator", options.aggregator},
                                       {"aggregator_config", aggregator_config},
                                       {"min_clients", options.min_clients},
                                       {"clients_per_round", options.clients_per_round},
                                       {"round_timeout_s", options.round_timeout},
                                       {"validate", options.validate},
                                       {"model_id", session.model_id()},
                                       {"settings", settings}};
    request.set_config_json(dump(recorded));

    auto response = connection.call(&Stub::StartSession, request, "starting the session");
    if (!response.ack().accepted()) {
        throw Error("the combiner at " + connection.target() +
                    " did not start the session: " + response.ack().reason());
    }
    const std::string& id = response.session_id();
    out << "session " << short_id(id) << " started: " << plural(options.rounds, "round") << ", "
        << options.aggregator << ", at least " << plural(options.min_clients, "client")
        << " per round, round timeout " << duration_text(options.round_timeout)
        << (options.validate ? ", with validation" : "") << '\n';
    if (options.detach) {
        out << "session id " << id << "; watch it with `fedcli session status`\n";
        return k_exit_success;
    }
    out << "following it (Ctrl-C detaches; the session keeps running)\n";
    out.flush();
    return follow_session(connection, id, out);
}

Action setup_session_start(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionStartOptions>();
    std::string names;
    for (const auto& info : aggregate::aggregator_catalog()) {
        names += (names.empty() ? "" : ", ") + std::string(info.name);
    }
    command.add_option("--rounds,-r", options->rounds, "Number of rounds")
        ->type_name("N")
        ->required();
    command.add_option("--aggregator,-a", options->aggregator, "One of: " + names)
        ->type_name("NAME")
        ->capture_default_str();
    command
        .add_option("--config,-c", options->config,
                    "Aggregator hyperparameter KEY=VALUE (repeatable; docs/aggregators.md)")
        ->type_name("KEY=VALUE");
    command
        .add_option("--min-clients", options->min_clients,
                    "Updates a round needs to commit (and ready clients it waits for)")
        ->type_name("M")
        ->capture_default_str();
    command
        .add_option("--clients-per-round", options->clients_per_round,
                    "Random sample of ready clients per round (0: all of them)")
        ->type_name("K")
        ->capture_default_str();
    command
        .add_option("--round-timeout", options->round_timeout,
                    "Seconds a round waits for clients and their updates")
        ->type_name("SECONDS")
        ->capture_default_str();
    command.add_flag("--validate", options->validate,
                     "Send the new global model to the round's clients for validation");
    command
        .add_option("--model", options->model,
                    "Model to start from (default: the latest global model, else the seed)")
        ->type_name("ID");
    command
        .add_option("--settings", options->settings,
                    "Round setting KEY=VALUE for the entry points' input metadata (repeatable)")
        ->type_name("KEY=VALUE");
    command.add_flag("--detach,-d", options->detach,
                     "Return once the session started instead of following it");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return session_start(*options, out); };
}

struct SessionStatusOptions {
    std::string combiner = k_default_combiner;
    bool json = false;
};

nlohmann::ordered_json status_json(const v1::StatusResponse& status,
                                   const v1::ListRoundsResponse& rounds, ClientNames& names) {
    nlohmann::ordered_json json;
    json["combiner"] = status.combiner_version();
    json["session_id"] = status.session_id();
    json["state"] = session_state_name(status.session_state());
    json["current_round"] = status.current_round();
    json["rounds_total"] = status.rounds();
    json["clients_online"] = status.clients_online();
    json["clients_known"] = status.clients_known();
    json["package"] = status.package_sha256();
    json["latest_model"] = status.latest_model_id();
    json["message"] = status.message();
    json["rounds"] = nlohmann::ordered_json::array();
    for (const auto& round : rounds.rounds()) {
        nlohmann::ordered_json entry;
        entry["round_id"] = round.round_id();
        entry["session_id"] = round.session_id();
        entry["state"] = round_state_name(round.state());
        entry["aggregator"] = round.aggregator();
        entry["clients_selected"] = round.clients_selected();
        entry["updates_accepted"] = round.updates_accepted();
        entry["input_model"] = round.input_model_id();
        entry["output_model"] = round.output_model_id();
        entry["started_unix_ms"] = round.started_unix_ms();
        entry["closed_unix_ms"] = round.closed_unix_ms();
        entry["seconds"] = seconds_between(round.started_unix_ms(), round.closed_unix_ms());
        entry["reason"] = round.reason();
        entry["updates"] = nlohmann::ordered_json::array();
        for (const auto& update : round.updates()) {
            entry["updates"].push_back({{"client_id", update.client_id()},
                                        {"client_name", names.name(update.client_id())},
                                        {"task_id", update.task_id()},
                                        {"model_id", update.model_id()},
                                        {"num_examples", update.num_examples()},
                                        {"used", update.used()},
                                        {"metadata", parse_payload(update.metadata_json())}});
        }
        entry["rejected"] = nlohmann::ordered_json::array();
        for (const auto& rejected : round.rejected()) {
            entry["rejected"].push_back({{"client_id", rejected.client_id()},
                                         {"client_name", names.name(rejected.client_id())},
                                         {"task_id", rejected.task_id()},
                                         {"reason", rejected.reason()}});
        }
        entry["validations"] = nlohmann::ordered_json::array();
        for (const auto& validation : round.validations()) {
            entry["validations"].push_back({{"client_id", validation.client_id()},
                                            {"client_name", names.name(validation.client_id())},
                                            {"model_id", validation.model_id()},
                                            {"metrics", parse_payload(validation.metrics_json())}});
        }
        json["rounds"].push_back(std::move(entry));
    }
    return json;
}

int session_status(const SessionStatusOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto status = connection.status();
    auto rounds = connection.call(&Stub::ListRounds, v1::ListRoundsRequest{}, "listing the rounds");
    ClientNames names(connection);
    if (options.json) {
        out << dump(status_json(status, rounds, names)) << '\n';
        return k_exit_success;
    }
    out << "combiner  " << connection.target() << " (fedcli " << status.combiner_version() << ")\n";
    if (status.session_id().empty()) {
        out << "session   none yet\n";
    } else {
        out << "session   " << short_id(status.session_id()) << " "
            << session_state_name(status.session_state()) << ", round " << rounds.rounds_size()
            << " of " << status.rounds() << '\n';
    }
    out << "clients   " << status.clients_online() << " online, " << status.clients_known()
        << " known\n"
        << "package   " << (status.package_sha256().empty() ? "none" : status.package_sha256())
        << '\n'
        << "model     " << (status.latest_model_id().empty() ? "none" : status.latest_model_id())
        << '\n';
    if (!status.message().empty()) out << "message   " << status.message() << '\n';
    if (rounds.rounds().empty()) return k_exit_success;

    out << '\n';
    using Align = Table::Align;
    Table table({"round", "state", "selected", "updates", "rejected", "examples", "time", "model"},
                {Align::right, Align::left, Align::right, Align::right, Align::right, Align::right,
                 Align::right, Align::left});
    const std::int64_t now = now_unix_ms();
    for (const auto& round : rounds.rounds()) {
        std::uint64_t examples = 0;
        for (const auto& update : round.updates()) {
            if (update.used()) examples += update.num_examples();
        }
        std::int64_t end = round.closed_unix_ms() > 0 ? round.closed_unix_ms() : now;
        table.add_row(
            {std::to_string(round.round_id()), std::string(round_state_name(round.state())),
             std::to_string(round.clients_selected()), std::to_string(round.updates_accepted()),
             std::to_string(round.rejected_size()), group_digits(examples),
             duration_text(seconds_between(round.started_unix_ms(), end)),
             short_id(round.output_model_id())});
    }
    table.print(out);
    bool heading = false;
    for (const auto& round : rounds.rounds()) {
        if (round.state() == v1::ROUND_STATE_FAILED && !round.reason().empty()) {
            if (!heading) out << "\nproblems:\n";
            heading = true;
            out << "  round " << round.round_id() << " failed: " << round.reason() << '\n';
        }
        for (const auto& rejected : round.rejected()) {
            if (!heading) out << "\nproblems:\n";
            heading = true;
            out << "  round " << round.round_id() << ": rejected update from "
                << names.describe(rejected.client_id()) << ": " << rejected.reason() << '\n';
        }
    }
    heading = false;
    for (const auto& round : rounds.rounds()) {
        for (const auto& validation : round.validations()) {
            if (!heading) out << "\nvalidation:\n";
            heading = true;
            out << "  round " << round.round_id() << ", " << names.describe(validation.client_id())
                << ": " << metrics_text(validation.metrics_json()) << '\n';
        }
    }
    return k_exit_success;
}

Action setup_session_status(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionStatusOptions>();
    command.add_flag("--json", options->json,
                     "Print one JSON object (rounds with accepted and rejected updates)");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return session_status(*options, out); };
}

struct SessionStopOptions {
    std::string combiner = k_default_combiner;
};

int session_stop(const SessionStopOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto status = connection.status();
    auto ack =
        connection.call(&Stub::StopSession, v1::StopSessionRequest{}, "stopping the session");
    if (!ack.accepted()) {
        throw Error("the combiner at " + connection.target() +
                    " did not stop a session: " + ack.reason());
    }
    out << "session " << short_id(status.session_id()) << " stopped\n";
    return k_exit_success;
}

Action setup_session_stop(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionStopOptions>();
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return session_stop(*options, out); };
}

// ---------------------------------------------------------------------------------------
// clients list

struct ClientsListOptions {
    std::string combiner = k_default_combiner;
    bool json = false;
};

int clients_list(const ClientsListOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto clients =
        connection.call(&Stub::ListClients, v1::ListClientsRequest{}, "listing the clients");
    if (options.json) {
        auto json = nlohmann::ordered_json::array();
        for (const auto& client : clients.clients()) {
            json.push_back({{"client_id", client.client_id()},
                            {"name", client.name()},
                            {"version", client.version()},
                            {"online", client.online()},
                            {"status", client_status_name(client.status())},
                            {"last_seen_unix_ms", client.last_seen_unix_ms()},
                            {"package", client.package_sha256()}});
        }
        out << dump(json) << '\n';
        return k_exit_success;
    }
    if (clients.clients().empty()) {
        out << "no clients have connected to the combiner at " << connection.target() << '\n';
        return k_exit_success;
    }
    const std::int64_t now = now_unix_ms();
    Table table({"id", "name", "online", "status", "last seen", "package", "version"});
    std::size_t online = 0;
    for (const auto& client : clients.clients()) {
        online += client.online() ? 1 : 0;
        std::string seen =
            client.last_seen_unix_ms() > 0
                ? duration_text(seconds_between(client.last_seen_unix_ms(),
                                                std::max(now, client.last_seen_unix_ms()))) +
                      " ago"
                : "-";
        table.add_row({short_id(client.client_id()), client.name(), client.online() ? "yes" : "no",
                       client.online() ? std::string(client_status_name(client.status())) : "-",
                       seen, short_id(client.package_sha256()), client.version()});
    }
    table.print(out);
    out << online << " of " << plural(clients.clients_size(), "client") << " online\n";
    return k_exit_success;
}

Action setup_clients_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ClientsListOptions>();
    command.add_flag("--json", options->json, "Print one JSON array instead of a table");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return clients_list(*options, out); };
}

CLI::App& existing_group(CLI::App& app, const std::string& name) {
    for (CLI::App* group : app.get_subcommands([](CLI::App*) { return true; })) {
        if (group->get_name() == name) return *group;
    }
    throw Error("internal: command group '" + name + "' is not registered yet");
}

}  // namespace

void register_federation_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_package_commands[] = {
        {"push", "Upload a package (or pack --path DIR) and make it the combiner's package",
         setup_package_push},
    };
    add_commands(existing_group(app, "package"), k_package_commands, dispatch);

    static constexpr CommandSpec k_model_commands[] = {
        {"push", "Upload a seed model to the combiner (checked locally first)", setup_model_push},
        {"pull", "Download a model (global, seed or client update) from the combiner",
         setup_model_pull},
        {"list", "List the combiner's global models with their lineage", setup_model_list},
    };
    add_commands(existing_group(app, "model"), k_model_commands, dispatch);

    static constexpr CommandSpec k_session_commands[] = {
        {"start", "Start a session of training rounds and follow it round by round",
         setup_session_start},
        {"status", "Show the latest session: rounds, updates, rejections, validation",
         setup_session_status},
        {"stop", "Stop the running session (its open round's tasks are cancelled)",
         setup_session_stop},
    };
    add_group(app, "session", "Run training sessions on a combiner", k_session_commands, dispatch);

    static constexpr CommandSpec k_clients_commands[] = {
        {"list", "List the clients a combiner knows, online or not", setup_clients_list},
    };
    add_group(app, "clients", "See the clients connected to a combiner", k_clients_commands,
              dispatch);
}

}  // namespace fedcli::cli
