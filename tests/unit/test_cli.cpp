// Tests for cli/: the command table, usage errors, the single error printer and the
// `model` and `project` commands, run in-process through fedcli::cli::run with captured
// output. Fixtures are written by numpy at test time in a private TempDir.
#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/app.hpp"
#include "cli/cmd_model.hpp"
#include "cli/cmd_session.hpp"
#include "cli/federation.hpp"
#include "cli/report.hpp"
#include "cli/text.hpp"
#include "tests/unit/support.hpp"

namespace {

using fedcli::test::TempDir;

struct Outcome {
    int exit_code = -1;
    std::string out;
    std::string err;
};

Outcome run_cli(std::vector<std::string> args) {
    std::ostringstream out;
    std::ostringstream err;
    Outcome outcome;
    outcome.exit_code = fedcli::cli::run(std::move(args), out, err);
    outcome.out = out.str();
    outcome.err = err.str();
    INFO("stdout:\n" << outcome.out << "\nstderr:\n" << outcome.err);
    return outcome;
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

/// A numpy-written model: three float32 layers, an int64 array and a 0-d float64, saved
/// with FEDn's numbered keys.
const char* const k_write_model = R"(
import sys, numpy as np
arrays = [np.arange(64 * 784, dtype=np.float32).reshape(64, 784),
          np.ones(64, dtype=np.float32),
          np.zeros((10, 64), dtype=np.float32),
          np.arange(10, dtype=np.int64),
          np.array(0.5)]
np.savez(sys.argv[1], **{str(i): a for i, a in enumerate(arrays)})
)";

std::string python_sha256(const std::filesystem::path& file) {
    auto output = fedcli::test::run_python(
        "import hashlib, sys\n"
        "print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())\n",
        {file.string()});
    return output.substr(0, output.find('\n'));
}

void write_project(const std::filesystem::path& folder, const std::string& yaml) {
    std::filesystem::create_directories(folder);
    fedcli::test::write_file(folder / "fedcli.yaml", yaml);
}

}  // namespace

TEST_CASE("fedcli --version prints the program name and version", "[cli]") {
    auto result = run_cli({"--version"});
    CHECK(result.exit_code == 0);
    CHECK(result.out == "fedcli " + std::string(fedcli::cli::version()) + "\n");
    CHECK(fedcli::cli::version().find('.') != std::string_view::npos);
    CHECK(result.err.empty());
}

TEST_CASE("fedcli --help lists the command groups with descriptions", "[cli]") {
    auto result = run_cli({"--help"});
    CHECK(result.exit_code == 0);
    CHECK(contains(result.out, "Usage: fedcli"));
    CHECK(contains(result.out, "model"));
    CHECK(contains(result.out, "Parameter files (.npz)"));
    CHECK(contains(result.out, "project"));
    for (const char* group : {"combiner", "client", "session", "clients"}) {
        CHECK(contains(result.out, std::string("\n  ") + group + " "));
    }
    CHECK(contains(result.out, "--version"));
    CHECK(result.err.empty());
}

TEST_CASE("fedcli alone prints the top-level help", "[cli]") {
    auto result = run_cli({});
    CHECK(result.exit_code == 0);
    CHECK(result.out == run_cli({"--help"}).out);
}

TEST_CASE("every group and command has --help with a description", "[cli]") {
    const std::vector<std::vector<std::string>> commands = {
        {"model"}, {"model", "inspect"}, {"project"}, {"project", "validate"}};
    for (auto args : commands) {
        args.push_back("--help");
        auto result = run_cli(args);
        INFO("fedcli " << args[0]);
        CHECK(result.exit_code == 0);
        CHECK(contains(result.out, "Usage: fedcli " + args[0]));
        // The first line is the description.
        CHECK(result.out.find('\n') > 10);
    }
    CHECK(contains(run_cli({"model", "inspect", "--help"}).out, "--json"));
    CHECK(contains(run_cli({"project", "validate", "--help"}).out, "--path"));
    CHECK(contains(run_cli({"model", "--help"}).out, "inspect"));
}

