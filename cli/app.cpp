#include "cli/app.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <string_view>

#include "cli/commands.hpp"
#include "cli/text.hpp"
#include "core/error.hpp"
#include "core/util/suggest.hpp"

namespace fedcli::cli {

namespace {

using RegisterGroup = void (*)(CLI::App& app, Dispatch& dispatch);

/// The command groups of fedcli, in the order `fedcli --help` lists them.
constexpr RegisterGroup k_groups[] = {
    register_project_commands,    register_run_commands,      register_package_commands,
    register_model_commands,      register_combiner_commands, register_client_commands,
    register_federation_commands,  // adds to `package` and `model`, so after them
    register_session_commands,    register_history_commands,  register_token_commands,
    register_certs_commands,      register_signing_commands,  register_local_commands,
};

constexpr std::string_view k_program = "fedcli";
constexpr std::string_view k_description =
    "fedcli: federated learning toolchain (projects, parameter files, combiner and clients)";

/// "fedcli model inspect" for the `inspect` subcommand of `model`.
std::string command_path(const CLI::App& app) {
    std::string path = app.get_name();
    for (const CLI::App* parent = app.get_parent(); parent; parent = parent->get_parent()) {
        path = parent->get_name() + " " + path;
    }
    return path;
}

/// Names (and aliases) of the subcommands of `app`.
std::vector<std::string> subcommand_names(const CLI::App& app) {
    std::vector<std::string> names;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
        if (sub->get_name().empty()) continue;
        names.push_back(sub->get_name());
        for (const auto& alias : sub->get_aliases()) names.push_back(alias);
    }
    return names;
}

/// Long option names of `app`, e.g. "--json".
std::vector<std::string> long_option_names(const CLI::App& app) {
    std::vector<std::string> names;
    for (const CLI::Option* option : app.get_options()) {
        for (const auto& name : option->get_lnames()) names.push_back("--" + name);
    }
    return names;
}

/// Finds the subcommand of `app` called `name`, or nullptr.
CLI::App* find_subcommand(CLI::App& app, const std::string& name) {
    for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        if (!sub->get_name().empty() && sub->check_name(name)) return sub;
    }
    return nullptr;
}

/// Walks the command words of `args` down the command tree before CLI11 parses them, so
/// that a mistyped command at any depth is answered with the closest known name instead
/// of CLI11's generic "argument was not expected". A group (an app with subcommands and no
/// positionals) only accepts flags and command names, so its first positional argument
/// must be one of its commands. Stops at the first app that is not a group.
void check_command_words(CLI::App& root, const std::vector<std::string>& args) {
    CLI::App* current = &root;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& arg = args[i];
        bool is_group =
            !subcommand_names(*current).empty() &&
            current->get_options([](const CLI::Option* option) { return option->get_positional(); })
                .empty();
        if (!is_group || arg == "--") return;
        if (arg.size() > 1 && arg[0] == '-') {
            // An option of the group: skip its value when it takes one as the next word.
            if (arg.find('=') != std::string::npos) continue;
            const CLI::Option* option = current->get_option_no_throw(arg);
            if (option && option->get_type_size_min() > 0 && option->get_expected_min() > 0) ++i;
            continue;
        }
        if (CLI::App* sub = find_subcommand(*current, arg)) {
            current = sub;
            continue;
        }
        std::string message = "unknown command '" + arg + "'";
        if (current != &root) message += " for '" + command_path(*current) + "'";
        auto names = subcommand_names(*current);
        if (auto suggestion = util::closest_match(arg, names)) {
            message += "; did you mean '" + *suggestion + "'?";
        }
        throw UsageError(message, command_path(*current));
    }
}

/// The most deeply nested subcommand that parsing selected (the root when none).
const CLI::App& selected_command(const CLI::App& root) {
    const CLI::App* current = &root;
    while (!current->get_subcommands().empty()) current = current->get_subcommands().front();
    return *current;
}

/// Rewrites CLI11's "The following argument was not expected: --jsn" to name the command
/// it concerns and suggest a close option; `fallback` when the extras cannot be found.
std::string describe_extras(const CLI::App& root, const std::string& fallback) {
    const CLI::App* current = &root;
    std::vector<std::string> extras;
    while (true) {
        extras = current->remaining(false);
        if (!extras.empty() || current->get_subcommands().empty()) break;
        current = current->get_subcommands().front();
    }
    if (extras.empty()) return fallback;
    const std::string& first = extras.front();
    const bool is_option = first.size() > 1 && first[0] == '-';
    std::string message = (is_option ? "unknown option '" : "unexpected argument '") + first + "'";
    if (current != &root) message += " for '" + command_path(*current) + "'";
    if (extras.size() > 1) message += " (and " + std::to_string(extras.size() - 1) + " more)";
    if (is_option) {
        auto name = first.substr(0, first.find('='));
        if (auto suggestion = util::closest_match(name, long_option_names(*current))) {
            message += "; did you mean '" + *suggestion + "'?";
        }
    }
    return message;
}

