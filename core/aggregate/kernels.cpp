// The hot loops of aggregation: weighted means, NaN/Inf scans and integer rules.
//
// The weighted mean reads every source exactly once: for each step of 32 elements
// (AVX-512; 16 with AVX2) it keeps four float64 running sums in registers while it walks all
// sources in lockstep, then rounds and stores the result, so the only memory traffic is
// the sources themselves plus the result. The instruction set is chosen at run time
// (AVX-512F, else AVX2+FMA, else portable C++), so one binary runs on any x86-64 and the
// code builds anywhere; float16 always takes the portable loops.
//
// NaN/Inf detection is free in the common case: a non-finite input always makes the
// weighted sum non-finite (weights are positive and a convex combination of finite values
// cannot overflow float64), so each block checks its sums only and looks at its inputs
// only when a sum is not finite.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>

#include "core/aggregate/internal.hpp"
#include "core/error.hpp"
#include "core/npz/half.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#define FEDCLI_AGGREGATE_X86 1
#endif

namespace fedcli::aggregate::detail {
namespace {

KernelLevel detected_level() {
#ifdef FEDCLI_AGGREGATE_X86
    static const KernelLevel level = [] {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return KernelLevel::avx512;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            return KernelLevel::avx2;
        }
        return KernelLevel::portable;
    }();
    return level;
#else
    return KernelLevel::portable;
#endif
}

std::atomic<KernelLevel> g_level_cap{KernelLevel::avx512};

}  // namespace

KernelLevel kernel_level() {
    return std::min(detected_level(), g_level_cap.load(std::memory_order_relaxed));
}

KernelLevel cap_kernel_level(KernelLevel cap) {
    return g_level_cap.exchange(cap);
}

namespace {

constexpr std::size_t k_block = 1024;

template <class T>
T load_raw(const std::byte* base, std::uint64_t index) {
    T value;
    std::memcpy(&value, base + index * sizeof(T), sizeof(T));
    return value;
}

template <class T>
void store_raw(std::byte* base, std::uint64_t index, T value) {
    std::memcpy(base + index * sizeof(T), &value, sizeof(T));
}

/// Float dtypes by storage type: uint16_t stands for float16.
template <class Storage>
double widen(Storage value) {
    if constexpr (std::is_same_v<Storage, std::uint16_t>) {
        return npz::half_to_double(value);
    } else {
        return static_cast<double>(value);
    }
}

template <class Storage>
Storage narrow(double value) {
    if constexpr (std::is_same_v<Storage, std::uint16_t>) {
        return npz::double_to_half(value);
    } else {
        return static_cast<Storage>(value);  // round to nearest even (default FP mode)
    }
}

/// Calls f with a value of the storage type of a float dtype.
template <class F>
decltype(auto) with_float_storage(npz::DType dtype, F&& f) {
    switch (dtype) {
        case npz::DType::float16:
            return f(std::uint16_t{});
        case npz::DType::float32:
            return f(float{});
        case npz::DType::float64:
            return f(double{});
        default:
            throw Error("internal error: not a float dtype");
    }
}

/// Calls f with a value of the C++ type of an integer or bool dtype (bool as uint8).
template <class F>
decltype(auto) with_integer_type(npz::DType dtype, F&& f) {
    switch (dtype) {
        case npz::DType::int8:
            return f(std::int8_t{});
        case npz::DType::int16:
            return f(std::int16_t{});
        case npz::DType::int32:
            return f(std::int32_t{});
        case npz::DType::int64:
            return f(std::int64_t{});
        case npz::DType::uint8:
        case npz::DType::boolean:
            return f(std::uint8_t{});
        case npz::DType::uint16:
            return f(std::uint16_t{});
        case npz::DType::uint32:
            return f(std::uint32_t{});
        case npz::DType::uint64:
            return f(std::uint64_t{});
        default:
            throw Error("internal error: not an integer dtype");
    }
}

// ---------------------------------------------------------------------------------------
// Portable kernels

/// out[i] = scale * acc[i] + sum_k w[k] * x_k[i]; true when every out[i] is finite.
template <class Storage>
bool mean_block_portable(const std::byte* const* x, const double* w, std::size_t sources,
                         const double* acc, double scale, double* out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) out[i] = acc ? scale * acc[i] : 0.0;
    for (std::size_t k = 0; k < sources; ++k) {
        double weight = w[k];
        for (std::size_t i = 0; i < n; ++i) {
            out[i] += weight * widen(load_raw<Storage>(x[k], i));
        }
    }
    double check = 0;
    for (std::size_t i = 0; i < n; ++i) check += out[i] * 0.0;
    return check == 0;
}

