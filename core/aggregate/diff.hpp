// Comparing two parameter sets: the library side of `fedcli model diff A B`.
//
// Arrays are matched by name. For each array present in both with the same shape, the
// element values are compared as float64 (any dtypes, so a float32 model can be compared
// with its float64 export): the largest and mean absolute difference and the L2 norm of
// the difference. NaN equals NaN and an infinity equals itself; a position where only one
// side is NaN, or the infinities differ, counts as a non-finite mismatch and is left out of
// the statistics. Arrays in only one file, or with different shapes, are listed as such.
//
// Files are memory-mapped (npz::MappedNpz), not copied. Sums are taken in a fixed order,
// so the figures do not depend on the number of threads. Thread-safety: pure functions;
// they use worker threads internally.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/npz/npz.hpp"

namespace fedcli::aggregate {

struct ArrayDifference {
    enum class Status {
        compared,  ///< same shape: statistics below are valid
        only_in_a,
        only_in_b,
        shape_mismatch,  ///< present in both with different shapes
    };

    std::string name;
    Status status = Status::compared;
    npz::DType dtype_a = npz::DType::float32;
    npz::DType dtype_b = npz::DType::float32;
    npz::Shape shape_a;
    npz::Shape shape_b;
    std::uint64_t elements = 0;   ///< elements compared
    std::uint64_t differing = 0;  ///< elements whose values differ
    std::uint64_t non_finite_mismatches = 0;
    double max_abs = 0;   ///< max |a - b|
    double mean_abs = 0;  ///< mean |a - b| over the elements compared
    double l2 = 0;        ///< sqrt(sum (a - b)^2)
};

struct ModelDifference {
    /// A's arrays in A's order, then those only in B in B's order.
    std::vector<ArrayDifference> arrays;
    std::uint64_t elements = 0;  ///< over compared arrays
    std::uint64_t differing = 0;
    std::uint64_t non_finite_mismatches = 0;
    double max_abs = 0;
    double l2 = 0;  ///< of the whole difference (all compared arrays)
    /// Same names, dtypes and shapes, and every value equal.
    bool identical = true;
};

/// Compares two in-memory parameter sets.
ModelDifference diff_models(const npz::ParameterSet& a, const npz::ParameterSet& b,
                            unsigned threads = 0);
/// Compares two parameter files (.npz, or .npy for one-array models).
ModelDifference diff_files(const std::filesystem::path& a, const std::filesystem::path& b,
                           unsigned threads = 0);

/// {"identical", "elements", "differing", "non_finite_mismatches", "max_abs", "l2",
///  "arrays": [{"name", "status" ("compared"|"only_in_a"|"only_in_b"|"shape_mismatch"),
///  "dtype_a", "dtype_b", "shape_a", "shape_b", "elements", "differing",
///  "non_finite_mismatches", "max_abs", "mean_abs", "l2"}]} (absent sides omitted).
nlohmann::json difference_json(const ModelDifference& difference);

}  // namespace fedcli::aggregate
