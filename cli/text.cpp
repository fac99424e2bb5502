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

std::string progress_bar(double done, double total, std::size_t width) {
    double fraction = total > 0 ? done / total : 0;
    if (!(fraction > 0)) fraction = 0;  // also NaN
    if (fraction > 1) fraction = 1;
    const auto filled = static_cast<std::size_t>(fraction * static_cast<double>(width) + 0.5);
    return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
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
