// Tests for core/project: loading fedcli.yaml / fedn.yaml / scaleout.yaml and the messages
// a project author sees when the file is wrong.
#include "core/project/project.hpp"

#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.hpp"
#include "tests/unit/support.hpp"

using Catch::Contains;
using Catch::EndsWith;
using Catch::StartsWith;
using fedcli::project::check_for_client;
using fedcli::project::find_project_file;
using fedcli::project::from_json;
using fedcli::project::load;
using fedcli::project::load_file;
using fedcli::project::parse;
using fedcli::project::parse_python_env;
using fedcli::project::Project;
using fedcli::project::PythonEnv;
using fedcli::project::to_json;
using fedcli::test::error_of;
using fedcli::test::TempDir;
using fedcli::test::write_file;
namespace fs = std::filesystem;

namespace {

/// Writes `text` as `file_name` in `dir` and returns the message load() throws.
std::string load_error(const TempDir& dir, const std::string& text,
                       const std::string& file_name = "fedcli.yaml") {
    write_file(dir / file_name, text);
    try {
        load(dir.path());
    } catch (const fedcli::Error& error) {
        return error.what();
    }
    FAIL("expected load() to throw for:\n" << text);
    return "";
}

/// "<dir>/<file>:<line>:<column>: " — the prefix every positioned message starts with.
std::string at(const TempDir& dir, int line, int column,
               const std::string& file_name = "fedcli.yaml") {
    return (dir / file_name).string() + ":" + std::to_string(line) + ":" + std::to_string(column) +
           ": ";
}

const char* const k_minimal = "entry_points:\n  train:\n    command: python3 train.py\n";

}  // namespace

TEST_CASE("a complete fedcli.yaml loads with every field", "[project]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml",
               "# comment\n"
               "name: mnist\n"
               "python_env: env/python_env.yaml\n"
               "entry_points:\n"
               "  build:\n"
               "    command: python3 model.py\n"
               "  startup: {command: python3 data.py}\n"
               "  train:\n"
               "    command: \"python3 train.py --epochs 2\"\n"
               "  validate:\n"
               "    command: python3 validate.py\n"
               "  predict:\n"
               "    command: python3 predict.py\n");
    Project project = load(dir.path());

    CHECK(project.name == "mnist");
    CHECK(project.directory == fs::absolute(dir.path()).lexically_normal());
    CHECK(project.file == project.directory / "fedcli.yaml");
    CHECK(project.file.is_absolute());
    REQUIRE(project.python_env.has_value());
    CHECK(*project.python_env == fs::path("env/python_env.yaml"));
    CHECK(project.python_env_line == 3);

    REQUIRE(project.entry_points.size() == 5);
    const char* names[] = {"build", "startup", "train", "validate", "predict"};
    for (std::size_t i = 0; i < 5; ++i) CHECK(project.entry_points[i].name == names[i]);
    CHECK(project.entry_points[0].command == "python3 model.py");
    CHECK(project.entry_points[0].line == 5);
    CHECK(project.entry_points[1].command == "python3 data.py");
    CHECK(project.entry_points[1].line == 7);
    CHECK(project.entry_points[2].command == "python3 train.py --epochs 2");
    CHECK(project.entry_points[2].line == 8);

    REQUIRE(project.find("validate") != nullptr);
    CHECK(project.find("validate")->command == "python3 validate.py");
    CHECK(project.find("forward") == nullptr);
    CHECK(project.find("Train") == nullptr);
}

TEST_CASE("the project name defaults to the folder name", "[project]") {
    TempDir dir;
    fs::create_directory(dir / "my-project");
    write_file(dir / "my-project" / "fedcli.yaml", k_minimal);
    Project project = load(dir / "my-project");
    CHECK(project.name == "my-project");
    CHECK_FALSE(project.python_env.has_value());
    CHECK(project.python_env_line == 0);

    // A trailing slash or "." in the path does not change the name.
    CHECK(load((dir / "my-project").string() + "/").name == "my-project");
    CHECK(load(dir / "my-project" / "." / ".." / "my-project").name == "my-project");
}

