#include "core/project/project.hpp"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <span>
#include <sstream>
#include <system_error>

#include "core/error.hpp"
#include "core/util/suggest.hpp"

namespace fedcli::project {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view k_top_level_keys[] = {"name", "python_env", "entry_points"};
constexpr std::string_view k_entry_point_keys[] = {"command"};
constexpr std::string_view k_utf8_byte_order_mark = "\xEF\xBB\xBF";

std::string join(std::span<const std::string_view> words) {
    std::string joined;
    for (auto word : words) {
        if (!joined.empty()) joined += ", ";
        joined += word;
    }
    return joined;
}

std::string to_lower(std::string_view text) {
    std::string lowered(text);
    for (auto& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return lowered;
}

/// The candidate a typo most likely meant, or nothing when none is close.
std::optional<std::string_view> closest(std::string_view typed,
                                        std::span<const std::string_view> candidates) {
    std::string typed_lower = to_lower(typed);
    std::optional<std::string_view> best;
    std::size_t best_distance = 0;
    for (auto candidate : candidates) {
        std::size_t distance = util::edit_distance(typed_lower, candidate);
        // Longer names tolerate more slips; one edit is always allowed.
        std::size_t allowed = std::max<std::size_t>(1, (candidate.size() + 1) / 3);
        // A truncated name ('python' for 'python_env') is far in edits but obvious to a reader.
        bool is_prefix = typed_lower.size() >= 4 && candidate.starts_with(typed_lower);
        if (distance > allowed && !is_prefix) continue;
        if (is_prefix) distance = std::min(distance, allowed);
        if (!best || distance < best_distance) {
            best = candidate;
            best_distance = distance;
        }
    }
    return best;
}

bool contains(std::span<const std::string_view> names, std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

std::string describe_kind(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Null:
        case YAML::NodeType::Undefined:
            return "nothing";
        case YAML::NodeType::Scalar: {
            // Keep messages on one line even when a runaway scalar swallowed half the file.
            constexpr std::size_t k_max_shown = 100;
            const std::string& text = node.Scalar();
            std::size_t shown = std::min({text.size(), text.find('\n'), k_max_shown});
            return "the text '" + text.substr(0, shown) + (shown < text.size() ? "...'" : "'");
        }
        case YAML::NodeType::Sequence:
            return "a list";
        case YAML::NodeType::Map:
            return "a map";
    }
    return "something else";
}

/// Where a node came from, or nothing for nodes yaml-cpp gives no position.
std::string location(const std::string& file_label, const YAML::Mark& mark) {
    if (mark.is_null()) return file_label;
    return file_label + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
}

// Turns yaml-cpp's terse parser messages into something a project author can act on.
std::string hint_for_syntax_error(std::string_view text, const YAML::Exception& error) {
    if (!error.mark.is_null() && error.mark.line >= 0) {
        std::istringstream lines{std::string(text)};
        std::string line;
        for (int i = 0; i <= error.mark.line && std::getline(lines, line); ++i) {
        }
        std::size_t indent_end = line.find_first_not_of(" \t");
        if (line.substr(0, indent_end).find('\t') != std::string::npos) {
            return "YAML does not allow tabs for indentation; indent with spaces";
        }
    }
    const std::string& message = error.msg;
    if (message == "illegal map value") {
        return "check the indentation, and quote values that contain ': '";
    }
    if (message == "end of map not found") return "check the indentation of this line";
    if (message == "end of sequence flow not found") return "a '[' is not closed with ']'";
    if (message == "end of map flow not found") return "a '{' is not closed with '}'";
    if (message == "illegal EOF in scalar") return "a quoted text is not closed";
    return "";
}

/// Records where each document's first node starts, without building any nodes.
class FirstNodeMark : public YAML::EventHandler {
  public:
    void OnDocumentStart(const YAML::Mark&) override { m_mark.reset(); }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { record(mark); }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { record(mark); }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  const std::string&) override {
        record(mark);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
        record(mark);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {
        record(mark);
    }
    void OnMapEnd() override {}

    std::optional<YAML::Mark> mark() const { return m_mark; }

  private:
    void record(const YAML::Mark& mark) {
        if (!m_mark) m_mark = mark;
    }
    std::optional<YAML::Mark> m_mark;
};

/// Checks and converts one parsed document; holds the file label used in every message.
class Reader {
  public:
    Reader(std::string_view text, std::string file_label)
        : m_text(text), m_file_label(std::move(file_label)) {
        // yaml-cpp positions skip a byte order mark; the text we scan for quotes does not.
        if (m_text.starts_with(k_utf8_byte_order_mark)) {
            m_mark_offset = k_utf8_byte_order_mark.size();
        }
    }

    [[noreturn]] void fail(const YAML::Mark& mark, const std::string& message) const {
        throw Error(location(m_file_label, mark) + ": " + message);
    }

    // yaml-cpp 0.7 accepts a quoted scalar that is never closed when the file ends with a
    // newline: it quietly swallows the rest of the file. Catch that for every scalar we use
    // by scanning the source from the opening quote.
    void check_quotes(const YAML::Node& node) const {
        if (!node.IsScalar() || node.Tag() != "!" || node.Mark().is_null()) return;
        std::size_t start = static_cast<std::size_t>(node.Mark().pos) + m_mark_offset;
        if (start >= m_text.size()) return;
        char quote = m_text[start];
        if (quote != '"' && quote != '\'') return;
        for (std::size_t i = start + 1; i < m_text.size(); ++i) {
            char c = m_text[i];
            if (quote == '"' && c == '\\') {
                ++i;
            } else if (c == quote) {
                // In single quotes, '' is an escaped quote, not the end.
                if (quote == '\'' && i + 1 < m_text.size() && m_text[i + 1] == '\'') {
                    ++i;
                    continue;
                }
                return;
            }
        }
        fail(node.Mark(), std::string("quoted text is never closed: add the closing ") + quote +
                              " (everything after it to the end of the file was read as text)");
    }

    /// The map's entries after rejecting non-text and duplicate keys.
    std::vector<std::pair<YAML::Node, YAML::Node>> entries(const YAML::Node& map) const {
        std::vector<std::pair<YAML::Node, YAML::Node>> result;
        for (auto it = map.begin(); it != map.end(); ++it) {
            // Copies: yaml-cpp's iterator hands out a temporary pair.
            YAML::Node key = it->first;
            YAML::Node value = it->second;
            check_quotes(key);
            if (!key.IsScalar()) {
                fail(key.Mark(), "keys must be names, found " + describe_kind(key));
            }
            // yaml-cpp keeps both entries of a duplicated key but lookups see only one, so a
            // second definition would silently win or lose.
            for (const auto& entry : result) {
                const YAML::Node& earlier = entry.first;
                if (earlier.Scalar() == key.Scalar()) {
                    fail(key.Mark(), "duplicate key '" + key.Scalar() + "' (first at line " +
                                         std::to_string(earlier.Mark().line + 1) +
                                         "); remove one of them");
                }
            }
            result.emplace_back(key, value);
        }
        return result;
    }

    /// "unknown <what> '<key>'<where>; did you mean ...? (known: ...)".
    [[noreturn]] void fail_unknown(const YAML::Node& key, const std::string& what,
                                   const std::string& where,
                                   std::span<const std::string_view> known,
                                   std::span<const std::string_view> also_accepted = {}) const {
        std::vector<std::string_view> candidates(known.begin(), known.end());
        candidates.insert(candidates.end(), also_accepted.begin(), also_accepted.end());
        std::string message = "unknown " + what + " '" + key.Scalar() + "'" + where;
        if (auto suggestion = closest(key.Scalar(), candidates)) {
            message += "; did you mean '" + std::string(*suggestion) + "'?";
        }
        message += " (known: " + join(known) + ")";
        fail(key.Mark(), message);
    }

    /// A non-empty text value; `what` names it in messages ("'name'").
    std::string text_value(const YAML::Node& key, const YAML::Node& value, const std::string& what,
                           const std::string& fix) const {
        check_quotes(value);
        if (value.IsNull()) {
            // An empty value has no position of its own (yaml-cpp gives the next token's).
            fail(key.Mark(), what + " is empty; " + fix);
        }
        if (!value.IsScalar()) {
            fail(value.Mark(), what + " must be text, found " + describe_kind(value) +
                                   "; quote it if it starts with '{' or '['");
        }
        const std::string& text = value.Scalar();
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
            fail(value.Mark(), what + " is empty; " + fix);
        }
        return text;
    }

    EntryPoint entry_point(const YAML::Node& key, const YAML::Node& value) const {
        const std::string& name = key.Scalar();
        const std::string example = "'" + name + ": {command: <program and arguments>}'";
        check_quotes(value);
        if (value.IsNull()) {
            fail(key.Mark(),
                 "entry point '" + name + "' is empty; give it a command, e.g. " + example);
        }
        if (!value.IsMap()) {
            std::string fix = value.IsScalar()
                                  ? "write it as '" + name + ": {command: " + value.Scalar() + "}'"
                                  : "write it as " + example;
            fail(value.Mark(), "entry point '" + name + "' must be a map with a 'command' key, " +
                                   "found " + describe_kind(value) + "; " + fix);
        }
        EntryPoint result;
        result.name = name;
        result.line = key.Mark().line + 1;
        bool has_command = false;
        for (const auto& [entry_key, entry_value] : entries(value)) {
            if (entry_key.Scalar() != "command") {
                fail_unknown(entry_key, "key", " in entry point '" + name + "'",
                             k_entry_point_keys);
            }
            result.command = text_value(
                entry_key, entry_value, "'command' of entry point '" + name + "'",
                "give the program and its arguments, e.g. 'command: python3 " + name + ".py'");
            has_command = true;
        }
        if (!has_command) {
            fail(value.Mark(), "entry point '" + name + "' has no 'command'; add 'command: " +
                                   "<program and arguments>' under it");
        }
        return result;
    }

    void entry_points(const YAML::Node& key, const YAML::Node& value, Project& project) const {
        check_quotes(value);
        if (value.IsNull()) {
            fail(key.Mark(),
                 "'entry_points' is empty; add at least 'train: {command: ...}' "
                 "under it, or remove the line");
        }
        if (!value.IsMap()) {
            fail(value.Mark(),
                 "'entry_points' must be a map from entry point names to "
                 "'{command: ...}', found " +
                     describe_kind(value));
        }
        for (const auto& [name, entry] : entries(value)) {
            const std::string& text = name.Scalar();
            if (!contains(k_entry_point_names, text) &&
                !contains(k_split_learning_entry_point_names, text)) {
                if (contains(k_top_level_keys, text)) {
                    fail(name.Mark(), "'" + text +
                                          "' is not an entry point; it belongs at the top "
                                          "level: remove its indentation");
                }
                if (contains(k_entry_point_keys, text)) {
                    fail(name.Mark(), "'" + text +
                                          "' must be inside an entry point, e.g. 'train: "
                                          "{command: ...}'");
                }
                fail_unknown(name, "entry point", "", k_entry_point_names,
                             k_split_learning_entry_point_names);
            }
            project.entry_points.push_back(entry_point(name, entry));
        }
    }

    void top_level(const YAML::Node& root, Project& project) const {
        for (const auto& [key, value] : entries(root)) {
            const std::string& text = key.Scalar();
            if (text == "name") {
                project.name = text_value(key, value, "'name'",
                                          "give the project a name or remove the line "
                                          "(the folder name is the default)");
            } else if (text == "python_env") {
                project.python_env =
                    text_value(key, value, "'python_env'",
                               "give the path of a python_env.yaml file or remove the line");
                project.python_env_line = key.Mark().line + 1;
            } else if (text == "entry_points") {
                entry_points(key, value, project);
            } else if (contains(k_entry_point_names, text) ||
                       contains(k_split_learning_entry_point_names, text)) {
                fail(key.Mark(), "unknown key '" + text +
                                     "'; entry points go under 'entry_points:' (indent it "
                                     "below an 'entry_points:' line)");
            } else {
                fail_unknown(key, "key", "", k_top_level_keys);
            }
        }
    }

    /// Where each document starts, up to three of them (a project file may hold one).
    ///
    /// yaml-cpp 0.7's LoadAll() loops forever, allocating, on input such as a ',' where a
    /// document should start (jbeder/yaml-cpp#1040, fixed upstream after 0.8): the parser
    /// reports a null document without consuming the token, again and again. Walking the
    /// documents here lets us notice a document that starts where the last one did.
    std::vector<YAML::Mark> document_starts() const {
        std::istringstream stream{std::string(m_text)};
        YAML::Parser parser(stream);
        FirstNodeMark first_node;
        std::vector<YAML::Mark> starts;
        while (starts.size() < 3 && parser.HandleNextDocument(first_node)) {
            YAML::Mark mark = first_node.mark().value_or(YAML::Mark::null_mark());
            if (!starts.empty() && mark.pos == starts.back().pos) {
                std::size_t at = static_cast<std::size_t>(mark.pos) + m_mark_offset;
                std::string what =
                    at < m_text.size() ? "'" + std::string(1, m_text[at]) + "'" : "text";
                throw YAML::ParserException(mark, "unexpected " + what);
            }
            starts.push_back(mark);
        }
        return starts;
    }

    std::string syntax_error(const YAML::Exception& error) const {
        // yaml-cpp 0.7 reports its nesting limit with the message "bad file".
        if (dynamic_cast<const YAML::DeepRecursion*>(&error)) {
            return location(m_file_label, error.mark) +
                   ": invalid YAML: values are nested too deeply";
        }
        std::string message = location(m_file_label, error.mark) + ": invalid YAML: " + error.msg;
        std::string hint = hint_for_syntax_error(m_text, error);
        if (!hint.empty()) message += "; " + hint;
        return message;
    }

    const std::string& file_label() const { return m_file_label; }

  private:
    std::string_view m_text;
    std::string m_file_label;
    std::size_t m_mark_offset = 0;
};

std::vector<std::string> string_list(const YAML::Node& node, const std::string& key,
                                     const fs::path& file) {
    std::vector<std::string> items;
    if (node.IsNull()) return items;
    if (!node.IsSequence()) {
        throw Error(location(file.string(), node.Mark()) + ": '" + key +
                    "' must be a list of pip requirements, e.g. [numpy, torch]");
    }
    for (const auto& item : node) {
        if (!item.IsScalar() || item.Scalar().empty()) {
            throw Error(location(file.string(), item.Mark()) + ": each entry of '" + key +
                        "' must be a pip requirement such as 'numpy' or 'torch>=2'");
        }
        items.push_back(item.Scalar());
    }
    return items;
}

std::string read_text(const fs::path& file, const std::string& what) {
    std::ifstream in(file, std::ios::binary);
    if (!in)
        throw Error("cannot read " + what + " '" + file.string() + "': " + std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        throw Error("cannot read " + what + " '" + file.string() + "': " + std::strerror(errno));
    }
    return text.str();
}

fs::path absolute_normal(const fs::path& path) {
    std::error_code error;
    fs::path absolute = fs::absolute(path, error);
    if (error) absolute = path;
    return absolute.lexically_normal();
}

}  // namespace

