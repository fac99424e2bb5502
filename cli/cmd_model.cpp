// `fedcli model ...`: see cli/cmd_model.hpp.
#include "cli/cmd_model.hpp"

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/text.hpp"
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
    };
    add_group(app, "model", "Look at parameter files (.npz) offline", k_commands, dispatch);
}

}  // namespace fedcli::cli
