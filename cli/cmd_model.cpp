// `fedcli model ...`: see cli/cmd_model.hpp.
#include "cli/cmd_model.hpp"

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/text.hpp"
#include "core/aggregate/aggregator.hpp"
#include "core/aggregate/diff.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::cli {

namespace {

std::string_view key_convention_name(npz::KeyConvention convention) {
    switch (convention) {
        case npz::KeyConvention::numbered:
            return "numbered";
        case npz::KeyConvention::numpy:
            return "numpy";
        case npz::KeyConvention::named:
            return "named";
    }
    return "named";
}

std::string_view key_convention_example(npz::KeyConvention convention) {
    switch (convention) {
        case npz::KeyConvention::numbered:
            return " (\"0\", \"1\", ...)";
        case npz::KeyConvention::numpy:
            return " (\"arr_0\", \"arr_1\", ...)";
        case npz::KeyConvention::named:
            return "";
    }
    return "";
}

/// "200.7 KiB (205,512 bytes)", or "512 B" where the exact number is already shown.
std::string exact_and_human(std::uint64_t bytes) {
    if (bytes < 1024) return std::to_string(bytes) + (bytes == 1 ? " byte" : " bytes");
    return human_bytes(bytes) + " (" + group_digits(bytes) + " bytes)";
}

std::string plural(std::uint64_t count, std::string_view word) {
    return group_digits(count) + " " + std::string(word) + (count == 1 ? "" : "s");
}

void add_totals(InspectReport& report) {
    for (const auto& array : report.arrays) {
        report.total_parameters += array.parameters;
        report.total_bytes += array.bytes;
    }
}

InspectReport inspect_npy(const std::filesystem::path& file) {
    InspectReport report;
    report.file = file;
    report.format = InspectReport::Format::npy;
    // Reading the array in full is the integrity check a .npy file allows: its header must
    // parse and the data must be exactly as long as the header says.
    npz::ParameterSet parameters = npz::read_parameters(file);
    std::vector<std::string> keys;
    for (const auto& entry : parameters) {
        keys.push_back(entry.name);
        InspectedArray array;
        array.name = entry.name;
        array.dtype = entry.array.dtype();
        array.shape = entry.array.shape();
        array.parameters = entry.array.size();
        array.bytes = entry.array.byte_size();
        array.stored_bytes = std::filesystem::file_size(file);
        report.arrays.push_back(std::move(array));
    }
    report.key_convention = npz::key_convention(keys);
    report.file_bytes = std::filesystem::file_size(file);
    report.sha256 = util::sha256_file(file);
    return report;
}

InspectReport inspect_npz(const std::filesystem::path& file) {
    InspectReport report;
    report.file = file;
    report.format = InspectReport::Format::npz;
    npz::Reader reader(file);
    std::vector<std::string> keys;
    for (std::size_t index = 0; index < reader.members().size(); ++index) {
        const npz::MemberInfo& member = reader.members()[index];
        reader.verify(index);
        keys.push_back(member.key);
        InspectedArray array;
        array.name = member.key;
        array.dtype = member.array.dtype;
        array.shape = member.array.shape;
        array.parameters = npz::element_count(member.array.shape);
        array.bytes = member.array.byte_size();
        array.compression = member.compression;
        array.stored_bytes = member.compressed_size;
        report.arrays.push_back(std::move(array));
    }
    report.key_convention = npz::key_convention(keys);
    report.file_bytes = reader.file_size();
    report.sha256 = util::sha256_file(file);
    return report;
}

Action setup_inspect(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ModelInspectOptions>();
    command.add_option("FILE", options->file, "Parameter file: .npz (or a single .npy)")
        ->required()
        ->type_name("");
    command.add_flag("--json", options->json, "Print one JSON object instead of a table");
    std::ostream& out = streams.out;
    return [options, &out] { return model_inspect(*options, out); };
}

struct AggregateOptions {
    std::string aggregator = "fedavg";
    std::vector<std::string> config;
    std::string config_json;
    std::filesystem::path global;
    std::filesystem::path output;
    std::vector<std::string> updates;
    std::filesystem::path state_in;
    std::filesystem::path state_out;
    bool compress = false;
    bool json = false;
};

int model_aggregate(const AggregateOptions& options, std::ostream& out) {
    aggregate::AggregateFilesOptions request;
    request.aggregator = options.aggregator;
    if (!options.config_json.empty()) {
        nlohmann::json parsed;
        try {
            parsed = nlohmann::json::parse(options.config_json);
        } catch (const nlohmann::json::parse_error& error) {
            throw UsageError("--config-json: not valid JSON: " + std::string(error.what()),
                             "fedcli model aggregate");
        }
        request.config = aggregate::Config::from_json(parsed);
    }
    const auto flags = aggregate::Config::from_items(options.config);
    for (const auto& [key, value] : flags.values()) {
        request.config.set(key, value);
    }
    request.global = options.global;
    request.output = options.output;
    for (const auto& argument : options.updates) {
        request.updates.push_back(aggregate::parse_update_argument(argument));
    }
    request.state_in = options.state_in;
    request.state_out = options.state_out;
    if (options.compress) request.write_options.compression = npz::Compression::deflate;
    auto summary = aggregate::aggregate_files(request);
    if (options.json) {
        out << aggregate::summary_json(summary).dump() << '\n';
        return 0;
    }
    Table table({"update", "examples", "status", "reason"},
                {Table::Align::left, Table::Align::right, Table::Align::left, Table::Align::left});
    for (const auto& update : summary.updates) {
        std::string status = update.status == aggregate::UpdateStatus::used       ? "used"
                             : update.status == aggregate::UpdateStatus::rejected ? "REJECTED"
                                                                                  : "not selected";
        table.add_row({update.file.empty() ? update.description : update.file,
                       group_digits(update.num_examples), status, update.reason});
    }
    table.print(out);
    out << summary.aggregator << ": " << summary.used << " used, " << summary.rejected
        << " rejected";
    if (summary.not_selected) out << ", " << summary.not_selected << " not selected";
    out << "; " << group_digits(summary.total_examples) << " examples -> "
        << options.output.string() << '\n';
    if (!options.state_out.empty()) out << "server state -> " << options.state_out.string() << '\n';
    return 0;
}

Action setup_aggregate(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<AggregateOptions>();
    std::string names;
    for (const auto& info : aggregate::aggregator_catalog()) {
        names += (names.empty() ? "" : ", ") + std::string(info.name);
    }
    command.add_option("--aggregator,-a", options->aggregator, "One of: " + names)
        ->type_name("NAME")
        ->capture_default_str();
    command
        .add_option("--config,-c", options->config,
                    "Hyperparameter KEY=VALUE (repeatable; see docs/aggregators.md)")
        ->type_name("KEY=VALUE");
    command
        .add_option("--config-json", options->config_json,
                    "Hyperparameters as a JSON object (KEY=VALUE flags win)")
        ->type_name("JSON");
    command.add_option("--global,-g", options->global, "The current global model")
        ->type_name("FILE")
        ->required();
    command.add_option("--output,-o", options->output, "Where the new global model goes")
        ->type_name("FILE")
        ->required();
    command
        .add_option("updates", options->updates,
                    "Updates as FILE or FILE:N (N = num_examples; otherwise read from "
                    "FILE-metadata, else 1)")
        ->type_name("UPDATE")
        ->required();
    command
        .add_option("--state-in", options->state_in,
                    "Server optimiser state to start from (fedavgm, fedadam, ...)")
        ->type_name("FILE");
    command.add_option("--state-out", options->state_out, "Where to write the server state")
        ->type_name("FILE");
    command.add_flag("--compress", options->compress, "Write the output with deflate");
    command.add_flag("--json", options->json, "Print the summary as one JSON object");
    std::ostream& out = streams.out;
    return [options, &out] { return model_aggregate(*options, out); };
}

struct DiffOptions {
    std::filesystem::path a;
    std::filesystem::path b;
    bool json = false;
};

std::string number(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.6g", value);
    return text;
}

int model_diff(const DiffOptions& options, std::ostream& out) {
    auto difference = aggregate::diff_files(options.a, options.b);
    if (options.json) {
        out << aggregate::difference_json(difference).dump() << '\n';
        return 0;
    }
    Table table({"array", "shape", "differing", "max |a-b|", "mean |a-b|", "L2"},
                {Table::Align::left, Table::Align::left, Table::Align::right, Table::Align::right,
                 Table::Align::right, Table::Align::right});
    for (const auto& array : difference.arrays) {
        using Status = aggregate::ArrayDifference::Status;
        if (array.status == Status::compared) {
            table.add_row({array.name, npz::format_shape(array.shape_a),
                           group_digits(array.differing), number(array.max_abs),
                           number(array.mean_abs), number(array.l2)});
        } else {
            std::string what = array.status == Status::only_in_a ? "only in " + options.a.string()
                               : array.status == Status::only_in_b
                                   ? "only in " + options.b.string()
                                   : "shape " + npz::format_shape(array.shape_a) + " vs " +
                                         npz::format_shape(array.shape_b);
            table.add_row({array.name, what, "", "", "", ""});
        }
    }
    table.print(out);
    out << (difference.identical ? "identical" : "different") << ": "
        << group_digits(difference.differing) << " of " << group_digits(difference.elements)
        << " values differ, max |a-b| " << number(difference.max_abs) << ", L2 "
        << number(difference.l2) << '\n';
    return 0;
}

Action setup_diff(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<DiffOptions>();
    command.add_option("a", options->a, "First parameter file")->type_name("A")->required();
    command.add_option("b", options->b, "Second parameter file")->type_name("B")->required();
    command.add_flag("--json", options->json, "Print one JSON object");
    std::ostream& out = streams.out;
    return [options, &out] { return model_diff(*options, out); };
}

}  // namespace

