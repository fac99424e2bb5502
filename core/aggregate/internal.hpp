// Internals shared by the aggregators in core/aggregate (not part of the public API).
//
// Layout describes the global model's arrays; a Source is one validated update, its arrays
// located either in a memory-mapped file or in a shared in-memory ParameterSet; the
// kernels run multithreaded passes over the float arrays of several sources at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/aggregate/aggregator.hpp"
#include "core/npz/mapped.hpp"
#include "core/npz/npz.hpp"

namespace fedcli::aggregate::detail {

/// One array of the global model.
struct Slot {
    std::string name;
    npz::DType dtype = npz::DType::float32;
    npz::Shape shape;
    std::uint64_t count = 0;  ///< elements
    bool is_float = false;
    std::uint64_t float_offset = 0;  ///< position in a flat float64 buffer of all float arrays
};

/// The arrays of the global model, in its order.
struct Layout {
    std::vector<Slot> slots;
    std::uint64_t float_elements = 0;

    static Layout of(const npz::ParameterSet& model);
    /// True when `parameters` has exactly these names, dtypes and shapes, in this order.
    bool matches(const npz::ParameterSet& parameters) const;
    /// Gives `result` this layout, keeping its arrays when it already has it.
    void shape_result(npz::ParameterSet& result) const;
};

/// One validated update.
struct Source {
    std::size_t record = 0;  ///< index into RoundSummary::updates
    std::uint64_t num_examples = 0;
    std::shared_ptr<const npz::ParameterSet> memory;
    std::unique_ptr<npz::MappedNpz> file;
    std::vector<const std::byte*> data;  ///< per slot: C-order little-endian bytes
    /// True when some array had to be copied out of the file (deflate-compressed members,
    /// as np.savez_compressed and FEDn write them): the source then holds that memory.
    bool holds_copy = false;
};

/// The first NaN/Inf found in a source.
struct NonFinite {
    std::size_t slot = 0;
    std::uint64_t index = 0;
    double value = 0;
};

/// "array \"2\" holds NaN at [3, 1]"
std::string describe_non_finite(const Layout& layout, const NonFinite& found);
/// "[3, 1]" for a flat C-order index into `shape` ("[]" for 0-d).
std::string format_index(const npz::Shape& shape, std::uint64_t flat);

/// Worker threads for a `threads` setting (0: all cores), never more than `tasks`.
unsigned worker_count(unsigned setting, std::size_t tasks);

/// Runs body(task) for task in [0, tasks) on `threads` threads taking tasks in order from
/// a shared counter; rethrows the first exception after all threads stopped.
template <class Body>
void parallel_for(std::size_t tasks, unsigned threads, Body&& body) {
    if (tasks == 0) return;
    threads = worker_count(threads, tasks);
    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&] {
        try {
            for (std::size_t task; !failed.load(std::memory_order_relaxed) &&
                                   (task = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
                body(task);
            }
        } catch (...) {
            std::lock_guard lock(error_mutex);
            if (!error) error = std::current_exception();
            failed = true;
        }
    };
    if (threads <= 1) {
        work();
    } else {
        std::vector<std::thread> pool;
        pool.reserve(threads - 1);
        for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
        work();
        for (auto& thread : pool) thread.join();
    }
    if (error) std::rethrow_exception(error);
}

/// A range of elements of one float array: the unit of work of the kernels.
struct Chunk {
    std::size_t slot;
    std::uint64_t offset;
    std::uint64_t count;
};

/// Splits the float arrays into chunks of at most `size` elements (a multiple of 8, so
/// chunk starts keep the 32-byte alignment of an array's start).
std::vector<Chunk> float_chunks(const Layout& layout, std::uint64_t size);

// ---------------------------------------------------------------------------------------
// Element access (any dtype, unaligned source bytes)

double load_as_double(npz::DType dtype, const std::byte* base, std::uint64_t index);
/// Converts values[0..count) to `dtype` (rounding to nearest even) into base[offset..).
void store_doubles(npz::DType dtype, std::byte* base, std::uint64_t offset, const double* values,
                   std::size_t count);
/// Widens base[offset..offset+count) to float64.
void load_doubles(npz::DType dtype, const std::byte* base, std::uint64_t offset, double* values,
                  std::size_t count);

// ---------------------------------------------------------------------------------------
// Kernels

/// Instruction sets the kernels use, best last.
enum class KernelLevel { portable, avx2, avx512 };
/// What this CPU runs (x86-64: AVX2+FMA, AVX-512F; elsewhere portable C++), at most the cap.
KernelLevel kernel_level();
/// Caps the kernels used, so tests can run every path on one machine; returns the old cap.
KernelLevel cap_kernel_level(KernelLevel cap);

/// One weighted-mean pass over every float array:
///   mean[i] = acc_scale * acc_in[i] + sum_k weights[k] * source_k[i]
/// computed in float64 in one fused pass that reads each source once. The mean goes to
/// `acc_out` (float64, indexed by Slot::float_offset) when set; else, when `direct` is set
/// (one array per slot, of the slot's dtype), straight into those arrays, rounded once;
/// else to `sink` in blocks (called from worker threads on disjoint ranges).
struct MeanPass {
    const Layout* layout = nullptr;
    std::vector<const Source*> sources;
    std::vector<double> weights;
    const double* acc_in = nullptr;
    double acc_scale = 0;
    double* acc_out = nullptr;
    std::vector<std::byte*> direct;
    std::function<void(std::size_t slot, std::uint64_t offset, const double* mean,
                       std::size_t count)>
        sink;
    unsigned threads = 0;
};

/// Result of a pass: per source, its first NaN/Inf (in model order), if any. Any value
/// written for a chunk where a source was non-finite is meaningless. `overflow` is set
/// when a mean came out non-finite although every input was finite.
struct PassReport {
    std::vector<std::optional<NonFinite>> non_finite;
    bool overflow = false;
    bool clean() const;
};

PassReport run_mean_pass(const MeanPass& pass);

/// Finds the first NaN/Inf of each source's float arrays (one read of each source).
std::vector<std::optional<NonFinite>> scan_non_finite(const Layout& layout,
                                                      const std::vector<const Source*>& sources,
                                                      unsigned threads);

/// Integer/bool slot `slot`: out[i] = max(out[i] if include_out, max_k source_k[i]); bool
/// results are 0/1.
void integer_max(const Layout& layout, std::size_t slot, const std::vector<const Source*>& sources,
                 std::byte* out, bool include_out);
/// Integer/bool slot `slot`: elementwise lower median (element (n-1)/2 of the sorted
/// values), so the result is always one of the inputs.
void integer_lower_median(const Layout& layout, std::size_t slot,
                          const std::vector<const Source*>& sources, std::byte* out);

// ---------------------------------------------------------------------------------------
// Common machinery of every aggregator

/// Resolved settings: every parameter of the aggregator, defaults filled in.
using Settings = std::map<std::string, double>;

class AggregatorBase : public Aggregator {
  public:
    AggregatorBase(std::string name, Settings settings);