TEST_CASE("FEDn's mnist-pytorch fedn.yaml loads unchanged", "[project][fedn]") {
    TempDir dir;
    // As in FEDn's examples/mnist-pytorch/client, including its 4-space indentation.
    write_file(dir / "fedn.yaml",
               "python_env: python_env.yaml\n"
               "\n"
               "entry_points:\n"
               "    build:\n"
               "        command: python model.py\n"
               "    startup:\n"
               "        command: python data.py\n"
               "    train:\n"
               "        command: python train.py\n"
               "    validate:\n"
               "        command: python validate.py\n"
               "    predict:\n"
               "        command: python predict.py\n");
    write_file(dir / "python_env.yaml",
               "name: mnist-pytorch\nbuild_dependencies:\n  - pip\ndependencies:\n  - torch\n");

    CHECK(find_project_file(dir.path()) == dir / "fedn.yaml");
    Project project = load(dir.path());
    CHECK(project.file.filename() == "fedn.yaml");
    CHECK(project.name == dir.path().filename().string());
    REQUIRE(project.python_env.has_value());
    CHECK(*project.python_env == fs::path("python_env.yaml"));
    REQUIRE(project.entry_points.size() == 5);
    CHECK(project.find("build")->command == "python model.py");
    CHECK(project.find("startup")->command == "python data.py");
    CHECK(project.find("train")->command == "python train.py");
    CHECK(project.find("validate")->command == "python validate.py");
    CHECK(project.find("predict")->command == "python predict.py");
    CHECK(project.find("train")->line == 8);
    CHECK(check_for_client(project).empty());
}

TEST_CASE("FEDn split-learning entry points are accepted", "[project][fedn]") {
    TempDir dir;
    write_file(dir / "fedn.yaml",
               "entry_points:\n"
               "  forward:\n    command: python forward.py\n"
               "  backward:\n    command: python backward.py\n"
               "  train:\n    command: python train.py\n");
    Project project = load(dir.path());
    REQUIRE(project.entry_points.size() == 3);
    CHECK(project.find("forward")->command == "python forward.py");
    CHECK(project.find("backward")->command == "python backward.py");
}

TEST_CASE("scaleout.yaml is found and loaded", "[project]") {
    TempDir dir;
    write_file(dir / "scaleout.yaml", k_minimal);
    CHECK(find_project_file(dir.path()) == dir / "scaleout.yaml");
    Project project = load(dir.path());
    CHECK(project.file.filename() == "scaleout.yaml");
    CHECK(project.find("train")->command == "python3 train.py");
}

TEST_CASE("fedcli.yaml wins over fedn.yaml, which wins over scaleout.yaml", "[project]") {
    TempDir dir;
    write_file(dir / "scaleout.yaml", "name: from-scaleout\n");
    write_file(dir / "fedn.yaml", "name: from-fedn\n");
    CHECK(find_project_file(dir.path()) == dir / "fedn.yaml");
    CHECK(load(dir.path()).name == "from-fedn");

    write_file(dir / "fedcli.yaml", "name: from-fedcli\n");
    CHECK(find_project_file(dir.path()) == dir / "fedcli.yaml");
    CHECK(load(dir.path()).name == "from-fedcli");
}

