#include "core/dispatch/process.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <deque>

#include "core/error.hpp"
#include "core/util/limits.hpp"

extern char** environ;

namespace fedcli::dispatch {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::size_t k_max_tail_line_bytes = 2000;
/// Poll interval for child exit where pidfd_open is unavailable (kernels before 5.3).
constexpr milliseconds k_exit_poll_interval{20};

/// Owns a file descriptor.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : m_fd(fd) {}
    ~Fd() { reset(); }
    Fd(Fd&& other) noexcept : m_fd(other.m_fd) { other.m_fd = -1; }
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) {
            reset();
            m_fd = other.m_fd;
            other.m_fd = -1;
        }
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;

    int get() const { return m_fd; }
    bool is_open() const { return m_fd >= 0; }
    void reset() {
        if (m_fd >= 0) ::close(m_fd);
        m_fd = -1;
    }

  private:
    int m_fd = -1;
};

struct Pipe {
    Fd read_end;
    Fd write_end;
};

Pipe make_pipe(const std::string& purpose) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        throw Error("cannot create a pipe for " + purpose + ": " + strerror(errno));
    }
    return Pipe{Fd(fds[0]), Fd(fds[1])};
}

/// A pidfd for `pid` (readable once it has exited), or -1 where the kernel has none.
Fd open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
    return Fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
#else
    (void)pid;
    return Fd();
#endif
}

bool is_executable_file(const fs::path& path) {
    struct stat info {};
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
           ::access(path.c_str(), X_OK) == 0;
}

std::string format_seconds(milliseconds duration) {
    char buffer[32];
    auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer,
                                      static_cast<double>(duration.count()) / 1000.0);
    (void)error;
    return std::string(buffer, end) + " s";
}

/// Splits one stream into lines and hands each to `emit`.
class LineSplitter {
  public:
    explicit LineSplitter(Stream stream) : m_stream(stream) {}

    template <class Emit>
    void feed(const char* data, std::size_t size, Emit&& emit) {
        m_buffer.append(data, size);
        std::size_t start = 0;
        while (true) {
            std::size_t newline = m_buffer.find('\n', start);
            if (newline == std::string::npos) break;
            emit_line(std::string_view(m_buffer).substr(start, newline - start), emit);
            start = newline + 1;
        }
        m_buffer.erase(0, start);
        while (m_buffer.size() >= k_max_line_bytes) {
            emit_line(std::string_view(m_buffer).substr(0, k_max_line_bytes), emit);
            m_buffer.erase(0, k_max_line_bytes);
        }
    }

    template <class Emit>
    void finish(Emit&& emit) {
        if (!m_buffer.empty()) emit_line(m_buffer, emit);
        m_buffer.clear();
    }

  private:
    template <class Emit>
    void emit_line(std::string_view line, Emit& emit) {
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        emit(line, m_stream);
    }

    Stream m_stream;
    std::string m_buffer;
};

std::optional<Limit> exceeded_limit(const ProcessResult& result);

/// Supervises one spawned process group until the leader has exited and its output is read.
class Supervisor {
  public:
    Supervisor(const ProcessSpec& spec, pid_t pid, Fd out, Fd err)
        : m_spec(spec), m_pid(pid), m_out(std::move(out)), m_err(std::move(err)) {}

