// libFuzzer target for the package reader and extractor (core/package).
//
// Each input is written as package.tgz into a private sandbox folder and then listed
// (package::list) and extracted (package::extract, stripping a single top-level folder for
// inputs of odd size) into sandbox/out, with small limits so that a single input cannot
// use much memory or disk. After every input the sandbox is
// inspected without following symlinks: it must hold package.tgz and, when the extraction
// succeeded, out/ — nothing else (no escape, no leftover temporary folder) — and every
// symlink under out/ must resolve inside out/. A failed extraction must leave no out/.
// fedcli::Error is the only acceptable failure; a crash, a sanitizer report, a leak, a hang,
// any other exception or a broken invariant (std::abort) is a finding.
//
// Build and run with scripts/fuzz (clang, -DFEDCLI_FUZZ=ON).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "core/error.hpp"
#include "core/package/package.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;
namespace package = fedcli::package;

[[noreturn]] void finding(const std::string& what) {
    fedcli::fuzz::finding("fuzz_package", what);
}

const fs::path& sandbox() {
    return fedcli::fuzz::sandbox("fedcli-fuzz-package");
}

bool is_within(const fs::path& base, const fs::path& path) {
    auto [base_end, path_it] = std::mismatch(base.begin(), base.end(), path.begin(), path.end());
    return base_end == base.end();
}

void check_extracted(const fs::path& out) {
    std::error_code error;
    const fs::path base = fs::canonical(out, error);
    if (error) finding("cannot resolve out/: " + error.message());
    for (fs::recursive_directory_iterator it(out, fs::directory_options::none, error), end;
         !error && it != end; it.increment(error)) {
        const fs::path& path = it->path();
        auto status = fs::symlink_status(path, error);
        if (error) break;
        if (fs::is_symlink(status)) {
            fs::path resolved = fs::weakly_canonical(path, error);
            if (error) finding("cannot resolve symlink " + path.string());
            if (!is_within(base, resolved)) {
                finding("symlink " + path.string() + " leads outside out/: " + resolved.string());
            }
        } else if (!fs::is_regular_file(status) && !fs::is_directory(status)) {
            finding("special file extracted: " + path.string());
        }
    }
    if (error) finding("cannot walk out/: " + error.message());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const fs::path& box = sandbox();
    const fs::path archive = box / "package.tgz";
    const fs::path out = box / "out";
    {
        std::ofstream file(archive, std::ios::binary | std::ios::trunc);
        file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
        if (!file) finding("cannot write " + archive.string());
    }
    package::Limits limits;
    limits.max_package_bytes = 1 << 20;
    limits.max_entries = 256;
    limits.max_total_bytes = 4 << 20;
    limits.max_file_bytes = 1 << 20;
    try {
        (void)package::list(archive, limits);
    } catch (const fedcli::Error&) {
    }

    bool extracted = false;
    // One extraction per input (each costs a few MiB of buffers): the input's size picks
    // whether a single top-level folder is stripped, so both paths stay covered.
    for (auto top : {size % 2 == 0 ? package::TopFolder::keep : package::TopFolder::strip_single}) {
        package::ExtractOptions options;
        options.limits = limits;
        options.top_folder = top;
        options.overwrite = package::Overwrite::replace;
        try {
            package::ExtractResult result = package::extract(archive, out, options);
            if (result.total_bytes > limits.max_total_bytes) finding("total limit not enforced");
            if (result.entry_count > limits.max_entries) finding("entry limit not enforced");
            extracted = true;
            check_extracted(out);
        } catch (const fedcli::Error&) {
        }
    }

    // Nothing but package.tgz and (after a success) out/ may exist in the sandbox.
    std::error_code error;
    for (fs::directory_iterator it(box, error), end; !error && it != end; it.increment(error)) {
        std::string name = it->path().filename().string();
        if (name == "package.tgz") continue;
        if (name == "out" && extracted) continue;
        finding("unexpected " + it->path().string() + " after extraction");
    }
    if (error) finding("cannot list the sandbox: " + error.message());
    fs::remove_all(out, error);
    if (error) finding("cannot clean up out/: " + error.message());
    return 0;
}
