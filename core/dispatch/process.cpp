#include "core/dispatch/process.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <deque>

#include "core/error.hpp"

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
        int status = reap();

        ProcessResult result;
        if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
        result.timed_out = m_timed_out;
        result.cancelled = m_cancelled;
        result.timeout = m_spec.timeout;
        result.tail.assign(m_tail.begin(), m_tail.end());
        result.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
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

    int reap() noexcept {
        int status = 0;
        while (::waitpid(m_pid, &status, 0) < 0 && errno == EINTR) {
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

/// posix_spawn attributes and file actions, destroyed on scope exit.
class SpawnSetup {
  public:
    SpawnSetup() {
        posix_spawn_file_actions_init(&m_actions);
        posix_spawnattr_init(&m_attributes);
    }
    ~SpawnSetup() {
        posix_spawn_file_actions_destroy(&m_actions);
        posix_spawnattr_destroy(&m_attributes);
    }
    SpawnSetup(const SpawnSetup&) = delete;
    SpawnSetup& operator=(const SpawnSetup&) = delete;

    posix_spawn_file_actions_t m_actions;
    posix_spawnattr_t m_attributes;
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

std::string ProcessResult::describe() const {
    if (timed_out) {
        return "timed out after " + format_seconds(timeout.value_or(duration)) + " and was stopped";
    }
    if (cancelled) return "was cancelled";
    if (signal != 0) {
        return "was killed by signal " + std::to_string(signal) + " (" + signal_name(signal) + ")";
    }
    return "exited with code " + std::to_string(exit_code);
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

    Pipe out = make_pipe("stdout");
    Pipe err = make_pipe("stderr");

    SpawnSetup setup;
    posix_spawn_file_actions_adddup2(&setup.m_actions, out.write_end.get(), 1);
    posix_spawn_file_actions_adddup2(&setup.m_actions, err.write_end.get(), 2);
    posix_spawn_file_actions_addopen(&setup.m_actions, 0, "/dev/null", O_RDONLY, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    posix_spawn_file_actions_addclosefrom_np(&setup.m_actions, 3);
#endif
    std::string working_directory = spec.working_directory.string();
    if (!working_directory.empty()) {
        posix_spawn_file_actions_addchdir_np(&setup.m_actions, working_directory.c_str());
    }
    // Own process group; no blocked signals; default dispositions for the signals a
    // server process typically ignores or handles (SIGPIPE above all).
    sigset_t empty_mask;
    sigemptyset(&empty_mask);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int signal :
         {SIGPIPE, SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM}) {
        sigaddset(&defaults, signal);
    }
    posix_spawnattr_setflags(&setup.m_attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                      POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&setup.m_attributes, 0);
    posix_spawnattr_setsigmask(&setup.m_attributes, &empty_mask);
    posix_spawnattr_setsigdefault(&setup.m_attributes, &defaults);

    std::vector<char*> argv;
    for (const auto& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> environment = spec.environment.entries();
    std::vector<char*> envp;
    for (auto& entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);

    pid_t pid = 0;
    int rc = posix_spawn(&pid, executable.c_str(), &setup.m_actions, &setup.m_attributes,
                         argv.data(), envp.data());
    out.write_end.reset();
    err.write_end.reset();
    if (rc != 0) {
        throw Error("cannot run '" + executable.string() + "': " + strerror(rc) + spawn_hint(rc));
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
