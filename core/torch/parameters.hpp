// fedcli_torch: LibTorch helpers for C++ entry points (the only LibTorch user in fedcli
// besides the examples; the daemons and the fedcli binary never link it).
//
// Moves a torch::nn::Module's state between memory and fedcli's parameter files (.npz), in
// the order PyTorch's state_dict() uses: modules in registration order (pre-order), each
// module's own parameters then its own buffers. Keys are FEDn's numpyhelper convention
// ("0".."N-1") by default, or the state_dict names ("fc1.weight") with Keys::named. A file
// written from Python with the same architecture loads here and vice versa.
//
// Also reads and writes the JSON side files of the entry-point contract (docs/formats.md):
// round settings, training metadata and metrics.
//
// Thread-safety: functions are reentrant; a module must not be trained while it is saved.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/npz/npz.hpp"

namespace fedcli::torch {

enum class Keys { numbered, named };

/// The module's parameters and buffers in state_dict order, with their state_dict names.
std::vector<std::pair<std::string, ::torch::Tensor>> state_entries(::torch::nn::Module& module);

/// Copies the module's state into a parameter set (CPU, contiguous copies).
npz::ParameterSet to_parameters(::torch::nn::Module& module, Keys keys = Keys::numbered);

/// Copies a parameter set into the module's state. Arrays are matched by position (numbered
/// or numpy-convention keys) or by state_dict name (named keys). Throws fedcli::Error naming
/// the array when the count, a shape or a dtype differs; the module is left untouched then.
void from_parameters(::torch::nn::Module& module, const npz::ParameterSet& parameters);

/// Writes the module's state to an .npz file (atomically).
void save(::torch::nn::Module& module, const std::filesystem::path& path,
          Keys keys = Keys::numbered);
/// Reads an .npz file into the module's state.
void load(::torch::nn::Module& module, const std::filesystem::path& path);

/// The tensor type for an npz dtype and back; throws fedcli::Error for unsupported types.
::torch::ScalarType tensor_type(npz::DType dtype);
npz::DType npz_dtype(::torch::ScalarType type);

/// The round settings fedcli wrote to "<input>-metadata" ({} when absent).
nlohmann::json load_settings(const std::filesystem::path& input);
/// Writes "<output>-metadata"; `metadata` must hold a positive integer "num_examples".
void save_metadata(const nlohmann::json& metadata, const std::filesystem::path& output);
/// Writes a JSON object (validate/predict output).
void save_metrics(const nlohmann::json& metrics, const std::filesystem::path& path);

}  // namespace fedcli::torch
