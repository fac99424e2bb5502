#include "core/package/ignore.hpp"

#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <system_error>

#include "core/error.hpp"

namespace fedcli::package {
namespace {

struct NamedClass {
    std::string_view name;
    int (*test)(int);
};

constexpr std::array<NamedClass, 12> k_named_classes{{
    {"alnum", [](int c) { return std::isalnum(c); }},
    {"alpha", [](int c) { return std::isalpha(c); }},
    {"blank", [](int c) { return std::isblank(c); }},
    {"cntrl", [](int c) { return std::iscntrl(c); }},
    {"digit", [](int c) { return std::isdigit(c); }},
    {"graph", [](int c) { return std::isgraph(c); }},
    {"lower", [](int c) { return std::islower(c); }},
    {"print", [](int c) { return std::isprint(c); }},
    {"punct", [](int c) { return std::ispunct(c); }},
    {"space", [](int c) { return std::isspace(c); }},
    {"upper", [](int c) { return std::isupper(c); }},
    {"xdigit", [](int c) { return std::isxdigit(c); }},
}};

// Named classes are ASCII-only so that matching never depends on the process locale.
bool in_named_class(const NamedClass& named, unsigned char c) {
    return c < 128 && named.test(c);
}

std::string_view base_name(std::string_view path) {
    auto slash = path.rfind('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// Drops trailing spaces that are not escaped by a backslash.
std::string_view trim_trailing_spaces(std::string_view line) {
    while (!line.empty() && line.back() == ' ') {
        std::size_t backslashes = 0;
        for (std::size_t i = line.size() - 1; i > 0 && line[i - 1] == '\\'; --i) ++backslashes;
        if (backslashes % 2 == 1) break;
        line.remove_suffix(1);
    }
    return line;
}

}  // namespace

std::vector<IgnoreRules::Token> IgnoreRules::compile(std::string_view body,
                                                     const std::string& where) {
    std::vector<Token> tokens;
    auto literal = [&](char c) {
        Token token;
        token.kind = Token::Kind::literal;
        token.character = c;
        tokens.push_back(token);
    };
    std::size_t i = 0;
    while (i < body.size()) {
        char c = body[i];
        if (c == '\\') {
            if (i + 1 == body.size()) throw Error(where + ": pattern ends with a lone '\\'");
            literal(body[i + 1]);
            i += 2;
        } else if (c == '?') {
            tokens.push_back(Token{Token::Kind::any_character, 0, {}});
            ++i;
        } else if (c == '*') {
            std::size_t end = i;
            while (end < body.size() && body[end] == '*') ++end;
            bool starts_component = i == 0 || body[i - 1] == '/';
            bool ends_component = end == body.size() || body[end] == '/';
            if (end - i >= 2 && starts_component && ends_component) {
                if (end == body.size()) {
                    tokens.push_back(Token{Token::Kind::anything, 0, {}});
                    i = end;
                } else {
                    tokens.push_back(Token{Token::Kind::any_folders, 0, {}});
                    i = end + 1;  // the '/' belongs to "**/"
                }
            } else {
                tokens.push_back(Token{Token::Kind::star, 0, {}});
                i = end;
            }
        } else if (c == '[') {
            Token token;
            token.kind = Token::Kind::character_class;
            std::size_t j = i + 1;
            bool negated = false;
            if (j < body.size() && (body[j] == '!' || body[j] == '^')) {
                negated = true;
                ++j;
            }
            bool first = true;
            bool closed = false;
            while (j < body.size()) {
                char member = body[j];
                if (member == ']' && !first) {
                    closed = true;
                    ++j;
                    break;
                }
                first = false;
                if (member == '[' && j + 1 < body.size() && body[j + 1] == ':') {
                    auto close = body.find(":]", j + 2);
                    if (close == std::string_view::npos) break;
                    auto name = body.substr(j + 2, close - j - 2);
                    const NamedClass* found = nullptr;
                    for (const auto& named : k_named_classes) {
                        if (named.name == name) found = &named;
                    }
                    if (!found) {
                        throw Error(where + ": unknown character class '[:" + std::string(name) +
                                    ":]'");
                    }
                    for (int b = 0; b < 256; ++b) {
                        if (in_named_class(*found, static_cast<unsigned char>(b))) token.set.set(b);
                    }
                    j = close + 2;
                    continue;
                }
                if (member == '\\') {
                    if (j + 1 == body.size()) break;
                    member = body[++j];
                }
                unsigned char low = static_cast<unsigned char>(member);
                unsigned char high = low;
                if (j + 2 < body.size() && body[j + 1] == '-' && body[j + 2] != ']') {
                    j += 2;
                    char upper = body[j];
                    if (upper == '\\') {
                        if (j + 1 == body.size()) break;
                        upper = body[++j];
                    }
                    high = static_cast<unsigned char>(upper);
                }
                for (unsigned b = low; b <= high; ++b) token.set.set(b);
                ++j;
            }
            if (!closed) throw Error(where + ": unterminated '[' character class");
            if (negated) token.set.flip();
            token.set.reset(static_cast<unsigned char>('/'));
            tokens.push_back(token);
            i = j;
        } else {
            literal(c);
            ++i;
        }
    }
    return tokens;
}

bool IgnoreRules::matches(const std::vector<Token>& tokens, std::string_view text) {
    // Backtracking with a memo of (token, position) pairs already known to fail, so the
    // cost stays O(tokens x length x length) whatever the pattern.
    const std::size_t width = text.size() + 1;
    std::vector<bool> failed(tokens.size() * width, false);
    std::function<bool(std::size_t, std::size_t)> match = [&](std::size_t t,
                                                              std::size_t i) -> bool {
        if (t == tokens.size()) return i == text.size();
        if (failed[t * width + i]) return false;
        const Token& token = tokens[t];
        bool result = false;
        switch (token.kind) {
            case Token::Kind::literal:
                result = i < text.size() && text[i] == token.character && match(t + 1, i + 1);
                break;
            case Token::Kind::any_character:
                result = i < text.size() && text[i] != '/' && match(t + 1, i + 1);
                break;
            case Token::Kind::character_class:
                result = i < text.size() && token.set.test(static_cast<unsigned char>(text[i])) &&
                         match(t + 1, i + 1);
                break;
            case Token::Kind::star:
                for (std::size_t j = i;; ++j) {
                    if (match(t + 1, j)) {
                        result = true;
                        break;
                    }
                    if (j == text.size() || text[j] == '/') break;
                }
                break;
            case Token::Kind::any_folders:
                result = match(t + 1, i);
                for (std::size_t j = i + 1; !result && j <= text.size(); ++j) {
                    if (text[j - 1] == '/') result = match(t + 1, j);
                }
                break;
            case Token::Kind::anything:
                result = true;
                break;
        }
        if (!result) failed[t * width + i] = true;
        return result;
    };
    return match(0, 0);
}

IgnoreRules IgnoreRules::parse(std::string_view text, const std::string& source) {
    IgnoreRules rules;
    rules.add(text, source);
    return rules;
}

void IgnoreRules::add(std::string_view text, const std::string& source) {
    std::size_t line_number = 0;
    while (!text.empty()) {
        ++line_number;
        auto newline = text.find('\n');
        std::string_view line = text.substr(0, newline);
        text.remove_prefix(newline == std::string_view::npos ? text.size() : newline + 1);

        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty() || line.front() == '#') continue;
        line = trim_trailing_spaces(line);
        if (line.empty()) continue;

        Pattern pattern;
        pattern.text = std::string(line);
        std::string where =
            source + ":" + std::to_string(line_number) + ": pattern '" + pattern.text + "'";
        std::string_view body = line;
        if (body.front() == '!') {
            pattern.negated = true;
            body.remove_prefix(1);
        }
        // A trailing '/' (not an escaped one) restricts the pattern to folders.
        if (!body.empty() && body.back() == '/') {
            std::size_t backslashes = 0;
            for (std::size_t i = body.size() - 1; i > 0 && body[i - 1] == '\\'; --i) ++backslashes;
            if (backslashes % 2 == 0) {
                pattern.directory_only = true;
                body.remove_suffix(1);
            }
        }
        pattern.anchored = body.find('/') != std::string_view::npos;
        if (!body.empty() && body.front() == '/') body.remove_prefix(1);
        // "!", "/" and "!/" name nothing a package could hold.
        if (body.empty()) continue;
        pattern.tokens = compile(body, where);
        m_patterns.push_back(std::move(pattern));
    }
}

void IgnoreRules::add(const IgnoreRules& other) {
    m_patterns.insert(m_patterns.end(), other.m_patterns.begin(), other.m_patterns.end());
}

bool IgnoreRules::excludes(std::string_view relative_path, bool is_directory) const {
    std::string_view name = base_name(relative_path);
    for (auto it = m_patterns.rbegin(); it != m_patterns.rend(); ++it) {
        if (it->directory_only && !is_directory) continue;
        if (matches(it->tokens, it->anchored ? relative_path : name)) return !it->negated;
    }
    return false;
}

bool IgnoreRules::is_ignored(std::string_view relative_path, bool is_directory) const {
    for (std::size_t slash = relative_path.find('/'); slash != std::string_view::npos;
         slash = relative_path.find('/', slash + 1)) {
        if (excludes(relative_path.substr(0, slash), true)) return true;
    }
    return excludes(relative_path, is_directory);
}

IgnoreRules load_project_ignore_rules(const std::filesystem::path& project_dir,
                                      DefaultIgnores defaults) {
    IgnoreRules rules;
    if (defaults == DefaultIgnores::yes) rules.add(k_default_ignore_rules, "built-in rules");
    for (const char* name : k_ignore_file_names) {
        auto path = project_dir / name;
        std::error_code error;
        auto status = std::filesystem::status(path, error);
        if (status.type() == std::filesystem::file_type::not_found) continue;
        if (error) throw Error(path.string() + ": " + error.message());
        if (status.type() != std::filesystem::file_type::regular) {
            throw Error(path.string() + ": ignore file is not a regular file");
        }
        std::ifstream in(path, std::ios::binary);
        if (!in) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
        std::ostringstream text;
        text << in.rdbuf();
        if (in.bad()) throw Error(path.string() + ": cannot read: " + std::strerror(errno));
        rules.add(text.str(), path.string());
    }
    return rules;
}

}  // namespace fedcli::package