    ProcessResult run() {
        auto start = Clock::now();
        if (m_spec.timeout) m_deadline = start + *m_spec.timeout;
        Fd pidfd = open_pidfd(m_pid);
        Pipe wake = make_pipe("cancellation");
        // Runs at once if stop was already requested.
        std::stop_callback on_stop(m_spec.stop, [fd = wake.write_end.get()] {
            char byte = 1;
            [[maybe_unused]] auto ignored = ::write(fd, &byte, 1);
        });

        while (m_out.is_open() || m_err.is_open() || !m_exited) {
            auto now = Clock::now();
            apply_timers(now);
            if (m_killed_at && m_exited && now >= *m_killed_at + m_spec.kill_grace) break;

            std::vector<pollfd> fds;
            auto watch = [&fds](int fd) {
                if (fd >= 0) fds.push_back(pollfd{fd, POLLIN, 0});
            };
            watch(m_out.get());
            watch(m_err.get());
            int pid_index = -1;
            if (!m_exited && pidfd.is_open()) {
                pid_index = static_cast<int>(fds.size());
                watch(pidfd.get());
            }
            int cancel_index = -1;
            if (!m_cancelled && !m_timed_out) {
                cancel_index = static_cast<int>(fds.size());
                watch(wake.read_end.get());
                watch(m_spec.cancel_fd);
            }

            int rc = ::poll(fds.data(), fds.size(), poll_timeout(now, pidfd.is_open()));
            if (rc < 0) {
                if (errno == EINTR) continue;
                throw Error(std::string("waiting for the program's output: poll: ") +
                            strerror(errno));
            }
            for (const auto& entry : fds) {
                if (entry.revents == 0) continue;
                if (entry.fd == m_out.get()) read_from(m_out, m_out_lines);
                if (entry.fd == m_err.get()) read_from(m_err, m_err_lines);
            }
            if (cancel_index >= 0) {
                for (std::size_t i = cancel_index; i < fds.size(); ++i) {
                    if (fds[i].revents != 0 && !m_exited) {
                        m_cancelled = true;
                        terminate_group(Clock::now());
                    }
                }
            }
            bool exited_now = pid_index >= 0 ? fds[pid_index].revents != 0
                                             : (!m_exited && !pidfd.is_open() && has_exited());
            if (exited_now && !m_exited) {
                m_exited = true;
                // Whatever the program left running in its group goes too.
                terminate_group(Clock::now());
            }
        }
        m_out.reset();
        m_err.reset();
        ::kill(-m_pid, SIGKILL);
        struct rusage usage {};
        int status = reap(&usage);

        ProcessResult result;
        if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
        result.timed_out = m_timed_out;
        result.cancelled = m_cancelled;
        result.timeout = m_spec.timeout;
        result.limits = m_spec.limits;
        result.tail.assign(m_tail.begin(), m_tail.end());
        result.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
        auto to_ms = [](const timeval& time) {
            return milliseconds(static_cast<std::int64_t>(time.tv_sec) * 1000 +
                                time.tv_usec / 1000);
        };
        result.cpu_time = to_ms(usage.ru_utime) + to_ms(usage.ru_stime);
        result.exceeded_limit = exceeded_limit(result);
        return result;
    }

    /// Kills and reaps the group; for unwinding after an exception.
    void abandon() noexcept {
        ::kill(-m_pid, SIGKILL);
        reap();
    }

  private:
    void apply_timers(Clock::time_point now) {
        if (!m_exited && !m_terminated_at && m_deadline && now >= *m_deadline) {
            m_timed_out = true;
            terminate_group(now);
        }
        if (m_terminated_at && !m_killed_at && now >= *m_terminated_at + m_spec.kill_grace) {
            ::kill(-m_pid, SIGKILL);
            m_killed_at = now;
        }
    }

