// `fedcli session start|stop|resume|list|status`: sessions of training rounds on a combiner.
// `start` and `resume` follow the session round by round (one loop, follow_session);
// `status --watch` polls GetStatus and redraws a live view on a terminal.
#include "cli/cmd_session.hpp"

#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "cli/app.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "cli/report.hpp"
#include "cli/text.hpp"
#include "core/aggregate/aggregator.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/error.hpp"
#include "core/util/ids.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;
using util::now_unix_ms;

// ---------------------------------------------------------------------------------------
// The live view (pure)

std::string round_position_text(const v1::RoundInfo& round, std::uint32_t total) {
    std::string text = "round " + std::to_string(round.round_id());
    if (round.session_round() == 0) return text;
    text += " (" + std::to_string(round.session_round());
    if (total > 0) text += "/" + std::to_string(total);
    if (round.attempt() > 1) text += ", try " + std::to_string(round.attempt());
    return text + ")";
}

namespace {

/// What the status says about the latest session, from StatusResponse.session where the
/// combiner filled it, else from the older top-level fields.
struct SessionView {
    std::string id;
    v1::SessionState state = v1::SESSION_STATE_UNSPECIFIED;
    std::uint32_t total = 0;
    std::optional<std::uint32_t> committed;  ///< unknown without StatusResponse.session
    std::string latest_model;
    std::string message;
};

SessionView session_view(const v1::StatusResponse& status) {
    SessionView view;
    if (status.has_session()) {
        const auto& session = status.session();
        view.id = session.session_id();
        view.state = session.state();
        view.total = session.config().rounds();
        view.committed = session.rounds_committed();
        view.latest_model = session.latest_model_id();
    }
    if (view.id.empty()) view.id = status.session_id();
    if (view.state == v1::SESSION_STATE_UNSPECIFIED) view.state = status.session_state();
    if (view.total == 0) view.total = status.rounds();
    if (view.latest_model.empty()) view.latest_model = status.latest_model_id();
    view.message = !status.message().empty() ? status.message() : status.session().message();
    return view;
}

std::string committed_text(const SessionView& view) {
    if (!view.committed) return "- of " + std::to_string(view.total) + " rounds committed";
    return std::to_string(*view.committed) + " of " + plural(view.total, "round") + " committed";
}

}  // namespace

std::vector<std::string> watch_view(const v1::StatusResponse& status, std::int64_t now_unix_ms) {
    const SessionView session = session_view(status);
    if (session.id.empty()) return {"no session has run on this combiner yet"};
    std::vector<std::string> lines;
    std::string head =
        "session  " + short_id(session.id) + "  " + std::string(session_state_name(session.state));
    const auto& info = status.session();
    if (info.started_unix_ms() > 0) {
        const std::int64_t end = info.ended_unix_ms() > 0 ? info.ended_unix_ms() : now_unix_ms;
        head += (info.ended_unix_ms() > 0 ? ", ran " : ", running for ") +
                duration_text(seconds_between(info.started_unix_ms(), end));
    }
    lines.push_back(head);
    lines.push_back("rounds   " + progress_bar(session.committed.value_or(0), session.total) +
                    "  " + committed_text(session));
    if (status.has_round()) {
        const auto& round = status.round();
        lines.push_back("round    " + round_position_text(round, session.total) + "  " +
                        std::string(round_state_name(round.state())));
        std::string updates = "updates  " +
                              progress_bar(round.updates_accepted(), round.clients_selected()) +
                              "  " + std::to_string(round.updates_accepted()) + " of " +
                              std::to_string(round.clients_selected()) + " selected accepted";
        if (round.rejected_size() > 0) {
            updates += ", " + std::to_string(round.rejected_size()) + " rejected";
        }
        lines.push_back(updates);
        const double timeout = static_cast<double>(info.config().round_timeout_ms()) / 1000.0;
        if (round.started_unix_ms() > 0) {
            const bool open = round.closed_unix_ms() <= 0;
            const double elapsed = seconds_between(
                round.started_unix_ms(),
                open ? std::max(now_unix_ms, round.started_unix_ms()) : round.closed_unix_ms());
            std::string time = "time     " + progress_bar(elapsed, timeout) + "  " +
                               duration_text(elapsed) + " of " +
                               (timeout > 0 ? duration_text(timeout) : std::string("-")) +
                               " round timeout";
            if (!open) time += " (closed)";
            lines.push_back(time);
        } else {
            lines.push_back("time     -");
        }
    } else {
        lines.push_back("round    none yet");
    }
    lines.push_back("clients  " + std::to_string(status.clients_online()) + " online, " +
                    std::to_string(status.clients_known()) + " known");
    lines.push_back("last     " + (session.message.empty() ? std::string("-") : session.message));
    return lines;
}

