// Zero-copy, read-only access to the arrays of a parameter file.
//
// MappedNpz maps an .npz (or a single .npy) file read-only and hands out the bytes of each
// array in the in-memory form of npz::Array (C order, little-endian). Members that are
// stored (not deflated), little-endian and C-order (or of rank <= 1) are served straight
// from the mapping: no allocation, no copy, and the page cache is the only copy in memory.
// Every other member (deflate, big-endian, Fortran order) is read with Reader::read on
// first access and kept for the object's lifetime.
//
// The member list, order and every error about the archive's structure are those of
// npz::Reader. With ReadOptions::verify_crc (the default) the construction streams every
// mapped member through its CRC-32 check, so corruption is reported before any data is
// used; members read through Reader::read are checked there.
//
// Pointers into the mapping are not aligned to the element size in general (a zip local
// header of any length precedes each member): read them with memcpy or unaligned loads.
// The file must not be truncated while mapped (the kernel answers a read past the new end
// with SIGBUS); fedcli only maps files it owns or that nobody rewrites in place (writers
// replace files by rename, which leaves the mapping intact).
//
// Thread-safety: after construction every member function may be called from several
// threads at once; a fallback member is read exactly once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/npz/npz.hpp"

namespace fedcli::npz {

/// Whether the mapping's pages stay in this process's resident set.
///  - keep: the whole file is mapped with MAP_POPULATE (fastest when the data is used soon
///    and memory is plentiful); every page counts in the RSS until destruction.
///  - release: pages are faulted in a window at a time (prefetch()) and dropped from the
///    RSS after use (release()); the page cache keeps the data, so a later read costs a
///    minor fault, not I/O. The CRC check walks the file in windows the same way. For
///    servers that hold many updates pending within a memory budget.
enum class Residency { keep, release };

class MappedNpz {
  public:
    /// Maps `path`, an .npz archive or a single .npy array (one member keyed by the file's
    /// stem). Throws fedcli::Error naming the file when it is missing, not a parameter file
    /// or corrupt.
    explicit MappedNpz(const std::filesystem::path& path, ReadOptions options = {},
                       Residency residency = Residency::keep);
    ~MappedNpz();
    MappedNpz(const MappedNpz&) = delete;
    MappedNpz& operator=(const MappedNpz&) = delete;

    const std::string& display_name() const { return m_display_name; }
    std::uint64_t file_size() const { return m_file_size; }
    /// Members in npz::Reader order (numbered keys in index order).
    const std::vector<MemberInfo>& members() const { return m_members; }
    /// Index of the member with this key, or nullopt.
    std::optional<std::size_t> find(std::string_view key) const;

    /// The array's bytes (C order, little-endian, members()[index].array.byte_size() of
    /// them), valid while this object lives. Throws fedcli::Error if a fallback read fails.
    std::span<const std::byte> data(std::size_t index) const;
    /// True when data(index) points into the file mapping (no copy was made).
    bool is_mapped(std::size_t index) const;
    /// True when every member is served from the mapping.
    bool fully_mapped() const;
    /// Reads every member that is not mapped, then closes the file descriptor (the mapping
    /// stays, and so do earlier data() spans), so that holding many MappedNpz objects does
    /// not hold as many descriptors; with Residency::release the descriptor stays open for
    /// copy_out(). Not thread-safe with concurrent data() calls.
    void close_file();
    /// A copy of member `index` as an Array.
    Array read(std::size_t index) const;

    Residency residency() const { return m_residency; }
    /// Faults in the pages of [data, data + bytes) in one call (MADV_POPULATE_READ) ahead
    /// of a sequential read. Ranges outside the mapping are ignored; never throws.
    void prefetch(const std::byte* data, std::size_t bytes) const noexcept;
    /// Drops the pages of [data, data + bytes) from the resident set (MADV_DONTNEED on a
    /// read-only private mapping: the data stays readable and refaults from the page
    /// cache). Only acts with Residency::release; never throws.
    /// Only pages entirely inside the range are dropped, so ranges that share a page can be
    /// released by different threads safely.
    void release(const std::byte* data, std::size_t bytes) const noexcept;
    /// Drops every page of the mapping from the resident set (Residency::release only).
    void release_all() const noexcept;
    /// Copies [data, data + bytes) of the mapping into `out` with pread(2), without mapping
    /// a page: the way to stream a file through a small reused buffer when even a window of
    /// mapped pages is too much (the page cache may hand whole large folios to a mapping).
    /// Only with Residency::release (which keeps the descriptor open through
    /// close_file()); false when the range is outside the mapping or reading fails.
    bool copy_out(const std::byte* data, std::size_t bytes, std::byte* out) const;

  private:
    std::uint32_t crc_of(const std::byte* start, std::uint64_t size) const;

    struct Fallback {
        std::once_flag once;
        Array array;
    };

    std::string m_display_name;
    Residency m_residency = Residency::keep;
    int m_fd = -1;
    std::uint64_t m_file_size = 0;
    const std::byte* m_map = nullptr;
    std::size_t m_map_size = 0;
    std::unique_ptr<Reader> m_reader;  // null for a single .npy file
    std::vector<MemberInfo> m_members;
    std::vector<const std::byte*> m_mapped;  // per member: data in the mapping, or null
    std::unique_ptr<Fallback[]> m_fallback;
};

}  // namespace fedcli::npz
