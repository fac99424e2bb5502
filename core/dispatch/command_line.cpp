#include "core/dispatch/command_line.hpp"

#include "core/error.hpp"

namespace fedcli::dispatch {
namespace {

constexpr std::string_view k_shell_hint =
    "fedcli runs entry points without a shell: quote the character if it is meant "
    "literally, or run a shell explicitly, e.g. command: sh -c '...'";

bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

bool is_name_char(char c) {
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/// True when `$` followed by `next` is a parameter expansion or command substitution in sh.
bool starts_expansion(char next) {
    return is_name_char(next) || next == '{' || next == '(' ||
           std::string_view("@*#?$!-").find(next) != std::string_view::npos;
}

class Splitter {
  public:
    Splitter(std::string_view command, const std::string& where)
        : m_command(command), m_where(where) {}

    std::vector<std::string> split() {
        while (m_pos < m_command.size()) {
            char c = m_command[m_pos];
            if (is_blank(c)) {
                finish_word();
                ++m_pos;
            } else if (c == '#' && !m_in_word) {
                while (m_pos < m_command.size() && m_command[m_pos] != '\n') ++m_pos;
            } else if (c == '\\') {
                backslash();
            } else if (c == '\'') {
                single_quoted();
            } else if (c == '"') {
                double_quoted();
            } else {
                unquoted(c);
            }
        }
        finish_word();
        if (m_words.empty()) fail("the command is empty", "give the program to run");
        return std::move(m_words);
    }

  private:
    [[noreturn]] void fail(const std::string& problem, std::string_view fix) const {
        std::string message = m_where + ": " + problem;
        if (!m_command.empty()) message += " in command \"" + std::string(m_command) + "\"";
        message += "; ";
        message += fix;
        throw Error(message);
    }

    [[noreturn]] void fail_at(std::size_t pos, const std::string& problem,
                              std::string_view fix) const {
        fail(problem + " at column " + std::to_string(pos + 1), fix);
    }

    void append(char c, bool quoted) {
        if (!m_in_word) {
            m_in_word = true;
            m_word_is_unquoted_name = true;
        }
        // `NAME=value` as the first word is an assignment in sh, not a program name.
        if (m_words.empty() && !quoted && c == '=' && !m_word.empty() && m_word_is_unquoted_name) {
            fail("'" + m_word + "=...' is a shell variable assignment",
                 "set the variable in the environment instead, or run a shell explicitly, "
                 "e.g. command: sh -c '...'");
        }
        if (quoted || !(m_word.empty() ? is_name_start(c) : is_name_char(c))) {
            m_word_is_unquoted_name = false;
        }
        m_word += c;
    }

    void start_empty_word() {
        if (!m_in_word) {
            m_in_word = true;
            m_word_is_unquoted_name = false;
        }
    }

    void finish_word() {
        if (m_in_word) m_words.push_back(std::move(m_word));
        m_word.clear();
        m_in_word = false;
    }

    void backslash() {
        if (m_pos + 1 >= m_command.size()) {
            fail_at(m_pos, "trailing backslash", "remove it or escape it as \\\\");
        }
        char next = m_command[m_pos + 1];
        if (next != '\n') append(next, true);  // backslash-newline is a line continuation
        m_pos += 2;
    }

    void single_quoted() {
        std::size_t close = m_command.find('\'', m_pos + 1);
        if (close == std::string_view::npos) {
            fail_at(m_pos, "unterminated single quote", "add the closing '");
        }
        start_empty_word();
        for (std::size_t i = m_pos + 1; i < close; ++i) append(m_command[i], true);
        m_pos = close + 1;
    }

    void double_quoted() {
        std::size_t open = m_pos;
        start_empty_word();
        ++m_pos;
        while (true) {
            if (m_pos >= m_command.size()) {
                fail_at(open, "unterminated double quote", "add the closing \"");
            }
            char c = m_command[m_pos];
            if (c == '"') {
                ++m_pos;
                return;
            }
            if (c == '\\' && m_pos + 1 < m_command.size() &&
                std::string_view("\"\\$`\n").find(m_command[m_pos + 1]) != std::string_view::npos) {
                if (m_command[m_pos + 1] != '\n') append(m_command[m_pos + 1], true);
                m_pos += 2;
                continue;
            }
            if (c == '`' || (c == '$' && m_pos + 1 < m_command.size() &&
                             starts_expansion(m_command[m_pos + 1]))) {
                fail_expansion(m_pos);
            }
            append(c, true);
            ++m_pos;
        }
    }

    [[noreturn]] void fail_expansion(std::size_t pos) const {
        std::string what = m_command[pos] == '`'
                               ? "command substitution (`...`)"
                               : "shell expansion ('$" + std::string(1, m_command[pos + 1]) + "')";
        fail_at(pos, what + " is not performed",
                "fedcli runs entry points without a shell: escape it as \\$ (or use single "
                "quotes) if it is meant literally, read the variable in the program, or run a "
                "shell explicitly, e.g. command: sh -c '...'");
    }

    void unquoted(char c) {
        if (std::string_view("|&;<>()").find(c) != std::string_view::npos) {
            fail_at(m_pos, "shell operator '" + std::string(1, c) + "' is not supported",
                    k_shell_hint);
        }
        if (c == '`' ||
            (c == '$' && m_pos + 1 < m_command.size() && starts_expansion(m_command[m_pos + 1]))) {
            fail_expansion(m_pos);
        }
        if (c == '*' || c == '?' || c == '[') {
            fail_at(m_pos, "glob character '" + std::string(1, c) + "' is not expanded",
                    k_shell_hint);
        }
        if (c == '~' && !m_in_word) {
            fail_at(m_pos, "'~' is not expanded to the home folder",
                    "write the path out, or use a path relative to the project folder");
        }
        append(c, false);
        ++m_pos;
    }

    std::string_view m_command;
    const std::string& m_where;
    std::size_t m_pos = 0;
    std::vector<std::string> m_words;
    std::string m_word;
    bool m_in_word = false;
    bool m_word_is_unquoted_name = false;  // the word so far is an unquoted sh NAME
};

bool is_safe_char(char c) {
    return is_name_char(c) || std::string_view("@%+=:,./-").find(c) != std::string_view::npos;
}

/// The word in single quotes, each ' written as '\\''.
std::string single_quote(std::string_view word) {
    std::string quoted = "'";
    for (char c : word) {
        if (c == '\'') {
            quoted += "'\\''";
        } else {
            quoted += c;
        }
    }
    quoted += '\'';
    return quoted;
}

}  // namespace

std::vector<std::string> split_command(std::string_view command, const std::string& where) {
    return Splitter(command, where).split();
}

std::string quote_word(std::string_view word) {
    bool safe = !word.empty();
    for (char c : word) safe = safe && is_safe_char(c);
    return safe ? std::string(word) : single_quote(word);
}

std::string format_command(const std::vector<std::string>& words) {
    std::string text;
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (i > 0) text += ' ';
        // A first word with '=' would read back as an assignment: always quote it.
        bool looks_like_assignment = i == 0 && words[i].find('=') != std::string::npos;
        text += looks_like_assignment ? single_quote(words[i]) : quote_word(words[i]);
    }
    return text;
}

}  // namespace fedcli::dispatch
