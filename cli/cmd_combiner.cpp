// `fedcli combiner start`: runs the combiner (combiner/combiner.hpp) in the foreground until
// SIGINT or SIGTERM. Options come from flags, else from a combiner.yaml (--config), else
// the library's defaults. The event log goes to stdout, one flushed line per event.
#include <malloc.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/app.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "combiner/combiner.hpp"
#include "combiner/db.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/error.hpp"
#include "core/util/limits.hpp"
#include "core/util/suggest.hpp"

namespace fedcli::cli {

namespace {

constexpr std::array<std::string_view, 4> k_config_keys = {"host", "port", "data_dir",
                                                           "heartbeat_interval"};

/// What a combiner.yaml may set; unset fields keep the defaults (or the flags).
struct CombinerFile {
    std::optional<std::string> host;
    std::optional<int> port;
    std::optional<std::filesystem::path> data_dir;
    std::optional<double> heartbeat_interval;  ///< seconds
};

std::string at(const std::filesystem::path& file, const YAML::Mark& mark) {
    if (mark.is_null()) return file.string();
    return file.string() + ":" + std::to_string(mark.line + 1) + ":" +
           std::to_string(mark.column + 1);
}

double parse_seconds(const std::filesystem::path& file, const YAML::Node& value,
                     std::string_view key) {
    double seconds = 0;
    if (!value.IsScalar() || !YAML::convert<double>::decode(value, seconds) ||
        !std::isfinite(seconds) || seconds <= 0 || seconds > 3600) {
        throw Error(at(file, value.Mark()) + ": " + std::string(key) +
                    " must be a number of seconds in (0, 3600], found '" +
                    (value.IsScalar() ? value.Scalar() : std::string("a non-scalar")) + "'");
    }
    return seconds;
}

int parse_port(const std::string& where, const std::string& text) {
    std::size_t used = 0;
    int port = -1;
    try {
        port = std::stoi(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || port < 0 || port > 65535) {
        throw Error(where + ": port must be a whole number from 0 to 65535 (0: any free port), " +
                    "found '" + text + "'");
    }
    return port;
}

/// Reads combiner.yaml: a mapping of the keys in k_config_keys. Errors name file:line:column
/// and suggest the key that was probably meant.
CombinerFile load_combiner_file(const std::filesystem::path& file) {
    if (!std::filesystem::exists(file)) {
        throw Error(file.string() + ": no such file (--config)");
    }
    YAML::Node root;
    try {
        root = YAML::LoadFile(file.string());
    } catch (const YAML::Exception& error) {
        throw Error(at(file, error.mark) + ": " + error.msg);
    }
    CombinerFile config;
    if (root.IsNull()) return config;  // an empty file sets nothing
    if (!root.IsMap()) {
        throw Error(at(file, root.Mark()) + ": expected keys (" + "host, port, data_dir, " +
                    "heartbeat_interval), found " + (root.IsSequence() ? "a list" : "a value"));
    }
    std::vector<std::string> known(k_config_keys.begin(), k_config_keys.end());
    for (const auto& item : root) {
        const YAML::Node& key = item.first;
        const YAML::Node& value = item.second;
        const std::string name = key.IsScalar() ? key.Scalar() : std::string();
        if (name == "host") {
            if (!value.IsScalar() || value.Scalar().empty()) {
                throw Error(at(file, value.Mark()) + ": host must be a host name or address");
            }
            config.host = value.Scalar();
        } else if (name == "port") {
            config.port =
                parse_port(at(file, value.Mark()), value.IsScalar() ? value.Scalar() : "");
        } else if (name == "data_dir") {
            if (!value.IsScalar() || value.Scalar().empty()) {
                throw Error(at(file, value.Mark()) + ": data_dir must be a folder path");
            }
            // Relative to the file, so a config works from any working folder.
            std::filesystem::path dir = value.Scalar();
            config.data_dir =
                dir.is_absolute() ? dir : std::filesystem::absolute(file).parent_path() / dir;
        } else if (name == "heartbeat_interval") {
            config.heartbeat_interval = parse_seconds(file, value, name);
        } else {
            std::string message = "unknown key '" + name + "'";
            if (auto suggestion = util::closest_match(name, known)) {
                message += "; did you mean '" + *suggestion + "'?";
            }
            message += " (known: host, port, data_dir, heartbeat_interval)";
            throw Error(at(file, key.Mark()) + ": " + message);
        }
    }
    return config;
}

/// Writes the port to `file` through a temporary file renamed into place, so a script
/// polling for the file never reads a half-written number.
void write_port_file(const std::filesystem::path& file, int port) {
    std::filesystem::path temporary = file;
    temporary += ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(temporary, std::ios::trunc);
        out << port << '\n';
        out.close();
        if (!out) throw Error(temporary.string() + ": cannot write the port file (--port-file)");
    }
    std::error_code error;
    std::filesystem::rename(temporary, file, error);
    if (error) {
        std::filesystem::remove(temporary, error);
        throw Error(file.string() +
                    ": cannot write the port file (--port-file): " + error.message());
    }
}

struct StartOptions {
    std::string host = combiner::Options{}.host;
    int port = combiner::Options{}.port;
    std::filesystem::path data_dir = combiner::Options{}.data_dir;
    std::filesystem::path config;
    double heartbeat_interval = 2.0;
    std::filesystem::path port_file;
    bool insecure = false;
    std::filesystem::path tls_cert;
    std::filesystem::path tls_key;
    std::filesystem::path client_ca;
    std::string max_model_size;
    std::string max_package_size;
    std::size_t max_clients = combiner::Options{}.max_clients;
    std::size_t max_transfers_per_client = combiner::Options{}.max_transfers_per_client;
    double max_connects_per_second = combiner::Options{}.max_connects_per_second;
    // Which flags were given (they override the file).
    CLI::Option* host_flag = nullptr;
    CLI::Option* port_flag = nullptr;
    CLI::Option* data_dir_flag = nullptr;
    CLI::Option* heartbeat_flag = nullptr;
};

int combiner_start(const StartOptions& options, std::ostream& out) {
    // Before any thread exists (the combiner's and gRPC's inherit the blocked mask).
    // Every gRPC handler thread would otherwise get its own malloc arena and keep the
    // 1 MiB transfer buffers it freed: with many clients transferring at once that is tens
    // of MiB held for nothing. Two arenas serve two cores' worth of handlers.
    mallopt(M_ARENA_MAX, 2);
    dispatch::SignalWaiter signals;

    combiner::Options settings;
    if (!options.config.empty()) {
        CombinerFile file = load_combiner_file(options.config);
        if (file.host) settings.host = *file.host;
        if (file.port) settings.port = *file.port;
        if (file.data_dir) settings.data_dir = *file.data_dir;
        if (file.heartbeat_interval) {
            settings.heartbeat_interval = std::chrono::milliseconds(
                static_cast<std::int64_t>(std::llround(*file.heartbeat_interval * 1000)));
        }
    }
    if (options.host_flag->count()) settings.host = options.host;
    if (options.port_flag->count()) settings.port = options.port;
    if (options.data_dir_flag->count()) settings.data_dir = options.data_dir;
    if (options.heartbeat_flag->count()) {
        if (!std::isfinite(options.heartbeat_interval) || options.heartbeat_interval <= 0 ||
            options.heartbeat_interval > 3600) {
            throw UsageError("--heartbeat-interval must be in (0, 3600] seconds",
                             "fedcli combiner start");
        }
        settings.heartbeat_interval = std::chrono::milliseconds(
            static_cast<std::int64_t>(std::llround(options.heartbeat_interval * 1000)));
    }
    if (settings.heartbeat_interval.count() < 1) settings.heartbeat_interval = {};
    settings.insecure = options.insecure;
    if (options.tls_cert.empty() != options.tls_key.empty()) {
        throw UsageError("TLS needs both --tls-cert and --tls-key", "fedcli combiner start");
    }
    if (!options.client_ca.empty() && options.tls_cert.empty()) {
        throw UsageError("--client-ca needs TLS: give --tls-cert and --tls-key too",
                         "fedcli combiner start");
    }
    settings.tls_cert_file = options.tls_cert;
    settings.tls_key_file = options.tls_key;
    settings.client_ca_file = options.client_ca;
    if (!options.max_model_size.empty()) {
        settings.max_model_bytes =
            util::parse_byte_size(options.max_model_size, "--max-model-size");
    }
    if (!options.max_package_size.empty()) {
        settings.max_package_bytes =
            util::parse_byte_size(options.max_package_size, "--max-package-size");
    }
    if (options.max_clients < 1 || options.max_transfers_per_client < 1) {
        throw UsageError("--max-clients and --max-transfers-per-client must be at least 1",
                         "fedcli combiner start");
    }
    if (!std::isfinite(options.max_connects_per_second) || options.max_connects_per_second < 0) {
        throw UsageError("--max-connects-per-second must be 0 (unlimited) or positive",
                         "fedcli combiner start");
    }
    settings.max_clients = options.max_clients;
    settings.max_transfers_per_client = options.max_transfers_per_client;
    settings.max_connects_per_second = options.max_connects_per_second;
    out.setf(std::ios::unitbuf);  // every event line reaches a pipe or file at once
    settings.log = &out;

    combiner::Combiner server(settings);
    server.start();
    const int port = server.port();
    // The combiner's own first event line says where it listens.
    if (!options.port_file.empty()) {
        try {
            write_port_file(options.port_file, port);
        } catch (...) {
            server.shutdown();
            throw;
        }
    }
    signals.start([&server](int) { server.shutdown(); });
    server.wait();  // the combiner logs its own "combiner stopped" line
    return k_exit_success;
}

Action setup_start(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<StartOptions>();
    options->host_flag = command.add_option("--host", options->host, "Address to listen on")
                             ->type_name("HOST")
                             ->capture_default_str();
    options->port_flag =
        command.add_option("--port", options->port, "Port to listen on (0: any free port)")
            ->type_name("PORT")
            ->check(CLI::Range(0, 65535))
            ->capture_default_str();
    options->data_dir_flag =
        command
            .add_option("--data-dir", options->data_dir,
                        "Folder for models, packages and uploads in progress (created)")
            ->type_name("DIR")
            ->capture_default_str();
    command
        .add_option("--config", options->config,
                    "combiner.yaml with any of: host, port, data_dir, heartbeat_interval "
                    "(flags win)")
        ->type_name("FILE");
    options->heartbeat_flag =
        command
            .add_option("--heartbeat-interval", options->heartbeat_interval,
                        "Seconds between client heartbeats (offline after 3 missed)")
            ->type_name("SECONDS")
            ->capture_default_str();
    command
        .add_option("--port-file", options->port_file,
                    "Write the bound port to FILE once listening (atomically)")
        ->type_name("FILE");
    command.add_flag("--insecure", options->insecure,
                     "Serve without authentication: anyone who reaches the port is operator "
                     "and client (trusted networks and tests only)");
    command
        .add_option("--tls-cert", options->tls_cert,
                    "Serve TLS with this certificate (PEM; `fedcli certs create` makes one)")
        ->type_name("FILE");
    command.add_option("--tls-key", options->tls_key, "Private key (PEM) of --tls-cert")
        ->type_name("FILE");
    command
        .add_option("--client-ca", options->client_ca,
                    "Mutual TLS: require client certificates signed by this CA (PEM)")
        ->type_name("FILE");
    command
        .add_option("--max-model-size", options->max_model_size,
                    "Largest model (seed or update) an upload may be (default 4G)")
        ->type_name("SIZE")
        ->group("Limits");
    command
        .add_option("--max-package-size", options->max_package_size,
                    "Largest compute package an upload may be (default 512M)")
        ->type_name("SIZE")
        ->group("Limits");
    command.add_option("--max-clients", options->max_clients, "Clients online at once")
        ->capture_default_str()
        ->group("Limits");
    command
        .add_option("--max-transfers-per-client", options->max_transfers_per_client,
                    "Uploads and downloads one client token may have open at once")
        ->capture_default_str()
        ->group("Limits");
    command
        .add_option("--max-connects-per-second", options->max_connects_per_second,
                    "Connect attempts per second from one address, bursts of twice as many "
                    "(0: unlimited)")
        ->capture_default_str()
        ->group("Limits");
    command.footer(
        "Every call needs an access token unless --insecure is given. On the first start\n"
        "without an admin token the combiner makes one and writes it to\n"
        "<data dir>/admin.token (mode 0600); operator commands on this machine find it there\n"
        "when the data dir is the default one, else pass --token-file. Make tokens for\n"
        "clients with `fedcli token create --role client`. See docs/security.md.\n"
        "Example:\n"
        "  fedcli certs create --out certs --host combiner.example.org\n"
        "  fedcli combiner start --host 0.0.0.0 --tls-cert certs/server.pem "
        "--tls-key certs/server.key");
    std::ostream& out = streams.out;
    return [options, &out] { return combiner_start(*options, out); };
}

struct CheckOptions {
    std::filesystem::path data_dir;
    bool json = false;
};

int combiner_check(const CheckOptions& options, std::ostream& out) {
    if (!std::filesystem::is_directory(options.data_dir)) {
        throw Error(options.data_dir.string() + ": no such folder (--data-dir)");
    }
    const std::vector<std::string> problems = combiner::check_data_dir(options.data_dir);
    if (options.json) {
        nlohmann::ordered_json json = {{"data_dir", options.data_dir.string()},
                                       {"consistent", problems.empty()},
                                       {"problems", problems}};
        out << dump_json(json) << '\n';
        return problems.empty() ? k_exit_success : k_exit_failure;
    }
    if (!problems.empty()) throw Problems(problems);
    out << "data dir " << options.data_dir.string() << " is consistent\n";
    return k_exit_success;
}

Action setup_check(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<CheckOptions>();
    command.add_option("--data-dir", options->data_dir, "The combiner's data folder")
        ->type_name("DIR")
        ->required();
    command.add_flag("--json", options->json,
                     "Print one JSON object: data_dir, consistent, problems (exit code 1 "
                     "when there are problems)");
    command.footer(
        "Checks a combiner's data folder without changing it: the state database's\n"
        "integrity, that every model, update and package it names is stored with the right\n"
        "size and sha256, and that rounds and sessions agree. Prints each problem (exit code\n"
        "1) or that the folder is consistent. Meant for a combiner that is not running\n"
        "(after a crash, before a restart): a running one may be in the middle of a write.\n"
        "Example:\n  fedcli combiner check --data-dir combiner-data");
    std::ostream& out = streams.out;
    return [options, &out] { return combiner_check(*options, out); };
}

}  // namespace

void register_combiner_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"start",
         "Run a combiner in the foreground: clients, model store, sessions (Ctrl-C stops it)",
         setup_start},
        {"check", "Check a combiner's data folder for damage (after a crash, before a restart)",
         setup_check},
    };
    add_group(app, "combiner", "Run the aggregation server that clients connect to", k_commands,
              dispatch);
}

}  // namespace fedcli::cli