fs::path find_project_file(const fs::path& directory) {
    std::error_code error;
    auto status = fs::status(directory, error);
    if (!fs::exists(status)) {
        throw Error("project folder '" + directory.string() + "' does not exist");
    }
    if (!fs::is_directory(status)) {
        throw Error("'" + directory.string() +
                    "' is not a folder; give the project folder (the one holding the project "
                    "file)");
    }
    for (auto name : k_project_file_names) {
        fs::path candidate = directory / name;
        if (fs::is_regular_file(candidate, error)) return candidate;
    }
    std::string message =
        "no project file in '" + directory.string() + "': looked for " + join(k_project_file_names);
    for (auto name : k_project_file_names) {
        fs::path yml = directory / fs::path(name).replace_extension(".yml");
        if (fs::exists(yml, error)) {
            throw Error(message + "; found '" + yml.filename().string() + "': rename it to '" +
                        std::string(name) + "'");
        }
    }
    throw Error(message + "; create fedcli.yaml (e.g. with 'fedcli project init')");
}

Project load(const fs::path& directory) {
    return load_file(find_project_file(directory));
}

Project load_file(const fs::path& file) {
    std::error_code error;
    if (fs::is_directory(file, error)) {
        throw Error("'" + file.string() + "' is a folder, not a project file");
    }
    Project project = parse(read_text(file, "project file"), file);
    if (project.python_env) {
        const fs::path env_file = project.python_env_file();
        if (fs::is_regular_file(env_file, error)) {
            try {
                project.environment = load_python_env(env_file);
            } catch (const Error& failure) {
                throw failure.with_context(project.python_env_location(file.string()) +
                                           ": python_env");
            }
        }
    }
    return project;
}

