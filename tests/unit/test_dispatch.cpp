// Tests for core/dispatch: command splitting, supervised subprocesses (output, timeouts,
// process-group kills), the entry point contract, interpreter resolution and python_env
// virtual environments.
//
// Entry points are small sh scripts and Python snippets written into each test's temp dir.
// Synchronisation with a child never relies on sleeping: tests that must act while a child
// runs wait for a line it prints ("ready") through the line callback. The one exception is
// the timeout test, where the child's own `sleep` outlives a generous limit. The resource
// limit tests trip each limit for real (a CPU spin, a 1 GiB allocation, 100 open files).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/dispatch/command_line.hpp"
#include "core/dispatch/contract.hpp"
#include "core/dispatch/dispatch.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/dispatch/process.hpp"
#include "core/dispatch/python_env.hpp"
#include "core/error.hpp"
#include "core/npz/npz.hpp"
#include "core/project/project.hpp"
#include "tests/unit/support.hpp"

namespace {

namespace fs = std::filesystem;
using namespace fedcli::dispatch;
using Catch::Contains;
using fedcli::project::parse_python_env;
using fedcli::project::PythonEnv;
using fedcli::test::error_of;
using fedcli::test::read_file;
using fedcli::test::TempDir;
using fedcli::test::write_file;
using nlohmann::json;
using std::chrono::milliseconds;

// ---------------------------------------------------------------------------------------
// Helpers

void write_script(const fs::path& path, const std::string& text) {
    write_file(path, text);
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add);
}

fedcli::project::Project make_project(
    const fs::path& directory, const std::vector<std::pair<std::string, std::string>>& entries) {
    fedcli::project::Project project;
    project.directory = directory;
    project.file = directory / "fedcli.yaml";
    project.name = "test-project";
    int line = 2;
    for (const auto& [name, command] : entries) {
        project.entry_points.push_back({name, command, line++});
    }
    return project;
}

/// Sets (or unsets) an environment variable for the lifetime of the object.
class ScopedVariable {
  public:
    ScopedVariable(std::string name, const std::optional<std::string>& value)
        : m_name(std::move(name)) {
        if (const char* old = std::getenv(m_name.c_str())) m_old = old;
        if (value) {
            ::setenv(m_name.c_str(), value->c_str(), 1);
        } else {
            ::unsetenv(m_name.c_str());
        }
    }
    ~ScopedVariable() {
        if (m_old) {
            ::setenv(m_name.c_str(), m_old->c_str(), 1);
        } else {
            ::unsetenv(m_name.c_str());
        }
    }
    ScopedVariable(const ScopedVariable&) = delete;
    ScopedVariable& operator=(const ScopedVariable&) = delete;

  private:
    std::string m_name;
    std::optional<std::string> m_old;
};

/// True when the process no longer runs (gone, or a zombie nobody reaped yet).
bool process_is_gone(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    if (!stat || !std::getline(stat, text)) return true;
    auto paren = text.rfind(')');
    if (paren == std::string::npos || paren + 2 >= text.size()) return true;
    char state = text[paren + 2];
    return state == 'Z' || state == 'X';
}

/// Waits (bounded) for a process that was sent SIGKILL to finish dying: delivery is
/// asynchronous, so this polls for the outcome rather than sleeping a fixed time.
bool wait_until_gone(pid_t pid) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!process_is_gone(pid)) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(milliseconds(5));
    }
    return true;
}

pid_t read_pid(const fs::path& file) {
    std::string text = read_file(file);
    REQUIRE(!text.empty());
    return static_cast<pid_t>(std::stol(text));
}

struct ArraySpec {
    std::string name;
    fedcli::npz::DType dtype;
    fedcli::npz::Shape shape;
};

void write_model(const fs::path& path, const std::vector<ArraySpec>& arrays) {
    fedcli::npz::ParameterSet parameters;
    for (const auto& spec : arrays) {
        fedcli::npz::Array array(spec.dtype, spec.shape);
        if (array.byte_size() > 0) std::memset(array.data(), 0, array.byte_size());
        parameters.add(spec.name, std::move(array));
    }
    fedcli::npz::write_npz(path, parameters);
}

const std::vector<ArraySpec> k_model = {
    {"0", fedcli::npz::DType::float32, {2, 3}},
    {"1", fedcli::npz::DType::int64, {4}},
};

/// Collects callback lines.
struct Lines {
    std::vector<std::pair<std::string, Stream>> lines;
    LineCallback callback() {
        return [this](std::string_view line, Stream stream) {
            lines.emplace_back(std::string(line), stream);
        };
    }
    bool has(const std::string& text, Stream stream) const {
        for (const auto& [line, from] : lines) {
            if (line == text && from == stream) return true;
        }
        return false;
    }
};

// A Python entry point that reports what it sees as the JSON object validate must write
// (to FEDCLI_OUTPUT: the command may put its own arguments before INPUT OUTPUT).
const char* const k_probe_script = R"PY(
import json, os, sys
try:
    import numpy
    has_numpy = True
except ImportError:
    has_numpy = False
report = {
    "cwd": os.getcwd(),
    "argv": sys.argv[1:],
    "executable": sys.executable,
    "prefix": sys.prefix,
    "numpy": has_numpy,
    "stdin": sys.stdin.read(),
    "env": {k: v for k, v in os.environ.items()
            if k.startswith(("FEDCLI_", "FEDN_", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "EXTRA_"))},
    "path_head": os.environ.get("PATH", "").split(":")[0],
}
print("probe says hello")
print("probe complains", file=sys.stderr)
with open(os.environ["FEDCLI_OUTPUT"], "w") as out:
    json.dump(report, out)
)PY";

}  // namespace

// ---------------------------------------------------------------------------------------
// split_command

TEST_CASE("split_command splits on blanks like sh", "[dispatch][command_line]") {
    CHECK(split_command("python3 train.py", "t") ==
          std::vector<std::string>{"python3", "train.py"});
    CHECK(split_command("  python3\t\ttrain.py \n --epochs  2  ", "t") ==
          std::vector<std::string>{"python3", "train.py", "--epochs", "2"});
    CHECK(split_command("python train.py --lr=0.1 x~y a#b", "t") ==
          std::vector<std::string>{"python", "train.py", "--lr=0.1", "x~y", "a#b"});
    CHECK(split_command("python train.py # a comment | ; &", "t") ==
          std::vector<std::string>{"python", "train.py"});
    CHECK(split_command("python # comment\n train.py", "t") ==
          std::vector<std::string>{"python", "train.py"});
}

TEST_CASE("split_command honours quotes and escapes", "[dispatch][command_line]") {
    CHECK(split_command("run 'a b'  \"c d\"", "t") ==
          std::vector<std::string>{"run", "a b", "c d"});
    CHECK(split_command("run '' \"\"", "t") == std::vector<std::string>{"run", "", ""});
    CHECK(split_command("run a'b c'\"d e\"f", "t") == std::vector<std::string>{"run", "ab cd ef"});
    CHECK(split_command(R"(run 'it'\''s' "say \"hi\"" "back\\slash")", "t") ==
          std::vector<std::string>{"run", "it's", "say \"hi\"", "back\\slash"});
    // Inside "..." a backslash escapes only " \ $ ` and newline; elsewhere it stays.
    CHECK(split_command(R"(run "\$HOME \a \n")", "t") ==
          std::vector<std::string>{"run", "$HOME \\a \\n"});
    CHECK(split_command("run 'single \\ stays' '$HOME' '*' 'a|b;c'", "t") ==
          std::vector<std::string>{"run", "single \\ stays", "$HOME", "*", "a|b;c"});
    CHECK(split_command(R"(run a\ b \$HOME \| \* \~x)", "t") ==
          std::vector<std::string>{"run", "a b", "$HOME", "|", "*", "~x"});
    CHECK(split_command("run one\\\ntwo \"three\\\nfour\"", "t") ==
          std::vector<std::string>{"run", "onetwo", "threefour"});
    CHECK(split_command("echo $ \"$\" cost$", "t") ==
          std::vector<std::string>{"echo", "$", "$", "cost$"});
    CHECK(split_command("python -c 'import sys; print(sys.argv)'", "t") ==
          std::vector<std::string>{"python", "-c", "import sys; print(sys.argv)"});
}