TEST_CASE("a missing folder or project file is reported with what was tried", "[project]") {
    TempDir dir;
    auto missing = dir / "nope";
    REQUIRE_THROWS_WITH(find_project_file(missing),
                        "project folder '" + missing.string() + "' does not exist");
    REQUIRE_THROWS_AS(load(missing), fedcli::Error);

    REQUIRE_THROWS_WITH(find_project_file(dir.path()),
                        Contains("no project file in '" + dir.path().string() + "'") &&
                            Contains("looked for fedcli.yaml, fedn.yaml, scaleout.yaml"));

    // A file instead of a folder.
    write_file(dir / "fedcli.yaml", k_minimal);
    REQUIRE_THROWS_WITH(find_project_file(dir / "fedcli.yaml"), Contains("is not a folder"));

    // load_file on a file that is not there.
    REQUIRE_THROWS_WITH(load_file(dir / "absent.yaml"),
                        Contains("cannot read project file '" + (dir / "absent.yaml").string()));
}

TEST_CASE(".yml spellings are not read but the error says to rename them", "[project]") {
    TempDir dir;
    write_file(dir / "fedn.yml", k_minimal);
    REQUIRE_THROWS_WITH(find_project_file(dir.path()),
                        Contains("found 'fedn.yml': rename it to 'fedn.yaml'"));
}

TEST_CASE("unknown top-level keys name line, column and a suggestion", "[project]") {
    TempDir dir;
    SECTION("close to a known key") {
        auto message = load_error(dir, "name: x\nentry_point:\n  train:\n    command: t\n");
        CHECK(message == at(dir, 2, 1) +
                             "unknown key 'entry_point'; did you mean 'entry_points'? "
                             "(known: name, python_env, entry_points)");
    }
    SECTION("a transposition and a truncation") {
        CHECK_THAT(load_error(dir, "pyhton_env: env.yaml\n"),
                   StartsWith(at(dir, 1, 1)) && Contains("did you mean 'python_env'?"));
        CHECK_THAT(load_error(dir, "name: a\n  # indented comment\npython: env.yaml\n"),
                   StartsWith(at(dir, 3, 1)) && Contains("did you mean 'python_env'?"));
        CHECK_THAT(load_error(dir, "Name: a\n"), Contains("did you mean 'name'?"));
    }
    SECTION("nothing close") {
        auto message = load_error(dir, "name: x\nversion: 3\n");
        CHECK(message ==
              at(dir, 2, 1) + "unknown key 'version' (known: name, python_env, entry_points)");
    }
    SECTION("an entry point at the top level") {
        CHECK_THAT(load_error(dir, "train:\n  command: x\n"),
                   StartsWith(at(dir, 1, 1)) && Contains("entry points go under 'entry_points:'"));
    }
}

TEST_CASE("unknown entry points and keys inside entry points are errors", "[project]") {
    TempDir dir;
    SECTION("misspelt entry point") {
        auto message = load_error(dir,
                                  "entry_points:\n"
                                  "  train:\n"
                                  "    command: python train.py\n"
                                  "  valdiate:\n"
                                  "    command: python validate.py\n",
                                  "fedn.yaml");
        CHECK(message == at(dir, 4, 3, "fedn.yaml") +
                             "unknown entry point 'valdiate'; did you mean 'validate'? "
                             "(known: build, startup, train, validate, predict)");
    }
    SECTION("misspelt split-learning entry point") {
        CHECK_THAT(load_error(dir, "entry_points:\n  forwrd: {command: x}\n"),
                   StartsWith(at(dir, 2, 3)) && Contains("did you mean 'forward'?"));
    }
    SECTION("an entry point with no near match") {
        CHECK(load_error(dir, "entry_points:\n  test:\n    command: x\n") ==
              at(dir, 2, 3) +
                  "unknown entry point 'test' (known: build, startup, train, validate, "
                  "predict)");
    }
    SECTION("a key inside an entry point") {
        auto message = load_error(dir,
                                  "entry_points:\n"
                                  "  train:\n"
                                  "    command: python train.py\n"
                                  "    comand: python other.py\n");
        CHECK(message == at(dir, 4, 5) +
                             "unknown key 'comand' in entry point 'train'; did you mean "
                             "'command'? (known: command)");
    }
    SECTION("another key, no near match") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train: {command: x, env: y}\n"),
                   StartsWith(at(dir, 2, 23)) &&
                       Contains("unknown key 'env' in entry point 'train' (known: command)"));
    }
    SECTION("command one level too high") {
        CHECK_THAT(
            load_error(dir, "entry_points:\n  command: python train.py\n"),
            StartsWith(at(dir, 2, 3)) && Contains("'command' must be inside an entry point"));
    }
}

