// Python for entry points: which interpreter a bare `python`/`python3` means, and the
// virtual environments that `python_env: python_env.yaml` asks for.
//
// Interpreter resolution (resolve_python): entry points are written as `python3 train.py`,
// but the `python3` first on PATH may be a pyenv/conda interpreter without numpy or torch
// while Debian's /usr/bin/python3 has them (python3-numpy, python3-torch). The base
// interpreter is, first match wins:
//   1. the caller's explicit choice (RunRequest::python: a CLI flag or project setting);
//   2. the FEDCLI_PYTHON environment variable (a path, or a name looked up on PATH);
//   3. the first of `python3` on PATH and /usr/bin/python3 that can `import numpy`
//      (probed once per process and PATH value, about 0.1 s);
//   4. /usr/bin/python3 if it exists, else `python3` on PATH.
// With a python_env the entry point runs in a virtual environment made from that base
// interpreter instead (see ensure_virtual_env).
//
// python_env.yaml (format and parsing: core/project/project.hpp, which loads it with the
// project file). The environment is `python -m venv --system-site-packages` (so Debian's
// numpy/torch stay importable and "already satisfied" needs no network) in <cache>/venvs/<key>,
// <key> being a SHA-256 prefix of the file's bytes and the base interpreter's real path: the same
// file on the same interpreter reuses one environment across projects and runs. pip (`--no-input`)
// runs only when a list is non-empty; without dependencies the venv is made `--without-pip`, which
// does not need Debian's python3-venv. A marker file written last makes a half-built environment
// (killed, pip failed) be rebuilt from scratch next time; an exclusive lock file serialises
// concurrent builders (several local clients starting at once).
//
// Thread-safety: all functions may be called concurrently; the interpreter probe is cached
// under a mutex, and environment creation is serialised per key by a file lock (which also
// works between processes).
#pragma once

#include <filesystem>
#include <optional>
#include <ostream>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "core/dispatch/process.hpp"
#include "core/project/project.hpp"

namespace fedcli::dispatch {

/// Debian's interpreter, which sees python3-numpy / python3-torch.
inline constexpr std::string_view k_system_python = "/usr/bin/python3";

/// True when `python` (a path or a name on PATH) runs `python -c "import numpy"` with exit 0.
bool python_has_numpy(const std::string& python);

/// The first candidate (path, or name looked up on PATH) that has numpy, as an absolute
/// path; nullopt when none has. Not cached.
std::optional<std::filesystem::path> probe_python(const std::vector<std::string>& candidates);

/// The base interpreter (see the header comment). `requested` is the caller's explicit
/// choice, if any. Throws fedcli::Error when the requested or FEDCLI_PYTHON interpreter is
/// not an executable file, or when there is no python3 at all.
std::filesystem::path resolve_python(const std::optional<std::string>& requested = {});

/// Where fedcli keeps its caches: $FEDCLI_CACHE_DIR, else $XDG_CACHE_HOME/fedcli, else
/// $HOME/.cache/fedcli, else /tmp/fedcli-cache-<uid>.
std::filesystem::path default_cache_dir();

struct VirtualEnvOptions {
    std::filesystem::path base_python;  ///< interpreter the venv is made from (resolve_python)
    std::filesystem::path cache_dir;    ///< empty: default_cache_dir()
    LineCallback on_line;               ///< output of venv and pip, as Stream::setup
    std::ostream* log = nullptr;        ///< same lines, for the run's log file
    std::stop_token stop;
    int cancel_fd = -1;
};

struct VirtualEnv {
    std::filesystem::path directory;  ///< the venv (VIRTUAL_ENV)
    std::filesystem::path python;     ///< directory/bin/python
    bool created = false;             ///< made by this call (false: reused from the cache)
};

/// The cache key of an environment: 24 hex digits of SHA-256 over a format tag, the base
/// interpreter's real path and the file's bytes.
std::string virtual_env_key(const project::PythonEnv& env,
                            const std::filesystem::path& base_python);

/// Returns the cached environment for `env`, creating it first when needed. Throws
/// fedcli::Error naming the python_env file when it cannot be created, with the reason:
/// python3-venv missing, pip failing (with pip's last lines), cancellation.
VirtualEnv ensure_virtual_env(const project::PythonEnv& env, const VirtualEnvOptions& options);

}  // namespace fedcli::dispatch
