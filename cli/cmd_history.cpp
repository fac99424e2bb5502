// The history of a federation: `fedcli rounds list`, `fedcli validations list`,
// `fedcli logs` and `fedcli report`. The tables, the aggregation of validation metrics and
// the report itself are pure functions in cli/report.hpp; this file fetches what they need
// from a combiner and writes the result.
#include <CLI/CLI.hpp>
#include <atomic>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "cli/app.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "cli/report.hpp"
#include "cli/text.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/error.hpp"
#include "core/util/ids.hpp"
#include "core/util/suggest.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;

namespace {

/// "session 9c6bb4d0" for an id, "the latest session" for none.
std::string session_words(const std::string& id) {
    return id.empty() ? "the latest session" : "session " + short_id(id);
}

/// The rounds of one session (the latest when `session_id` is empty), or of every session.
std::vector<v1::RoundInfo> fetch_rounds(CombinerConnection& connection,
                                        const std::string& session_id, bool all_sessions) {
    v1::ListRoundsRequest request;
    request.set_session_id(session_id);
    request.set_all_sessions(all_sessions);
    auto response = connection.call(&Stub::ListRounds, request, "listing the rounds");
    return {response.rounds().begin(), response.rounds().end()};
}

/// Adds `--session ID` (a full id or a unique prefix of one).
void add_session_option(CLI::App& command, std::string& session, const std::string& what,
                        const std::string& fallback = "the latest") {
    command
        .add_option("--session,-s", session,
                    what + " of this session (id or unique prefix; default: " + fallback + ")")
        ->type_name("ID");
}

// ---------------------------------------------------------------------------------------
// rounds list

struct RoundsListOptions {
    ListingOptions listing;
    std::string session;
    bool all = false;
};

int rounds_list(const RoundsListOptions& options, std::ostream& out) {
    CombinerConnection connection(options.listing.combiner);
    const std::string id = resolve_session_id(connection, options.session, "fedcli rounds list");
    const auto rounds = fetch_rounds(connection, id, options.all);
    if (options.listing.json) {
        ClientNames names(connection);
        const NameLookup name = names.lookup();
        print_json_array(out, rounds,
                         [&name](const v1::RoundInfo& round) { return round_json(round, name); });
        return k_exit_success;
    }
    if (rounds.empty()) {
        out << "no rounds in " << (options.all ? "any session" : session_words(id))
            << " on the combiner at " << connection.target() << '\n';
        return k_exit_success;
    }
    using Align = Table::Align;
    std::vector<std::string> headers = round_table_headers();
    std::vector<Align> align = {Align::right, Align::left,  Align::left,  Align::right,
                                Align::right, Align::right, Align::right, Align::right,
                                Align::left,  Align::left,  Align::left};
    if (options.all) {
        headers.insert(headers.begin(), "session");
        align.insert(align.begin(), Align::left);
    }
    Table table(headers, align);
    const std::int64_t now = util::now_unix_ms();
    std::size_t committed = 0;
    std::size_t failed = 0;
    for (const auto& round : rounds) {
        auto cells = round_table_cells(round, now);
        if (options.all) cells.insert(cells.begin(), short_id(round.session_id()));
        table.add_row(std::move(cells));
        committed += round.state() == v1::ROUND_STATE_COMMITTED ? 1 : 0;
        failed += round.state() == v1::ROUND_STATE_FAILED ? 1 : 0;
    }
    table.print(out);
    out << plural(rounds.size(), "round") << ": " << committed << " committed, " << failed
        << " failed";
    if (const std::size_t open = rounds.size() - committed - failed; open > 0) {
        out << ", " << open << " open or unknown";
    }
    out << '\n';
    return k_exit_success;
}

Action setup_rounds_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<RoundsListOptions>();
    add_session_option(command, options->session, "Rounds");
    command.add_flag("--all", options->all, "Rounds of every session, oldest first")
        ->excludes("--session");
    add_listing_options(command, options->listing,
                        "Print one JSON array of rounds (with updates, rejections and "
                        "validations)");
    command.footer(
        "Columns: session round is the round's place in its session, with the try when a\n"
        "failed round was retried (\"3 (try 2)\"); examples sums the accepted updates'\n"
        "num_examples; model is the round's output; reason says why a round failed.\n"
        "Examples:\n"
        "  fedcli rounds list\n"
        "  fedcli rounds list --all --json | jq '[.[] | select(.state == \"failed\")]'");
    std::ostream& out = streams.out;
    return [options, &out] { return rounds_list(*options, out); };
}

// ---------------------------------------------------------------------------------------
// validations list

