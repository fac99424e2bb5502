// What the fuzz targets share: reporting a finding and a private scratch folder.
//
// Thread-safety: none needed; libFuzzer calls a target from one thread.
#pragma once

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace fedcli::fuzz {

/// Reports a broken invariant of `target` and aborts, which libFuzzer records as a crash.
[[noreturn]] inline void finding(const char* target, const std::string& what) {
    std::fprintf(stderr, "%s: %s\n", target, what.c_str());
    std::abort();
}

inline std::filesystem::path& sandbox_path() {
    static std::filesystem::path path;
    return path;
}

/// A folder of this process under the temporary directory (named after `target`), made on
/// first use and removed at exit.
inline const std::filesystem::path& sandbox(const char* target) {
    std::filesystem::path& path = sandbox_path();
    if (path.empty()) {
        std::string pattern =
            (std::filesystem::temp_directory_path() / (std::string(target) + ".XXXXXX")).string();
        if (!::mkdtemp(pattern.data())) finding(target, "cannot create the sandbox");
        path = pattern;
        std::atexit([] {
            std::error_code ignored;
            std::filesystem::remove_all(sandbox_path(), ignored);
        });
    }
    return path;
}

}  // namespace fedcli::fuzz
