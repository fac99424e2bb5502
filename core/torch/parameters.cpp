#include "core/torch/parameters.hpp"

#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace fedcli::torch {
namespace {

void collect(::torch::nn::Module& module, const std::string& prefix,
             std::vector<std::pair<std::string, ::torch::Tensor>>& entries) {
    for (auto& item : module.named_parameters(/*recurse=*/false)) {
        entries.emplace_back(prefix + item.key(), item.value());
    }
    for (auto& item : module.named_buffers(/*recurse=*/false)) {
        entries.emplace_back(prefix + item.key(), item.value());
    }
    for (auto& child : module.named_children()) {
        collect(*child.value(), prefix + child.key() + ".", entries);
    }
}

npz::Shape shape_of(const ::torch::Tensor& tensor) {
    npz::Shape shape;
    for (auto size : tensor.sizes()) shape.push_back(static_cast<std::uint64_t>(size));
    return shape;
}

void write_json(const nlohmann::json& document, const std::filesystem::path& path) {
    auto temporary = path;
    temporary += ".tmp";
    {
        std::ofstream out(temporary, std::ios::trunc);
        if (!out) throw Error(path.string() + ": cannot write");
        out << document.dump(2) << "\n";
        if (!out) throw Error(path.string() + ": write failed");
    }
    std::filesystem::rename(temporary, path);
}

}  // namespace

::torch::ScalarType tensor_type(npz::DType dtype) {
    switch (dtype) {
        case npz::DType::float16:
            return ::torch::kFloat16;
        case npz::DType::float32:
            return ::torch::kFloat32;
        case npz::DType::float64:
            return ::torch::kFloat64;
        case npz::DType::int8:
            return ::torch::kInt8;
        case npz::DType::int16:
            return ::torch::kInt16;
        case npz::DType::int32:
            return ::torch::kInt32;
        case npz::DType::int64:
            return ::torch::kInt64;
        case npz::DType::uint8:
            return ::torch::kUInt8;
        case npz::DType::boolean:
            return ::torch::kBool;
        default:
            throw Error("dtype " + std::string(npz::dtype_name(dtype)) +
                        " has no torch tensor type");
    }
}

npz::DType npz_dtype(::torch::ScalarType type) {
    switch (type) {
        case ::torch::kFloat16:
            return npz::DType::float16;
        case ::torch::kFloat32:
            return npz::DType::float32;
        case ::torch::kFloat64:
            return npz::DType::float64;
        case ::torch::kInt8:
            return npz::DType::int8;
        case ::torch::kInt16:
            return npz::DType::int16;
        case ::torch::kInt32:
            return npz::DType::int32;
        case ::torch::kInt64:
            return npz::DType::int64;
        case ::torch::kUInt8:
            return npz::DType::uint8;
        case ::torch::kBool:
            return npz::DType::boolean;
        default:
            throw Error(std::string("tensor type ") + c10::toString(type) +
                        " cannot be stored in an .npz parameter file");
    }
}

std::vector<std::pair<std::string, ::torch::Tensor>> state_entries(::torch::nn::Module& module) {
    std::vector<std::pair<std::string, ::torch::Tensor>> entries;
    collect(module, "", entries);
    return entries;
}

npz::ParameterSet to_parameters(::torch::nn::Module& module, Keys keys) {
    npz::ParameterSet parameters;
    auto entries = state_entries(module);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        auto tensor = entries[i].second.detach().to(::torch::kCPU).contiguous();
        npz::Array array(npz_dtype(tensor.scalar_type()), shape_of(tensor));
        if (array.byte_size()) std::memcpy(array.data(), tensor.data_ptr(), array.byte_size());
        parameters.add(keys == Keys::named ? entries[i].first : std::to_string(i),
                       std::move(array));
    }
    return parameters;
}

void from_parameters(::torch::nn::Module& module, const npz::ParameterSet& parameters) {
    auto entries = state_entries(module);
    bool by_position = parameters.key_convention() != npz::KeyConvention::named;
    if (parameters.size() != entries.size()) {
        throw Error("the parameter file has " + std::to_string(parameters.size()) +
                    " arrays, the model has " + std::to_string(entries.size()));
    }
    // Check everything before touching the module, so a mismatch leaves it as it was.
    std::vector<const npz::Array*> sources;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const auto& [name, tensor] = entries[i];
        const npz::Array* array = by_position ? &parameters[i].array : parameters.find(name);
        std::string label = by_position ? "array \"" + parameters[i].name + "\" (" + name + ")"
                                        : "array \"" + name + "\"";
        if (!array) throw Error(label + " is missing from the parameter file");
        if (array->shape() != shape_of(tensor)) {
            throw Error(label + " has shape " + npz::format_shape(array->shape()) +
                        ", the model has " + npz::format_shape(shape_of(tensor)));
        }
        if (array->dtype() != npz_dtype(tensor.scalar_type())) {
            throw Error(label + " is " + std::string(npz::dtype_name(array->dtype())) +
                        ", the model has " +
                        std::string(npz::dtype_name(npz_dtype(tensor.scalar_type()))));
        }
        sources.push_back(array);
    }
    ::torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        auto& tensor = entries[i].second;
        const npz::Array& array = *sources[i];
        std::vector<int64_t> sizes(array.shape().begin(), array.shape().end());
        auto source = ::torch::from_blob(const_cast<std::byte*>(array.data()), sizes,
                                         ::torch::TensorOptions().dtype(tensor.scalar_type()));
        tensor.copy_(source);
    }
}

void save(::torch::nn::Module& module, const std::filesystem::path& path, Keys keys) {
    npz::write_npz(path, to_parameters(module, keys));
}

void load(::torch::nn::Module& module, const std::filesystem::path& path) {
    try {
        from_parameters(module, npz::read_parameters(path));
    } catch (const Error& error) {
        throw error.with_context(path.string());
    }
}

nlohmann::json load_settings(const std::filesystem::path& input) {
    auto path = input;
    path += "-metadata";
    std::ifstream in(path);
    if (!in) return nlohmann::json::object();
    try {
        auto document = nlohmann::json::parse(in);
        if (!document.is_object()) throw Error(path.string() + ": settings must be a JSON object");
        return document;
    } catch (const nlohmann::json::parse_error& error) {
        throw Error(path.string() + ": not valid JSON: " + error.what());
    }
}

void save_metadata(const nlohmann::json& metadata, const std::filesystem::path& output) {
    auto examples = metadata.find("num_examples");
    if (examples == metadata.end() || !examples->is_number_integer() ||
        examples->get<std::int64_t>() <= 0) {
        throw Error("training metadata needs a positive integer \"num_examples\"");
    }
    auto path = output;
    path += "-metadata";
    write_json(metadata, path);
}

void save_metrics(const nlohmann::json& metrics, const std::filesystem::path& path) {
    if (!metrics.is_object()) throw Error("metrics must be a JSON object");
    write_json(metrics, path);
}

}  // namespace fedcli::torch
