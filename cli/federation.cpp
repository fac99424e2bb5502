// The helpers of cli/federation.hpp: signals for the daemons, the operator's connection to
// a combiner, names, formatting and the JSON forms of protocol messages.
#include "cli/federation.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include "cli/commands.hpp"
#include "cli/report.hpp"
#include "cli/text.hpp"
#include "combiner/combiner.hpp"
#include "core/error.hpp"
#include "core/proto/rpc.hpp"
#include "core/util/ids.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;

namespace {

bool is_hex(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(),
                                        [](unsigned char c) { return std::isxdigit(c) != 0; });
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The connection

namespace {

std::string read_token_file(const std::filesystem::path& file, std::string_view what) {
    std::ifstream in(file);
    if (!in)
        throw Error(file.string() + ": cannot read the access token (" + std::string(what) + ")");
    std::string token;
    std::getline(in, token);
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
        token.pop_back();
    }
    if (token.empty()) {
        throw Error(file.string() + ": the access token file is empty (" + std::string(what) + ")");
    }
    return token;
}

std::string environment(const char* name) {
    const char* value = std::getenv(name);
    return value ? value : "";
}

}  // namespace

void add_access_options(CLI::App& command, AccessOptions& options) {
    command
        .add_option("--token", options.token,
                    "Access token (else --token-file, $FEDCLI_TOKEN, $FEDCLI_TOKEN_FILE)")
        ->type_name("TOKEN");
    command.add_option("--token-file", options.token_file, "Read the access token from FILE")
        ->type_name("FILE");
    command
        .add_option("--ca", options.ca_file,
                    "Talk TLS; FILE holds the CA certificate the combiner's certificate must "
                    "chain to (else $FEDCLI_CA)")
        ->type_name("FILE");
    command
        .add_option("--tls-cert", options.cert_file,
                    "Client certificate (PEM) for a combiner that requires one (--client-ca)")
        ->type_name("FILE");
    command.add_option("--tls-key", options.key_file, "Private key (PEM) of --tls-cert")
        ->type_name("FILE");
    command.add_flag("--insecure", options.insecure,
                     "Allow sending the token in clear text to a combiner that is not on this "
                     "machine (only on a network you trust)");
}

proto::ChannelOptions channel_options(const AccessOptions& options, const std::string& target,
                                      bool default_admin_token) {
    proto::ChannelOptions channel;
    channel.insecure = options.insecure;
    channel.cert_file = options.cert_file;
    channel.key_file = options.key_file;
    channel.ca_file = options.ca_file;
    if (channel.ca_file.empty()) channel.ca_file = environment(k_ca_env);
    if (!options.token.empty()) {
        channel.token = options.token;
    } else if (!options.token_file.empty()) {
        channel.token = read_token_file(options.token_file, "--token-file");
    } else if (std::string token = environment(k_token_env); !token.empty()) {
        channel.token = token;
    } else if (std::string token_file = environment(k_token_file_env); !token_file.empty()) {
        channel.token = read_token_file(token_file, k_token_file_env);
    } else if (default_admin_token && proto::is_loopback_host(proto::target_host(target))) {
        const std::filesystem::path file = combiner::admin_token_file(combiner::Options{}.data_dir);
        std::error_code error;
        if (std::filesystem::is_regular_file(file, error)) {
            channel.token = read_token_file(file, "the local combiner's admin token");
        }
    }
    return channel;
}

AccessOptions& operator_access() {
    static AccessOptions options;
    return options;
}

CombinerConnection::CombinerConnection(std::string target, std::chrono::milliseconds deadline)
    : CombinerConnection(std::move(target), operator_access(), deadline) {}

CombinerConnection::CombinerConnection(std::string target, const AccessOptions& access,
                                       std::chrono::milliseconds deadline)
    : m_target(std::move(target)), m_deadline(deadline) {
    proto::check_target(m_target, "--combiner");
    m_channel_options = channel_options(access, m_target, true);
    m_channel = proto::make_channel(m_target, m_channel_options);
    m_control = v1::Control::NewStub(m_channel);
    m_transfer = v1::Transfer::NewStub(m_channel);
}

