#include "core/dispatch/contract.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "core/npz/npz.hpp"

namespace fedcli::dispatch {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_text(const fs::path& file, const std::string& what) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(what + " " + file.string() + ": cannot read: " + strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

/// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string parse_message(const json::parse_error& error) {
    std::string message = error.what();
    auto bracket = message.find("] ");
    if (message.rfind("[json.exception", 0) == 0 && bracket != std::string::npos) {
        message.erase(0, bracket + 2);
    }
    return message;
}

json parse_json_object(const fs::path& file, const std::string& what) {
    std::string text = read_text(file, what);
    json value;
    try {
        value = json::parse(text);
    } catch (const json::parse_error& error) {
        std::string hint;
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
            hint = " (the file is empty)";
        } else if (text.find("NaN") != std::string::npos ||
                   text.find("Infinity") != std::string::npos) {
            hint =
                " (NaN and Infinity are not JSON; Python's json.dump writes them unless "
                "allow_nan=False: replace them, e.g. with null)";
        }
        throw Error(what + " " + file.string() + " is not valid JSON: " + parse_message(error) +
                    hint);
    }
    if (!value.is_object()) {
        throw Error(what + " " + file.string() + " must be a JSON object ({...}), not " +
                    std::string(value.type_name()) + " " + value.dump().substr(0, 80));
    }
    return value;
}

std::uint64_t check_num_examples(const json& metadata, const fs::path& file) {
    std::string where = "train metadata " + file.string() + ": ";
    auto found = metadata.find("num_examples");
    if (found == metadata.end()) {
        throw Error(where +
                    "missing \"num_examples\" (the number of examples trained on, a positive "
                    "integer, e.g. {\"num_examples\": 600})");
    }
    const json& value = *found;
    std::string fix =
        "\"num_examples\" must be a positive integer (the number of examples "
        "trained on), got " +
        value.dump();
    if (value.is_number_unsigned()) {
        auto count = value.get<std::uint64_t>();
        if (count == 0) throw Error(where + fix);
        return count;
    }
    if (value.is_number_integer()) throw Error(where + fix);  // negative
    if (value.is_number_float()) throw Error(where + fix + " (a float: write int(n))");
    throw Error(where + fix + " (" + std::string(value.type_name()) + ")");
}

void write_file_atomically(const fs::path& file, const std::string& text) {
    fs::path temporary = file;
    temporary += ".tmp-" + std::to_string(::getpid());
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        out << text;
        out.close();
        if (!out) {
            std::error_code ignored;
            fs::remove(temporary, ignored);
            throw Error("cannot write " + file.string() + ": " + strerror(errno));
        }
    }
    std::error_code error;
    fs::rename(temporary, file, error);
    if (error) {
        fs::remove(temporary, error);
        throw Error("cannot write " + file.string() + ": " + error.message());
    }
}

std::string describe_keys(const npz::Reader& reader) {
    std::string text;
    std::size_t shown = 0;
    for (const auto& member : reader.members()) {
        if (shown++ == 8) {
            text += ", ...";
            break;
        }
        text += (text.empty() ? "'" : ", '") + member.key + "'";
    }
    return text.empty() ? "none" : text;
}

}  // namespace

fs::path metadata_path(const fs::path& model) {
    fs::path path = model;
    path += "-metadata";
    return path;
}

void write_round_settings(const fs::path& input, std::string_view settings_json) {
    json settings;
    try {
        settings = json::parse(settings_json);
    } catch (const json::parse_error& error) {
        throw Error("round settings are not valid JSON: " + parse_message(error));
    }
    if (!settings.is_object()) {
        throw Error("round settings must be a JSON object, not " +
                    std::string(settings.type_name()));
    }
    write_file_atomically(metadata_path(input), settings.dump() + "\n");
}

std::size_t check_model_file(const fs::path& file, const std::string& what) {
    std::error_code error;
    if (!fs::exists(file, error)) throw Error(what + " " + file.string() + " was not written");
    try {
        npz::Reader reader(file);
        for (std::size_t i = 0; i < reader.members().size(); ++i) reader.verify(i);
        if (reader.members().empty()) {
            throw Error(file.string() + ": the npz file holds no arrays");
        }
        return reader.members().size();
    } catch (const Error& failure) {
        throw Error(what + " is not a valid model: " + failure.what());
    }
}

TrainOutput check_train_output(const fs::path& input, const fs::path& output) {
    std::error_code error;
    if (!fs::exists(output, error)) {
        throw Error("train did not write its output model " + output.string() +
                    " (the path given as its second argument, also in FEDCLI_OUTPUT)");
    }
    npz::Reader before(input);
    std::optional<npz::Reader> after_storage;
    try {
        after_storage.emplace(output);
        for (std::size_t i = 0; i < after_storage->members().size(); ++i) {
            after_storage->verify(i);
        }
    } catch (const Error& failure) {
        throw Error("train output is not a valid model: " + std::string(failure.what()));
    }
    const npz::Reader& after = *after_storage;

    std::string mismatch =
        "train output " + output.string() + " does not match its input " + input.string() + ": ";
    for (const auto& wanted : before.members()) {
        auto index = after.find(wanted.key);
        if (!index) {
            throw Error(mismatch + "array '" + wanted.key + "' is missing (the output has " +
                        describe_keys(after) + "; the input has " + describe_keys(before) + ")");
        }
        const auto& got = after.members()[*index].array;
        if (got.dtype != wanted.array.dtype) {
            throw Error(mismatch + "array '" + wanted.key + "' is " +
                        std::string(npz::dtype_name(got.dtype)) + " in the output, " +
                        std::string(npz::dtype_name(wanted.array.dtype)) + " in the input");
        }
        if (got.shape != wanted.array.shape) {
            throw Error(mismatch + "array '" + wanted.key + "' has shape " +
                        npz::format_shape(got.shape) + " in the output, " +
                        npz::format_shape(wanted.array.shape) + " in the input");
        }
    }
    for (const auto& extra : after.members()) {
        if (!before.find(extra.key)) {
            throw Error(mismatch + "array '" + extra.key + "' is not in the input (the input has " +
                        describe_keys(before) + ")");
        }
    }
    for (std::size_t i = 0; i < before.members().size(); ++i) {
        if (before.members()[i].key != after.members()[i].key) {
            throw Error(mismatch + "the arrays are in a different order (position " +
                        std::to_string(i) + " holds '" + after.members()[i].key +
                        "' in the output, '" + before.members()[i].key +
                        "' in the input); parameters are matched by position");
        }
    }

    fs::path metadata_file = metadata_path(output);
    if (!fs::exists(metadata_file, error)) {
        throw Error("train did not write its metadata " + metadata_file.string() +
                    " (a JSON object with the number of training examples, e.g. "
                    "{\"num_examples\": 600})");
    }
    json metadata = parse_json_object(metadata_file, "train metadata");
    TrainOutput result;
    result.num_examples = check_num_examples(metadata, metadata_file);
    result.metadata_json = metadata.dump();
    result.arrays = after.members().size();
    return result;
}

std::string check_json_object_file(const fs::path& file, const std::string& what) {
    std::error_code error;
    if (!fs::exists(file, error)) {
        throw Error(what + " " + file.string() + " was not written (a JSON object is expected)");
    }
    return parse_json_object(file, what).dump();
}

}  // namespace fedcli::dispatch
