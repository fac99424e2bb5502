// Running a project's entry points exactly as a client does: the dispatcher behind
// `fedcli run`, the client daemon and `fedcli local`.
//
// run_entry_point() takes the entry point's command from the project file, splits it like
// a shell would (command_line.hpp; no shell runs, so file names cannot inject anything),
// appends the entry point's arguments as separate argv elements, and runs it (process.hpp):
//
//   build     COMMAND... OUTPUT            OUTPUT defaults to <project>/seed.npz
//   startup   COMMAND...
//   train     COMMAND... INPUT OUTPUT      INPUT-metadata written first (round settings)
//   validate  COMMAND... INPUT OUTPUT
//   predict   COMMAND... INPUT OUTPUT
//
// followed by RunRequest::extra_args. INPUT/OUTPUT are made absolute first, because the
// entry point runs with the project folder as working folder. A stale OUTPUT (and
// OUTPUT-metadata) is removed before the run so the checks see only what this run wrote.
// A bare `python`/`python3` as the first word becomes the resolved interpreter
// (python_env.hpp); with `python_env:` in the project file, the run uses that virtual
// environment (VIRTUAL_ENV set, its bin/ first on PATH), created on first use.
//
// Environment: this process's environment plus (variables the request does not set keep
// their inherited value, so they can be set by hand):
//   FEDCLI_PROJECT_DIR, FEDCLI_ENTRY_POINT      always
//   FEDCLI_EXECUTABLE                           the running program (fedcli), unless set
//   FEDCLI_INPUT, FEDCLI_OUTPUT                 when the entry point takes them
//   FEDCLI_CLIENT_NAME, FEDCLI_CLIENT_INDEX (0-based), FEDCLI_NUM_CLIENTS, FEDCLI_ROUND,
//   FEDCLI_DATA_PATH, FEDCLI_SEED               when set in the request
//   FEDN_DATA_PATH (= data path), FEDN_NUM_DATA_SPLITS (= number of clients)
//                                               same values, for FEDn's examples
//   FEDCLI_PYTHON                               the interpreter, when one was resolved
//   PYTHONUNBUFFERED=1                          unless set, so output streams live
//   RunRequest::environment                     last, overriding all of the above
//
// Limits: RunRequest::timeout (wall clock) and RunRequest::limits (memory, CPU time, open
// files; set in the child between fork and exec, see process.hpp).
//
// After the run: a non-zero exit, a signal, a timeout, a limit or a cancellation throws
// fedcli::Error with the entry point, the command, how it ended and its last output lines
// (and the log file); then the contract is checked (contract.hpp).
//
// The library never prints: output lines go to RunRequest::on_line (live) and to the log
// file; the result says what ran and what it produced.
//
// Thread-safety: run_entry_point() may run concurrently for different projects/outputs.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dispatch/process.hpp"
#include "core/project/project.hpp"

namespace fedcli::dispatch {

struct RunRequest {
    /// The model the entry point reads (train, validate, predict); relative paths are taken
    /// relative to this process's working folder.
    std::optional<std::filesystem::path> input;
    /// Where it writes (build, train, validate, predict); build defaults to
    /// <project>/seed.npz. Parent folders are created.
    std::optional<std::filesystem::path> output;
    /// Appended after the entry point's own arguments.
    std::vector<std::string> extra_args;

    /// Round settings written to INPUT-metadata before train: the text of a JSON object.
    std::string round_settings = "{}";

    // Client context, exported as FEDCLI_* variables (see the header comment).
    std::optional<std::string> client_name;
    std::optional<int> client_index;  ///< 0-based
    std::optional<int> num_clients;
    std::optional<int> round;
    std::optional<std::filesystem::path> data_path;  ///< made absolute
    std::optional<std::uint64_t> seed;
    /// Extra variables, applied last.
    std::vector<std::pair<std::string, std::string>> environment;

    /// The interpreter for a bare python/python3 (overrides FEDCLI_PYTHON and the probe).
    std::optional<std::string> python;
    /// Where python_env environments are cached; empty: default_cache_dir().
    std::filesystem::path cache_dir;

    /// Wall-clock limit: the run is stopped (SIGTERM, then SIGKILL after kill_grace) and
    /// fails with "ran longer than its timeout of 10 s and was stopped". Unset: none.
    std::optional<std::chrono::milliseconds> timeout;
    /// Memory (address space), CPU time and open-file limits set in the entry point's
    /// process before exec (process.hpp). A run they end fails with a message naming the
    /// limit; any other failed run under limits lists them in its error.
    ResourceLimits limits;
    /// SIGTERM -> SIGKILL delay when stopping the process group.
    std::chrono::milliseconds kill_grace{5000};
    /// Output lines, live. Runs on the calling thread.
    LineCallback on_line;
    /// Log file (created with its folders, replaced): fedcli's notes, the command, every
    /// output line, how it ended. Unset: no log.
    std::optional<std::filesystem::path> log_file;
    /// Output lines kept for error messages.
    std::size_t tail_lines = 30;
    std::stop_token stop;
    int cancel_fd = -1;  ///< see ProcessSpec::cancel_fd
    /// When set, receives how the process ended as soon as it has ended, also when the run
    /// then throws (non-zero exit, signal, timeout, cancellation, contract violation), so a
    /// caller can report the exit code and tail without parsing the error message. Left
    /// untouched when the process never started.
    ProcessResult* process_result = nullptr;
};

struct RunResult {
    std::string entry_point;
    std::vector<std::string> argv;     ///< as run; argv[0] as resolved
    std::filesystem::path executable;  ///< the file executed
    std::filesystem::path python;      ///< interpreter used for python/python3, if any
    std::optional<std::filesystem::path> python_env;  ///< the venv used, if any
    bool python_env_created = false;                  ///< the venv was created by this run
    std::optional<std::filesystem::path> input;       ///< absolute
    std::optional<std::filesystem::path> output;      ///< absolute
    std::optional<std::filesystem::path> log_file;
    ProcessResult process;

    // What the contract checks found.
    std::optional<std::uint64_t> num_examples;  ///< train
    std::string metadata_json;                  ///< train: OUTPUT-metadata, compact JSON
    std::string output_json;                    ///< validate, predict: OUTPUT, compact JSON
    std::size_t model_arrays = 0;               ///< build, train: arrays in OUTPUT
};

/// Runs one entry point of `project` and checks its contract (see the header comment).
/// Throws fedcli::Error for an unknown entry point, missing or extra input/output, a
/// command that cannot be split or started, a python_env that cannot be created, a failed
/// run, or a contract violation.
RunResult run_entry_point(const project::Project& project, std::string_view entry_point,
                          const RunRequest& request);

/// Where `fedcli run` keeps an entry point's log: <project>/.fedcli/logs/<entry>.log
/// (package creation must leave .fedcli/ out).
std::filesystem::path default_log_file(const project::Project& project,
                                       std::string_view entry_point);

/// True for the entry points that take INPUT and OUTPUT arguments (train, validate, predict).
bool takes_input(std::string_view entry_point);

}  // namespace fedcli::dispatch
