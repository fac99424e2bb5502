// Byzantine-robust aggregators: fedmedian, trimmedmean (Yin et al. 2018, "Byzantine-Robust
// Distributed Learning: Towards Optimal Statistical Rates") and krum/multikrum (Blanchard et
// al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent").
//
// They need every update of the round at once. Updates stay where they are (memory-mapped
// files or the caller's shared sets); each is scanned for NaN/Inf when folded, and finish()
// walks all of them block by block, so the extra memory is a few blocks per thread.
// Their rules are unweighted: num_examples is validated and reported but does not weigh,
// because a Byzantine client could claim any count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>

#include "core/aggregate/internal.hpp"
#include "core/error.hpp"

namespace fedcli::aggregate::detail {
namespace {

constexpr std::size_t k_block = 256;

/// Loads `count` elements at `offset` of slot `slot` from every source as doubles, source k
/// at values[k * k_block ...]: the block the robust rules compare across updates.
void load_block(const std::vector<const Source*>& sources, const Slot& slot_info, std::size_t slot,
                std::uint64_t offset, std::size_t count, double* values) {
    for (std::size_t k = 0; k < sources.size(); ++k) {
        load_doubles(slot_info.dtype, sources[k]->data[slot], offset, values + k * k_block, count);
    }
}

class RobustAggregator : public AggregatorBase {
  public:
    using AggregatorBase::AggregatorBase;

  protected:
    std::optional<std::string> accept(std::unique_ptr<Source> source) override {
        auto found = scan_non_finite(m_layout, {source.get()}, threads());
        if (found.front()) return describe_non_finite(m_layout, *found.front());
        m_sources.push_back(std::move(source));
        return std::nullopt;
    }

    void on_begin_round() override { m_sources.clear(); }
    void on_end_round() override { m_sources.clear(); }

    std::vector<const Source*> sources() const {
        std::vector<const Source*> all;
        for (const auto& source : m_sources) all.push_back(source.get());
        return all;
    }

    /// Runs reduce(column, n) -> double over every float element, where column holds the
    /// element's value in each source (float64), and stores the results.
    template <class Reduce>
    void coordinatewise(const std::vector<const Source*>& all, npz::ParameterSet& result,
                        Reduce reduce) {
        auto chunks = float_chunks(m_layout, 1 << 16);
        std::size_t count = all.size();
        parallel_for(chunks.size(), threads(), [&](std::size_t task) {
            const Chunk& chunk = chunks[task];
            const Slot& slot = m_layout.slots[chunk.slot];
            std::vector<double> values(count * k_block), column(count), out(k_block);
            for (std::uint64_t done = 0; done < chunk.count; done += k_block) {
                std::uint64_t offset = chunk.offset + done;
                auto n =
                    static_cast<std::size_t>(std::min<std::uint64_t>(k_block, chunk.count - done));
                load_block(all, slot, chunk.slot, offset, n, values.data());
                for (std::size_t i = 0; i < n; ++i) {
                    for (std::size_t k = 0; k < count; ++k) column[k] = values[k * k_block + i];
                    out[i] = reduce(column);
                }
                store_doubles(slot.dtype, result[chunk.slot].array.data(), offset, out.data(), n);
            }
        });
    }

    std::vector<std::unique_ptr<Source>> m_sources;
};

class Median final : public RobustAggregator {
  public:
    explicit Median(Settings settings) : RobustAggregator("fedmedian", std::move(settings)) {}

  protected:
    void compute(npz::ParameterSet& result) override {
        auto all = sources();
        coordinatewise(all, result, [](std::vector<double>& column) {
            std::size_t n = column.size();
            auto middle = column.begin() + static_cast<std::ptrdiff_t>(n / 2);
            std::nth_element(column.begin(), middle, column.end());
            double upper = *middle;
            if (n % 2) return upper;
            double lower = *std::max_element(column.begin(), middle);
            return lower / 2 + upper / 2;  // no overflow, exact when representable
        });
        for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
            if (!m_layout.slots[s].is_float) {
                integer_lower_median(m_layout, s, all, result[s].array.data());
            }
        }
    }
};

class TrimmedMean final : public RobustAggregator {
  public:
    explicit TrimmedMean(Settings settings)
        : RobustAggregator("trimmedmean", std::move(settings)), m_beta(setting("beta")) {}

  protected:
    void compute(npz::ParameterSet& result) override {
        auto all = sources();
        std::size_t n = all.size();
        auto trim = static_cast<std::size_t>(std::floor(m_beta * static_cast<double>(n)));
        std::size_t kept = n - 2 * trim;  // >= 1 because beta < 0.5
        coordinatewise(all, result, [&](std::vector<double>& column) {
            std::sort(column.begin(), column.end());
            double sum = 0;
            for (std::size_t k = trim; k < trim + kept; ++k) sum += column[k];
            return sum / static_cast<double>(kept);
        });
        for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
            if (!m_layout.slots[s].is_float) {
                integer_lower_median(m_layout, s, all, result[s].array.data());
            }
        }
    }

  private:
    double m_beta;
};

class Krum final : public RobustAggregator {
  public:
    Krum(const std::string& name, Settings settings, bool multi)
        : RobustAggregator(name, std::move(settings)), m_multi(multi) {
        m_byzantine = static_cast<std::size_t>(setting("f"));
        if (multi) m_select = static_cast<std::size_t>(setting("m"));
    }

