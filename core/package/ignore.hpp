// Ignore rules for compute packages, with the semantics of gitignore.
//
// An IgnoreRules object holds patterns parsed from one or more ignore files (in the project
// root: .fednignore, .scaleoutignore, .ignore; see load_project_ignore_rules) and answers
// whether a path relative to the project root is left out of a package. The syntax is
// git's (https://git-scm.com/docs/gitignore):
//   - blank lines match nothing; a line starting with '#' is a comment ("\#" for a literal
//     '#'); trailing spaces are dropped unless escaped ("\ "); a trailing '\r' is dropped;
//   - a leading '!' negates ("\!" for a literal '!'); the last matching pattern decides;
//     a path inside an excluded folder stays excluded whatever later patterns say, because
//     the folder is never entered (exactly as in git);
//   - a trailing '/' makes the pattern match folders only;
//   - a pattern with a '/' at the start or in the middle is anchored at the project root and
//     matched against the whole relative path; otherwise it is matched against the last
//     path component, i.e. at any depth;
//   - '*' matches any run of characters except '/', '?' one character except '/',
//     "[abc]", "[a-z]", "[!a-z]", "[^a-z]" and "[[:alpha:]]"-style classes one character
//     except '/', and '\' escapes the next character;
//   - "**/" at the start or after a '/' matches zero or more whole folders, "/**" at the
//     end matches everything inside, and "**" anywhere else is an ordinary '*'.
// Matching is case-sensitive and bytewise. Malformed patterns (an unterminated '[' class, a
// trailing lone '\') are errors naming the file and line rather than silently matching
// nothing, so a rule meant to keep data out of a package never quietly fails.
//
// FEDn's .fednignore files (fnmatch of the relative path and of the base name) mean the
// same under these rules for the common forms: "name", "*.ext", "folder", "folder/*",
// "a/b.txt". They differ where fnmatch's '*' crosses '/' ("data/*.csv" does not match
// "data/x/y.csv" here).
//
// Thread-safety: an IgnoreRules is a plain value; const member functions may be called from
// several threads at once.
#pragma once

#include <bitset>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace fedcli::package {

/// The ignore files read from a project root, in this order (later files' rules win).
inline constexpr const char* k_ignore_file_names[] = {".fednignore", ".scaleoutignore", ".ignore"};

/// Rules every package starts with, before the project's ignore files; a project can
/// re-include them with "!.git/", "!__pycache__/" or "!.fedcli/" (fedcli run's logs).
inline constexpr std::string_view k_default_ignore_rules = ".git/\n__pycache__/\n.fedcli/\n";

class IgnoreRules {
  public:
    IgnoreRules() = default;

    /// Parses gitignore-syntax text. `source` names the text in error messages (usually the
    /// file name). Throws fedcli::Error "<source>:<line>: <why>" for a malformed pattern.
    static IgnoreRules parse(std::string_view text, const std::string& source);

    /// Appends the patterns of `text`; they take precedence over the ones already held.
    void add(std::string_view text, const std::string& source);
    /// Appends all patterns of `other` after the ones already held.
    void add(const IgnoreRules& other);

    /// The verdict of the patterns on this path alone (last matching pattern wins), not
    /// looking at its parent folders. `relative_path` uses '/' separators, with no leading
    /// or trailing '/'. This is what a tree walk that does not enter excluded folders needs.
    bool excludes(std::string_view relative_path, bool is_directory) const;

    /// Whether the path is left out: it or one of its parent folders is excluded (git's
    /// rule that nothing inside an excluded folder can be re-included).
    bool is_ignored(std::string_view relative_path, bool is_directory) const;

    /// Number of patterns held (comments and blank lines are not patterns).
    std::size_t size() const { return m_patterns.size(); }
    bool empty() const { return m_patterns.empty(); }

  private:
    struct Token {
        enum class Kind {
            literal,         ///< one given character
            any_character,   ///< '?': one character except '/'
            star,            ///< '*': any run of characters without '/'
            any_folders,     ///< "**/": empty, or any run that ends in '/'
            anything,        ///< trailing "**": everything that is left
            character_class  ///< "[...]": one character from a set that never holds '/'
        };
        Kind kind = Kind::literal;
        char character = 0;
        std::bitset<256> set;
    };
    struct Pattern {
        std::string text;  ///< as written, for diagnostics
        std::vector<Token> tokens;
        bool negated = false;
        bool directory_only = false;
        bool anchored = false;  ///< matched against the whole path, not the base name
    };

    static bool matches(const std::vector<Token>& tokens, std::string_view text);
    static std::vector<Token> compile(std::string_view body, const std::string& where);

    std::vector<Pattern> m_patterns;
};

/// How load_project_ignore_rules() starts.
enum class DefaultIgnores { yes, no };

/// The rules for a project folder: k_default_ignore_rules (when asked for), then every
/// file of k_ignore_file_names that exists in `project_dir`, in that order. Only the
/// root's files are read; an ".ignore" in a subfolder is an ordinary file. Throws
/// fedcli::Error when a file exists but cannot be read or holds a malformed pattern.
IgnoreRules load_project_ignore_rules(const std::filesystem::path& project_dir,
                                      DefaultIgnores defaults = DefaultIgnores::yes);

}  // namespace fedcli::package