    int poll_timeout(Clock::time_point now, bool have_pidfd) const {
        std::optional<Clock::time_point> next;
        auto consider = [&next](Clock::time_point when) {
            if (!next || when < *next) next = when;
        };
        if (!m_exited && !m_terminated_at && m_deadline) consider(*m_deadline);
        if (m_terminated_at && !m_killed_at) consider(*m_terminated_at + m_spec.kill_grace);
        if (m_killed_at && m_exited) consider(*m_killed_at + m_spec.kill_grace);
        if (!m_exited && !have_pidfd) consider(now + k_exit_poll_interval);
        if (!next) return -1;
        auto wait = std::chrono::ceil<milliseconds>(*next - now).count();
        return static_cast<int>(std::clamp<long long>(wait, 0, 60'000));
    }

    void terminate_group(Clock::time_point now) {
        if (m_terminated_at) return;
        ::kill(-m_pid, SIGTERM);
        m_terminated_at = now;
    }

    bool has_exited() const {
        siginfo_t info{};
        if (::waitid(P_PID, static_cast<id_t>(m_pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
            return errno == ECHILD;
        }
        return info.si_pid == m_pid;
    }

    int reap(struct rusage* usage = nullptr) noexcept {
        int status = 0;
        while (::wait4(m_pid, &status, 0, usage) < 0 && errno == EINTR) {
        }
        return status;
    }

    void read_from(Fd& fd, LineSplitter& lines) {
        char buffer[65536];
        ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
        auto emit = [this](std::string_view line, Stream stream) { deliver(line, stream); };
        if (n <= 0) {
            lines.finish(emit);
            fd.reset();
        } else {
            lines.feed(buffer, static_cast<std::size_t>(n), emit);
        }
        if (m_spec.log) m_spec.log->flush();
    }

    void deliver(std::string_view line, Stream stream) {
        if (m_spec.tail_lines > 0) {
            m_tail.emplace_back(line.substr(0, k_max_tail_line_bytes));
            if (m_tail.size() > m_spec.tail_lines) m_tail.pop_front();
        }
        if (m_spec.log) *m_spec.log << line << '\n';
        if (m_spec.on_line) m_spec.on_line(line, stream);
    }

    const ProcessSpec& m_spec;
    pid_t m_pid;
    Fd m_out;
    Fd m_err;
    LineSplitter m_out_lines{Stream::out};
    LineSplitter m_err_lines{Stream::err};
    std::deque<std::string> m_tail;
    std::optional<Clock::time_point> m_deadline;
    std::optional<Clock::time_point> m_terminated_at;  // SIGTERM sent to the group
    std::optional<Clock::time_point> m_killed_at;      // SIGKILL sent to the group
    bool m_exited = false;                             // the leader has exited (not reaped)
    bool m_timed_out = false;
    bool m_cancelled = false;
};

std::string spawn_hint(int error) {
    switch (error) {
        case EACCES:
            return " (is it executable? chmod +x)";
        case ENOEXEC:
            return " (a script needs a '#!' first line naming its interpreter)";
        default:
            return "";
    }
}

bool contains_text(const std::vector<std::string>& lines,
                   std::initializer_list<const char*> needles) {
    for (const auto& line : lines) {
        std::string lowered;
        lowered.reserve(line.size());
        for (char c : line) {
            lowered += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        }
        for (const char* needle : needles) {
            if (lowered.find(needle) != std::string::npos) return true;
        }
    }
    return false;
}

/// Which limit most likely ended a failed run; see process.hpp.
std::optional<Limit> exceeded_limit(const ProcessResult& result) {
    if (result.succeeded() || result.timed_out || result.cancelled) return std::nullopt;
    const ResourceLimits& limits = result.limits;
    if (limits.cpu_seconds) {
        bool out_of_time = result.cpu_time >= std::chrono::seconds(*limits.cpu_seconds) -
                                                  std::chrono::milliseconds(50);
        if (result.signal == SIGXCPU || (result.signal == SIGKILL && out_of_time)) {
            return Limit::cpu_time;
        }
    }
    if (limits.memory_bytes &&
        contains_text(result.tail,
                      {"memoryerror", "bad_alloc", "cannot allocate memory", "out of memory",
                       "unable to allocate", "failed to allocate", "failed to map segment"})) {
        return Limit::memory;
    }
    if (limits.open_files && contains_text(result.tail, {"too many open files"})) {
        return Limit::open_files;
    }
    return std::nullopt;
}

/// What a child reports through the exec-error pipe when it cannot become the program.
struct ChildFailure {
    enum class Stage : int { exec, setup, memory_limit, cpu_limit, open_files_limit };
    Stage stage = Stage::exec;
    int error = 0;
};

/// Sets one limit in the child, never above the hard limit it already has. Async-signal-safe.
bool set_limit(int resource, std::uint64_t soft, std::uint64_t hard) {
    struct rlimit current {};
    if (::getrlimit(resource, &current) != 0) return false;
    auto clamp = [&current](std::uint64_t value) -> rlim_t {
        if (current.rlim_max != RLIM_INFINITY && value > current.rlim_max) return current.rlim_max;
        return static_cast<rlim_t>(value);
    };
    struct rlimit wanted {};
    wanted.rlim_max = clamp(hard);
    wanted.rlim_cur = std::min(clamp(soft), wanted.rlim_max);
    return ::setrlimit(resource, &wanted) == 0;
}

/// Everything the child needs, prepared before fork: after it only async-signal-safe calls.
struct ChildPlan {
    const char* executable = nullptr;
    char* const* argv = nullptr;
    char* const* envp = nullptr;
    const char* working_directory = nullptr;  ///< nullptr: stay
    int out_fd = -1;
    int err_fd = -1;
    int report_fd = -1;  ///< close-on-exec pipe: a ChildFailure when exec does not happen
    const ResourceLimits* limits = nullptr;
};

[[noreturn]] void child_fail(int report_fd, ChildFailure::Stage stage) {
    ChildFailure failure{stage, errno};
    [[maybe_unused]] auto ignored = ::write(report_fd, &failure, sizeof failure);
    ::_exit(127);
}

constexpr int k_reset_signals[] = {SIGPIPE, SIGINT,  SIGQUIT, SIGTERM, SIGHUP,
                                   SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM, SIGXCPU};

/// Runs in the forked child: becomes the program or reports why not. Async-signal-safe.
[[noreturn]] void become_program(ChildPlan plan) {
    using Stage = ChildFailure::Stage;
    if (plan.report_fd < 3) plan.report_fd = ::fcntl(plan.report_fd, F_DUPFD_CLOEXEC, 3);
    // Default dispositions for every signal a server typically ignores or handles: the
    // parent's handlers must not run here, and ignored ones would stay ignored after exec.
    struct sigaction defaults {};
    defaults.sa_handler = SIG_DFL;
    sigemptyset(&defaults.sa_mask);
    for (int signal : k_reset_signals) ::sigaction(signal, &defaults, nullptr);
    if (::setpgid(0, 0) != 0) child_fail(plan.report_fd, Stage::setup);

    // Move the pipes above 2 first, so dup2 onto 0..2 cannot clobber one of them.
    int out = ::fcntl(plan.out_fd, F_DUPFD_CLOEXEC, 3);
    int err = ::fcntl(plan.err_fd, F_DUPFD_CLOEXEC, 3);
    int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (out < 0 || err < 0 || null < 0 || ::dup2(null, 0) < 0 || ::dup2(out, 1) < 0 ||
        ::dup2(err, 2) < 0) {
        child_fail(plan.report_fd, Stage::setup);
    }
    if (plan.working_directory && ::chdir(plan.working_directory) != 0) {
        child_fail(plan.report_fd, Stage::setup);
    }
#ifdef SYS_close_range
    // Everything but 0..2 and the report pipe (which closes itself at exec).
    if (plan.report_fd > 3) ::syscall(SYS_close_range, 3u, plan.report_fd - 1u, 0u);
    ::syscall(SYS_close_range, plan.report_fd + 1u, ~0u, 0u);
#endif

    // Limits last: a low open-file limit must not stop the set-up above.
    const ResourceLimits& limits = *plan.limits;
    if (limits.memory_bytes && !set_limit(RLIMIT_AS, *limits.memory_bytes, *limits.memory_bytes)) {
        child_fail(plan.report_fd, Stage::memory_limit);
    }
    // SIGXCPU at the limit, SIGKILL a second later (a program may catch SIGXCPU to clean up).
    if (limits.cpu_seconds &&
        !set_limit(RLIMIT_CPU, *limits.cpu_seconds,
                   *limits.cpu_seconds + (*limits.cpu_seconds < UINT64_MAX ? 1 : 0))) {
        child_fail(plan.report_fd, Stage::cpu_limit);
    }
    if (limits.open_files && !set_limit(RLIMIT_NOFILE, *limits.open_files, *limits.open_files)) {
        child_fail(plan.report_fd, Stage::open_files_limit);
    }

    sigset_t empty_mask;
    sigemptyset(&empty_mask);
    ::sigprocmask(SIG_SETMASK, &empty_mask, nullptr);
    ::execve(plan.executable, plan.argv, plan.envp);
    child_fail(plan.report_fd, Stage::exec);
}

/// Blocks every signal in this thread for its lifetime (around fork, so no handler of
/// ours runs in the child before it has reset the dispositions).
class SignalBlock {
  public:
    SignalBlock() {
        sigset_t all;
        sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &m_saved);
    }
    ~SignalBlock() { ::pthread_sigmask(SIG_SETMASK, &m_saved, nullptr); }
    SignalBlock(const SignalBlock&) = delete;
    SignalBlock& operator=(const SignalBlock&) = delete;

  private:
    sigset_t m_saved;
};

}  // namespace

Environment Environment::inherited() {
    Environment environment;
    for (char** entry = environ; entry && *entry; ++entry) {
        std::string_view text(*entry);
        auto equals = text.find('=');
        if (equals == std::string_view::npos || equals == 0) continue;
        environment.m_variables.emplace(std::string(text.substr(0, equals)),
                                        std::string(text.substr(equals + 1)));
    }
    return environment;
}

void Environment::set(const std::string& name, std::string value) {
    if (name.empty() || name.find('=') != std::string::npos ||
        name.find('\0') != std::string::npos) {
        throw Error("invalid environment variable name '" + name + "'");
    }
    m_variables[name] = std::move(value);
}

void Environment::unset(const std::string& name) {
    m_variables.erase(name);
}

const std::string* Environment::find(const std::string& name) const {
    auto found = m_variables.find(name);
    return found == m_variables.end() ? nullptr : &found->second;
}

std::vector<std::string> Environment::entries() const {
    std::vector<std::string> entries;
    entries.reserve(m_variables.size());
    for (const auto& [name, value] : m_variables) entries.push_back(name + "=" + value);
    return entries;
}

std::string ResourceLimits::describe() const {
    std::string text;
    auto add = [&text](const std::string& part) { text += (text.empty() ? "" : ", ") + part; };
    if (memory_bytes) add("memory " + util::format_byte_size(*memory_bytes));
    if (cpu_seconds) add("CPU time " + std::to_string(*cpu_seconds) + " s");
    if (open_files) add(std::to_string(*open_files) + " open files");
    return text;
}

void ResourceLimits::check(const std::string& where) const {
    auto prefix = where.empty() ? std::string() : where + ": ";
    if (memory_bytes && *memory_bytes == 0) throw Error(prefix + "the memory limit must not be 0");
    if (cpu_seconds && *cpu_seconds == 0) {
        throw Error(prefix + "the CPU time limit must be at least 1 s");
    }
    if (open_files && *open_files < 4) {
        throw Error(prefix + "the open-file limit must be at least 4 (stdin, stdout and " +
                    "stderr take 3), not " + std::to_string(*open_files));
    }
}

std::string ProcessResult::describe() const {
    if (timed_out) {
        return "ran longer than its timeout of " + format_seconds(timeout.value_or(duration)) +
               " and was stopped";
    }
    if (cancelled) return "was cancelled";
    std::string ended = signal != 0 ? "was killed by signal " + std::to_string(signal) + " (" +
                                          signal_name(signal) + ")"
                                    : "exited with code " + std::to_string(exit_code);
    if (!exceeded_limit) return ended;
    switch (*exceeded_limit) {
        case Limit::cpu_time:
            return "exceeded its CPU time limit of " +
                   std::to_string(limits.cpu_seconds.value_or(0)) + " s and " + ended;
        case Limit::memory:
            return ended + " after exceeding its memory limit of " +
                   util::format_byte_size(limits.memory_bytes.value_or(0));
        case Limit::open_files:
            return ended + " after reaching its limit of " +
                   std::to_string(limits.open_files.value_or(0)) + " open files";
    }
    return ended;
}

std::string ProcessResult::format_tail() const {
    std::string text;
    for (const auto& line : tail) text += "  " + line + "\n";
    return text;
}

std::string signal_name(int signal) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    if (const char* abbreviation = sigabbrev_np(signal)) return std::string("SIG") + abbreviation;
#endif
    return "signal " + std::to_string(signal);
}

fs::path self_executable() {
    std::error_code error;
    fs::path self = fs::read_symlink("/proc/self/exe", error);
    if (error) {
        throw Error("cannot find the fedcli executable (/proc/self/exe): " + error.message());
    }
    return self;
}

std::optional<fs::path> find_executable(const std::string& program,
                                        const std::string& path_variable,
                                        const fs::path& working_directory) {
    if (program.empty()) return std::nullopt;
    fs::path base = working_directory.empty() ? fs::current_path() : working_directory;
    if (program.find('/') != std::string::npos) {
        fs::path candidate = (base / program).lexically_normal();
        if (is_executable_file(candidate)) return candidate;
        return std::nullopt;
    }
    std::size_t start = 0;
    while (start <= path_variable.size()) {
        std::size_t colon = path_variable.find(':', start);
        if (colon == std::string::npos) colon = path_variable.size();
        std::string directory = path_variable.substr(start, colon - start);
        fs::path candidate = (directory.empty() ? base : base / directory) / program;
        if (is_executable_file(candidate)) return candidate.lexically_normal();
        start = colon + 1;
    }
    return std::nullopt;
}

ProcessResult run_process(const ProcessSpec& spec) {
    if (spec.argv.empty() || spec.argv[0].empty()) throw Error("no program to run");
    if (!spec.working_directory.empty() && !fs::is_directory(spec.working_directory)) {
        throw Error("cannot run '" + spec.argv[0] + "': working folder " +
                    spec.working_directory.string() + " does not exist");
    }
    fs::path executable = spec.executable;
    if (executable.empty()) {
        const std::string* path_variable = spec.environment.find("PATH");
        auto found = find_executable(spec.argv[0], path_variable ? *path_variable : "",
                                     spec.working_directory);
        if (!found) {
            throw Error("cannot run '" + spec.argv[0] + "': " +
                        (spec.argv[0].find('/') != std::string::npos
                             ? std::string("no executable file of that name")
                             : "not found on PATH (" +
                                   (path_variable ? *path_variable : std::string()) + ")"));
        }
        executable = *found;
    } else if (executable.is_relative() && !spec.working_directory.empty()) {
        executable = spec.working_directory / executable;
    }

    spec.limits.check("cannot run '" + spec.argv[0] + "'");
    Pipe out = make_pipe("stdout");
    Pipe err = make_pipe("stderr");
    Pipe report = make_pipe("start-up errors");

    std::vector<char*> argv;
    for (const auto& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> environment = spec.environment.entries();
    std::vector<char*> envp;
    for (auto& entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);
    std::string executable_text = executable.string();
    std::string working_directory = spec.working_directory.string();

    ChildPlan plan;
    plan.executable = executable_text.c_str();
    plan.argv = argv.data();
    plan.envp = envp.data();
    plan.working_directory = working_directory.empty() ? nullptr : working_directory.c_str();
    plan.out_fd = out.write_end.get();
    plan.err_fd = err.write_end.get();
    plan.report_fd = report.write_end.get();
    plan.limits = &spec.limits;

    // fork rather than posix_spawn: the limits must be set in the child before exec.
    pid_t pid = 0;
    {
        SignalBlock block;
        pid = ::fork();
        if (pid == 0) become_program(plan);
    }
    if (pid < 0) throw Error("cannot run '" + executable_text + "': fork: " + strerror(errno));
    out.write_end.reset();
    err.write_end.reset();
    report.write_end.reset();

    // EOF once the child has exec'd (the pipe is close-on-exec), so the program is in its
    // own process group before the supervisor may signal that group.
    ChildFailure failure;
    ssize_t got = 0;
    do {
        got = ::read(report.read_end.get(), &failure, sizeof failure);
    } while (got < 0 && errno == EINTR);
    if (got > 0) {
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        std::string why = strerror(failure.error);
        switch (failure.stage) {
            case ChildFailure::Stage::exec:
                throw Error("cannot run '" + executable_text + "': " + why +
                            spawn_hint(failure.error));
            case ChildFailure::Stage::setup:
                throw Error("cannot run '" + executable_text +
                            "': setting up the child process failed: " + why);
            case ChildFailure::Stage::memory_limit:
                throw Error("cannot run '" + executable_text +
                            "': cannot set the memory limit of " +
                            util::format_byte_size(*spec.limits.memory_bytes) + ": " + why);
            case ChildFailure::Stage::cpu_limit:
                throw Error("cannot run '" + executable_text +
                            "': cannot set the CPU time limit of " +
                            std::to_string(*spec.limits.cpu_seconds) + " s: " + why);
            case ChildFailure::Stage::open_files_limit:
                throw Error("cannot run '" + executable_text + "': cannot set the limit of " +
                            std::to_string(*spec.limits.open_files) + " open files: " + why);
        }
    }

    Supervisor supervisor(spec, pid, std::move(out.read_end), std::move(err.read_end));
    try {
        return supervisor.run();
    } catch (...) {
        supervisor.abandon();
        throw;
    }
}

}  // namespace fedcli::dispatch
