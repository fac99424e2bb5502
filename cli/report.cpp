#include "cli/report.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <sstream>

#include "cli/federation.hpp"
#include "cli/text.hpp"
#include "core/util/ids.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;

std::uint64_t round_examples(const v1::RoundInfo& round) {
    std::uint64_t examples = 0;
    for (const auto& update : round.updates()) examples += update.num_examples();
    return examples;
}

std::string session_round_text(const v1::RoundInfo& round) {
    if (round.session_round() == 0) return "-";
    std::string text = std::to_string(round.session_round());
    if (round.attempt() > 1) text += " (try " + std::to_string(round.attempt()) + ")";
    return text;
}

std::vector<std::uint32_t> session_positions(const std::vector<v1::RoundInfo>& rounds) {
    std::vector<std::uint32_t> positions;
    positions.reserve(rounds.size());
    std::map<std::string, std::uint32_t> committed;  // per session, so far
    for (const auto& round : rounds) {
        std::uint32_t& before = committed[round.session_id()];
        positions.push_back(round.session_round() > 0 ? round.session_round() : before + 1);
        if (round.state() == v1::ROUND_STATE_COMMITTED) ++before;
    }
    return positions;
}

const std::vector<std::string>& round_table_headers() {
    static const std::vector<std::string> k_headers = {
        "round",    "session round", "state",      "selected", "accepted", "rejected",
        "examples", "duration",      "aggregator", "model",    "reason"};
    return k_headers;
}

std::vector<std::string> round_table_cells(const v1::RoundInfo& round, std::int64_t now_unix_ms) {
    std::string duration = "-";
    if (round.started_unix_ms() > 0) {
        const bool open = round.closed_unix_ms() <= 0;
        const std::int64_t end =
            open ? std::max(now_unix_ms, round.started_unix_ms()) : round.closed_unix_ms();
        duration = duration_text(seconds_between(round.started_unix_ms(), end));
        if (open) duration += " so far";
    }
    return {std::to_string(round.round_id()),
            session_round_text(round),
            std::string(round_state_name(round.state())),
            std::to_string(round.clients_selected()),
            std::to_string(round.updates_accepted()),
            std::to_string(round.rejected_size()),
            group_digits(round_examples(round)),
            duration,
            round.aggregator().empty() ? "-" : round.aggregator(),
            short_id(round.output_model_id()),
            round.reason().empty() ? "-" : round.reason()};
}

// ---------------------------------------------------------------------------------------
// Validation metrics

namespace {

/// The positive number under `key` of a JSON object, if there is one.
std::optional<double> positive_number(const nlohmann::json& object, std::string_view key) {
    auto found = object.find(key);
    if (found == object.end() || !found->is_number()) return std::nullopt;
    double value = found->get<double>();
    if (!std::isfinite(value) || value <= 0) return std::nullopt;
    return value;
}

nlohmann::json parse_object(const std::string& text) {
    auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    return json.is_object() ? json : nlohmann::json::object();
}

}  // namespace

std::vector<MetricSummary> summarize_metrics(const v1::RoundInfo& round,
                                             std::string_view only_metric) {
    std::map<std::string, MetricSummary> by_name;
    for (const auto& validation : round.validations()) {
        const nlohmann::json metrics = parse_object(validation.metrics_json());
        double weight = 1;
        if (auto reported = positive_number(metrics, k_num_examples_key)) {
            weight = *reported;
        } else {
            for (const auto& update : round.updates()) {
                if (update.client_id() == validation.client_id() && update.num_examples() > 0) {
                    weight = static_cast<double>(update.num_examples());
                    break;
                }
            }
        }
        for (const auto& [name, value] : metrics.items()) {
            if (name == k_num_examples_key || !value.is_number()) continue;
            if (!only_metric.empty() && name != only_metric) continue;
            const double number = value.get<double>();
            if (!std::isfinite(number)) continue;
            MetricSummary& summary = by_name[name];
            summary.metric = name;
            summary.values.push_back({validation.client_id(), number, weight});
        }
    }
    std::vector<MetricSummary> summaries;
    for (auto& [name, summary] : by_name) {
        double sum = 0;
        double weighted_sum = 0;
        summary.min = std::numeric_limits<double>::infinity();
        summary.max = -std::numeric_limits<double>::infinity();
        for (const auto& value : summary.values) {
            sum += value.value;
            weighted_sum += value.weight * value.value;
            summary.total_weight += value.weight;
            summary.min = std::min(summary.min, value.value);
            summary.max = std::max(summary.max, value.value);
        }
        summary.mean = sum / static_cast<double>(summary.values.size());
        summary.weighted_mean = weighted_sum / summary.total_weight;
        summaries.push_back(std::move(summary));
    }
    return summaries;
}