std::string watch_line(const v1::StatusResponse& status) {
    const SessionView session = session_view(status);
    if (session.id.empty()) return "no session has run on this combiner yet";
    std::string line = "session " + short_id(session.id) + " " +
                       std::string(session_state_name(session.state)) + ": " +
                       committed_text(session);
    if (status.has_round()) {
        const auto& round = status.round();
        line += "; " + round_position_text(round, session.total) + " " +
                std::string(round_state_name(round.state())) + ", " +
                std::to_string(round.updates_accepted()) + "/" +
                std::to_string(round.clients_selected()) + " updates";
        if (round.rejected_size() > 0) {
            line += ", " + std::to_string(round.rejected_size()) + " rejected";
        }
    }
    line += "; clients " + std::to_string(status.clients_online()) + "/" +
            std::to_string(status.clients_known()) + " online";
    if (!session.message.empty()) line += "; " + session.message;
    return line;
}

namespace {

// ---------------------------------------------------------------------------------------
// Following a session (start, resume)

void print_round_line(std::ostream& out, const v1::RoundInfo& round, std::size_t index,
                      std::uint32_t rounds, ClientNames& names) {
    std::uint64_t examples = 0;
    std::uint64_t used = 0;
    for (const auto& update : round.updates()) {
        if (update.used()) {
            examples += update.num_examples();
            ++used;
        }
    }
    const double seconds = seconds_between(round.started_unix_ms(), round.closed_unix_ms());
    if (round.session_round() > 0) {
        out << round_position_text(round, rounds) << ' ';
    } else {  // a combiner that does not number rounds within the session
        out << "round " << round.round_id() << " (" << index << "/" << rounds << ") ";
    }
    if (round.state() == v1::ROUND_STATE_COMMITTED) {
        out << "committed in " << duration_text(seconds) << ": "
            << plural(round.updates_accepted(), "update") << " (" << group_digits(examples)
            << " examples), " << round.rejected_size() << " rejected -> model "
            << short_id(round.output_model_id());
        if (used != round.updates_accepted()) out << " (" << used << " used by the aggregator)";
    } else {
        out << "FAILED after " << duration_text(seconds) << ": " << round.reason();
    }
    out << '\n';
    for (const auto& rejected : round.rejected()) {
        out << "  rejected " << names.describe(rejected.client_id()) << ": " << rejected.reason()
            << '\n';
    }
    out.flush();
}

/// For a session that is no longer running: prints how it finished and returns 0, or
/// throws the error that says how it ended otherwise (stopped, failed, interrupted).
int session_outcome(const SessionView& session, std::uint64_t rounds_committed, double seconds,
                    std::ostream& out) {
    if (session.state == v1::SESSION_STATE_FINISHED) {
        out << "session " << short_id(session.id) << " finished in " << duration_text(seconds)
            << ": " << plural(rounds_committed, "round") << " -> model "
            << short_id(session.latest_model) << '\n';
        return k_exit_success;
    }
    // The combiner's message usually names the session already.
    std::string what =
        "session " + short_id(session.id) + " " + std::string(session_state_name(session.state));
    if (session.message.empty()) throw Error(what);
    if (session.message.starts_with("session ")) throw Error(session.message);
    throw Error(what + ": " + session.message);
}

/// Follows a session until it ends or the user presses Ctrl-C (which only detaches).
/// Rounds in `already_shown` (closed before a resume) are not printed again.
int follow_session(CombinerConnection& connection, const std::string& session_id, std::ostream& out,
                   std::set<std::uint64_t> already_shown = {}) {
    dispatch::InterruptGuard interrupt;
    ClientNames names(connection);
    std::set<std::uint64_t> printed = already_shown;
    std::set<std::pair<std::uint64_t, std::string>> printed_validations;
    std::uint64_t committed = 0;
    const auto started = std::chrono::steady_clock::now();
    while (true) {
        auto status = connection.status();
        const SessionView session = session_view(status);
        v1::ListRoundsRequest request;
        request.set_session_id(session_id);
        auto rounds = connection.call(&Stub::ListRounds, request, "listing the rounds");
        std::size_t index = 0;
        for (const auto& round : rounds.rounds()) {
            ++index;
            if (round.state() != v1::ROUND_STATE_OPEN && !printed.count(round.round_id())) {
                printed.insert(round.round_id());
                if (round.state() == v1::ROUND_STATE_COMMITTED) ++committed;
                print_round_line(out, round, index, session.total, names);
            }
            for (const auto& validation : round.validations()) {
                auto key = std::make_pair(round.round_id(), validation.client_id());
                if (printed.count(round.round_id()) && !already_shown.count(round.round_id()) &&
                    !printed_validations.count(key)) {
                    printed_validations.insert(key);
                    out << "  validation of round " << round.round_id() << " by "
                        << names.describe(validation.client_id()) << ": "
                        << metrics_text(validation.metrics_json()) << '\n';
                    out.flush();
                }
            }
        }
        if (session.id == session_id && session.state != v1::SESSION_STATE_RUNNING) {
            const double seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
            return session_outcome(session, session.committed.value_or(committed), seconds, out);
        }
        pollfd wait{interrupt.fd(), POLLIN, 0};
        if (::poll(&wait, 1, 300) > 0) {
            out << "detached; session " << short_id(session_id)
                << " keeps running. Watch it with `fedcli session status --watch`, stop it "
                   "with `fedcli session stop`.\n";
            out.flush();
            return 128 + interrupt.signal();
        }
    }
}

// ---------------------------------------------------------------------------------------
// session start

struct SessionStartOptions {
    std::string combiner = k_default_combiner;
    unsigned rounds = 0;
    std::string aggregator = "fedavg";
    std::vector<std::string> config;
    unsigned min_clients = 1;
    unsigned clients_per_round = 0;
    double round_timeout = 300;
    bool validate = false;
    std::string model;
    std::vector<std::string> settings;
    bool detach = false;
    double clients_fraction = 0;
    CLI::Option* clients_fraction_option = nullptr;
    long long buffer_size = 0;
    long long max_round_retries = 0;
    long long max_client_failures = 0;
};

constexpr long long k_max_round_retries = 100;
constexpr long long k_max_client_failures = 10000;

}  // namespace

