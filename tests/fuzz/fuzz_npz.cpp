// libFuzzer target for the npz/npy readers (core/npz).
//
// Each input is tried three ways: as NPY header bytes (npy_header_size + parse_npy_header),
// as an .npz file opened through a memfd with Reader (every member read and verified), and
// as a .npy file through read_npy. fedcli::Error is the only acceptable failure: a crash,
// a sanitizer report, a leak, a hang or any other exception is a finding.
//
// Build and run with scripts/fuzz (clang, -DFEDCLI_FUZZ=ON).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core/error.hpp"
#include "core/npz/npz.hpp"

namespace {

namespace npz = fedcli::npz;

void fuzz_npy_header(std::span<const std::byte> bytes) {
    try {
        std::size_t header_size = npz::npy_header_size(
            bytes.first(std::min(bytes.size(), npz::k_npy_prefix_size)), "fuzz.npy");
        if (header_size <= bytes.size()) {
            npz::NpyHeader header = npz::parse_npy_header(bytes.first(header_size), "fuzz.npy");
            (void)header.info.byte_size();
        }
    } catch (const fedcli::Error&) {
    }
    // Directly on whatever bytes there are, however short.
    try {
        (void)npz::parse_npy_header(bytes, "fuzz.npy");
    } catch (const fedcli::Error&) {
    }
}

/// A memory-backed descriptor holding the input; -1 if the kernel refuses one.
int memory_file(std::span<const std::byte> bytes) {
    int fd = ::memfd_create("fuzz.npz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    std::size_t written = 0;
    while (written < bytes.size()) {
        ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
        if (n <= 0) {
            ::close(fd);
            return -1;
        }
        written += static_cast<std::size_t>(n);
    }
    return fd;
}

void fuzz_npz(int fd) {
    npz::ReadOptions options;
    options.max_total_bytes = std::uint64_t{64} << 20;
    try {
        npz::Reader reader(fd, "fuzz.npz", options);
        for (std::size_t i = 0; i < reader.members().size(); ++i) {
            try {
                npz::Array array = reader.read(i);
                (void)array;
            } catch (const fedcli::Error&) {
            }
            try {
                reader.verify(i);
            } catch (const fedcli::Error&) {
            }
            (void)reader.find(reader.members()[i].key);
        }
        npz::ParameterSet all = reader.read_all();
        (void)all.key_convention();
    } catch (const fedcli::Error&) {
    }
}

void fuzz_npy(int fd) {
    try {
        npz::Array array = npz::read_npy("/proc/self/fd/" + std::to_string(fd));
        (void)array;
    } catch (const fedcli::Error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    fuzz_npy_header(bytes);
    int fd = memory_file(bytes);
    if (fd < 0) return 0;
    fuzz_npz(fd);
    fuzz_npy(fd);
    ::close(fd);
    return 0;
}