TEST_CASE("commands must be present, non-empty text", "[project]") {
    TempDir dir;
    SECTION("missing") {
        CHECK(load_error(dir, "entry_points:\n  train:\n    {}\n") ==
              at(dir, 3, 5) +
                  "entry point 'train' has no 'command'; add 'command: <program and "
                  "arguments>' under it");
    }
    SECTION("empty value") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train:\n    command:\n"),
                   StartsWith(at(dir, 3, 5)) &&
                       Contains("'command' of entry point 'train' is empty") &&
                       Contains("e.g. 'command: python3 train.py'"));
    }
    SECTION("empty quoted text") {
        CHECK_THAT(
            load_error(dir, "entry_points:\n  train:\n    command: \"  \"\n"),
            StartsWith(at(dir, 3, 14)) && Contains("'command' of entry point 'train' is empty"));
    }
    SECTION("null") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train: {command: ~}\n"),
                   StartsWith(at(dir, 2, 11)) && Contains("is empty"));
    }
    SECTION("a map") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train:\n    command:\n      run: x\n"),
                   StartsWith(at(dir, 4, 7)) &&
                       Contains("'command' of entry point 'train' must be text, found a map"));
    }
    SECTION("a list") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train:\n    command: [python, t.py]\n"),
                   StartsWith(at(dir, 3, 14)) && Contains("must be text, found a list"));
    }
    SECTION("the entry point is text instead of a map") {
        CHECK(load_error(dir, "entry_points:\n  train: python train.py\n") ==
              at(dir, 2, 10) +
                  "entry point 'train' must be a map with a 'command' key, found the text "
                  "'python train.py'; write it as 'train: {command: python train.py}'");
    }
    SECTION("the entry point is empty") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train:\n  validate: {command: v}\n"),
                   StartsWith(at(dir, 2, 3)) && Contains("entry point 'train' is empty"));
    }
}

TEST_CASE("other values of the wrong kind", "[project]") {
    TempDir dir;
    SECTION("entry_points is a list") {
        CHECK_THAT(load_error(dir, "entry_points:\n  - train\n  - validate\n"),
                   StartsWith(at(dir, 2, 3)) && Contains("'entry_points' must be a map") &&
                       Contains("found a list"));
    }
    SECTION("entry_points is text") {
        CHECK_THAT(load_error(dir, "entry_points: train.py\n"),
                   StartsWith(at(dir, 1, 15)) && Contains("found the text 'train.py'"));
    }
    SECTION("entry_points is empty") {
        CHECK_THAT(load_error(dir, "name: x\nentry_points:\n"),
                   StartsWith(at(dir, 2, 1)) && Contains("'entry_points' is empty"));
    }
    SECTION("name is a map") {
        CHECK_THAT(load_error(dir, "name: {a: b}\n"),
                   StartsWith(at(dir, 1, 7)) && Contains("'name' must be text, found a map"));
    }
    SECTION("python_env is empty") {
        CHECK_THAT(load_error(dir, "python_env:\n"),
                   StartsWith(at(dir, 1, 1)) && Contains("'python_env' is empty"));
    }
    SECTION("a key that is not a name") {
        CHECK_THAT(load_error(dir, "[a, b]: c\n"),
                   StartsWith(at(dir, 1, 1)) && Contains("keys must be names, found a list"));
    }
}