/// `--settings` items: KEY=VALUE (VALUE as JSON when it parses, else a string) or a whole
/// JSON object; later items win.
nlohmann::ordered_json parse_settings(const std::vector<std::string>& items,
                                      const std::string& command) {
    auto settings = nlohmann::ordered_json::object();
    for (const auto& item : items) {
        if (!item.empty() && item.front() == '{') {
            nlohmann::ordered_json object;
            try {
                object = nlohmann::ordered_json::parse(item);
            } catch (const nlohmann::json::exception& error) {
                throw UsageError("--settings '" + item + "': not a JSON object: " + error.what(),
                                 command);
            }
            if (!object.is_object()) {
                throw UsageError("--settings '" + item + "': not a JSON object", command);
            }
            for (auto& [key, value] : object.items()) settings[key] = value;
            continue;
        }
        auto equals = item.find('=');
        if (equals == std::string::npos || equals == 0) {
            throw UsageError("--settings '" + item + "': expected KEY=VALUE or a JSON object",
                             command);
        }
        std::string key = item.substr(0, equals);
        std::string text = item.substr(equals + 1);
        if (key == "round" || key == "session_round" || key == "session_id") {
            throw UsageError("--settings: '" + key + "' is set by the combiner for each task",
                             command);
        }
        try {
            settings[key] = nlohmann::ordered_json::parse(text);
        } catch (const nlohmann::json::exception&) {
            settings[key] = text;
        }
    }
    return settings;
}

