// Aggregation: combining client updates into a new global model.
//
// An Aggregator runs rounds. begin_round() takes the current global model; fold() takes one
// client update at a time (a parameter file, or parameters already in memory, plus the
// update's metadata); finish() writes the new global model and reports which updates were
// used and which were rejected. Server-side state that outlives a round (the moments of
// the FedOpt family, the momentum of FedAvgM) stays in the object and can be saved to and
// loaded from an .npz file, so a combiner restart continues the optimisation exactly.
//
// Every update is validated before it can influence the result: the same array names,
// dtypes and shapes as the global model; finite values in every float array; and a
// `num_examples` in its metadata that is a positive integer no larger than the
// `max_examples` setting. A rejected update is recorded with a message naming the update
// (client and file) and the array, and the round carries on without it; finish() fails
// only when no update at all was usable. Checks that need only headers happen in fold()
// and are returned at once; the value check (NaN/Inf) of the streaming aggregators happens
// while the data is folded, so such a rejection may only show up in finish()'s summary.
//
// Float arrays are aggregated by each aggregator's rule, computed in float64 and rounded
// once (to nearest, ties to even) into the array's dtype. Integer and bool arrays (e.g.
// BatchNorm's num_batches_tracked) are never averaged: the mean-based aggregators take the
// elementwise maximum over the used updates, fedmedian and trimmedmean the elementwise
// lower median, krum/multikrum the maximum over the selected updates (see
// docs/aggregators.md).
//
// Memory: fedavg, fedavgm and the FedOpt family stream. They keep at most `batch` pending
// updates (file-backed ones are memory-mapped, so the page cache holds them and nothing
// is copied) and fold each batch in one multithreaded pass into a float64 accumulator of
// the model's size (none when the whole round fits in one batch: the pass then writes the
// result directly), so memory is O(model) whatever the number of updates. An update whose
// file is deflate-compressed (np.savez_compressed, FEDn's default) cannot be mapped; it is
// decompressed and folded at once, so at most one such copy exists. The robust aggregators
// need every update at once; they keep them memory-mapped from their files (or the
// caller's in-memory sets), never copied into fresh memory, except that compressed files
// are held decompressed: give them uncompressed files when memory is tight.
//
// Thread-safety: an Aggregator is not thread-safe; drive it from one thread at a time. It
// uses worker threads internally (`threads` setting, default: all cores). Separate
// aggregators are independent. Nothing here prints or exits; failures throw fedcli::Error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/npz/npz.hpp"

namespace fedcli::aggregate {

// ---------------------------------------------------------------------------------------
// Configuration

/// Hyperparameters as the user gave them (before defaults). Values are numbers; JSON
/// booleans are stored as 1 and 0.
class Config {
  public:
    Config() = default;

    /// From a JSON object of scalars, e.g. {"learning_rate": 0.01, "beta1": 0.9}.
    static Config from_json(const nlohmann::json& object);
    /// From command-line items: each is `key=value` (the value a JSON number or
    /// true/false) or a whole JSON object ("{...}"). Later items override earlier ones.
    static Config from_items(const std::vector<std::string>& items);

    /// Sets one value, replacing an earlier one.
    void set(const std::string& key, double value) { m_values[key] = value; }
    const std::map<std::string, double>& values() const& { return m_values; }
    /// On a temporary (`Config::from_items(x).values()` in a range-for) the map is moved
    /// out, so the loop does not iterate a destroyed object.
    std::map<std::string, double> values() && { return std::move(m_values); }
    bool empty() const { return m_values.empty(); }

  private:
    std::map<std::string, double> m_values;
};

/// One hyperparameter of an aggregator, as documented and checked.
struct ParameterInfo {
    std::string_view key;
    double default_value = 0;
    std::string_view description;
    bool integer = false;  ///< must be a whole number
    double minimum = 0;
    bool minimum_inclusive = true;
    double maximum = 0;
    bool maximum_inclusive = true;
};

/// What make_aggregator() can build.
struct AggregatorInfo {
    std::string_view name;
    std::string_view summary;               ///< one line
    std::vector<ParameterInfo> parameters;  ///< including the common ones
};

/// Every aggregator with its parameters and defaults, in a fixed order.
const std::vector<AggregatorInfo>& aggregator_catalog();

/// Builds an aggregator by name ("fedavg", "fedadam", ...). Throws fedcli::Error for an
/// unknown name (with a did-you-mean suggestion), an unknown key for that aggregator (also
/// with a suggestion), or a value out of range; the message names the key and the range.
class Aggregator;
std::unique_ptr<Aggregator> make_aggregator(std::string_view name, const Config& config = {});

// ---------------------------------------------------------------------------------------
// Rounds

/// Who sent an update and what it says about itself.
struct UpdateInfo {
    std::string client;  ///< client name for messages ("c3"); may be empty
    /// The update's metadata object (the train entry point's `<output>-metadata`); must
    /// hold a positive integer "num_examples". Other keys are kept for the caller.
    nlohmann::json metadata = nlohmann::json::object();
    /// Set when the caller could not read the metadata (e.g. "u3.npz-metadata: not JSON"):
    /// the update is then rejected with this reason.
    std::string metadata_error;
};

enum class UpdateStatus {
    used,          ///< contributed to the new global model
    rejected,      ///< failed validation (or could not be read); see reason
    not_selected,  ///< valid but left out by the aggregator's rule (krum, multikrum)
};

/// The fate of one folded update.
struct UpdateOutcome {
    std::string description;  ///< "update from client 'c3' (u3.npz)", "update 'u3.npz'"
    std::string client;
    std::string file;                ///< empty for in-memory updates
    std::uint64_t num_examples = 0;  ///< 0 when the metadata had no valid value
    UpdateStatus status = UpdateStatus::used;
    std::string reason;           ///< why rejected/not selected: "array \"2\" holds NaN at [3, 1]"
    std::optional<double> score;  ///< krum/multikrum score (sum of squared distances)

