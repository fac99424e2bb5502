// IEEE 754 binary16 (numpy's float16) conversions, bit-exact with numpy.
//
// Widening is exact. Narrowing rounds to nearest, ties to even, directly from the source
// value (never through float32 first: double -> float -> half can round twice and land on
// the wrong neighbour), overflows to infinity at 65520 as numpy does, keeps the sign of
// zero and keeps the top 10 bits of a NaN payload (as numpy does).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

namespace fedcli::npz {

/// The float32 value of a binary16 bit pattern (exact).
float half_to_float(std::uint16_t half);
/// The float64 value of a binary16 bit pattern (exact).
inline double half_to_double(std::uint16_t half) {
    return half_to_float(half);
}
/// The binary16 bit pattern nearest to `value` (ties to even).
std::uint16_t double_to_half(double value);
/// The binary16 bit pattern nearest to `value` (ties to even).
inline std::uint16_t float_to_half(float value) {
    return double_to_half(value);
}

}  // namespace fedcli::npz