TEST_CASE("an unknown command gets a suggestion and exit code 2", "[cli]") {
    SECTION("top level") {
        auto result = run_cli({"modle", "inspect", "x.npz"});
        CHECK(result.exit_code == 2);
        CHECK(
            contains(result.err, "fedcli: error: unknown command 'modle'; did you mean 'model'?"));
        CHECK(contains(result.err, "run 'fedcli --help'"));
        CHECK(result.out.empty());
    }
    SECTION("nested") {
        auto result = run_cli({"model", "inspct", "x.npz"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: unknown command 'inspct'"));
        CHECK(contains(result.err, "did you mean 'inspect'?"));
        CHECK(contains(result.err, "run 'fedcli model --help'"));
    }
    SECTION("after a flag") {
        auto result = run_cli({"project", "--help", "valdiate"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "did you mean 'validate'?"));
    }
    SECTION("nothing close") {
        auto result = run_cli({"xyzzy"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: unknown command 'xyzzy'"));
        CHECK_FALSE(contains(result.err, "did you mean"));
    }
}

TEST_CASE("a group without a command prints its help and fails", "[cli]") {
    auto result = run_cli({"model"});
    CHECK(result.exit_code == 2);
    CHECK(contains(result.err, "Usage: fedcli model"));
    CHECK(contains(result.err, "inspect"));
    CHECK(contains(result.err, "fedcli: error: 'fedcli model' needs a command: inspect"));
}

TEST_CASE("parse errors come out as fedcli: error: with a hint", "[cli]") {
    SECTION("unknown option, with a suggestion") {
        auto result = run_cli({"model", "inspect", "x.npz", "--jsn"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: unknown option '--jsn'"));
        CHECK(contains(result.err, "did you mean '--json'?"));
        CHECK(contains(result.err, "run 'fedcli model inspect --help' for usage"));
    }
    SECTION("unknown option at top level") {
        auto result = run_cli({"--bogus"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: unknown option '--bogus'"));
        CHECK(contains(result.err, "run 'fedcli --help'"));
    }
    SECTION("missing argument") {
        auto result = run_cli({"model", "inspect"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: FILE is required"));
        CHECK(contains(result.err, "run 'fedcli model inspect --help'"));
    }
    SECTION("missing option value") {
        auto result = run_cli({"project", "validate", "--path"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: --path"));
        CHECK(contains(result.err, "run 'fedcli project validate --help'"));
    }
    SECTION("extra argument") {
        auto result = run_cli({"model", "inspect", "a.npz", "b.npz"});
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: unexpected argument 'b.npz'"));
    }
}

/// Sets FEDCLI_PARSE_ONLY to `value` for the lifetime of the object, then unsets it.
class ParseOnly {
  public:
    explicit ParseOnly(const char* value = "1") {
        ::setenv(fedcli::cli::k_parse_only_env, value, 1);
    }
    ~ParseOnly() { ::unsetenv(fedcli::cli::k_parse_only_env); }
    ParseOnly(const ParseOnly&) = delete;
    ParseOnly& operator=(const ParseOnly&) = delete;
};

TEST_CASE("FEDCLI_PARSE_ONLY parses the command line and runs nothing", "[cli]") {
    TempDir temp;
    SECTION("a good line prints the command it selected and exits 0") {
        ParseOnly parse_only;
        // Without parse-only this would dial a combiner at 127.0.0.1:12080.
        auto result = run_cli({"session", "start", "--rounds", "3", "--min-clients", "2",
                               "--validate", "--combiner", "HOST:PORT"});
        CHECK(result.exit_code == 0);
        CHECK(result.out == "parsed: fedcli session start\n");
        CHECK(result.err.empty());
    }
    SECTION("the command does not run") {
        ParseOnly parse_only;
        auto result =
            run_cli({"project", "init", (temp / "myproj").string(), "--template", "numpy"});
        CHECK(result.exit_code == 0);
        CHECK(result.out == "parsed: fedcli project init\n");
        CHECK_FALSE(std::filesystem::exists(temp / "myproj"));
    }
    SECTION("files named on the line need not exist") {
        ParseOnly parse_only;
        auto result = run_cli({"model", "inspect", (temp / "missing.npz").string(), "--json"});
        CHECK(result.exit_code == 0);
        CHECK(result.err.empty());
    }
    SECTION("--help and --version are valid and print only the command") {
        ParseOnly parse_only;
        auto result = run_cli({"model", "inspect", "--help"});
        CHECK(result.exit_code == 0);
        CHECK(result.out == "parsed: fedcli model inspect\n");
        result = run_cli({"--version"});
        CHECK(result.exit_code == 0);
        CHECK(result.out == "parsed: fedcli\n");
    }
    SECTION("a wrong line fails as usual with exit code 2") {
        ParseOnly parse_only;
        auto result = run_cli({"session", "start", "--rounds", "3", "--bogus-flag"});
        CHECK(result.exit_code == 2);
        CHECK(result.out.empty());
        CHECK(contains(result.err, "fedcli: error: unknown option '--bogus-flag'"));
        CHECK(run_cli({"sesion", "start"}).exit_code == 2);
        CHECK(run_cli({"session", "start", "--rounds", "many"}).exit_code == 2);
        CHECK(run_cli({"model", "inspect"}).exit_code == 2);
        CHECK(run_cli({"model"}).exit_code == 2);
    }
    SECTION("FEDCLI_PARSE_ONLY=0 runs the command") {
        ParseOnly parse_only("0");
        auto result = run_cli({"model", "inspect", (temp / "missing.npz").string()});
        CHECK(result.exit_code == 1);
        CHECK(contains(result.err, "missing.npz"));
    }
}

TEST_CASE("model inspect --json describes a numpy-written npz", "[cli]") {
    TempDir dir;
    auto file = dir / "model.npz";
    fedcli::test::run_python(k_write_model, {file.string()});

    auto result = run_cli({"model", "inspect", file.string(), "--json"});
    REQUIRE(result.exit_code == 0);
    CHECK(result.err.empty());
    auto json = nlohmann::json::parse(result.out);

    CHECK(json["file"] == file.string());
    CHECK(json["file_bytes"] == std::filesystem::file_size(file));
    CHECK(json["sha256"] == python_sha256(file));
    CHECK(json["key_convention"] == "numbered");
    REQUIRE(json["arrays"].size() == 5);

    const auto& first = json["arrays"][0];
    CHECK(first["name"] == "0");
    CHECK(first["dtype"] == "float32");
    CHECK(first["shape"] == nlohmann::json::array({64, 784}));
    CHECK(first["parameters"] == 64 * 784);
    CHECK(first["bytes"] == 64 * 784 * 4);
    CHECK(json["arrays"][3]["dtype"] == "int64");
    CHECK(json["arrays"][3]["bytes"] == 80);
    CHECK(json["arrays"][4]["shape"] == nlohmann::json::array());
    CHECK(json["arrays"][4]["parameters"] == 1);

    const std::uint64_t parameters = 64 * 784 + 64 + 640 + 10 + 1;
    CHECK(json["total_parameters"] == parameters);
    CHECK(json["total_bytes"] == (64 * 784 + 64 + 640) * 4 + 10 * 8 + 8);

    // Keys in the documented order.
    std::vector<std::string> keys;
    for (auto it = json.begin(); it != json.end(); ++it) keys.push_back(it.key());
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{"arrays", "file", "file_bytes", "key_convention",
                                           "sha256", "total_bytes", "total_parameters"});
    CHECK(result.out.rfind("{\"file\":", 0) == 0);
}

TEST_CASE("model inspect prints an aligned table with totals", "[cli]") {
    TempDir dir;
    auto file = dir / "model.npz";
    fedcli::test::run_python(k_write_model, {file.string()});

    auto result = run_cli({"model", "inspect", file.string()});
    REQUIRE(result.exit_code == 0);
    CHECK(contains(result.out, python_sha256(file)));
    CHECK(contains(result.out, "keys numbered"));
    CHECK(contains(result.out, "[64, 784]"));
    CHECK(contains(result.out, "50,176"));
    CHECK(contains(result.out, "196.0 KiB"));
    CHECK(contains(result.out, "5 arrays, 50,891 parameters"));
    CHECK(contains(result.out, "(203,608 bytes)"));
    CHECK(contains(result.out, "CRC-32 checked"));

    // The rows line up under the headers: dtype left-aligned, parameters right-aligned.
    std::istringstream lines(result.out);
    std::string line;
    while (std::getline(lines, line) && line.rfind("name ", 0) != 0) {
    }
    const std::size_t dtype_column = line.find("dtype");
    const std::size_t parameters_end = line.find("parameters") + std::string("parameters").size();
    REQUIRE(dtype_column != std::string::npos);
    std::vector<std::string> rows;
    for (int i = 0; i < 5 && std::getline(lines, line); ++i) rows.push_back(line);
    REQUIRE(rows.size() == 5);
    CHECK(rows[0].compare(dtype_column, 8, "float32 ") == 0);
    CHECK(rows[3].compare(dtype_column, 6, "int64 ") == 0);
    CHECK(rows[0].compare(parameters_end - 6, 7, "50,176 ") == 0);
    CHECK(rows[4].compare(parameters_end - 2, 3, " 1 ") == 0);
}

TEST_CASE("model inspect reads compressed npz with named keys, and .npy", "[cli]") {
    TempDir dir;
    fedcli::test::run_python(R"(
import sys, numpy as np
np.savez_compressed(sys.argv[1], **{'fc1.weight': np.zeros((3, 4), np.float16),
                                    'fc1.bias': np.zeros(4, bool)})
np.save(sys.argv[2], np.arange(6, dtype='>i4').reshape(2, 3))
)",
                             {(dir / "named.npz").string(), (dir / "layer.npy").string()});

    auto named = run_cli({"model", "inspect", (dir / "named.npz").string(), "--json"});
    REQUIRE(named.exit_code == 0);
    auto json = nlohmann::json::parse(named.out);
    CHECK(json["key_convention"] == "named");
    REQUIRE(json["arrays"].size() == 2);
    CHECK(json["arrays"][0]["name"] == "fc1.weight");
    CHECK(json["arrays"][0]["dtype"] == "float16");
    CHECK(json["arrays"][1]["dtype"] == "bool");
    CHECK(json["total_bytes"] == 12 * 2 + 4);

    auto single = run_cli({"model", "inspect", (dir / "layer.npy").string(), "--json"});
    REQUIRE(single.exit_code == 0);
    json = nlohmann::json::parse(single.out);
    REQUIRE(json["arrays"].size() == 1);
    CHECK(json["arrays"][0]["name"] == "layer");
    CHECK(json["arrays"][0]["dtype"] == "int32");
    CHECK(json["arrays"][0]["shape"] == nlohmann::json::array({2, 3}));
    CHECK(json["sha256"] == python_sha256(dir / "layer.npy"));
}

TEST_CASE("model inspect on bad files fails with the file name and exit code 1", "[cli]") {
    TempDir dir;
    std::filesystem::path file;
    SECTION("missing") {
        file = dir / "missing.npz";
    }
    SECTION("a text file named .npz") {
        file = dir / "notes.npz";
        fedcli::test::write_file(file, "these are not parameters\n");
    }
    SECTION("a truncated npz") {
        auto whole = dir / "whole.npz";
        fedcli::test::run_python(k_write_model, {whole.string()});
        auto bytes = fedcli::test::read_file(whole);
        file = dir / "truncated.npz";
        fedcli::test::write_file(file, bytes.substr(0, bytes.size() / 2));
    }
    SECTION("an npz with a flipped data byte") {
        auto whole = dir / "whole.npz";
        fedcli::test::run_python(k_write_model, {whole.string()});
        auto bytes = fedcli::test::read_file(whole);
        bytes[1000] = static_cast<char>(bytes[1000] ^ 0x55);  // inside member "0"'s data
        file = dir / "flipped.npz";
        fedcli::test::write_file(file, bytes);
    }
    SECTION("a truncated npy") {
        auto whole = dir / "whole.npy";
        fedcli::test::run_python("import sys, numpy as np; np.save(sys.argv[1], np.ones(100))",
                                 {whole.string()});
        auto bytes = fedcli::test::read_file(whole);
        file = dir / "truncated.npy";
        fedcli::test::write_file(file, bytes.substr(0, bytes.size() - 8));
    }
    for (bool json : {false, true}) {
        std::vector<std::string> args = {"model", "inspect", file.string()};
        if (json) args.push_back("--json");
        auto result = run_cli(args);
        CHECK(result.exit_code == 1);
        CHECK(result.out.empty());
        CHECK(result.err.rfind("fedcli: error: ", 0) == 0);
        CHECK(contains(result.err, file.filename().string()));
        CHECK(std::count(result.err.begin(), result.err.end(), '\n') == 1);
    }
}

TEST_CASE("project validate summarises a good project", "[cli]") {
    TempDir dir;
    auto folder = dir / "mnist";
    write_project(folder,
                  "name: mnist-demo\n"
                  "python_env: python_env.yaml\n"
                  "entry_points:\n"
                  "  build:\n"
                  "    command: python3 model.py\n"
                  "  train:\n"
                  "    command: python3 train.py --epochs 1\n"
                  "  validate:\n"
                  "    command: python3 validate.py\n");
    fedcli::test::write_file(folder / "python_env.yaml", "name: mnist\n");

    auto result = run_cli({"project", "validate", "--path", folder.string()});
    REQUIRE(result.exit_code == 0);
    CHECK(result.err.empty());
    CHECK(contains(result.out, "fedcli.yaml"));
    CHECK(contains(result.out, "mnist-demo"));
    CHECK(contains(result.out, "python_env.yaml"));
    CHECK(contains(result.out, "python3 train.py --epochs 1"));
    CHECK(contains(result.out, "validate"));
    CHECK(result.out.size() >= 3);
    CHECK(result.out.substr(result.out.size() - 3) == "ok\n");

    auto json_result = run_cli({"project", "validate", "--path", folder.string(), "--json"});
    REQUIRE(json_result.exit_code == 0);
    auto json = nlohmann::json::parse(json_result.out);
    CHECK(json["name"] == "mnist-demo");
    CHECK(json["ok"] == true);
    CHECK(json["problems"].empty());
    REQUIRE(json["entry_points"].size() == 3);
    CHECK(json["entry_points"][1]["name"] == "train");
    CHECK(json["entry_points"][1]["command"] == "python3 train.py --epochs 1");
}

TEST_CASE("project validate reports every problem and exits 1", "[cli]") {
    TempDir dir;
    write_project(dir.path(),
                  "python_env: missing_env.yaml\n"
                  "entry_points:\n"
                  "  validate:\n"
                  "    command: python3 validate.py\n");

    auto result = run_cli({"project", "validate", "--path", dir.path().string()});
    CHECK(result.exit_code == 1);
    CHECK_FALSE(contains(result.out, "ok\n"));
    CHECK(contains(result.out, "python3 validate.py"));  // the summary still comes out
    CHECK(contains(result.err, "fedcli: error: "));
    CHECK(contains(result.err, "'train'"));
    CHECK(contains(result.err, "missing_env.yaml"));
    CHECK(std::count(result.err.begin(), result.err.end(), '\n') == 2);

    auto json_result = run_cli({"project", "validate", "--path", dir.path().string(), "--json"});
    CHECK(json_result.exit_code == 1);
    auto json = nlohmann::json::parse(json_result.out);
    CHECK(json["ok"] == false);
    CHECK(json["problems"].size() == 2);
    CHECK(json["python_env"] == "missing_env.yaml");
}

TEST_CASE("project validate on a broken or missing project fails with context", "[cli]") {
    TempDir dir;
    SECTION("no project file") {
        auto result = run_cli({"project", "validate", "--path", dir.path().string()});
        CHECK(result.exit_code == 1);
        CHECK(result.err.rfind("fedcli: error: ", 0) == 0);
        CHECK(contains(result.err, "fedcli.yaml"));
    }
    SECTION("a typo in an entry point") {
        write_project(dir.path(),
                      "entry_points:\n"
                      "  trian:\n"
                      "    command: python3 train.py\n");
        auto result = run_cli({"project", "validate", "--path", dir.path().string()});
        CHECK(result.exit_code == 1);
        CHECK(result.err.rfind("fedcli: error: ", 0) == 0);
        CHECK(contains(result.err, "fedcli.yaml:2"));
        CHECK(contains(result.err, "trian"));
    }
}

TEST_CASE("text helpers", "[cli]") {
    using fedcli::cli::group_digits;
    using fedcli::cli::human_bytes;

    CHECK(human_bytes(0) == "0 B");
    CHECK(human_bytes(1023) == "1023 B");
    CHECK(human_bytes(1024) == "1.0 KiB");
    CHECK(human_bytes(205512) == "200.7 KiB");
    CHECK(human_bytes(1024 * 1024 - 1) == "1.0 MiB");
    CHECK(human_bytes(std::uint64_t{3} << 30) == "3.0 GiB");

    CHECK(group_digits(0) == "0");
    CHECK(group_digits(999) == "999");
    CHECK(group_digits(1000) == "1,000");
    CHECK(group_digits(1234567) == "1,234,567");
}

TEST_CASE("operator commands check their options before connecting", "[cli]") {
    // Port 1 on 127.0.0.1 has no combiner; each of these must fail before trying it.
    auto bad_aggregator = run_cli({"session", "start", "--rounds", "2", "--aggregator", "fedavgg",
                                   "--combiner", "127.0.0.1:1"});
    CHECK(bad_aggregator.exit_code == 1);
    CHECK(contains(bad_aggregator.err, "did you mean 'fedavg'"));
    auto bad_sample = run_cli({"session", "start", "--rounds", "1", "--min-clients", "3",
                               "--clients-per-round", "2", "--combiner", "127.0.0.1:1"});
    CHECK(bad_sample.exit_code == 2);
    CHECK(contains(bad_sample.err, "below --min-clients 3"));
    auto bad_settings = run_cli({"session", "start", "--rounds", "1", "--settings", "round=3",
                                 "--combiner", "127.0.0.1:1"});
    CHECK(bad_settings.exit_code == 2);
    CHECK(contains(bad_settings.err, "'round' is set by the combiner"));
    auto reserved = run_cli({"session", "start", "--rounds", "1", "--settings", "session_round=1",
                             "--combiner", "127.0.0.1:1"});
    CHECK(reserved.exit_code == 2);
    CHECK(contains(reserved.err, "'session_round' is set by the combiner"));
    auto bad_target = run_cli({"clients", "list", "--combiner", "no-port"});
    CHECK(bad_target.exit_code == 1);
    CHECK(contains(bad_target.err, "--combiner"));
}

TEST_CASE("an unreachable combiner gives one clear error", "[cli]") {
    auto result = run_cli({"session", "status", "--combiner", "127.0.0.1:1"});
    CHECK(result.exit_code == 1);
    CHECK(contains(result.err, "fedcli: error: cannot reach the combiner at 127.0.0.1:1: "));
    CHECK(contains(result.err, "(is `fedcli combiner start` running?)"));
}

// ---------------------------------------------------------------------------------------
// Sessions, history and observability: option checks, the pure parts (cli/report.hpp,
// cli/cmd_session.hpp, cli/federation.hpp) and the commands against an in-process fake
// combiner that serves canned answers.

namespace {

namespace v1 = fedcli::v1;

v1::RoundInfo make_round(std::uint64_t id, std::uint32_t session_round, std::uint32_t attempt,
                         v1::RoundState state) {
    v1::RoundInfo round;
    round.set_round_id(id);
    round.set_session_id("5e55104aa0000000000000000000beef");
    round.set_session_round(session_round);
    round.set_attempt(attempt);
    round.set_state(state);
    return round;
}

void add_update(v1::RoundInfo& round, const std::string& client, std::uint64_t examples) {
    auto* update = round.add_updates();
    update->set_client_id(client);
    update->set_num_examples(examples);
    update->set_used(true);
}

void add_validation(v1::RoundInfo& round, const std::string& client, const std::string& json) {
    auto* validation = round.add_validations();
    validation->set_client_id(client);
    validation->set_metrics_json(json);
}

/// A finished session of three rounds: round 2 failed and was retried as round 3.
fedcli::cli::ReportInput sample_report() {
    fedcli::cli::ReportInput input;
    auto& session = input.session;
    session.set_session_id("5e55104aa0000000000000000000beef");
    session.set_state(v1::SESSION_STATE_FINISHED);
    session.set_message("session 5e55104a finished: 2 rounds");
    session.set_started_unix_ms(1'700'000'000'000);
    session.set_ended_unix_ms(1'700'000'095'000);
    session.set_rounds_committed(2);
    session.set_latest_model_id(std::string(64, 'b'));
    session.mutable_config()->set_rounds(2);
    session.mutable_config()->set_aggregator("fedavg");
    session.mutable_config()->set_min_clients(2);
    session.mutable_config()->set_validate(true);

    auto first = make_round(1, 1, 1, v1::ROUND_STATE_COMMITTED);
    first.set_clients_selected(2);
    first.set_updates_accepted(2);
    first.set_started_unix_ms(1'700'000'001'000);
    first.set_closed_unix_ms(1'700'000'031'000);
    first.set_output_model_id(std::string(64, 'a'));
    first.set_aggregator("fedavg");
    add_update(first, "c1", 100);
    add_update(first, "c2", 300);
    add_validation(first, "c1", R"({"accuracy": 0.5, "<script>alert(1)</script>": 7})");
    add_validation(first, "c2", R"({"accuracy": 0.9, "note": "fine"})");
    auto failed = make_round(2, 2, 1, v1::ROUND_STATE_FAILED);
    failed.set_clients_selected(2);
    failed.set_updates_accepted(1);
    failed.set_reason("1 update accepted, 2 required");
    add_update(failed, "c1", 100);
    auto* rejected = failed.add_rejected();
    rejected->set_client_id("c2");
    rejected->set_reason("train failed: <oops> & exit 3");
    auto retry = make_round(3, 2, 2, v1::ROUND_STATE_COMMITTED);
    retry.set_clients_selected(2);
    retry.set_updates_accepted(2);
    add_update(retry, "c1", 100);
    add_update(retry, "c2", 300);
    add_validation(retry, "c1", R"({"accuracy": 0.7})");
    add_validation(retry, "c2", R"({"accuracy": 0.95})");
    input.rounds = {first, failed, retry};
    input.client_names = {{"c1", "alice"}, {"c2", "bob & <co>"}};
    input.generator = "fedcli test";
    input.generated_unix_ms = 1'700'000'100'000;
    return input;
}

/// Parses `file` with Python's XML parser; fails the test when it is not well-formed.
void check_well_formed_xml(const std::filesystem::path& file) {
    fedcli::test::run_python("import sys, xml.dom.minidom\nxml.dom.minidom.parse(sys.argv[1])\n",
                             {file.string()});
}

}  // namespace

TEST_CASE("session start checks the round policy options before connecting", "[cli]") {
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"--clients-fraction", "1.5"}, "--clients-fraction must be in (0, 1]"},
        {{"--clients-fraction", "0"}, "--clients-fraction must be in (0, 1]"},
        {{"--clients-fraction", "-0.5"}, "--clients-fraction must be in (0, 1]"},
        {{"--buffer-size", "1", "--min-clients", "2"}, "--buffer-size 1 is below --min-clients 2"},
        {{"--buffer-size", "4", "--clients-per-round", "3"},
         "--buffer-size 4 is above --clients-per-round 3"},
        {{"--buffer-size", "-1"}, "--buffer-size must be 0"},
        {{"--max-round-retries", "-1"}, "--max-round-retries must be from 0 to 100, found -1"},
        {{"--max-round-retries", "101"}, "--max-round-retries must be from 0 to 100"},
        {{"--max-client-failures", "-2"}, "--max-client-failures must be from 0"},
    };
    for (const auto& [options, message] : cases) {
        std::vector<std::string> args = {"session", "start",      "--rounds",
                                         "2",       "--combiner", "127.0.0.1:1"};
        args.insert(args.end(), options.begin(), options.end());
        auto result = run_cli(args);
        INFO(message);
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, "fedcli: error: " + message));
        CHECK(contains(result.err, "run 'fedcli session start --help' for usage"));
    }
}

TEST_CASE("history and session commands reject bad options with clear messages", "[cli]") {
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"report", "-o", "x.pdf"},
         "cannot tell the report format from 'x.pdf': name the file .html or .svg"},
        {{"report", "-o", "x.html", "--format", "pdf"}, "--format must be html or svg"},
        {{"report"}, "--output is required"},
        {{"validations", "list", "--metric", ""}, "--metric needs a metric name"},
        {{"logs", "--tail", "0"}, "--tail must be a number of lines (1 or more), found 0"},
        {{"logs", "--round", "0"}, "--round must be a round id (1 or more)"},
        {{"logs", "--client", ""}, "--client needs a client name"},
        {{"rounds", "list", "--all", "--session", "ab12"}, "--session excludes --all"},
        {{"session", "status", "--interval", "5"}, "--interval requires --watch"},
        {{"session", "status", "--watch", "--json"}, "--json excludes --watch"},
        {{"session", "status", "--watch", "--interval", "0"},
         "--interval must be from 0.1 to 3600 seconds"},
        {{"session", "resume", "--rounds", "-1"}, "--rounds must be 0"},
        {{"session", "stop", "not-an-id"}, "'not-an-id' is not a session id"},
    };
    for (const auto& [args, message] : cases) {
        std::vector<std::string> full = args;
        full.insert(full.end(), {"--combiner", "127.0.0.1:1"});
        auto result = run_cli(full);
        INFO(message);
        CHECK(result.exit_code == 2);
        CHECK(contains(result.err, message));
    }
}

TEST_CASE("new commands have --help with examples", "[cli]") {
    for (std::vector<std::string> args : {std::vector<std::string>{"session", "resume"},
                                          {"session", "list"},
                                          {"session", "stop"},
                                          {"rounds", "list"},
                                          {"validations", "list"},
                                          {"logs"},
                                          {"report"},
                                          {"models", "list"},
                                          {"combiner", "check"}}) {
        args.push_back("--help");
        auto result = run_cli(args);
        CHECK(result.exit_code == 0);
        CHECK(contains(result.out, "Usage: fedcli"));
    }
    CHECK(contains(run_cli({"validations", "list", "--help"}).out, "else 1"));
    CHECK(contains(run_cli({"logs", "--help"}).out, "--follow"));
    CHECK(contains(run_cli({"session", "start", "--help"}).out, "--max-client-failures"));
    CHECK(contains(run_cli({"session", "status", "--help"}).out, "--watch"));
}

TEST_CASE("summarize_metrics weighs clients by examples", "[cli]") {
    using fedcli::cli::summarize_metrics;
    SECTION("weights: the metrics' num_examples, else the update's, else 1") {
        auto round = make_round(4, 4, 1, v1::ROUND_STATE_COMMITTED);
        add_update(round, "c2", 300);
        add_update(round, "c3", 0);
        add_validation(round, "c1", R"({"acc": 1.0, "num_examples": 100})");  // own count
        add_validation(round, "c2", R"({"acc": 0.0})");                       // update's 300
        add_validation(round, "c3", R"({"acc": 0.5, "num_examples": -4})");   // neither: 1
        auto summaries = summarize_metrics(round);
        REQUIRE(summaries.size() == 1);  // num_examples is the weight, not a metric
        const auto& acc = summaries[0];
        CHECK(acc.metric == "acc");
        REQUIRE(acc.values.size() == 3);
        CHECK(acc.values[0].weight == 100);
        CHECK(acc.values[1].weight == 300);
        CHECK(acc.values[2].weight == 1);
        CHECK(acc.total_weight == 401);
        CHECK(acc.weighted_mean == Approx((100 * 1.0 + 300 * 0.0 + 1 * 0.5) / 401));
        CHECK(acc.mean == Approx(0.5));
        CHECK(acc.min == 0.0);
        CHECK(acc.max == 1.0);
    }
    SECTION("missing and non-numeric values are left out") {
        auto round = make_round(1, 1, 1, v1::ROUND_STATE_COMMITTED);
        add_validation(round, "c1", R"({"acc": 0.8, "loss": 0.3, "tag": "x", "ok": true})");
        add_validation(round, "c2", R"({"acc": 0.6, "loss": [1, 2], "nested": {"a": 1}})");
        add_validation(round, "c3", "not json");
        add_validation(round, "c4", "[0.5]");
        auto summaries = summarize_metrics(round);
        REQUIRE(summaries.size() == 2);
        CHECK(summaries[0].metric == "acc");
        CHECK(summaries[0].values.size() == 2);
        CHECK(summaries[0].weighted_mean == Approx(0.7));
        CHECK(summaries[1].metric == "loss");
        CHECK(summaries[1].values.size() == 1);
        CHECK(summaries[1].mean == Approx(0.3));
        auto only = summarize_metrics(round, "loss");
        REQUIRE(only.size() == 1);
        CHECK(only[0].metric == "loss");
        CHECK(summarize_metrics(round, "nothing").empty());
    }
    SECTION("a round without validations has no metrics") {
        CHECK(summarize_metrics(make_round(1, 1, 1, v1::ROUND_STATE_COMMITTED)).empty());
        CHECK(fedcli::cli::metric_names({}).empty());
    }
}

TEST_CASE("round rows show unfilled fields as '-'", "[cli]") {
    using fedcli::cli::round_table_cells;
    auto retry = make_round(7, 3, 2, v1::ROUND_STATE_FAILED);
    retry.set_clients_selected(4);
    retry.set_updates_accepted(1);
    retry.set_started_unix_ms(1000);
    retry.set_closed_unix_ms(13500);
    retry.set_reason("1 update accepted, 2 required");
    add_update(retry, "c1", 1500);
    add_update(retry, "c2", 500);
    auto cells = round_table_cells(retry, 0);
    CHECK(cells == std::vector<std::string>{"7", "3 (try 2)", "failed", "4", "1", "0", "2,000",
                                            "12 s", "-", "-", "1 update accepted, 2 required"});
    CHECK(cells.size() == fedcli::cli::round_table_headers().size());

    v1::RoundInfo bare;  // an older combiner: no session round, no times
    bare.set_round_id(2);
    cells = round_table_cells(bare, 5000);
    CHECK(cells[1] == "-");
    CHECK(cells[2] == "unknown");
    CHECK(cells[7] == "-");

    auto open = make_round(9, 1, 1, v1::ROUND_STATE_OPEN);
    open.set_started_unix_ms(10'000);
    CHECK(round_table_cells(open, 14'000)[7] == "4.0 s so far");

    // Positions fall back to counting committed rounds when the combiner did not say.
    std::vector<v1::RoundInfo> rounds(4);
    rounds[0].set_state(v1::ROUND_STATE_COMMITTED);
    rounds[1].set_state(v1::ROUND_STATE_FAILED);
    rounds[2].set_state(v1::ROUND_STATE_COMMITTED);
    rounds[3].set_session_round(9);
    CHECK(fedcli::cli::session_positions(rounds) == std::vector<std::uint32_t>{1, 2, 2, 9});
}

TEST_CASE("xml_escape makes any text safe for HTML and SVG", "[cli]") {
    using fedcli::cli::xml_escape;
    CHECK(xml_escape("<script>alert('x') & \"y\"</script>") ==
          "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;");
    CHECK(xml_escape("ok\ttab\nline") == "ok\ttab\nline");
    CHECK(xml_escape(std::string("a\x01"
                                 "b",
                                 3)) ==
          "a\xEF\xBF\xBD"
          "b");
    CHECK(xml_escape("caf\xC3\xA9 \xE2\x9C\x93") == "caf\xC3\xA9 \xE2\x9C\x93");
    CHECK(xml_escape("bad \xC3 byte") == "bad \xEF\xBF\xBD byte");
    CHECK(xml_escape("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
    CHECK(xml_escape("\xEF\xBF\xBF") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // U+FFFF
}

TEST_CASE("report formats come from the file name or --format", "[cli]") {
    using fedcli::cli::ReportFormat;
    CHECK(fedcli::cli::report_format_for("a/report.html") == ReportFormat::html);
    CHECK(fedcli::cli::report_format_for("REPORT.HTM") == ReportFormat::html);
    CHECK(fedcli::cli::report_format_for("charts.svg") == ReportFormat::svg);
    CHECK_FALSE(fedcli::cli::report_format_for("x.pdf"));
    CHECK_FALSE(fedcli::cli::report_format_for("html"));
    CHECK(fedcli::cli::parse_report_format("SVG") == ReportFormat::svg);
    CHECK_FALSE(fedcli::cli::parse_report_format("png"));
}

TEST_CASE("render_report writes well-formed, escaped HTML and SVG", "[cli]") {
    using fedcli::cli::render_report;
    using fedcli::cli::ReportFormat;
    TempDir dir;
    const auto input = sample_report();

    const std::string html = render_report(input, ReportFormat::html);
    fedcli::test::write_file(dir / "report.html", html);
    check_well_formed_xml(dir / "report.html");
    CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
    CHECK(contains(html, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    CHECK(contains(html, "accuracy"));
    // Round 1: (100 * 0.5 + 300 * 0.9) / 400 = 0.8; the retry of round 2: 0.8875.
    CHECK(contains(html, "<td class=\"number\">0.8</td>"));
    CHECK(contains(html, "0.8875"));
    CHECK(contains(html, "2 (try 2)"));
    CHECK(contains(html, std::string(64, 'b')));  // the final model
    CHECK(contains(html, "1 update accepted, 2 required"));
    // Everything from the combiner is escaped; nothing can open a tag or a script.
    CHECK_FALSE(contains(html, "<script"));
    CHECK(contains(html, "&lt;script&gt;alert(1)&lt;/script&gt;"));
    CHECK(contains(html, "bob &amp; &lt;co&gt;"));
    CHECK(contains(html, "train failed: &lt;oops&gt; &amp; exit 3"));
    // Self-contained: nothing to fetch.
    CHECK_FALSE(contains(html, "src="));
    CHECK_FALSE(contains(html, "href="));
    CHECK_FALSE(contains(html, "@import"));
    CHECK_FALSE(contains(html, "url("));

    const std::string svg = render_report(input, ReportFormat::svg);
    fedcli::test::write_file(dir / "report.svg", svg);
    check_well_formed_xml(dir / "report.svg");
    CHECK(contains(svg, ">accuracy</text>"));
    CHECK(contains(svg, ">training</text>"));
    CHECK(contains(svg, "&lt;script&gt;"));
    CHECK_FALSE(contains(svg, "<script"));
    CHECK(contains(svg, "<polygon"));  // the min-max band
    CHECK(contains(svg, "<polyline"));
}

TEST_CASE("a session without validations still makes a valid report", "[cli]") {
    using fedcli::cli::ReportFormat;
    TempDir dir;
    auto input = sample_report();
    for (auto& round : input.rounds) round.clear_validations();
    for (auto format : {ReportFormat::html, ReportFormat::svg}) {
        const std::string text = fedcli::cli::render_report(input, format);
        auto file = dir / (format == ReportFormat::html ? "r.html" : "r.svg");
        fedcli::test::write_file(file, text);
        check_well_formed_xml(file);
        CHECK(contains(text, "No validation metrics"));
        CHECK(contains(text, ">training</text>"));
    }
    // Nothing at all: an empty session of an older combiner.
    fedcli::cli::ReportInput empty;
    const std::string html = fedcli::cli::render_report(empty, ReportFormat::html);
    fedcli::test::write_file(dir / "empty.html", html);
    check_well_formed_xml(dir / "empty.html");
    CHECK(contains(html, "No rounds ran in this session."));
    const std::string svg = fedcli::cli::render_report(empty, ReportFormat::svg);
    fedcli::test::write_file(dir / "empty.svg", svg);
    check_well_formed_xml(dir / "empty.svg");
}

TEST_CASE("log lines and the live view", "[cli]") {
    v1::LogEntry entry;
    entry.set_unix_ms(1'700'000'000'123);
    entry.set_client_id("0123456789abcdef");
    entry.set_client_name("c1");
    entry.set_round_id(3);
    entry.set_kind(v1::TASK_KIND_TRAIN);
    entry.set_stream(v1::LOG_STREAM_STDOUT);
    entry.set_line("loss 0.41");
    CHECK(fedcli::cli::log_line_text(entry) == "2023-11-14T22:13:20.123Z c1 r3 train | loss 0.41");
    entry.set_stream(v1::LOG_STREAM_STDERR);
    entry.set_client_name("");
    entry.set_round_id(0);
    entry.set_kind(v1::TASK_KIND_VALIDATE);
    CHECK(fedcli::cli::log_line_text(entry) ==
          "2023-11-14T22:13:20.123Z 01234567 r- validate ! loss 0.41");
    auto json = fedcli::cli::log_entry_json(entry);
    CHECK(json["stream"] == "stderr");
    CHECK(json["kind"] == "validate");
    CHECK(json["line"] == "loss 0.41");

    using fedcli::cli::progress_bar;
    CHECK(progress_bar(2, 4, 10) == "[#####.....]");
    CHECK(progress_bar(5, 4, 4) == "[####]");
    CHECK(progress_bar(1, 0, 4) == "[....]");

    v1::StatusResponse status;
    CHECK(fedcli::cli::watch_line(status) == "no session has run on this combiner yet");
    status.set_session_id("9c6bb4d0aaaaaaaa");  // an older combiner: no session, no round
    status.set_session_state(v1::SESSION_STATE_RUNNING);
    status.set_rounds(5);
    CHECK(fedcli::cli::watch_line(status) ==
          "session 9c6bb4d0 running: - of 5 rounds committed; clients 0/0 online");
    auto* session = status.mutable_session();
    session->set_session_id("9c6bb4d0aaaaaaaa");
    session->set_state(v1::SESSION_STATE_RUNNING);
    session->set_rounds_committed(2);
    session->set_started_unix_ms(1'000);
    session->mutable_config()->set_rounds(5);
    session->mutable_config()->set_round_timeout_ms(60'000);
    auto round = make_round(7, 3, 2, v1::ROUND_STATE_OPEN);
    round.set_clients_selected(4);
    round.set_updates_accepted(2);
    round.set_started_unix_ms(31'000);
    *status.mutable_round() = round;
    status.set_clients_online(4);
    status.set_clients_known(5);
    status.set_message("round 6 failed: 1 update accepted, 2 required");
    CHECK(fedcli::cli::watch_line(status) ==
          "session 9c6bb4d0 running: 2 of 5 rounds committed; round 7 (3/5, try 2) open, 2/4 "
          "updates; clients 4/5 online; round 6 failed: 1 update accepted, 2 required");
    auto view = fedcli::cli::watch_view(status, 61'000);
    REQUIRE(view.size() == 7);
    CHECK(view[0] == "session  9c6bb4d0  running, running for 1 min");
    CHECK(view[1] == "rounds   [########............]  2 of 5 rounds committed");
    CHECK(view[2] == "round    round 7 (3/5, try 2)  open");
    CHECK(view[3] == "updates  [##########..........]  2 of 4 selected accepted");
    CHECK(view[4] == "time     [##########..........]  30 s of 1 min round timeout");
    CHECK(view[5] == "clients  4 online, 5 known");
    CHECK(view[6] == "last     round 6 failed: 1 update accepted, 2 required");
}

TEST_CASE("client JSON has the contribution fields", "[cli]") {
    v1::ClientInfo client;
    client.set_client_id("abc");
    client.set_rounds_contributed(3);
    client.set_examples_contributed(600);
    client.set_consecutive_failures(2);
    client.set_skipped(true);
    auto json = fedcli::cli::client_json(client);
    CHECK(json["rounds_contributed"] == 3);
    CHECK(json["examples_contributed"] == 600);
    CHECK(json["consecutive_failures"] == 2);
    CHECK(json["skipped"] == true);
    CHECK(json["first_seen_unix_ms"] == 0);
}

TEST_CASE("combiner check reports the problems of a data folder", "[cli]") {
    TempDir dir;
    auto missing = run_cli({"combiner", "check", "--data-dir", (dir / "nope").string()});
    CHECK(missing.exit_code == 1);
    CHECK(contains(missing.err, "no such folder"));
    auto empty = run_cli({"combiner", "check", "--data-dir", dir.path().string()});
    CHECK(empty.exit_code == 1);
    CHECK(empty.err.rfind("fedcli: error: ", 0) == 0);
    auto json = run_cli({"combiner", "check", "--data-dir", dir.path().string(), "--json"});
    CHECK(json.exit_code == 1);
    auto parsed = nlohmann::json::parse(json.out);
    CHECK(parsed["consistent"] == false);
    CHECK_FALSE(parsed["problems"].empty());
}

namespace {

/// A Control service with canned answers, for running the history commands in-process
/// against a real gRPC server on a free port. It also plays an older combiner: the second
/// session has none of the newer fields filled.
class FakeControl final : public v1::Control::Service {
  public:
    FakeControl() {
        auto report = sample_report();
        m_sessions.push_back(report.session);
        v1::SessionInfo bare;
        bare.set_session_id("0dd5e55100000000");
        bare.set_state(v1::SESSION_STATE_INTERRUPTED);
        m_sessions.push_back(bare);
        m_rounds = report.rounds;
        for (const auto& [id, name] : report.client_names) {
            v1::ClientInfo client;
            client.set_client_id(id);
            client.set_name(name);
            m_clients.push_back(client);
        }
        v1::LogEntry entry;
        entry.set_sequence(1);
        entry.set_unix_ms(1'700'000'000'000);
        entry.set_client_id("c1");
        entry.set_client_name("alice");
        entry.set_round_id(1);
        entry.set_kind(v1::TASK_KIND_TRAIN);
        entry.set_line("epoch 1");
        m_logs.push_back(entry);
        entry.set_sequence(2);
        entry.set_stream(v1::LOG_STREAM_STDERR);
        entry.set_line("warning: slow");
        m_logs.push_back(entry);
    }

    grpc::Status ListSessions(grpc::ServerContext*, const v1::ListSessionsRequest*,
                              v1::ListSessionsResponse* response) override {
        for (const auto& session : m_sessions) *response->add_sessions() = session;
        return grpc::Status::OK;
    }
    grpc::Status ListRounds(grpc::ServerContext*, const v1::ListRoundsRequest* request,
                            v1::ListRoundsResponse* response) override {
        const std::string wanted =
            request->session_id().empty() ? m_sessions.back().session_id() : request->session_id();
        for (const auto& round : m_rounds) {
            if (request->all_sessions() || round.session_id() == wanted) {
                *response->add_rounds() = round;
            }
        }
        return grpc::Status::OK;
    }
    grpc::Status ListClients(grpc::ServerContext*, const v1::ListClientsRequest*,
                             v1::ListClientsResponse* response) override {
        for (const auto& client : m_clients) *response->add_clients() = client;
        return grpc::Status::OK;
    }
    grpc::Status GetLogs(grpc::ServerContext*, const v1::GetLogsRequest* request,
                         grpc::ServerWriter<v1::LogBatch>* writer) override {
        if (request->client() == "nobody") {
            return {grpc::StatusCode::NOT_FOUND, "no client named 'nobody'"};
        }
        for (const auto& entry : m_logs) {  // one batch per entry
            v1::LogBatch batch;
            *batch.add_entries() = entry;
            writer->Write(batch);
        }
        return grpc::Status::OK;
    }

  private:
    std::vector<v1::SessionInfo> m_sessions;
    std::vector<v1::RoundInfo> m_rounds;
    std::vector<v1::ClientInfo> m_clients;
    std::vector<v1::LogEntry> m_logs;
};

class FakeCombiner {
  public:
    FakeCombiner() {
        grpc::ServerBuilder builder;
        builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &m_port);
        builder.RegisterService(&m_service);
        m_server = builder.BuildAndStart();
        REQUIRE(m_server);
        REQUIRE(m_port > 0);
    }
    ~FakeCombiner() { m_server->Shutdown(); }
    std::string target() const { return "127.0.0.1:" + std::to_string(m_port); }

  private:
    FakeControl m_service;
    std::unique_ptr<grpc::Server> m_server;
    int m_port = 0;
};

}  // namespace

TEST_CASE("history commands against a combiner with canned answers", "[cli]") {
    FakeCombiner combiner;
    const std::string target = combiner.target();
    auto run = [&](std::vector<std::string> args) {
        args.insert(args.end(), {"--combiner", target});
        return run_cli(args);
    };

    auto sessions = run({"session", "list"});
    CHECK(sessions.exit_code == 0);
    CHECK(contains(sessions.out, "5e55104a  finished        2/2  2023-11-14 22:13:20Z"));
    CHECK(contains(sessions.out, "0dd5e551  interrupted     0/0  -"));  // unfilled fields
    auto sessions_json = nlohmann::json::parse(run({"session", "list", "--json"}).out);
    REQUIRE(sessions_json.size() == 2);
    CHECK(sessions_json[0]["rounds_committed"] == 2);
    CHECK(sessions_json[1]["state"] == "interrupted");

    // The latest session has no rounds; --session takes a unique prefix.
    CHECK(contains(run({"rounds", "list"}).out, "no rounds in the latest session"));
    auto rounds = run({"rounds", "list", "--session", "5e55"});
    CHECK(rounds.exit_code == 0);
    CHECK(contains(rounds.out, "2 (try 2)"));
    CHECK(contains(rounds.out, "3 rounds: 2 committed, 1 failed"));
    auto rounds_json = nlohmann::json::parse(run({"rounds", "list", "--all", "--json"}).out);
    REQUIRE(rounds_json.size() == 3);
    CHECK(rounds_json[2]["attempt"] == 2);
    CHECK(rounds_json[0]["examples"] == 400);
    CHECK(rounds_json[0]["updates"][1]["client_name"] == "bob & <co>");
    auto unknown = run({"rounds", "list", "--session", "ffff"});
    CHECK(unknown.exit_code == 1);
    CHECK(contains(unknown.err,
                   "no session on the combiner at " + target + " has an id starting with 'ffff'"));

    auto validations = run({"validations", "list", "--session", "5e55", "--metric", "accuracy"});
    CHECK(validations.exit_code == 0);
    CHECK(contains(validations.out, "accuracy"));
    CHECK(contains(validations.out, "0.8875"));
    auto typo = run({"validations", "list", "--session", "5e55", "--metric", "acuracy"});
    CHECK(typo.exit_code == 1);
    CHECK(contains(typo.err, "did you mean 'accuracy'?"));
    auto validations_json =
        nlohmann::json::parse(run({"validations", "list", "-s", "5e55", "--json"}).out);
    REQUIRE(validations_json.size() == 3);  // round 1: two metrics; round 3: accuracy
    CHECK(validations_json[1]["metric"] == "accuracy");
    CHECK(validations_json[1]["weighted_mean"] == Approx(0.8));
    CHECK(validations_json[1]["values"][0]["weight"] == 100);

    auto logs = run({"logs"});
    CHECK(logs.exit_code == 0);
    CHECK(contains(logs.out, "alice r1 train | epoch 1\n"));
    CHECK(contains(logs.out, "alice r1 train ! warning: slow\n"));
    auto logs_json = nlohmann::json::parse(run({"logs", "--json"}).out);
    REQUIRE(logs_json.size() == 2);
    CHECK(logs_json[1]["stream"] == "stderr");
    auto nobody = run({"logs", "--client", "nobody"});
    CHECK(nobody.exit_code == 1);
    CHECK(contains(nobody.err, "reading the logs failed: no client named 'nobody'"));

    TempDir dir;
    auto report = run({"report", "--session", "5e55", "-o", (dir / "r.svg").string()});
    CHECK(report.exit_code == 0);
    CHECK(contains(report.out,
                   "report of session 5e55104a (finished, 2 of 2 rounds committed, "
                   "2 metrics)"));
    check_well_formed_xml(dir / "r.svg");
    auto latest = run({"report", "-o", (dir / "latest.html").string()});
    CHECK(latest.exit_code == 0);
    check_well_formed_xml(dir / "latest.html");
    CHECK(contains(fedcli::test::read_file(dir / "latest.html"), "No validation metrics"));

    // A combiner without a method says so instead of a bare UNIMPLEMENTED.
    auto status = run({"session", "status"});
    CHECK(status.exit_code == 1);
    CHECK(contains(status.err, "it runs an older fedcli"));
}