std::vector<std::string> metric_names(const std::vector<v1::RoundInfo>& rounds) {
    std::set<std::string> names;
    for (const auto& round : rounds) {
        for (const auto& summary : summarize_metrics(round)) names.insert(summary.metric);
    }
    return {names.begin(), names.end()};
}

const std::vector<std::string>& validation_table_headers() {
    static const std::vector<std::string> k_headers = {
        "round", "session round", "metric", "clients", "weighted mean", "mean", "min", "max"};
    return k_headers;
}

std::vector<std::string> validation_table_cells(const v1::RoundInfo& round, std::uint32_t position,
                                                const MetricSummary& summary) {
    return {std::to_string(round.round_id()),
            std::to_string(position),
            summary.metric,
            std::to_string(summary.values.size()),
            metric_number(summary.weighted_mean),
            metric_number(summary.mean),
            metric_number(summary.min),
            metric_number(summary.max)};
}

std::string metric_number(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.4g", value);
    return text;
}

// ---------------------------------------------------------------------------------------
// Escaping

std::string xml_escape(std::string_view text) {
    static constexpr std::string_view k_replacement = "\xEF\xBF\xBD";  // U+FFFD
    std::string escaped;
    escaped.reserve(text.size() + text.size() / 8);
    std::size_t i = 0;
    while (i < text.size()) {
        const auto byte = static_cast<unsigned char>(text[i]);
        if (byte < 0x80) {
            switch (byte) {
                case '&':
                    escaped += "&amp;";
                    break;
                case '<':
                    escaped += "&lt;";
                    break;
                case '>':
                    escaped += "&gt;";
                    break;
                case '"':
                    escaped += "&quot;";
                    break;
                case '\'':
                    escaped += "&#39;";
                    break;
                default:
                    if (byte < 0x20 && byte != '\t' && byte != '\n' && byte != '\r') {
                        escaped += k_replacement;
                    } else {
                        escaped += static_cast<char>(byte);
                    }
            }
            ++i;
            continue;
        }
        // A multi-byte UTF-8 sequence: well-formed (no overlong forms, no surrogates, at
        // most U+10FFFF) and a character XML allows (not U+FFFE or U+FFFF), else replaced.
        std::size_t length = 0;
        std::uint32_t code = 0;
        if (byte >= 0xC2 && byte <= 0xDF) {
            length = 2;
            code = byte & 0x1F;
        } else if (byte >= 0xE0 && byte <= 0xEF) {
            length = 3;
            code = byte & 0x0F;
        } else if (byte >= 0xF0 && byte <= 0xF4) {
            length = 4;
            code = byte & 0x07;
        }
        bool valid = length > 0 && i + length <= text.size();
        for (std::size_t k = 1; valid && k < length; ++k) {
            const auto next = static_cast<unsigned char>(text[i + k]);
            valid = (next & 0xC0) == 0x80;
            code = (code << 6) | (next & 0x3F);
        }
        if (valid) {
            valid = !(length == 3 && code < 0x800) && !(length == 4 && code < 0x10000) &&
                    code <= 0x10FFFF && !(code >= 0xD800 && code <= 0xDFFF) && code != 0xFFFE &&
                    code != 0xFFFF;
        }
        if (valid) {
            escaped.append(text.substr(i, length));
            i += length;
        } else {
            escaped += k_replacement;
            ++i;
        }
    }
    return escaped;
}

// ---------------------------------------------------------------------------------------
// Report

std::optional<ReportFormat> parse_report_format(std::string_view name) {
    const std::string lower = util::lowercase(name);
    if (lower == "html") return ReportFormat::html;
    if (lower == "svg") return ReportFormat::svg;
    return std::nullopt;
}

std::optional<ReportFormat> report_format_for(const std::filesystem::path& file) {
    const std::string extension = util::lowercase(file.extension().string());
    if (extension == ".html" || extension == ".htm") return ReportFormat::html;
    if (extension == ".svg") return ReportFormat::svg;
    return std::nullopt;
}