TEST_CASE("empty files and files that are not a map", "[project]") {
    TempDir dir;
    SECTION("empty") {
        CHECK(load_error(dir, "") == (dir / "fedcli.yaml").string() +
                                         ": the project file is empty; it needs at least "
                                         "'entry_points:' with 'train: {command: ...}' under it");
    }
    SECTION("only comments and blank lines") {
        CHECK_THAT(load_error(dir, "# nothing yet\n\n   \n"),
                   Contains("the project file is empty"));
    }
    SECTION("a list") {
        CHECK(load_error(dir, "- train\n- validate\n") ==
              at(dir, 1, 1) +
                  "a project file must be a map with the keys name, python_env, "
                  "entry_points, found a list");
    }
    SECTION("plain text") {
        CHECK_THAT(load_error(dir, "hello\n"),
                   StartsWith(at(dir, 1, 1)) && Contains("found the text 'hello'"));
        // Long or multi-line text is cut so that the message stays one line.
        CHECK_THAT(load_error(dir, "|\n  line one\n  line two\n"),
                   EndsWith("found the text 'line one...'"));
        CHECK_THAT(load_error(dir, std::string(300, 'x') + "\n"),
                   EndsWith("found the text '" + std::string(100, 'x') + "...'"));
    }
    SECTION("two YAML documents") {
        CHECK_THAT(load_error(dir, std::string(k_minimal) + "---\nname: other\n"),
                   StartsWith(at(dir, 5, 1)) && Contains("a project file holds one document"));
    }
}

TEST_CASE("malformed YAML is reported with file, line and column", "[project]") {
    TempDir dir;
    SECTION("bad indentation") {
        auto message = load_error(dir,
                                  "entry_points:\n"
                                  "  train:\n"
                                  "    command: python train.py\n"
                                  " validate:\n"
                                  "    command: python validate.py\n");
        CHECK_THAT(message, StartsWith(at(dir, 4, 2) + "invalid YAML: ") &&
                                Contains("check the indentation"));
    }
    SECTION("a value with an unquoted ': '") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train:\n    command: python t.py --a: 1\n"),
                   StartsWith(at(dir, 3, 29) + "invalid YAML: illegal map value") &&
                       Contains("quote values that contain ': '"));
    }
    SECTION("unterminated double quote, file ending in a newline") {
        // yaml-cpp 0.7 alone would read the rest of the file into the command.
        auto message = load_error(dir,
                                  "entry_points:\n"
                                  "  train:\n"
                                  "    command: \"python train.py\n"
                                  "  validate:\n"
                                  "    command: python validate.py\n");
        CHECK(message == at(dir, 3, 14) +
                             "quoted text is never closed: add the closing \" (everything "
                             "after it to the end of the file was read as text)");
    }
    SECTION("unterminated single quote in a name") {
        CHECK_THAT(load_error(dir, "name: 'it''s\nentry_points: {train: {command: x}}\n"),
                   StartsWith(at(dir, 1, 7)) && Contains("add the closing '"));
    }
    SECTION("unterminated quote at the very end of the file") {
        CHECK_THAT(load_error(dir, "name: \"abc"), StartsWith(at(dir, 1, 11) + "invalid YAML: ") &&
                                                       Contains("a quoted text is not closed"));
    }
    SECTION("unclosed flow map") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train: {command: x\n"),
                   StartsWith((dir / "fedcli.yaml").string() + ":") &&
                       Contains("invalid YAML: end of map flow not found") &&
                       Contains("'{' is not closed"));
    }
    SECTION("tabs for indentation") {
        CHECK_THAT(
            load_error(dir, "entry_points:\n\ttrain:\n\t\tcommand: x\n"),
            StartsWith(at(dir, 2, 7) + "invalid YAML: ") && Contains("tabs for indentation"));
    }
    SECTION("a stray comma where a document starts") {
        // yaml-cpp 0.7's LoadAll() never returns on this input.
        CHECK(load_error(dir, ",\n") == at(dir, 1, 1) + "invalid YAML: unexpected ','");
        CHECK_THAT(load_error(dir, ",name: x\nentry_points: {train: {command: t}}\n"),
                   StartsWith(at(dir, 1, 1) + "invalid YAML: unexpected ','"));
        CHECK_THAT(load_error(dir, "name: x\n---\n,\n"),
                   StartsWith(at(dir, 3, 1) + "invalid YAML: unexpected ','"));
    }
    SECTION("nesting deeper than yaml-cpp allows") {
        CHECK_THAT(load_error(dir, "name: " + std::string(5000, '[') + "\n"),
                   StartsWith((dir / "fedcli.yaml").string() + ":") &&
                       Contains("invalid YAML: values are nested too deeply"));
    }
    SECTION("an undefined alias") {
        CHECK_THAT(load_error(dir, "name: *nothing\n"),
                   StartsWith(at(dir, 1, 7) + "invalid YAML: "));
    }
}