/// Index of the first non-finite element of x[0..n), or n.
template <class Storage>
std::size_t first_non_finite_portable(const std::byte* x, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        if (!std::isfinite(widen(load_raw<Storage>(x, i)))) return i;
    }
    return n;
}

/// Orders the non-temporal stores issued so far before later stores. Once per chunk, not
/// per block: a fence stalls until the write-combining buffers have drained.
void store_fence() {
#ifdef FEDCLI_AGGREGATE_X86
    _mm_sfence();
#endif
}

// ---------------------------------------------------------------------------------------
// AVX2 + FMA kernels

#ifdef FEDCLI_AGGREGATE_X86

bool have_avx2() {
    return kernel_level() >= KernelLevel::avx2;
}

/// The float32/float64 mean kernel: 16 elements per step in four independent float64 sums
/// (the FMA chains of consecutive sources overlap), written as float64 to `out64` or
/// converted to float32 into `out32` (non-temporal stores when 32-byte aligned: the result
/// is not read again soon, and skipping the read-for-ownership saves a tenth of the memory
/// traffic of an 8-update mean). NaN/Inf: OR of "sum * 0 is unordered" masks, which is off
/// the critical path.
template <bool Float64Input>
__attribute__((target("avx2,fma"))) bool mean_block_avx2(const std::byte* const* x, const double* w,
                                                         std::size_t sources, const double* acc,
                                                         double scale, double* out64, float* out32,
                                                         std::size_t n) {
    const __m256d zero = _mm256_setzero_pd();
    const __m256d vscale = _mm256_set1_pd(scale);
    __m256d bad = zero;
    bool stream = out32 && (reinterpret_cast<std::uintptr_t>(out32) & 31u) == 0;
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d s0 = zero, s1 = zero, s2 = zero, s3 = zero;
        if (acc) {
            s0 = _mm256_mul_pd(vscale, _mm256_loadu_pd(acc + i));
            s1 = _mm256_mul_pd(vscale, _mm256_loadu_pd(acc + i + 4));
            s2 = _mm256_mul_pd(vscale, _mm256_loadu_pd(acc + i + 8));
            s3 = _mm256_mul_pd(vscale, _mm256_loadu_pd(acc + i + 12));
        }
        for (std::size_t k = 0; k < sources; ++k) {
            __m256d weight = _mm256_broadcast_sd(w + k);
            __m256d v0, v1, v2, v3;
            if constexpr (Float64Input) {
                const double* p = reinterpret_cast<const double*>(x[k]) + i;
                v0 = _mm256_loadu_pd(p);
                v1 = _mm256_loadu_pd(p + 4);
                v2 = _mm256_loadu_pd(p + 8);
                v3 = _mm256_loadu_pd(p + 12);
            } else {
                const float* p = reinterpret_cast<const float*>(x[k]) + i;
                __m256 lo = _mm256_loadu_ps(p);
                __m256 hi = _mm256_loadu_ps(p + 8);
                v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(lo));
                v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1));
                v2 = _mm256_cvtps_pd(_mm256_castps256_ps128(hi));
                v3 = _mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1));
            }
            s0 = _mm256_fmadd_pd(weight, v0, s0);
            s1 = _mm256_fmadd_pd(weight, v1, s1);
            s2 = _mm256_fmadd_pd(weight, v2, s2);
            s3 = _mm256_fmadd_pd(weight, v3, s3);
        }
        if (out32) {
            __m256 lo = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(s0)),
                                             _mm256_cvtpd_ps(s1), 1);
            __m256 hi = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(s2)),
                                             _mm256_cvtpd_ps(s3), 1);
            if (stream) {
                _mm256_stream_ps(out32 + i, lo);
                _mm256_stream_ps(out32 + i + 8, hi);
            } else {
                _mm256_storeu_ps(out32 + i, lo);
                _mm256_storeu_ps(out32 + i + 8, hi);
            }
        } else {
            _mm256_storeu_pd(out64 + i, s0);
            _mm256_storeu_pd(out64 + i + 4, s1);
            _mm256_storeu_pd(out64 + i + 8, s2);
            _mm256_storeu_pd(out64 + i + 12, s3);
        }
        __m256d check =
            _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(s0, zero), _mm256_mul_pd(s1, zero)),
                          _mm256_add_pd(_mm256_mul_pd(s2, zero), _mm256_mul_pd(s3, zero)));
        bad = _mm256_or_pd(bad, _mm256_cmp_pd(check, check, _CMP_UNORD_Q));
    }
    bool finite = _mm256_movemask_pd(bad) == 0;
    for (; i < n; ++i) {
        double s = acc ? scale * acc[i] : 0.0;
        for (std::size_t k = 0; k < sources; ++k) {
            double value = Float64Input ? load_raw<double>(x[k], i)
                                        : static_cast<double>(load_raw<float>(x[k], i));
            s = std::fma(w[k], value, s);
        }
        if (out32) {
            out32[i] = static_cast<float>(s);
        } else {
            out64[i] = s;
        }
        finite = finite && std::isfinite(s);
    }
    return finite;
}

