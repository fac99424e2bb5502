// Small text helpers shared by the combiner, the client daemon and the operator commands:
// content ids (lowercase hex sha256), their short display form, and UTC timestamps as the
// event logs print them.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace fedcli::util {

/// True for 64 hex digits (either case): the form of model and package ids.
bool is_sha256(std::string_view text);
/// ASCII lowercase copy (ids are compared in lowercase).
std::string lowercase(std::string_view text);
/// The first 8 characters of an id, as logs and tables show ids.
std::string short_id(std::string_view id);
/// Milliseconds since the Unix epoch, now.
std::int64_t now_unix_ms();
/// "2026-11-23T10:00:00.123Z" (UTC, milliseconds).
std::string utc_timestamp(
    std::chrono::system_clock::time_point time = std::chrono::system_clock::now());

}  // namespace fedcli::util