TEST_CASE("split_command errors name the entry point and the problem", "[dispatch][command_line]") {
    const std::string where = "fedcli.yaml:5: entry point 'train'";
    auto message = [&](std::string_view command) {
        return error_of([&] { split_command(command, where); });
    };
    CHECK_THAT(message("python 'train.py"),
               Contains(where) && Contains("unterminated single quote at column 8"));
    CHECK_THAT(message("python \"train.py"), Contains("unterminated double quote"));
    CHECK_THAT(message("python train.py \\"), Contains("trailing backslash"));
    CHECK_THAT(message(""), Contains(where) && Contains("empty"));
    CHECK_THAT(message("   \n "), Contains("empty"));
    CHECK_THAT(message("# only a comment"), Contains("empty"));
}

TEST_CASE("split_command refuses what only a shell would interpret", "[dispatch][command_line]") {
    auto message = [](std::string_view command) {
        return error_of([&] { split_command(command, "entry point 'train'"); });
    };
    for (const char* command :
         {"python train.py | tee log", "python a.py && python b.py", "python a.py; echo done",
          "python a.py > out.txt", "python a.py < in.txt", "python a.py &", "(python a.py)"}) {
        INFO(command);
        CHECK_THAT(message(command), Contains("shell operator") && Contains("sh -c '...'") &&
                                         Contains("entry point 'train'"));
    }
    for (const char* command : {"python $SCRIPT", "python ${SCRIPT}", "python $(ls)", "python `ls`",
                                "python \"$HOME/a.py\"", "python \"`ls`\""}) {
        INFO(command);
        CHECK_THAT(message(command), Contains("not performed") && Contains("sh -c '...'"));
    }
    CHECK_THAT(message("python *.py"), Contains("glob character '*'"));
    CHECK_THAT(message("python train?.py"), Contains("glob character '?'"));
    CHECK_THAT(message("python [ab].py"), Contains("glob character '['"));
    CHECK_THAT(message("python ~/train.py"), Contains("'~'"));
    CHECK_THAT(message("EPOCHS=2 python train.py"),
               Contains("'EPOCHS=...' is a shell variable assignment"));
    // Not an assignment: quoted, or not a name before '='.
    CHECK(split_command("'A=1' x", "t") == std::vector<std::string>{"A=1", "x"});
    CHECK(split_command("./x=1 y", "t") == std::vector<std::string>{"./x=1", "y"});
}

TEST_CASE("format_command quotes words so that they split back unchanged",
          "[dispatch][command_line]") {
    std::vector<std::string> words{
        "FOO=1",       "plain-word_1.py", "",          "a b", "it's", "$HOME", "a\"b",
        "back\\slash", "tab\there",       "new\nline", "*",   "~x",   "a|b",   "--lr=0.1"};
    CHECK(split_command(format_command(words), "t") == words);
    CHECK(quote_word("train.py") == "train.py");
    CHECK(quote_word("my file.npz") == "'my file.npz'");
    CHECK(quote_word("") == "''");
    CHECK(format_command({"python3", "train.py", "/a b/seed.npz"}) ==
          "python3 train.py '/a b/seed.npz'");
}

// ---------------------------------------------------------------------------------------
// run_process

TEST_CASE("run_process streams stdout and stderr lines live and to the log",
          "[dispatch][process]") {
    TempDir dir;
    write_script(dir / "talk.sh",
                 "printf 'out one\\nout two\\r\\n'\n"
                 "printf 'err one\\n' >&2\n"
                 "printf 'no newline at the end'\n");
    Lines lines;
    std::ostringstream log;
    ProcessSpec spec;
    spec.argv = {"sh", (dir / "talk.sh").string()};
    spec.on_line = lines.callback();
    spec.log = &log;
    ProcessResult result = run_process(spec);

    CHECK(result.succeeded());
    CHECK(result.exit_code == 0);
    CHECK(result.describe() == "exited with code 0");
    CHECK(lines.has("out one", Stream::out));
    CHECK(lines.has("out two", Stream::out));  // '\r' removed
    CHECK(lines.has("err one", Stream::err));
    CHECK(lines.has("no newline at the end", Stream::out));
    REQUIRE(lines.lines.size() == 4);
    CHECK(lines.lines[0].first == "out one");
    CHECK(lines.lines[1].first == "out two");
    CHECK_THAT(log.str(), Contains("out one\nout two\n") && Contains("err one\n") &&
                              Contains("no newline at the end\n"));
    CHECK(result.tail.size() == 4);
}

TEST_CASE("run_process keeps only the last lines as the tail", "[dispatch][process]") {
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "i=1; while [ $i -le 100 ]; do echo line $i; i=$((i+1)); done"};
    spec.tail_lines = 5;
    ProcessResult result = run_process(spec);
    CHECK(result.tail ==
          std::vector<std::string>{"line 96", "line 97", "line 98", "line 99", "line 100"});
    CHECK(result.format_tail() == "  line 96\n  line 97\n  line 98\n  line 99\n  line 100\n");
}

TEST_CASE("run_process splits very long lines", "[dispatch][process]") {
    ProcessSpec spec;
    std::size_t length = k_max_line_bytes * 2 + 10;
    spec.argv = {"/usr/bin/head", "-c", std::to_string(length), "/dev/zero"};
    std::size_t total = 0;
    std::size_t pieces = 0;
    spec.on_line = [&](std::string_view line, Stream) {
        CHECK(line.size() <= k_max_line_bytes);
        total += line.size();
        ++pieces;
    };
    CHECK(run_process(spec).succeeded());
    CHECK(total == length);
    CHECK(pieces == 3);
}

TEST_CASE("run_process reports exit codes and signals", "[dispatch][process]") {
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "exit 3"};
    ProcessResult failed = run_process(spec);
    CHECK_FALSE(failed.succeeded());
    CHECK(failed.exit_code == 3);
    CHECK(failed.describe() == "exited with code 3");

    spec.argv = {"sh", "-c", "kill -SEGV $$"};
    ProcessResult killed = run_process(spec);
    CHECK_FALSE(killed.succeeded());
    CHECK(killed.signal == SIGSEGV);
    CHECK(killed.describe() == "was killed by signal 11 (SIGSEGV)");
}

TEST_CASE("run_process uses the working folder, environment and /dev/null stdin",
          "[dispatch][process]") {
    TempDir dir;
    fs::create_directory(dir / "work dir");
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "pwd; echo \"$ONLY_HERE\"; cat; echo end"};
    spec.working_directory = dir / "work dir";
    spec.environment.set("ONLY_HERE", "value with spaces");
    ProcessResult result = run_process(spec);
    CHECK(result.tail ==
          std::vector<std::string>{(dir / "work dir").string(), "value with spaces", "end"});
}

TEST_CASE("run_process errors when the program cannot start", "[dispatch][process]") {
    TempDir dir;
    ProcessSpec spec;
    spec.argv = {"no-such-program-fedcli"};
    CHECK_THAT(error_of([&] { run_process(spec); }),
               Contains("cannot run 'no-such-program-fedcli': not found on PATH"));

    write_file(dir / "not-executable.sh", "echo hi\n");
    spec.argv = {(dir / "not-executable.sh").string()};
    spec.executable = dir / "not-executable.sh";
    CHECK_THAT(error_of([&] { run_process(spec); }), Contains("chmod +x"));

    write_script(dir / "no-shebang", "echo hi\n");
    spec.argv = {"./no-shebang"};
    spec.executable.clear();
    spec.working_directory = dir.path();
    CHECK_THAT(error_of([&] { run_process(spec); }), Contains("'#!'"));

    spec.working_directory = dir / "missing";
    CHECK_THAT(error_of([&] { run_process(spec); }), Contains("does not exist"));
}