namespace {

/// Checks the straggler and failure settings; throws UsageError naming the option.
void check_round_policy(const SessionStartOptions& options, const std::string& command) {
    const double fraction = options.clients_fraction;
    const bool given = options.clients_fraction_option->count() > 0;
    if (!std::isfinite(fraction) || (given && fraction <= 0) || fraction < 0 || fraction > 1) {
        throw UsageError(
            "--clients-fraction must be in (0, 1] (the share of the ready clients "
            "selected per round), found " +
                metric_number(fraction),
            command);
    }
    if (options.buffer_size < 0) {
        throw UsageError(
            "--buffer-size must be 0 (wait for every selected client) or a number "
            "of updates, found " +
                std::to_string(options.buffer_size),
            command);
    }
    if (options.buffer_size > 0 && options.buffer_size < options.min_clients) {
        throw UsageError("--buffer-size " + std::to_string(options.buffer_size) +
                             " is below --min-clients " + std::to_string(options.min_clients) +
                             ": a round would close before it has enough updates to commit",
                         command);
    }
    if (options.buffer_size > 0 && options.clients_per_round > 0 &&
        options.buffer_size > options.clients_per_round) {
        throw UsageError("--buffer-size " + std::to_string(options.buffer_size) +
                             " is above --clients-per-round " +
                             std::to_string(options.clients_per_round) +
                             ": the buffer could never fill",
                         command);
    }
    if (options.max_round_retries < 0 || options.max_round_retries > k_max_round_retries) {
        throw UsageError("--max-round-retries must be from 0 to " +
                             std::to_string(k_max_round_retries) + ", found " +
                             std::to_string(options.max_round_retries),
                         command);
    }
    if (options.max_client_failures < 0 || options.max_client_failures > k_max_client_failures) {
        throw UsageError("--max-client-failures must be from 0 (never skip a client) to " +
                             std::to_string(k_max_client_failures) + ", found " +
                             std::to_string(options.max_client_failures),
                         command);
    }
}

/// ", 50% of the ready clients, closing at 3 updates, ..." for the policy options that are set.
std::string round_policy_text(const v1::SessionConfig& config) {
    std::string text;
    if (config.clients_fraction() > 0) {
        text += ", " + metric_number(config.clients_fraction() * 100) + "% of the ready clients";
    }
    if (config.buffer_size() > 0) {
        text += ", rounds close at " + plural(config.buffer_size(), "update");
    }
    if (config.max_round_retries() > 0) {
        const std::uint32_t retries = config.max_round_retries();
        text += ", up to " + std::to_string(retries) + (retries == 1 ? " retry" : " retries") +
                " per round";
    }
    if (config.max_client_failures() > 0) {
        text += ", clients skipped after " + plural(config.max_client_failures(), "failure") +
                " in a row";
    }
    return text;
}

int session_start(const SessionStartOptions& options, std::ostream& out) {
    const std::string command = "fedcli session start";
    // Everything that can be checked here is checked before anything is sent.
    auto config = aggregate::Config::from_items(options.config);
    aggregate::make_aggregator(options.aggregator, config);
    if (options.rounds < 1) throw UsageError("--rounds must be at least 1", command);
    if (options.min_clients < 1) throw UsageError("--min-clients must be at least 1", command);
    if (options.clients_per_round != 0 && options.clients_per_round < options.min_clients) {
        throw UsageError("--clients-per-round " + std::to_string(options.clients_per_round) +
                             " is below --min-clients " + std::to_string(options.min_clients) +
                             ": no round could commit",
                         command);
    }
    if (!std::isfinite(options.round_timeout) || options.round_timeout <= 0) {
        throw UsageError("--round-timeout must be a positive number of seconds", command);
    }
    check_round_policy(options, command);
    auto settings = parse_settings(options.settings, command);
    CombinerConnection connection(options.combiner);

    nlohmann::ordered_json aggregator_config = nlohmann::ordered_json::object();
    for (const auto& [key, value] : config.values()) aggregator_config[key] = value;
    v1::StartSessionRequest request;
    v1::SessionConfig& session = *request.mutable_config();
    session.set_rounds(options.rounds);
    session.set_aggregator(options.aggregator);
    session.set_aggregator_config_json(dump_json(aggregator_config));
    session.set_min_clients(options.min_clients);
    session.set_clients_per_round(options.clients_per_round);
    session.set_round_timeout_ms(
        static_cast<std::uint64_t>(std::llround(options.round_timeout * 1000)));
    session.set_validate(options.validate);
    session.set_clients_fraction(options.clients_fraction);
    session.set_buffer_size(static_cast<std::uint32_t>(options.buffer_size));
    session.set_max_round_retries(static_cast<std::uint32_t>(options.max_round_retries));
    session.set_max_client_failures(static_cast<std::uint32_t>(options.max_client_failures));
    if (!options.model.empty()) {
        session.set_model_id(resolve_model_id(connection, options.model, command));
    }
    session.set_settings_json(dump_json(settings));
    nlohmann::ordered_json recorded = {{"rounds", options.rounds},
                                       {"aggregator", options.aggregator},
                                       {"aggregator_config", aggregator_config},
                                       {"min_clients", options.min_clients},
                                       {"clients_per_round", options.clients_per_round},
                                       {"clients_fraction", options.clients_fraction},
                                       {"buffer_size", options.buffer_size},
                                       {"round_timeout_s", options.round_timeout},
                                       {"max_round_retries", options.max_round_retries},
                                       {"max_client_failures", options.max_client_failures},
                                       {"validate", options.validate},
                                       {"model_id", session.model_id()},
                                       {"settings", settings}};
    request.set_config_json(dump_json(recorded));

    auto response = connection.call(&Stub::StartSession, request, "starting the session");
    if (!response.ack().accepted()) {
        throw Error("the combiner at " + connection.target() +
                    " did not start the session: " + response.ack().reason());
    }
    const std::string& id = response.session_id();
    out << "session " << short_id(id) << " started: " << plural(options.rounds, "round") << ", "
        << options.aggregator << ", at least " << plural(options.min_clients, "client")
        << " per round, round timeout " << duration_text(options.round_timeout)
        << round_policy_text(session) << (options.validate ? ", with validation" : "") << '\n';
    if (options.detach) {
        out << "session id " << id << "; watch it with `fedcli session status --watch`\n";
        return k_exit_success;
    }
    out << "following it (Ctrl-C detaches; the session keeps running)\n";
    out.flush();
    return follow_session(connection, id, out);
}

Action setup_session_start(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionStartOptions>();
    std::string names;
    for (const auto& info : aggregate::aggregator_catalog()) {
        names += (names.empty() ? "" : ", ") + std::string(info.name);
    }
    command.add_option("--rounds,-r", options->rounds, "Number of rounds")
        ->type_name("N")
        ->required();
    command.add_option("--aggregator,-a", options->aggregator, "One of: " + names)
        ->type_name("NAME")
        ->capture_default_str();
    command
        .add_option("--config,-c", options->config,
                    "Aggregator hyperparameter KEY=VALUE (repeatable; docs/aggregators.md)")
        ->type_name("KEY=VALUE");
    command
        .add_option("--min-clients", options->min_clients,
                    "Updates a round needs to commit (and ready clients it waits for)")
        ->type_name("M")
        ->capture_default_str();
    command
        .add_option("--clients-per-round", options->clients_per_round,
                    "Random sample of ready clients per round (0: all of them)")
        ->type_name("K")
        ->capture_default_str();
    options->clients_fraction_option =
        command
            .add_option("--clients-fraction", options->clients_fraction,
                        "Share (0, 1] of the ready clients selected per round; with "
                        "--clients-per-round the smaller selection wins, never below --min-clients")
            ->type_name("F");
    command
        .add_option("--buffer-size", options->buffer_size,
                    "Close a round as soon as K updates were accepted (0: wait for every "
                    "selected client or the timeout)")
        ->type_name("K")
        ->capture_default_str();
    command
        .add_option("--round-timeout", options->round_timeout,
                    "Seconds a round waits for clients and their updates")
        ->type_name("SECONDS")
        ->capture_default_str();
    command
        .add_option("--max-round-retries", options->max_round_retries,
                    "Times a round that got fewer than --min-clients updates is tried again "
                    "before the session fails (0 to 100)")
        ->type_name("N")
        ->capture_default_str();
    command
        .add_option("--max-client-failures", options->max_client_failures,
                    "Stop selecting a client whose tasks failed N times in a row (0: never)")
        ->type_name("N")
        ->capture_default_str();
    command.add_flag("--validate", options->validate,
                     "Send the new global model to the round's clients for validation");
    command
        .add_option("--model", options->model,
                    "Model to start from (default: the latest global model, else the seed)")
        ->type_name("ID");
    command
        .add_option("--settings", options->settings,
                    "Round setting KEY=VALUE for the entry points' input metadata (repeatable)")
        ->type_name("KEY=VALUE");
    command.add_flag("--detach,-d", options->detach,
                     "Return once the session started instead of following it");
    add_combiner_option(command, options->combiner);
    command.footer(
        "Examples:\n"
        "  fedcli session start --rounds 5 --min-clients 2 --validate\n"
        "  fedcli session start -r 20 --clients-fraction 0.5 --buffer-size 4 --min-clients 3 \\\n"
        "      --max-round-retries 2 --max-client-failures 3 --round-timeout 120");
    std::ostream& out = streams.out;
    return [options, &out] { return session_start(*options, out); };
}

// ---------------------------------------------------------------------------------------
// session stop / resume

struct SessionStopOptions {
    std::string combiner = k_default_combiner;
    std::string session;
    bool now = false;
};

int session_stop(const SessionStopOptions& options, std::ostream& out) {
    const std::string command = "fedcli session stop";
    CombinerConnection connection(options.combiner);
    const std::string id = resolve_session_id(connection, options.session, command);
    auto status = connection.status();
    v1::StopSessionRequest request;
    request.set_session_id(id);
    request.set_now(options.now);
    auto ack = connection.call(&Stub::StopSession, request, "stopping the session");
    if (!ack.accepted()) {
        throw Error("the combiner at " + connection.target() +
                    " did not stop a session: " + ack.reason());
    }
    const SessionView session = session_view(status);
    const std::string shown = short_id(id.empty() ? session.id : id);
    const bool round_open =
        status.has_round() && status.round().state() == v1::ROUND_STATE_OPEN &&
        (id.empty() || status.round().session_id().empty() || status.round().session_id() == id);
    const std::string round =
        round_open ? round_position_text(status.round(), session.total) : "the current round";
    if (options.now) {
        out << "session " << shown << " stopped now";
        if (round_open) out << "; " << round << " fails and its updates are not aggregated";
        out << '\n';
    } else {
        out << "session " << shown << " stops after " << round
            << " (and its validation); `fedcli session status --watch` shows when "
               "(`fedcli session stop --now` ends it at once)\n";
    }
    return k_exit_success;
}

Action setup_session_stop(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionStopOptions>();
    command
        .add_option("id", options->session,
                    "Session id or unique prefix (default: the running one)")
        ->type_name("ID");
    command.add_flag("--now", options->now,
                     "End it at once: the open round fails and its updates are not aggregated "
                     "(default: after the current round and its validation)");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return session_stop(*options, out); };
}