v1::StatusResponse CombinerConnection::status() {
    return call(&Stub::GetStatus, v1::GetStatusRequest{}, "asking for the status");
}

void CombinerConnection::fail(const grpc::Status& status, std::string_view what) const {
    const auto code = status.error_code();
    if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED) {
        std::string hint = proto::transport_hint(m_target, m_channel_options, status);
        throw Error("cannot reach the combiner at " + m_target + ": " + status.error_message() +
                    (hint.empty() ? " (is `fedcli combiner start` running?)" : hint));
    }
    if (code == grpc::StatusCode::UNAUTHENTICATED) {
        throw Error("combiner at " + m_target + ": " + std::string(what) +
                    " failed: " + status.error_message() +
                    (m_channel_options.token.empty()
                         ? ""
                         : " (check the token given by --token, --token-file, FEDCLI_TOKEN or "
                           "FEDCLI_TOKEN_FILE)"));
    }
    if (code == grpc::StatusCode::UNIMPLEMENTED) {
        throw Error("combiner at " + m_target + ": " + std::string(what) +
                    " failed: the combiner does not support this (it runs an older fedcli; "
                    "upgrade it)");
    }
    throw Error("combiner at " + m_target + ": " + std::string(what) +
                " failed: " + status.error_message());
}

// ---------------------------------------------------------------------------------------
// Formatting

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

double seconds_between(std::int64_t start_ms, std::int64_t end_ms) {
    if (start_ms <= 0 || end_ms < start_ms) return 0;
    return static_cast<double>(end_ms - start_ms) / 1000.0;
}

std::string plural(std::uint64_t count, std::string_view word) {
    return group_digits(count) + " " + std::string(word) + (count == 1 ? "" : "s");
}

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
        case v1::SESSION_STATE_INTERRUPTED:
            return "interrupted";
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

nlohmann::ordered_json parse_payload(const std::string& text) {
    if (text.empty()) return nlohmann::ordered_json::object();
    try {
        return nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::exception&) {
        return nlohmann::ordered_json{{"raw", text}};
    }
}

std::string dump_json(const nlohmann::ordered_json& json) {
    return json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
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
            text += key + " " + dump_json(value);
        }
    }
    return text.empty() ? "{}" : text;
}

void add_combiner_option(CLI::App& command, std::string& target) {
    command.add_option("--combiner", target, "The combiner to talk to")
        ->type_name("HOST:PORT")
        ->envname(k_combiner_env)
        ->capture_default_str();
    // The app is built afresh for every run, so values of an earlier run are dropped here.
    operator_access() = AccessOptions{};
    add_access_options(command, operator_access());
}

void add_listing_options(CLI::App& command, ListingOptions& options, const std::string& json_help) {
    command.add_flag("--json", options.json, json_help);
    add_combiner_option(command, options.combiner);
}

// ---------------------------------------------------------------------------------------
// Client names and session ids

void ClientNames::refresh() {
    auto clients =
        m_connection.call(&Stub::ListClients, v1::ListClientsRequest{}, "listing the clients");
    for (const auto& client : clients.clients()) m_names[client.client_id()] = client.name();
    m_fetched = true;
}

std::string ClientNames::name(const std::string& client_id) {
    auto found = m_names.find(client_id);
    if (found == m_names.end() && !m_refreshed_for.count(client_id)) {
        m_refreshed_for.insert(client_id);
        refresh();
        found = m_names.find(client_id);
    }
    return found == m_names.end() ? std::string() : found->second;
}

std::string ClientNames::describe(const std::string& client_id) {
    std::string client_name = name(client_id);
    if (client_name.empty()) return "client " + short_id(client_id);
    return "client '" + client_name + "' (" + short_id(client_id) + ")";
}

const std::map<std::string, std::string>& ClientNames::all() {
    if (!m_fetched) refresh();
    return m_names;
}