struct ValidationsListOptions {
    ListingOptions listing;
    std::string session;
    std::string metric;
    CLI::Option* metric_option = nullptr;
};

int validations_list(const ValidationsListOptions& options, std::ostream& out) {
    const std::string command = "fedcli validations list";
    if (options.metric_option->count() > 0 && options.metric.empty()) {
        throw UsageError("--metric needs a metric name, e.g. --metric test_accuracy", command);
    }
    CombinerConnection connection(options.listing.combiner);
    const std::string id = resolve_session_id(connection, options.session, command);
    const auto rounds = fetch_rounds(connection, id, false);
    const auto names_found = metric_names(rounds);
    if (!options.metric.empty() && !names_found.empty() &&
        std::find(names_found.begin(), names_found.end(), options.metric) == names_found.end()) {
        std::string message =
            "no validation metric '" + options.metric + "' in " + session_words(id);
        if (auto suggestion = util::closest_match(options.metric, names_found)) {
            message += "; did you mean '" + *suggestion + "'?";
        }
        std::string all;
        for (const auto& name : names_found) all += (all.empty() ? "" : ", ") + name;
        throw Error(message + " (metrics: " + all + ")");
    }
    const auto positions = session_positions(rounds);
    ClientNames names(connection);
    if (options.listing.json) {
        auto json = nlohmann::ordered_json::array();
        for (std::size_t i = 0; i < rounds.size(); ++i) {
            for (const auto& summary : summarize_metrics(rounds[i], options.metric)) {
                auto values = nlohmann::ordered_json::array();
                for (const auto& value : summary.values) {
                    values.push_back({{"client_id", value.client_id},
                                      {"client_name", names.name(value.client_id)},
                                      {"value", value.value},
                                      {"weight", value.weight}});
                }
                json.push_back({{"round_id", rounds[i].round_id()},
                                {"session_id", rounds[i].session_id()},
                                {"session_round", positions[i]},
                                {"metric", summary.metric},
                                {"clients", summary.values.size()},
                                {"weighted_mean", summary.weighted_mean},
                                {"mean", summary.mean},
                                {"min", summary.min},
                                {"max", summary.max},
                                {"total_weight", summary.total_weight},
                                {"values", std::move(values)}});
            }
        }
        out << dump_json(json) << '\n';
        return k_exit_success;
    }
    if (names_found.empty()) {
        out << "no validation metrics in " << session_words(id) << " on the combiner at "
            << connection.target() << " (sessions started with --validate collect them)\n";
        return k_exit_success;
    }
    using Align = Table::Align;
    Table table(validation_table_headers(),
                {Align::right, Align::right, Align::left, Align::right, Align::right, Align::right,
                 Align::right, Align::right});
    for (std::size_t i = 0; i < rounds.size(); ++i) {
        for (const auto& summary : summarize_metrics(rounds[i], options.metric)) {
            table.add_row(validation_table_cells(rounds[i], positions[i], summary));
        }
    }
    table.print(out);
    return k_exit_success;
}

Action setup_validations_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ValidationsListOptions>();
    add_session_option(command, options->session, "Validations");
    options->metric_option =
        command.add_option("--metric,-m", options->metric, "Only this metric")->type_name("NAME");
    add_listing_options(command, options->listing,
                        "Print one JSON array: per round and metric, the summary and each "
                        "client's value and weight");
    command.footer(
        "Per round and metric: the clients that reported it, the mean weighted by examples,\n"
        "the plain mean, the lowest and the highest value. A client's weight is its metrics'\n"
        "\"num_examples\" when that is a positive number, else the num_examples of its\n"
        "accepted training update in the same round, else 1. Values that are not numbers are\n"
        "ignored; num_examples itself is the weight, not a metric.\n"
        "Examples:\n"
        "  fedcli validations list --metric test_accuracy\n"
        "  fedcli validations list --session 9c6b --json");
    std::ostream& out = streams.out;
    return [options, &out] { return validations_list(*options, out); };
}

// ---------------------------------------------------------------------------------------
// logs

struct LogsOptions {
    ListingOptions listing;
    std::string client;
    CLI::Option* client_option = nullptr;
    long long round = 0;
    CLI::Option* round_option = nullptr;
    std::string session;
    bool follow = false;
    long long tail = 0;
    CLI::Option* tail_option = nullptr;
};

/// Cancels the call registered with it, from the signal thread: the context is registered
/// only while it is alive.
class Canceller {
  public:
    void cancel() {
        std::lock_guard lock(m_mutex);
        m_cancelled = true;
        if (m_context) m_context->TryCancel();
    }
    void set(grpc::ClientContext* context) {
        std::lock_guard lock(m_mutex);
        m_context = context;
        if (m_context && m_cancelled) m_context->TryCancel();
    }