InspectReport inspect_parameter_file(const std::filesystem::path& file) {
    InspectReport report = file.extension() == ".npy" ? inspect_npy(file) : inspect_npz(file);
    add_totals(report);
    return report;
}

void print_inspect_report(const InspectReport& report, std::ostream& out) {
    const bool is_npz = report.format == InspectReport::Format::npz;
    out << "file            " << report.file.string() << '\n'
        << "format          " << (is_npz ? "npz" : "npy") << ", "
        << plural(report.arrays.size(), "array") << ", keys "
        << key_convention_name(report.key_convention)
        << key_convention_example(report.key_convention) << '\n'
        << "size            " << exact_and_human(report.file_bytes) << '\n'
        << "sha256          " << report.sha256 << "\n\n";

    std::vector<std::string> headers = {"name", "dtype", "shape", "parameters", "bytes"};
    using Align = Table::Align;
    std::vector<Align> align = {Align::left, Align::left, Align::left, Align::right, Align::right};
    if (is_npz) {
        headers.push_back("storage");
        align.push_back(Align::left);
    }
    Table table(headers, align);
    for (const auto& array : report.arrays) {
        std::vector<std::string> row = {array.name, std::string(npz::dtype_name(array.dtype)),
                                        npz::format_shape(array.shape),
                                        group_digits(array.parameters), human_bytes(array.bytes)};
        if (is_npz) {
            row.push_back(array.compression == npz::Compression::stored
                              ? "stored"
                              : "deflate, " + human_bytes(array.stored_bytes));
        }
        table.add_row(std::move(row));
    }
    table.print(out);

    out << "\ntotal           " << plural(report.arrays.size(), "array") << ", "
        << plural(report.total_parameters, "parameter") << ", "
        << exact_and_human(report.total_bytes) << '\n'
        << "verified        "
        << (is_npz ? "every member read back, CRC-32 checked" : "array read back in full") << '\n';
}

