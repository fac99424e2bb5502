// Tests for cli/: the command table, usage errors, the single error printer and the
// `model` and `project` commands, run in-process through fedcli::cli::run with captured
// output. Fixtures are written by numpy at test time in a private TempDir.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/app.hpp"
#include "cli/cmd_model.hpp"
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
