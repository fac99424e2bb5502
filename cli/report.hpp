// The history of a session as tables and charts: the pure part of `fedcli rounds list`,
// `fedcli validations list` and `fedcli report`.
//
// Everything here works on protocol messages a caller already fetched (SessionInfo,
// RoundInfo) and returns values or text; nothing talks to a combiner, reads the clock or
// prints. Fields a combiner did not fill (0 or empty) come out as "-" rather than failing.
// Text from the combiner (metric and client names, messages, reasons) is escaped wherever
// it goes into HTML or SVG, so a hostile name cannot inject markup.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/proto/fedcli.pb.h"

namespace fedcli::cli {

/// Client id -> client name, for showing names instead of ids.
using ClientNameMap = std::map<std::string, std::string>;

/// Sum of num_examples over the round's accepted updates (used by the aggregator or not).
std::uint64_t round_examples(const fedcli::v1::RoundInfo& round);

/// The round's place in its session: "3", "3 (try 2)" for a retry, "-" when the combiner
/// did not say (session_round 0).
std::string session_round_text(const fedcli::v1::RoundInfo& round);

/// Each round's 1-based position in its session: RoundInfo.session_round where the combiner
/// filled it, else the number of committed rounds of the same session before it plus one
/// (rounds in the order given, oldest first).
std::vector<std::uint32_t> session_positions(const std::vector<fedcli::v1::RoundInfo>& rounds);

/// The columns of `rounds list` and of the report's round table.
const std::vector<std::string>& round_table_headers();
/// One row for round_table_headers(): round id, session round, state, selected, accepted,
/// rejected, examples, duration (until `now_unix_ms` while open), aggregator, output model
/// (short id), reason.
std::vector<std::string> round_table_cells(const fedcli::v1::RoundInfo& round,
                                           std::int64_t now_unix_ms);

/// One client's value of one metric in one round, and the weight it gets in the weighted
/// mean (see summarize_metrics).
struct MetricValue {
    std::string client_id;
    double value = 0;
    double weight = 1;
};

/// One metric of one round across the clients that validated it.
struct MetricSummary {
    std::string metric;
    std::vector<MetricValue> values;  ///< in the order the validations arrived
    double mean = 0;                  ///< plain mean of the values
    double weighted_mean = 0;         ///< sum(weight * value) / sum(weight)
    double min = 0;
    double max = 0;
    double total_weight = 0;
};

/// The name under which validation metrics report their example count; it is the weight,
/// not a metric, and summarize_metrics() does not list it.
inline constexpr std::string_view k_num_examples_key = "num_examples";

/// Summarises the validation metrics of one round, one entry per metric name (sorted by
/// name). A value counts when it is a JSON number (booleans, strings, arrays, objects and
/// metrics JSON that is not an object are ignored). Each client's weight is, in this order:
/// its metrics' "num_examples" when that is a positive number; else the num_examples of
/// the client's accepted training update in the same round when positive; else 1. An
/// empty `only_metric` keeps every metric.
std::vector<MetricSummary> summarize_metrics(const fedcli::v1::RoundInfo& round,
                                             std::string_view only_metric = {});

/// Every metric name that summarize_metrics() finds in any of the rounds, sorted.
std::vector<std::string> metric_names(const std::vector<fedcli::v1::RoundInfo>& rounds);

/// The columns of `validations list` and of the report's validation table.
const std::vector<std::string>& validation_table_headers();
/// One row for validation_table_headers(): round id, session round (`position`), metric,
/// clients, weighted mean, mean, min, max.
std::vector<std::string> validation_table_cells(const fedcli::v1::RoundInfo& round,
                                                std::uint32_t position,
                                                const MetricSummary& summary);

/// A number as tables print metrics: 4 significant digits ("0.9132", "1.235e+04").
std::string metric_number(double value);

/// Escapes text for HTML and XML content and attribute values: & < > " ' become entities;
/// control characters other than tab, newline and carriage return, and bytes that are not
/// valid UTF-8, become U+FFFD, so that the result is always well-formed.
std::string xml_escape(std::string_view text);

enum class ReportFormat { html, svg };

/// The format a report file name asks for by its extension (.html, .htm, .svg; any case).
std::optional<ReportFormat> report_format_for(const std::filesystem::path& file);
/// "html" or "svg" (as --format takes them).
std::optional<ReportFormat> parse_report_format(std::string_view name);

/// What a report is made of.
struct ReportInput {
    fedcli::v1::SessionInfo session;
    std::vector<fedcli::v1::RoundInfo> rounds;  ///< the session's rounds, oldest first
    ClientNameMap client_names;
    std::string generator;               ///< e.g. "fedcli 0.1.0"
    std::string combiner;                ///< e.g. "127.0.0.1:12080"
    std::int64_t generated_unix_ms = 0;  ///< when the report was made (0: not shown)
};

/// A self-contained report (no scripts, fonts, images or links to fetch). HTML: the
/// session summary, one line chart per validation metric (x = session round, y = weighted
/// mean across clients with a min-max band), a training chart (examples as bars, accepted
/// updates as a line), and the tables of rounds, validations and rejected updates. SVG: the
/// charts stacked in one image. Both are well-formed XML.
std::string render_report(const ReportInput& input, ReportFormat format);

}  // namespace fedcli::cli
