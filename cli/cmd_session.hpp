// `fedcli session ...`: starting, stopping, resuming, listing and watching sessions on a
// combiner (cli/cmd_session.cpp). Declared here: the pure parts that tests call directly,
// i.e. what the live view of `session status --watch` shows for a status.
//
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

#include <cstdint>
#include <string>
#include <vector>

#include "core/proto/fedcli.pb.h"

namespace fedcli::cli {

/// "round 7 (3/5, try 2)": the round id and its place in the session's `total` rounds
/// ("round 7" alone when the combiner did not fill session_round; no "/total" when 0).
/// `--settings` items (KEY=VALUE, VALUE parsed as JSON when it is, or whole JSON
/// objects) as one JSON object; UsageError naming `command` for a malformed item.
nlohmann::ordered_json parse_settings(const std::vector<std::string>& items,
                                      const std::string& command);

std::string round_position_text(const fedcli::v1::RoundInfo& round, std::uint32_t total);

/// The lines `session status --watch` draws on a terminal for `status` at `now_unix_ms`:
/// the session with its state and rounds committed, the current round with a bar of
/// updates accepted / clients selected, a bar of the time elapsed against the round
/// timeout, a bar of the session's rounds, the clients, and the last event. Fields the
/// combiner did not fill show as "-".
std::vector<std::string> watch_view(const fedcli::v1::StatusResponse& status,
                                    std::int64_t now_unix_ms);

/// One line summarising `status` without times that change on their own, for output that is
/// not a terminal: `session status --watch` prints it (with a timestamp) whenever it changes.
std::string watch_line(const fedcli::v1::StatusResponse& status);

}  // namespace fedcli::cli
