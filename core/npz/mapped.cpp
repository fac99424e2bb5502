#include "core/npz/mapped.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core/error.hpp"
#include "core/npz/zip.hpp"

namespace fedcli::npz {
namespace {

constexpr std::string_view k_npy_magic{"\x93NUMPY", 6};

bool mappable(const MemberInfo& member) {
    return member.compression == Compression::stored && !member.array.big_endian &&
           (!member.array.fortran_order || member.array.shape.size() <= 1);
}

}  // namespace

MappedNpz::MappedNpz(const std::filesystem::path& path, ReadOptions options, Residency residency)
    : m_display_name(path.string()), m_residency(residency) {
    m_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (m_fd < 0) throw Error(m_display_name + ": cannot open: " + std::strerror(errno));
    try {
        struct stat info {};
        if (::fstat(m_fd, &info) != 0) {
            throw Error(m_display_name + ": cannot stat: " + std::strerror(errno));
        }
        if (S_ISDIR(info.st_mode)) {
            throw Error(m_display_name + ": is a folder, not a parameter file");
        }
        m_file_size = static_cast<std::uint64_t>(info.st_size);

        char magic[6] = {};
        std::size_t magic_size =
            static_cast<std::size_t>(std::min<std::uint64_t>(m_file_size, sizeof magic));
        zip::pread_exact(m_fd, magic, magic_size, 0, m_display_name);
        bool single_npy = std::string_view(magic, magic_size) == k_npy_magic;

        if (single_npy) {
            // A lone .npy: one member keyed by the file's stem, data right after the header.
            std::vector<std::byte> prefix(
                static_cast<std::size_t>(std::min<std::uint64_t>(m_file_size, k_npy_prefix_size)));
            zip::pread_exact(m_fd, prefix.data(), prefix.size(), 0, m_display_name);
            std::size_t header_size = npy_header_size(prefix, m_display_name);
            if (header_size > m_file_size) {
                throw Error(m_display_name + ": NPY header is truncated");
            }
            std::vector<std::byte> header(header_size);
            zip::pread_exact(m_fd, header.data(), header.size(), 0, m_display_name);
            auto parsed = parse_npy_header(header, m_display_name);
            std::uint64_t data_size = parsed.info.byte_size();
            if (m_file_size - header_size != data_size) {
                throw Error(m_display_name + ": header says " +
                            std::string(dtype_name(parsed.info.dtype)) + " " +
                            format_shape(parsed.info.shape) + " (" + std::to_string(data_size) +
                            " bytes of data) but the file holds " +
                            std::to_string(m_file_size - header_size) + " bytes after the header");
            }
            MemberInfo member;
            member.member_name = path.filename().string();
            member.key = path.stem().string();
            member.compressed_size = member.uncompressed_size = m_file_size;
            member.data_offset = 0;
            member.array = parsed.info;
            member.npy_header_size = header_size;
            m_members.push_back(std::move(member));
        } else {
            m_reader = std::make_unique<Reader>(m_fd, m_display_name, options);
            m_members = m_reader->members();
        }

        m_mapped.assign(m_members.size(), nullptr);
        m_fallback = std::make_unique<Fallback[]>(m_members.size());
        bool any_mappable = false;
        for (const auto& member : m_members) any_mappable = any_mappable || mappable(member);
        if (any_mappable && m_file_size > 0) {
            // MAP_POPULATE sets up the page tables in one go, much faster than taking a
            // fault on every 4 KiB page during the first pass over the data.
            int flags = MAP_PRIVATE | (residency == Residency::keep ? MAP_POPULATE : 0);
            void* map =
                ::mmap(nullptr, static_cast<std::size_t>(m_file_size), PROT_READ, flags, m_fd, 0);
            if (map == MAP_FAILED) {
                throw Error(m_display_name + ": cannot map: " + std::strerror(errno));
            }
            m_map = static_cast<const std::byte*>(map);
            m_map_size = static_cast<std::size_t>(m_file_size);
        }
        for (std::size_t i = 0; i < m_members.size(); ++i) {
            const auto& member = m_members[i];
            if (!m_map || !mappable(member)) continue;
            const std::byte* start = m_map + member.data_offset;
            if (m_reader && options.verify_crc &&
                crc_of(start, member.uncompressed_size) != member.crc32) {
                throw Error(m_display_name + ": member '" + member.member_name +
                            "': CRC-32 mismatch (data is corrupt)");
            }
            m_mapped[i] = start + member.npy_header_size;
        }
        // Fault-around at window edges may have mapped a few pages the windows left.
        release_all();
    } catch (...) {
        if (m_map) ::munmap(const_cast<std::byte*>(m_map), m_map_size);
        m_reader.reset();
        ::close(m_fd);
        throw;
    }
}

std::uint32_t MappedNpz::crc_of(const std::byte* start, std::uint64_t size) const {
    if (m_residency == Residency::keep) {
        return zip::crc32(0, start, static_cast<std::size_t>(size));
    }
    // A window at a time, so checking a file never makes all of it resident.
    constexpr std::uint64_t k_window = std::uint64_t{8} << 20;
    std::uint32_t crc = 0;
    for (std::uint64_t done = 0; done < size; done += k_window) {
        auto n = static_cast<std::size_t>(std::min(k_window, size - done));
        prefetch(start + done, n);
        crc = zip::crc32(crc, start + done, n);
        release(start + done, n);
    }
    return crc;
}

namespace {

/// The pages covering [data, data + bytes), clipped to the mapping; empty when outside.
/// `inward`: only the pages entirely inside the range (those no neighbouring range shares).
std::pair<std::byte*, std::size_t> page_range(const std::byte* map, std::size_t map_size,
                                              const std::byte* data, std::size_t bytes,
                                              bool inward) {
    if (!map || bytes == 0 || data < map || data >= map + map_size) return {nullptr, 0};
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    auto begin = reinterpret_cast<std::uintptr_t>(data);
    auto end = std::min(begin + bytes, reinterpret_cast<std::uintptr_t>(map) + map_size);
    if (inward) {
        begin = (begin + page - 1) & ~(page - 1);
        if (end != reinterpret_cast<std::uintptr_t>(map) + map_size) end &= ~(page - 1);
    } else {
        begin &= ~(page - 1);
    }
    if (end <= begin) return {nullptr, 0};
    return {reinterpret_cast<std::byte*>(begin), static_cast<std::size_t>(end - begin)};
}

}  // namespace

void MappedNpz::prefetch(const std::byte* data, std::size_t bytes) const noexcept {
    auto [begin, length] = page_range(m_map, m_map_size, data, bytes, false);
    if (length == 0) return;
#ifdef MADV_POPULATE_READ
    if (::madvise(begin, length, MADV_POPULATE_READ) == 0) return;
#endif
    ::madvise(begin, length, MADV_WILLNEED);  // older kernels: read-ahead at least
}

void MappedNpz::release(const std::byte* data, std::size_t bytes) const noexcept {
    if (m_residency != Residency::release) return;
    // Only whole pages of the range: another thread may still read a page it shares with
    // a neighbouring range (and would fault it back in, with the kernel's fault-around
    // mapping neighbours that were already dropped).
    auto [begin, length] = page_range(m_map, m_map_size, data, bytes, true);
    // The mapping is private and read-only, so no page is ever dirty: dropping it loses
    // nothing, a later read refaults it from the page cache.
    if (length) ::madvise(begin, length, MADV_DONTNEED);
}

void MappedNpz::release_all() const noexcept {
    if (m_residency == Residency::release && m_map) {
        ::madvise(const_cast<std::byte*>(m_map), m_map_size, MADV_DONTNEED);
    }
}

MappedNpz::~MappedNpz() {
    if (m_map) ::munmap(const_cast<std::byte*>(m_map), m_map_size);
    m_reader.reset();
    if (m_fd >= 0) ::close(m_fd);
}

std::optional<std::size_t> MappedNpz::find(std::string_view key) const {
    for (std::size_t i = 0; i < m_members.size(); ++i) {
        if (m_members[i].key == key) return i;
    }
    return std::nullopt;
}

bool MappedNpz::is_mapped(std::size_t index) const {
    return m_mapped.at(index) != nullptr;
}

bool MappedNpz::fully_mapped() const {
    return std::all_of(m_mapped.begin(), m_mapped.end(),
                       [](const std::byte* data) { return data != nullptr; });
}

void MappedNpz::close_file() {
    if (m_fd < 0) return;
    for (std::size_t i = 0; i < m_members.size(); ++i) data(i);
    m_reader.reset();
    if (m_residency == Residency::release) return;  // copy_out() reads through it
    ::close(m_fd);
    m_fd = -1;
}

bool MappedNpz::copy_out(const std::byte* data, std::size_t bytes, std::byte* out) const {
    if (m_fd < 0 || !m_map || data < m_map || bytes > m_map_size ||
        static_cast<std::size_t>(data - m_map) > m_map_size - bytes) {
        return false;
    }
    auto offset = static_cast<off_t>(data - m_map);
    std::size_t done = 0;
    while (done < bytes) {
        ssize_t got = ::pread(m_fd, out + done, bytes - done, offset + static_cast<off_t>(done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        done += static_cast<std::size_t>(got);
    }
    return true;
}

std::span<const std::byte> MappedNpz::data(std::size_t index) const {
    const MemberInfo& member = m_members.at(index);
    std::size_t size = static_cast<std::size_t>(member.array.byte_size());
    if (m_mapped[index]) return {m_mapped[index], size};
    Fallback& fallback = m_fallback[index];
    std::call_once(fallback.once, [&] {
        fallback.array = m_reader ? m_reader->read(index) : read_npy(m_display_name);
    });
    return {fallback.array.data(), size};
}

Array MappedNpz::read(std::size_t index) const {
    const MemberInfo& member = m_members.at(index);
    Array copy(member.array.dtype, member.array.shape);
    auto bytes = data(index);
    if (!bytes.empty()) std::memcpy(copy.data(), bytes.data(), bytes.size());
    return copy;
}

}  // namespace fedcli::npz
