// libFuzzer target for the ignore-rule parser and matcher (core/package/ignore.hpp).
//
// An input is ignore-file text, optionally followed by a NUL byte and '\n'-separated paths.
// The text is parsed as one ignore file; when it parses, every path (and, when no path is
// given, a fixed set of typical ones) is judged with excludes() and is_ignored(), as a
// folder and as a file. Invariants checked on every verdict: anything inside an ignored
// folder is ignored; after the rules, a final "*" excludes every path and a final "!*"
// excludes none (the last matching pattern wins); appending a blank line or a comment
// changes nothing. fedcli::Error (a malformed pattern) is the only acceptable failure;
// crashes, sanitizer reports, hangs (exponential matching) and broken invariants are
// findings (std::abort, so libFuzzer keeps the input).
//
// Build and run with scripts/fuzz (clang, -DFEDCLI_FUZZ=ON).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/package/ignore.hpp"

namespace {

namespace package = fedcli::package;

constexpr std::string_view k_default_paths[] = {
    "a",          "a/b",         "a/b/c.txt", "data/train.csv", ".git/config",
    "src/x.py",   "__pycache__", "build/out", "deep/a/b/c/d/e", "file with spaces",
    "[weird]/*?", ".fednignore", "a/**/b",    "x/y/z/",         "\\/\\"};

struct Variants {
    package::IgnoreRules rules;
    package::IgnoreRules padded;  ///< rules + a blank line and a comment
    package::IgnoreRules all;     ///< rules + "*"
    package::IgnoreRules none;    ///< rules + "!*"
};

void check(const Variants& variants, std::string_view path) {
    while (!path.empty() && path.back() == '/') path.remove_suffix(1);
    while (!path.empty() && path.front() == '/') path.remove_prefix(1);
    if (path.empty() || path.size() > 512) return;
    for (bool is_directory : {false, true}) {
        bool excluded = variants.rules.excludes(path, is_directory);
        bool ignored = variants.rules.is_ignored(path, is_directory);
        if (excluded && !ignored) std::abort();
        if (variants.padded.excludes(path, is_directory) != excluded) std::abort();
        if (!variants.all.excludes(path, is_directory)) std::abort();
        if (variants.none.excludes(path, is_directory)) std::abort();
        if (is_directory && ignored) {
            std::string child = std::string(path) + "/child";
            if (!variants.rules.is_ignored(child, false)) std::abort();
            if (!variants.rules.is_ignored(child, true)) std::abort();
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    std::string_view text = input;
    std::string_view paths;
    if (auto nul = input.find('\0'); nul != std::string_view::npos) {
        text = input.substr(0, nul);
        paths = input.substr(nul + 1);
    }
    Variants variants;
    try {
        variants.rules = package::IgnoreRules::parse(text, "fuzz/.ignore");
    } catch (const fedcli::Error&) {
        return 0;
    }
    variants.padded = variants.rules;
    variants.padded.add("\n# comment\n", "fuzz/padding");
    variants.all = variants.rules;
    variants.all.add("*", "fuzz/all");
    variants.none = variants.rules;
    variants.none.add("!*", "fuzz/none");
    if (variants.padded.size() != variants.rules.size()) std::abort();
    if (paths.empty()) {
        for (auto path : k_default_paths) check(variants, path);
        return 0;
    }
    std::size_t start = 0;
    while (start <= paths.size()) {
        std::size_t end = paths.find('\n', start);
        if (end == std::string_view::npos) end = paths.size();
        check(variants, paths.substr(start, end - start));
        start = end + 1;
    }
    return 0;
}
