// SHA-256 digests of byte streams and files (OpenSSL's implementation underneath).
//
// Thread-safety: a Sha256 object is used by one thread at a time; the free functions are
// reentrant.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

namespace fedcli::util {

/// Incremental SHA-256.
class Sha256 {
  public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;

    void update(std::span<const std::byte> bytes);
    void update(const void* data, std::size_t size);
    /// Finishes and returns the lowercase hex digest (64 characters). Call once.
    std::string hex_digest();

  private:
    struct State;
    std::unique_ptr<State> m_state;
};

/// Hex SHA-256 of a byte string.
std::string sha256_hex(std::span<const std::byte> bytes);
/// Hex SHA-256 of a file's contents, read in 1 MiB blocks. Throws fedcli::Error naming the
/// file when it cannot be read.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace fedcli::util
