#include "core/dispatch/dispatch.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/dispatch/command_line.hpp"
#include "core/dispatch/contract.hpp"
#include "core/dispatch/python_env.hpp"
#include "core/error.hpp"
#include "core/npz/npz.hpp"

namespace fedcli::dispatch {
namespace {

namespace fs = std::filesystem;

bool contains(std::span<const std::string_view> names, std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

std::string join_names(std::span<const std::string_view> names) {
    std::string text;
    for (auto name : names) text += (text.empty() ? "" : ", ") + std::string(name);
    return text;
}

fs::path absolute_normal(const fs::path& path) {
    return fs::absolute(path).lexically_normal();
}

bool same_file(const fs::path& a, const fs::path& b) {
    std::error_code error;
    if (fs::equivalent(a, b, error)) return true;
    return fs::weakly_canonical(a, error) == fs::weakly_canonical(b, error);
}

/// The log file plus the notes fedcli writes into it; a no-op without a file.
class Log {
  public:
    Log(const std::optional<fs::path>& file, const LineCallback& on_line) : m_on_line(on_line) {
        if (!file) return;
        std::error_code error;
        fs::create_directories(file->parent_path(), error);
        m_stream.open(*file, std::ios::trunc);
        if (!m_stream) {
            throw Error("cannot write the log file " + file->string() + ": " + strerror(errno));
        }
    }

    std::ostream* stream() { return m_stream.is_open() ? &m_stream : nullptr; }

    /// A line of fedcli's own: to the log, and to the live callback when `show`.
    void note(const std::string& text, bool show) {
        if (m_stream.is_open()) m_stream << "fedcli: " << text << '\n' << std::flush;
        if (show && m_on_line) m_on_line("fedcli: " + text, Stream::setup);
    }

  private:
    const LineCallback& m_on_line;
    std::ofstream m_stream;
};

void remove_stale(const fs::path& file) {
    std::error_code error;
    fs::remove(file, error);
    if (error) {
        throw Error("cannot remove the old " + file.string() +
                    " before the run: " + error.message());
    }
}

}  // namespace

bool takes_input(std::string_view entry_point) {
    return entry_point == "train" || entry_point == "validate" || entry_point == "predict";
}

fs::path default_log_file(const project::Project& project, std::string_view entry_point) {
    return project.directory / ".fedcli" / "logs" / (std::string(entry_point) + ".log");
}

RunResult run_entry_point(const project::Project& project, std::string_view entry_point,
                          const RunRequest& request) {
    const std::string name(entry_point);
    if (!contains(project::k_entry_point_names, name)) {
        if (contains(project::k_split_learning_entry_point_names, name)) {
            throw Error("entry point '" + name +
                        "' is a FEDn split-learning entry point, which fedcli does not run");
        }
        throw Error("unknown entry point '" + name + "' (fedcli runs " +
                    join_names(project::k_entry_point_names) + ")");
    }
    const project::EntryPoint* entry = project.find(name);
    if (!entry) {
        std::string present;
        for (const auto& candidate : project.entry_points) {
            present += (present.empty() ? "" : ", ") + candidate.name;
        }
        throw Error(project.file.string() + ": the project has no entry point '" + name +
                    "' (it has " + (present.empty() ? "none" : present) +
                    "); add it under entry_points: with a command");
    }
    const std::string where = project.file.string() +
                              (entry->line > 0 ? ":" + std::to_string(entry->line) : "") +
                              ": entry point '" + name + "'";
    std::vector<std::string> words = split_command(entry->command, where);
    request.limits.check(where);

    RunResult result;
    result.entry_point = name;

    // Files: which the entry point takes, made absolute (it runs in the project folder).
    if (name == "startup" && (request.input || request.output)) {
        throw Error(where + ": startup takes no input or output file");
    }
    if (name == "build") {
        if (request.input) throw Error(where + ": build takes no input file");
        result.output = absolute_normal(request.output.value_or(project.directory / "seed.npz"));
    }
    if (takes_input(name)) {
        if (!request.input || !request.output) {
            throw Error(where + ": " + name +
                        " needs an input file (the model it starts from) and an output file "
                        "(where it writes " +
                        (name == "train" ? "the updated model" : "its JSON result") + ")");
        }
        result.input = absolute_normal(*request.input);
        result.output = absolute_normal(*request.output);
        std::error_code error;
        if (!fs::is_regular_file(*result.input, error)) {
            throw Error(where + ": input model " + result.input->string() + " does not exist");
        }
        if (same_file(*result.input, *result.output)) {
            throw Error(where + ": the output " + result.output->string() +
                        " must differ from the input");
        }
        if (name == "train") {
            try {
                npz::Reader check(*result.input);
            } catch (const Error& failure) {
                throw Error(where + ": the input is not a valid model: " + failure.what());
            }
        }
    }
    if (result.output) {
        std::error_code error;
        fs::create_directories(result.output->parent_path(), error);
        if (error) {
            throw Error(where + ": cannot create the folder for " + result.output->string() + ": " +
                        error.message());
        }
        remove_stale(*result.output);
        if (name == "train") remove_stale(metadata_path(*result.output));
    }

    Log log(request.log_file, request.on_line);
    if (request.log_file) result.log_file = absolute_normal(*request.log_file);
    log.note("entry point '" + name + "' of " + project.file.string(), false);

    // Environment.
    Environment environment = Environment::inherited();
    environment.set("FEDCLI_PROJECT_DIR", project.directory.string());
    environment.set("FEDCLI_ENTRY_POINT", name);
    if (!environment.find("FEDCLI_EXECUTABLE")) {
        environment.set("FEDCLI_EXECUTABLE", self_executable().string());
    }
    environment.unset("FEDCLI_INPUT");
    environment.unset("FEDCLI_OUTPUT");
    if (result.input) environment.set("FEDCLI_INPUT", result.input->string());
    if (result.output) environment.set("FEDCLI_OUTPUT", result.output->string());
    if (request.client_name) environment.set("FEDCLI_CLIENT_NAME", *request.client_name);
    if (request.client_index) {
        environment.set("FEDCLI_CLIENT_INDEX", std::to_string(*request.client_index));
    }
    if (request.num_clients) {
        environment.set("FEDCLI_NUM_CLIENTS", std::to_string(*request.num_clients));
        environment.set("FEDN_NUM_DATA_SPLITS", std::to_string(*request.num_clients));
    }
    if (request.round) environment.set("FEDCLI_ROUND", std::to_string(*request.round));
    if (request.data_path) {
        std::string data_path = absolute_normal(*request.data_path).string();
        environment.set("FEDCLI_DATA_PATH", data_path);
        environment.set("FEDN_DATA_PATH", data_path);
    }
    if (request.seed) environment.set("FEDCLI_SEED", std::to_string(*request.seed));
    if (!environment.find("PYTHONUNBUFFERED")) environment.set("PYTHONUNBUFFERED", "1");

    // Python: the project's virtual environment, or the resolved interpreter.
    bool bare_python = words[0] == "python" || words[0] == "python3";
    if (project.python_env) {
        if (!project.environment) {
            // load() reads the file when it exists; check_for_client names the missing one.
            throw Error(project.python_env_location() + ": python_env: python_env file " +
                        project.python_env_file().string() + " does not exist");
        }
        const project::PythonEnv& env = *project.environment;
        VirtualEnvOptions options;
        options.base_python = resolve_python(request.python);
        options.cache_dir = request.cache_dir;
        options.on_line = request.on_line;
        options.log = log.stream();
        options.stop = request.stop;
        options.cancel_fd = request.cancel_fd;
        VirtualEnv venv = ensure_virtual_env(env, options);
        result.python_env = venv.directory;
        result.python_env_created = venv.created;
        result.python = venv.python;
        log.note("python environment " + venv.directory.string() +
                     (venv.created ? " (created)" : " (cached)"),
                 false);
        environment.set("VIRTUAL_ENV", venv.directory.string());
        const std::string* path = environment.find("PATH");
        environment.set("PATH",
                        (venv.directory / "bin").string() + (path ? ":" + *path : std::string()));
        environment.unset("PYTHONHOME");
    } else if (bare_python) {
        result.python = resolve_python(request.python);
    }
    if (!result.python.empty()) environment.set("FEDCLI_PYTHON", result.python.string());
    for (const auto& [variable, value] : request.environment) environment.set(variable, value);

    // argv: the command's words, the entry point's files, the caller's extra arguments.
    result.argv = std::move(words);
    if (bare_python) {
        result.argv[0] = result.python.string();
        result.executable = result.python;
    }
    if (name == "build") result.argv.push_back(result.output->string());
    if (takes_input(name)) {
        result.argv.push_back(result.input->string());
        result.argv.push_back(result.output->string());
    }
    result.argv.insert(result.argv.end(), request.extra_args.begin(), request.extra_args.end());

    if (name == "train") {
        try {
            write_round_settings(*result.input, request.round_settings);
        } catch (const Error& failure) {
            throw failure.with_context(where);
        }
    }

    ProcessSpec spec;
    spec.argv = result.argv;
    spec.executable = result.executable;
    spec.working_directory = project.directory;
    spec.environment = std::move(environment);
    spec.timeout = request.timeout;
    spec.limits = request.limits;
    spec.kill_grace = request.kill_grace;
    spec.on_line = request.on_line;
    spec.log = log.stream();
    spec.tail_lines = request.tail_lines;
    spec.stop = request.stop;
    spec.cancel_fd = request.cancel_fd;

    log.note("running in " + project.directory.string() + ": " + format_command(result.argv), true);
    auto started = fs::file_time_type::clock::now();
    try {
        result.process = run_process(spec);
    } catch (const Error& failure) {
        log.note("error: " + std::string(failure.what()), false);
        throw failure.with_context(where);
    }
    log.note(result.process.describe(), false);
    if (request.process_result) *request.process_result = result.process;

    std::string log_hint =
        result.log_file ? " (full output in " + result.log_file->string() + ")" : "";
    if (!result.process.succeeded()) {
        std::string message =
            where + ": '" + format_command(result.argv) + "' " + result.process.describe();
        if (request.limits.any() && !result.process.exceeded_limit && !result.process.cancelled &&
            !result.process.timed_out) {
            message += " (it ran with limits: " + request.limits.describe() + ")";
        }
        if (result.process.tail.empty()) {
            message += "; it printed nothing";
        } else {
            message += "; its last " + std::to_string(result.process.tail.size()) +
                       " lines of output" + log_hint + ":\n" + result.process.format_tail();
            while (!message.empty() && message.back() == '\n') message.pop_back();
            log_hint.clear();
        }
        throw Error(message + log_hint);
    }

    try {
        if (name == "build") {
            std::error_code error;
            fs::path fedn_seed = project.directory.parent_path() / "seed.npz";
            if (!fs::exists(*result.output, error) && fs::exists(fedn_seed, error) &&
                fs::last_write_time(fedn_seed, error) >= started) {
                throw Error("build did not write " + result.output->string() + " but wrote " +
                            fedn_seed.string() +
                            " (FEDn's examples write ../seed.npz); write the seed model to "
                            "the path given as the first argument (sys.argv[1], also in "
                            "FEDCLI_OUTPUT)");
            }
            result.model_arrays = check_model_file(*result.output, "build output");
        } else if (name == "train") {
            TrainOutput checked = check_train_output(*result.input, *result.output);
            result.num_examples = checked.num_examples;
            result.metadata_json = std::move(checked.metadata_json);
            result.model_arrays = checked.arrays;
        } else if (name == "validate" || name == "predict") {
            result.output_json = check_json_object_file(*result.output, name + " output");
        }
    } catch (const Error& failure) {
        log.note("error: " + std::string(failure.what()), false);
        throw Error(where + ": " + failure.what() + log_hint);
    }
    return result;
}

}  // namespace fedcli::dispatch
