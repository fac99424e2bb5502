// Shared helpers for unit tests: a private temporary folder per test and a way to run
// Python + numpy to produce and check fixtures at test time.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace fedcli::test {

/// A fresh folder under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::filesystem::path& path() const { return m_path; }
    std::filesystem::path operator/(const std::string& name) const { return m_path / name; }

  private:
    std::filesystem::path m_path;
};

/// The message `call` throws as fedcli::Error; fails the test when it does not throw.
template <class Call>
std::string error_of(Call&& call) {
    try {
        call();
    } catch (const fedcli::Error& error) {
        return error.what();
    }
    FAIL("expected a fedcli::Error");
    return "";
}

struct CommandResult {
    int exit_code = -1;
    std::string output;  ///< stdout and stderr together
};

/// Runs argv[0] with arguments (no shell), capturing output.
CommandResult run_command(const std::vector<std::string>& argv);

/// The Python interpreter with numpy used to cross-check formats (FEDCLI_TEST_PYTHON at
/// configure time, overridable at run time by the environment variable of the same name).
std::string python();

/// Runs `python() -c script` with argv[1..] = args; fails the current test (with the
/// script's output) if it exits non-zero. Returns its stdout+stderr.
std::string run_python(const std::string& script, const std::vector<std::string>& args = {});

/// Writes text to a file, replacing it.
void write_file(const std::filesystem::path& path, const std::string& text);
/// Reads a whole file.
std::string read_file(const std::filesystem::path& path);

/// Bytes with printable ASCII kept and everything else as \xNN.
std::string escape_bytes(const std::string& bytes);

/// A protobuf message as text, for INFO and for comparing two messages: its type and its
/// wire bytes, escaped. fedcli's messages use the lite runtime, which has no DebugString;
/// they have no map fields, so equal messages serialize to equal bytes.
template <typename Message>
std::string describe(const Message& message) {
    return message.GetTypeName() + " " + escape_bytes(message.SerializeAsString());
}

}  // namespace fedcli::test
