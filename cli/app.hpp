// The fedcli command line: the table of command groups, parsing, and the one place where
// errors become output.
//
// run() parses the arguments (CLI11), answers --help/--version, runs the selected command
// and turns every exception into "fedcli: error: <message>" on the error stream. Nothing
// else in fedcli prints errors or exits. Exit codes:
//   0  success (also --help, --version and `fedcli` alone, which prints the help)
//   1  the command failed: fedcli::Error or another exception from a library, or problems
//      a command found (e.g. `project validate`)
//   2  the command line is wrong: unknown command or option (with "did you mean ..." when
//      a known name is close), a missing argument, a group given without a command
//
// Parse-only mode: with the environment variable FEDCLI_PARSE_ONLY set to anything but
// "" or "0", run() parses the command line exactly as usual (command words, options, types
// and ranges, required options, exclusions) and then stops: a valid line prints
// "parsed: fedcli <command>" on the output stream and returns 0 without running the
// command (--help and --version count as valid and print nothing else); a wrong line gives
// the usual message and exit code 2. Nothing is read or written: no option uses a CLI11
// validator that looks at the file system, so a file named in a doc need not exist, and
// the checks that commands make in their Action (option combinations, files, the combiner)
// do not run.
// scripts/check-docs uses it to ask the real parser about every command line in the docs.
//
// Thread-safety: run() keeps no global state; concurrent calls need distinct streams.
#pragma once

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace fedcli::cli {

inline constexpr int k_exit_success = 0;
inline constexpr int k_exit_failure = 1;
inline constexpr int k_exit_usage = 2;

/// The environment variable that turns on parse-only mode (see above).
inline constexpr const char* k_parse_only_env = "FEDCLI_PARSE_ONLY";

/// fedcli's version, e.g. "0.1.0" (what `fedcli --version` prints after "fedcli ").
std::string_view version();

/// Runs fedcli on the process's command line (argv[0] is the program) with std::cout and
/// std::cerr. Returns the exit code.
int run(int argc, char** argv);

/// Runs fedcli with `args` (without the program name), writing output to `out` and errors
/// to `err`. Never throws; returns the exit code.
int run(std::vector<std::string> args, std::ostream& out, std::ostream& err);

}  // namespace fedcli::cli