TEST_CASE("find_executable looks programs up like execvp", "[dispatch][process]") {
    TempDir dir;
    fs::create_directory(dir / "bin");
    write_script(dir / "bin" / "tool", "#!/bin/sh\n");
    write_file(dir / "bin" / "plain", "");
    CHECK(find_executable("tool", "/nonexistent:" + (dir / "bin").string(), "/") ==
          dir / "bin" / "tool");
    CHECK_FALSE(find_executable("plain", (dir / "bin").string(), "/"));
    CHECK_FALSE(find_executable("tool", "/nonexistent", "/"));
    CHECK(find_executable("bin/tool", "", dir.path()) == dir / "bin" / "tool");
    CHECK(find_executable("./bin/tool", "", dir.path()) == dir / "bin" / "tool");
    CHECK(find_executable("tool", ":", dir / "bin") == dir / "bin" / "tool");  // empty = cwd
}

TEST_CASE("a timeout kills the whole process group, grandchildren included",
          "[dispatch][process]") {
    TempDir dir;
    write_script(dir / "group.sh",
                 "sleep 1000 &\n"
                 "echo $! > \"$1\"\n"
                 "echo ready\n"
                 "wait\n");
    ProcessSpec spec;
    spec.argv = {"sh", (dir / "group.sh").string(), (dir / "grandchild.pid").string()};
    spec.timeout = milliseconds(2000);
    spec.kill_grace = milliseconds(500);
    ProcessResult result = run_process(spec);
    CHECK(result.timed_out);
    CHECK_FALSE(result.succeeded());
    CHECK(result.describe() == "ran longer than its timeout of 2 s and was stopped");
    CHECK(result.tail == std::vector<std::string>{"ready"});
    CHECK(wait_until_gone(read_pid(dir / "grandchild.pid")));
}

TEST_CASE("cancellation stops the group, and SIGKILL follows an ignored SIGTERM",
          "[dispatch][process]") {
    TempDir dir;
    write_script(dir / "stubborn.sh",
                 "trap '' TERM\n"
                 "sleep 1000 &\n"
                 "echo $! > \"$1\"\n"
                 "echo ready\n"
                 "while true; do wait; done\n");
    std::stop_source stop;
    ProcessSpec spec;
    spec.argv = {"sh", (dir / "stubborn.sh").string(), (dir / "grandchild.pid").string()};
    spec.kill_grace = milliseconds(200);
    spec.stop = stop.get_token();
    spec.on_line = [&](std::string_view line, Stream) {
        if (line == "ready") stop.request_stop();
    };
    ProcessResult result = run_process(spec);
    CHECK(result.cancelled);
    CHECK(result.signal == SIGKILL);
    CHECK(result.describe() == "was cancelled");
    CHECK(wait_until_gone(read_pid(dir / "grandchild.pid")));
}

// ---------------------------------------------------------------------------------------
// Resource limits. Each test really trips its limit; a wall-clock timeout far above what
// the run needs turns a limit that failed to apply into a test failure instead of a hang.

TEST_CASE("resource limits are in force in the program from its start", "[dispatch][limits]") {
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "ulimit -v; ulimit -t; ulimit -n; ulimit -Ht"};
    spec.limits.memory_bytes = std::uint64_t{256} << 20;
    spec.limits.cpu_seconds = 7;
    spec.limits.open_files = 32;
    ProcessResult result = run_process(spec);
    CHECK(result.succeeded());
    // ulimit -v is in KiB; the hard CPU limit is one second above the soft one.
    CHECK(result.tail == std::vector<std::string>{"262144", "7", "32", "8"});
    CHECK(result.limits.describe() == "memory 256 MiB, CPU time 7 s, 32 open files");
    CHECK_FALSE(result.exceeded_limit);
}

TEST_CASE("limits above fedcli's own hard limits are lowered to them", "[dispatch][limits]") {
    struct rlimit files {};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &files) == 0);
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "ulimit -n; ulimit -Hn"};
    spec.limits.open_files = std::uint64_t{1} << 40;
    spec.limits.cpu_seconds = std::uint64_t{1} << 40;
    ProcessResult result = run_process(spec);
    CHECK(result.succeeded());
    std::string hard =
        files.rlim_max == RLIM_INFINITY ? "unlimited" : std::to_string(files.rlim_max);
    CHECK(result.tail == std::vector<std::string>{hard, hard});
}

TEST_CASE("a CPU-bound program is stopped at its CPU time limit", "[dispatch][limits]") {
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "echo spinning; while :; do :; done"};
    spec.limits.cpu_seconds = 1;
    spec.timeout = milliseconds(60000);
    ProcessResult result = run_process(spec);
    CHECK_FALSE(result.timed_out);
    CHECK(result.signal == SIGXCPU);
    CHECK(result.cpu_time >= milliseconds(900));
    REQUIRE(result.exceeded_limit == Limit::cpu_time);
    CHECK(result.describe() ==
          "exceeded its CPU time limit of 1 s and was killed by signal 24 (SIGXCPU)");
}

TEST_CASE("a program that ignores SIGXCPU is killed a second later", "[dispatch][limits]") {
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "trap '' XCPU; while :; do :; done"};
    spec.limits.cpu_seconds = 1;
    spec.timeout = milliseconds(60000);
    ProcessResult result = run_process(spec);
    CHECK(result.signal == SIGKILL);
    CHECK(result.cpu_time >= milliseconds(1900));
    CHECK(result.exceeded_limit == Limit::cpu_time);
    CHECK(result.describe() ==
          "exceeded its CPU time limit of 1 s and was killed by signal 9 (SIGKILL)");
}

TEST_CASE("allocations beyond the memory limit fail and the run names the limit",
          "[dispatch][limits]") {
    ProcessSpec spec;
    spec.argv = {fedcli::test::python(), "-c",
                 "print('allocating'); x = bytearray(1 << 30); print('allocated')"};
    spec.limits.memory_bytes = std::uint64_t{128} << 20;
    spec.timeout = milliseconds(60000);
    ProcessResult result = run_process(spec);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.format_tail(),
               Contains("allocating") && Contains("MemoryError") && !Contains("allocated"));
    REQUIRE(result.exceeded_limit == Limit::memory);
    CHECK(result.describe() == "exited with code 1 after exceeding its memory limit of 128 MiB");

    // The same program without the limit allocates (1 GiB of address space, untouched).
    spec.limits = {};
    CHECK(run_process(spec).succeeded());
}

TEST_CASE("opening more files than the limit fails and the run names the limit",
          "[dispatch][limits]") {
    ProcessSpec spec;
    spec.argv = {fedcli::test::python(), "-c",
                 "files = [open('/dev/null') for _ in range(100)]; print('opened')"};
    spec.limits.open_files = 16;
    spec.timeout = milliseconds(60000);
    ProcessResult result = run_process(spec);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.format_tail(), Contains("Too many open files") && !Contains("opened"));
    REQUIRE(result.exceeded_limit == Limit::open_files);
    CHECK(result.describe() == "exited with code 1 after reaching its limit of 16 open files");

    spec.limits.open_files = 200;
    CHECK(run_process(spec).succeeded());
}

TEST_CASE("a failure under limits that is not theirs keeps its own description",
          "[dispatch][limits]") {
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "echo 'Too many open files'; exit 3"};
    spec.limits.memory_bytes = std::uint64_t{1} << 30;  // set, but open_files is not
    ProcessResult result = run_process(spec);
    CHECK_FALSE(result.exceeded_limit);
    CHECK(result.describe() == "exited with code 3");
}

