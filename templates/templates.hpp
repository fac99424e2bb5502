// The project templates that `fedcli project init` writes, embedded in the binary at build
// time (templates/embed.cmake) so an installed fedcli needs nothing from the source tree.
//
// A template is a set of files with paths relative to the new project's folder. The text
// "{{name}}" in any file is replaced by the project's name when it is written.
//
// Thread-safety: the embedded data is immutable; functions are reentrant.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace fedcli::templates {

/// One file of one template, as embedded.
struct EmbeddedFile {
    std::string_view template_name;
    std::string_view path;  ///< relative to the project folder
    std::string_view content;
};

/// Every embedded file of every template (generated code).
const std::vector<EmbeddedFile>& embedded_files();

struct TemplateInfo {
    std::string_view name;
    std::string_view description;
};

/// The templates, in the order `project init --help` lists them.
const std::vector<TemplateInfo>& all();

enum class Overwrite { no, yes };

/// Writes template `name` into `directory` (created if missing) for a project called
/// `project_name`. Without Overwrite::yes, refuses (before writing anything) when any of the
/// template's files already exists, naming them. Returns the files written, relative paths.
/// Throws fedcli::Error for an unknown template (with a did-you-mean) or a bad project name.
std::vector<std::filesystem::path> instantiate(std::string_view name,
                                               const std::filesystem::path& directory,
                                               const std::string& project_name,
                                               Overwrite overwrite);

}  // namespace fedcli::templates