  private:
    std::mutex m_mutex;
    grpc::ClientContext* m_context = nullptr;
    bool m_cancelled = false;
};

int logs(const LogsOptions& options, std::ostream& out, std::ostream& err) {
    const std::string command = "fedcli logs";
    if (options.client_option->count() > 0 && options.client.empty()) {
        throw UsageError("--client needs a client name or id prefix", command);
    }
    if (options.round_option->count() > 0 && options.round < 1) {
        throw UsageError(
            "--round must be a round id (1 or more), found " + std::to_string(options.round),
            command);
    }
    if (options.tail_option->count() > 0 &&
        (options.tail < 1 || options.tail > std::numeric_limits<std::uint32_t>::max())) {
        throw UsageError(
            "--tail must be a number of lines (1 or more), found " + std::to_string(options.tail),
            command);
    }
    // Before any gRPC thread starts, so that they inherit the blocked signals and Ctrl-C
    // reaches the waiter, which cancels the call instead of killing the process mid-line.
    Canceller canceller;
    dispatch::SignalWaiter signals;
    signals.start([&canceller](int) { canceller.cancel(); });

    CombinerConnection connection(options.listing.combiner);
    v1::GetLogsRequest request;
    request.set_client(options.client);
    request.set_round_id(static_cast<std::uint64_t>(options.round));
    request.set_session_id(resolve_session_id(connection, options.session, command));
    request.set_follow(options.follow);
    request.set_tail(static_cast<std::uint32_t>(options.tail));

    // Without --follow, --json prints one array; with it (the stream has no end) one JSON
    // object per line.
    const bool json_array = options.listing.json && !options.follow;
    auto array = nlohmann::ordered_json::array();
    std::uint64_t lines = 0;
    grpc::Status status;
    {
        grpc::ClientContext context;
        canceller.set(&context);
        auto reader = connection.control().GetLogs(&context, request);
        v1::LogBatch batch;
        while (reader->Read(&batch)) {
            for (const auto& entry : batch.entries()) {
                ++lines;
                if (json_array) {
                    array.push_back(log_entry_json(entry));
                } else if (options.listing.json) {
                    out << dump_json(log_entry_json(entry)) << '\n';
                } else {
                    out << log_line_text(entry) << '\n';
                }
            }
            out.flush();
        }
        status = reader->Finish();
        canceller.set(nullptr);
    }
    if (json_array) out << dump_json(array) << '\n';
    out.flush();
    if (signals.received() != 0) return 128 + signals.received();
    if (!status.ok()) connection.fail(status, "reading the logs");
    if (lines == 0 && !options.listing.json) {
        err << "no log lines on the combiner at " << connection.target()
            << (options.client.empty() && options.round == 0 && options.session.empty()
                    ? ""
                    : " match the filters")
            << '\n';
    }
    return k_exit_success;
}

Action setup_logs(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<LogsOptions>();
    options->client_option =
        command
            .add_option("--client,-c", options->client,
                        "Only lines of this client (name, or id or a prefix of it)")
            ->type_name("NAME");
    options->round_option =
        command.add_option("--round,-r", options->round, "Only lines of this round id")
            ->type_name("N");
    add_session_option(command, options->session, "Only lines", "every session");
    command.add_flag("--follow,-f", options->follow,
                     "Keep printing new lines as clients send them, until Ctrl-C");
    options->tail_option =
        command.add_option("--tail,-n", options->tail, "Start with the last N matching lines")
            ->type_name("N");
    add_listing_options(command, options->listing,
                        "Print one JSON array of entries (with --follow: one JSON object per "
                        "line)");
    command.footer(
        "Prints what the clients' entry points wrote, as the clients streamed it:\n"
        "  <time> <client> r<round> <train|validate> | <line>\n"
        "with '!' instead of '|' for a line written to stderr. Without --follow it prints\n"
        "the stored lines and exits.\n"
        "Examples:\n"
        "  fedcli logs --client c1 --round 3\n"
        "  fedcli logs -f --tail 20");
    std::ostream& out = streams.out;
    std::ostream& err = streams.err;
    return [options, &out, &err] { return logs(*options, out, err); };
}

// ---------------------------------------------------------------------------------------
// report

struct ReportOptions {
    std::string combiner = k_default_combiner;
    std::string session;
    std::filesystem::path output;
    std::string format;
    CLI::Option* format_option = nullptr;
};