TEST_CASE("invalid resource limits are refused before anything runs", "[dispatch][limits]") {
    TempDir dir;
    ProcessSpec spec;
    spec.argv = {"sh", "-c", "touch ran"};
    spec.working_directory = dir.path();
    spec.limits.open_files = 3;
    CHECK_THAT(error_of([&] { run_process(spec); }),
               Contains("cannot run 'sh': the open-file limit must be at least 4"));
    spec.limits = {};
    spec.limits.cpu_seconds = 0;
    CHECK_THAT(error_of([&] { run_process(spec); }),
               Contains("the CPU time limit must be at least 1 s"));
    spec.limits = {};
    spec.limits.memory_bytes = 0;
    CHECK_THAT(error_of([&] { run_process(spec); }), Contains("the memory limit must not be 0"));
    CHECK_FALSE(fs::exists(dir / "ran"));
}

TEST_CASE("an entry point stopped by a limit says which limit", "[dispatch][limits]") {
    TempDir dir;
    write_script(dir / "spin.sh", "echo starting\nwhile :; do :; done\n");
    write_script(dir / "fail.sh", "echo broken >&2\nexit 2\n");
    auto project = make_project(dir.path(), {{"startup", "sh spin.sh"}, {"build", "sh fail.sh"}});
    RunRequest request;
    request.limits.cpu_seconds = 1;
    request.timeout = milliseconds(60000);
    ProcessResult process;
    request.process_result = &process;
    CHECK_THAT(error_of([&] { run_entry_point(project, "startup", request); }),
               Contains("entry point 'startup': 'sh spin.sh' exceeded its CPU time limit of 1 s "
                        "and was killed by signal 24 (SIGXCPU)") &&
                   Contains("  starting"));
    CHECK(process.exceeded_limit == Limit::cpu_time);

    // Any other failure under limits lists them, in case one of them was the cause.
    request.limits.memory_bytes = std::uint64_t{512} << 20;
    CHECK_THAT(error_of([&] { run_entry_point(project, "build", request); }),
               Contains("entry point 'build': 'sh fail.sh ") &&
                   Contains("' exited with code 2 (it ran with limits: memory 512 MiB, CPU time "
                            "1 s); its last 1 lines of output:\n  broken"));

    request.limits.open_files = 1;
    CHECK_THAT(error_of([&] { run_entry_point(project, "startup", request); }),
               Contains("entry point 'startup': the open-file limit must be at least 4"));
}

TEST_CASE("a readable cancel descriptor cancels the run", "[dispatch][process]") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    REQUIRE(::write(fds[1], "x", 1) == 1);
    ProcessSpec spec;
    spec.argv = {"sleep", "1000"};
    spec.cancel_fd = fds[0];
    ProcessResult result = run_process(spec);
    ::close(fds[0]);
    ::close(fds[1]);
    CHECK(result.cancelled);
    CHECK(result.signal == SIGTERM);
}

TEST_CASE("processes left behind when the program exits are stopped", "[dispatch][process]") {
    TempDir dir;
    // The background sleep keeps stdout open: without the group kill this would hang.
    write_script(dir / "leak.sh", "sleep 1000 &\necho $! > \"$1\"\necho done\n");
    ProcessSpec spec;
    spec.argv = {"sh", (dir / "leak.sh").string(), (dir / "grandchild.pid").string()};
    ProcessResult result = run_process(spec);
    CHECK(result.succeeded());
    CHECK(result.tail == std::vector<std::string>{"done"});
    CHECK(wait_until_gone(read_pid(dir / "grandchild.pid")));
}

TEST_CASE("an exception from the line callback kills the group before it propagates",
          "[dispatch][process]") {
    TempDir dir;
    write_script(dir / "group.sh", "sleep 1000 &\necho $! > \"$1\"\necho ready\nwait\n");
    ProcessSpec spec;
    spec.argv = {"sh", (dir / "group.sh").string(), (dir / "grandchild.pid").string()};
    spec.on_line = [](std::string_view line, Stream) {
        if (line == "ready") throw std::runtime_error("callback gave up");
    };
    CHECK_THROWS_WITH(run_process(spec), "callback gave up");
    CHECK(wait_until_gone(read_pid(dir / "grandchild.pid")));
}

TEST_CASE("an InterruptGuard turns SIGINT into a cancelled run", "[dispatch][process]") {
    struct sigaction before {};
    ::sigaction(SIGINT, nullptr, &before);
    {
        InterruptGuard guard;
        CHECK_THROWS_AS(InterruptGuard(), fedcli::Error);
        CHECK(guard.signal() == 0);
        ::raise(SIGINT);  // handled on this thread before raise() returns
        CHECK(guard.signal() == SIGINT);
        ProcessSpec spec;
        spec.argv = {"sleep", "1000"};
        spec.cancel_fd = guard.fd();
        ProcessResult result = run_process(spec);
        CHECK(result.cancelled);
        CHECK(result.signal == SIGTERM);
    }
    struct sigaction after {};
    ::sigaction(SIGINT, nullptr, &after);
    CHECK(after.sa_handler == before.sa_handler);
    InterruptGuard again;  // the slot is free again
    CHECK(again.signal() == 0);
}

// ---------------------------------------------------------------------------------------
// run_entry_point: arguments, environment, output

TEST_CASE("entry points run in the project folder with absolute file arguments", "[dispatch]") {
    TempDir dir;
    fs::path project_dir = dir / "my project";
    fs::create_directories(project_dir);
    write_file(project_dir / "probe.py", k_probe_script);
    auto project = make_project(
        project_dir, {{"validate", fedcli::test::python() + " probe.py --flag 'two words'"}});
    fs::create_directories(dir / "in dir");
    write_model(dir / "in dir" / "seed model.npz", k_model);

    RunRequest request;
    // Relative to this process's working folder: must reach the entry point as absolute.
    request.input = fs::relative(dir / "in dir" / "seed model.npz", fs::current_path());
    request.output = fs::relative(dir / "out dir" / "result file.json", fs::current_path());
    request.extra_args = {"extra arg", "--x=1"};
    request.client_name = "client 1";
    request.client_index = 0;
    request.num_clients = 3;
    request.round = 7;
    request.data_path = fs::relative(dir / "data" / "part 0", fs::current_path());
    request.seed = 42;
    request.environment = {{"EXTRA_VARIABLE", "set by caller"}};
    ScopedVariable stale("FEDCLI_INPUT", std::string("stale"));
    ScopedVariable no_python("FEDCLI_PYTHON", std::nullopt);
    ScopedVariable by_hand("FEDCLI_ROUND", std::string("1"));
    ScopedVariable no_executable("FEDCLI_EXECUTABLE", std::nullopt);
    RunResult result = run_entry_point(project, "validate", request);

    json report = json::parse(read_file(dir / "out dir" / "result file.json"));
    CHECK(report["cwd"] == project_dir.string());
    CHECK(report["argv"] ==
          json::array({"--flag", "two words", (dir / "in dir" / "seed model.npz").string(),
                       (dir / "out dir" / "result file.json").string(), "extra arg", "--x=1"}));
    CHECK(report["stdin"] == "");
    const json& env = report["env"];
    CHECK(env["FEDCLI_PROJECT_DIR"] == project_dir.string());
    CHECK(env["FEDCLI_ENTRY_POINT"] == "validate");
    // The running program (here the test binary), for entry points that call fedcli back.
    CHECK(env["FEDCLI_EXECUTABLE"] == fs::read_symlink("/proc/self/exe").string());
    CHECK(env["FEDCLI_INPUT"] == (dir / "in dir" / "seed model.npz").string());
    CHECK(env["FEDCLI_OUTPUT"] == (dir / "out dir" / "result file.json").string());
    CHECK(env["FEDCLI_CLIENT_NAME"] == "client 1");
    CHECK(env["FEDCLI_CLIENT_INDEX"] == "0");
    CHECK(env["FEDCLI_NUM_CLIENTS"] == "3");
    CHECK(env["FEDN_NUM_DATA_SPLITS"] == "3");
    CHECK(env["FEDCLI_ROUND"] == "7");
    CHECK(env["FEDCLI_DATA_PATH"] == (dir / "data" / "part 0").string());
    CHECK(env["FEDN_DATA_PATH"] == (dir / "data" / "part 0").string());
    CHECK(env["FEDCLI_SEED"] == "42");
    CHECK(env["EXTRA_VARIABLE"] == "set by caller");
    CHECK(env["PYTHONUNBUFFERED"] == "1");
    CHECK_FALSE(env.contains("FEDCLI_PYTHON"));  // the command named its interpreter

    CHECK(result.input == dir / "in dir" / "seed model.npz");
    CHECK(result.output == dir / "out dir" / "result file.json");
    CHECK(result.argv[0] == fedcli::test::python());
    CHECK(json::parse(result.output_json) == report);
    CHECK(result.process.exit_code == 0);
}

