// The parts of core/project that do not parse YAML (see project.hpp): lookups, checks and
// the JSON form. The YAML side is parse.cpp.
#include "core/project/project.hpp"

#include <nlohmann/json.hpp>
#include <system_error>

#include "core/error.hpp"
#include "core/util/json_fields.hpp"

namespace fedcli::project {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

const EntryPoint* Project::find(std::string_view entry_point) const {
    for (const auto& candidate : entry_points) {
        if (candidate.name == entry_point) return &candidate;
    }
    return nullptr;
}

fs::path Project::python_env_file() const {
    return (directory / python_env.value_or(fs::path())).lexically_normal();
}

std::string Project::python_env_location(const std::string& file_label) const {
    const std::string label = file_label.empty() ? file.string() : file_label;
    return python_env_line > 0 ? label + ":" + std::to_string(python_env_line) : label;
}

nlohmann::ordered_json to_json(const Project& project) {
    ordered_json json;
    json["file"] = project.file.string();
    json["directory"] = project.directory.string();
    json["name"] = project.name;
    json["python_env"] =
        project.python_env ? ordered_json(project.python_env->string()) : ordered_json(nullptr);
    json["python_env_line"] = project.python_env_line;
    if (project.environment) {
        const PythonEnv& env = *project.environment;
        json["environment"] = {{"file", env.file.string()},
                               {"name", env.name},
                               {"python", env.python},
                               {"build_dependencies", env.build_dependencies},
                               {"dependencies", env.dependencies},
                               {"text", env.text}};
    } else {
        json["environment"] = nullptr;
    }
    json["entry_points"] = ordered_json::array();
    for (const auto& entry_point : project.entry_points) {
        json["entry_points"].push_back({{"name", entry_point.name},
                                        {"command", entry_point.command},
                                        {"line", entry_point.line}});
    }
    return json;
}

Project from_json(std::string_view text, const std::string& source) {
    const nlohmann::json document = nlohmann::json::parse(text, nullptr, false);
    if (document.is_discarded()) throw Error(source + ": not a JSON document");
    const util::Fields fields(document, source, "project");
    Project project;
    project.file = fields.string("file");
    project.directory = fields.string("directory");
    project.name = fields.string("name");
    if (auto python_env = fields.optional_string("python_env")) project.python_env = *python_env;
    project.python_env_line = static_cast<int>(fields.number("python_env_line"));
    if (!fields.at("environment").is_null()) {
        const util::Fields env = fields.object("environment");
        PythonEnv& environment = project.environment.emplace();
        environment.file = env.string("file");
        environment.name = env.string("name");
        environment.python = env.string("python");
        environment.build_dependencies = env.strings("build_dependencies");
        environment.dependencies = env.strings("dependencies");
        environment.text = env.string("text");
    }
    const nlohmann::json& entry_points = fields.at("entry_points");
    if (!entry_points.is_array()) fields.fail("entry_points", "expected an array");
    for (const nlohmann::json& item : entry_points) {
        const util::Fields entry(item, source, fields.path("entry_points") + "[]");
        project.entry_points.push_back({entry.string("name"), entry.string("command"),
                                        static_cast<int>(entry.number("line"))});
    }
    if (project.file.is_relative() || project.directory.is_relative()) {
        fields.fail("file", "expected absolute paths for the project file and folder");
    }
    return project;
}

std::vector<std::string> check_for_client(const Project& project) {
    std::vector<std::string> problems;
    const std::string file = project.file.string();
    if (!project.find("train")) {
        problems.push_back(file +
                           ": no 'train' entry point; a client needs one: add entry_points: "
                           "train: command: ...");
    }
    if (project.python_env) {
        const fs::path resolved = project.python_env_file();
        const std::string where = project.python_env_location();
        std::error_code error;
        auto status = fs::status(resolved, error);
        if (!fs::exists(status)) {
            problems.push_back(where + ": python_env '" + project.python_env->string() +
                               "' does not exist (looked for " + resolved.string() +
                               "); create it or remove the python_env line");
        } else if (fs::is_directory(status)) {
            problems.push_back(where + ": python_env '" + project.python_env->string() +
                               "' is a folder; it must name a python_env.yaml file");
        }
    }
    return problems;
}

}  // namespace fedcli::project