namespace {

constexpr int k_chart_width = 720;
constexpr int k_chart_height = 320;
constexpr int k_margin_left = 72;
constexpr int k_margin_top = 60;
constexpr int k_margin_bottom = 52;
constexpr const char* k_palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                     "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};
constexpr const char* k_font = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";

struct ChartPoint {
    double x = 0;
    double y = 0;
    double low = 0;  ///< band, when the series has one
    double high = 0;
    std::string tip;  ///< tooltip text (raw; escaped when written)
};

struct ChartSeries {
    enum class Kind { line, bars };
    std::string name;
    std::string color;
    Kind kind = Kind::line;
    bool band = false;        ///< draw low..high as a shaded band
    bool right_axis = false;  ///< scaled on the right-hand axis
    bool from_zero = false;   ///< its axis starts at 0
    bool counts = false;      ///< whole numbers: its axis has whole-number ticks
    std::vector<ChartPoint> points;
};

struct Chart {
    std::string title;
    std::string x_label;
    std::string y_label;
    std::string right_label;
    std::vector<ChartSeries> series;
};

struct Axis {
    double low = 0;
    double high = 1;
    double step = 1;
};

double nice_step(double raw) {
    if (!(raw > 0) || !std::isfinite(raw)) return 1;
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    const double fraction = raw / magnitude;
    const double nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
    return nice * magnitude;
}

/// A value axis covering [low, high] with about five round ticks (whole numbers for
/// `counts`) and a little room above the highest value.
Axis value_axis(double low, double high, bool from_zero, bool counts) {
    if (from_zero) low = std::min(low, 0.0);
    if (!(high > low)) {
        const double pad = low == 0 ? 1 : std::abs(low) * 0.1;
        low -= from_zero && low == 0 ? 0 : pad;
        high += pad;
    } else {
        high += (high - low) * 0.04;
    }
    Axis axis;
    axis.step = nice_step((high - low) / 5);
    if (counts) axis.step = std::max(1.0, std::round(axis.step));
    axis.low = std::floor(low / axis.step + 1e-9) * axis.step;
    axis.high = std::ceil(high / axis.step - 1e-9) * axis.step;
    if (!(axis.high > axis.low)) axis.high = axis.low + axis.step;
    return axis;
}

std::string tick_text(double value, double step) {
    const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
    if (std::abs(value) < step * 1e-6) value = 0;
    char text[48];
    std::snprintf(text, sizeof text, "%.*f", std::min(decimals, 12), value);
    return text;
}

std::string coordinate(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f", value);
    return text;
}

/// The chart's SVG elements (without the enclosing <svg>), in a box of
/// k_chart_width x k_chart_height.
std::string chart_body(const Chart& chart) {
    const bool right_axis =
        std::any_of(chart.series.begin(), chart.series.end(),
                    [](const ChartSeries& series) { return series.right_axis; });
    const int margin_right = right_axis ? 72 : 28;
    const double plot_width = k_chart_width - k_margin_left - margin_right;
    const double plot_height = k_chart_height - k_margin_top - k_margin_bottom;

    // Scales: x over whole rounds with half a round of room on each side.
    double x_min = std::numeric_limits<double>::infinity();
    double x_max = -x_min;
    double lows[2] = {x_min, x_min};
    double highs[2] = {-x_min, -x_min};
    bool zero[2] = {false, false};
    bool counts[2] = {false, false};
    for (const auto& series : chart.series) {
        const int side = series.right_axis ? 1 : 0;
        zero[side] = zero[side] || series.from_zero;
        counts[side] = counts[side] || series.counts;
        for (const auto& point : series.points) {
            x_min = std::min(x_min, point.x);
            x_max = std::max(x_max, point.x);
            lows[side] = std::min({lows[side], point.y, series.band ? point.low : point.y});
            highs[side] = std::max({highs[side], point.y, series.band ? point.high : point.y});
        }
    }
    if (!std::isfinite(x_min)) {
        x_min = 1;
        x_max = 1;
    }
    for (int side = 0; side < 2; ++side) {
        if (!std::isfinite(lows[side])) {
            lows[side] = 0;
            highs[side] = 1;
        }
    }
    const double x_low = x_min - 0.5;
    const double x_high = x_max + 0.5;
    const Axis axes[2] = {value_axis(lows[0], highs[0], zero[0], counts[0]),
                          value_axis(lows[1], highs[1], zero[1], counts[1])};
    auto px = [&](double x) { return k_margin_left + (x - x_low) / (x_high - x_low) * plot_width; };
    auto py = [&](double y, int side) {
        const Axis& axis = axes[side];
        return k_margin_top + plot_height - (y - axis.low) / (axis.high - axis.low) * plot_height;
    };
    const double plot_bottom = k_margin_top + plot_height;
    const double plot_right = k_margin_left + plot_width;

    std::ostringstream svg;
    svg << "<rect x=\"0\" y=\"0\" width=\"" << k_chart_width << "\" height=\"" << k_chart_height
        << "\" fill=\"#ffffff\"/>\n";
    svg << "<text x=\"" << k_margin_left << "\" y=\"24\" font-size=\"15\" font-weight=\"bold\">"
        << xml_escape(chart.title) << "</text>\n";

    // Legend, one entry per series (and its band), left to right.
    double legend_x = k_margin_left;
    auto legend = [&](const std::string& label, const std::string& swatch) {
        svg << "<g transform=\"translate(" << coordinate(legend_x) << ",38)\">" << swatch
            << "<text x=\"22\" y=\"10\" font-size=\"12\">" << xml_escape(label) << "</text></g>\n";
        legend_x += 34 + 7.0 * static_cast<double>(label.size());
    };
    for (const auto& series : chart.series) {
        if (series.kind == ChartSeries::Kind::bars) {
            legend(series.name, "<rect x=\"0\" y=\"1\" width=\"16\" height=\"10\" fill=\"" +
                                    series.color + "\" fill-opacity=\"0.55\"/>");
        } else {
            legend(series.name, "<line x1=\"0\" y1=\"6\" x2=\"16\" y2=\"6\" stroke=\"" +
                                    series.color + "\" stroke-width=\"2\"/><circle cx=\"8\" " +
                                    "cy=\"6\" r=\"3\" fill=\"" + series.color + "\"/>");
        }
        if (series.band) {
            legend("min-max across clients",
                   "<rect x=\"0\" y=\"1\" width=\"16\" height=\"10\" "
                   "fill=\"" +
                       series.color + "\" fill-opacity=\"0.18\"/>");
        }
    }

    // Grid, ticks and tick labels.
    svg << "<g font-size=\"11\" fill=\"#444444\">\n";
    for (int side = 0; side < 2; ++side) {
        if (side == 1 && !right_axis) break;
        const Axis& axis = axes[side];
        for (double tick = axis.low; tick <= axis.high + axis.step * 1e-6; tick += axis.step) {
            const double y = py(tick, side);
            if (side == 0) {
                svg << "<line x1=\"" << k_margin_left << "\" y1=\"" << coordinate(y) << "\" x2=\""
                    << coordinate(plot_right) << "\" y2=\"" << coordinate(y)
                    << "\" stroke=\"#e4e4e4\"/>";
                svg << "<text x=\"" << k_margin_left - 6 << "\" y=\"" << coordinate(y + 4)
                    << "\" text-anchor=\"end\">" << tick_text(tick, axis.step) << "</text>\n";
            } else {
                svg << "<text x=\"" << coordinate(plot_right + 6) << "\" y=\"" << coordinate(y + 4)
                    << "\">" << tick_text(tick, axis.step) << "</text>\n";
            }
        }
    }
    const double x_step = std::max(1.0, std::ceil(nice_step((x_max - x_min) / 10)));
    for (double tick = std::ceil(x_min / x_step) * x_step; tick <= x_max + 1e-9; tick += x_step) {
        const double x = px(tick);
        svg << "<line x1=\"" << coordinate(x) << "\" y1=\"" << coordinate(plot_bottom) << "\" x2=\""
            << coordinate(x) << "\" y2=\"" << coordinate(plot_bottom + 5)
            << "\" stroke=\"#444444\"/>";
        svg << "<text x=\"" << coordinate(x) << "\" y=\"" << coordinate(plot_bottom + 18)
            << "\" text-anchor=\"middle\">" << tick_text(tick, 1) << "</text>\n";
    }
    svg << "</g>\n";
    // Axes and their labels.
    svg << "<path d=\"M" << k_margin_left << " " << k_margin_top << " V" << coordinate(plot_bottom)
        << " H" << coordinate(plot_right) << (right_axis ? " V" + std::to_string(k_margin_top) : "")
        << "\" fill=\"none\" stroke=\"#444444\"/>\n";
    svg << "<text x=\"" << coordinate(k_margin_left + plot_width / 2) << "\" y=\""
        << k_chart_height - 10 << "\" text-anchor=\"middle\" font-size=\"12\">"
        << xml_escape(chart.x_label) << "</text>\n";
    const double middle = k_margin_top + plot_height / 2;
    svg << "<text transform=\"translate(16," << coordinate(middle)
        << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">" << xml_escape(chart.y_label)
        << "</text>\n";
    if (right_axis) {
        svg << "<text transform=\"translate(" << k_chart_width - 12 << "," << coordinate(middle)
            << ") rotate(90)\" text-anchor=\"middle\" font-size=\"12\">"
            << xml_escape(chart.right_label) << "</text>\n";
    }

    // Data: bars first, then bands, then lines and points on top.
    const double slot = plot_width / (x_high - x_low);
    for (const auto& series : chart.series) {
        if (series.kind != ChartSeries::Kind::bars) continue;
        const int side = series.right_axis ? 1 : 0;
        const double width = std::min(40.0, slot * 0.6);
        for (const auto& point : series.points) {
            const double top = py(std::max(point.y, axes[side].low), side);
            const double base = py(std::max(0.0, axes[side].low), side);
            svg << "<rect x=\"" << coordinate(px(point.x) - width / 2) << "\" y=\""
                << coordinate(std::min(top, base)) << "\" width=\"" << coordinate(width)
                << "\" height=\"" << coordinate(std::abs(base - top)) << "\" fill=\""
                << series.color << "\" fill-opacity=\"0.55\"><title>" << xml_escape(point.tip)
                << "</title></rect>\n";
        }
    }
    for (const auto& series : chart.series) {
        if (!series.band || series.points.empty()) continue;
        const int side = series.right_axis ? 1 : 0;
        if (series.points.size() == 1) {
            const auto& point = series.points.front();
            svg << "<rect x=\"" << coordinate(px(point.x) - 6) << "\" y=\""
                << coordinate(py(point.high, side)) << "\" width=\"12\" height=\""
                << coordinate(py(point.low, side) - py(point.high, side)) << "\" fill=\""
                << series.color << "\" fill-opacity=\"0.18\"/>\n";
            continue;
        }
        svg << "<polygon points=\"";
        for (const auto& point : series.points) {
            svg << coordinate(px(point.x)) << "," << coordinate(py(point.high, side)) << " ";
        }
        for (auto point = series.points.rbegin(); point != series.points.rend(); ++point) {
            svg << coordinate(px(point->x)) << "," << coordinate(py(point->low, side)) << " ";
        }
        svg << "\" fill=\"" << series.color << "\" fill-opacity=\"0.18\" stroke=\"none\"/>\n";
    }
    for (const auto& series : chart.series) {
        if (series.kind != ChartSeries::Kind::line) continue;
        const int side = series.right_axis ? 1 : 0;
        svg << "<polyline points=\"";
        for (const auto& point : series.points) {
            svg << coordinate(px(point.x)) << "," << coordinate(py(point.y, side)) << " ";
        }
        svg << "\" fill=\"none\" stroke=\"" << series.color << "\" stroke-width=\"2\"/>\n";
        for (const auto& point : series.points) {
            svg << "<circle cx=\"" << coordinate(px(point.x)) << "\" cy=\""
                << coordinate(py(point.y, side)) << "\" r=\"3.5\" fill=\"" << series.color
                << "\"><title>" << xml_escape(point.tip) << "</title></circle>\n";
        }
    }
    return svg.str();
}

/// One chart as an <svg> element of its own (for the HTML page).
std::string chart_svg(const Chart& chart) {
    return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(k_chart_width) +
           "\" height=\"" + std::to_string(k_chart_height) + "\" viewBox=\"0 0 " +
           std::to_string(k_chart_width) + " " + std::to_string(k_chart_height) +
           "\" role=\"img\" aria-label=\"" + xml_escape(chart.title) + "\" font-family=\"" +
           k_font + "\">\n" + chart_body(chart) + "</svg>\n";
}

std::string client_label(const ClientNameMap& names, const std::string& client_id) {
    auto found = names.find(client_id);
    if (found == names.end() || found->second.empty()) return short_id(client_id);
    return found->second + " (" + short_id(client_id) + ")";
}

/// One chart per validation metric: weighted mean with the min-max band, by session round.
std::vector<Chart> metric_charts(const ReportInput& input) {
    const auto positions = session_positions(input.rounds);
    std::vector<Chart> charts;
    std::size_t color = 0;
    for (const auto& metric : metric_names(input.rounds)) {
        ChartSeries series;
        series.name = "weighted mean";
        series.color = k_palette[color++ % std::size(k_palette)];
        series.band = true;
        for (std::size_t i = 0; i < input.rounds.size(); ++i) {
            for (const auto& summary : summarize_metrics(input.rounds[i], metric)) {
                ChartPoint point;
                point.x = positions[i];
                point.y = summary.weighted_mean;
                point.low = summary.min;
                point.high = summary.max;
                point.tip = "round " + std::to_string(positions[i]) + ": " + metric + " " +
                            metric_number(summary.weighted_mean) + " (min " +
                            metric_number(summary.min) + ", max " + metric_number(summary.max) +
                            ", " + plural(summary.values.size(), "client") + ")";
                series.points.push_back(std::move(point));
            }
        }
        Chart chart;
        chart.title = metric;
        chart.x_label = "session round";
        chart.y_label = metric + " (weighted mean)";
        chart.series.push_back(std::move(series));
        charts.push_back(std::move(chart));
    }
    return charts;
}

/// Examples (bars) and accepted updates (line) per session round: the committed try of each
/// round, else its last try.
std::optional<Chart> training_chart(const ReportInput& input) {
    if (input.rounds.empty()) return std::nullopt;
    const auto positions = session_positions(input.rounds);
    std::map<std::uint32_t, const v1::RoundInfo*> chosen;
    for (std::size_t i = 0; i < input.rounds.size(); ++i) {
        const v1::RoundInfo*& slot = chosen[positions[i]];
        if (!slot || slot->state() != v1::ROUND_STATE_COMMITTED) slot = &input.rounds[i];
    }
    ChartSeries examples;
    examples.name = "examples";
    examples.color = k_palette[0];
    examples.kind = ChartSeries::Kind::bars;
    examples.from_zero = true;
    examples.counts = true;
    ChartSeries accepted;
    accepted.name = "accepted updates";
    accepted.color = k_palette[1];
    accepted.right_axis = true;
    accepted.from_zero = true;
    accepted.counts = true;
    for (const auto& [position, round] : chosen) {
        const std::string where = "round " + std::to_string(position) + " (id " +
                                  std::to_string(round->round_id()) + ", " +
                                  std::string(round_state_name(round->state())) + "): ";
        ChartPoint point;
        point.x = position;
        point.y = static_cast<double>(round_examples(*round));
        point.tip = where + group_digits(round_examples(*round)) + " examples";
        examples.points.push_back(point);
        point.y = round->updates_accepted();
        point.tip = where + plural(round->updates_accepted(), "accepted update") + " of " +
                    std::to_string(round->clients_selected()) + " selected";
        accepted.points.push_back(point);
    }
    Chart chart;
    chart.title = "training";
    chart.x_label = "session round";
    chart.y_label = "examples";
    chart.right_label = "accepted updates";
    chart.series = {std::move(examples), std::move(accepted)};
    return chart;
}

std::string session_duration(const ReportInput& input) {
    const auto& session = input.session;
    if (session.started_unix_ms() <= 0) return "-";
    if (session.ended_unix_ms() > 0) {
        return duration_text(seconds_between(session.started_unix_ms(), session.ended_unix_ms()));
    }
    if (input.generated_unix_ms > 0) {
        return duration_text(seconds_between(session.started_unix_ms(), input.generated_unix_ms)) +
               " so far";
    }
    return "-";
}

std::string or_dash(const std::string& text) {
    return text.empty() ? "-" : text;
}

/// Writes an HTML table; every cell is escaped.
void html_table(std::ostringstream& html, const std::vector<std::string>& headers,
                const std::vector<std::vector<std::string>>& rows,
                const std::vector<bool>& numeric = {}) {
    html << "<table>\n<thead><tr>";
    for (std::size_t i = 0; i < headers.size(); ++i) {
        html << "<th" << (i < numeric.size() && numeric[i] ? " class=\"number\"" : "") << ">"
             << xml_escape(headers[i]) << "</th>";
    }
    html << "</tr></thead>\n<tbody>\n";
    for (const auto& row : rows) {
        html << "<tr>";
        for (std::size_t i = 0; i < row.size(); ++i) {
            html << "<td" << (i < numeric.size() && numeric[i] ? " class=\"number\"" : "") << ">"
                 << xml_escape(row[i]) << "</td>";
        }
        html << "</tr>\n";
    }
    html << "</tbody>\n</table>\n";
}

constexpr const char* k_style = R"(
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #dddddd; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.95em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eeeeee; text-align: left;
         vertical-align: top; }
