// Server optimisers on the pseudo-gradient: fedavgm and the FedOpt family (fedadam,
// fedyogi, fedadagrad) of Reddi et al. 2020, "Adaptive Federated Optimization", with
// FEDn's conventions: no bias correction, m starts at 0 and v at tau^2.
//
// Per float element, with delta = (weighted mean of the updates) - global:
//   fedavgm:    u = momentum*u + delta;                  new = global + lr*u
//   fedadam:    m = b1*m + (1-b1)*delta;  v = b2*v + (1-b2)*delta^2
//   fedyogi:    m as adam;                v = v - (1-b2)*delta^2*sign(v - delta^2)
//   fedadagrad: m as adam;                v = v + delta^2
//   (adaptive)  new = global + lr*m/(sqrt(v) + tau)
// computed in float64; the state keeps float32 for float16/float32 arrays and float64 for
// float64 arrays, and is saved as "m/<array>" (fedavgm's u too) and "v/<array>".
#include <cmath>
#include <cstring>

#include "core/aggregate/mean.hpp"
#include "core/error.hpp"

namespace fedcli::aggregate::detail {
namespace {

enum class Rule { momentum, adam, yogi, adagrad };

npz::DType state_dtype(npz::DType dtype) {
    return dtype == npz::DType::float64 ? npz::DType::float64 : npz::DType::float32;
}

class ServerOptimizer final : public MeanAggregator {
  public:
    ServerOptimizer(const std::string& name, Rule rule, Settings settings)
        : MeanAggregator(name, std::move(settings)), m_rule(rule) {
        m_learning_rate = setting("learning_rate");
        if (rule == Rule::momentum) {
            m_momentum = setting("momentum");
        } else {
            m_beta1 = setting("beta1");
            m_beta2 = rule == Rule::adagrad ? 0.0 : setting("beta2");
            m_tau = setting("tau");
        }
    }

    bool has_state() const override { return true; }

    void save_state(const std::filesystem::path& file) const override {
        npz::write_npz(file, m_fresh ? npz::ParameterSet() : clone(m_state));
    }

    void load_state(const std::filesystem::path& file) override {
        auto state = npz::read_npz(file);
        for (const auto& entry : state) {
            bool moment = entry.name.rfind("m/", 0) == 0 ||
                          (m_rule != Rule::momentum && entry.name.rfind("v/", 0) == 0);
            if (!moment) {
                throw Error(
                    file.string() + ": array \"" + entry.name + "\" is not " + std::string(name()) +
                    " state (expected " +
                    (m_rule == Rule::momentum ? "\"m/<array>\"" : "\"m/<array>\", \"v/<array>\"") +
                    ")");
            }
        }
        m_state = std::move(state);
        m_fresh = m_state.empty();
        m_state_source = file.string();
    }

    void reset_state() override {
        m_state = npz::ParameterSet();
        m_fresh = true;
    }

  protected:
    bool emit_is_idempotent() const override { return false; }

    void on_begin_round() override {
        MeanAggregator::on_begin_round();
        if (!m_fresh) check_state();
        // The step starts from the global values: a NaN there would poison the state.
        Source global;
        for (const auto& entry : *m_global) global.data.push_back(entry.array.data());
        auto found = scan_non_finite(m_layout, {&global}, threads());
        if (found.front()) {
            throw Error(std::string(name()) + ": the global model's " +
                        describe_non_finite(m_layout, *found.front()));
        }
    }

    void before_final_pass() override {
        if (m_fresh) {
            // First round: allocate; emit() treats the contents as m = 0, v = tau^2.
            m_state = npz::ParameterSet();
            for (const char* prefix : {"m/", "v/"}) {
                if (m_rule == Rule::momentum && prefix[0] == 'v') continue;
                for (const auto& slot : m_layout.slots) {
                    if (!slot.is_float) continue;
                    m_state.add(prefix + slot.name,
                                npz::Array(state_dtype(slot.dtype), slot.shape));
                }
            }
        }
        m_moment1.assign(m_layout.slots.size(), nullptr);
        m_moment2.assign(m_layout.slots.size(), nullptr);
        for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
            const Slot& slot = m_layout.slots[s];
            if (!slot.is_float) continue;
            m_moment1[s] = m_state.find("m/" + slot.name)->data();
            if (m_rule != Rule::momentum) m_moment2[s] = m_state.find("v/" + slot.name)->data();
        }
    }

    void after_final_pass() override {
        m_fresh = false;
        m_state_source.clear();
    }

