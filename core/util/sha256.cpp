#include "core/util/sha256.hpp"

#include <fcntl.h>
// OpenSSL 3 deprecates the low-level SHA256_* calls in favour of EVP, but EVP loads the
// provider machinery and configuration on first use: about 2 MB more resident memory in every
// process that hashes (the client daemon idles near 16 MB), for the same SHA-NI speed.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.hpp"

namespace fedcli::util {

struct Sha256::State {
    SHA256_CTX context;
};

Sha256::Sha256() : m_state(std::make_unique<State>()) {
    if (SHA256_Init(&m_state->context) != 1) throw Error("sha256: cannot initialise the digest");
}

Sha256::~Sha256() = default;

void Sha256::update(std::span<const std::byte> bytes) {
    update(bytes.data(), bytes.size());
}

void Sha256::update(const void* data, std::size_t size) {
    if (size != 0 && SHA256_Update(&m_state->context, data, size) != 1) {
        throw Error("sha256: digest update failed");
    }
}

std::string Sha256::hex_digest() {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    const unsigned int length = SHA256_DIGEST_LENGTH;
    if (SHA256_Final(digest, &m_state->context) != 1) {
        throw Error("sha256: digest final failed");
    }
    static const char k_hex[] = "0123456789abcdef";
    std::string text(length * 2, '0');
    for (unsigned int i = 0; i < length; ++i) {
        text[2 * i] = k_hex[digest[i] >> 4];
        text[2 * i + 1] = k_hex[digest[i] & 15];
    }
    return text;
}

std::string sha256_hex(std::span<const std::byte> bytes) {
    Sha256 digest;
    digest.update(bytes);
    return digest.hex_digest();
}

std::string sha256_file(const std::filesystem::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
    Sha256 digest;
    std::vector<char> block(1 << 20);
    for (;;) {
        ssize_t n = ::read(fd, block.data(), block.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            int saved = errno;
            ::close(fd);
            throw Error(path.string() + ": read failed: " + std::strerror(saved));
        }
        if (n == 0) break;
        digest.update(block.data(), static_cast<std::size_t>(n));
    }
    ::close(fd);
    return digest.hex_digest();
}

}  // namespace fedcli::util
