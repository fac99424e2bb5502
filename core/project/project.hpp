// The project file: fedcli.yaml (FEDn's fedn.yaml and Scaleout Edge's scaleout.yaml are
// read unchanged).
//
//   name: my-project            # optional
//   python_env: python_env.yaml # optional, path relative to the project folder
//   entry_points:
//     build:    {command: python3 model.py}
//     startup:  {command: python3 data.py}
//     train:    {command: python3 train.py}      # mandatory for a client
//     validate: {command: python3 validate.py}
//     predict:  {command: python3 predict.py}
//
// Loading is strict: an unknown key, a value of the wrong kind or an empty command is an
// error that names the file, line and column and says how to fix it, e.g.
//   "fedn.yaml:4:3: unknown entry point 'trian'; did you mean 'train'? (known: build, ...)".
// FEDn's split-learning entry points `forward` and `backward` are accepted so FEDn
// projects load unchanged, but fedcli never runs them. The full format and every message:
// docs/project-file.md.
//
// A project names its Python environment with `python_env: python_env.yaml` (FEDn's
// format, strict: unknown keys are errors):
//   name: my-env                  # optional, informational
//   python: "3.11"                # optional, informational (fedcli uses the base interpreter)
//   build_dependencies: [pip]     # optional pip requirement specifiers, installed first
//   dependencies: [numpy, torch]  # optional pip requirement specifiers
// load() reads it together with the project file, so a Project is a snapshot of both; the
// environment itself is made by core/dispatch/python_env.hpp.
//
// Code layout: project.cpp has everything but the YAML parsing, which is in parse.cpp, so a
// program that receives a Project as JSON (from_json) does not load yaml-cpp: the client
// daemon asks a `fedcli project validate --json` child for its project.
//
// Thread-safety: no shared state (load() only reads the files); a Project is a plain value.
#pragma once

#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fedcli::project {

/// Project file names looked for in a project folder, in this order.
inline constexpr std::string_view k_project_file_names[] = {"fedcli.yaml", "fedn.yaml",
                                                            "scaleout.yaml"};

/// Entry point names fedcli runs, in the order a client uses them.
inline constexpr std::string_view k_entry_point_names[] = {"build", "startup", "train", "validate",
                                                           "predict"};

/// FEDn split-learning entry points: accepted (and checked like the others) so FEDn projects
/// load unchanged, but fedcli never runs them.
inline constexpr std::string_view k_split_learning_entry_point_names[] = {"forward", "backward"};

struct EntryPoint {
    std::string name;     ///< "train", ...
    std::string command;  ///< the command line, split like a shell would when run
    int line = 0;         ///< 1-based line of the entry in the project file (0 if unknown)
};

/// A parsed python_env.yaml.
struct PythonEnv {
    std::filesystem::path file;  ///< as given to load/parse
    std::string name;
    std::string python;  ///< informational only
    std::vector<std::string> build_dependencies;
    std::vector<std::string> dependencies;
    std::string text;  ///< the file's bytes (part of the environment's cache key)
};

struct Project {
    std::filesystem::path directory;  ///< the project folder (absolute)
    std::filesystem::path file;       ///< the project file that was loaded (absolute)
    std::string name;                 ///< `name:`, or the folder name when absent
    std::optional<std::filesystem::path> python_env;  ///< `python_env:` as written
    int python_env_line = 0;  ///< 1-based line of `python_env:` (0 if unknown or absent)
    /// The python_env file's contents, read by load()/load_file() when `python_env:` names
    /// an existing file (unset otherwise: check_for_client reports a missing one, and running
    /// an entry point then fails). parse() never reads it.
    std::optional<PythonEnv> environment;
    /// In file order; includes `forward`/`backward` when present (see
    /// k_split_learning_entry_point_names), which callers must not run.
    std::vector<EntryPoint> entry_points;

    /// The entry point with this name, or nullptr.
    const EntryPoint* find(std::string_view entry_point) const;
    /// `python_env:` resolved against the project folder (only when python_env is set).
    std::filesystem::path python_env_file() const;
    /// Where `python_env:` is, for messages: "<file>:<line>", or "<file>" when the line is
    /// unknown; `file` names the project file (empty: Project::file).
    std::string python_env_location(const std::string& file = {}) const;
};

/// Finds the project file in `directory` (see k_project_file_names; the first that exists
/// wins). Returns `directory / name` as given, not made absolute. Throws fedcli::Error
/// naming the folder and the names tried when there is none, or when the folder is missing.
/// `.yml` spellings are not accepted (FEDn does not read them either); when one is present
/// the error says to rename it.
std::filesystem::path find_project_file(const std::filesystem::path& directory);

/// Loads and checks the project in `directory`, with its python_env file. Throws
/// fedcli::Error with file:line:column, where file is the path as found under `directory`
/// as given; a python_env file that does not parse is reported as
/// "fedn.yaml:3: python_env: <env file>:2:1: unknown key ...".
Project load(const std::filesystem::path& directory);

/// Loads and checks a project file; its folder is the project folder.
Project load_file(const std::filesystem::path& file);

/// Parses project file text; `file` names it in errors (as given) and sets
/// Project::file/directory (made absolute; the file need not exist).
Project parse(std::string_view text, const std::filesystem::path& file);

/// Parses python_env.yaml text; errors are "file:line:column: problem; fix".
PythonEnv parse_python_env(std::string_view text, const std::filesystem::path& file);
/// Reads and parses a python_env.yaml file.
PythonEnv load_python_env(const std::filesystem::path& file);

/// The project as one JSON object (file, directory, name, python_env, python_env_line,
/// environment, entry_points), the form `fedcli project validate --json` prints.
nlohmann::ordered_json to_json(const Project& project);
/// Reads to_json's form back; throws fedcli::Error naming `source` and the field for
/// anything missing or of the wrong kind.
Project from_json(std::string_view text, const std::string& source);

/// Problems that do not stop the project from loading but stop it from working as a
/// client project: no `train` entry point, a python_env file that does not exist. Each
/// message names the file (and line where known) and the fix. Empty when all is well.
std::vector<std::string> check_for_client(const Project& project);

}  // namespace fedcli::project
