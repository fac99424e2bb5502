// client::Options as JSON: how `fedcli client start` hands its checked options to the
// `fedcli-client` executable (client/main.cpp). Every field but `log` travels; durations are
// milliseconds, paths strings, public keys their one-line text form, unset optionals null.
#include <nlohmann/json.hpp>

#include "client/client.hpp"
#include "core/error.hpp"
#include "core/util/json_fields.hpp"

namespace fedcli::client {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using util::Fields;

json optional_number(const std::optional<std::uint64_t>& value) {
    return value ? json(*value) : json(nullptr);
}

}  // namespace

json options_to_json(const Options& options) {
    json environment = json::array();
    for (const auto& [name, value] : options.environment) environment.push_back({name, value});
    json keys = json::array();
    for (const package::PublicKey& key : options.trusted_keys) keys.push_back(key.text());
    const dispatch::ResourceLimits& limits = options.entry_point_limits;
    const package::Limits& package_limits = options.package_limits;
    const proto::ChannelOptions& channel = options.channel;
    return json{
        {"combiner", options.combiner},
        {"name", options.name},
        {"project", options.project ? json(options.project->string()) : json(nullptr)},
        {"work_dir", options.work_dir.string()},
        {"python", options.python ? json(*options.python) : json(nullptr)},
        {"data_path", options.data_path ? json(options.data_path->string()) : json(nullptr)},
        {"backoff_initial_ms", options.backoff_initial.count()},
        {"backoff_max_ms", options.backoff_max.count()},
        {"environment", environment},
        {"entry_point_timeout_ms",
         options.entry_point_timeout ? json(options.entry_point_timeout->count()) : json(nullptr)},
        {"entry_point_limits",
         {{"memory_bytes", optional_number(limits.memory_bytes)},
          {"cpu_seconds", optional_number(limits.cpu_seconds)},
          {"open_files", optional_number(limits.open_files)}}},
        {"package_limits",
         {{"max_package_bytes", package_limits.max_package_bytes},
          {"max_entries", package_limits.max_entries},
          {"max_total_bytes", package_limits.max_total_bytes},
          {"max_file_bytes", package_limits.max_file_bytes}}},
        {"fedcli_executable", options.fedcli_executable.string()},
        {"package_pins", options.package_pins},
        {"trusted_keys", keys},
        {"trust_any_package", options.trust_any_package},
        {"echo_output", options.echo_output},
        {"channel",
         {{"token", channel.token},
          {"ca_file", channel.ca_file.string()},
          {"cert_file", channel.cert_file.string()},
          {"key_file", channel.key_file.string()},
          {"insecure", channel.insecure}}},
    };
}

Options options_from_json(const json& document) {
    const Fields fields(document, "client options", "options");
    Options options;
    options.combiner = fields.string("combiner");
    options.name = fields.string("name");
    if (auto project = fields.optional_string("project")) options.project = fs::path(*project);
    options.work_dir = fields.string("work_dir");
    options.python = fields.optional_string("python");
    if (auto data = fields.optional_string("data_path")) options.data_path = fs::path(*data);
    options.backoff_initial = std::chrono::milliseconds(fields.number("backoff_initial_ms"));
    options.backoff_max = std::chrono::milliseconds(fields.number("backoff_max_ms"));
    const json& environment = fields.at("environment");
    if (!environment.is_array()) fields.fail("environment", "expected an array");
    for (const json& pair : environment) {
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) {
            fields.fail("environment", "expected [NAME, VALUE] pairs");
        }
        options.environment.emplace_back(pair[0].get<std::string>(), pair[1].get<std::string>());
    }
    if (auto timeout = fields.optional_number("entry_point_timeout_ms")) {
        options.entry_point_timeout = std::chrono::milliseconds(*timeout);
    }
    const Fields limits = fields.object("entry_point_limits");
    options.entry_point_limits.memory_bytes = limits.optional_number("memory_bytes");
    options.entry_point_limits.cpu_seconds = limits.optional_number("cpu_seconds");
    options.entry_point_limits.open_files = limits.optional_number("open_files");
    const Fields package_limits = fields.object("package_limits");
    options.package_limits.max_package_bytes = package_limits.number("max_package_bytes");
    options.package_limits.max_entries = package_limits.number("max_entries");
    options.package_limits.max_total_bytes = package_limits.number("max_total_bytes");
    options.package_limits.max_file_bytes = package_limits.number("max_file_bytes");
    options.fedcli_executable = fields.string("fedcli_executable");
    options.package_pins = fields.strings("package_pins");
    for (const std::string& key : fields.strings("trusted_keys")) {
        options.trusted_keys.push_back(
            package::parse_public_key(key, "client options: " + fields.path("trusted_keys")));
    }
    options.trust_any_package = fields.boolean("trust_any_package");
    options.echo_output = fields.boolean("echo_output");
    const Fields channel = fields.object("channel");
    options.channel.token = channel.string("token");
    options.channel.ca_file = channel.string("ca_file");
    options.channel.cert_file = channel.string("cert_file");
    options.channel.key_file = channel.string("key_file");
    options.channel.insecure = channel.boolean("insecure");
    return options;
}

}  // namespace fedcli::client
