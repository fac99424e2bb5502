// `fedcli package ...`: compute packages (core/package): create, inspect, extract.
#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/text.hpp"
#include "core/package/package.hpp"
#include "core/project/project.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::cli {

namespace {

struct CreateOptions {
    std::filesystem::path path = ".";
    std::filesystem::path output = package::k_default_package_name;
    std::vector<std::string> excludes;
    bool no_default_ignores = false;
};

int package_create(const CreateOptions& options, std::ostream& out) {
    // A package is only useful when its project file loads: check before packing.
    project::Project project = project::load(options.path);
    package::CreateOptions create;
    create.default_ignores =
        options.no_default_ignores ? package::DefaultIgnores::no : package::DefaultIgnores::yes;
    for (const auto& pattern : options.excludes) create.extra_rules.add(pattern, "--exclude");
    auto result = package::create(project.directory, options.output, create);
    out << "package  " << result.path.string() << '\n'
        << "size     " << human_bytes(result.size_bytes) << " (" << group_digits(result.size_bytes)
        << " bytes)\n"
        << "files    " << result.file_count << " (" << human_bytes(result.content_bytes)
        << " of content), " << result.directory_count << " folders, " << result.symlink_count
        << " symlinks\n"
        << "sha256   " << result.sha256 << '\n';
    return 0;
}

Action setup_create(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<CreateOptions>();
    command.add_option("--path,-p", options->path, "Project folder")
        ->type_name("DIR")
        ->capture_default_str();
    command.add_option("--output,-o", options->output, "Package file to write")
        ->type_name("FILE")
        ->capture_default_str();
    command
        .add_option("--exclude", options->excludes,
                    "Leave out paths matching this gitignore pattern (repeatable)")
        ->type_name("PATTERN");
    command.add_flag("--no-default-ignores", options->no_default_ignores,
                     "Do not leave out .git/, __pycache__/ and .fedcli/ by default");
    std::ostream& out = streams.out;
    return [options, &out] { return package_create(*options, out); };
}

struct InspectOptions {
    std::filesystem::path file;
    bool json = false;
};

int package_inspect(const InspectOptions& options, std::ostream& out) {
    auto entries = package::list(options.file);
    std::string sha256 = util::sha256_file(options.file);
    std::uint64_t content = 0;
    std::size_t files = 0;
    for (const auto& entry : entries) {
        if (entry.type == package::EntryType::file) {
            ++files;
            content += entry.size;
        }
    }
    if (options.json) {
        nlohmann::ordered_json json;
        json["file"] = options.file.string();
        json["sha256"] = sha256;
        json["entries"] = nlohmann::ordered_json::array();
        for (const auto& entry : entries) {
            nlohmann::ordered_json row = {{"path", entry.path},
                                          {"type", package::entry_type_name(entry.type)},
                                          {"size", entry.size},
                                          {"mode", entry.mode}};
            if (!entry.link_target.empty()) row["link_target"] = entry.link_target;
            json["entries"].push_back(row);
        }
        json["files"] = files;
        json["content_bytes"] = content;
        out << json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
        return 0;
    }
    Table table({"mode", "type", "size", "path"},
                {Table::Align::left, Table::Align::left, Table::Align::right, Table::Align::left});
    for (const auto& entry : entries) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", entry.mode);
        std::string path = entry.path;
        if (!entry.link_target.empty()) path += " -> " + entry.link_target;
        table.add_row({mode, std::string(package::entry_type_name(entry.type)),
                       entry.type == package::EntryType::file ? group_digits(entry.size) : "",
                       path});
    }
    table.print(out);
    out << entries.size() << " entries, " << files << " files, " << human_bytes(content)
        << " of content\n"
        << "sha256 " << sha256 << '\n';
    return 0;
}

Action setup_inspect(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<InspectOptions>();
    command.add_option("file", options->file, "Package (.tgz)")->type_name("FILE")->required();
    command.add_flag("--json", options->json, "Print one JSON object instead of a table");
    std::ostream& out = streams.out;
    return [options, &out] { return package_inspect(*options, out); };
}

struct ExtractOptions {
    std::filesystem::path file;
    std::filesystem::path destination;
    bool replace = false;
    bool strip_top_folder = false;
    package::Limits limits;
};

int package_extract(const ExtractOptions& options, std::ostream& out) {
    package::ExtractOptions extract;
    extract.overwrite = options.replace ? package::Overwrite::replace : package::Overwrite::no;
    extract.top_folder =
        options.strip_top_folder ? package::TopFolder::strip_single : package::TopFolder::keep;
    extract.limits = options.limits;
    auto result = package::extract(options.file, options.destination, extract);
    out << "extracted " << result.entry_count << " entries (" << result.file_count << " files, "
        << human_bytes(result.total_bytes) << ") into " << result.destination.string() << '\n';
    if (!result.stripped_folder.empty()) {
        out << "removed the top-level folder '" << result.stripped_folder << "'\n";
    }
    return 0;
}

Action setup_extract(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ExtractOptions>();
    command.add_option("file", options->file, "Package (.tgz)")->type_name("FILE")->required();
    command.add_option("destination", options->destination, "Folder to extract into")
        ->type_name("DIR")
        ->required();
    command.add_flag("--replace", options->replace,
                     "Replace the destination folder if it exists and is not empty");
    command.add_flag("--strip-top-folder", options->strip_top_folder,
                     "When everything is inside one folder (old FEDn packages), drop it");
    command
        .add_option("--max-bytes", options->limits.max_total_bytes,
                    "Refuse more file data than this, all files together")
        ->type_name("BYTES")
        ->capture_default_str();
    command
        .add_option("--max-file-bytes", options->limits.max_file_bytes,
                    "Refuse a file larger than this")
        ->type_name("BYTES")
        ->capture_default_str();
    command
        .add_option("--max-package-bytes", options->limits.max_package_bytes,
                    "Refuse a package file larger than this")
        ->type_name("BYTES")
        ->capture_default_str();
    command
        .add_option("--max-entries", options->limits.max_entries, "Refuse more entries than this")
        ->type_name("N")
        ->capture_default_str();
    std::ostream& out = streams.out;
    return [options, &out] { return package_extract(*options, out); };
}

}  // namespace

void register_package_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"create", "Pack a project folder into a deterministic .tgz (honours .ignore)",
         setup_create},
        {"inspect", "List a package's entries and its sha256", setup_inspect},
        {"extract", "Extract a package safely (all or nothing, no path escapes)", setup_extract},
    };
    add_group(app, "package", "Make, inspect, unpack and push compute packages", k_commands,
              dispatch);
}

}  // namespace fedcli::cli