std::string inspect_report_json(const InspectReport& report) {
    nlohmann::ordered_json json;
    json["file"] = report.file.string();
    json["sha256"] = report.sha256;
    json["file_bytes"] = report.file_bytes;
    json["key_convention"] = key_convention_name(report.key_convention);
    json["arrays"] = nlohmann::ordered_json::array();
    for (const auto& array : report.arrays) {
        nlohmann::ordered_json entry;
        entry["name"] = array.name;
        entry["dtype"] = npz::dtype_name(array.dtype);
        entry["shape"] = array.shape;
        entry["parameters"] = array.parameters;
        entry["bytes"] = array.bytes;
        json["arrays"].push_back(std::move(entry));
    }
    json["total_parameters"] = report.total_parameters;
    json["total_bytes"] = report.total_bytes;
    return json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

int model_inspect(const ModelInspectOptions& options, std::ostream& out) {
    InspectReport report = inspect_parameter_file(options.file);
    if (options.json) {
        out << inspect_report_json(report) << '\n';
    } else {
        print_inspect_report(report, out);
    }
    return 0;
}

void register_model_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"inspect", "Show the arrays, sizes and sha256 of a parameter file; verify its members",
         setup_inspect},
        {"aggregate", "Combine updates into a new global model (fedavg, fedadam, krum, ...)",
         setup_aggregate},
        {"diff", "Compare two parameter files array by array", setup_diff},
    };
    add_group(app, "model", "Parameter files (.npz): inspect, aggregate, diff; push, pull, list",
              k_commands, dispatch);
}

}  // namespace fedcli::cli
