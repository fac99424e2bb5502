#include "core/package/signature.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/util/ids.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::package {

namespace {

constexpr std::string_view k_public_tag = "fedcli-ed25519-public";
constexpr std::string_view k_secret_tag = "fedcli-ed25519-secret";
constexpr std::string_view k_signature_tag = "fedcli-signature-v1";
constexpr std::string_view k_message_prefix = "fedcli package v1\n";

void ensure_sodium() {
    static const int status = sodium_init();  // thread-safe, idempotent
    if (status < 0) throw Error("libsodium could not be initialised");
}

std::string base64(const unsigned char* data, std::size_t size) {
    std::string text(sodium_base64_encoded_len(size, sodium_base64_VARIANT_ORIGINAL), '\0');
    sodium_bin2base64(text.data(), text.size(), data, size, sodium_base64_VARIANT_ORIGINAL);
    text.resize(std::strlen(text.c_str()));
    return text;
}

/// Decodes exactly `size` bytes or throws.
void unbase64(std::string_view text, unsigned char* out, std::size_t size,
              const std::string& what) {
    std::size_t decoded = 0;
    if (sodium_base642bin(out, size, text.data(), text.size(), nullptr, &decoded, nullptr,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        decoded != size) {
        throw Error(what + ": expected " + std::to_string(size) + " bytes of base64");
    }
}

/// Whitespace-separated words of the first line.
std::vector<std::string> words(std::string_view text) {
    std::string line(text.substr(0, text.find('\n')));
    std::istringstream stream(line);
    std::vector<std::string> result;
    for (std::string word; stream >> word;) result.push_back(word);
    return result;
}

std::string read_small_file(const std::filesystem::path& file) {
    std::ifstream stream(file, std::ios::binary);
    if (!stream) throw Error(file.string() + ": cannot read: " + std::strerror(errno));
    std::string text(4096, '\0');
    stream.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(stream.gcount()));
    return text;
}

std::string message_for(std::string_view sha256_hex, const std::string& where) {
    if (!util::is_sha256(sha256_hex)) {
        throw Error(where + ": '" + std::string(sha256_hex) + "' is not a sha256");
    }
    return std::string(k_message_prefix) + util::lowercase(sha256_hex);
}

void write_new_file(const std::filesystem::path& file, const std::string& text, mode_t mode) {
    int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        throw Error(file.string() + ": cannot create: " + std::strerror(errno) +
                    (errno == EEXIST ? " (keys are never overwritten)" : ""));
    }
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) throw Error(file.string() + ": cannot write");
}

}  // namespace

std::string PublicKey::id() const {
    std::span<const std::byte> view(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
    return util::sha256_hex(view).substr(0, 16);
}

std::string PublicKey::text() const {
    return std::string(k_public_tag) + " " + base64(bytes.data(), bytes.size());
}

PublicKey SecretKey::public_key() const {
    PublicKey key;
    crypto_sign_ed25519_sk_to_pk(key.bytes.data(), bytes.data());
    return key;
}

PublicKey generate_key_pair(const std::filesystem::path& secret_file,
                            const std::filesystem::path& public_file) {
    ensure_sodium();
    SecretKey secret;
    PublicKey public_key;
    crypto_sign_keypair(public_key.bytes.data(), secret.bytes.data());
    write_new_file(secret_file,
                   std::string(k_secret_tag) + " " + base64(secret.bytes.data(), 64) + "\n", 0600);
    sodium_memzero(secret.bytes.data(), secret.bytes.size());
    write_new_file(public_file, public_key.text() + "\n", 0644);
    return public_key;
}

PublicKey parse_public_key(std::string_view text, const std::string& where) {
    ensure_sodium();
    auto parts = words(text);
    if (parts.size() < 2 || parts[0] != k_public_tag) {
        throw Error(where + ": not a fedcli public key (expected '" + std::string(k_public_tag) +
                    " <base64>'" +
                    (!parts.empty() && parts[0] == k_secret_tag ? "; this is a SECRET key" : "") +
                    ")");
    }
    PublicKey key;
    unbase64(parts[1], key.bytes.data(), key.bytes.size(), where);
    return key;
}

SecretKey parse_secret_key(std::string_view text, const std::string& where) {
    ensure_sodium();
    auto parts = words(text);
    if (parts.size() < 2 || parts[0] != k_secret_tag) {
        throw Error(where + ": not a fedcli secret key (expected '" + std::string(k_secret_tag) +
                    " <base64>', as `fedcli package keygen` writes)");
    }
    SecretKey key;
    unbase64(parts[1], key.bytes.data(), key.bytes.size(), where);
    // The second half of a libsodium secret key is its public key: a consistency check.
    unsigned char derived[32];
    crypto_sign_ed25519_sk_to_seed(derived, key.bytes.data());
    unsigned char public_key[32];
    unsigned char full[64];
    crypto_sign_seed_keypair(public_key, full, derived);
    sodium_memzero(derived, sizeof derived);
    const bool consistent = sodium_memcmp(full, key.bytes.data(), 64) == 0;
    sodium_memzero(full, sizeof full);
    if (!consistent) throw Error(where + ": the secret key is damaged (its halves disagree)");
    return key;
}

PublicKey load_public_key(const std::filesystem::path& file) {
    return parse_public_key(read_small_file(file), file.string());
}

SecretKey load_secret_key(const std::filesystem::path& file) {
    return parse_secret_key(read_small_file(file), file.string());
}

std::string sign_package(const SecretKey& key, std::string_view sha256_hex) {
    ensure_sodium();
    const std::string message = message_for(sha256_hex, "signing");
    unsigned char signature[crypto_sign_BYTES];
    crypto_sign_detached(signature, nullptr, reinterpret_cast<const unsigned char*>(message.data()),
                         message.size(), key.bytes.data());
    return std::string(k_signature_tag) + " ed25519 " + key.public_key().id() + " " +
           base64(signature, sizeof signature);
}

std::string verify_package(std::string_view signature, std::string_view sha256_hex,
                           std::span<const PublicKey> trusted) {
    ensure_sodium();
    const std::string package = "package " + util::short_id(sha256_hex);
    auto parts = words(signature);
    if (parts.size() != 4 || parts[0] != k_signature_tag || parts[1] != "ed25519") {
        throw Error(package + ": its signature is malformed (expected '" +
                    std::string(k_signature_tag) + " ed25519 <key id> <base64>')");
    }
    unsigned char bytes[crypto_sign_BYTES];
    unbase64(parts[3], bytes, sizeof bytes, package + ": its signature");
    const std::string message = message_for(sha256_hex, package);
    for (const PublicKey& key : trusted) {
        if (key.id() != parts[2]) continue;
        if (crypto_sign_verify_detached(bytes,
                                        reinterpret_cast<const unsigned char*>(message.data()),
                                        message.size(), key.bytes.data()) != 0) {
            throw Error(package + ": the signature by trusted key " + parts[2] +
                        " does not match this package (tampered, or signed for another package)");
        }
        return parts[2];
    }
    std::string known;
    for (const PublicKey& key : trusted) known += (known.empty() ? "" : ", ") + key.id();
    throw Error(
        package + ": signed by key " + parts[2] + ", which this client does not trust" +
        (known.empty() ? std::string(" (no --trust-key given)") : " (trusted: " + known + ")"));
}

std::filesystem::path signature_file_for(const std::filesystem::path& file) {
    std::filesystem::path result = file;
    result += ".sig";
    return result;
}

}  // namespace fedcli::package