// GCC 12 reports the deliberately undefined upper halves inside its own AVX-512 conversion
// intrinsics as "maybe uninitialized" once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

/// Two vectors of 8 doubles rounded into one vector of 16 floats.
__attribute__((target("avx512f"))) inline __m512 pack_floats(__m512d a, __m512d b) {
    __m512d joined =
        _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm512_cvtpd_ps(a))),
                           _mm256_castps_pd(_mm512_cvtpd_ps(b)), 1);
    return _mm512_castpd_ps(joined);
}

/// The AVX-512 form of mean_block_avx2: 32 elements per step, one conversion per 8 floats.
template <bool Float64Input>
__attribute__((target("avx512f"))) bool mean_block_avx512(const std::byte* const* x,
                                                          const double* w, std::size_t sources,
                                                          const double* acc, double scale,
                                                          double* out64, float* out32,
                                                          std::size_t n) {
    const __m512d zero = _mm512_setzero_pd();
    const __m512d vscale = _mm512_set1_pd(scale);
    __mmask8 bad = 0;
    bool stream = out32 && (reinterpret_cast<std::uintptr_t>(out32) & 63u) == 0;
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d s0 = zero, s1 = zero, s2 = zero, s3 = zero;
        if (acc) {
            s0 = _mm512_mul_pd(vscale, _mm512_loadu_pd(acc + i));
            s1 = _mm512_mul_pd(vscale, _mm512_loadu_pd(acc + i + 8));
            s2 = _mm512_mul_pd(vscale, _mm512_loadu_pd(acc + i + 16));
            s3 = _mm512_mul_pd(vscale, _mm512_loadu_pd(acc + i + 24));
        }
        for (std::size_t k = 0; k < sources; ++k) {
            __m512d weight = _mm512_set1_pd(w[k]);
            __m512d v0, v1, v2, v3;
            if constexpr (Float64Input) {
                const double* p = reinterpret_cast<const double*>(x[k]) + i;
                v0 = _mm512_loadu_pd(p);
                v1 = _mm512_loadu_pd(p + 8);
                v2 = _mm512_loadu_pd(p + 16);
                v3 = _mm512_loadu_pd(p + 24);
            } else {
                const float* p = reinterpret_cast<const float*>(x[k]) + i;
                v0 = _mm512_cvtps_pd(_mm256_loadu_ps(p));
                v1 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 8));
                v2 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 16));
                v3 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 24));
            }
            s0 = _mm512_fmadd_pd(weight, v0, s0);
            s1 = _mm512_fmadd_pd(weight, v1, s1);
            s2 = _mm512_fmadd_pd(weight, v2, s2);
            s3 = _mm512_fmadd_pd(weight, v3, s3);
        }
        if (out32) {
            __m512 lo = pack_floats(s0, s1);
            __m512 hi = pack_floats(s2, s3);
            if (stream) {
                _mm512_stream_ps(out32 + i, lo);
                _mm512_stream_ps(out32 + i + 16, hi);
            } else {
                _mm512_storeu_ps(out32 + i, lo);
                _mm512_storeu_ps(out32 + i + 16, hi);
            }
        } else {
            _mm512_storeu_pd(out64 + i, s0);
            _mm512_storeu_pd(out64 + i + 8, s1);
            _mm512_storeu_pd(out64 + i + 16, s2);
            _mm512_storeu_pd(out64 + i + 24, s3);
        }
        __m512d check =
            _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(s0, zero), _mm512_mul_pd(s1, zero)),
                          _mm512_add_pd(_mm512_mul_pd(s2, zero), _mm512_mul_pd(s3, zero)));
        bad = static_cast<__mmask8>(bad | _mm512_cmp_pd_mask(check, check, _CMP_UNORD_Q));
    }
    bool finite = bad == 0;
    // The rest (fewer than 32 elements) in the AVX2 kernel's steps and tail.
    if (i < n) {
        std::vector<const std::byte*> rest(sources);
        std::size_t element = Float64Input ? 8 : 4;
        for (std::size_t k = 0; k < sources; ++k) rest[k] = x[k] + i * element;
        finite = mean_block_avx2<Float64Input>(rest.data(), w, sources, acc ? acc + i : nullptr,
                                               scale, out64 ? out64 + i : nullptr,
                                               out32 ? out32 + i : nullptr, n - i) &&
                 finite;
    }
    return finite;
}

