#include "core/util/suggest.hpp"

#include <algorithm>
#include <vector>

namespace fedcli::util {

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

}  // namespace fedcli::util
