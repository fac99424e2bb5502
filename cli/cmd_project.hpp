// `fedcli project ...`: project folders and their project file.
//
// The commands are plain functions so that tests (and later commands) can call them
// without going through the command line.
#pragma once

#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "core/project/project.hpp"

namespace fedcli::cli {

struct ProjectInitOptions {
    std::filesystem::path directory;
    std::string template_name = "numpy";
    std::string name;  ///< empty: the folder's name
    bool force = false;
};

/// `fedcli project init DIR [--template T] [--name NAME] [--force]`: writes the template's
/// files into DIR (created if missing) and prints what it wrote and what to run next.
/// Refuses to overwrite existing files unless options.force.
int project_init(const ProjectInitOptions& options, std::ostream& out);

struct ProjectValidateOptions {
    std::filesystem::path path = ".";
    bool json = false;
};

/// The human-readable summary of a loaded project: project file, name, python_env and the
/// entry points with their commands.
void print_project_summary(const project::Project& project, std::ostream& out);

/// The machine-readable form: one JSON object on one line, keys in this order:
///   {
///     "file": "/abs/fedcli.yaml",        // the project file that was loaded
///     "directory": "/abs",               // the project folder
///     "name": "my-project",
///     "python_env": "python_env.yaml",   // as written, or null when absent
///     "entry_points": [{"name": "train", "command": "python3 train.py", "line": 4}],
///     "problems": ["..."],               // from project::check_for_client
///     "ok": true                         // problems is empty
///   }
std::string project_json(const project::Project& project, const std::vector<std::string>& problems);

/// `fedcli project validate [--path DIR] [--json]`: loads the project in options.path,
/// prints its summary and "ok" to `out` (or the JSON object), and returns 0. Throws
/// fedcli::Error when the project does not load and Problems (after printing the summary)
/// when it loads but cannot work as a client project.
int project_validate(const ProjectValidateOptions& options, std::ostream& out);

}  // namespace fedcli::cli