#pragma GCC diagnostic pop

/// float64 -> float32 with non-temporal stores when `out` is 32-byte aligned: the result
/// is not read again soon, and skipping the read-for-ownership saves a tenth of the
/// traffic of a K=8 mean.
__attribute__((target("avx2,fma"))) void store_f32_avx2(const double* values, float* out,
                                                        std::size_t n) {
    std::size_t i = 0;
    bool aligned = (reinterpret_cast<std::uintptr_t>(out) & 31u) == 0;
    for (; i + 8 <= n; i += 8) {
        __m128 lo = _mm256_cvtpd_ps(_mm256_loadu_pd(values + i));
        __m128 hi = _mm256_cvtpd_ps(_mm256_loadu_pd(values + i + 4));
        __m256 v = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
        if (aligned) {
            _mm256_stream_ps(out + i, v);
        } else {
            _mm256_storeu_ps(out + i, v);
        }
    }
    for (; i < n; ++i) {
        float value = static_cast<float>(values[i]);
        std::memcpy(out + i, &value, sizeof value);
    }
    if (aligned) _mm_sfence();  // callers outside run_mean_pass do not fence
}

/// First non-finite float32 of x[0..n), or n.
__attribute__((target("avx2,fma"))) std::size_t first_non_finite_f32_avx2(const std::byte* x,
                                                                          std::size_t n) {
    const __m256 zero = _mm256_setzero_ps();
    std::size_t i = 0;
    // Blocks of 64: x * 0 is 0 for finite x and NaN otherwise, and NaN survives the adds.
    for (; i + 64 <= n; i += 64) {
        __m256 check = zero;
        for (std::size_t j = 0; j < 64; j += 8) {
            check = _mm256_fmadd_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(x) + i + j),
                                    zero, check);
        }
        if (_mm256_movemask_ps(_mm256_cmp_ps(check, check, _CMP_UNORD_Q)) != 0) {
            return i + first_non_finite_portable<float>(x + i * 4, 64);
        }
    }
    return i + first_non_finite_portable<float>(x + i * 4, n - i);
}

#endif  // FEDCLI_AGGREGATE_X86

