// libFuzzer target for the project file loader (core/project).
//
// Each input is the text of a project file: parsed with project::parse() (yaml-cpp plus
// every key check, the way `fedcli project validate` and the client read fedcli.yaml),
// then, when it loads, checked with check_for_client() and looked up by entry point name.
// fedcli::Error is the only acceptable failure: a crash, a sanitizer report, a leak, a
// stack overflow, a hang or any other exception is a finding.
//
// Build and run with scripts/fuzz (clang, -DFEDCLI_FUZZ=ON).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.hpp"
#include "core/project/project.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace project = fedcli::project;
    std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        project::Project loaded = project::parse(text, "/nonexistent/fuzz/fedcli.yaml");
        (void)project::check_for_client(loaded);
        for (std::string_view name : project::k_entry_point_names) (void)loaded.find(name);
    } catch (const fedcli::Error&) {
    }
    return 0;
}