Project parse(std::string_view text, const fs::path& file) {
    Reader reader(text, file.string());

    std::vector<YAML::Mark> documents;
    YAML::Node root;
    try {
        documents = reader.document_starts();
        if (!documents.empty()) root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& error) {
        throw Error(reader.syntax_error(error));
    }

    Project project;
    project.file = absolute_normal(file);
    project.directory = project.file.parent_path();
    project.name = project.directory.filename().string();

    if (documents.empty() || (documents.size() == 1 && root.IsNull())) {
        throw Error(reader.file_label() +
                    ": the project file is empty; it needs at least 'entry_points:' with "
                    "'train: {command: ...}' under it");
    }
    reader.check_quotes(root);
    if (documents.size() > 1) {
        reader.fail(documents[1],
                    "a second YAML document starts here; a project file holds one document: "
                    "remove the '---' line and merge or delete what follows");
    }
    if (!root.IsMap()) {
        reader.fail(root.Mark(), "a project file must be a map with the keys " +
                                     join(k_top_level_keys) + ", found " + describe_kind(root));
    }
    try {
        reader.top_level(root, project);
    } catch (const YAML::Exception& error) {
        // Every node's kind is checked before it is read, so this is a safety net only.
        throw Error(reader.syntax_error(error));
    }
    return project;
}

