// The streaming weighted mean behind fedavg, fedavgm and the FedOpt family (internal).
//
// Updates wait in a pending batch (file-backed ones memory-mapped, in-memory ones shared)
// until `batch` of them are there or the round finishes; a batch is then folded in one
// fused multithreaded pass that reads each pending update once and keeps a float64 running
// mean of all updates folded so far:
//   mean' = mean * (N / N') + sum_k (n_k / N') x_k,   N' = N + sum_k n_k.
// When the whole round fits in one batch (the usual case) there is no accumulator at all:
// the final pass goes straight from the updates to emit(), which writes the result.
//
// A NaN/Inf in an update shows up as a non-finite sum in the same pass. A pass whose
// output is a pure function of its inputs (no accumulator read, emit() idempotent) is
// simply redone without the offending updates; otherwise the batch is scanned for NaN/Inf
// first (one extra read), so a bad update can never leave a trace in the accumulator or
// in server state.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/aggregate/internal.hpp"

namespace fedcli::aggregate::detail {

class MeanAggregator : public AggregatorBase {
  public:
    MeanAggregator(std::string name, Settings settings);

  protected:
    std::optional<std::string> accept(std::unique_ptr<Source> source) override;
    void compute(npz::ParameterSet& result) override;
    void on_begin_round() override;
    void on_end_round() override;

    /// Writes the round's weighted mean of float slot `slot`, elements [offset, offset +
    /// count), into `result`. Called from worker threads on disjoint ranges.
    virtual void emit(std::size_t slot, std::uint64_t offset, const double* mean, std::size_t count,
                      npz::ParameterSet& result) = 0;
    /// True when emit() only writes `result`, so running it twice is harmless.
    virtual bool emit_is_idempotent() const = 0;
    /// True when the result is the mean itself: the final pass then writes it straight into
    /// the result arrays (converting in registers) and emit() is not called.
    virtual bool emit_is_store() const { return false; }
    /// Around the final pass: prepare and commit server state.
    virtual void before_final_pass() {}
    virtual void after_final_pass() {}

  private:
    /// Folds the pending batch: into the accumulator, or (final) through emit().
    void fold_pending(bool final, npz::ParameterSet* result);

    std::vector<std::unique_ptr<Source>> m_pending;
    npz::Buffer m_accumulator;  // float64 running mean of the float slots; reused
    bool m_have_accumulator = false;
    std::uint64_t m_accumulated_examples = 0;
    std::vector<npz::Array> m_integer;  // running max per integer slot (empty for floats)
    bool m_have_integer = false;
};

}  // namespace fedcli::aggregate::detail