struct SessionResumeOptions {
    std::string combiner = k_default_combiner;
    std::string session;
    long long rounds = 0;
    bool detach = false;
};

int session_resume(const SessionResumeOptions& options, std::ostream& out) {
    const std::string command = "fedcli session resume";
    if (options.rounds < 0 || options.rounds > std::numeric_limits<std::uint32_t>::max()) {
        throw UsageError("--rounds must be 0 (the rounds the session had left) or more, found " +
                             std::to_string(options.rounds),
                         command);
    }
    CombinerConnection connection(options.combiner);
    std::string id = resolve_session_id(connection, options.session, command);
    std::optional<v1::SessionInfo> before = find_session(connection, id);
    if (id.empty()) {
        if (!before) throw Error("no session to resume on the combiner at " + connection.target());
        id = before->session_id();
    }
    // Rounds that closed before the resume are history: following prints only new ones.
    std::set<std::uint64_t> closed;
    {
        v1::ListRoundsRequest request;
        request.set_session_id(id);
        auto rounds = connection.call(&Stub::ListRounds, request, "listing the rounds");
        for (const auto& round : rounds.rounds()) {
            if (round.state() != v1::ROUND_STATE_OPEN) closed.insert(round.round_id());
        }
    }
    v1::ResumeSessionRequest request;
    request.set_session_id(id);
    request.set_rounds(static_cast<std::uint32_t>(options.rounds));
    auto response = connection.call(&Stub::ResumeSession, request, "resuming the session");
    if (!response.ack().accepted()) {
        throw Error("the combiner at " + connection.target() + " did not resume session " +
                    short_id(id) + ": " + response.ack().reason());
    }
    if (!response.session_id().empty()) id = response.session_id();
    out << "session " << short_id(id) << " resumed";
    if (before) {
        out << " (" << session_state_name(before->state()) << ", " << before->rounds_committed()
            << " of " << plural(before->config().rounds(), "round") << " committed) from model "
            << short_id(before->latest_model_id());
    }
    if (options.rounds > 0) {
        out << ": " << plural(static_cast<std::uint64_t>(options.rounds), "more round");
    } else {
        out << ": the rounds it had left";
    }
    out << '\n';
    if (options.detach) {
        out << "session id " << id << "; watch it with `fedcli session status --watch`\n";
        return k_exit_success;
    }
    out << "following it (Ctrl-C detaches; the session keeps running)\n";
    out.flush();
    return follow_session(connection, id, out, closed);
}

