// How command groups plug into the fedcli command line.
//
// Every group lives in its own file, cli/cmd_<group>.cpp, and registers its commands on the
// root CLI::App from a table of {name, description, setup} rows (see add_group). `setup`
// declares a command's options and returns the command's Action; parsing only records which
// Action was chosen, and run() (cli/app.cpp) calls it after parsing succeeded, so whatever a
// command throws reaches the single place that prints errors.
//
// Commands write their results to the stream they are given and report failure by
// throwing: fedcli::Error for anything that went wrong (exit code 1), Problems for a list
// of independent findings (each printed as its own error line, exit code 1) and UsageError
// for a command line that cannot work (exit code 2). They never print errors themselves.
#pragma once

#include <functional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace CLI {
class App;
}

namespace fedcli::cli {

/// What a command does once its command line is parsed: returns the exit code.
using Action = std::function<int()>;

/// Where commands write: normal output and diagnostics that are not errors (warnings,
/// progress). Injected so that tests can capture both.
struct Streams {
    std::ostream& out;
    std::ostream& err;
};

/// One row of a group's command table.
struct CommandSpec {
    std::string_view name;
    std::string_view description;  ///< one line, shown in the group's help
    /// Declares the command's options and positionals on `command` and returns its Action.
    /// The Action owns the variables the options are bound to.
    Action (*setup)(CLI::App& command, const Streams& streams);
};

/// The state that registration shares with run(): the streams commands write to and the
/// Action of the command that parsing selected (empty until one is).
struct Dispatch {
    Streams streams;
    Action selected;
};

/// Adds the group `name` to `parent` with one subcommand per row of `commands`, each with
/// `--help`. Selecting a command stores its Action in dispatch.selected. Groups may be
/// nested: `parent` can itself be a group. Returns the group.
CLI::App& add_group(CLI::App& parent, std::string_view name, std::string_view description,
                    std::span<const CommandSpec> commands, Dispatch& dispatch);

/// Adds one subcommand per row of `commands` to an existing group (a group that another
/// file created gets commands from this one, e.g. `model push` next to `model inspect`).
void add_commands(CLI::App& group, std::span<const CommandSpec> commands, Dispatch& dispatch);

/// `fedcli model ...`: parameter files (cli/cmd_model.cpp).
void register_model_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli project ...`: project folders and files (cli/cmd_project.cpp).
void register_project_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli run ...`: one entry point, locally (cli/cmd_run.cpp).
void register_run_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli package ...`: compute packages (cli/cmd_package.cpp).
void register_package_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli clients ...`, `fedcli models ...` and the commands of `package` and `model` that
/// talk to a combiner (cli/cmd_federation.cpp). Runs after the package and model groups
/// are registered.
void register_federation_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli session ...` (cli/cmd_session.cpp).
void register_session_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli rounds ...`, `fedcli validations ...`, `fedcli logs` and `fedcli report`: the
/// history of sessions (cli/cmd_history.cpp).
void register_history_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli combiner start|check` (cli/cmd_combiner.cpp).
void register_combiner_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli client start` (cli/cmd_client.cpp).
void register_client_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli token create|list|revoke`: access tokens (cli/cmd_token.cpp).
void register_token_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli certs create`: TLS certificates (cli/cmd_certs.cpp).
void register_certs_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli package keygen|sign|verify`: signed packages (cli/cmd_sign.cpp).
void register_signing_commands(CLI::App& app, Dispatch& dispatch);
/// `fedcli local`: a whole federation on this machine (cli/cmd_local.cpp).
void register_local_commands(CLI::App& app, Dispatch& dispatch);

/// A failure made of several independent problems (e.g. everything `project validate`
/// found wrong). what() joins them with "; "; run() prints each on its own error line.
class Problems : public fedcli::Error {
  public:
    explicit Problems(std::vector<std::string> problems);
    const std::vector<std::string>& problems() const { return m_problems; }

  private:
    std::vector<std::string> m_problems;
};

/// The command line asks for something that cannot work. run() prints the message, a hint
/// to run `<command> --help`, and exits with code 2.
class UsageError : public fedcli::Error {
  public:
    /// `command` is the command the hint points at, e.g. "fedcli model inspect".
    UsageError(const std::string& message, std::string command)
        : fedcli::Error(message), m_command(std::move(command)) {}
    const std::string& command() const { return m_command; }

  private:
    std::string m_command;
};

}  // namespace fedcli::cli
