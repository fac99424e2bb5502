// "Did you mean ...?": finding the name a user most likely meant. Used for commands,
// options, project-file keys, templates and aggregator names alike, so that every typo in
// fedcli is answered the same way.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace fedcli::util {

/// Edit distance between two strings where insertions, deletions, substitutions and swaps
/// of two neighbouring characters each cost 1 (so "modle" is 1 away from "model").
std::size_t edit_distance(std::string_view from, std::string_view to);

/// The candidate a user most likely meant when typing `typed`: the closest one by
/// edit_distance() if it is close enough to be a plausible typo (at most 2 edits, or a
/// third of the typed length for long names), else the only candidate that starts with
/// `typed`. Ties go to the earlier candidate. nullopt when nothing is plausible.
std::optional<std::string> closest_match(std::string_view typed,
                                         std::span<const std::string> candidates);

}  // namespace fedcli::util
