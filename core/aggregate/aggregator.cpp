#include "core/aggregate/aggregator.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_map>

#include "core/aggregate/internal.hpp"
#include "core/error.hpp"
#include "core/util/suggest.hpp"

namespace fedcli::aggregate {
namespace {

constexpr double k_infinity = std::numeric_limits<double>::infinity();
// Integers above 2^53 do not survive the trip through double.
constexpr double k_max_exact_integer = 9007199254740992.0;

std::string trim(std::string_view text) {
    auto begin = text.find_first_not_of(" \t\r\n");
    if (begin == std::string_view::npos) return {};
    auto end = text.find_last_not_of(" \t\r\n");
    return std::string(text.substr(begin, end - begin + 1));
}

std::string format_number(double value) {
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    if (value == std::floor(value) && std::fabs(value) < 1e15) {
        return std::to_string(static_cast<long long>(value));
    }
    // Shortest form that reads back.
    for (int digits = 1;; ++digits) {
        std::ostringstream out;
        out.precision(digits);
        out << value;
        if (digits >= 17 || std::stod(out.str()) == value) return out.str();
    }
}

/// " (did you mean 'x'?)" for the closest candidate within a small edit distance.
std::string did_you_mean(std::string_view given, const std::vector<std::string_view>& candidates) {
    std::string_view best;
    std::size_t best_distance = std::numeric_limits<std::size_t>::max();
    for (auto candidate : candidates) {
        std::size_t distance = util::edit_distance(given, candidate);
        // "adam" for "fedadam", "fedad" for "fedadagrad".
        bool affix = given.size() >= 3 && candidate.size() > given.size() &&
                     (candidate.substr(0, given.size()) == given ||
                      candidate.substr(candidate.size() - given.size()) == given);
        if (affix) distance = std::min<std::size_t>(distance, 1);
        if (distance < best_distance) {
            best_distance = distance;
            best = candidate;
        }
    }
    std::size_t allowed = std::max<std::size_t>(2, given.size() / 3);
    if (best.empty() || best_distance > allowed) return {};
    return " (did you mean '" + std::string(best) + "'?)";
}

std::string join(const std::vector<std::string_view>& items) {
    std::string text;
    for (auto item : items) {
        if (!text.empty()) text += ", ";
        text += item;
    }
    return text;
}

double value_of(const std::string& key, const nlohmann::json& value) {
    if (value.is_boolean()) return value.get<bool>() ? 1.0 : 0.0;
    if (value.is_number()) {
        double number = value.get<double>();
        if (value.is_number_integer() && std::fabs(number) > k_max_exact_integer) {
            throw Error("config: '" + key + "' is too large (" + value.dump() + ")");
        }
        return number;
    }
    throw Error("config: '" + key + "' must be a number or true/false, got " + value.dump());
}

// ---------------------------------------------------------------------------------------
// Catalog

ParameterInfo real(std::string_view key, double value, std::string_view description, double minimum,
                   bool minimum_inclusive, double maximum, bool maximum_inclusive) {
    return {key, value, description, false, minimum, minimum_inclusive, maximum, maximum_inclusive};
}

ParameterInfo whole(std::string_view key, double value, std::string_view description,
                    double minimum, double maximum) {
    return {key, value, description, true, minimum, true, maximum, true};
}

std::vector<ParameterInfo> common_parameters(bool streaming) {
    std::vector<ParameterInfo> parameters;
    if (streaming) {
        parameters.push_back(whole("batch", 16,
                                   "updates kept pending (memory-mapped) and folded together in "
                                   "one pass over the accumulator",
                                   1, 4096));
    }
    parameters.push_back(whole("max_examples", 1e9,
                               "largest num_examples an update may claim; larger ones are "
                               "rejected",
                               1, k_max_exact_integer));
    parameters.push_back(whole("threads", 0, "worker threads; 0 = all cores", 0, 1024));
    parameters.push_back(whole("verify_crc", 1,
                               "1: check each update file's CRC-32 while mapping it (one extra "
                               "read of the file); 0: trust the file",
                               0, 1));
    parameters.push_back(whole("release_pages", 0,
                               "1: keep update files' pages out of this process's resident "
                               "memory (fault in a window, drop it after use; the page cache "
                               "keeps the data), for servers with a memory budget",
                               0, 1));
    return parameters;
}

std::vector<ParameterInfo> with_common(std::vector<ParameterInfo> own, bool streaming) {
    auto common = common_parameters(streaming);
    own.insert(own.end(), common.begin(), common.end());
    return own;
}

ParameterInfo learning_rate(double value) {
    return real("learning_rate", value, "server learning rate (alias: lr)", 0, false, k_infinity,
                false);
}
ParameterInfo beta1() {
    return real("beta1", 0.9, "decay of the first moment m", 0, true, 1, false);
}
ParameterInfo beta2() {
    return real("beta2", 0.99, "decay of the second moment v", 0, true, 1, false);
}
ParameterInfo tau() {
    return real("tau", 1e-4, "adaptivity: added to sqrt(v) in the step; v starts at tau^2", 0,
                false, k_infinity, false);
}

std::vector<AggregatorInfo> build_catalog() {
    std::vector<AggregatorInfo> catalog;
    catalog.push_back({"fedavg",
                       "weighted mean of the updates by num_examples (McMahan et al. 2017)",
                       with_common({}, true)});
    catalog.push_back(
        {"fedavgm",
         "FedAvg with server momentum: u = momentum*u + delta, new = global + lr*u (Hsu et al. "
         "2019)",
         with_common(
             {learning_rate(1.0), real("momentum", 0.9, "server momentum", 0, true, 1, false)},
             true)});
    catalog.push_back({"fedadam", "server-side Adam on the pseudo-gradient (Reddi et al. 2020)",
                       with_common({learning_rate(1e-3), beta1(), beta2(), tau()}, true)});
    catalog.push_back({"fedyogi", "server-side Yogi on the pseudo-gradient (Reddi et al. 2020)",
                       with_common({learning_rate(1e-3), beta1(), beta2(), tau()}, true)});
    catalog.push_back({"fedadagrad",
                       "server-side Adagrad on the pseudo-gradient (Reddi et al. 2020)",
                       with_common({learning_rate(1e-3), beta1(), tau()}, true)});
    catalog.push_back({"fedmedian", "coordinate-wise median of the updates (Yin et al. 2018)",
                       with_common({}, false)});
    catalog.push_back(
        {"trimmedmean",
         "coordinate-wise mean after dropping the floor(beta*n) smallest and largest "
         "values (Yin et al. 2018)",
         with_common({real("beta", 0.2, "fraction trimmed at each end", 0, true, 0.5, false)},
                     false)});
    catalog.push_back(
        {"krum", "the update closest to its n-f-2 nearest neighbours (Blanchard et al. 2017)",
         with_common({whole("f", 1, "Byzantine updates tolerated; needs n >= 2f+3", 0, 1e6)},
                     false)});
    catalog.push_back(
        {"multikrum", "mean of the m updates with the best Krum scores (Blanchard et al. 2017)",
         with_common({whole("f", 1, "Byzantine updates tolerated; needs n >= 2f+3", 0, 1e6),
                      whole("m", 0, "updates averaged; 0 = n - f", 0, 1e6)},
                     false)});
    return catalog;
}

std::string range_text(const ParameterInfo& parameter) {
    return std::string(parameter.minimum_inclusive ? "[" : "(") + format_number(parameter.minimum) +
           ", " + format_number(parameter.maximum) + (parameter.maximum_inclusive ? "]" : ")");
}

// ---------------------------------------------------------------------------------------
// Validation helpers

std::string describe_update(const std::string& client, const std::string& file,
                            std::size_t ordinal) {
    if (!client.empty()) {
        return "update from client '" + client + "'" + (file.empty() ? "" : " (" + file + ")");
    }
    if (!file.empty()) return "update '" + file + "'";
    return "update #" + std::to_string(ordinal);
}

/// Checks metadata["num_examples"]; returns the reason for a rejection.
std::optional<std::string> check_num_examples(const UpdateInfo& info, double cap,
                                              std::uint64_t& value) {
    if (!info.metadata_error.empty()) return info.metadata_error;
    const auto& metadata = info.metadata;
    if (!metadata.is_object()) return "metadata is not a JSON object";
    auto found = metadata.find("num_examples");
    if (found == metadata.end()) return "metadata has no \"num_examples\"";
    const auto& count = *found;
    if (count.is_number_unsigned()) {
        value = count.get<std::uint64_t>();
    } else if (count.is_number_integer() && count.get<std::int64_t>() > 0) {
        value = static_cast<std::uint64_t>(count.get<std::int64_t>());
    } else {
        return "num_examples must be a positive integer, got " + count.dump();
    }
    if (value == 0) return "num_examples must be a positive integer, got 0";
    if (static_cast<double>(value) > cap) {
        std::string reason = "num_examples " + std::to_string(value) +
                             " is above the limit max_examples=" + format_number(cap);
        value = 0;
        return reason;
    }
    return std::nullopt;
}

struct EntryView {
    std::string_view key;
    npz::DType dtype;
    const npz::Shape* shape;
};

/// Matches an update's arrays to the layout by name. Returns the first problem (in model
/// order, then extra arrays) with a count of the others; fills `index` (slot -> entry).
std::optional<std::string> match_structure(const detail::Layout& layout,
                                           const std::vector<EntryView>& entries,
                                           std::vector<std::size_t>& index) {
    std::vector<std::string> problems;
    index.assign(layout.slots.size(), 0);
    std::unordered_map<std::string_view, std::size_t> by_key;
    for (std::size_t i = 0; i < entries.size(); ++i) by_key.emplace(entries[i].key, i);
    for (std::size_t s = 0; s < layout.slots.size(); ++s) {
        const auto& slot = layout.slots[s];
        auto found = by_key.find(slot.name);
        if (found == by_key.end()) {
            problems.push_back("array \"" + slot.name + "\" is missing");
            continue;
        }
        const EntryView& entry = entries[found->second];
        index[s] = found->second;
        if (entry.dtype != slot.dtype) {
            problems.push_back("array \"" + slot.name + "\" is " +
                               std::string(npz::dtype_name(entry.dtype)) + ", global model has " +
                               std::string(npz::dtype_name(slot.dtype)));
        } else if (*entry.shape != slot.shape) {
            problems.push_back("array \"" + slot.name + "\" has shape " +
                               npz::format_shape(*entry.shape) + ", global model has " +
                               npz::format_shape(slot.shape));
        }
    }
    std::unordered_map<std::string_view, bool> in_model;
    for (const auto& slot : layout.slots) in_model.emplace(slot.name, true);
    for (const auto& entry : entries) {
        if (!in_model.count(entry.key)) {
            problems.push_back("array \"" + std::string(entry.key) +
                               "\" is not in the global model");
        }
    }
    if (problems.empty()) return std::nullopt;
    std::string reason = problems.front();
    if (problems.size() > 1) {
        reason += " (and " + std::to_string(problems.size() - 1) + " more mismatch" +
                  (problems.size() > 2 ? "es" : "") + ")";
    }
    return reason;
}

/// Drops a leading "<name>: " that repeats what the description already says.
std::string strip_prefix(std::string message, const std::string& name) {
    std::string prefix = name + ": ";
    if (message.compare(0, prefix.size(), prefix) == 0) message.erase(0, prefix.size());
    return message;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Config

Config Config::from_json(const nlohmann::json& object) {
    if (!object.is_object()) {
        throw Error("config must be a JSON object of numbers, got " + object.dump());
    }
    Config config;
    for (const auto& [key, value] : object.items()) config.set(key, value_of(key, value));
    return config;
}

Config Config::from_items(const std::vector<std::string>& items) {
    Config config;
    for (const auto& raw : items) {
        std::string item = trim(raw);
        if (!item.empty() && item.front() == '{') {
            nlohmann::json object;
            try {
                object = nlohmann::json::parse(item);
            } catch (const nlohmann::json::exception& error) {
                throw Error("config '" + item + "': not valid JSON: " + error.what());
            }
            Config parsed = from_json(object);
            for (const auto& [key, value] : parsed.values()) config.set(key, value);
            continue;
        }
        auto equals = item.find('=');
        if (equals == std::string::npos) {
            throw Error("config '" + item + "': expected key=value or a JSON object");
        }
        std::string key = trim(std::string_view(item).substr(0, equals));
        std::string text = trim(std::string_view(item).substr(equals + 1));
        if (key.empty()) throw Error("config '" + item + "': empty key");
        if (text == "true" || text == "false") {
            config.set(key, text == "true" ? 1.0 : 0.0);
            continue;
        }
        double value = 0;
        auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (error != std::errc{} || end != text.data() + text.size() || text.empty() ||
            !std::isfinite(value)) {
            throw Error("config '" + item + "': value of '" + key +
                        "' must be a finite number or true/false");
        }
        config.set(key, value);
    }
    return config;
}

const std::vector<AggregatorInfo>& aggregator_catalog() {
    static const std::vector<AggregatorInfo> catalog = build_catalog();
    return catalog;
}

std::unique_ptr<Aggregator> make_aggregator(std::string_view name, const Config& config) {
    const auto& catalog = aggregator_catalog();
    auto info = std::find_if(catalog.begin(), catalog.end(),
                             [&](const AggregatorInfo& entry) { return entry.name == name; });
    if (info == catalog.end()) {
        std::vector<std::string_view> names;
        for (const auto& entry : catalog) names.push_back(entry.name);
        throw Error("unknown aggregator '" + std::string(name) + "'" + did_you_mean(name, names) +
                    "; available: " + join(names));
    }

    std::map<std::string, double> given = config.values();
    if (auto alias = given.find("lr"); alias != given.end()) {
        if (given.count("learning_rate")) {
            throw Error("config: both 'lr' and 'learning_rate' given (they are the same setting)");
        }
        given.emplace("learning_rate", alias->second);
        given.erase(alias);
    }

    std::vector<std::string_view> keys;
    for (const auto& parameter : info->parameters) keys.push_back(parameter.key);
    detail::Settings settings;
    for (const auto& parameter : info->parameters) {
        settings[std::string(parameter.key)] = parameter.default_value;
    }
    for (const auto& item : given) {
        // Named, not a structured binding: clang 14 cannot capture those in lambdas.
        const std::string& key = item.first;
        const double value = item.second;
        auto parameter = std::find_if(info->parameters.begin(), info->parameters.end(),
                                      [&](const ParameterInfo& p) { return p.key == key; });
        if (parameter == info->parameters.end()) {
            throw Error(std::string(name) + " has no setting '" + key + "'" +
                        did_you_mean(key, keys) + "; its settings: " + join(keys));
        }
        bool low_ok =
            parameter->minimum_inclusive ? value >= parameter->minimum : value > parameter->minimum;
        bool high_ok =
            parameter->maximum_inclusive ? value <= parameter->maximum : value < parameter->maximum;
        if (!std::isfinite(value) || !low_ok || !high_ok) {
            throw Error(std::string(name) + ": '" + key + "' must be in " + range_text(*parameter) +
                        ", got " + format_number(value));
        }
        if (parameter->integer && value != std::floor(value)) {
            throw Error(std::string(name) + ": '" + key + "' must be a whole number, got " +
                        format_number(value));
        }
        settings[key] = value;
    }

    std::string kind(name);
    if (kind == "fedavg") return detail::make_fedavg(std::move(settings));
    if (kind == "fedavgm" || kind == "fedadam" || kind == "fedyogi" || kind == "fedadagrad") {
        return detail::make_fedopt(kind, std::move(settings));
    }
    return detail::make_robust(kind, std::move(settings));
}

// ---------------------------------------------------------------------------------------
// Layout

namespace detail {

Layout Layout::of(const npz::ParameterSet& model) {
    Layout layout;
    for (const auto& entry : model) {
        Slot slot;
        slot.name = entry.name;
        slot.dtype = entry.array.dtype();
        slot.shape = entry.array.shape();
        slot.count = entry.array.size();
        slot.is_float = npz::dtype_is_float(slot.dtype);
        if (slot.is_float) {
            slot.float_offset = layout.float_elements;
            layout.float_elements += slot.count;
        }
        layout.slots.push_back(std::move(slot));
    }
    return layout;
}

bool Layout::matches(const npz::ParameterSet& parameters) const {
    if (parameters.size() != slots.size()) return false;
    for (std::size_t s = 0; s < slots.size(); ++s) {
        const auto& entry = parameters[s];
        if (entry.name != slots[s].name || entry.array.dtype() != slots[s].dtype ||
            entry.array.shape() != slots[s].shape) {
            return false;
        }
    }
    return true;
}

void Layout::shape_result(npz::ParameterSet& result) const {
    if (matches(result)) return;
    result = npz::ParameterSet();
    for (const auto& slot : slots) result.add(slot.name, npz::Array(slot.dtype, slot.shape));
}

// ---------------------------------------------------------------------------------------
// AggregatorBase

AggregatorBase::AggregatorBase(std::string name, Settings settings)
    : m_name(std::move(name)), m_settings(std::move(settings)) {
    m_threads = static_cast<unsigned>(m_settings.at("threads"));
    m_summary.aggregator = m_name;
}

void AggregatorBase::require_round(const char* what) const {
    if (!m_in_round) {
        throw Error(m_name + ": " + what + " called outside a round (call begin_round first)");
    }
}

void AggregatorBase::begin_round(std::shared_ptr<const npz::ParameterSet> global) {
    if (!global) throw Error(m_name + ": begin_round needs a global model");
    if (global->empty()) throw Error(m_name + ": the global model has no arrays");
    on_end_round();
    m_in_round = false;
    m_layout = Layout::of(*global);
    m_global = std::move(global);
    m_summary = RoundSummary();
    m_summary.aggregator = m_name;
    on_begin_round();
    m_in_round = true;
}

std::size_t AggregatorBase::open_record(const UpdateInfo& info, std::string file) {
    UpdateOutcome outcome;
    outcome.client = info.client;
    outcome.file = std::move(file);
    outcome.description =
        describe_update(outcome.client, outcome.file, m_summary.updates.size() + 1);
    m_summary.updates.push_back(std::move(outcome));
    return m_summary.updates.size() - 1;
}

std::optional<Rejection> AggregatorBase::open_fold(const UpdateInfo& info, std::string file,
                                                   std::size_t& record) {
    require_round("fold");
    record = open_record(info, std::move(file));
    std::uint64_t examples = 0;
    if (auto reason = check_num_examples(info, setting("max_examples"), examples)) {
        return refuse(record, *reason);
    }
    m_summary.updates[record].num_examples = examples;
    return std::nullopt;
}

Rejection AggregatorBase::refuse(std::size_t record, std::string reason) {
    reject(record, reason);
    return Rejection{m_summary.updates[record].description, std::move(reason)};
}

void AggregatorBase::reject(std::size_t record, std::string reason) {
    auto& outcome = m_summary.updates[record];
    outcome.status = UpdateStatus::rejected;
    outcome.reason = std::move(reason);
}

std::optional<Rejection> AggregatorBase::admit(std::size_t record, std::unique_ptr<Source> source,
                                               const UpdateInfo&) {
    source->record = record;
    source->num_examples = m_summary.updates[record].num_examples;
    if (auto reason = accept(std::move(source))) {
        reject(record, *reason);
        return Rejection{m_summary.updates[record].description, *reason};
    }
    return std::nullopt;
}

std::optional<Rejection> AggregatorBase::fold(const std::filesystem::path& file,
                                              const UpdateInfo& info) {
    std::size_t record = 0;
    if (auto rejection = open_fold(info, file.string(), record)) return rejection;

    auto source = std::make_unique<Source>();
    try {
        npz::ReadOptions options;
        options.verify_crc = setting("verify_crc") != 0;
        source->file = std::make_unique<npz::MappedNpz>(
            file, options,
            setting("release_pages") != 0 ? npz::Residency::release : npz::Residency::keep);
    } catch (const Error& error) {
        return refuse(record, strip_prefix(error.what(), file.string()));
    }
    const auto& members = source->file->members();
    std::vector<EntryView> entries;
    for (const auto& member : members) {
        entries.push_back({member.key, member.array.dtype, &member.array.shape});
    }
    std::vector<std::size_t> index;
    if (auto reason = match_structure(m_layout, entries, index)) return refuse(record, *reason);
    try {
        for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
            source->data.push_back(source->file->data(index[s]).data());
        }
        source->holds_copy = !source->file->fully_mapped();
        source->file->close_file();
    } catch (const Error& error) {
        return refuse(record, strip_prefix(error.what(), file.string()));
    }
    return admit(record, std::move(source), info);
}

std::optional<Rejection> AggregatorBase::fold(std::shared_ptr<const npz::ParameterSet> update,
                                              const UpdateInfo& info) {
    if (!update) throw Error(m_name + ": fold needs an update");
    std::size_t record = 0;
    if (auto rejection = open_fold(info, "", record)) return rejection;
    std::vector<EntryView> entries;
    for (const auto& entry : *update) {
        entries.push_back({entry.name, entry.array.dtype(), &entry.array.shape()});
    }
    std::vector<std::size_t> index;
    if (auto reason = match_structure(m_layout, entries, index)) return refuse(record, *reason);
    auto source = std::make_unique<Source>();
    for (std::size_t s = 0; s < m_layout.slots.size(); ++s) {
        source->data.push_back((*update)[index[s]].array.data());
    }
    source->memory = std::move(update);
    return admit(record, std::move(source), info);
}

void AggregatorBase::throw_if_none_usable() const {
    for (const auto& outcome : m_summary.updates) {
        if (outcome.status == UpdateStatus::used) return;
    }
    if (m_summary.updates.empty()) throw Error(m_name + ": no update was folded in this round");
    std::string message = m_name + ": no usable update in this round (" +
                          std::to_string(m_summary.updates.size()) + " folded, all rejected): ";
    for (std::size_t i = 0; i < m_summary.updates.size(); ++i) {
        if (i) message += "; ";
        message += m_summary.updates[i].message();
    }
    throw Error(message);
}

RoundSummary AggregatorBase::finish(npz::ParameterSet& result) {
    require_round("finish");
    struct EndRound {
        AggregatorBase* self;
        ~EndRound() {
            self->m_in_round = false;
            self->on_end_round();
        }
    } end_round{this};
    throw_if_none_usable();
    if (&result == m_global.get())
        throw Error(m_name + ": the result must not be the global model");
    m_layout.shape_result(result);
    compute(result);
    throw_if_none_usable();

    m_summary.used = m_summary.rejected = m_summary.not_selected = 0;
    m_summary.total_examples = 0;
    for (const auto& outcome : m_summary.updates) {
        switch (outcome.status) {
            case UpdateStatus::used:
                ++m_summary.used;
                m_summary.total_examples += outcome.num_examples;
                break;
            case UpdateStatus::rejected:
                ++m_summary.rejected;
                break;
            case UpdateStatus::not_selected:
                ++m_summary.not_selected;
                break;
        }
    }
    return m_summary;
}

void AggregatorBase::save_state(const std::filesystem::path& file) const {
    npz::write_npz(file, npz::ParameterSet());
}

void AggregatorBase::load_state(const std::filesystem::path& file) {
    auto state = npz::read_npz(file);
    if (!state.empty()) {
        throw Error(file.string() + ": " + m_name + " keeps no server state, but the file holds " +
                    std::to_string(state.size()) + " arrays");
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Files

UpdateFile parse_update_argument(std::string_view argument) {
    UpdateFile update;
    update.path = std::string(argument);
    std::error_code ignored;
    if (std::filesystem::exists(update.path, ignored)) return update;
    auto colon = argument.rfind(':');
    if (colon == std::string_view::npos || colon == 0 || colon + 1 == argument.size()) {
        return update;
    }
    std::string_view digits = argument.substr(colon + 1);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return update;
    }
    std::uint64_t count = 0;
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), count);
    if (error != std::errc{} || end != digits.data() + digits.size()) {
        throw Error("update '" + std::string(argument) + "': example count " + std::string(digits) +
                    " is too large");
    }
    update.path = std::string(argument.substr(0, colon));
    update.num_examples = count;
    return update;
}

RoundSummary aggregate_files(const AggregateFilesOptions& options) {
    auto aggregator = make_aggregator(options.aggregator, options.config);
    if (!options.state_in.empty()) aggregator->load_state(options.state_in);
    auto global = std::make_shared<const npz::ParameterSet>(npz::read_parameters(options.global));
    aggregator->begin_round(global);
    for (const auto& update : options.updates) {
        UpdateInfo info;
        info.client = update.client;
        if (update.num_examples) {
            info.metadata["num_examples"] = *update.num_examples;
        } else {
            auto metadata_file = update.path;
            metadata_file += "-metadata";
            std::error_code ignored;
            if (std::filesystem::exists(metadata_file, ignored)) {
                std::ifstream in(metadata_file);
                try {
                    info.metadata = nlohmann::json::parse(in);
                } catch (const nlohmann::json::exception& error) {
                    info.metadata_error =
                        metadata_file.string() + ": not valid JSON: " + error.what();
                }
            } else {
                info.metadata["num_examples"] = 1;
            }
        }
        aggregator->fold(update.path, info);
    }
    npz::ParameterSet result;
    RoundSummary summary = aggregator->finish(result);
    npz::write_npz(options.output, result, options.write_options);
    if (!options.state_out.empty()) aggregator->save_state(options.state_out);
    return summary;
}

nlohmann::json summary_json(const RoundSummary& summary) {
    nlohmann::json updates = nlohmann::json::array();
    for (const auto& outcome : summary.updates) {
        nlohmann::json entry;
        entry["description"] = outcome.description;
        entry["client"] = outcome.client;
        entry["file"] = outcome.file;
        entry["num_examples"] = outcome.num_examples;
        entry["status"] = outcome.status == UpdateStatus::used       ? "used"
                          : outcome.status == UpdateStatus::rejected ? "rejected"
                                                                     : "not_selected";
        entry["reason"] = outcome.reason;
        if (outcome.score) entry["score"] = *outcome.score;
        updates.push_back(std::move(entry));
    }
    nlohmann::json json;
    json["aggregator"] = summary.aggregator;
    json["used"] = summary.used;
    json["rejected"] = summary.rejected;
    json["not_selected"] = summary.not_selected;
    json["total_examples"] = summary.total_examples;
    json["updates"] = std::move(updates);
    return json;
}

}  // namespace fedcli::aggregate