    std::string_view name() const override { return m_name; }
    const std::map<std::string, double>& settings() const override { return m_settings; }
    void begin_round(std::shared_ptr<const npz::ParameterSet> global) override;
    std::optional<Rejection> fold(const std::filesystem::path& file,
                                  const UpdateInfo& info) override;
    std::optional<Rejection> fold(std::shared_ptr<const npz::ParameterSet> update,
                                  const UpdateInfo& info) override;
    RoundSummary finish(npz::ParameterSet& result) override;
    const RoundSummary& summary() const override { return m_summary; }

    bool has_state() const override { return false; }
    void save_state(const std::filesystem::path& file) const override;
    void load_state(const std::filesystem::path& file) override;
    void reset_state() override {}

  protected:
    /// Takes a source that passed the header checks; returns a rejection reason to refuse
    /// it now (the source is then dropped).
    virtual std::optional<std::string> accept(std::unique_ptr<Source> source) = 0;
    /// Computes the result (already shaped like the global model) from the accepted
    /// sources; marks late rejections with reject(). Must throw via throw_if_none_usable()
    /// when nothing is left.
    virtual void compute(npz::ParameterSet& result) = 0;
    /// Called by begin_round() after the layout is set; drops per-round data.
    virtual void on_begin_round() {}
    /// Called when a round ends (finished or abandoned): drop sources.
    virtual void on_end_round() {}

    void reject(std::size_t record, std::string reason);
    /// Throws "no usable update in this round ..." listing the rejections, if no record is
    /// still marked used.
    void throw_if_none_usable() const;
    double setting(const std::string& key) const { return m_settings.at(key); }
    unsigned threads() const { return m_threads; }
    UpdateOutcome& outcome(std::size_t record) { return m_summary.updates[record]; }

    Layout m_layout;
    std::shared_ptr<const npz::ParameterSet> m_global;

  private:
    std::optional<Rejection> admit(std::size_t record, std::unique_ptr<Source> source,
                                   const UpdateInfo& info);
    std::size_t open_record(const UpdateInfo& info, std::string file);
    /// The start both fold() overloads share: records the update and checks its
    /// num_examples. Returns the rejection when the metadata already disqualifies it.
    std::optional<Rejection> open_fold(const UpdateInfo& info, std::string file,
                                       std::size_t& record);
    /// Marks `record` rejected and returns the Rejection fold() reports.
    Rejection refuse(std::size_t record, std::string reason);
    void require_round(const char* what) const;

    std::string m_name;
    Settings m_settings;
    unsigned m_threads = 0;
    bool m_in_round = false;
    RoundSummary m_summary;
};

/// Factories of the concrete aggregators (fedavg.cpp, fedopt.cpp, robust.cpp).
std::unique_ptr<Aggregator> make_fedavg(Settings settings);
std::unique_ptr<Aggregator> make_fedopt(const std::string& name, Settings settings);
std::unique_ptr<Aggregator> make_robust(const std::string& name, Settings settings);

}  // namespace fedcli::aggregate::detail