std::string resolve_model_id(CombinerConnection& connection, const std::string& typed,
                             const std::string& command) {
    if (typed == "latest") return typed;
    std::string id = util::lowercase(typed);
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

std::string resolve_session_id(CombinerConnection& connection, const std::string& typed,
                               const std::string& command) {
    if (typed.empty()) return typed;
    const std::string id = util::lowercase(typed);
    if (!is_hex(id)) {
        throw UsageError("'" + typed + "' is not a session id (hex digits, as `fedcli session " +
                             "list` shows them)",
                         command);
    }
    v1::ListSessionsResponse sessions;
    {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        grpc::Status status =
            connection.control().ListSessions(&context, v1::ListSessionsRequest{}, &sessions);
        if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) return typed;
        if (!status.ok()) connection.fail(status, "listing the sessions");
    }
    std::vector<std::string> matches;
    for (const auto& session : sessions.sessions()) {
        if (session.session_id() == id || session.session_id() == typed)
            return session.session_id();
        if (session.session_id().starts_with(id)) matches.push_back(session.session_id());
    }
    if (matches.empty()) {
        throw Error("no session on the combiner at " + connection.target() +
                    " has an id starting with '" + typed + "' (`fedcli session list` shows them)");
    }
    if (matches.size() > 1) {
        throw Error("session id prefix '" + typed + "' is ambiguous: " + short_id(matches[0]) +
                    ", " + short_id(matches[1]) + (matches.size() > 2 ? ", ..." : "") +
                    "; give more digits");
    }
    return matches.front();
}