TEST_CASE("correctly closed quotes are not mistaken for unterminated ones", "[project]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml",
               "\xEF\xBB\xBF"  // a UTF-8 byte order mark shifts nothing
               "name: 'it''s \"quoted\"'\r\n"
               "entry_points:\r\n"
               "  train:\r\n"
               "    command: \"python3 -c \\\"print('x')\\\"\"\r\n"
               "  validate: {command: 'python3 v.py'}\r\n");
    Project project = load(dir.path());
    CHECK(project.name == "it's \"quoted\"");
    CHECK(project.find("train")->command == "python3 -c \"print('x')\"");
    CHECK(project.find("validate")->command == "python3 v.py");
}

TEST_CASE("duplicate keys are reported at the second occurrence", "[project]") {
    TempDir dir;
    SECTION("top level") {
        CHECK(load_error(dir, "name: a\nentry_points: {train: {command: x}}\nname: b\n") ==
              at(dir, 3, 1) + "duplicate key 'name' (first at line 1); remove one of them");
    }
    SECTION("entry point") {
        CHECK(load_error(dir,
                         "entry_points:\n"
                         "  train:\n"
                         "    command: one\n"
                         "  validate:\n"
                         "    command: v\n"
                         "  train:\n"
                         "    command: two\n") ==
              at(dir, 6, 3) + "duplicate key 'train' (first at line 2); remove one of them");
    }
    SECTION("command") {
        CHECK_THAT(load_error(dir, "entry_points:\n  train:\n    command: a\n    command: b\n"),
                   StartsWith(at(dir, 4, 5)) && Contains("duplicate key 'command'"));
    }
}

TEST_CASE("parse names the file as given and makes paths absolute", "[project]") {
    Project project = parse(k_minimal, "some/where/fedn.yaml");
    CHECK(project.file.is_absolute());
    CHECK(project.file == (fs::current_path() / "some/where/fedn.yaml").lexically_normal());
    CHECK(project.directory == project.file.parent_path());
    CHECK(project.name == "where");

    REQUIRE_THROWS_WITH(parse("name: x\nnmae: y\n", "rel/fedcli.yaml"),
                        StartsWith("rel/fedcli.yaml:2:1: unknown key 'nmae'; did you mean "
                                   "'name'?"));
    REQUIRE_THROWS_AS(parse("", "x.yaml"), fedcli::Error);
}

TEST_CASE("check_for_client reports a missing train entry point", "[project]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml", "entry_points:\n  validate:\n    command: python v.py\n");
    Project project = load(dir.path());
    auto problems = check_for_client(project);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0] == project.file.string() +
                             ": no 'train' entry point; a client needs one: add entry_points: "
                             "train: command: ...");

    // A file without entry_points at all loads, but cannot serve a client.
    write_file(dir / "fedcli.yaml", "name: only-a-name\n");
    CHECK_THAT(check_for_client(load(dir.path())).at(0), Contains("no 'train' entry point"));
}