th { background: #f5f5f5; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { background: none; font-weight: 600; }
.state { display: inline-block; padding: 0.1em 0.6em; border-radius: 0.8em; color: #ffffff;
         background: #777777; font-weight: 600; }
.state-finished { background: #2e7d32; }
.state-running { background: #1565c0; }
.state-failed, .state-interrupted { background: #c62828; }
.state-stopped { background: #ef6c00; }
.charts svg { display: block; margin: 0.5em 0 1.5em 0; max-width: 100%; height: auto; }
.note { color: #666666; }
footer { margin-top: 3em; color: #888888; font-size: 0.85em; }
)";

std::string render_html(const ReportInput& input) {
    const auto& session = input.session;
    const auto& config = session.config();
    const std::string state(session_state_name(session.state()));
    const std::string id = session.session_id();
    std::ostringstream html;
    html << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
         << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n"
         << "<title>fedcli report: session " << xml_escape(short_id(id)) << "</title>\n"
         << "<style>" << k_style << "</style>\n</head>\n<body>\n";
    html << "<h1>Session <code>" << xml_escape(short_id(id)) << "</code> <span class=\"state "
         << "state-" << xml_escape(state) << "\">" << xml_escape(state) << "</span></h1>\n";
    if (!session.message().empty()) {
        html << "<p>" << xml_escape(session.message()) << "</p>\n";
    }

    // Summary.
    auto count_or_dash = [](std::uint64_t value, const std::string& zero) {
        return value == 0 ? zero : std::to_string(value);
    };
    std::vector<std::pair<std::string, std::string>> facts = {
        {"session", or_dash(id)},
        {"state", state},
        {"started", utc_time(session.started_unix_ms())},
        {"ended", utc_time(session.ended_unix_ms())},
        {"duration", session_duration(input)},
        {"rounds committed",
         std::to_string(session.rounds_committed()) + " of " + count_or_dash(config.rounds(), "-")},
        {"final model", or_dash(session.latest_model_id())},
        {"aggregator", or_dash(config.aggregator())},
        {"aggregator settings", or_dash(config.aggregator_config_json())},
        {"min clients", count_or_dash(config.min_clients(), "-")},
        {"clients per round", count_or_dash(config.clients_per_round(), "all ready clients")},
        {"clients fraction",
         config.clients_fraction() > 0 ? metric_number(config.clients_fraction()) : "-"},
        {"buffer size", count_or_dash(config.buffer_size(), "- (waits for every selected client)")},
        {"round timeout",
         config.round_timeout_ms() > 0
             ? duration_text(static_cast<double>(config.round_timeout_ms()) / 1000.0)
             : "-"},
        {"max round retries", std::to_string(config.max_round_retries())},
        {"max client failures", count_or_dash(config.max_client_failures(), "- (never skip)")},
        {"validation", config.validate() ? "yes" : "no"},
        {"starting model", or_dash(config.model_id())},
        {"settings", or_dash(config.settings_json())},
    };
    // Ids and JSON in a monospace font, the rest as text.
    const std::set<std::string> code = {"session", "final model", "aggregator settings",
                                        "starting model", "settings"};
    html << "<table class=\"summary\">\n<tbody>\n";
    for (const auto& [key, value] : facts) {
        const bool monospace = code.count(key) > 0 && value != "-";
        html << "<tr><th>" << xml_escape(key) << "</th><td>" << (monospace ? "<code>" : "")
             << xml_escape(value) << (monospace ? "</code>" : "") << "</td></tr>\n";
    }
    html << "</tbody>\n</table>\n";

    // Charts.
    html << "<h2>Validation metrics</h2>\n<div class=\"charts\">\n";
    const auto charts = metric_charts(input);
    if (charts.empty()) {
        html << "<p class=\"note\">No validation metrics: no client reported numeric "
                "validation metrics in this session (start it with --validate).</p>\n";
    }
    for (const auto& chart : charts) html << chart_svg(chart);
    html << "<p class=\"note\">Each point is the mean across clients weighted by examples "
            "(the metrics' num_examples, else the client's training update's num_examples "
            "in that round, else 1); the band spans the lowest and highest client.</p>\n";
    html << "</div>\n<h2>Training</h2>\n<div class=\"charts\">\n";
    if (auto chart = training_chart(input)) {
        html << chart_svg(*chart);
    } else {
        html << "<p class=\"note\">No rounds ran in this session.</p>\n";
    }
    html << "</div>\n";

    // Tables.
    html << "<h2>Rounds</h2>\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& round : input.rounds) {
        rows.push_back(round_table_cells(round, input.generated_unix_ms));
    }
    if (rows.empty()) {
        html << "<p class=\"note\">No rounds.</p>\n";
    } else {
        html_table(html, round_table_headers(), rows,
                   {true, false, false, true, true, true, true, true, false, false, false});
    }

    html << "<h2>Validations</h2>\n";
    rows.clear();
    const auto positions = session_positions(input.rounds);
    for (std::size_t i = 0; i < input.rounds.size(); ++i) {
        for (const auto& summary : summarize_metrics(input.rounds[i])) {
            rows.push_back(validation_table_cells(input.rounds[i], positions[i], summary));
        }
    }
    if (rows.empty()) {
        html << "<p class=\"note\">No validation metrics in this session.</p>\n";
    } else {
        html_table(html, validation_table_headers(), rows,
                   {true, true, false, true, true, true, true, true});
        rows.clear();
        for (const auto& round : input.rounds) {
            for (const auto& validation : round.validations()) {
                rows.push_back({std::to_string(round.round_id()),
                                client_label(input.client_names, validation.client_id()),
                                metrics_text(validation.metrics_json())});
            }
        }
        html << "<h3>By client</h3>\n";
        html_table(html, {"round", "client", "metrics"}, rows, {true, false, false});
    }

    rows.clear();
    for (const auto& round : input.rounds) {
        for (const auto& rejected : round.rejected()) {
            rows.push_back({std::to_string(round.round_id()),
                            client_label(input.client_names, rejected.client_id()),
                            utc_time(rejected.received_unix_ms()), rejected.reason()});
        }
    }
    if (!rows.empty()) {
        html << "<h2>Rejected updates</h2>\n";
        html_table(html, {"round", "client", "received", "reason"}, rows, {true});
    }

    html << "<footer>Generated";
    if (!input.generator.empty()) html << " by " << xml_escape(input.generator);
    if (input.generated_unix_ms > 0)
        html << " at " << xml_escape(utc_time(input.generated_unix_ms));
    if (!input.combiner.empty()) html << " from the combiner at " << xml_escape(input.combiner);
    html << ".</footer>\n</body>\n</html>\n";
    return html.str();
}

std::string render_svg(const ReportInput& input) {
    std::vector<Chart> charts = metric_charts(input);
    const bool no_metrics = charts.empty();
    if (auto chart = training_chart(input)) charts.push_back(std::move(*chart));
    constexpr int k_header = 56;
    const int height = k_header + static_cast<int>(charts.size()) * k_chart_height;
    std::ostringstream svg;
    svg << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << k_chart_width << "\" height=\""
        << height << "\" viewBox=\"0 0 " << k_chart_width << " " << height << "\" font-family=\""
        << k_font << "\">\n";
    svg << "<title>fedcli report: session " << xml_escape(short_id(input.session.session_id()))
        << "</title>\n";
    svg << "<rect x=\"0\" y=\"0\" width=\"" << k_chart_width << "\" height=\"" << height
        << "\" fill=\"#ffffff\"/>\n";
    svg << "<text x=\"" << k_margin_left << "\" y=\"24\" font-size=\"16\" font-weight=\"bold\">"
        << "session " << xml_escape(short_id(input.session.session_id())) << " ("
        << xml_escape(std::string(session_state_name(input.session.state()))) << ", "
        << input.session.rounds_committed() << " of " << input.session.config().rounds()
        << " rounds committed)</text>\n";
    svg << "<text x=\"" << k_margin_left << "\" y=\"44\" font-size=\"12\" fill=\"#666666\">"
        << (no_metrics ? "No validation metrics in this session."
                       : "Weighted mean across clients (weight: examples); band: min-max.")
        << "</text>\n";
    int y = k_header;
    for (const auto& chart : charts) {
        svg << "<g transform=\"translate(0," << y << ")\">\n" << chart_body(chart) << "</g>\n";
        y += k_chart_height;
    }
    svg << "</svg>\n";
    return svg.str();
}

}  // namespace

std::string render_report(const ReportInput& input, ReportFormat format) {
    return format == ReportFormat::html ? render_html(input) : render_svg(input);
}

}  // namespace fedcli::cli
