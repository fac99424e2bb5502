// `fedcli project ...`: see cli/cmd_project.hpp.
#include "cli/cmd_project.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "templates/templates.hpp"

namespace fedcli::cli {

namespace {

Action setup_init(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ProjectInitOptions>();
    command.add_option("directory", options->directory, "Folder for the new project")
        ->type_name("DIR")
        ->required();
    std::string names;
    for (const auto& info : templates::all()) {
        names += "\n  " + std::string(info.name) + ": " + std::string(info.description);
    }
    command.add_option("--template,-t", options->template_name, "Project template:" + names)
        ->type_name("NAME")
        ->capture_default_str();
    command.add_option("--name,-n", options->name, "Project name (default: the folder's name)")
        ->type_name("NAME");
    command.add_flag("--force", options->force, "Overwrite files that already exist");
    std::ostream& out = streams.out;
    return [options, &out] { return project_init(*options, out); };
}

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
    nlohmann::ordered_json json = project::to_json(project);
    json["problems"] = problems;
    json["ok"] = problems.empty();
    return json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

int project_init(const ProjectInitOptions& options, std::ostream& out) {
    auto directory = std::filesystem::absolute(options.directory).lexically_normal();
    if (directory.has_filename() == false) directory = directory.parent_path();
    std::string name = options.name.empty() ? directory.filename().string() : options.name;
    auto written = templates::instantiate(
        options.template_name, directory, name,
        options.force ? templates::Overwrite::yes : templates::Overwrite::no);
    out << "created project '" << name << "' (template " << options.template_name << ") in "
        << directory.string() << ":\n";
    for (const auto& file : written) out << "  " << file.string() << '\n';
    std::string path = options.directory.string();
    out << "next:\n"
        << "  fedcli run build --path " << path << "\n"
        << "  fedcli run train --path " << path << " --input " << path
        << "/seed.npz --output update.npz\n"
        << "  fedcli run validate --path " << path << " --input update.npz --output metrics.json\n";
    return 0;
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
        {"init", "Create a project folder from a template", setup_init},
        {"validate", "Check a project folder's project file and summarise it", setup_validate},
    };
    add_group(app, "project", "Work with project folders and their project file", k_commands,
              dispatch);
}

}  // namespace fedcli::cli
