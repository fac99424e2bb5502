// The entry point contract: what fedcli writes before an entry point runs and checks
// after it has run (docs/entry-points.md describes it for entry point authors).
//
//   before train     INPUT-metadata  <- the round settings, a JSON object ({} when none)
//   after build      OUTPUT is a valid npz with at least one array
//   after train      OUTPUT is a valid npz (every member read through its CRC check) with
//                    the same array names, order, shapes and dtypes as INPUT;
//                    OUTPUT-metadata is a JSON object whose num_examples is a positive
//                    integer (not 0, not negative, not 3.5 or 3.0, not "10")
//   after validate,  OUTPUT is a JSON object
//   predict
//
// Every failure throws fedcli::Error naming the file (and the array or field) and what
// was expected; JSON syntax errors carry line and column.
//
// Thread-safety: pure functions over files; concurrent calls on different files are safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace fedcli::dispatch {

/// "<model>-metadata": the JSON file next to a model (FEDn's naming).
std::filesystem::path metadata_path(const std::filesystem::path& model);

/// Writes the round settings (JSON text of an object) to metadata_path(input), replacing
/// it atomically. Throws when the text is not a JSON object or the file cannot be written.
void write_round_settings(const std::filesystem::path& input, std::string_view settings_json);

/// Checks that `file` (`what` names it in errors, e.g. "build output") is a valid npz with
/// at least one array, reading every member. Returns the number of arrays.
std::size_t check_model_file(const std::filesystem::path& file, const std::string& what);

struct TrainOutput {
    std::uint64_t num_examples = 0;
    std::size_t arrays = 0;     ///< arrays in OUTPUT
    std::string metadata_json;  ///< OUTPUT-metadata, compact JSON text
};

/// Checks train's output against its input model (see the header comment).
TrainOutput check_train_output(const std::filesystem::path& input,
                               const std::filesystem::path& output);

/// Checks that `file` holds a JSON object; returns it as compact JSON text.
std::string check_json_object_file(const std::filesystem::path& file, const std::string& what);

}  // namespace fedcli::dispatch