TEST_CASE("check_for_client reports a missing python_env file", "[project]") {
    TempDir dir;
    write_file(dir / "fedn.yaml",
               std::string("name: p\npython_env: envs/python_env.yaml\n") + k_minimal);
    Project project = load(dir.path());
    auto problems = check_for_client(project);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0] == project.file.string() +
                             ":2: python_env 'envs/python_env.yaml' does not exist (looked for " +
                             (project.directory / "envs/python_env.yaml").string() +
                             "); create it or remove the python_env line");

    fs::create_directories(dir / "envs" / "python_env.yaml");
    problems = check_for_client(project);
    REQUIRE(problems.size() == 1);
    CHECK_THAT(problems[0], Contains("is a folder"));

    fs::remove(dir / "envs" / "python_env.yaml");
    write_file(dir / "envs" / "python_env.yaml", "name: p\n");
    CHECK(check_for_client(project).empty());
}

TEST_CASE("check_for_client lists every problem at once", "[project]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml",
               "python_env: missing.yaml\nentry_points:\n  build: {command: b}\n");
    auto problems = check_for_client(load(dir.path()));
    REQUIRE(problems.size() == 2);
    CHECK_THAT(problems[0], Contains("no 'train' entry point"));
    CHECK_THAT(problems[1], Contains(":1: python_env 'missing.yaml' does not exist"));
}

// ---------------------------------------------------------------------------------------
// python_env.yaml

TEST_CASE("python_env.yaml is parsed strictly", "[project][python_env]") {
    PythonEnv env = parse_python_env(
        "name: mnist-env\npython: \"3.11\"\nbuild_dependencies:\n  - pip\n"
        "dependencies:\n  - numpy\n  - torch>=2\n",
        "python_env.yaml");
    CHECK(env.name == "mnist-env");
    CHECK(env.python == "3.11");
    CHECK(env.build_dependencies == std::vector<std::string>{"pip"});
    CHECK(env.dependencies == std::vector<std::string>{"numpy", "torch>=2"});

    CHECK(parse_python_env("", "e.yaml").dependencies.empty());
    CHECK(parse_python_env("dependencies:\n", "e.yaml").dependencies.empty());
    CHECK_THAT(error_of([] { parse_python_env("name: x\ndepends: [numpy]\n", "e.yaml"); }),
               Contains("e.yaml:2:1: unknown key 'depends'"));
    CHECK_THAT(error_of([] { parse_python_env("dependencies: numpy\n", "e.yaml"); }),
               Contains("e.yaml:1:15") && Contains("must be a list"));
    CHECK_THAT(error_of([] { parse_python_env("dependencies:\n  - {a: b}\n", "e.yaml"); }),
               Contains("e.yaml:2:5") && Contains("pip requirement"));
    CHECK_THAT(error_of([] { parse_python_env("- numpy\n", "e.yaml"); }), Contains("map"));
    CHECK_THAT(error_of([] { parse_python_env("name: [unclosed\n", "e.yaml"); }),
               Contains("e.yaml:"));
}

TEST_CASE("load reads the python_env file with the project", "[project][python_env]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml", std::string("name: p\npython_env: env.yaml\n") + k_minimal);
    write_file(dir / "env.yaml", "name: e\ndependencies: [numpy]\n");
    Project project = load(dir.path());
    REQUIRE(project.environment.has_value());
    CHECK(project.environment->name == "e");
    CHECK(project.environment->dependencies == std::vector<std::string>{"numpy"});
    CHECK(project.environment->text == "name: e\ndependencies: [numpy]\n");
    CHECK(project.environment->file == dir / "env.yaml");

    // parse() reads no other file; without python_env there is nothing to read.
    CHECK_FALSE(parse("python_env: env.yaml\n" + std::string(k_minimal), dir / "fedcli.yaml")
                    .environment.has_value());
    write_file(dir / "fedcli.yaml", k_minimal);
    CHECK_FALSE(load(dir.path()).environment.has_value());
}