Action setup_session_resume(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionResumeOptions>();
    command
        .add_option("id", options->session,
                    "Session id or unique prefix (default: the latest session)")
        ->type_name("ID");
    command
        .add_option("--rounds,-r", options->rounds,
                    "Rounds to run (0: the rounds the session had left)")
        ->type_name("N")
        ->capture_default_str();
    command.add_flag("--detach,-d", options->detach,
                     "Return once the session resumed instead of following it");
    add_combiner_option(command, options->combiner);
    command.footer(
        "Continues an interrupted, stopped or failed session from the last model it\n"
        "committed, with the same settings.\n"
        "Examples:\n"
        "  fedcli session resume            # the latest session, its remaining rounds\n"
        "  fedcli session resume 9c6b --rounds 5 --detach");
    std::ostream& out = streams.out;
    return [options, &out] { return session_resume(*options, out); };
}

// ---------------------------------------------------------------------------------------
// session list

int session_list(const ListingOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto sessions =
        connection.call(&Stub::ListSessions, v1::ListSessionsRequest{}, "listing the sessions");
    if (options.json) {
        print_json_array(out, sessions.sessions(), session_json);
        return k_exit_success;
    }
    if (sessions.sessions().empty()) {
        out << "no sessions on the combiner at " << connection.target()
            << " yet (start one with `fedcli session start --rounds N`)\n";
        return k_exit_success;
    }
    using Align = Table::Align;
    Table table({"id", "state", "rounds", "started", "duration", "model", "message"},
                {Align::left, Align::left, Align::right, Align::left, Align::right, Align::left,
                 Align::left});
    const std::int64_t now = now_unix_ms();
    for (const auto& session : sessions.sessions()) {
        std::string duration = "-";
        if (session.started_unix_ms() > 0) {
            const bool running = session.ended_unix_ms() <= 0;
            duration = duration_text(seconds_between(
                session.started_unix_ms(),
                running ? std::max(now, session.started_unix_ms()) : session.ended_unix_ms()));
            if (running) duration += " so far";
        }
        table.add_row(
            {short_id(session.session_id()), std::string(session_state_name(session.state())),
             std::to_string(session.rounds_committed()) + "/" +
                 std::to_string(session.config().rounds()),
             utc_time(session.started_unix_ms()), duration, short_id(session.latest_model_id()),
             session.message().empty() ? "-" : session.message()});
    }
    table.print(out);
    return k_exit_success;
}

