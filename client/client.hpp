// The client daemon: dials a combiner, installs the compute package, runs tasks.
//
// A Client opens the fedcli.v1 Federation stream (Hello -> Welcome, then heartbeats),
// takes the compute package from the combiner (PackageAvailable -> Transfer.Download,
// sha256 verified, extracted safely with core/package) or uses a local project folder,
// runs `startup` once per package, then serves tasks one at a time by running entry
// points through core/dispatch: train (download the global model, run train, upload the
// update with Transfer.Upload, ReportUpdate), validate (ReportValidation) and predict.
// Failures are reported as TaskStatus FAILED with the exit code and the output's tail.
// Connection loss is never fatal: the client reconnects forever with exponential backoff
// and jitter, keeps its client id, and a task running meanwhile still reports its result.
// Files stream to and from disk in chunks; nothing holds a whole model in memory.
//
// Thread-safety: run() blocks the calling thread; stop() may be called from any thread.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

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
    /// Event lines (connected, package installed, task started/finished, ...). Null: none.
    std::ostream* log = nullptr;
    /// Entry points' output lines are forwarded to `log` too when true.
    bool echo_output = false;
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

}  // namespace fedcli::client