TEST_CASE("a python_env file that does not parse fails the load, naming both files",
          "[project][python_env]") {
    TempDir dir;
    write_file(dir / "env.yaml", "name: e\ndepends: [numpy]\n");
    CHECK_THAT(load_error(dir, std::string("name: p\npython_env: env.yaml\n") + k_minimal),
               StartsWith((dir / "fedcli.yaml").string() + ":2: python_env: " +
                          (dir / "env.yaml").string() + ":2:1: unknown key 'depends'"));
}

TEST_CASE("a missing python_env file still loads, and check_for_client names it",
          "[project][python_env]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml", std::string("python_env: gone.yaml\n") + k_minimal);
    Project project = load(dir.path());
    CHECK(project.python_env == fs::path("gone.yaml"));
    CHECK_FALSE(project.environment.has_value());
    REQUIRE(check_for_client(project).size() == 1);
}

// ---------------------------------------------------------------------------------------
// JSON form

TEST_CASE("to_json and from_json carry every field", "[project][json]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml",
               "name: demo\n"
               "python_env: envs/py.yaml\n"
               "entry_points:\n"
               "  train: {command: python3 train.py --epochs 2}\n"
               "  validate: {command: \"python3 'my validate.py'\"}\n");
    fs::create_directories(dir / "envs");
    write_file(dir / "envs" / "py.yaml", "name: e\nbuild_dependencies: [pip]\ndependencies: []\n");
    const Project original = load(dir.path());
    const Project copy = from_json(to_json(original).dump(), "test");
    CHECK(copy.file == original.file);
    CHECK(copy.directory == original.directory);
    CHECK(copy.name == "demo");
    CHECK(copy.python_env == original.python_env);
    CHECK(copy.python_env_line == 2);
    REQUIRE(copy.environment.has_value());
    CHECK(copy.environment->file == original.environment->file);
    CHECK(copy.environment->build_dependencies == std::vector<std::string>{"pip"});
    CHECK(copy.environment->dependencies.empty());
    CHECK(copy.environment->text == original.environment->text);
    REQUIRE(copy.entry_points.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        CHECK(copy.entry_points[i].name == original.entry_points[i].name);
        CHECK(copy.entry_points[i].command == original.entry_points[i].command);
        CHECK(copy.entry_points[i].line == original.entry_points[i].line);
    }

    write_file(dir / "fedcli.yaml", k_minimal);
    const Project plain = from_json(to_json(load(dir.path())).dump(), "test");
    CHECK_FALSE(plain.python_env.has_value());
    CHECK_FALSE(plain.environment.has_value());
    CHECK(plain.find("train") != nullptr);
}

TEST_CASE("from_json names the field that is missing or wrong", "[project][json]") {
    TempDir dir;
    write_file(dir / "fedcli.yaml", k_minimal);
    const nlohmann::ordered_json good = to_json(load(dir.path()));
    auto error_for = [](const std::string& text) {
        return error_of([&] { from_json(text, "the child's output"); });
    };
    CHECK(error_for("") == "the child's output: not a JSON document");
    CHECK(error_for("{\"file\": ") == "the child's output: not a JSON document");
    CHECK(error_for("[1, 2]") == "the child's output: project: expected an object");

    auto without = good;
    without.erase("entry_points");
    CHECK(error_for(without.dump()) == "the child's output: project.entry_points: missing");
    auto wrong = good;
    wrong["entry_points"][0]["command"] = 7;
    CHECK(error_for(wrong.dump()) ==
          "the child's output: project.entry_points[].command: expected a string");
    wrong = good;
    wrong["environment"] = {{"file", "x"}};
    CHECK(error_for(wrong.dump()) == "the child's output: project.environment.name: missing");
    wrong = good;
    wrong["file"] = "relative/fedcli.yaml";
    CHECK_THAT(error_for(wrong.dump()), Contains("project.file: expected absolute paths"));
}
