// Helpers shared by the federation commands (cli/cmd_combiner.cpp, cli/cmd_client.cpp,
// cli/cmd_federation.cpp, cli/cmd_session.cpp, cli/cmd_history.cpp): the operator's connection to a
// combiner's Control and Transfer services, the names of protocol enums, the formatting of ids and
// times, and the JSON forms of protocol messages that `--json` prints. Implemented in
// cli/federation.cpp.
//
// Thread-safety: CombinerConnection and ClientNames may be used from one thread at a
// time; the free functions are pure.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <string_view>
#include <thread>

#include "core/proto/fedcli.grpc.pb.h"
#include "core/proto/rpc.hpp"

namespace CLI {
class App;
}

namespace fedcli::cli {

/// Default `--combiner` of every command that talks to a combiner (env FEDCLI_COMBINER).
inline constexpr const char* k_default_combiner = "127.0.0.1:12080";
inline constexpr const char* k_combiner_env = "FEDCLI_COMBINER";

/// Environment variables of the access options (docs/security.md).
inline constexpr const char* k_token_env = "FEDCLI_TOKEN";
inline constexpr const char* k_token_file_env = "FEDCLI_TOKEN_FILE";
inline constexpr const char* k_ca_env = "FEDCLI_CA";

/// How a command authenticates to a combiner: token and TLS flags.
struct AccessOptions {
    std::string token;                 ///< --token
    std::filesystem::path token_file;  ///< --token-file
    std::filesystem::path ca_file;     ///< --ca (else FEDCLI_CA)
    std::filesystem::path cert_file;   ///< --tls-cert (mutual TLS)
    std::filesystem::path key_file;    ///< --tls-key
    bool insecure = false;             ///< --insecure: a token may cross plaintext
};

/// Adds --token, --token-file, --ca, --tls-cert, --tls-key and --insecure bound to
/// `options`.
void add_access_options(CLI::App& command, AccessOptions& options);

/// The channel settings for `target`. The token is the first of: --token, --token-file,
/// FEDCLI_TOKEN, FEDCLI_TOKEN_FILE, and — with `default_admin_token` and a loopback target —
/// the default combiner data folder's admin.token (.fedcli/combiner/admin.token) when it
/// exists. The CA is --ca, else FEDCLI_CA. Throws fedcli::Error when a token file cannot be
/// read or is empty.
proto::ChannelOptions channel_options(const AccessOptions& options, const std::string& target,
                                      bool default_admin_token);

/// The access options of the operator commands: add_combiner_option() binds its flags here
/// (one command runs per process; registration resets it).
AccessOptions& operator_access();

/// A connection to a combiner for operator commands. Unary calls get a short deadline;
/// a combiner that cannot be reached gives the same error everywhere:
///   cannot reach the combiner at HOST:PORT: <gRPC message> (is `fedcli combiner start`
///   running?)
class CombinerConnection {
  public:
    /// Checks `target` ("host:port") and opens a channel (connecting lazily) with the token
    /// and TLS settings of operator_access() (see channel_options()).
    explicit CombinerConnection(std::string target,
                                std::chrono::milliseconds deadline = std::chrono::seconds(5));
    /// The same with explicit access settings.
    CombinerConnection(std::string target, const AccessOptions& access,
                       std::chrono::milliseconds deadline = std::chrono::seconds(5));

    const std::string& target() const { return m_target; }
    fedcli::v1::Control::Stub& control() { return *m_control; }
    fedcli::v1::Transfer::Stub& transfer() { return *m_transfer; }

    /// Calls a unary Control method with the deadline; throws fedcli::Error (see class
    /// comment) when the call fails. `what` names the call in messages ("starting the
    /// session").
    template <class Request, class Response>
    Response call(grpc::Status (fedcli::v1::Control::Stub::*method)(grpc::ClientContext*,
                                                                    const Request&, Response*),
                  const Request& request, std::string_view what) {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + m_deadline);
        Response response;
        grpc::Status status = ((*m_control).*method)(&context, request, &response);
        if (!status.ok()) fail(status, what);
        return response;
    }

    /// GetStatus, used as a reachability check before long transfers.
    fedcli::v1::StatusResponse status();

    /// Throws the error for a failed call. A combiner that does not know the method
    /// (UNIMPLEMENTED) gets a hint that it runs an older fedcli.
    [[noreturn]] void fail(const grpc::Status& status, std::string_view what) const;

  private:
    std::string m_target;
    std::chrono::milliseconds m_deadline;
    proto::ChannelOptions m_channel_options;
    std::shared_ptr<grpc::Channel> m_channel;
    std::unique_ptr<fedcli::v1::Control::Stub> m_control;
    std::unique_ptr<fedcli::v1::Transfer::Stub> m_transfer;
};

/// The first 8 hex digits of an id ("-" for an empty one), as in the event log.
std::string short_id(std::string_view id);

/// "2026-11-23 10:00:00Z" for a Unix time in milliseconds; "-" for 0.
std::string utc_time(std::int64_t unix_ms);
/// "0.8 s", "42 s", "3 min", "2 h" (one unit, rounded down beyond a minute).
std::string duration_text(double seconds);
/// Seconds from `start_ms` to `end_ms`; 0 when the start is unknown or the end is earlier.
double seconds_between(std::int64_t start_ms, std::int64_t end_ms);
/// "1 round", "3 rounds", "1,000 examples".
std::string plural(std::uint64_t count, std::string_view word);

