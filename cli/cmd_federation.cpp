// Operator commands that talk to a running combiner (Control and Transfer services):
// `package push`, `model push|pull|list` (and its plural spelling `models list`) and
// `clients list`. The session commands are in cli/cmd_session.cpp, the history commands
// (rounds, validations, logs, report) in cli/cmd_history.cpp; their shared helpers in
// cli/federation.hpp.
#include <stdlib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/app.hpp"
#include "cli/cmd_model.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "cli/text.hpp"
#include "core/error.hpp"
#include "core/package/package.hpp"
#include "core/package/signature.hpp"
#include "core/project/project.hpp"
#include "core/proto/rpc.hpp"
#include "core/util/ids.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;
using util::now_unix_ms;

namespace {

/// A private temporary folder, removed with its contents on destruction.
class TemporaryFolder {
  public:
    TemporaryFolder() {
        const char* base = std::getenv("TMPDIR");
        std::string pattern = std::string(base && *base ? base : "/tmp") + "/fedcli-push.XXXXXX";
        if (!::mkdtemp(pattern.data())) {
            throw Error("cannot create a temporary folder under " + pattern + ": " +
                        std::strerror(errno));
        }
        m_path = pattern;
    }
    ~TemporaryFolder() {
        std::error_code ignored;
        std::filesystem::remove_all(m_path, ignored);
    }
    TemporaryFolder(const TemporaryFolder&) = delete;
    TemporaryFolder& operator=(const TemporaryFolder&) = delete;
    const std::filesystem::path& path() const { return m_path; }

  private:
    std::filesystem::path m_path;
};

// ---------------------------------------------------------------------------------------
// package push

struct PackagePushOptions {
    std::string combiner = k_default_combiner;
    std::filesystem::path file;
    std::filesystem::path path;
    std::filesystem::path signature;  ///< default: FILE.sig when it exists
    std::filesystem::path sign_key;   ///< sign now with this secret key
};

/// The key id in a signature line (its third word).
std::string signing_key_id(const std::string& signature) {
    std::istringstream words(signature);
    std::string tag, algorithm, key;
    words >> tag >> algorithm >> key;
    return key;
}

/// The signature line to send with the package (empty: unsigned).
std::string push_signature(const PackagePushOptions& options, const std::filesystem::path& file,
                           const std::string& sha256, const std::string& command) {
    if (!options.sign_key.empty() && !options.signature.empty()) {
        throw UsageError("--signature and --sign-key exclude each other", command);
    }
    if (!options.sign_key.empty()) {
        return package::sign_package(package::load_secret_key(options.sign_key), sha256);
    }
    std::filesystem::path signature_file = options.signature;
    if (signature_file.empty() && !options.file.empty()) {
        signature_file = package::signature_file_for(file);
        if (!std::filesystem::exists(signature_file)) return {};
    }
    if (signature_file.empty()) return {};
    std::ifstream stream(signature_file);
    std::string line;
    if (!stream || !std::getline(stream, line)) {
        throw Error(signature_file.string() + ": cannot read the signature");
    }
    return line;
}

int package_push(const PackagePushOptions& options, std::ostream& out) {
    const std::string command = "fedcli package push";
    if (options.file.empty() == options.path.empty()) {
        throw UsageError("give either a package FILE or --path DIR (a project folder to pack)",
                         command);
    }
    CombinerConnection connection(options.combiner);
    std::optional<TemporaryFolder> temporary;
    std::filesystem::path file = options.file;
    std::string name = options.file.filename().string();
    std::string source;
    if (!options.path.empty()) {
        project::Project project = project::load(options.path);
        temporary.emplace();
        file = temporary->path() / package::k_default_package_name;
        package::create(project.directory, file);
        name = project.name + ".tgz";
        source = " (packed from " + options.path.string() + ")";
    } else {
        if (!std::filesystem::is_regular_file(options.file)) {
            throw Error(options.file.string() + ": no such package file");
        }
        // A package that does not unpack would only fail on every client: check it here.
        package::list(options.file);
    }
    // One pass over the file: the signature and the upload name the same bytes (a file that
    // changes after this fails the upload instead of pairing with another's signature).
    proto::TransferOptions transfer;
    transfer.sha256 = util::sha256_file(file);
    const std::string signature = push_signature(options, file, transfer.sha256, command);
    connection.status();  // a clear error before any upload when the combiner is away
    auto uploaded =
        proto::upload_file(connection.transfer(), v1::TRANSFER_KIND_PACKAGE, file, {}, transfer);
    v1::SetPackageRequest request;
    request.set_sha256(uploaded.id);
    request.set_name(name);
    request.set_signature(signature);
    auto ack = connection.call(&Stub::SetPackage, request, "setting the package");
    if (!ack.accepted()) {
        throw Error("the combiner at " + connection.target() + " refused package " +
                    short_id(uploaded.id) + ": " + ack.reason());
    }
    out << "package  " << (options.path.empty() ? options.file.string() : name) << source << '\n'
        << "size     " << human_bytes(uploaded.size) << " (" << group_digits(uploaded.size)
        << " bytes)\n"
        << "id       " << uploaded.id << '\n'
        << "signed   "
        << (signature.empty() ? std::string("no (clients need --package-sha256 to run it)")
                              : "by key " + signing_key_id(signature))
        << '\n'
        << "status   " << (uploaded.skipped ? "already stored on" : "uploaded to")
        << " the combiner at " << connection.target() << "; now its compute package\n";
    return k_exit_success;
}

Action setup_package_push(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<PackagePushOptions>();
    command.add_option("file", options->file, "Package to upload (.tgz)")->type_name("FILE");
    command.add_option("--path,-p", options->path, "Pack this project folder and upload that")
        ->type_name("DIR");
    command
        .add_option("--signature,-s", options->signature,
                    "Signature to send along (default: FILE.sig when it exists)")
        ->type_name("FILE");
    command
        .add_option("--sign-key,-k", options->sign_key,
                    "Sign the package now with this secret key (`fedcli package keygen`)")
        ->type_name("FILE");
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return package_push(*options, out); };
}

