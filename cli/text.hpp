// Text helpers shared by the commands in cli/: aligned tables, human-readable sizes and
// "did you mean" suggestions. Pure functions and plain values; no I/O beyond the stream a
// caller hands in.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fedcli::cli {

/// 1023 -> "1023 B", 205512 -> "200.7 KiB", 3 << 30 -> "3.0 GiB" (binary units, one decimal).
std::string human_bytes(std::uint64_t bytes);

/// 1234567 -> "1,234,567".
std::string group_digits(std::uint64_t value);

/// A bar like "[#####...............]", `width` cells wide inside the brackets, filled in
/// proportion to done / total (clamped to [0, 1]; empty when total is 0).
std::string progress_bar(double done, double total, std::size_t width = 20);

/// A table printed with every column padded to its widest cell, two spaces between
/// columns and no trailing spaces.
class Table {
  public:
    enum class Align { left, right };

    /// One column per header; `align` gives each column's alignment (left when absent).
    explicit Table(std::vector<std::string> headers, std::vector<Align> align = {});

    /// Adds a row; it must have as many cells as there are headers.
    void add_row(std::vector<std::string> cells);

    /// Writes the header line and the rows, each line prefixed by `indent`.
    void print(std::ostream& out, std::string_view indent = "") const;

  private:
    std::vector<std::string> m_headers;
    std::vector<Align> m_align;
    std::vector<std::vector<std::string>> m_rows;
};

}  // namespace fedcli::cli