  protected:
    void compute(npz::ParameterSet& result) override {
        auto all = sources();
        std::size_t n = all.size();
        if (n < 2 * m_byzantine + 3) {
            throw Error(std::string(name()) + " with f=" + std::to_string(m_byzantine) +
                        " needs at least " + std::to_string(2 * m_byzantine + 3) +
                        " usable updates (n >= 2f+3), got " + std::to_string(n));
        }
        std::size_t select = 1;
        if (m_multi) {
            select = m_select == 0 ? n - m_byzantine : m_select;
            if (select > n - m_byzantine) {
                throw Error(std::string(name()) + ": m=" + std::to_string(select) +
                            " exceeds n - f = " + std::to_string(n - m_byzantine) +
                            " (n = " + std::to_string(n) + " usable updates)");
            }
        }

        auto distances = squared_distances(all);
        std::size_t neighbours = n - m_byzantine - 2;
        std::vector<double> scores(n);
        for (std::size_t i = 0; i < n; ++i) {
            std::vector<double> others;
            for (std::size_t j = 0; j < n; ++j) {
                if (j != i) others.push_back(distances[i * n + j]);
            }
            std::sort(others.begin(), others.end());
            scores[i] = std::accumulate(
                others.begin(), others.begin() + static_cast<std::ptrdiff_t>(neighbours), 0.0);
        }
        std::vector<std::size_t> order(n);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });

        std::vector<const Source*> chosen;
        for (std::size_t rank = 0; rank < n; ++rank) {
            std::size_t k = order[rank];
            auto& outcome = this->outcome(all[k]->record);
            outcome.score = scores[k];
            if (rank < select) {
                chosen.push_back(all[k]);
            } else {
                outcome.status = UpdateStatus::not_selected;
                outcome.reason = "not selected by " + std::string(name()) + " (score " +
                                 std::to_string(scores[k]) + ", rank " + std::to_string(rank + 1) +
                                 " of " + std::to_string(n) + ")";
            }
        }

        if (chosen.size() == 1) {
            // Krum: the chosen update itself, bit for bit.
            for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
                auto bytes = static_cast<std::size_t>(result[s].array.byte_size());
                if (bytes) std::memcpy(result[s].array.data(), chosen.front()->data[s], bytes);
            }
            return;
        }
        MeanPass pass;
        pass.layout = &m_layout;
        pass.sources = chosen;
        pass.weights.assign(chosen.size(), 1.0 / static_cast<double>(chosen.size()));
        for (auto& entry : result) pass.direct.push_back(entry.array.data());
        pass.threads = threads();
        if (!run_mean_pass(pass).clean()) {
            throw Error(std::string(name()) + ": the mean overflows float64");
        }
        for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
            if (!m_layout.slots[s].is_float) {
                integer_max(m_layout, s, chosen, result[s].array.data(), false);
            }
        }
    }

  private:
    /// n x n squared L2 distances over all float arrays, summed in a fixed order (per chunk,
    /// then chunks in model order) so the scores do not depend on thread timing.
    std::vector<double> squared_distances(const std::vector<const Source*>& all) const {
        std::size_t n = all.size();
        auto chunks = float_chunks(m_layout, 1 << 18);
        std::vector<double> partial(chunks.size() * n * n, 0.0);
        parallel_for(chunks.size(), threads(), [&](std::size_t task) {
            const Chunk& chunk = chunks[task];
            const Slot& slot = m_layout.slots[chunk.slot];
            double* sums = partial.data() + task * n * n;
            std::vector<double> values(n * k_block);
            for (std::uint64_t done = 0; done < chunk.count; done += k_block) {
                std::uint64_t offset = chunk.offset + done;
                auto count =
                    static_cast<std::size_t>(std::min<std::uint64_t>(k_block, chunk.count - done));
                load_block(all, slot, chunk.slot, offset, count, values.data());
                for (std::size_t a = 0; a < n; ++a) {
                    for (std::size_t b = a + 1; b < n; ++b) {
                        const double* x = values.data() + a * k_block;
                        const double* y = values.data() + b * k_block;
                        double sum = 0;
                        for (std::size_t i = 0; i < count; ++i) {
                            double d = x[i] - y[i];
                            sum += d * d;
                        }
                        sums[a * n + b] += sum;
                    }
                }
            }
        });
        std::vector<double> distances(n * n, 0.0);
        for (std::size_t task = 0; task < chunks.size(); ++task) {
            for (std::size_t a = 0; a < n; ++a) {
                for (std::size_t b = a + 1; b < n; ++b) {
                    distances[a * n + b] += partial[task * n * n + a * n + b];
                }
            }
        }
        for (std::size_t a = 0; a < n; ++a) {
            for (std::size_t b = a + 1; b < n; ++b) distances[b * n + a] = distances[a * n + b];
        }
        return distances;
    }

    bool m_multi;
    std::size_t m_byzantine = 0;
    std::size_t m_select = 0;
};

}  // namespace

std::unique_ptr<Aggregator> make_robust(const std::string& name, Settings settings) {
    if (name == "fedmedian") return std::make_unique<Median>(std::move(settings));
    if (name == "trimmedmean") return std::make_unique<TrimmedMean>(std::move(settings));
    if (name == "krum") return std::make_unique<Krum>(name, std::move(settings), false);
    return std::make_unique<Krum>(name, std::move(settings), true);
}

}  // namespace fedcli::aggregate::detail