// ---------------------------------------------------------------------------------------
// model push / pull / list

struct ModelPushOptions {
    std::string combiner = k_default_combiner;
    std::filesystem::path file;
};

int model_push(const ModelPushOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    // Every member is read and CRC-checked: a broken seed is refused before it is sent.
    InspectReport report = inspect_parameter_file(options.file);
    if (report.format != InspectReport::Format::npz) {
        throw Error(options.file.string() +
                    ": a model must be an .npz file (save it with "
                    "numpy.savez or fedcli_sdk.save_parameters)");
    }
    connection.status();
    auto uploaded =
        proto::upload_file(connection.transfer(), v1::TRANSFER_KIND_MODEL, options.file);
    v1::SetSeedModelRequest request;
    request.set_model_id(uploaded.id);
    auto ack = connection.call(&Stub::SetSeedModel, request, "setting the seed model");
    if (!ack.accepted()) {
        throw Error("the combiner at " + connection.target() + " refused model " +
                    short_id(uploaded.id) + " as seed: " + ack.reason());
    }
    out << "model    " << options.file.string() << " (" << plural(report.arrays.size(), "array")
        << ", " << plural(report.total_parameters, "parameter") << ")\n"
        << "size     " << human_bytes(uploaded.size) << " (" << group_digits(uploaded.size)
        << " bytes)\n"
        << "id       " << uploaded.id << '\n'
        << "status   " << (uploaded.skipped ? "already stored on" : "uploaded to")
        << " the combiner at " << connection.target() << "; now the seed model\n";
    return k_exit_success;
}

Action setup_model_push(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ModelPushOptions>();
    command.add_option("file", options->file, "Seed model (.npz)")->type_name("FILE")->required();
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return model_push(*options, out); };
}

struct ModelPullOptions {
    std::string combiner = k_default_combiner;
    std::string id = "latest";
    std::filesystem::path output;
};

int model_pull(const ModelPullOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    std::string id = resolve_model_id(connection, options.id, "fedcli model pull");
    connection.status();
    std::filesystem::path folder = options.output.parent_path();
    if (!folder.empty()) std::filesystem::create_directories(folder);
    auto downloaded =
        proto::download_file(connection.transfer(), v1::TRANSFER_KIND_MODEL, id, options.output);
    out << "model " << downloaded.id << " (" << human_bytes(downloaded.size) << ") -> "
        << options.output.string() << '\n';
    return k_exit_success;
}

Action setup_model_pull(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ModelPullOptions>();
    command
        .add_option("id", options->id,
                    "Model id (or a unique prefix of at least 4 digits), or 'latest'")
        ->type_name("ID")
        ->capture_default_str();
    command.add_option("--output,-o", options->output, "Where to write the model")
        ->type_name("FILE")
        ->required();
    add_combiner_option(command, options->combiner);
    std::ostream& out = streams.out;
    return [options, &out] { return model_pull(*options, out); };
}

int model_list(const ListingOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto models = connection.call(&Stub::ListModels, v1::ListModelsRequest{}, "listing the models");
    if (options.json) {
        print_json_array(out, models.models(), model_json);
        return k_exit_success;
    }
    if (models.models().empty()) {
        out << "no models on the combiner at " << connection.target()
            << " (push a seed with `fedcli model push seed.npz`)\n";
        return k_exit_success;
    }
    Table table({"id", "size", "round", "parent", "session", "created"},
                {Table::Align::left, Table::Align::right, Table::Align::right, Table::Align::left,
                 Table::Align::left, Table::Align::left});
    for (const auto& model : models.models()) {
        table.add_row({short_id(model.model_id()), human_bytes(model.size()),
                       model.round_id() ? std::to_string(model.round_id()) : "seed",
                       short_id(model.parent_id()), short_id(model.session_id()),
                       utc_time(model.created_unix_ms())});
    }
    table.print(out);
    return k_exit_success;
}