/// Lowercase names as tables and JSON print them; "unknown" for a value this fedcli does
/// not know (0 included). Sessions: idle, running, finished, stopped, failed, interrupted.
std::string_view session_state_name(fedcli::v1::SessionState state);
/// Rounds: open, committed, failed.
std::string_view round_state_name(fedcli::v1::RoundState state);
/// Clients: idle, preparing, busy.
std::string_view client_status_name(fedcli::v1::ClientStatus status);
using proto::task_kind_name;

/// A JSON payload field (metadata, metrics) as JSON: parsed when it is JSON, else
/// {"raw": text}; {} for an empty one.
nlohmann::ordered_json parse_payload(const std::string& text);
/// Compact JSON text with invalid UTF-8 replaced: what every `--json` prints.
std::string dump_json(const nlohmann::ordered_json& json);
/// Writes `items` as one JSON array (each element converted by `to_json`) and a newline.
template <class Items, class ToJson>
void print_json_array(std::ostream& out, const Items& items, ToJson to_json) {
    auto json = nlohmann::ordered_json::array();
    for (const auto& item : items) json.push_back(to_json(item));
    out << dump_json(json) << '\n';
}
/// "test_accuracy 0.9132, test_loss 0.31" for a metrics JSON object ("{}" when empty).
std::string metrics_text(const std::string& metrics_json);

/// Adds the `--combiner HOST:PORT` option every operator command has (env FEDCLI_COMBINER),
/// and the access options (add_access_options) bound to operator_access().
void add_combiner_option(CLI::App& command, std::string& target);

/// The options of every listing command: `--combiner` and `--json`.
struct ListingOptions {
    std::string combiner = k_default_combiner;
    bool json = false;
};
/// Adds `--json` (with `json_help`) and `--combiner` bound to `options`.
void add_listing_options(CLI::App& command, ListingOptions& options,
                         const std::string& json_help = "Print one JSON array instead of a table");

/// A client's name by id, for messages and tables.
using NameLookup = std::function<std::string(const std::string& client_id)>;

/// Client names by id, fetched from the combiner once (and again when an unknown id shows
/// up, so that a client that joined later is named too).
class ClientNames {
  public:
    explicit ClientNames(CombinerConnection& connection) : m_connection(connection) {}

    /// The client's name; empty when the combiner does not know the id.
    std::string name(const std::string& client_id);
    /// "client 'c2' (3fa2b1c0)", or "client 3fa2b1c0" when the name is unknown.
    std::string describe(const std::string& client_id);
    /// Every client the combiner lists, by id (fetches the list when it has not yet).
    const std::map<std::string, std::string>& all();
    /// name() as a NameLookup bound to this object.
    NameLookup lookup() {
        return [this](const std::string& client_id) { return name(client_id); };
    }

  private:
    void refresh();

    CombinerConnection& m_connection;
    bool m_fetched = false;
    std::map<std::string, std::string> m_names;
    std::set<std::string> m_refreshed_for;
};

/// The full id of the model the user typed: "latest", a full id, or a unique prefix (at
/// least 4 hex digits) of a model the combiner lists. Throws UsageError (naming `command`)
/// for text that is no id, fedcli::Error when nothing or more than one model matches.
std::string resolve_model_id(CombinerConnection& connection, const std::string& typed,
                             const std::string& command);

/// The full id of the session the user typed: a full id or a unique prefix of one that
/// ListSessions shows. An empty `typed` stays empty (the combiner's choice: the running or
/// latest session). A combiner without ListSessions gets `typed` as it is. Throws
/// UsageError (naming `command`) or fedcli::Error when nothing or more than one matches.
std::string resolve_session_id(CombinerConnection& connection, const std::string& typed,
                               const std::string& command);

/// The session with the full id `id` as ListSessions shows it, or the latest session (the
/// last listed) when `id` is empty; nullopt when there is no such session.
std::optional<fedcli::v1::SessionInfo> find_session(CombinerConnection& connection,
                                                    const std::string& id);

/// The JSON forms `--json` prints; key names are stable (docs/observability.md).
nlohmann::ordered_json session_config_json(const fedcli::v1::SessionConfig& config);
nlohmann::ordered_json session_json(const fedcli::v1::SessionInfo& session);
/// A round with its updates, rejections and validations (client names from `name`).
nlohmann::ordered_json round_json(const fedcli::v1::RoundInfo& round, const NameLookup& name);
nlohmann::ordered_json client_json(const fedcli::v1::ClientInfo& client);
nlohmann::ordered_json model_json(const fedcli::v1::ModelInfo& model);
nlohmann::ordered_json log_entry_json(const fedcli::v1::LogEntry& entry);

/// One log line as `fedcli logs` prints it:
///   "<time> <client> r<round> <train|validate> | <line>"
/// with "|" replaced by "!" for a line the entry point wrote to stderr. The time is UTC
/// with milliseconds; the client is its name (else its short id); "r-" when the line
/// belongs to no round.
std::string log_line_text(const fedcli::v1::LogEntry& entry);

}  // namespace fedcli::cli
