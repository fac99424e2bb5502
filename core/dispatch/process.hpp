// Running one program as a supervised subprocess: the mechanism under entry points and
// python_env setup.
//
// The program runs in its own process group (so a timeout or a cancellation reaches every
// process it started, grandchildren included), with stdin from /dev/null, a chosen working
// folder and an explicit environment. Its stdout and stderr are read through pipes as they
// are written; each line goes, in arrival order, to a callback (for live display), to an
// optional log stream and to a bounded tail kept for error messages.
//
// Stopping: when the timeout passes, or the stop token / cancel descriptor fires, the
// whole process group gets SIGTERM, then SIGKILL `kill_grace` later. When the program
// itself exits, whatever it left running in its group gets the same treatment: an entry
// point must not leave processes behind. Descendants that moved to another process group
// or session (setsid, daemons) are out of reach; if they keep the output pipes open, fedcli
// stops reading them after the grace periods rather than hang.
//
// run_process() throws fedcli::Error only when the program cannot be started; how it ended
// (exit code, signal, timeout, cancellation) is reported in ProcessResult, never thrown.
// If the line callback throws, the process group is killed and reaped before the exception
// propagates: no child is ever left behind.
//
// Thread-safety: run_process() may be called from several threads at once (descriptors are
// close-on-exec, the child starts with every other descriptor closed). The callback runs on
// the calling thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace fedcli::dispatch {

/// Where a line of output came from.
enum class Stream {
    out,    ///< the program's stdout
    err,    ///< the program's stderr
    setup,  ///< fedcli preparing the run (python_env creation, pip), and fedcli's own notes
};

/// Receives each line of output (without its '\n'; a trailing '\r' is removed too) as soon
/// as it is complete. Lines longer than k_max_line_bytes arrive in pieces.
using LineCallback = std::function<void(std::string_view line, Stream stream)>;

inline constexpr std::size_t k_max_line_bytes = 64 * 1024;

/// An environment for a child process: NAME -> value.
class Environment {
  public:
    /// This process's environment.
    static Environment inherited();

    /// Sets (or replaces) a variable; throws fedcli::Error for an empty name or one with '='.
    void set(const std::string& name, std::string value);
    void unset(const std::string& name);
    /// The value, or nullptr.
    const std::string* find(const std::string& name) const;
    /// "NAME=value" strings, sorted by name.
    std::vector<std::string> entries() const;

  private:
    std::map<std::string, std::string> m_variables;
};

struct ProcessSpec {
    /// argv[0] is what the program sees as its name; must not be empty.
    std::vector<std::string> argv;
    /// The file to execute. Empty: argv[0] looked up like find_executable() does.
    std::filesystem::path executable;
    /// Working folder; empty: this process's.
    std::filesystem::path working_directory;
    Environment environment = Environment::inherited();
    /// Wall-clock limit; unset: none.
    std::optional<std::chrono::milliseconds> timeout;
    /// Time between SIGTERM and SIGKILL to the process group.
    std::chrono::milliseconds kill_grace{5000};
    LineCallback on_line;
    /// Every line is also written here, followed by '\n' (and flushed as it arrives).
    std::ostream* log = nullptr;
    /// How many of the last lines ProcessResult::tail keeps.
    std::size_t tail_lines = 30;
    /// Cancels the run when stop is requested.
    std::stop_token stop;
    /// Cancels the run when this descriptor becomes readable (e.g. the read end of a pipe
    /// a SIGINT handler writes to); -1: none. Not read from, not closed.
    int cancel_fd = -1;
};

struct ProcessResult {
    int exit_code = -1;  ///< exit status when the program exited, else -1
    int signal = 0;      ///< the signal that ended it, else 0
    bool timed_out = false;
    bool cancelled = false;
    std::optional<std::chrono::milliseconds> timeout;  ///< the limit it ran under
    std::vector<std::string> tail;                     ///< last lines of stdout and stderr together
    std::chrono::milliseconds duration{0};

    bool succeeded() const { return exit_code == 0 && !timed_out && !cancelled; }
    /// "exited with code 2", "was killed by signal 9 (SIGKILL)", "timed out after 10 s", ...
    std::string describe() const;
    /// The tail as one block of text, each line indented by two spaces ("" when empty).
    std::string format_tail() const;
};

/// Runs the program to completion (see the header comment).
ProcessResult run_process(const ProcessSpec& spec);

/// Finds `program` like execvp would: a name with a '/' is taken as it is (relative to
/// `working_directory` when relative), any other name is looked up in `path_variable`
/// (':'-separated; empty entries mean the working folder). Returns nullopt when there is no
/// executable file of that name.
std::optional<std::filesystem::path> find_executable(
    const std::string& program, const std::string& path_variable,
    const std::filesystem::path& working_directory);

/// "SIGKILL" for 9, "signal 64" when unnamed.
std::string signal_name(int signal);

}  // namespace fedcli::dispatch