/// Weighted mean of one block into `out64` (float64) or, when `out32` is set (float32
/// slots only), straight into float32. Returns false if some mean is not finite.
bool mean_block(npz::DType dtype, const std::byte* const* x, const double* w, std::size_t sources,
                const double* acc, double scale, double* out64, float* out32, std::size_t n) {
#ifdef FEDCLI_AGGREGATE_X86
    if (kernel_level() == KernelLevel::avx512) {
        if (dtype == npz::DType::float32) {
            return mean_block_avx512<false>(x, w, sources, acc, scale, out64, out32, n);
        }
        if (dtype == npz::DType::float64) {
            return mean_block_avx512<true>(x, w, sources, acc, scale, out64, nullptr, n);
        }
    }
    if (have_avx2()) {
        if (dtype == npz::DType::float32) {
            return mean_block_avx2<false>(x, w, sources, acc, scale, out64, out32, n);
        }
        if (dtype == npz::DType::float64) {
            return mean_block_avx2<true>(x, w, sources, acc, scale, out64, nullptr, n);
        }
    }
#endif
    if (out32) {
        alignas(64) double block[k_block];
        bool finite = mean_block_portable<float>(x, w, sources, acc, scale, block, n);
        for (std::size_t i = 0; i < n; ++i) out32[i] = static_cast<float>(block[i]);
        return finite;
    }
    return with_float_storage(dtype, [&](auto storage) {
        return mean_block_portable<decltype(storage)>(x, w, sources, acc, scale, out64, n);
    });
}

std::size_t first_non_finite(npz::DType dtype, const std::byte* x, std::size_t n) {
#ifdef FEDCLI_AGGREGATE_X86
    if (dtype == npz::DType::float32 && have_avx2()) return first_non_finite_f32_avx2(x, n);
#endif
    return with_float_storage(
        dtype, [&](auto storage) { return first_non_finite_portable<decltype(storage)>(x, n); });
}

/// Keeps, per source, the first non-finite position seen (in model order) across threads.
class NonFiniteTracker {
  public:
    explicit NonFiniteTracker(std::size_t sources) : m_found(sources) {}

    void note(std::size_t source, NonFinite candidate) {
        std::lock_guard lock(m_mutex);
        auto& current = m_found[source];
        if (!current || candidate.slot < current->slot ||
            (candidate.slot == current->slot && candidate.index < current->index)) {
            current = candidate;
        }
    }
    std::vector<std::optional<NonFinite>> take() { return std::move(m_found); }

  private:
    std::mutex m_mutex;
    std::vector<std::optional<NonFinite>> m_found;
};

}  // namespace

// ---------------------------------------------------------------------------------------

std::string format_index(const npz::Shape& shape, std::uint64_t flat) {
    std::vector<std::uint64_t> index(shape.size(), 0);
    for (std::size_t k = shape.size(); k-- > 0;) {
        if (shape[k] == 0) break;
        index[k] = flat % shape[k];
        flat /= shape[k];
    }
    return npz::format_shape(index);
}

std::string describe_non_finite(const Layout& layout, const NonFinite& found) {
    const Slot& slot = layout.slots[found.slot];
    std::string what = std::isnan(found.value) ? "NaN" : found.value > 0 ? "+Inf" : "-Inf";
    return "array \"" + slot.name + "\" holds " + what + " at " +
           format_index(slot.shape, found.index);
}

unsigned worker_count(unsigned setting, std::size_t tasks) {
    unsigned threads = setting;
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    return static_cast<unsigned>(std::min<std::size_t>(threads, std::max<std::size_t>(tasks, 1)));
}

std::vector<Chunk> float_chunks(const Layout& layout, std::uint64_t size) {
    size = std::max<std::uint64_t>(8, size / 8 * 8);
    std::vector<Chunk> chunks;
    for (std::size_t s = 0; s < layout.slots.size(); ++s) {
        const Slot& slot = layout.slots[s];
        if (!slot.is_float) continue;
        for (std::uint64_t offset = 0; offset < slot.count; offset += size) {
            chunks.push_back({s, offset, std::min(size, slot.count - offset)});
        }
    }
    return chunks;
}

double load_as_double(npz::DType dtype, const std::byte* base, std::uint64_t index) {
    switch (dtype) {
        case npz::DType::float16:
            return npz::half_to_double(load_raw<std::uint16_t>(base, index));
        case npz::DType::float32:
            return load_raw<float>(base, index);
        case npz::DType::float64:
            return load_raw<double>(base, index);
        case npz::DType::boolean:
            return load_raw<std::uint8_t>(base, index) != 0;
        default:
            return with_integer_type(dtype, [&](auto type) {
                return static_cast<double>(load_raw<decltype(type)>(base, index));
            });
    }
}