/// The format the options ask for; UsageError when it is unclear.
ReportFormat report_format(const ReportOptions& options, const std::string& command) {
    if (options.format_option->count() > 0) {
        if (auto format = parse_report_format(options.format)) return *format;
        throw UsageError("--format must be html or svg, found '" + options.format + "'", command);
    }
    if (auto format = report_format_for(options.output)) return *format;
    throw UsageError("cannot tell the report format from '" + options.output.string() +
                         "': name the file .html or .svg, or give --format html|svg",
                     command);
}

int report(const ReportOptions& options, std::ostream& out) {
    const std::string command = "fedcli report";
    const ReportFormat format = report_format(options, command);
    if (std::filesystem::is_directory(options.output)) {
        throw UsageError("-o " + options.output.string() + " is a folder; give a file name",
                         command);
    }
    CombinerConnection connection(options.combiner);
    const std::string id = resolve_session_id(connection, options.session, command);
    auto session = find_session(connection, id);
    if (!session) {
        throw Error(id.empty() ? "no session has run on the combiner at " + connection.target() +
                                     " yet: nothing to report"
                               : "the combiner at " + connection.target() +
                                     " does not list session " + short_id(id));
    }
    ReportInput input;
    input.session = *session;
    input.rounds = fetch_rounds(connection, session->session_id(), false);
    ClientNames names(connection);
    input.client_names = names.all();
    input.generator = "fedcli " + std::string(version());
    input.combiner = connection.target();
    input.generated_unix_ms = util::now_unix_ms();
    const std::string text = render_report(input, format);

    const std::filesystem::path& file = options.output;
    std::filesystem::path temporary = file;
    temporary += ".tmp";
    {
        std::ofstream stream(temporary, std::ios::binary | std::ios::trunc);
        stream << text;
        stream.close();
        if (!stream) {
            std::error_code ignored;
            std::filesystem::remove(temporary, ignored);
            throw Error(file.string() + ": cannot write the report");
        }
    }
    std::error_code error;
    std::filesystem::rename(temporary, file, error);
    if (error) {
        std::filesystem::remove(temporary, error);
        throw Error(file.string() + ": cannot write the report: " + error.message());
    }
    const auto metrics = metric_names(input.rounds);
    out << "report of session " << short_id(session->session_id()) << " ("
        << session_state_name(session->state()) << ", " << session->rounds_committed() << " of "
        << plural(session->config().rounds(), "round") << " committed, "
        << (metrics.empty() ? std::string("no validation metrics")
                            : plural(metrics.size(), "metric"))
        << ") -> " << file.string() << " (" << human_bytes(text.size()) << ")\n";
    return k_exit_success;
}

Action setup_report(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ReportOptions>();
    add_session_option(command, options->session, "Report");
    command.add_option("--output,-o", options->output, "Write the report to FILE (.html or .svg)")
        ->type_name("FILE")
        ->required();
    options->format_option =
        command
            .add_option("--format", options->format,
                        "html or svg (default: from the file name's extension)")
            ->type_name("FORMAT");
    add_combiner_option(command, options->combiner);
    command.footer(
        "A self-contained file (no scripts, fonts or links to fetch). HTML: the session's\n"
        "settings and outcome, a chart per validation metric (weighted mean across clients\n"
        "by session round, with the min-max band), a training chart (examples and accepted\n"
        "updates per round) and the tables of rounds and validations. SVG: the charts.\n"
        "Examples:\n"
        "  fedcli report -o report.html && xdg-open report.html\n"
        "  fedcli report --session 9c6b -o charts.svg");
    std::ostream& out = streams.out;
    return [options, &out] { return report(*options, out); };
}

}  // namespace

void register_history_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_rounds_commands[] = {
        {"list", "List the rounds of a session (or --all): state, updates, examples, reason",
         setup_rounds_list},
    };
    add_group(app, "rounds", "See the rounds sessions ran", k_rounds_commands, dispatch);

    static constexpr CommandSpec k_validations_commands[] = {
        {"list", "Validation metrics per round: clients, weighted mean, mean, min, max",
         setup_validations_list},
    };
    add_group(app, "validations", "See the validation metrics clients reported",
              k_validations_commands, dispatch);

    static constexpr CommandSpec k_commands[] = {
        {"logs", "Print the output lines clients' entry points wrote (--follow to stream)",
         setup_logs},
        {"report", "Write an HTML or SVG report of a session: summary, charts, tables",
         setup_report},
    };
    add_commands(app, k_commands, dispatch);
}

}  // namespace fedcli::cli
