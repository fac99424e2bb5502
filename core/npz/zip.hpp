// The subset of the zip format that npz files use (PKWARE APPNOTE 6.3): one disk, stored
// or deflate members, zip64 extensions, no encryption. Internal to core/npz.
//
// Reading goes through pread on a descriptor so that one archive can be read by several
// threads; writing appends to a descriptor and patches local headers with pwrite.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace fedcli::npz::zip {

inline constexpr std::uint16_t k_method_stored = 0;
inline constexpr std::uint16_t k_method_deflate = 8;

/// A member as listed in the central directory.
struct Entry {
    std::string name;
    std::uint16_t method = 0;
    std::uint16_t flags = 0;
    std::uint32_t crc32 = 0;
    std::uint64_t compressed_size = 0;
    std::uint64_t uncompressed_size = 0;
    std::uint64_t local_header_offset = 0;
};

/// The central directory: entries in file order and where the directory starts.
struct Directory {
    std::vector<Entry> entries;
    std::uint64_t central_directory_offset = 0;
};

/// Reads exactly `size` bytes at `offset`, or throws "<where>: truncated ..." / the errno.
void pread_exact(int fd, void* buffer, std::size_t size, std::uint64_t offset,
                 const std::string& where);

/// Parses the end-of-central-directory records (zip64 when present) and the central
/// directory. `where` names the file in errors.
Directory read_directory(int fd, std::uint64_t file_size, const std::string& where);

/// Reads the local header of `entry` and returns the file offset of its data; checks that
/// the local header is sane and that the data lies within the file.
std::uint64_t data_offset(int fd, std::uint64_t file_size, const Entry& entry, std::uint64_t limit,
                          const std::string& where);

/// Streaming reader of one member's uncompressed bytes (stored or deflate) from a file range.
/// Checks that a deflate stream ends exactly at the declared size and within its
/// compressed size. Does not check the CRC: callers do, over the bytes they receive.
class MemberReader {
  public:
    MemberReader(int fd, const Entry& entry, std::uint64_t data_offset, std::string where);
    ~MemberReader();
    MemberReader(const MemberReader&) = delete;
    MemberReader& operator=(const MemberReader&) = delete;

    /// Reads exactly `size` bytes of uncompressed data into `destination`.
    void read(std::byte* destination, std::size_t size);
    /// Uncompressed bytes not yet read.
    std::uint64_t remaining() const { return m_remaining; }
    /// After all data has been read: throws if a deflate stream has more output.
    void finish();

  private:
    void refill_input();
    /// Throws for an inflate() status that means truncated or corrupt data.
    void check_inflate_status(int status) const;

    int m_fd;
    Entry m_entry;
    std::uint64_t m_next_input_offset;
    std::uint64_t m_input_left;  // compressed bytes not yet fetched from the file
    std::uint64_t m_remaining;
    std::string m_where;
    struct Inflater;
    Inflater* m_inflater = nullptr;
};

/// CRC-32 (zip's polynomial) of a buffer, computed on several threads for large buffers.
std::uint32_t crc32(std::uint32_t crc, const std::byte* data, std::size_t size);

/// pread_exact() of a large range on several threads, each also computing the CRC-32 of its
/// part while the data is hot in cache. Returns crc32(crc, destination, size).
std::uint32_t pread_with_crc(int fd, std::byte* destination, std::size_t size, std::uint64_t offset,
                             std::uint32_t crc, const std::string& where);

/// Writes a zip archive to a descriptor, member by member.
class Writer {
  public:
    Writer(int fd, bool force_zip64, std::string where);

    /// Writes a stored member made of `parts` (e.g. an NPY header and the array data).
    void add_stored(const std::string& name, std::span<const std::span<const std::byte>> parts);
    /// Writes a deflate member made of `parts`, compressed with zlib `level`.
    void add_deflate(const std::string& name, std::span<const std::span<const std::byte>> parts,
                     int level);
    /// Writes the central directory and end records. Call once, last.
    void finish();

  private:
    struct Written {
        Entry entry;
        bool zip64_local = false;
    };
    std::vector<std::byte> local_header(const Entry& entry, bool zip64) const;
    void write_all(std::span<const std::byte> bytes);
    void patch_crc(const Entry& entry);

    int m_fd;
    bool m_force_zip64;
    std::string m_where;
    std::uint64_t m_offset = 0;
    std::vector<Written> m_written;
};

}  // namespace fedcli::npz::zip