TEST_CASE("variables the request leaves unset keep their inherited value", "[dispatch]") {
    TempDir dir;
    write_file(dir / "probe.py", k_probe_script);
    auto project = make_project(dir.path(), {{"predict", fedcli::test::python() + " probe.py"}});
    write_model(dir / "seed.npz", k_model);
    ScopedVariable round("FEDCLI_ROUND", std::string("5"));
    ScopedVariable data("FEDN_DATA_PATH", std::string("/by/hand"));
    ScopedVariable unbuffered("PYTHONUNBUFFERED", std::string("0"));
    RunRequest request;
    request.input = dir / "seed.npz";
    request.output = dir / "out.json";
    run_entry_point(project, "predict", request);
    json env = json::parse(read_file(dir / "out.json"))["env"];
    CHECK(env["FEDCLI_ROUND"] == "5");
    CHECK(env["FEDN_DATA_PATH"] == "/by/hand");
    CHECK(env["PYTHONUNBUFFERED"] == "0");
    CHECK(env["FEDCLI_ENTRY_POINT"] == "predict");
}

TEST_CASE("output lines reach the callback live and the log file", "[dispatch]") {
    TempDir dir;
    write_file(dir / "probe.py", k_probe_script);
    auto project = make_project(dir.path(), {{"validate", fedcli::test::python() + " probe.py"}});
    write_model(dir / "seed.npz", k_model);
    Lines lines;
    RunRequest request;
    request.input = dir / "seed.npz";
    request.output = dir / "out.json";
    request.on_line = lines.callback();
    request.log_file = dir / "logs" / "validate.log";
    RunResult result = run_entry_point(project, "validate", request);

    CHECK(lines.has("probe says hello", Stream::out));
    CHECK(lines.has("probe complains", Stream::err));
    REQUIRE_FALSE(lines.lines.empty());
    CHECK(lines.lines[0].second == Stream::setup);
    CHECK_THAT(lines.lines[0].first, Contains("fedcli: running in") && Contains("probe.py"));
    CHECK(result.log_file == dir / "logs" / "validate.log");
    std::string log = read_file(dir / "logs" / "validate.log");
    CHECK_THAT(log, Contains("fedcli: running in " + dir.path().string()) &&
                        Contains("probe says hello\n") && Contains("probe complains\n") &&
                        Contains("fedcli: exited with code 0"));
}

TEST_CASE("default_log_file is per entry point under .fedcli/logs", "[dispatch]") {
    auto project = make_project("/p", {});
    CHECK(default_log_file(project, "train") == fs::path("/p/.fedcli/logs/train.log"));
}

TEST_CASE("a failing entry point reports its exit code and last lines", "[dispatch]") {
    TempDir dir;
    write_script(dir / "fail.sh",
                 "i=1; while [ $i -le 50 ]; do echo \"line $i\"; i=$((i+1)); done\n"
                 "echo 'Traceback: boom' >&2\nexit 3\n");
    auto project = make_project(dir.path(), {{"startup", "sh fail.sh"}});
    RunRequest request;
    request.log_file = dir / "startup.log";
    std::string message = error_of([&] { run_entry_point(project, "startup", request); });
    CHECK_THAT(message, Contains((dir / "fedcli.yaml").string() + ":2: entry point 'startup'") &&
                            Contains("'sh fail.sh' exited with code 3") &&
                            Contains("last 30 lines") && Contains("  line 50\n") &&
                            Contains("  line 22\n") && Contains("Traceback: boom") &&
                            Contains("full output in " + (dir / "startup.log").string()));
    CHECK_THAT(message, !Contains("line 21\n"));
    CHECK_THAT(read_file(dir / "startup.log"),
               Contains("line 1\n") && Contains("fedcli: exited with code 3"));
}

TEST_CASE("an entry point that prints nothing and fails says so", "[dispatch]") {
    TempDir dir;
    auto project = make_project(dir.path(), {{"startup", "sh -c 'exit 1'"}});
    CHECK_THAT(error_of([&] { run_entry_point(project, "startup", {}); }),
               Contains("exited with code 1; it printed nothing"));
}

TEST_CASE("an entry point timeout stops it with a clear error", "[dispatch]") {
    TempDir dir;
    write_script(dir / "slow.sh", "sleep 1000 &\necho $! > grandchild.pid\nwait\n");
    auto project = make_project(dir.path(), {{"startup", "sh slow.sh"}});
    RunRequest request;
    request.timeout = milliseconds(1500);
    request.kill_grace = milliseconds(200);
    CHECK_THAT(error_of([&] { run_entry_point(project, "startup", request); }),
               Contains("entry point 'startup': 'sh slow.sh' ran longer than its timeout of "
                        "1.5 s and was stopped"));
    CHECK(wait_until_gone(read_pid(dir / "grandchild.pid")));
}

TEST_CASE("a cancelled entry point is an error", "[dispatch]") {
    TempDir dir;
    write_script(dir / "wait.sh", "echo ready\nexec sleep 1000\n");
    auto project = make_project(dir.path(), {{"startup", "sh wait.sh"}});
    std::stop_source stop;
    RunRequest request;
    request.stop = stop.get_token();
    request.on_line = [&](std::string_view line, Stream) {
        if (line == "ready") stop.request_stop();
    };
    CHECK_THAT(
        error_of([&] { run_entry_point(project, "startup", request); }),
        Contains("entry point 'startup': 'sh wait.sh' was cancelled") && Contains("  ready"));
}

TEST_CASE("a command that cannot be found names the entry point", "[dispatch]") {
    TempDir dir;
    auto project = make_project(dir.path(), {{"startup", "no-such-tool-fedcli --x"}});
    CHECK_THAT(error_of([&] { run_entry_point(project, "startup", {}); }),
               Contains("entry point 'startup'") &&
                   Contains("cannot run 'no-such-tool-fedcli': not found on PATH"));
    auto quoted = make_project(dir.path(), {{"startup", "python 'train.py"}});
    CHECK_THAT(error_of([&] { run_entry_point(quoted, "startup", {}); }),
               Contains("entry point 'startup'") && Contains("unterminated single quote"));
}