Action setup_model_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ListingOptions>();
    add_listing_options(command, *options);
    std::ostream& out = streams.out;
    return [options, &out] { return model_list(*options, out); };
}

// ---------------------------------------------------------------------------------------
// clients list

int clients_list(const ListingOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    auto clients =
        connection.call(&Stub::ListClients, v1::ListClientsRequest{}, "listing the clients");
    if (options.json) {
        print_json_array(out, clients.clients(), client_json);
        return k_exit_success;
    }
    if (clients.clients().empty()) {
        out << "no clients have connected to the combiner at " << connection.target() << '\n';
        return k_exit_success;
    }
    const std::int64_t now = now_unix_ms();
    auto ago = [now](std::int64_t unix_ms) -> std::string {
        if (unix_ms <= 0) return "-";
        return duration_text(seconds_between(unix_ms, std::max(now, unix_ms))) + " ago";
    };
    using Align = Table::Align;
    Table table({"id", "name", "online", "status", "last seen", "first seen", "rounds", "examples",
                 "failures", "skipped", "package", "version"},
                {Align::left, Align::left, Align::left, Align::left, Align::left, Align::left,
                 Align::right, Align::right, Align::right, Align::left, Align::left, Align::left});
    std::size_t online = 0;
    std::size_t skipped = 0;
    for (const auto& client : clients.clients()) {
        online += client.online() ? 1 : 0;
        skipped += client.skipped() ? 1 : 0;
        table.add_row({short_id(client.client_id()), client.name(), client.online() ? "yes" : "no",
                       client.online() ? std::string(client_status_name(client.status())) : "-",
                       ago(client.last_seen_unix_ms()), ago(client.first_seen_unix_ms()),
                       std::to_string(client.rounds_contributed()),
                       group_digits(client.examples_contributed()),
                       std::to_string(client.consecutive_failures()),
                       client.skipped() ? "yes" : "no", short_id(client.package_sha256()),
                       client.version().empty() ? "-" : client.version()});
    }
    table.print(out);
    out << online << " of " << plural(clients.clients_size(), "client") << " online";
    if (skipped > 0) {
        out << "; " << skipped
            << " skipped by the running session (too many failures in a row, "
               "--max-client-failures)";
    }
    out << '\n';
    return k_exit_success;
}

Action setup_clients_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ListingOptions>();
    add_listing_options(command, *options);
    command.footer(
        "Columns: rounds and examples are what the client's updates contributed to committed\n"
        "rounds (all sessions); failures counts its tasks that failed in a row; skipped means\n"
        "the running session no longer selects it (--max-client-failures).\n"
        "Example:\n  fedcli clients list --combiner 10.0.0.5:12080 --json");
    std::ostream& out = streams.out;
    return [options, &out] { return clients_list(*options, out); };
}

CLI::App& existing_group(CLI::App& app, const std::string& name) {
    for (CLI::App* group : app.get_subcommands([](CLI::App*) { return true; })) {
        if (group->get_name() == name) return *group;
    }
    throw Error("internal: command group '" + name + "' is not registered yet");
}

}  // namespace

void register_federation_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_package_commands[] = {
        {"push", "Upload a package (or pack --path DIR) and make it the combiner's package",
         setup_package_push},
    };
    add_commands(existing_group(app, "package"), k_package_commands, dispatch);

    static constexpr CommandSpec k_model_commands[] = {
        {"push", "Upload a seed model to the combiner (checked locally first)", setup_model_push},
        {"pull", "Download a model (global, seed or client update) from the combiner",
         setup_model_pull},
        {"list", "List the combiner's global models with their lineage", setup_model_list},
    };
    add_commands(existing_group(app, "model"), k_model_commands, dispatch);

    // The plural spelling, next to `rounds list`, `clients list`, `validations list`.
    static constexpr CommandSpec k_models_commands[] = {
        {"list", "List the combiner's global models with their lineage (= model list)",
         setup_model_list},
    };
    add_group(app, "models", "See the global models a combiner stores", k_models_commands,
              dispatch);

    static constexpr CommandSpec k_clients_commands[] = {
        {"list", "List the clients a combiner knows, online or not", setup_clients_list},
    };
    add_group(app, "clients", "See the clients connected to a combiner", k_clients_commands,
              dispatch);
}

}  // namespace fedcli::cli