void load_doubles(npz::DType dtype, const std::byte* base, std::uint64_t offset, double* values,
                  std::size_t count) {
    if (npz::dtype_is_float(dtype)) {
        with_float_storage(dtype, [&](auto storage) {
            using Storage = decltype(storage);
            for (std::size_t i = 0; i < count; ++i) {
                values[i] = widen(load_raw<Storage>(base, offset + i));
            }
        });
        return;
    }
    for (std::size_t i = 0; i < count; ++i) values[i] = load_as_double(dtype, base, offset + i);
}

void store_doubles(npz::DType dtype, std::byte* base, std::uint64_t offset, const double* values,
                   std::size_t count) {
#ifdef FEDCLI_AGGREGATE_X86
    if (dtype == npz::DType::float32 && have_avx2()) {
        store_f32_avx2(values, reinterpret_cast<float*>(base) + offset, count);
        return;
    }
#endif
    with_float_storage(dtype, [&](auto storage) {
        using Storage = decltype(storage);
        for (std::size_t i = 0; i < count; ++i) {
            store_raw<Storage>(base, offset + i, narrow<Storage>(values[i]));
        }
    });
}

bool PassReport::clean() const {
    if (overflow) return false;
    for (const auto& found : non_finite) {
        if (found) return false;
    }
    return true;
}

PassReport run_mean_pass(const MeanPass& pass) {
    const Layout& layout = *pass.layout;
    std::size_t sources = pass.sources.size();
    // Files mapped with Residency::release are not read through the mapping at all: each
    // chunk is copied with pread into a per-thread staging buffer (reused from chunk to
    // chunk), so a pass over many large updates adds no file-backed pages to the resident
    // set. (Faulting chunks in and dropping them after use is not enough: the page cache
    // maps whole large folios and fault-around windows that overhang the chunk.)
    std::vector<const npz::MappedNpz*> release(sources, nullptr);
    for (std::size_t k = 0; k < sources; ++k) {
        const auto& file = pass.sources[k]->file;
        if (file && file->residency() == npz::Residency::release) release[k] = file.get();
    }
    // 256 Ki elements: long sequential runs per update, still many chunks to balance.
    // Released files: about 2 MiB of all sources together per chunk (each thread stages one
    // chunk of every source at a time), from 16 Ki to 256 Ki elements.
    std::uint64_t chunk_elements = 1 << 18;
    if (std::any_of(release.begin(), release.end(), [](auto* file) { return file; })) {
        chunk_elements =
            std::clamp<std::uint64_t>((std::uint64_t{2} << 20) / (4 * sources), 1 << 14, 1 << 18);
    }
    auto chunks = float_chunks(layout, chunk_elements);
    NonFiniteTracker tracker(sources);
    std::atomic<bool> overflow{false};

    parallel_for(chunks.size(), pass.threads, [&](std::size_t task) {
        const Chunk& chunk = chunks[task];
        const Slot& slot = layout.slots[chunk.slot];
        std::size_t element = npz::dtype_size(slot.dtype);
        alignas(64) double block[k_block];
        std::vector<const std::byte*> x(sources);
        std::vector<const std::byte*> base(sources);
        const auto chunk_bytes = static_cast<std::size_t>(chunk.count) * element;
        thread_local std::vector<std::byte> staging;
        for (std::size_t k = 0; k < sources; ++k) {
            base[k] = pass.sources[k]->data[chunk.slot] + chunk.offset * element;
            if (!release[k]) continue;
            if (staging.size() < sources * chunk_bytes) staging.resize(sources * chunk_bytes);
            std::byte* copy = staging.data() + k * chunk_bytes;
            if (release[k]->copy_out(base[k], chunk_bytes, copy)) base[k] = copy;
        }
        for (std::uint64_t done = 0; done < chunk.count; done += k_block) {
            std::uint64_t offset = chunk.offset + done;
            auto n = static_cast<std::size_t>(std::min<std::uint64_t>(k_block, chunk.count - done));
            for (std::size_t k = 0; k < sources; ++k) x[k] = base[k] + done * element;
            std::uint64_t flat = slot.float_offset + offset;
            std::byte* direct = pass.direct.empty() ? nullptr : pass.direct[chunk.slot];
            double* out64 = block;
            float* out32 = nullptr;
            if (pass.acc_out) {
                out64 = pass.acc_out + flat;
            } else if (direct && slot.dtype == npz::DType::float32) {
                out64 = nullptr;
                out32 = reinterpret_cast<float*>(direct) + offset;
            } else if (direct && slot.dtype == npz::DType::float64) {
                out64 = reinterpret_cast<double*>(direct) + offset;
            }
            const double* acc = pass.acc_in ? pass.acc_in + flat : nullptr;
            if (mean_block(slot.dtype, x.data(), pass.weights.data(), sources, acc, pass.acc_scale,
                           out64, out32, n)) {
                if (out64 == block) {
                    if (direct) {
                        store_doubles(slot.dtype, direct, offset, block, n);
                    } else {
                        pass.sink(chunk.slot, offset, block, n);
                    }
                }
                continue;
            }
            // Some sum is not finite: find out which inputs made it so.
            bool culprit = false;
            for (std::size_t k = 0; k < sources; ++k) {
                std::size_t at = first_non_finite(slot.dtype, x[k], n);
                if (at < n) {
                    culprit = true;
                    tracker.note(k,
                                 {chunk.slot, offset + at, load_as_double(slot.dtype, x[k], at)});
                }
            }
            if (!culprit) overflow = true;
        }
        store_fence();
    });
    // Whatever was read through the mappings (a fallback after a failed pread, small
    // integer arrays elsewhere) leaves the resident set with the pass.
    for (const auto* file : release) {
        if (file) file->release_all();
    }
    PassReport report;
    report.non_finite = tracker.take();
    report.overflow = overflow;
    return report;
}

