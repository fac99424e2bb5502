// `fedcli client start`: runs the client daemon (client/client.hpp) in the foreground until
// SIGINT or SIGTERM. It reconnects to the combiner forever; only problems no retry can fix
// (a bad project folder, an unusable work folder) end it with an error.
//
// The command checks its options here, then replaces its process with the lean daemon
// executable `fedcli-client` (client/main.cpp) when one sits next to fedcli, so the process
// that runs for days maps only what the daemon needs; otherwise it runs the same daemon in
// this process.
#include <sys/mman.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <climits>
#include <iostream>
#include <memory>

#include "cli/app.hpp"
#include "cli/cmd_run.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "client/client.hpp"
#include "core/dispatch/process.hpp"
#include "core/error.hpp"
#include "core/package/signature.hpp"
#include "core/proto/rpc.hpp"
#include "core/util/ids.hpp"

namespace fedcli::cli {

namespace {

struct StartOptions {
    std::string combiner = k_default_combiner;
    std::string name;
    std::filesystem::path path;
    bool package_from_combiner = false;
    std::filesystem::path work_dir;
    std::string python;
    std::filesystem::path data_path;
    std::vector<std::string> environment;
    bool verbose = false;
    AccessOptions access;
    EntryPointLimitOptions limits;
    std::vector<std::string> package_pins;
    std::vector<std::filesystem::path> trusted_keys;
    bool trust_any_package = false;
};

std::string host_name() {
    char buffer[HOST_NAME_MAX + 1] = {};
    if (::gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0') return "client";
    return buffer;
}

/// A name usable as a folder name: anything but letters, digits, '-', '_' and '.' becomes
/// '_' (a name is free text sent to the combiner; the default work folder is derived).
std::string folder_safe(const std::string& name) {
    std::string safe;
    for (char c : name) {
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.';
        safe += plain ? c : '_';
    }
    if (safe.empty() || safe == "." || safe == "..") safe = "client";
    return safe;
}

/// Replaces this process with the lean daemon executable, `fedcli-client` next to this one,
/// handing it `settings` as JSON on an inherited memory file (the token never shows in the
/// process list). Returns only when there is no such executable or it cannot be started;
/// the caller then runs the daemon in this process.
void exec_daemon(const client::Options& settings) {
    if (settings.fedcli_executable.empty()) return;
    const std::filesystem::path daemon = settings.fedcli_executable.parent_path() / "fedcli-client";
    if (::access(daemon.c_str(), X_OK) != 0) return;
    const std::string document = client::options_to_json(settings).dump();
    int fd = ::memfd_create("fedcli-client-options", 0);  // no MFD_CLOEXEC: the daemon reads it
    if (fd < 0) return;
    std::size_t written = 0;
    while (written < document.size()) {
        ssize_t n = ::write(fd, document.data() + written, document.size() - written);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        written += static_cast<std::size_t>(n);
    }
    if (written == document.size() && ::lseek(fd, 0, SEEK_SET) == 0) {
        std::cout.flush();
        std::cerr.flush();
        const std::string fd_text = std::to_string(fd);
        const char* argv[] = {"fedcli-client", "--options-fd", fd_text.c_str(), nullptr};
        ::execv(daemon.c_str(), const_cast<char* const*>(argv));
    }
    ::close(fd);
}

int client_start(const StartOptions& options, std::ostream& out) {
    const std::string command = "fedcli client start";
    proto::check_target(options.combiner, "--combiner");
    if (!options.path.empty() && options.package_from_combiner) {
        throw UsageError("--path and --package-from-combiner exclude each other", command);
    }

    client::Options settings;
    settings.combiner = options.combiner;
    settings.name = options.name.empty() ? host_name() : options.name;
    if (!options.path.empty()) {
        if (!std::filesystem::is_directory(options.path)) {
            throw Error(options.path.string() + ": not a project folder (--path)");
        }
        settings.project = options.path;
    }
    settings.work_dir = options.work_dir.empty() ? std::filesystem::path(".fedcli") /
                                                       ("client-" + folder_safe(settings.name))
                                                 : options.work_dir;
    if (!options.python.empty()) settings.python = options.python;
    if (!options.data_path.empty()) settings.data_path = options.data_path;
    for (const auto& item : options.environment) {
        auto equals = item.find('=');
        if (equals == std::string::npos || equals == 0) {
            throw UsageError("--env '" + item + "': expected NAME=VALUE", command);
        }
        settings.environment.emplace_back(item.substr(0, equals), item.substr(equals + 1));
    }
    settings.echo_output = options.verbose;
    const EntryPointLimits limits = entry_point_limits(options.limits);
    settings.entry_point_timeout = limits.timeout;
    settings.entry_point_limits = limits.limits;
    for (const std::string& pin : options.package_pins) {
        if (!util::is_sha256(pin)) {
            throw UsageError("--package-sha256 '" + pin + "': expected 64 hex digits", command);
        }
        settings.package_pins.push_back(util::lowercase(pin));
    }
    for (const auto& file : options.trusted_keys) {
        settings.trusted_keys.push_back(package::load_public_key(file));
    }
    settings.trust_any_package = options.trust_any_package;
    if (settings.trust_any_package && !settings.project) {
        out << "WARNING: --trust-any-package: this client runs whatever code the combiner "
               "sends, unverified\n";
    }
    // A client never falls back to the operator's admin token file.
    settings.channel = channel_options(options.access, options.combiner, false);

    // Runs `fedcli package extract` for packages from the combiner, and locates fedcli-client.
    try {
        settings.fedcli_executable = dispatch::self_executable();
    } catch (const Error&) {
        // No /proc: packages from the combiner cannot be unpacked (the client says so).
    }
    // Only when the log is this process's stdout: a caller that collects the log (a test)
    // keeps the daemon in its own process.
    if (&out == &std::cout) exec_daemon(settings);
    return client::serve(std::move(settings), out);
}

Action setup_start(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<StartOptions>();
    command.add_option("--combiner", options->combiner, "The combiner to connect to")
        ->type_name("HOST:PORT")
        ->envname(k_combiner_env)
        ->capture_default_str();
    command.add_option("--name", options->name, "Name shown to the operator (default: host name)")
        ->type_name("NAME");
    command
        .add_option("--path,-p", options->path,
                    "Run this local project folder instead of the combiner's package")
        ->type_name("DIR");
    command.add_flag("--package-from-combiner", options->package_from_combiner,
                     "Take the compute package from the combiner (the default without --path)");
    command
        .add_option("--work-dir", options->work_dir,
                    "Client id, packages, models and task files (default: "
                    ".fedcli/client-<name>); reuse it to keep the client's id")
        ->type_name("DIR");
    command
        .add_option("--python", options->python,
                    "Interpreter for python entry points (default: one with numpy)")
        ->type_name("PY");
    command
        .add_option("--data-path", options->data_path,
                    "Data folder for the entry points (FEDCLI_DATA_PATH, FEDN_DATA_PATH)")
        ->type_name("DIR");
    command
        .add_option("--env", options->environment,
                    "Extra environment variable for the entry points (repeatable)")
        ->type_name("NAME=VALUE");
    command.add_flag("--verbose,-v", options->verbose, "Echo the entry points' output");
    add_entry_point_limit_options(command, options->limits);
    command
        .add_option("--trust-key", options->trusted_keys,
                    "Run packages signed by this public key (`fedcli package keygen`; "
                    "repeatable)")
        ->type_name("FILE")
        ->group("Trusted packages");
    command
        .add_option("--package-sha256", options->package_pins,
                    "Run the package with this sha256 (a pin; repeatable)")
        ->type_name("HEX")
        ->group("Trusted packages");
    command
        .add_flag("--trust-any-package", options->trust_any_package,
                  "Run any package the combiner sends, unverified (testing only)")
        ->group("Trusted packages");
    add_access_options(command, options->access);
    command.footer(
        "The client presents an access token (a client token from `fedcli token create\n"
        "--role client`, one per client: it is bound to the client id it first connects\n"
        "with). A combiner that refuses the token ends the client with an error. With TLS\n"
        "pass --ca (and --tls-cert/--tls-key when the combiner requires client certificates).\n"
        "A package from the combiner runs only when it is signed by a --trust-key or its\n"
        "sha256 is pinned with --package-sha256 (docs/security.md); a local --path project\n"
        "needs neither.\n"
        "Example:\n"
        "  fedcli client start --combiner combiner.example.org:12080 --ca ca.pem \\\n"
        "      --token-file c1.token --name c1");
    std::ostream& out = streams.out;
    return [options, &out] { return client_start(*options, out); };
}

}  // namespace

void register_client_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"start",
         "Connect to a combiner and run its tasks with this machine's data (Ctrl-C stops it)",
         setup_start},
    };
    add_group(app, "client", "Run a client that trains on local data for a combiner", k_commands,
              dispatch);
}

}  // namespace fedcli::cli