    void emit(std::size_t s, std::uint64_t offset, const double* mean, std::size_t count,
              npz::ParameterSet& result) override {
        const Slot& slot = m_layout.slots[s];
        const std::byte* global = (*m_global)[s].array.data();
        npz::DType state = state_dtype(slot.dtype);
        constexpr std::size_t k_block = 1024;
        double value[k_block], first[k_block], second[k_block];
        for (std::size_t done = 0; done < count; done += k_block) {
            std::size_t n = std::min(k_block, count - done);
            std::uint64_t at = offset + done;
            load_doubles(slot.dtype, global, at, value, n);
            if (m_fresh) {
                std::fill_n(first, n, 0.0);
                std::fill_n(second, n, m_tau * m_tau);
            } else {
                load_doubles(state, m_moment1[s], at, first, n);
                if (m_moment2[s]) load_doubles(state, m_moment2[s], at, second, n);
            }
            for (std::size_t i = 0; i < n; ++i) {
                double delta = mean[done + i] - value[i];
                if (m_rule == Rule::momentum) {
                    first[i] = m_momentum * first[i] + delta;
                    value[i] = value[i] + m_learning_rate * first[i];
                    continue;
                }
                first[i] = m_beta1 * first[i] + (1.0 - m_beta1) * delta;
                double squared = delta * delta;
                switch (m_rule) {
                    case Rule::adam:
                        second[i] = m_beta2 * second[i] + (1.0 - m_beta2) * squared;
                        break;
                    case Rule::yogi: {
                        double difference = second[i] - squared;
                        double sign = difference > 0 ? 1.0 : difference < 0 ? -1.0 : 0.0;
                        second[i] = second[i] - (1.0 - m_beta2) * squared * sign;
                        break;
                    }
                    case Rule::adagrad:
                        second[i] = second[i] + squared;
                        break;
                    case Rule::momentum:
                        break;
                }
                value[i] = value[i] + m_learning_rate * first[i] / (std::sqrt(second[i]) + m_tau);
            }
            store_doubles(state, m_moment1[s], at, first, n);
            if (m_moment2[s]) store_doubles(state, m_moment2[s], at, second, n);
            store_doubles(slot.dtype, result[s].array.data(), at, value, n);
        }
    }

  private:
    static npz::ParameterSet clone(const npz::ParameterSet& set) {
        npz::ParameterSet copy;
        for (const auto& entry : set) copy.add(entry.name, entry.array.clone());
        return copy;
    }

    /// Loaded or earlier state must have one float array per float slot and moment.
    void check_state() const {
        std::string where =
            m_state_source.empty() ? "server state" : "server state (" + m_state_source + ")";
        std::size_t expected = 0;
        for (const char* prefix : {"m/", "v/"}) {
            if (m_rule == Rule::momentum && prefix[0] == 'v') continue;
            for (const auto& slot : m_layout.slots) {
                if (!slot.is_float) continue;
                ++expected;
                std::string key = prefix + slot.name;
                const npz::Array* array = m_state.find(key);
                if (!array) {
                    throw Error(where + " does not match the global model: no array \"" + key +
                                "\" (reset the state to start the optimiser afresh)");
                }
                if (array->dtype() != state_dtype(slot.dtype) || array->shape() != slot.shape) {
                    throw Error(where + " does not match the global model: \"" + key + "\" is " +
                                std::string(npz::dtype_name(array->dtype())) + " " +
                                npz::format_shape(array->shape()) + ", expected " +
                                std::string(npz::dtype_name(state_dtype(slot.dtype))) + " " +
                                npz::format_shape(slot.shape));
                }
            }
        }
        if (m_state.size() != expected) {
            throw Error(where + " does not match the global model: it holds " +
                        std::to_string(m_state.size()) + " arrays, the model needs " +
                        std::to_string(expected));
        }
    }

    Rule m_rule;
    double m_learning_rate = 0, m_momentum = 0, m_beta1 = 0, m_beta2 = 0, m_tau = 0;
    npz::ParameterSet m_state;
    bool m_fresh = true;
    std::string m_state_source;
    std::vector<std::byte*> m_moment1, m_moment2;  // per slot, during the final pass
};

}  // namespace

std::unique_ptr<Aggregator> make_fedopt(const std::string& name, Settings settings) {
    Rule rule = name == "fedavgm"   ? Rule::momentum
                : name == "fedadam" ? Rule::adam
                : name == "fedyogi" ? Rule::yogi
                                    : Rule::adagrad;
    return std::make_unique<ServerOptimizer>(name, rule, std::move(settings));
}

}  // namespace fedcli::aggregate::detail
