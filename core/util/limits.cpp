#include "core/util/limits.hpp"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "core/error.hpp"

namespace fedcli::util {
namespace {

char lower(char c) {
    return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

/// The multiplier of a unit ("", "b", "k", "kb", "ki", "kib", ...), 0 when unknown.
std::uint64_t unit_multiplier(std::string_view unit) {
    std::string text;
    for (char c : unit) text += lower(c);
    if (text.empty() || text == "b") return 1;
    static constexpr std::string_view k_prefixes = "kmgt";
    auto prefix = k_prefixes.find(text[0]);
    if (prefix == std::string_view::npos) return 0;
    std::string_view rest = std::string_view(text).substr(1);
    if (!(rest.empty() || rest == "b" || rest == "i" || rest == "ib")) return 0;
    return std::uint64_t{1} << (10 * (prefix + 1));
}

}  // namespace

std::uint64_t parse_byte_size(std::string_view text, std::string_view what) {
    auto invalid = [&](const std::string& why) {
        return Error(std::string(what) + ": '" + std::string(text) + "' " + why +
                     " (write a byte count such as 4096, 512M or 2G)");
    };
    std::size_t digits = 0;
    while (digits < text.size() &&
           (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) {
        ++digits;
    }
    std::string_view number = text.substr(0, digits);
    std::string_view unit = text.substr(digits);
    while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
    if (number.empty() || number.front() == '.' || number.back() == '.' ||
        number.find('.') != number.rfind('.')) {
        throw invalid("is not a size");
    }
    std::uint64_t multiplier = unit_multiplier(unit);
    if (multiplier == 0) throw invalid("has an unknown unit '" + std::string(unit) + "'");

    std::uint64_t bytes = 0;
    auto point = number.find('.');
    if (point == std::string_view::npos) {
        std::uint64_t count = 0;
        auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), count);
        if (error != std::errc() || end != number.data() + number.size() ||
            count > UINT64_MAX / multiplier) {
            throw invalid("is too large");
        }
        bytes = count * multiplier;
    } else {
        double value = 0;
        auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), value);
        double scaled = std::floor(value * static_cast<double>(multiplier));
        if (error != std::errc() || end != number.data() + number.size() ||
            !(scaled < 18446744073709551616.0)) {
            throw invalid("is too large");
        }
        bytes = static_cast<std::uint64_t>(scaled);
    }
    if (bytes == 0) throw invalid("is zero");
    return bytes;
}

std::string format_byte_size(std::uint64_t bytes) {
    static constexpr const char* k_units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    std::size_t unit = 0;
    while (unit + 1 < std::size(k_units) && bytes >= (std::uint64_t{1} << (10 * (unit + 1)))) {
        ++unit;
    }
    std::uint64_t scale = std::uint64_t{1} << (10 * unit);
    if (bytes % scale == 0) return std::to_string(bytes / scale) + " " + k_units[unit];
    char text[32];
    std::snprintf(text, sizeof text, "%.1f %s",
                  static_cast<double>(bytes) / static_cast<double>(scale), k_units[unit]);
    return text;
}

void check_json_size(std::string_view text, std::size_t max_bytes, std::string_view what,
                     std::size_t max_depth) {
    if (text.size() > max_bytes) {
        throw Error(std::string(what) + " is " + format_byte_size(text.size()) +
                    " of JSON, above the limit of " + format_byte_size(max_bytes));
    }
    std::size_t depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) {
                throw Error(std::string(what) + " nests arrays/objects deeper than " +
                            std::to_string(max_depth) + " levels");
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
}

}  // namespace fedcli::util
