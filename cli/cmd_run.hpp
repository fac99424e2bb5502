// Entry-point limits on the command line, shared by `fedcli run <entry point>` (cmd_run.cpp)
// and `fedcli client start`, so both spell and check them the same way:
//
//   --timeout SECONDS        wall clock; the process group is stopped after it
//   --max-memory SIZE        address space per process (RLIMIT_AS), e.g. 2G, 512M
//   --max-cpu-seconds N      CPU time per process (RLIMIT_CPU)
//   --max-open-files N       open descriptors per process (RLIMIT_NOFILE), at least 4
//
// Unset options leave the limit unset (the entry point inherits fedcli's own limits).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "core/dispatch/process.hpp"

namespace CLI {
class App;
}

namespace fedcli::cli {

/// The options' values as CLI11 fills them in; 0 / "" mean "not given".
struct EntryPointLimitOptions {
    double timeout_seconds = 0;
    std::string max_memory;
    std::uint64_t max_cpu_seconds = 0;
    std::uint64_t max_open_files = 0;
};

/// The limits to put into a dispatch::RunRequest (timeout and limits).
struct EntryPointLimits {
    std::optional<std::chrono::milliseconds> timeout;
    dispatch::ResourceLimits limits;
};

/// Adds the four options to `command` (in the "Limits" group), writing into `options`,
/// which must outlive the parse.
void add_entry_point_limit_options(CLI::App& command, EntryPointLimitOptions& options);

/// Converts parsed options; throws fedcli::Error naming the option for a value that does
/// not parse (e.g. "--max-memory: '2X' has an unknown unit ...") or is out of range.
EntryPointLimits entry_point_limits(const EntryPointLimitOptions& options);

}  // namespace fedcli::cli