Action setup_session_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ListingOptions>();
    add_listing_options(command, *options);
    command.footer(
        "Rounds are committed/asked. Oldest first.\n"
        "Example:\n  fedcli session list --json | jq '.[-1].session_id'");
    std::ostream& out = streams.out;
    return [options, &out] { return session_list(*options, out); };
}

// ---------------------------------------------------------------------------------------
// session status (and --watch)

struct SessionStatusOptions {
    ListingOptions listing;
    bool watch = false;
    double interval = 1.0;
};

nlohmann::ordered_json status_json(const v1::StatusResponse& status,
                                   const v1::ListRoundsResponse& rounds, ClientNames& names) {
    nlohmann::ordered_json json;
    json["combiner"] = status.combiner_version();
    json["session_id"] = status.session_id();
    json["state"] = session_state_name(status.session_state());
    json["current_round"] = status.current_round();
    json["rounds_total"] = status.rounds();
    json["clients_online"] = status.clients_online();
    json["clients_known"] = status.clients_known();
    json["package"] = status.package_sha256();
    json["latest_model"] = status.latest_model_id();
    json["message"] = status.message();
    json["insecure"] = status.insecure();
    json["session"] =
        status.has_session() ? session_json(status.session()) : nlohmann::ordered_json(nullptr);
    json["rounds"] = nlohmann::ordered_json::array();
    const NameLookup name = names.lookup();
    for (const auto& round : rounds.rounds()) json["rounds"].push_back(round_json(round, name));
    return json;
}

/// True when `out` is the process's standard output and that is a terminal.
bool is_terminal(const std::ostream& out) {
    return out.rdbuf() == std::cout.rdbuf() && ::isatty(STDOUT_FILENO) == 1;
}

