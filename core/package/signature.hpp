// Signed compute packages: Ed25519 keys and detached signatures (libsodium).
//
// A client executes the code in a compute package. It does so only when it trusts the
// package (docs/security.md, Trusted packages): the package's sha256 equals a pin the
// client was given, or the package carries a signature by a key the client trusts.
//
// What is signed is the package's SHA-256, not its bytes, with a domain prefix so that a
// signature made for a package can never be replayed as a signature of anything else:
//   message = "fedcli package v1\n" + <sha256 as 64 lowercase hex digits>
// Files are one line of text each, so they can be pasted into configs and tickets:
//   public key   fedcli-ed25519-public <base64 of 32 bytes>
//   secret key   fedcli-ed25519-secret <base64 of 64 bytes>          (written mode 0600)
//   signature    fedcli-signature-v1 ed25519 <key id> <base64 of 64 bytes>
// The key id is the first 8 bytes of SHA-256(public key) in hex; it names the key in
// messages and lets a client holding several trusted keys pick the right one.
//
// Thread-safety: all functions may be called from any thread.
#pragma once

#include <array>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace fedcli::package {

struct PublicKey {
    std::array<unsigned char, 32> bytes{};
    /// 16 hex digits (see the header comment).
    std::string id() const;
    /// The one-line text form.
    std::string text() const;
};

struct SecretKey {
    std::array<unsigned char, 64> bytes{};  ///< libsodium's seed + public key
    PublicKey public_key() const;
};

/// Makes a key pair and writes `secret_file` (mode 0600, refusing to replace an existing
/// file) and `public_file`. Returns the public key.
PublicKey generate_key_pair(const std::filesystem::path& secret_file,
                            const std::filesystem::path& public_file);

/// Parse the one-line forms; fedcli::Error names `where` (a file name) and what is wrong.
PublicKey parse_public_key(std::string_view text, const std::string& where);
SecretKey parse_secret_key(std::string_view text, const std::string& where);
PublicKey load_public_key(const std::filesystem::path& file);
SecretKey load_secret_key(const std::filesystem::path& file);

/// The signature line for a package whose SHA-256 is `sha256_hex`.
std::string sign_package(const SecretKey& key, std::string_view sha256_hex);

/// Checks `signature` (the one-line form) of the package `sha256_hex` against the trusted
/// keys. Returns the id of the key that signed it; throws fedcli::Error saying why not
/// (malformed, made by a key that is not trusted — naming its id — or not matching the
/// package: tampered or signed for another package).
std::string verify_package(std::string_view signature, std::string_view sha256_hex,
                           std::span<const PublicKey> trusted);

/// `file` + ".sig": where `fedcli package sign` puts a package's signature.
std::filesystem::path signature_file_for(const std::filesystem::path& file);

}  // namespace fedcli::package
