// fedavg and the streaming weighted mean it shares with fedavgm and the FedOpt family.
#include <algorithm>
#include <cstring>

#include "core/aggregate/mean.hpp"
#include "core/error.hpp"

namespace fedcli::aggregate::detail {

MeanAggregator::MeanAggregator(std::string name, Settings settings)
    : AggregatorBase(std::move(name), std::move(settings)) {}

void MeanAggregator::on_begin_round() {
    m_pending.clear();
    m_have_accumulator = false;
    m_accumulated_examples = 0;
    m_have_integer = false;
    bool same = m_integer.size() == m_layout.slots.size();
    for (std::size_t s = 0; same && s < m_layout.slots.size(); ++s) {
        const Slot& slot = m_layout.slots[s];
        same = slot.is_float
                   ? m_integer[s].size() == 0
                   : m_integer[s].dtype() == slot.dtype && m_integer[s].shape() == slot.shape;
    }
    if (!same) {
        m_integer.clear();
        for (const auto& slot : m_layout.slots) {
            m_integer.push_back(slot.is_float ? npz::Array() : npz::Array(slot.dtype, slot.shape));
        }
    }
}

void MeanAggregator::on_end_round() {
    m_pending.clear();
}

std::optional<std::string> MeanAggregator::accept(std::unique_ptr<Source> source) {
    // A source holding a decompressed copy is folded at once, so at most one such copy is
    // alive; mapped files and shared in-memory sets cost no memory of ours while pending.
    bool holds_copy = source->holds_copy;
    m_pending.push_back(std::move(source));
    if (holds_copy || m_pending.size() >= static_cast<std::size_t>(setting("batch"))) {
        fold_pending(false, nullptr);
    }
    return std::nullopt;
}

void MeanAggregator::compute(npz::ParameterSet& result) {
    fold_pending(true, &result);
}

void MeanAggregator::fold_pending(bool final, npz::ParameterSet* result) {
    std::vector<const Source*> batch;
    for (const auto& source : m_pending) batch.push_back(source.get());

    auto drop = [&](const std::vector<std::optional<NonFinite>>& found) {
        std::vector<const Source*> kept;
        for (std::size_t k = 0; k < batch.size(); ++k) {
            if (found[k]) {
                reject(batch[k]->record, describe_non_finite(m_layout, *found[k]));
            } else {
                kept.push_back(batch[k]);
            }
        }
        batch.swap(kept);
    };

    // A pass may be redone only when its output depends on nothing it overwrites.
    bool pure = !m_have_accumulator && (!final || emit_is_idempotent());
    if (!pure) drop(scan_non_finite(m_layout, batch, threads()));

    if (final) {
        if (batch.empty() && !m_have_accumulator) throw_if_none_usable();
        before_final_pass();
    } else if (!m_have_accumulator) {
        std::size_t bytes = static_cast<std::size_t>(m_layout.float_elements) * sizeof(double);
        if (m_accumulator.size() != bytes) m_accumulator = npz::Buffer(bytes);
    }

    for (;;) {
        std::uint64_t batch_examples = 0;
        for (const Source* source : batch) batch_examples += source->num_examples;
        if (batch.empty() && !final) break;
        double total = static_cast<double>(m_accumulated_examples + batch_examples);

        MeanPass pass;
        pass.layout = &m_layout;
        pass.sources = batch;
        for (const Source* source : batch) {
            pass.weights.push_back(static_cast<double>(source->num_examples) / total);
        }
        auto* accumulator = reinterpret_cast<double*>(m_accumulator.data());
        if (m_have_accumulator) {
            pass.acc_in = accumulator;
            pass.acc_scale = static_cast<double>(m_accumulated_examples) / total;
        }
        if (final && emit_is_store()) {
            for (auto& entry : *result) pass.direct.push_back(entry.array.data());
        } else if (final) {
            pass.sink = [&](std::size_t slot, std::uint64_t offset, const double* mean,
                            std::size_t count) { emit(slot, offset, mean, count, *result); };
        } else {
            pass.acc_out = accumulator;
        }
        pass.threads = threads();

        PassReport report = run_mean_pass(pass);
        if (report.clean()) {
            m_accumulated_examples += batch_examples;
            break;
        }
        bool any = std::any_of(report.non_finite.begin(), report.non_finite.end(),
                               [](const auto& found) { return found.has_value(); });
        if (!any) {
            throw Error(std::string(name()) +
                        ": the weighted mean overflows float64 (values near the float64 limit)");
        }
        drop(report.non_finite);
        if (final && batch.empty() && !m_have_accumulator) throw_if_none_usable();
    }

    // Integer and bool arrays: running elementwise maximum.
    if (!batch.empty()) {
        for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
            if (m_layout.slots[s].is_float) continue;
            integer_max(m_layout, s, batch, m_integer[s].data(), m_have_integer);
        }
        m_have_integer = true;
    }
    if (!final) {
        m_have_accumulator = m_have_accumulator || !batch.empty();
        m_pending.clear();
        return;
    }
    for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
        if (m_layout.slots[s].is_float) continue;
        auto bytes = static_cast<std::size_t>((*result)[s].array.byte_size());
        if (bytes) std::memcpy((*result)[s].array.data(), m_integer[s].data(), bytes);
    }
    after_final_pass();
    m_pending.clear();
}

namespace {

class FedAvg final : public MeanAggregator {
  public:
    explicit FedAvg(Settings settings) : MeanAggregator("fedavg", std::move(settings)) {}

  protected:
    void emit(std::size_t slot, std::uint64_t offset, const double* mean, std::size_t count,
              npz::ParameterSet& result) override {
        store_doubles(m_layout.slots[slot].dtype, result[slot].array.data(), offset, mean, count);
    }
    bool emit_is_idempotent() const override { return true; }
    bool emit_is_store() const override { return true; }
};

}  // namespace

std::unique_ptr<Aggregator> make_fedavg(Settings settings) {
    return std::make_unique<FedAvg>(std::move(settings));
}

}  // namespace fedcli::aggregate::detail