std::size_t terminal_columns() {
    winsize size{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
    return 100;
}

/// Cuts `line` to `columns` - 1 bytes (not inside a UTF-8 sequence), so that it never wraps
/// and the redraw can count lines.
std::string fit(std::string line, std::size_t columns) {
    const std::size_t limit = columns > 1 ? columns - 1 : columns;
    if (line.size() <= limit) return line;
    std::size_t cut = limit;
    while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
    line.resize(cut);
    return line;
}

int session_watch(const SessionStatusOptions& options, std::ostream& out) {
    const std::string command = "fedcli session status";
    if (!std::isfinite(options.interval) || options.interval < 0.1 || options.interval > 3600) {
        throw UsageError(
            "--interval must be from 0.1 to 3600 seconds, found " + metric_number(options.interval),
            command);
    }
    dispatch::InterruptGuard interrupt;
    CombinerConnection connection(options.listing.combiner);
    const bool terminal = is_terminal(out);
    const auto started = std::chrono::steady_clock::now();
    std::size_t drawn = 0;  // lines of the previous frame (terminal)
    std::string last_line;  // the previous change line (not a terminal)
    while (true) {
        auto status = connection.status();
        const SessionView session = session_view(status);
        if (session.id.empty()) {
            throw Error("no session has run on the combiner at " + connection.target() +
                        " yet (start one with `fedcli session start --rounds N`)");
        }
        if (terminal) {
            const std::size_t columns = terminal_columns();
            auto lines = watch_view(status, now_unix_ms());
            if (session.state == v1::SESSION_STATE_RUNNING) {
                lines.push_back("(Ctrl-C stops watching; the session keeps running)");
            }
            if (drawn > 0) out << "\x1b[" << drawn << "F";  // to the start of the frame
            out << "\x1b[J";                                // clear it
            for (const auto& line : lines) out << fit(line, columns) << '\n';
            drawn = lines.size();
        } else {
            std::string line = watch_line(status);
            if (line != last_line) {
                out << util::utc_timestamp() << ' ' << line << '\n';
                last_line = std::move(line);
            }
        }
        out.flush();
        if (session.state != v1::SESSION_STATE_RUNNING) {
            const double seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
            if (session.state == v1::SESSION_STATE_FINISHED && session.committed) {
                out << "session " << short_id(session.id)
                    << " finished: " << committed_text(session) << " -> model "
                    << short_id(session.latest_model) << '\n';
                return k_exit_success;
            }
            return session_outcome(session, session.committed.value_or(0), seconds, out);
        }
        pollfd wait{interrupt.fd(), POLLIN, 0};
        if (::poll(&wait, 1, static_cast<int>(options.interval * 1000)) > 0) {
            out << "stopped watching; session " << short_id(session.id) << " keeps running\n";
            out.flush();
            return 128 + interrupt.signal();
        }
    }
}

int session_status(const SessionStatusOptions& options, std::ostream& out) {
    if (options.watch) return session_watch(options, out);
    CombinerConnection connection(options.listing.combiner);
    auto status = connection.status();
    auto rounds = connection.call(&Stub::ListRounds, v1::ListRoundsRequest{}, "listing the rounds");
    ClientNames names(connection);
    if (options.listing.json) {
        out << dump_json(status_json(status, rounds, names)) << '\n';
        return k_exit_success;
    }
    const SessionView session = session_view(status);
    out << "combiner  " << connection.target() << " (fedcli " << status.combiner_version() << ")\n";
    if (status.insecure()) {
        out << "WARNING   the combiner runs without authentication (--insecure): anyone who "
               "reaches it may act as operator or client\n";
    }
    if (session.id.empty()) {
        out << "session   none yet\n";
    } else {
        out << "session   " << short_id(session.id) << " " << session_state_name(session.state)
            << ", " << committed_text(session) << '\n';
    }
    out << "clients   " << status.clients_online() << " online, " << status.clients_known()
        << " known\n"
        << "package   " << (status.package_sha256().empty() ? "none" : status.package_sha256())
        << '\n'
        << "model     " << (session.latest_model.empty() ? "none" : session.latest_model) << '\n';
    if (!session.message.empty()) out << "message   " << session.message << '\n';
    if (rounds.rounds().empty()) return k_exit_success;

    out << '\n';
    using Align = Table::Align;
    Table table({"round", "state", "selected", "updates", "rejected", "examples", "time", "model"},
                {Align::right, Align::left, Align::right, Align::right, Align::right, Align::right,
                 Align::right, Align::left});
    const std::int64_t now = now_unix_ms();
    for (const auto& round : rounds.rounds()) {
        std::uint64_t examples = 0;
        for (const auto& update : round.updates()) {
            if (update.used()) examples += update.num_examples();
        }
        std::int64_t end = round.closed_unix_ms() > 0 ? round.closed_unix_ms() : now;
        table.add_row(
            {std::to_string(round.round_id()), std::string(round_state_name(round.state())),
             std::to_string(round.clients_selected()), std::to_string(round.updates_accepted()),
             std::to_string(round.rejected_size()), group_digits(examples),
             duration_text(seconds_between(round.started_unix_ms(), end)),
             short_id(round.output_model_id())});
    }
    table.print(out);
    bool heading = false;
    for (const auto& round : rounds.rounds()) {
        if (round.state() == v1::ROUND_STATE_FAILED && !round.reason().empty()) {
            if (!heading) out << "\nproblems:\n";
            heading = true;
            out << "  round " << round.round_id() << " failed: " << round.reason() << '\n';
        }
        for (const auto& rejected : round.rejected()) {
            if (!heading) out << "\nproblems:\n";
            heading = true;
            out << "  round " << round.round_id() << ": rejected update from "
                << names.describe(rejected.client_id()) << ": " << rejected.reason() << '\n';
        }
    }
    heading = false;
    for (const auto& round : rounds.rounds()) {
        for (const auto& validation : round.validations()) {
            if (!heading) out << "\nvalidation:\n";
            heading = true;
            out << "  round " << round.round_id() << ", " << names.describe(validation.client_id())
                << ": " << metrics_text(validation.metrics_json()) << '\n';
        }
    }
    return k_exit_success;
}

Action setup_session_status(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SessionStatusOptions>();
    add_listing_options(command, options->listing,
                        "Print one JSON object (rounds with accepted and rejected updates)");
    CLI::Option* watch =
        command.add_flag("--watch,-w", options->watch,
                         "Keep showing the session live until it ends (exit code 0 when it "
                         "finished, 1 otherwise)");
    command.add_option("--interval", options->interval, "Seconds between two looks with --watch")
        ->type_name("SECONDS")
        ->capture_default_str()
        ->needs(watch);
    watch->excludes("--json");
    command.footer(
        "--watch redraws a view on a terminal (progress of the current round: updates\n"
        "accepted of clients selected, time against the round timeout; rounds committed;\n"
        "the last event) and prints one line per change when the output is not a terminal.\n"
        "Examples:\n"
        "  fedcli session status --watch\n"
        "  fedcli session status --watch --interval 5 > session.log");
    std::ostream& out = streams.out;
    return [options, &out] { return session_status(*options, out); };
}

}  // namespace

void register_session_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_session_commands[] = {
        {"start", "Start a session of training rounds and follow it round by round",
         setup_session_start},
        {"status", "Show the latest session: rounds, updates, rejections, validation (--watch)",
         setup_session_status},
        {"stop", "Stop a session after its current round (or --now)", setup_session_stop},
        {"resume", "Continue an interrupted, stopped or failed session and follow it",
         setup_session_resume},
        {"list", "List the sessions a combiner ran: state, rounds, duration, model",
         setup_session_list},
    };
    add_group(app, "session", "Run training sessions on a combiner", k_session_commands, dispatch);
}

}  // namespace fedcli::cli
