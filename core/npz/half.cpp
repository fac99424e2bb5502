#include "core/npz/half.hpp"

#include <bit>
#include <cmath>

namespace fedcli::npz {

float half_to_float(std::uint16_t half) {
    std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
    std::uint32_t exponent = (half >> 10) & 0x1Fu;
    std::uint32_t mantissa = half & 0x3FFu;
    if (exponent == 0x1F) {  // infinity or NaN: keep the payload
        return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
    }
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

namespace {

/// Rounds a non-negative double holding an integer plus a fraction to the nearest integer,
/// ties to even. Exact for values below 2^52.
std::uint64_t round_half_even(double value) {
    auto whole = static_cast<std::uint64_t>(value);
    double fraction = value - static_cast<double>(whole);  // exact
    if (fraction > 0.5 || (fraction == 0.5 && (whole & 1u))) ++whole;
    return whole;
}

}  // namespace

std::uint16_t double_to_half(double value) {
    std::uint64_t bits = std::bit_cast<std::uint64_t>(value);
    auto sign = static_cast<std::uint16_t>((bits >> 48) & 0x8000u);
    if (std::isnan(value)) {
        // Keep the top 10 payload bits (never all zero, which would read as infinity), as
        // numpy's npy_double_to_half does.
        auto payload = static_cast<std::uint16_t>((bits >> 42) & 0x3FFu);
        if (payload == 0) payload = 1;
        return static_cast<std::uint16_t>(sign | 0x7C00u | payload);
    }
    double magnitude = std::fabs(value);
    // 65504 is the largest half; halfway to the next binade (65520) rounds to even: up.
    if (magnitude >= 65520.0) return static_cast<std::uint16_t>(sign | 0x7C00u);
    if (magnitude < 0x1p-14) {
        // Subnormal (or zero): a multiple of 2^-24. Scaling by 2^24 is exact; rounding up
        // to 1024 yields the smallest normal's bit pattern, which is correct.
        return static_cast<std::uint16_t>(sign | round_half_even(magnitude * 0x1p24));
    }
    int exponent = 0;
    std::frexp(magnitude, &exponent);  // magnitude = f * 2^exponent, f in [0.5, 1)
    int unbiased = exponent - 1;       // magnitude in [2^unbiased, 2^(unbiased+1))
    // Scale so that the 11 significant bits are the integer part: [1024, 2048).
    std::uint64_t significand = round_half_even(std::ldexp(magnitude, 10 - unbiased));
    if (significand == 2048) {
        significand = 1024;
        ++unbiased;
    }
    if (unbiased > 15) return static_cast<std::uint16_t>(sign | 0x7C00u);
    return static_cast<std::uint16_t>(sign | ((unbiased + 15) << 10) | (significand - 1024));
}

}  // namespace fedcli::npz
