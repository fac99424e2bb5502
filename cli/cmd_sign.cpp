// `fedcli package keygen|sign|verify`: Ed25519 signatures of compute packages, so that a
// client runs only packages its operator signed (core/package/signature.hpp,
// docs/security.md).
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli/app.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/package/package.hpp"
#include "core/package/signature.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::cli {

namespace fs = std::filesystem;

namespace {

struct KeygenOptions {
    fs::path out = ".";
    std::string name = "package";
};

int package_keygen(const KeygenOptions& options, std::ostream& out) {
    fs::create_directories(options.out);
    const fs::path secret = options.out / (options.name + ".key");
    const fs::path public_file = options.out / (options.name + ".pub");
    const package::PublicKey key = package::generate_key_pair(secret, public_file);
    out << "key " << key.id() << '\n'
        << "secret  " << secret.string() << " (mode 0600: keep it where packages are made)\n"
        << "public  " << public_file.string()
        << " (give it to clients: fedcli client start --trust-key " << public_file.string()
        << ")\n";
    return k_exit_success;
}

Action setup_keygen(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<KeygenOptions>();
    command.add_option("--out,-o", options->out, "Folder for NAME.key and NAME.pub (default: .)")
        ->type_name("DIR");
    command.add_option("--name", options->name, "File name stem")->capture_default_str();
    std::ostream& out = streams.out;
    return [options, &out] { return package_keygen(*options, out); };
}

struct SignOptions {
    fs::path key;
    fs::path file;
    fs::path output;
};

int package_sign(const SignOptions& options, std::ostream& out) {
    const package::SecretKey key = package::load_secret_key(options.key);
    if (!fs::is_regular_file(options.file)) throw Error(options.file.string() + ": no such file");
    // Only a package that unpacks is worth a signature.
    package::list(options.file);
    const std::string sha256 = util::sha256_file(options.file);
    const std::string signature = package::sign_package(key, sha256);
    const fs::path output =
        options.output.empty() ? package::signature_file_for(options.file) : options.output;
    std::ofstream stream(output, std::ios::trunc);
    stream << signature << '\n';
    stream.close();
    if (!stream) throw Error(output.string() + ": cannot write the signature");
    out << "signed " << options.file.string() << " (sha256 " << sha256 << ") with key "
        << key.public_key().id() << " -> " << output.string() << '\n';
    return k_exit_success;
}

Action setup_sign(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<SignOptions>();
    command.add_option("file", options->file, "The package (.tgz)")->type_name("FILE")->required();
    command.add_option("--key,-k", options->key, "Secret key from `fedcli package keygen`")
        ->type_name("FILE")
        ->required();
    command.add_option("--output,-o", options->output, "Signature file (default: FILE.sig)")
        ->type_name("FILE");
    std::ostream& out = streams.out;
    return [options, &out] { return package_sign(*options, out); };
}

struct VerifyOptions {
    fs::path file;
    fs::path signature;
    std::vector<fs::path> trusted;
};

int package_verify(const VerifyOptions& options, std::ostream& out) {
    std::vector<package::PublicKey> keys;
    for (const fs::path& file : options.trusted) keys.push_back(package::load_public_key(file));
    const fs::path signature_file =
        options.signature.empty() ? package::signature_file_for(options.file) : options.signature;
    std::ifstream stream(signature_file);
    std::string signature;
    if (!stream || !std::getline(stream, signature)) {
        throw Error(signature_file.string() + ": cannot read the signature");
    }
    const std::string sha256 = util::sha256_file(options.file);
    const std::string key = package::verify_package(signature, sha256, keys);
    out << options.file.string() << ": good signature by trusted key " << key << " (sha256 "
        << sha256 << ")\n";
    return k_exit_success;
}

Action setup_verify(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<VerifyOptions>();
    command.add_option("file", options->file, "The package (.tgz)")->type_name("FILE")->required();
    command.add_option("--signature,-s", options->signature, "Signature file (default: FILE.sig)")
        ->type_name("FILE");
    command.add_option("--trust-key", options->trusted, "Trusted public key (repeatable)")
        ->type_name("FILE")
        ->required();
    std::ostream& out = streams.out;
    return [options, &out] { return package_verify(*options, out); };
}

}  // namespace

void register_signing_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"keygen", "Make an Ed25519 key pair for signing packages (NAME.key, NAME.pub)",
         setup_keygen},
        {"sign", "Sign a package with a secret key (writes FILE.sig)", setup_sign},
        {"verify", "Check a package's signature against trusted public keys", setup_verify},
    };
    add_commands(*app.get_subcommand("package"), k_commands, dispatch);
}

}  // namespace fedcli::cli
