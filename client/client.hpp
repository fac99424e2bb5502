// The client daemon: dials a combiner, installs the compute package, runs tasks.
//
// A Client opens the fedcli.v1 Federation stream (Hello -> Welcome, then heartbeats),
// takes the compute package from the combiner (PackageAvailable -> Transfer.Download,
// sha256 verified, extracted safely with core/package) or uses a local project folder,
// runs `startup` once per package, then serves tasks one at a time by running entry
// points through core/dispatch: train (download the global model, run train, upload the
// update with Transfer.Upload, ReportUpdate), validate (ReportValidation) and predict.
// Failures are reported as TaskStatus FAILED with the exit code and the output's tail.
// The token and TLS settings are Options::channel. A combiner that refuses the token
// (UNAUTHENTICATED, PERMISSION_DENIED) ends run() with an error: retrying cannot help.
// Other connection loss is never fatal: the client reconnects forever with exponential backoff
// and jitter, keeps its client id, and a task running meanwhile still reports its result.
// Files stream to and from disk in chunks; nothing holds a whole model in memory.
//
// Thread-safety: run() blocks the calling thread; stop() may be called from any thread.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dispatch/process.hpp"
#include "core/package/package.hpp"
#include "core/package/signature.hpp"
#include "core/proto/rpc.hpp"

namespace fedcli::client {

struct Options {
    /// "host:port" of the combiner.
    std::string combiner = "127.0.0.1:12080";
    /// Display name sent in Hello (default: the host name).
    std::string name;
    /// Local project folder to run instead of the combiner's package. Unset: the package
    /// comes from the combiner.
    std::optional<std::filesystem::path> project;
    /// Client id file, downloaded models and packages, task folders, logs. Created.
    std::filesystem::path work_dir;
    /// Interpreter for python entry points (core/dispatch RunRequest::python).
    std::optional<std::string> python;
    /// Data path exported to entry points (FEDCLI_DATA_PATH), if set.
    std::optional<std::filesystem::path> data_path;
    /// Reconnect backoff: first delay, doubled up to the maximum, each with ±25% jitter.
    std::chrono::milliseconds backoff_initial{500};
    std::chrono::milliseconds backoff_max{30000};
    /// Extra environment for entry points (e.g. FEDCLI_CLIENT_INDEX for `fedcli local`).
    std::vector<std::pair<std::string, std::string>> environment;
    /// Wall-clock limit for each entry-point run; unset: none.
    std::optional<std::chrono::milliseconds> entry_point_timeout;
    /// Memory, CPU-time and open-file limits for entry points (core/dispatch/process.hpp).
    dispatch::ResourceLimits entry_point_limits;
    /// Limits for the packages the client unpacks (core/package/package.hpp).
    package::Limits package_limits;
    /// The fedcli executable that unpacks packages from the combiner: the client runs
    /// `fedcli package extract` (with package_limits) as a child process, so the daemon
    /// never parses an archive itself (docs/security.md). Unused with `project`.
    std::filesystem::path fedcli_executable;
    /// Which packages the client runs (docs/security.md, Trusted packages): one whose
    /// sha256 is pinned here, or one signed by a trusted key. With `trust_any_package`,
    /// any package runs (a warning is logged); otherwise any other package is refused.
    std::vector<std::string> package_pins;
    std::vector<package::PublicKey> trusted_keys;
    bool trust_any_package = false;
    /// Event lines (connected, package installed, task started/finished, ...). Null: none.
    std::ostream* log = nullptr;
    /// Entry points' output lines are forwarded to `log` too when true.
    bool echo_output = false;
    /// Access token and TLS settings of the channel (docs/security.md).
    proto::ChannelOptions channel;
};

class Client {
  public:
    explicit Client(Options options);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    /// Runs until stop(): connects, reconnects, serves tasks. Throws fedcli::Error only for
    /// problems no retry can fix (bad options, unusable work or project folder).
    void run();
    /// Cancels a running task (its process group is stopped) and makes run() return.
    void stop();

  private:
    class Impl;
    std::unique_ptr<Impl> m_impl;
};

/// Runs a client in the foreground until SIGINT or SIGTERM, as `fedcli client start` does:
/// logs to `out` (options.log), one line when it starts and one when a signal stops it.
/// Blocks both signals in the calling thread first, so call it before any other thread
/// exists. Returns 0; throws like Client::run().
int serve(Options options, std::ostream& out);

/// The reason in a client log line that says a package install failed ("... package 1a2b3c4d
/// not installed: <reason>; this client takes no tasks ..."), or nullopt for any other line
/// (`fedcli local` watches its clients' logs with it).
std::optional<std::string> install_failure_reason(std::string_view log_line);

/// The options as JSON and back, every field but `log`: `fedcli client start` hands them to
/// the `fedcli-client` executable this way (client/main.cpp). options_from_json() throws
/// fedcli::Error naming the field that is missing or malformed.
nlohmann::json options_to_json(const Options& options);
Options options_from_json(const nlohmann::json& json);

}  // namespace fedcli::client