std::optional<v1::SessionInfo> find_session(CombinerConnection& connection, const std::string& id) {
    auto sessions =
        connection.call(&Stub::ListSessions, v1::ListSessionsRequest{}, "listing the sessions");
    if (id.empty()) {
        if (sessions.sessions().empty()) return std::nullopt;
        return *sessions.sessions().rbegin();
    }
    for (const auto& session : sessions.sessions()) {
        if (session.session_id() == id) return session;
    }
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// JSON forms

nlohmann::ordered_json session_config_json(const v1::SessionConfig& config) {
    return {{"rounds", config.rounds()},
            {"aggregator", config.aggregator()},
            {"aggregator_config", parse_payload(config.aggregator_config_json())},
            {"min_clients", config.min_clients()},
            {"clients_per_round", config.clients_per_round()},
            {"clients_fraction", config.clients_fraction()},
            {"buffer_size", config.buffer_size()},
            {"round_timeout_s", static_cast<double>(config.round_timeout_ms()) / 1000.0},
            {"max_round_retries", config.max_round_retries()},
            {"max_client_failures", config.max_client_failures()},
            {"validate", config.validate()},
            {"model_id", config.model_id()},
            {"settings", parse_payload(config.settings_json())}};
}

nlohmann::ordered_json session_json(const v1::SessionInfo& session) {
    const std::int64_t end =
        session.ended_unix_ms() > 0 ? session.ended_unix_ms() : util::now_unix_ms();
    return {{"session_id", session.session_id()},
            {"state", session_state_name(session.state())},
            {"rounds_committed", session.rounds_committed()},
            {"rounds", session.config().rounds()},
            {"started_unix_ms", session.started_unix_ms()},
            {"ended_unix_ms", session.ended_unix_ms()},
            {"seconds", seconds_between(session.started_unix_ms(), end)},
            {"latest_model", session.latest_model_id()},
            {"message", session.message()},
            {"config", session_config_json(session.config())}};
}

nlohmann::ordered_json round_json(const v1::RoundInfo& round, const NameLookup& name) {
    nlohmann::ordered_json entry;
    entry["round_id"] = round.round_id();
    entry["session_id"] = round.session_id();
    entry["session_round"] = round.session_round();
    entry["attempt"] = round.attempt();
    entry["state"] = round_state_name(round.state());
    entry["aggregator"] = round.aggregator();
    entry["clients_selected"] = round.clients_selected();
    entry["updates_accepted"] = round.updates_accepted();
    entry["examples"] = round_examples(round);
    entry["input_model"] = round.input_model_id();
    entry["output_model"] = round.output_model_id();
    entry["started_unix_ms"] = round.started_unix_ms();
    entry["closed_unix_ms"] = round.closed_unix_ms();
    entry["seconds"] = seconds_between(round.started_unix_ms(), round.closed_unix_ms());
    entry["reason"] = round.reason();
    entry["updates"] = nlohmann::ordered_json::array();
    for (const auto& update : round.updates()) {
        entry["updates"].push_back({{"client_id", update.client_id()},
                                    {"client_name", name(update.client_id())},
                                    {"task_id", update.task_id()},
                                    {"model_id", update.model_id()},
                                    {"num_examples", update.num_examples()},
                                    {"used", update.used()},
                                    {"received_unix_ms", update.received_unix_ms()},
                                    {"metadata", parse_payload(update.metadata_json())}});
    }
    entry["rejected"] = nlohmann::ordered_json::array();
    for (const auto& rejected : round.rejected()) {
        entry["rejected"].push_back({{"client_id", rejected.client_id()},
                                     {"client_name", name(rejected.client_id())},
                                     {"task_id", rejected.task_id()},
                                     {"reason", rejected.reason()},
                                     {"received_unix_ms", rejected.received_unix_ms()}});
    }
    entry["validations"] = nlohmann::ordered_json::array();
    for (const auto& validation : round.validations()) {
        entry["validations"].push_back({{"client_id", validation.client_id()},
                                        {"client_name", name(validation.client_id())},
                                        {"model_id", validation.model_id()},
                                        {"received_unix_ms", validation.received_unix_ms()},
                                        {"metrics", parse_payload(validation.metrics_json())}});
    }
    return entry;
}

nlohmann::ordered_json client_json(const v1::ClientInfo& client) {
    return {{"client_id", client.client_id()},
            {"name", client.name()},
            {"version", client.version()},
            {"online", client.online()},
            {"status", client_status_name(client.status())},
            {"last_seen_unix_ms", client.last_seen_unix_ms()},
            {"package", client.package_sha256()},
            {"first_seen_unix_ms", client.first_seen_unix_ms()},
            {"rounds_contributed", client.rounds_contributed()},
            {"examples_contributed", client.examples_contributed()},
            {"consecutive_failures", client.consecutive_failures()},
            {"skipped", client.skipped()}};
}

nlohmann::ordered_json model_json(const v1::ModelInfo& model) {
    return {{"model_id", model.model_id()},     {"size", model.size()},
            {"parent_id", model.parent_id()},   {"round_id", model.round_id()},
            {"session_id", model.session_id()}, {"created_unix_ms", model.created_unix_ms()}};
}

nlohmann::ordered_json log_entry_json(const v1::LogEntry& entry) {
    return {{"sequence", entry.sequence()},
            {"unix_ms", entry.unix_ms()},
            {"client_id", entry.client_id()},
            {"client_name", entry.client_name()},
            {"task_id", entry.task_id()},
            {"round_id", entry.round_id()},
            {"session_id", entry.session_id()},
            {"kind", task_kind_name(entry.kind())},
            {"stream", entry.stream() == v1::LOG_STREAM_STDERR ? "stderr" : "stdout"},
            {"line", entry.line()}};
}

std::string log_line_text(const v1::LogEntry& entry) {
    std::string time = "-";
    if (entry.unix_ms() > 0) {
        time = util::utc_timestamp(
            std::chrono::system_clock::time_point(std::chrono::milliseconds(entry.unix_ms())));
    }
    std::string client =
        entry.client_name().empty() ? short_id(entry.client_id()) : entry.client_name();
    std::string round = entry.round_id() > 0 ? "r" + std::to_string(entry.round_id()) : "r-";
    const char* mark = entry.stream() == v1::LOG_STREAM_STDERR ? " ! " : " | ";
    return time + " " + client + " " + round + " " + std::string(task_kind_name(entry.kind())) +
           mark + entry.line();
}

}  // namespace fedcli::cli
