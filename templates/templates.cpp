#include "templates/templates.hpp"

#include <algorithm>
#include <fstream>

#include "core/error.hpp"
#include "core/util/suggest.hpp"

namespace fedcli::templates {
namespace {

std::string substitute(std::string_view content, const std::string& project_name) {
    static constexpr std::string_view k_placeholder = "{{name}}";
    std::string text;
    text.reserve(content.size());
    std::size_t at = 0;
    for (std::size_t found; (found = content.find(k_placeholder, at)) != std::string_view::npos;
         at = found + k_placeholder.size()) {
        text.append(content.substr(at, found - at));
        text.append(project_name);
    }
    text.append(content.substr(at));
    return text;
}

}  // namespace

const std::vector<TemplateInfo>& all() {
    static const std::vector<TemplateInfo> k_templates = {
        {"numpy", "softmax regression on synthetic data, Python + numpy only (fast)"},
        {"pytorch", "MLP on Fashion-MNIST with PyTorch (Debian python3-torch)"},
        {"libtorch", "MLP on Fashion-MNIST, entry points in C++ with LibTorch"},
    };
    return k_templates;
}

std::vector<std::filesystem::path> instantiate(std::string_view name,
                                               const std::filesystem::path& directory,
                                               const std::string& project_name,
                                               Overwrite overwrite) {
    const auto& templates = all();
    auto known = std::find_if(templates.begin(), templates.end(),
                              [&](const TemplateInfo& info) { return info.name == name; });
    if (known == templates.end()) {
        std::string names;
        std::vector<std::string> candidates;
        for (const auto& info : templates) {
            names += (names.empty() ? "" : ", ") + std::string(info.name);
            candidates.emplace_back(info.name);
        }
        auto suggestion = util::closest_match(name, candidates);
        throw Error("unknown template '" + std::string(name) + "'" +
                    (suggestion ? "; did you mean '" + *suggestion + "'?" : "") +
                    " (templates: " + names + ")");
    }
    if (project_name.empty() || project_name.find_first_of("\n\r\"'{}:#") != std::string::npos) {
        throw Error("project name '" + project_name +
                    "' is not usable: it must be non-empty, on one line, without quotes, "
                    "braces, ':' or '#'");
    }

    std::vector<const EmbeddedFile*> files;
    for (const auto& file : embedded_files()) {
        if (file.template_name == name) files.push_back(&file);
    }
    std::sort(files.begin(), files.end(),
              [](const EmbeddedFile* a, const EmbeddedFile* b) { return a->path < b->path; });

    if (overwrite == Overwrite::no) {
        std::string existing;
        for (const auto* file : files) {
            if (std::filesystem::exists(directory / file->path)) {
                existing += (existing.empty() ? "" : ", ") + std::string(file->path);
            }
        }
        if (!existing.empty()) {
            throw Error(directory.string() + ": would overwrite " + existing +
                        "; use --force to replace them");
        }
    }

    std::vector<std::filesystem::path> written;
    for (const auto* file : files) {
        auto path = directory / file->path;
        std::error_code error;
        std::filesystem::create_directories(path.parent_path(), error);
        if (error) throw Error(path.parent_path().string() + ": cannot create: " + error.message());
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        auto text = substitute(file->content, project_name);
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        if (!out) throw Error(path.string() + ": cannot write");
        written.emplace_back(file->path);
    }
    return written;
}

}  // namespace fedcli::templates
