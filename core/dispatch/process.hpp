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
// Resource limits (ResourceLimits): the child sets them with setrlimit(2) between fork and
// exec, so they bind the program from its first instruction and are inherited by whatever
// it starts (each process gets its own allowance; they are not shared by the group):
//   memory_bytes  RLIMIT_AS, address space. Allocations beyond it fail: Python raises
//                 MemoryError, C++ throws std::bad_alloc, malloc returns NULL. Address
//                 space is more than resident memory (thread stacks, BLAS buffers and
//                 mapped libraries count), so leave headroom: numpy needs a few hundred MiB.
//   cpu_seconds   RLIMIT_CPU. At the limit the kernel sends SIGXCPU, one second of CPU
//                 later SIGKILL.
//   open_files    RLIMIT_NOFILE: descriptors the program may have open (stdin/out/err
//                 count); beyond it open() fails with EMFILE, "Too many open files".
// A limit above the hard limit fedcli itself runs under is lowered to that hard limit.
// When a run fails, ProcessResult::exceeded_limit says which limit most likely ended it:
// SIGXCPU (or SIGKILL after at least the allowed CPU time) for cpu_seconds; for the
// others, the usual failure messages in the output's tail ("MemoryError", "bad_alloc",
// "Cannot allocate memory", "Too many open files"), since the kernel reports no more.
//
// run_process() throws fedcli::Error only when the program cannot be started (including a
// limit the kernel refuses); how it ended (exit code, signal, timeout, cancellation, a
// limit) is reported in ProcessResult, never thrown.
// If the line callback throws, the process group is killed and reaped before the exception
// propagates: no child is ever left behind.
//
// Thread-safety: run_process() may be called from several threads at once (descriptors are
// close-on-exec, the child starts with every other descriptor closed). The callback runs on
// the calling thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
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

/// Kernel resource limits for a child process (see the header comment); unset: inherited.
struct ResourceLimits {
    std::optional<std::uint64_t> memory_bytes;  ///< RLIMIT_AS, bytes of address space
    std::optional<std::uint64_t> cpu_seconds;   ///< RLIMIT_CPU, seconds of CPU time
    std::optional<std::uint64_t> open_files;    ///< RLIMIT_NOFILE, open descriptors

    bool any() const { return memory_bytes || cpu_seconds || open_files; }
    /// "memory 2 GiB, CPU time 60 s, 64 open files" (only the set ones); "" for none.
    std::string describe() const;
    /// Throws fedcli::Error for a limit of 0, or fewer than 4 open files (the program's
    /// stdin, stdout and stderr already take 3). `where` prefixes the message.
    void check(const std::string& where) const;
};

/// Which resource limit ended a run.
enum class Limit { cpu_time, memory, open_files };

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
    /// Kernel limits set in the child before exec.
    ResourceLimits limits;
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
    ResourceLimits limits;                             ///< the kernel limits it ran under
    /// The limit that most likely ended a failed run (see the header comment).
    std::optional<Limit> exceeded_limit;
    std::vector<std::string> tail;  ///< last lines of stdout and stderr together
    std::chrono::milliseconds duration{0};
    /// User + system CPU time of the program (and of the children it waited for).
    std::chrono::milliseconds cpu_time{0};

    bool succeeded() const { return exit_code == 0 && !timed_out && !cancelled; }
    /// "exited with code 2", "was killed by signal 9 (SIGKILL)", "ran longer than its
    /// timeout of 10 s and was stopped", "exceeded its CPU time limit of 60 s and was killed
    /// by signal 24 (SIGXCPU)", "exited with code 1 after exceeding its memory limit of
    /// 2 GiB", "exited with code 1 after reaching its limit of 64 open files", ...
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

/// The running program's own executable (/proc/self/exe); throws fedcli::Error when it
/// cannot be read.
std::filesystem::path self_executable();

/// "SIGKILL" for 9, "signal 64" when unnamed.
std::string signal_name(int signal);

}  // namespace fedcli::dispatch
