// Byte sizes as people write them ("2G", "512MiB") and the size checks every module that
// accepts untrusted text shares.
//
// parse_byte_size() is what command-line options such as `fedcli run --max-memory` take;
// format_byte_size() is how limits are named in error messages ("2 GiB"). check_json_size()
// guards a JSON payload received from elsewhere (an update's metadata, a validation's
// metrics) before it is parsed: its size, and its nesting depth, which a recursive consumer
// would otherwise pay for in stack.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fedcli::util {

/// Default limit for one JSON payload (metadata, metrics): 1 MiB.
inline constexpr std::size_t k_default_max_json_bytes = std::size_t{1} << 20;
/// Default limit for the nesting depth of arrays and objects in a JSON payload.
inline constexpr std::size_t k_default_max_json_depth = 64;

/// Parses a byte count: digits with an optional fraction, optionally followed by a unit
/// K, M, G or T (case-insensitive, optionally followed by "i" and/or "B"), each a power of
/// 1024 as in `docker run --memory`; "B" or no unit means bytes. "2G" = 2 GiB,
/// "1.5MiB" = 1572864, "4096" = 4096. Throws fedcli::Error naming `what` (e.g.
/// "--max-memory") for anything else, for 0 and for values above 2^64 - 1.
std::uint64_t parse_byte_size(std::string_view text, std::string_view what);

/// "512 B", "64 KiB", "2 GiB", "1.5 MiB" (one decimal, exact multiples without one).
std::string format_byte_size(std::uint64_t bytes);

/// Throws fedcli::Error "<what> is <size> of JSON, above the limit of <limit>" when `text`
/// is longer than `max_bytes`, or "<what> nests arrays/objects deeper than <max_depth>
/// levels" when it does. Only brackets outside strings count (escapes are honoured); the
/// text is not otherwise validated, so this is cheap enough to run before parsing.
void check_json_size(std::string_view text, std::size_t max_bytes, std::string_view what,
                     std::size_t max_depth = k_default_max_json_depth);

}  // namespace fedcli::util