PythonEnv parse_python_env(std::string_view text, const fs::path& file) {
    YAML::Node root;
    try {
        root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& error) {
        throw Error(location(file.string(), error.mark) + ": " + error.msg +
                    " (python_env files are YAML: name, python, build_dependencies, "
                    "dependencies)");
    }
    PythonEnv env;
    env.file = file;
    env.text = std::string(text);
    if (root.IsNull()) return env;
    if (!root.IsMap()) {
        throw Error(location(file.string(), root.Mark()) +
                    ": a python_env file must be a map with the keys name, python, "
                    "build_dependencies and dependencies");
    }
    for (const auto& entry : root) {
        std::string key = entry.first.Scalar();
        const YAML::Node& value = entry.second;
        if (key == "name" || key == "python") {
            if (!value.IsNull() && !value.IsScalar()) {
                throw Error(location(file.string(), value.Mark()) + ": '" + key +
                            "' must be a text");
            }
            (key == "name" ? env.name : env.python) = value.IsNull() ? "" : value.Scalar();
        } else if (key == "build_dependencies") {
            env.build_dependencies = string_list(value, key, file);
        } else if (key == "dependencies") {
            env.dependencies = string_list(value, key, file);
        } else {
            throw Error(location(file.string(), entry.first.Mark()) + ": unknown key '" + key +
                        "' in a python_env file (known: name, python, build_dependencies, "
                        "dependencies)");
        }
    }
    return env;
}

PythonEnv load_python_env(const fs::path& file) {
    std::error_code error;
    if (!fs::is_regular_file(file, error)) {
        throw Error("python_env file " + file.string() + " does not exist");
    }
    return parse_python_env(read_text(file, "python_env file"), file);
}

}  // namespace fedcli::project