    /// "<description>: <reason>" — the full error message of a rejection.
    std::string message() const {
        return reason.empty() ? description : description + ": " + reason;
    }
};

/// What a round did, in the order updates were folded.
struct RoundSummary {
    std::string aggregator;
    std::vector<UpdateOutcome> updates;
    std::size_t used = 0;
    std::size_t rejected = 0;
    std::size_t not_selected = 0;
    std::uint64_t total_examples = 0;  ///< sum of num_examples over used updates
};

/// A rejection as fold() returns it.
struct Rejection {
    std::string description;
    std::string reason;
    std::string message() const { return description + ": " + reason; }
};

class Aggregator {
  public:
    virtual ~Aggregator() = default;

    /// The catalog name: "fedavg", "fedadam", ...
    virtual std::string_view name() const = 0;
    /// The settings in effect (defaults filled in), by key.
    virtual const std::map<std::string, double>& settings() const = 0;

    /// Starts a round on `global`, dropping whatever an unfinished round had folded. The
    /// global model is shared, not copied; it must not change until finish() returns.
    /// Throws if loaded server state does not match the model's arrays, or (aggregators
    /// that step from the global values: fedavgm, FedOpt) if the model holds NaN/Inf.
    virtual void begin_round(std::shared_ptr<const npz::ParameterSet> global) = 0;

    /// Folds the update in parameter file `file` (.npz, or .npy for one-array models). The
    /// file is memory-mapped, not copied, and must not be truncated until finish() returns.
    /// Returns the rejection when the update is refused at once (unreadable file, names,
    /// dtypes, shapes, num_examples; for the robust aggregators also NaN/Inf); it is also
    /// recorded in the summary. Throws only when called outside a round.
    virtual std::optional<Rejection> fold(const std::filesystem::path& file,
                                          const UpdateInfo& info) = 0;
    /// Folds an in-memory update. The set is shared and must not change until finish().
    virtual std::optional<Rejection> fold(std::shared_ptr<const npz::ParameterSet> update,
                                          const UpdateInfo& info) = 0;

    /// Ends the round: writes the new global model into `result` (same names, order, dtypes
    /// and shapes as the global model), reusing its arrays when they already have that
    /// layout, so a caller that aggregates round after round pays for fresh memory once.
    /// `result` must not be the global model. Commits server state. Throws fedcli::Error
    /// when no update is usable (the message lists the rejections) or the aggregator's rule
    /// cannot apply (e.g. krum with too few updates); server state is then unchanged. The
    /// round is over either way: the next call is begin_round().
    virtual RoundSummary finish(npz::ParameterSet& result) = 0;

    /// The round so far (updates folded, rejections known yet).
    virtual const RoundSummary& summary() const = 0;

    /// Whether the aggregator carries state across rounds (fedavgm and the FedOpt family).
    virtual bool has_state() const = 0;
    /// Writes the server state (e.g. "m/<array>", "v/<array>" float arrays) to an .npz
    /// file; an empty archive when there is none yet.
    virtual void save_state(const std::filesystem::path& file) const = 0;
    /// Replaces the server state with one saved by save_state() from the same kind of
    /// aggregator; an empty archive clears it. It is checked against the model at the next
    /// begin_round().
    virtual void load_state(const std::filesystem::path& file) = 0;
    /// Forgets the server state (the next round starts the optimiser afresh).
    virtual void reset_state() = 0;
};

// ---------------------------------------------------------------------------------------
// Files: the library side of `fedcli model aggregate`

/// One update on the command line.
struct UpdateFile {
    std::filesystem::path path;
    std::optional<std::uint64_t> num_examples;  ///< from "FILE:N"
    std::string client;                         ///< optional name for messages
};

/// Splits "u1.npz:120" into {u1.npz, 120}. A suffix is a count only when it is all digits
/// and the whole argument is not itself an existing file; "u1.npz" has no count.
UpdateFile parse_update_argument(std::string_view argument);

struct AggregateFilesOptions {
    std::string aggregator = "fedavg";
    Config config;
    std::filesystem::path global;
    std::filesystem::path output;
    std::vector<UpdateFile> updates;
    /// Server state to start from (optional; must exist when given) and to write after the
    /// round (optional). They may be the same file.
    std::filesystem::path state_in;
    std::filesystem::path state_out;
    npz::WriteOptions write_options;
};

/// Aggregates parameter files: reads the global model, folds every update, writes the new
/// global model to `output` atomically. Each update's num_examples comes from FILE:N, else
/// from the JSON file "<FILE>-metadata" next to it (FEDn's convention; its other keys are
/// kept), else it is 1 (plain average). Rejected updates are reported in the summary, not
/// thrown; throws fedcli::Error when the global model cannot be read, no update is usable,
/// or the output cannot be written.
RoundSummary aggregate_files(const AggregateFilesOptions& options);

/// The summary as one JSON object: {"aggregator", "used", "rejected", "not_selected",
/// "total_examples", "updates": [{"description", "client", "file", "num_examples",
/// "status" ("used"|"rejected"|"not_selected"), "reason", "score"?}]}.
nlohmann::json summary_json(const RoundSummary& summary);

}  // namespace fedcli::aggregate