void print_usage_error(std::ostream& err, const std::string& message, const std::string& command) {
    err << k_program << ": error: " << message << '\n'
        << "run '" << command << " --help' for usage\n";
}

/// True when FEDCLI_PARSE_ONLY asks run() to stop after parsing.
bool parse_only_requested() {
    const char* value = std::getenv(k_parse_only_env);
    return value && *value && std::string_view(value) != "0";
}

/// Parse-only mode's answer for a command line that parsed: the command it selected.
int report_parsed(const CLI::App& command, std::ostream& out) {
    out << "parsed: " << command_path(command) << '\n';
    out.flush();
    return k_exit_success;
}

/// Builds the command tree: the root app with --help, --version and every group.
std::unique_ptr<CLI::App> make_app(Dispatch& dispatch) {
    auto app = std::make_unique<CLI::App>(std::string(k_description), std::string(k_program));
    app->set_version_flag("--version", std::string(k_program) + " " + std::string(version()),
                          "Print the version and exit");
    app->set_help_flag("-h,--help", "Print this help and exit");
    app->get_formatter()->label("SUBCOMMAND", "COMMAND");
    app->group("Commands");         // inherited by every group and command
    app->require_subcommand(0, 1);  // one command per invocation, inherited too
    for (RegisterGroup register_group : k_groups) register_group(*app, dispatch);
    app->footer("Run 'fedcli <command> --help' for the commands of a group.");
    return app;
}

}  // namespace

Problems::Problems(std::vector<std::string> problems)
    : fedcli::Error([&] {
          std::string joined;
          for (const auto& problem : problems) {
              if (!joined.empty()) joined += "; ";
              joined += problem;
          }
          return joined;
      }()),
      m_problems(std::move(problems)) {}

CLI::App& add_group(CLI::App& parent, std::string_view name, std::string_view description,
                    std::span<const CommandSpec> commands, Dispatch& dispatch) {
    CLI::App* group = parent.add_subcommand(std::string(name), std::string(description));
    std::string path = command_path(*group);
    group->footer("Run '" + path + " <command> --help' for a command's options.");
    add_commands(*group, commands, dispatch);
    return *group;
}

void add_commands(CLI::App& group, std::span<const CommandSpec> commands, Dispatch& dispatch) {
    for (const CommandSpec& spec : commands) {
        CLI::App* command =
            group.add_subcommand(std::string(spec.name), std::string(spec.description));
        command->footer("");
        Action action = spec.setup(*command, dispatch.streams);
        command->callback([&dispatch, action] { dispatch.selected = action; });
    }
}

std::string_view version() {
    return FEDCLI_VERSION;
}

int run(int argc, char** argv) {
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
    return run(std::move(args), std::cout, std::cerr);
}

int run(std::vector<std::string> args, std::ostream& out, std::ostream& err) {
    int exit_code = k_exit_failure;
    const bool parse_only = parse_only_requested();
    try {
        Dispatch dispatch{{out, err}, {}};
        auto app = make_app(dispatch);
        try {
            check_command_words(*app, args);
            std::reverse(args.begin(), args.end());  // CLI11 consumes arguments from the back
            app->parse(args);
        } catch (const CLI::Success& success) {  // --help, --version
            if (parse_only) return report_parsed(selected_command(*app), out);
            exit_code = app->exit(success, out, err);
            out.flush();
            return exit_code;
        } catch (const CLI::ExtrasError& error) {
            const CLI::App& command = selected_command(*app);
            print_usage_error(err, describe_extras(*app, error.what()), command_path(command));
            return k_exit_usage;
        } catch (const CLI::ParseError& error) {
            print_usage_error(err, error.what(), command_path(selected_command(*app)));
            return k_exit_usage;
        }

        if (!dispatch.selected) {
            const CLI::App& group = selected_command(*app);
            if (&group == app.get()) {  // `fedcli` alone
                if (parse_only) return report_parsed(group, out);
                out << app->help();
                out.flush();
                return k_exit_success;
            }
            err << app->help() << '\n'
                << k_program << ": error: '" << command_path(group)
                << "' needs a command: " << CLI::detail::join(subcommand_names(group), ", ")
                << '\n';
            return k_exit_usage;
        }
        if (parse_only) return report_parsed(selected_command(*app), out);
        exit_code = dispatch.selected();
    } catch (const UsageError& error) {
        print_usage_error(err, error.what(), error.command());
        exit_code = k_exit_usage;
    } catch (const Problems& problems) {
        for (const auto& problem : problems.problems()) {
            err << k_program << ": error: " << problem << '\n';
        }
        exit_code = k_exit_failure;
    } catch (const std::exception& error) {  // fedcli::Error and anything a library threw
        err << k_program << ": error: " << error.what() << '\n';
        exit_code = k_exit_failure;
    } catch (...) {
        err << k_program << ": error: unknown failure\n";
        exit_code = k_exit_failure;
    }
    out.flush();
    err.flush();
    return exit_code;
}

}  // namespace fedcli::cli
