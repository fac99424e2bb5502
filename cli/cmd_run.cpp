// `fedcli run <entry point>`: runs one entry point of a project locally, exactly as a
// client does (core/dispatch), streaming its output and checking its contract.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/cmd_run.hpp"
#include "cli/commands.hpp"
#include "cli/text.hpp"
#include "core/dispatch/dispatch.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/error.hpp"
#include "core/project/project.hpp"
#include "core/util/limits.hpp"

namespace fedcli::cli {

namespace {

struct RunOptions {
    std::string entry_point;
    std::filesystem::path path = ".";
    std::string input;
    std::string output;
    EntryPointLimitOptions limits;
    std::string settings;
    std::string client_name;
    int client_index = -1;
    int num_clients = 0;
    int round = -1;
    std::string data_path;
    std::string python;
    std::string log;
    std::vector<std::string> extra_args;
    bool quiet = false;
};

/// --settings takes JSON text, or @FILE to read it from a file.
std::string settings_text(const std::string& value) {
    std::string text = value;
    if (!value.empty() && value[0] == '@') {
        std::ifstream in(value.substr(1));
        if (!in) throw Error(value.substr(1) + ": cannot read the settings file");
        std::ostringstream content;
        content << in.rdbuf();
        text = content.str();
    }
    nlohmann::json parsed;
    try {
        parsed = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& error) {
        throw Error("--settings: not valid JSON: " + std::string(error.what()));
    }
    if (!parsed.is_object()) throw Error("--settings: must be a JSON object, e.g. {\"epochs\": 2}");
    return parsed.dump();
}

std::string seconds(std::chrono::milliseconds duration) {
    std::ostringstream text;
    text << std::fixed << std::setprecision(1) << duration.count() / 1000.0 << " s";
    return text.str();
}

int run_entry(const RunOptions& options, const Streams& streams) {
    project::Project project = project::load(options.path);
    dispatch::RunRequest request;
    if (!options.input.empty()) request.input = options.input;
    if (!options.output.empty()) request.output = options.output;
    if (!options.settings.empty()) request.round_settings = settings_text(options.settings);
    if (!options.client_name.empty()) request.client_name = options.client_name;
    if (options.client_index >= 0) request.client_index = options.client_index;
    if (options.num_clients > 0) request.num_clients = options.num_clients;
    if (options.round >= 0) request.round = options.round;
    if (!options.data_path.empty()) request.data_path = options.data_path;
    if (!options.python.empty()) request.python = options.python;
    EntryPointLimits limits = entry_point_limits(options.limits);
    request.timeout = limits.timeout;
    request.limits = limits.limits;
    request.extra_args = options.extra_args;
    request.log_file = options.log.empty()
                           ? dispatch::default_log_file(project, options.entry_point)
                           : std::filesystem::path(options.log);
    std::ostream& out = streams.out;
    std::ostream& err = streams.err;
    if (!options.quiet) {
        request.on_line = [&out, &err](std::string_view line, dispatch::Stream stream) {
            if (stream == dispatch::Stream::out) {
                out << line << '\n' << std::flush;
            } else if (stream == dispatch::Stream::err) {
                err << line << '\n' << std::flush;
            } else {
                err << line << '\n' << std::flush;
            }
        };
    }
    dispatch::InterruptGuard interrupt;
    request.cancel_fd = interrupt.fd();

    auto result = dispatch::run_entry_point(project, options.entry_point, request);

    out << options.entry_point << ": ok in " << seconds(result.process.duration);
    if (result.output) out << " -> " << result.output->string();
    out << '\n';
    if (result.model_arrays) out << "  model      " << result.model_arrays << " arrays\n";
    if (result.num_examples) {
        out << "  examples   " << group_digits(*result.num_examples) << '\n'
            << "  metadata   " << result.output->string() << "-metadata\n";
    }
    if (!result.output_json.empty()) {
        auto document = nlohmann::json::parse(result.output_json);
        for (const auto& [key, value] : document.items()) {
            if (value.is_number() || value.is_boolean()) {
                out << "  " << key << std::string(key.size() < 20 ? 20 - key.size() : 1, ' ')
                    << value.dump() << '\n';
            }
        }
    }
    if (result.python_env) {
        out << "  python_env " << result.python_env->string()
            << (result.python_env_created ? " (created)" : "") << '\n';
    }
    if (result.log_file) out << "  log        " << result.log_file->string() << '\n';
    return 0;
}

Action setup_entry(CLI::App& command, const Streams& streams, const char* entry_point) {
    auto options = std::make_shared<RunOptions>();
    options->entry_point = entry_point;
    bool takes_input = dispatch::takes_input(entry_point);
    std::string name = entry_point;
    command.add_option("--path,-p", options->path, "Project folder")
        ->type_name("DIR")
        ->capture_default_str();
    if (takes_input) {
        command.add_option("--input,-i", options->input, "Model the entry point reads (.npz)")
            ->type_name("FILE")
            ->required();
    }
    if (name == "build") {
        command
            .add_option("--output,-o", options->output,
                        "Where the seed model goes (default: <project>/seed.npz)")
            ->type_name("FILE");
    } else if (takes_input) {
        command
            .add_option("--output,-o", options->output,
                        name == "train" ? "Updated model to write (.npz, plus FILE-metadata)"
                                        : "JSON file to write")
            ->type_name("FILE")
            ->required();
    }
    if (name == "train") {
        command
            .add_option("--settings", options->settings,
                        "Round settings for INPUT-metadata: JSON text or @FILE (default {})")
            ->type_name("JSON");
    }
    add_entry_point_limit_options(command, options->limits);
    command
        .add_option("--client-index", options->client_index,
                    "FEDCLI_CLIENT_INDEX: this client's 0-based index")
        ->type_name("N")
        ->check(CLI::NonNegativeNumber);
    command
        .add_option("--num-clients", options->num_clients,
                    "FEDCLI_NUM_CLIENTS: how many clients share the data")
        ->type_name("N")
        ->check(CLI::PositiveNumber);
    command.add_option("--client-name", options->client_name, "FEDCLI_CLIENT_NAME")
        ->type_name("NAME");
    command.add_option("--round", options->round, "FEDCLI_ROUND")
        ->type_name("N")
        ->check(CLI::NonNegativeNumber);
    command.add_option("--data-path", options->data_path, "FEDCLI_DATA_PATH (and FEDN_DATA_PATH)")
        ->type_name("PATH");
    command
        .add_option("--python", options->python,
                    "Interpreter for a bare python/python3 (default: $FEDCLI_PYTHON, else "
                    "the first python3 that has numpy)")
        ->type_name("PATH");
    command
        .add_option("--log", options->log,
                    "Log file (default: <project>/.fedcli/logs/" + name + ".log)")
        ->type_name("FILE");
    command
        .add_option("--arg", options->extra_args,
                    "Extra argument appended to the command (repeatable)")
        ->type_name("ARG");
    command.add_flag("--quiet,-q", options->quiet, "Do not stream the entry point's output");
    return [options, streams] { return run_entry(*options, streams); };
}

}  // namespace

void add_entry_point_limit_options(CLI::App& command, EntryPointLimitOptions& options) {
    const std::string group = "Limits";
    command
        .add_option("--timeout", options.timeout_seconds,
                    "Stop the entry point (and its children) after this many seconds")
        ->type_name("SECONDS")
        ->check(CLI::PositiveNumber)
        ->group(group);
    command
        .add_option("--max-memory", options.max_memory,
                    "Address space each of its processes may use (RLIMIT_AS), e.g. 2G, 512M")
        ->type_name("SIZE")
        ->group(group);
    command
        .add_option("--max-cpu-seconds", options.max_cpu_seconds,
                    "CPU time each of its processes may use (RLIMIT_CPU); SIGXCPU, then SIGKILL")
        ->type_name("N")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40))
        ->group(group);
    command
        .add_option("--max-open-files", options.max_open_files,
                    "Files each of its processes may have open (RLIMIT_NOFILE), at least 4")
        ->type_name("N")
        ->check(CLI::Range(std::uint64_t{4}, std::uint64_t{1} << 30))
        ->group(group);
}