TEST_CASE("requests that do not fit the entry point are refused before running", "[dispatch]") {
    TempDir dir;
    write_model(dir / "seed.npz", k_model);
    auto project = make_project(dir.path(), {{"startup", "sh -c 'touch ran'"},
                                             {"build", "sh -c 'touch ran'"},
                                             {"train", "sh -c 'touch ran'"},
                                             {"forward", "sh -c 'touch ran'"}});
    auto message = [&](std::string_view entry, const RunRequest& request) {
        return error_of([&] { run_entry_point(project, entry, request); });
    };
    RunRequest none;
    RunRequest with_output;
    with_output.output = dir / "x.npz";
    RunRequest with_input = with_output;
    with_input.input = dir / "seed.npz";
    RunRequest missing_input = with_output;
    missing_input.input = dir / "missing.npz";
    RunRequest same = with_output;
    same.input = dir / "seed.npz";
    same.output = dir / "." / "seed.npz";
    write_file(dir / "bad.npz", "not a zip");
    RunRequest bad_input = with_output;
    bad_input.input = dir / "bad.npz";

    CHECK_THAT(message("trian", none), Contains("unknown entry point 'trian'"));
    CHECK_THAT(message("forward", none), Contains("split-learning"));
    CHECK_THAT(message("validate", none),
               Contains("no entry point 'validate'") && Contains("startup, build, train"));
    CHECK_THAT(message("startup", with_output), Contains("startup takes no input or output"));
    CHECK_THAT(message("build", with_input), Contains("build takes no input"));
    CHECK_THAT(message("train", with_output), Contains("train needs an input file"));
    CHECK_THAT(message("train", missing_input), Contains("missing.npz does not exist"));
    CHECK_THAT(message("train", same), Contains("must differ from the input"));
    CHECK_THAT(message("train", bad_input), Contains("the input is not a valid model"));
    CHECK_FALSE(fs::exists(dir / "ran"));
}

// ---------------------------------------------------------------------------------------
// The train contract

namespace {

// train.sh's behaviour is picked by $MODE: ok copies the input, the others break one rule.
const char* const k_train_script = R"SH(
in="$1"; out="$2"
cp "$in-metadata" "$out-settings-seen" 2>/dev/null
case "$MODE" in
  ok)             cp "$in" "$out"; echo '{"num_examples": 10, "loss": 0.5}' > "$out-metadata" ;;
  nothing)        ;;
  garbage)        echo 'not a zip' > "$out"; echo '{"num_examples": 10}' > "$out-metadata" ;;
  variant)        cp "$VARIANT" "$out"; echo '{"num_examples": 10}' > "$out-metadata" ;;
  no-metadata)    cp "$in" "$out" ;;
  metadata)       cp "$in" "$out"; printf '%s' "$METADATA" > "$out-metadata" ;;
esac
)SH";

struct TrainFixture {
    TempDir dir;
    fedcli::project::Project project;
    fs::path input;
    fs::path output;

    TrainFixture() {
        write_file(dir / "train.sh", k_train_script);
        project = make_project(dir.path(), {{"train", "sh train.sh"}});
        input = dir / "seed.npz";
        output = dir / "out" / "updated.npz";
        write_model(input, k_model);
    }

    RunResult run(const std::string& mode,
                  std::vector<std::pair<std::string, std::string>> environment = {},
                  const std::string& settings = "{}") {
        RunRequest request;
        request.input = input;
        request.output = output;
        request.round_settings = settings;
        environment.emplace_back("MODE", mode);
        request.environment = std::move(environment);
        return run_entry_point(project, "train", request);
    }

    std::string failure(const std::string& mode,
                        std::vector<std::pair<std::string, std::string>> environment = {}) {
        return error_of([&] { run(mode, std::move(environment)); });
    }

    std::string variant(const std::vector<ArraySpec>& arrays) {
        fs::path path = dir / "variant.npz";
        write_model(path, arrays);
        return failure("variant", {{"VARIANT", path.string()}});
    }

    std::string metadata(const std::string& text) {
        return failure("metadata", {{"METADATA", text}});
    }
};

}  // namespace

TEST_CASE("train: a good update passes, with settings written to INPUT-metadata first",
          "[dispatch][contract]") {
    TrainFixture train;
    RunResult result = train.run("ok", {}, R"({"learning_rate": 0.01, "epochs": 2})");
    CHECK(result.num_examples == 10u);
    CHECK(json::parse(result.metadata_json) == json{{"num_examples", 10}, {"loss", 0.5}});
    CHECK(result.model_arrays == 2);
    CHECK(json::parse(read_file(train.input.string() + "-metadata")) ==
          json{{"learning_rate", 0.01}, {"epochs", 2}});
    // The entry point saw the settings file before it ran.
    CHECK(json::parse(read_file(train.output.string() + "-settings-seen")) ==
          json{{"learning_rate", 0.01}, {"epochs", 2}});

    train.run("ok");
    CHECK(read_file(train.input.string() + "-metadata") == "{}\n");
    CHECK_THAT(error_of([&] { train.run("ok", {}, "[1, 2]"); }),
               Contains("round settings must be a JSON object"));
    CHECK_THAT(error_of([&] { train.run("ok", {}, "{"); }),
               Contains("round settings are not valid JSON"));
}

TEST_CASE("train: a missing or invalid output model is an error", "[dispatch][contract]") {
    TrainFixture train;
    CHECK_THAT(train.failure("nothing"),
               Contains("entry point 'train'") &&
                   Contains("did not write its output model " + train.output.string()));
    CHECK_THAT(train.failure("garbage"),
               Contains("train output is not a valid model") && Contains("updated.npz"));
}

TEST_CASE("train: output from an earlier run does not pass for this run's",
          "[dispatch][contract]") {
    TrainFixture train;
    train.run("ok");
    REQUIRE(fs::exists(train.output));
    CHECK_THAT(train.failure("nothing"), Contains("did not write its output model"));
    CHECK_FALSE(fs::exists(train.output.string() + "-metadata"));
}

TEST_CASE("train: the output must have the input's arrays, shapes and dtypes",
          "[dispatch][contract]") {
    using fedcli::npz::DType;
    TrainFixture train;
    CHECK_THAT(train.variant({{"0", DType::float32, {3, 2}}, {"1", DType::int64, {4}}}),
               Contains("array '0' has shape [3, 2] in the output, [2, 3] in the input"));
    CHECK_THAT(train.variant({{"0", DType::float64, {2, 3}}, {"1", DType::int64, {4}}}),
               Contains("array '0' is float64 in the output, float32 in the input"));
    CHECK_THAT(train.variant({{"0", DType::float32, {2, 3}}}), Contains("array '1' is missing"));
    CHECK_THAT(
        train.variant(
            {{"0", DType::float32, {2, 3}}, {"1", DType::int64, {4}}, {"2", DType::int64, {4}}}),
        Contains("array '2' is not in the input"));
    CHECK_THAT(train.variant({{"a", DType::float32, {2, 3}}, {"b", DType::int64, {4}}}),
               Contains("array '0' is missing"));
}

TEST_CASE("train: OUTPUT-metadata must hold a positive integer num_examples",
          "[dispatch][contract]") {
    TrainFixture train;
    std::string metadata_file = train.output.string() + "-metadata";
    CHECK_THAT(train.failure("no-metadata"),
               Contains("did not write its metadata " + metadata_file));
    CHECK_THAT(
        train.metadata("{\"num_examples\": 0}"),
        Contains(metadata_file) && Contains("must be a positive integer") && Contains("got 0"));
    CHECK_THAT(train.metadata("{\"num_examples\": -1}"), Contains("got -1"));
    CHECK_THAT(train.metadata("{\"num_examples\": 3.5}"),
               Contains("got 3.5") && Contains("a float"));
    CHECK_THAT(train.metadata("{\"num_examples\": 3.0}"), Contains("a float"));
    CHECK_THAT(train.metadata("{\"num_examples\": \"10\"}"),
               Contains("got \"10\"") && Contains("(string)"));
    CHECK_THAT(train.metadata("{\"num_examples\": true}"), Contains("(boolean)"));
    CHECK_THAT(train.metadata("{\"examples\": 10}"), Contains("missing \"num_examples\""));
    CHECK_THAT(train.metadata("[10]"), Contains("must be a JSON object"));
    CHECK_THAT(train.metadata("{\"num_examples\": 10,}"),
               Contains("is not valid JSON") && Contains("line 1, column"));
    CHECK_THAT(train.metadata("{\"num_examples\": 10, \"loss\": NaN}"),
               Contains("NaN and Infinity are not JSON"));
    CHECK_THAT(train.metadata(""), Contains("the file is empty"));
    CHECK(train.run("metadata", {{"METADATA", "{\"num_examples\": 18446744073709551615}"}})
              .num_examples == 18446744073709551615ull);
}