std::vector<std::optional<NonFinite>> scan_non_finite(const Layout& layout,
                                                      const std::vector<const Source*>& sources,
                                                      unsigned threads) {
    auto chunks = float_chunks(layout, 1 << 18);
    NonFiniteTracker tracker(sources.size());
    parallel_for(chunks.size() * sources.size(), threads, [&](std::size_t task) {
        const Chunk& chunk = chunks[task / sources.size()];
        std::size_t k = task % sources.size();
        const Slot& slot = layout.slots[chunk.slot];
        const std::byte* x =
            sources[k]->data[chunk.slot] + chunk.offset * npz::dtype_size(slot.dtype);
        auto n = static_cast<std::size_t>(chunk.count);
        std::size_t at = first_non_finite(slot.dtype, x, n);
        if (at < n) {
            tracker.note(k, {chunk.slot, chunk.offset + at, load_as_double(slot.dtype, x, at)});
        }
    });
    return tracker.take();
}

void integer_max(const Layout& layout, std::size_t slot, const std::vector<const Source*>& sources,
                 std::byte* out, bool include_out) {
    const Slot& info = layout.slots[slot];
    bool boolean = info.dtype == npz::DType::boolean;
    with_integer_type(info.dtype, [&](auto type) {
        using T = decltype(type);
        for (std::uint64_t i = 0; i < info.count; ++i) {
            T best = include_out ? load_raw<T>(out, i) : std::numeric_limits<T>::lowest();
            for (const Source* source : sources)
                best = std::max(best, load_raw<T>(source->data[slot], i));
            if (boolean) best = best != 0;
            store_raw<T>(out, i, best);
        }
    });
}

void integer_lower_median(const Layout& layout, std::size_t slot,
                          const std::vector<const Source*>& sources, std::byte* out) {
    const Slot& info = layout.slots[slot];
    bool boolean = info.dtype == npz::DType::boolean;
    with_integer_type(info.dtype, [&](auto type) {
        using T = decltype(type);
        std::vector<T> values(sources.size());
        std::size_t middle = (sources.size() - 1) / 2;
        for (std::uint64_t i = 0; i < info.count; ++i) {
            for (std::size_t k = 0; k < sources.size(); ++k) {
                values[k] = load_raw<T>(sources[k]->data[slot], i);
                if (boolean) values[k] = values[k] != 0;
            }
            std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(middle),
                             values.end());
            store_raw<T>(out, i, values[middle]);
        }
    });
}

}  // namespace fedcli::aggregate::detail
