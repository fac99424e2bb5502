#include "core/dispatch/python_env.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <span>
#include <sstream>

#include "core/dispatch/command_line.hpp"
#include "core/error.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::dispatch {
namespace {

namespace fs = std::filesystem;

/// Bumped when the layout of cached environments changes, so old ones are not reused.
constexpr std::string_view k_venv_format = "fedcli-venv-1";
constexpr std::string_view k_ready_marker = "fedcli-ready";
constexpr std::size_t k_key_digits = 24;
constexpr std::chrono::milliseconds k_probe_timeout{30'000};

std::string environment_value(const char* name) {
    const char* value = std::getenv(name);
    return value ? value : "";
}

std::optional<fs::path> locate(const std::string& program) {
    return find_executable(program, environment_value("PATH"), fs::current_path());
}

/// Holds a flock() on a lock file until destroyed.
class FileLock {
  public:
    explicit FileLock(const fs::path& path) {
        m_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (m_fd < 0) {
            throw Error("cannot open lock file " + path.string() + ": " + strerror(errno));
        }
        while (::flock(m_fd, LOCK_EX) != 0) {
            if (errno == EINTR) continue;
            int error = errno;
            ::close(m_fd);
            throw Error("cannot lock " + path.string() + ": " + strerror(error));
        }
    }
    ~FileLock() { ::close(m_fd); }  // closing releases the lock
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;

  private:
    int m_fd = -1;
};

/// Runs one setup step (venv, pip) with its output as Stream::setup lines.
ProcessResult run_setup_step(const std::vector<std::string>& argv,
                             const VirtualEnvOptions& options) {
    if (options.on_line) options.on_line("fedcli: running " + format_command(argv), Stream::setup);
    if (options.log) *options.log << "fedcli: running " << format_command(argv) << '\n';
    ProcessSpec spec;
    spec.argv = argv;
    spec.executable = argv[0];
    spec.on_line = [&options](std::string_view line, Stream) {
        if (options.on_line) options.on_line(line, Stream::setup);
    };
    spec.log = options.log;
    spec.stop = options.stop;
    spec.cancel_fd = options.cancel_fd;
    return run_process(spec);
}

std::string join(const std::vector<std::string>& items) {
    std::string text;
    for (const auto& item : items) text += (text.empty() ? "" : ", ") + item;
    return text;
}

bool mentions(const ProcessResult& result, std::string_view needle) {
    for (const auto& line : result.tail) {
        if (line.find(needle) != std::string::npos) return true;
    }
    return false;
}

}  // namespace

bool python_has_numpy(const std::string& python) {
    ProcessSpec spec;
    spec.argv = {python, "-c", "import numpy"};
    spec.timeout = k_probe_timeout;
    spec.kill_grace = std::chrono::milliseconds(1000);
    spec.tail_lines = 0;
    try {
        return run_process(spec).succeeded();
    } catch (const Error&) {
        return false;  // not found or not executable
    }
}

std::optional<fs::path> probe_python(const std::vector<std::string>& candidates) {
    std::vector<fs::path> tried;
    for (const auto& candidate : candidates) {
        auto path = locate(candidate);
        if (!path) continue;
        std::error_code error;
        fs::path real = fs::canonical(*path, error);
        if (error) real = *path;
        if (std::find(tried.begin(), tried.end(), real) != tried.end()) continue;
        tried.push_back(real);
        if (python_has_numpy(path->string())) return fs::absolute(*path);
    }
    return std::nullopt;
}

fs::path resolve_python(const std::optional<std::string>& requested) {
    auto explicit_choice = [](const std::string& value, const std::string& source) {
        auto path = locate(value);
        if (!path) {
            throw Error(source + " names the Python interpreter '" + value +
                        "', which is not an executable file" +
                        (value.find('/') == std::string::npos ? " on PATH" : "") +
                        "; point it at an interpreter, e.g. /usr/bin/python3");
        }
        return fs::absolute(*path);
    };
    if (requested && !requested->empty()) return explicit_choice(*requested, "the run request");
    std::string from_environment = environment_value("FEDCLI_PYTHON");
    if (!from_environment.empty()) return explicit_choice(from_environment, "FEDCLI_PYTHON");

    // The probe costs an interpreter start per candidate: cache it per PATH value.
    static std::mutex mutex;
    static std::map<std::string, std::optional<fs::path>> probed;
    std::string path_variable = environment_value("PATH");
    std::optional<fs::path> found;
    {
        std::lock_guard lock(mutex);
        auto cached = probed.find(path_variable);
        if (cached == probed.end()) {
            cached =
                probed
                    .emplace(path_variable, probe_python({"python3", std::string(k_system_python)}))
                    .first;
        }
        found = cached->second;
    }
    if (found) return *found;
    if (auto system = locate(std::string(k_system_python))) return *system;
    if (auto on_path = locate("python3")) return fs::absolute(*on_path);
    throw Error("no Python interpreter found (neither " + std::string(k_system_python) +
                " nor python3 on PATH); install Debian's python3 and python3-numpy, or set "
                "FEDCLI_PYTHON");
}

fs::path default_cache_dir() {
    std::string configured = environment_value("FEDCLI_CACHE_DIR");
    if (!configured.empty()) return fs::absolute(configured);
    std::string xdg = environment_value("XDG_CACHE_HOME");
    if (!xdg.empty() && fs::path(xdg).is_absolute()) return fs::path(xdg) / "fedcli";
    std::string home = environment_value("HOME");
    if (!home.empty()) return fs::path(home) / ".cache" / "fedcli";
    return fs::temp_directory_path() / ("fedcli-cache-" + std::to_string(::getuid()));
}

std::string virtual_env_key(const project::PythonEnv& env, const fs::path& base_python) {
    std::error_code error;
    fs::path real = fs::canonical(base_python, error);
    if (error) real = fs::absolute(base_python);
    std::string material = std::string(k_venv_format) + "\n" + real.string() + "\n" + env.text;
    return util::sha256_hex(std::as_bytes(std::span(material.data(), material.size())))
        .substr(0, k_key_digits);
}

VirtualEnv ensure_virtual_env(const project::PythonEnv& env, const VirtualEnvOptions& options) {
    const std::string where = env.file.string();
    if (options.base_python.empty()) throw Error(where + ": no base Python interpreter given");
    fs::path cache = options.cache_dir.empty() ? default_cache_dir() : options.cache_dir;
    fs::path venvs = cache / "venvs";
    std::string key = virtual_env_key(env, options.base_python);

    VirtualEnv result;
    result.directory = venvs / key;
    result.python = result.directory / "bin" / "python";
    fs::path marker = result.directory / k_ready_marker;

    std::error_code error;
    fs::create_directories(venvs, error);
    if (error) {
        throw Error(where + ": cannot create the environment cache " + venvs.string() + ": " +
                    error.message() + " (set FEDCLI_CACHE_DIR to a writable folder)");
    }
    FileLock lock(venvs / (key + ".lock"));
    if (fs::exists(marker, error) && ::access(result.python.c_str(), X_OK) == 0) return result;

    fs::remove_all(result.directory, error);
    if (error) {
        throw Error(where + ": cannot remove the half-built environment " +
                    result.directory.string() + ": " + error.message());
    }
    auto note = [&options](const std::string& text) {
        if (options.on_line) options.on_line("fedcli: " + text, Stream::setup);
        if (options.log) *options.log << "fedcli: " << text << '\n';
    };
    note("creating the python environment for " + where + " in " + result.directory.string());

    bool needs_pip = !env.build_dependencies.empty() || !env.dependencies.empty();
    std::vector<std::string> create{options.base_python.string(), "-m", "venv",
                                    "--system-site-packages"};
    if (!needs_pip) create.push_back("--without-pip");
    create.push_back(result.directory.string());
    ProcessResult created = run_setup_step(create, options);
    if (!created.succeeded()) {
        std::string hint;
        if (mentions(created, "ensurepip") || mentions(created, "No module named venv")) {
            hint =
                "; this Python cannot create environments with pip: on Debian/Ubuntu install "
                "the package python3-venv (apt-get install python3-venv)";
        }
        throw Error(where + ": cannot create the python environment in " +
                    result.directory.string() + ": '" + format_command(create) + "' " +
                    created.describe() + hint + "; its last lines:\n" + created.format_tail());
    }

    auto install = [&](const std::vector<std::string>& requirements, const std::string& what) {
        if (requirements.empty()) return;
        std::vector<std::string> pip{
            result.python.string(),       "-m", "pip", "install", "--no-input",
            "--disable-pip-version-check"};
        pip.insert(pip.end(), requirements.begin(), requirements.end());
        ProcessResult installed = run_setup_step(pip, options);
        if (!installed.succeeded()) {
            throw Error(where + ": installing the " + what + " (" + join(requirements) +
                        ") with pip " + installed.describe() +
                        "; packages that are not already installed need network access to "
                        "PyPI or a local index (PIP_INDEX_URL, PIP_FIND_LINKS); pip's last "
                        "lines:\n" +
                        installed.format_tail());
        }
    };
    install(env.build_dependencies, "build_dependencies");
    install(env.dependencies, "dependencies");

    std::ofstream out(marker, std::ios::trunc);
    out << "format: " << k_venv_format << "\nbase_python: " << options.base_python.string()
        << "\npython_env: " << where << "\n";
    out.close();
    if (!out) throw Error(where + ": cannot write " + marker.string());
    result.created = true;
    return result;
}

}  // namespace fedcli::dispatch