// ---------------------------------------------------------------------------------------
// validate / predict / build contracts

TEST_CASE("validate and predict must write a JSON object", "[dispatch][contract]") {
    TempDir dir;
    write_model(dir / "seed.npz", k_model);
    write_script(dir / "write.sh", "printf '%s' \"$CONTENT\" > \"$2\"\n");
    auto project =
        make_project(dir.path(), {{"validate", "sh write.sh"}, {"predict", "sh write.sh"}});
    auto run = [&](const std::string& entry, const std::string& content) {
        RunRequest request;
        request.input = dir / "seed.npz";
        request.output = dir / "result.json";
        request.environment = {{"CONTENT", content}};
        return run_entry_point(project, entry, request);
    };
    auto failure = [&](const std::string& entry, const std::string& content) {
        return error_of([&] { run(entry, content); });
    };
    std::string file = (dir / "result.json").string();

    CHECK(json::parse(run("validate", "{\"test_accuracy\": 0.9}").output_json) ==
          json{{"test_accuracy", 0.9}});
    CHECK(json::parse(run("predict", "{\"predictions\": [1, 2]}").output_json) ==
          json{{"predictions", {1, 2}}});
    CHECK_THAT(
        failure("validate", "accuracy: 0.9"),
        Contains("validate output " + file + " is not valid JSON") && Contains("line 1, column"));
    CHECK_THAT(failure("validate", "{\n  \"a\": 1,\n  oops\n}"), Contains("line 3, column"));
    CHECK_THAT(failure("predict", "[1, 2]"),
               Contains("predict output " + file + " must be a JSON object") && Contains("array"));
    CHECK_THAT(failure("validate", "0.9"), Contains("must be a JSON object"));

    auto silent = make_project(dir.path(), {{"validate", "true"}});
    RunRequest request;
    request.input = dir / "seed.npz";
    request.output = dir / "result.json";
    CHECK_THAT(error_of([&] { run_entry_point(silent, "validate", request); }),
               Contains("validate output " + file + " was not written"));
}

TEST_CASE("build writes the seed model to the path it is given", "[dispatch][contract]") {
    TempDir dir;
    fs::path project_dir = dir / "client";
    fs::create_directories(project_dir);
    write_model(dir / "template.npz", k_model);
    write_script(project_dir / "build.sh",
                 "test \"$1\" = \"$FEDCLI_OUTPUT\" || exit 9\n"
                 "case \"$MODE\" in\n"
                 "  ok) cp \"$TEMPLATE\" \"$1\" ;;\n"
                 "  fedn) cp \"$TEMPLATE\" ../seed.npz ;;\n"
                 "  garbage) echo nope > \"$1\" ;;\n"
                 "esac\n");
    auto project = make_project(project_dir, {{"build", "sh build.sh"}});
    auto request = [&](const std::string& mode) {
        RunRequest r;
        r.environment = {{"MODE", mode}, {"TEMPLATE", (dir / "template.npz").string()}};
        return r;
    };

    RunResult result = run_entry_point(project, "build", request("ok"));
    CHECK(result.output == project_dir / "seed.npz");
    CHECK(result.argv.back() == (project_dir / "seed.npz").string());
    CHECK(result.model_arrays == 2);
    CHECK(fedcli::npz::read_npz(project_dir / "seed.npz").size() == 2);

    RunRequest elsewhere = request("ok");
    elsewhere.output = dir / "models" / "my seed.npz";
    CHECK(run_entry_point(project, "build", elsewhere).output == dir / "models" / "my seed.npz");
    CHECK(fs::exists(dir / "models" / "my seed.npz"));

    CHECK_THAT(error_of([&] { run_entry_point(project, "build", request("fedn")); }),
               Contains("build did not write " + (project_dir / "seed.npz").string()) &&
                   Contains("../seed.npz") && Contains("sys.argv[1]"));
    CHECK_THAT(error_of([&] { run_entry_point(project, "build", request("garbage")); }),
               Contains("build output is not a valid model"));
    CHECK_THAT(
        error_of([&] { run_entry_point(project, "build", request("none")); }),
        Contains("build output " + (project_dir / "seed.npz").string() + " was not written"));
}

TEST_CASE("contract checks can be called on their own", "[dispatch][contract]") {
    TempDir dir;
    CHECK(metadata_path("/a/model.npz") == fs::path("/a/model.npz-metadata"));
    write_model(dir / "empty.npz", {});
    CHECK_THAT(error_of([&] { check_model_file(dir / "empty.npz", "seed"); }),
               Contains("holds no arrays"));
    write_model(dir / "m.npz", k_model);
    CHECK(check_model_file(dir / "m.npz", "seed") == 2);
    // A flipped byte in the data breaks the CRC: verify() reads every member.
    std::string bytes = read_file(dir / "m.npz");
    auto header = bytes.find("\x93NUMPY");
    REQUIRE(header != std::string::npos);
    std::size_t header_length = static_cast<unsigned char>(bytes[header + 8]) |
                                static_cast<unsigned char>(bytes[header + 9]) << 8;
    bytes[header + 10 + header_length + 1] ^= 0x55;  // a byte of the first array's data
    write_file(dir / "m.npz", bytes);
    CHECK_THAT(error_of([&] { check_model_file(dir / "m.npz", "seed"); }),
               Contains("seed is not a valid model"));
}

// ---------------------------------------------------------------------------------------
// Interpreter resolution

TEST_CASE("probe_python picks the first candidate that has numpy", "[dispatch][python]") {
    TempDir dir;
    write_script(dir / "no-numpy", "#!/bin/sh\nexit 1\n");
    auto found =
        probe_python({(dir / "no-numpy").string(), "/nonexistent/python3", fedcli::test::python()});
    REQUIRE(found);
    CHECK(*found == fs::path(fedcli::test::python()));
    CHECK_FALSE(probe_python({(dir / "no-numpy").string()}));
    CHECK(python_has_numpy(fedcli::test::python()));
    CHECK_FALSE(python_has_numpy((dir / "no-numpy").string()));
}

TEST_CASE("without settings python resolves to an interpreter with numpy", "[dispatch][python]") {
    ScopedVariable unset("FEDCLI_PYTHON", std::nullopt);
    fs::path python = resolve_python();
    CHECK(python.is_absolute());
    CHECK(python_has_numpy(python.string()));
}

TEST_CASE("FEDCLI_PYTHON and the request choose the interpreter for python and python3",
          "[dispatch][python]") {
    TempDir dir;
    // A fake interpreter: writes which one it is into validate's output (its argv[3]).
    write_script(dir / "fake-python",
                 "#!/bin/sh\nprintf '{\"interpreter\": \"fake\", \"script\": \"%s\"}' \"$1\" "
                 "> \"$3\"\n");
    write_script(dir / "other-python",
                 "#!/bin/sh\nprintf '{\"interpreter\": \"other\"}' > \"$3\"\n");
    write_model(dir / "seed.npz", k_model);
    auto project =
        make_project(dir.path(), {{"validate", "python3 validate.py"}, {"predict", "python p.py"}});
    RunRequest request;
    request.input = dir / "seed.npz";
    request.output = dir / "out.json";

    ScopedVariable chosen("FEDCLI_PYTHON", (dir / "fake-python").string());
    RunResult result = run_entry_point(project, "validate", request);
    CHECK(json::parse(result.output_json) ==
          json{{"interpreter", "fake"}, {"script", "validate.py"}});
    CHECK(result.python == dir / "fake-python");
    CHECK(result.argv[0] == (dir / "fake-python").string());
    CHECK(json::parse(run_entry_point(project, "predict", request).output_json)["interpreter"] ==
          "fake");

    request.python = (dir / "other-python").string();
    CHECK(json::parse(run_entry_point(project, "validate", request).output_json) ==
          json{{"interpreter", "other"}});

    ScopedVariable missing("FEDCLI_PYTHON", std::string("/nonexistent/python"));
    request.python.reset();
    CHECK_THAT(error_of([&] { run_entry_point(project, "validate", request); }),
               Contains("FEDCLI_PYTHON") && Contains("/nonexistent/python"));
}

