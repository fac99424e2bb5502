// `fedcli project ...`: see cli/cmd_project.hpp.
#include "cli/cmd_project.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"

namespace fedcli::cli {

namespace {

Action setup_validate(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ProjectValidateOptions>();
    command.add_option("--path", options->path, "Project folder")
        ->type_name("DIR")
        ->capture_default_str();
    command.add_flag("--json", options->json, "Print one JSON object instead of a summary");
    std::ostream& out = streams.out;
    return [options, &out] { return project_validate(*options, out); };
}

}  // namespace

void print_project_summary(const project::Project& project, std::ostream& out) {
    out << "project file  " << project.file.string() << '\n'
        << "name          " << project.name << '\n'
        << "python_env    " << (project.python_env ? project.python_env->string() : "(none)")
        << '\n'
        << "entry points  " << project.entry_points.size() << '\n';
    // Commands line up with the values above unless an entry point's name is too long.
    std::size_t name_width = 10;
    for (const auto& entry_point : project.entry_points) {
        name_width = std::max(name_width, entry_point.name.size());
    }
    for (const auto& entry_point : project.entry_points) {
        out << "  " << entry_point.name
            << std::string(name_width - entry_point.name.size() + 2, ' ') << entry_point.command
            << '\n';
    }
}

std::string project_json(const project::Project& project,
                         const std::vector<std::string>& problems) {
    nlohmann::ordered_json json;
    json["file"] = project.file.string();
    json["directory"] = project.directory.string();
    json["name"] = project.name;
    json["python_env"] = project.python_env ? nlohmann::ordered_json(project.python_env->string())
                                            : nlohmann::ordered_json(nullptr);
    json["entry_points"] = nlohmann::ordered_json::array();
    for (const auto& entry_point : project.entry_points) {
        json["entry_points"].push_back({{"name", entry_point.name},
                                        {"command", entry_point.command},
                                        {"line", entry_point.line}});
    }
    json["problems"] = problems;
    json["ok"] = problems.empty();
    return json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

int project_validate(const ProjectValidateOptions& options, std::ostream& out) {
    project::Project project = project::load(options.path);
    std::vector<std::string> problems = project::check_for_client(project);
    if (options.json) {
        out << project_json(project, problems) << '\n';
    } else {
        print_project_summary(project, out);
        if (problems.empty()) out << "ok\n";
    }
    if (!problems.empty()) throw Problems(std::move(problems));
    return 0;
}

void register_project_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"validate", "Check a project folder's project file and summarise it", setup_validate},
    };
    add_group(app, "project", "Work with project folders and their project file", k_commands,
              dispatch);
}

}  // namespace fedcli::cli