EntryPointLimits entry_point_limits(const EntryPointLimitOptions& options) {
    EntryPointLimits limits;
    if (!(options.timeout_seconds <= 1e9)) {
        throw Error("--timeout: " + std::to_string(options.timeout_seconds) +
                    " s is not a usable timeout (at most 1e9 s)");
    }
    if (options.timeout_seconds > 0) {
        limits.timeout = std::chrono::milliseconds(
            static_cast<std::int64_t>(std::ceil(options.timeout_seconds * 1000)));
    }
    if (!options.max_memory.empty()) {
        limits.limits.memory_bytes = util::parse_byte_size(options.max_memory, "--max-memory");
    }
    if (options.max_cpu_seconds > 0) limits.limits.cpu_seconds = options.max_cpu_seconds;
    if (options.max_open_files > 0) limits.limits.open_files = options.max_open_files;
    limits.limits.check("");
    return limits;
}

void register_run_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"build", "Run `build`: make the seed model",
         [](CLI::App& c, const Streams& s) { return setup_entry(c, s, "build"); }},
        {"startup", "Run `startup`: prepare this client (e.g. its data partition)",
         [](CLI::App& c, const Streams& s) { return setup_entry(c, s, "startup"); }},
        {"train", "Run `train INPUT OUTPUT` and check the update and its metadata",
         [](CLI::App& c, const Streams& s) { return setup_entry(c, s, "train"); }},
        {"validate", "Run `validate INPUT OUTPUT` and check the metrics JSON",
         [](CLI::App& c, const Streams& s) { return setup_entry(c, s, "validate"); }},
        {"predict", "Run `predict INPUT OUTPUT` and check the JSON output",
         [](CLI::App& c, const Streams& s) { return setup_entry(c, s, "predict"); }},
    };
    add_group(app, "run", "Run one entry point of a project locally, exactly as a client does",
              k_commands, dispatch);
}

}  // namespace fedcli::cli