TEST_CASE("the resolved interpreter is exported as FEDCLI_PYTHON", "[dispatch][python]") {
    TempDir dir;
    write_file(dir / "probe.py", k_probe_script);
    write_model(dir / "seed.npz", k_model);
    auto project = make_project(dir.path(), {{"validate", "python3 probe.py"}});
    ScopedVariable unset("FEDCLI_PYTHON", std::nullopt);
    RunRequest request;
    request.input = dir / "seed.npz";
    request.output = dir / "out.json";
    RunResult result = run_entry_point(project, "validate", request);
    json report = json::parse(result.output_json);
    CHECK(report["numpy"] == true);
    CHECK(report["env"]["FEDCLI_PYTHON"] == result.python.string());
    CHECK(report["executable"] == result.python.string());
}

// ---------------------------------------------------------------------------------------
// python_env

TEST_CASE("the cache folder follows FEDCLI_CACHE_DIR, then XDG_CACHE_HOME, then HOME",
          "[dispatch][python_env]") {
    ScopedVariable cache("FEDCLI_CACHE_DIR", std::string("/c/fedcli"));
    ScopedVariable xdg("XDG_CACHE_HOME", std::string("/x"));
    ScopedVariable home("HOME", std::string("/h"));
    CHECK(default_cache_dir() == fs::path("/c/fedcli"));
    ScopedVariable no_cache("FEDCLI_CACHE_DIR", std::nullopt);
    CHECK(default_cache_dir() == fs::path("/x/fedcli"));
    ScopedVariable no_xdg("XDG_CACHE_HOME", std::nullopt);
    CHECK(default_cache_dir() == fs::path("/h/.cache/fedcli"));
}

TEST_CASE("a python_env runs the entry point in a cached virtual environment",
          "[dispatch][python_env]") {
    TempDir dir;
    fs::path project_dir = dir / "project";
    fs::create_directories(project_dir);
    write_file(project_dir / "probe.py", k_probe_script);
    write_file(project_dir / "python_env.yaml", "name: test-env\ndependencies: []\n");
    write_file(project_dir / "fedcli.yaml",
               "python_env: python_env.yaml\n"
               "entry_points:\n"
               "  validate:\n"
               "    command: python probe.py\n");
    auto project = fedcli::project::load(project_dir);
    write_model(dir / "seed.npz", k_model);
    ScopedVariable unset("FEDCLI_PYTHON", std::nullopt);

    Lines lines;
    RunRequest request;
    request.input = dir / "seed.npz";
    request.output = dir / "out.json";
    request.cache_dir = dir / "cache";
    request.on_line = lines.callback();
    RunResult first = run_entry_point(project, "validate", request);
    REQUIRE(first.python_env);
    CHECK(first.python_env_created);
    CHECK(first.python_env->parent_path() == dir / "cache" / "venvs");
    CHECK(first.python == *first.python_env / "bin" / "python");
    CHECK_THAT(lines.lines[0].first, Contains("creating the python environment"));
    CHECK(lines.lines[0].second == Stream::setup);

    json report = json::parse(first.output_json);
    CHECK(report["prefix"] == first.python_env->string());
    CHECK(report["env"]["VIRTUAL_ENV"] == first.python_env->string());
    CHECK(report["path_head"] == (*first.python_env / "bin").string());
    CHECK(report["numpy"] == true);  // --system-site-packages keeps Debian's numpy

    RunResult second = run_entry_point(project, "validate", request);
    CHECK_FALSE(second.python_env_created);
    CHECK(second.python_env == first.python_env);

    // A changed file is a different environment (once loaded: a Project is a snapshot).
    write_file(project_dir / "python_env.yaml", "name: test-env-2\ndependencies: []\n");
    project = fedcli::project::load(project_dir);
    RunResult third = run_entry_point(project, "validate", request);
    CHECK(third.python_env_created);
    CHECK(third.python_env != first.python_env);
}

TEST_CASE("a half-built environment is rebuilt", "[dispatch][python_env]") {
    TempDir dir;
    PythonEnv env = parse_python_env("name: half\n", dir / "python_env.yaml");
    VirtualEnvOptions options;
    options.base_python = resolve_python(fedcli::test::python());
    options.cache_dir = dir / "cache";
    fs::path venv = dir / "cache" / "venvs" / virtual_env_key(env, options.base_python);
    fs::create_directories(venv);
    write_file(venv / "leftover", "from a killed build");
    VirtualEnv created = ensure_virtual_env(env, options);
    CHECK(created.created);
    CHECK(created.directory == venv);
    CHECK_FALSE(fs::exists(venv / "leftover"));
    CHECK(fs::exists(venv / "fedcli-ready"));
    CHECK_FALSE(ensure_virtual_env(env, options).created);
}

TEST_CASE("python_env dependencies are installed with pip, offline when already satisfied",
          "[dispatch][python_env]") {
    TempDir dir;
    VirtualEnvOptions options;
    options.base_python = fedcli::test::python();
    options.cache_dir = dir / "cache";
    Lines lines;
    options.on_line = lines.callback();

    PythonEnv satisfied = parse_python_env("dependencies:\n  - numpy\n", dir / "python_env.yaml");
    VirtualEnv venv = ensure_virtual_env(satisfied, options);
    CHECK(venv.created);
    CHECK(fs::exists(venv.directory / "bin" / "pip"));
    bool pip_ran = false;
    for (const auto& [line, stream] : lines.lines) {
        pip_ran = pip_ran || line.find("Requirement already satisfied: numpy") != std::string::npos;
    }
    CHECK(pip_ran);

    PythonEnv broken =
        parse_python_env("dependencies:\n  - 'not a requirement!!'\n", dir / "broken.yaml");
    std::string message = error_of([&] { ensure_virtual_env(broken, options); });
    CHECK_THAT(message, Contains((dir / "broken.yaml").string()) &&
                            Contains("installing the dependencies (not a requirement!!) with "
                                     "pip exited with code") &&
                            Contains("network") && Contains("Invalid requirement"));
    fs::path broken_dir = dir / "cache" / "venvs" / virtual_env_key(broken, options.base_python);
    CHECK_FALSE(fs::exists(broken_dir / "fedcli-ready"));
}

TEST_CASE("a Python without ensurepip gets the python3-venv hint", "[dispatch][python_env]") {
    TempDir dir;
    write_script(dir / "python-without-venv",
                 "#!/bin/sh\n"
                 "echo 'The virtual environment was not created successfully because "
                 "ensurepip is not'\n"
                 "echo 'available.  On Debian/Ubuntu systems, you need to install the "
                 "python3-venv'\n"
                 "exit 1\n");
    VirtualEnvOptions options;
    options.base_python = dir / "python-without-venv";
    options.cache_dir = dir / "cache";
    PythonEnv env = parse_python_env("dependencies: [torch]\n", dir / "python_env.yaml");
    CHECK_THAT(error_of([&] { ensure_virtual_env(env, options); }),
               Contains((dir / "python_env.yaml").string()) &&
                   Contains("cannot create the python environment") &&
                   Contains("apt-get install python3-venv") && Contains("ensurepip is not"));
}

TEST_CASE("a missing python_env file names the project file", "[dispatch][python_env]") {
    TempDir dir;
    auto project = make_project(dir.path(), {{"startup", "true"}});
    project.python_env = "env/python_env.yaml";
    project.python_env_line = 1;
    CHECK_THAT(error_of([&] { run_entry_point(project, "startup", {}); }),
               Contains((dir / "fedcli.yaml").string() + ":1: python_env") &&
                   Contains((dir / "env" / "python_env.yaml").string() + " does not exist"));
}
