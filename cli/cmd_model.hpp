// `fedcli model ...`: looking at parameter files offline.
//
// The commands are plain functions so that tests (and later commands) can call them
// without going through the command line.
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "core/npz/npz.hpp"

namespace fedcli::cli {

/// One array of a parameter file as `model inspect` reports it.
struct InspectedArray {
    std::string name;  ///< the key: "0", "arr_0", "fc1.weight", ...
    npz::DType dtype = npz::DType::float32;
    npz::Shape shape;
    std::uint64_t parameters = 0;  ///< element count
    std::uint64_t bytes = 0;       ///< size of the data (uncompressed, without the NPY header)
    /// How the member is stored in the zip (.npz only).
    npz::Compression compression = npz::Compression::stored;
    /// Bytes the member occupies in the file, NPY header included (possibly compressed).
    std::uint64_t stored_bytes = 0;
};

/// What `model inspect` found out about a parameter file.
struct InspectReport {
    enum class Format { npz, npy };

    std::filesystem::path file;  ///< as given
    Format format = Format::npz;
    std::uint64_t file_bytes = 0;
    std::string sha256;  ///< lowercase hex digest of the whole file
    npz::KeyConvention key_convention = npz::KeyConvention::named;
    std::vector<InspectedArray> arrays;  ///< in the order fedcli uses them
    std::uint64_t total_parameters = 0;
    std::uint64_t total_bytes = 0;
};

/// Reads the layout of a parameter file (.npz; a file ending in .npy is read as a single
/// array) and checks the integrity of every member: each npz member is streamed through
/// its CRC-32 check (and inflate), a .npy file is read in full. Throws fedcli::Error
/// naming the file (and member) when it is missing, not a parameter file or corrupt.
InspectReport inspect_parameter_file(const std::filesystem::path& file);

/// The human-readable form: a summary of the file, an aligned table of the arrays and the
/// totals, with sizes both human-readable and exact.
void print_inspect_report(const InspectReport& report, std::ostream& out);

/// The machine-readable form: one JSON object on one line, keys in this order:
///   {
///     "file": "model.npz",            // the path as given
///     "sha256": "<64 hex digits>",    // of the whole file
///     "file_bytes": 205512,           // size of the file
///     "key_convention": "numbered",   // "numbered" ("0".."N-1"), "numpy" ("arr_0"..)
///                                     // or "named"
///     "arrays": [                     // in the order fedcli uses them
///       {"name": "0", "dtype": "float32", "shape": [64, 784],
///        "parameters": 50176,         // element count
///        "bytes": 200704}             // data size, uncompressed, without NPY header
///     ],
///     "total_parameters": 50890,      // sums over "arrays"
///     "total_bytes": 203560
///   }
/// Strings that are not valid UTF-8 have the bad bytes replaced by U+FFFD.
std::string inspect_report_json(const InspectReport& report);

struct ModelInspectOptions {
    std::filesystem::path file;
    bool json = false;
};

/// `fedcli model inspect FILE [--json]`: prints the report of inspect_parameter_file()
/// to `out`. Returns the exit code (0); throws fedcli::Error on failure.
int model_inspect(const ModelInspectOptions& options, std::ostream& out);

}  // namespace fedcli::cli
