#include "cli/text.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <stdexcept>

namespace fedcli::cli {

std::string human_bytes(std::uint64_t bytes) {
    static constexpr std::array<const char*, 6> k_units = {"KiB", "MiB", "GiB",
                                                           "TiB", "PiB", "EiB"};
    if (bytes < 1024) return std::to_string(bytes) + " B";
    double value = static_cast<double>(bytes) / 1024.0;
    std::size_t unit = 0;
    // Move up a unit when the rounded value would print as 1024.0.
    while (value >= 1023.95 && unit + 1 < k_units.size()) {
        value /= 1024.0;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, "%.1f %s", value, k_units[unit]);
    return text;
}

std::string group_digits(std::uint64_t value) {
    std::string digits = std::to_string(value);
    std::string grouped;
    grouped.reserve(digits.size() + digits.size() / 3);
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
        grouped += digits[i];
    }
    return grouped;
}

std::size_t edit_distance(std::string_view from, std::string_view to) {
    // Optimal string alignment distance: Levenshtein plus adjacent transpositions, kept as
    // three rolling rows because names are short.
    std::vector<std::size_t> before(to.size() + 1), previous(to.size() + 1), current(to.size() + 1);
    for (std::size_t j = 0; j <= to.size(); ++j) previous[j] = j;
    for (std::size_t i = 1; i <= from.size(); ++i) {
        current[0] = i;
        for (std::size_t j = 1; j <= to.size(); ++j) {
            std::size_t substitution = from[i - 1] == to[j - 1] ? 0 : 1;
            current[j] =
                std::min({previous[j] + 1, current[j - 1] + 1, previous[j - 1] + substitution});
            if (i > 1 && j > 1 && from[i - 1] == to[j - 2] && from[i - 2] == to[j - 1]) {
                current[j] = std::min(current[j], before[j - 2] + 1);
            }
        }
        before.swap(previous);
        previous.swap(current);
    }
    return previous[to.size()];
}

std::optional<std::string> closest_match(std::string_view typed,
                                         std::span<const std::string> candidates) {
    if (typed.empty()) return std::nullopt;
    const std::size_t allowed = std::max<std::size_t>(2, typed.size() / 3);
    const std::string* best = nullptr;
    std::size_t best_distance = allowed + 1;
    for (const auto& candidate : candidates) {
        std::size_t distance = edit_distance(typed, candidate);
        // Changing every typed character is a different word, not a typo.
        if (distance < best_distance && distance < typed.size()) {
            best = &candidate;
            best_distance = distance;
        }
    }
    if (best) return *best;

    const std::string* prefixed = nullptr;
    for (const auto& candidate : candidates) {
        if (candidate.starts_with(typed)) {
            if (prefixed) return std::nullopt;  // ambiguous
            prefixed = &candidate;
        }
    }
    if (prefixed) return *prefixed;
    return std::nullopt;
}

Table::Table(std::vector<std::string> headers, std::vector<Align> align)
    : m_headers(std::move(headers)), m_align(std::move(align)) {
    m_align.resize(m_headers.size(), Align::left);
}

void Table::add_row(std::vector<std::string> cells) {
    if (cells.size() != m_headers.size()) {
        throw std::logic_error("Table::add_row: " + std::to_string(cells.size()) + " cells for " +
                               std::to_string(m_headers.size()) + " columns");
    }
    m_rows.push_back(std::move(cells));
}

void Table::print(std::ostream& out, std::string_view indent) const {
    std::vector<std::size_t> widths(m_headers.size());
    for (std::size_t column = 0; column < m_headers.size(); ++column) {
        widths[column] = m_headers[column].size();
        for (const auto& row : m_rows)
            widths[column] = std::max(widths[column], row[column].size());
    }
    auto print_line = [&](const std::vector<std::string>& cells) {
        std::string line(indent);
        for (std::size_t column = 0; column < cells.size(); ++column) {
            if (column > 0) line += "  ";
            std::string padding(widths[column] - cells[column].size(), ' ');
            if (m_align[column] == Align::right) {
                line += padding + cells[column];
            } else {
                line += cells[column] + padding;
            }
        }
        while (!line.empty() && line.back() == ' ') line.pop_back();
        out << line << '\n';
    };
    print_line(m_headers);
    for (const auto& row : m_rows) print_line(row);
}

}  // namespace fedcli::cli
