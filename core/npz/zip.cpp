#include "core/npz/zip.hpp"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <thread>

#include "core/error.hpp"

namespace fedcli::npz::zip {
namespace {

constexpr std::uint32_t k_local_header_signature = 0x04034b50;
constexpr std::uint32_t k_central_header_signature = 0x02014b50;
constexpr std::uint32_t k_end_signature = 0x06054b50;
constexpr std::uint32_t k_zip64_end_signature = 0x06064b50;
constexpr std::uint32_t k_zip64_locator_signature = 0x07064b50;
constexpr std::uint16_t k_zip64_extra_id = 0x0001;
constexpr std::size_t k_end_size = 22;
constexpr std::size_t k_zip64_end_size = 56;
constexpr std::size_t k_zip64_locator_size = 20;
constexpr std::size_t k_central_header_size = 46;
constexpr std::size_t k_local_header_size = 30;
constexpr std::uint32_t k_max32 = 0xFFFFFFFFu;
constexpr std::uint16_t k_max16 = 0xFFFFu;
constexpr std::uint16_t k_flag_encrypted = 1u << 0;
constexpr std::uint16_t k_flag_utf8 = 1u << 11;
// DOS date 1980-01-01, time 00:00: a fixed timestamp keeps output reproducible.
constexpr std::uint16_t k_dos_date = (0 << 9) | (1 << 5) | 1;
constexpr std::uint16_t k_dos_time = 0;
constexpr std::size_t k_io_block = std::size_t{1} << 20;
// Below this, threads cost more than they save.
constexpr std::size_t k_parallel_threshold = std::size_t{8} << 20;

std::uint16_t get16(const unsigned char* p) {
    return static_cast<std::uint16_t>(p[0] | p[1] << 8);
}
std::uint32_t get32(const unsigned char* p) {
    return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
           static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}
std::uint64_t get64(const unsigned char* p) {
    return static_cast<std::uint64_t>(get32(p)) | static_cast<std::uint64_t>(get32(p + 4)) << 32;
}

void put16(std::vector<std::byte>& out, std::uint16_t value) {
    out.push_back(std::byte(value & 0xFF));
    out.push_back(std::byte(value >> 8));
}
void put32(std::vector<std::byte>& out, std::uint32_t value) {
    put16(out, static_cast<std::uint16_t>(value & 0xFFFF));
    put16(out, static_cast<std::uint16_t>(value >> 16));
}
void put64(std::vector<std::byte>& out, std::uint64_t value) {
    put32(out, static_cast<std::uint32_t>(value & 0xFFFFFFFF));
    put32(out, static_cast<std::uint32_t>(value >> 32));
}
void put_bytes(std::vector<std::byte>& out, const std::string& text) {
    for (char c : text) out.push_back(std::byte(static_cast<unsigned char>(c)));
}

/// The fields local and central headers share, in APPNOTE order: flags, method, time,
/// date, CRC-32, compressed and uncompressed size (0xFFFFFFFF when the zip64 extra holds
/// them) and the name's length.
void put_entry_fields(std::vector<std::byte>& out, const Entry& entry, bool sizes_in_zip64) {
    put16(out, entry.flags);
    put16(out, entry.method);
    put16(out, k_dos_time);
    put16(out, k_dos_date);
    put32(out, entry.crc32);
    put32(out, sizes_in_zip64 ? k_max32 : static_cast<std::uint32_t>(entry.compressed_size));
    put32(out, sizes_in_zip64 ? k_max32 : static_cast<std::uint32_t>(entry.uncompressed_size));
    put16(out, static_cast<std::uint16_t>(entry.name.size()));
}

std::uint16_t name_flags(const std::string& name) {
    bool ascii = std::all_of(name.begin(), name.end(),
                             [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    return ascii ? 0 : k_flag_utf8;
}

unsigned worker_count(std::size_t size) {
    if (size < k_parallel_threshold) return 1;
    unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
    return static_cast<unsigned>(
        std::min<std::size_t>({hardware, 8, size / (k_parallel_threshold / 2)}));
}

/// Splits [0, size) into `parts` ranges aligned to 4 KiB and runs body(begin, end) for each
/// on its own thread (the first on the calling thread). Exceptions propagate.
template <class Body>
void parallel_ranges(std::size_t size, unsigned parts, Body body) {
    std::size_t step = (size / parts + 4095) & ~std::size_t{4095};
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(parts);
    for (unsigned i = 1; i < parts; ++i) {
        std::size_t begin = std::min(size, i * step);
        std::size_t end = i + 1 == parts ? size : std::min(size, (i + 1) * step);
        threads.emplace_back([&, i, begin, end] {
            try {
                body(i, begin, end);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        });
    }
    try {
        body(0u, 0, std::min(size, step));
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (auto& thread : threads) thread.join();
    for (auto& error : errors) {
        if (error) std::rethrow_exception(error);
    }
}

std::uint32_t crc32_serial(std::uint32_t crc, const std::byte* data, std::size_t size) {
    uLong value = crc;
    while (size > 0) {
        uInt chunk = static_cast<uInt>(std::min<std::size_t>(size, std::size_t{1} << 30));
        value = ::crc32(value, reinterpret_cast<const Bytef*>(data), chunk);
        data += chunk;
        size -= chunk;
    }
    return static_cast<std::uint32_t>(value);
}

}  // namespace

std::uint32_t crc32(std::uint32_t crc, const std::byte* data, std::size_t size) {
    unsigned parts = worker_count(size);
    if (parts == 1) return crc32_serial(crc, data, size);
    std::vector<std::uint32_t> partial(parts, 0);
    std::vector<std::size_t> lengths(parts, 0);
    parallel_ranges(size, parts, [&](unsigned i, std::size_t begin, std::size_t end) {
        partial[i] = crc32_serial(0, data + begin, end - begin);
        lengths[i] = end - begin;
    });
    uLong value = crc;
    for (unsigned i = 0; i < parts; ++i) {
        value = crc32_combine(value, partial[i], static_cast<z_off_t>(lengths[i]));
    }
    return static_cast<std::uint32_t>(value);
}

std::uint32_t pread_with_crc(int fd, std::byte* destination, std::size_t size, std::uint64_t offset,
                             std::uint32_t crc, const std::string& where) {
    unsigned parts = worker_count(size);
    std::vector<std::uint32_t> partial(parts, 0);
    std::vector<std::size_t> lengths(parts, 0);
    parallel_ranges(size, parts, [&](unsigned i, std::size_t begin, std::size_t end) {
        // Blocks of a few MiB keep the bytes in cache between the copy and the CRC.
        std::uint32_t value = 0;
        for (std::size_t at = begin; at < end;) {
            std::size_t chunk = std::min<std::size_t>(end - at, 4 * k_io_block);
            pread_exact(fd, destination + at, chunk, offset + at, where);
            value = crc32_serial(value, destination + at, chunk);
            at += chunk;
        }
        partial[i] = value;
        lengths[i] = end - begin;
    });
    uLong value = crc;
    for (unsigned i = 0; i < parts; ++i) {
        value = crc32_combine(value, partial[i], static_cast<z_off_t>(lengths[i]));
    }
    return static_cast<std::uint32_t>(value);
}

void pread_exact(int fd, void* buffer, std::size_t size, std::uint64_t offset,
                 const std::string& where) {
    auto* out = static_cast<char*>(buffer);
    while (size > 0) {
        std::size_t chunk = std::min<std::size_t>(size, std::size_t{1} << 30);
        ssize_t n = ::pread(fd, out, chunk, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw Error(where + ": read failed at offset " + std::to_string(offset) + ": " +
                        std::strerror(errno));
        }
        if (n == 0) {
            throw Error(where + ": file is truncated (needed " + std::to_string(size) +
                        " more bytes at offset " + std::to_string(offset) + ")");
        }
        out += n;
        size -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
}

Directory read_directory(int fd, std::uint64_t file_size, const std::string& where) {
    if (file_size < k_end_size) {
        throw Error(where + ": not a zip archive (" + std::to_string(file_size) +
                    " bytes is too short); an .npz file is a zip of .npy members");
    }
    std::size_t tail_size =
        static_cast<std::size_t>(std::min<std::uint64_t>(file_size, k_end_size + 0xFFFF));
    std::uint64_t tail_offset = file_size - tail_size;
    std::vector<unsigned char> tail(tail_size);
    pread_exact(fd, tail.data(), tail_size, tail_offset, where);

    // The end record is the last signature whose comment length fits the file.
    std::size_t end_position = std::string::npos;
    for (std::size_t i = tail_size - k_end_size + 1; i-- > 0;) {
        if (get32(&tail[i]) == k_end_signature &&
            i + k_end_size + get16(&tail[i + 20]) <= tail_size) {
            end_position = i;
            break;
        }
    }
    if (end_position == std::string::npos) {
        throw Error(where +
                    ": not a zip archive (no end-of-central-directory record: truncated, or "
                    "not an .npz file)");
    }
    const unsigned char* end = &tail[end_position];
    std::uint64_t end_offset = tail_offset + end_position;
    std::uint64_t disk = get16(end + 4), directory_disk = get16(end + 6);
    std::uint64_t count = get16(end + 10);
    std::uint64_t directory_size = get32(end + 12);
    std::uint64_t directory_offset = get32(end + 16);
    std::uint64_t directory_end_limit = end_offset;

    if (end_offset >= k_zip64_locator_size) {
        unsigned char locator[k_zip64_locator_size];
        pread_exact(fd, locator, sizeof locator, end_offset - k_zip64_locator_size, where);
        if (get32(locator) == k_zip64_locator_signature) {
            std::uint64_t record_offset = get64(locator + 8);
            if (record_offset + k_zip64_end_size > end_offset - k_zip64_locator_size) {
                throw Error(where + ": corrupt zip64 end record locator (offset " +
                            std::to_string(record_offset) + ")");
            }
            unsigned char record[k_zip64_end_size];
            pread_exact(fd, record, sizeof record, record_offset, where);
            if (get32(record) != k_zip64_end_signature) {
                throw Error(where + ": zip64 end record missing at offset " +
                            std::to_string(record_offset));
            }
            disk = get32(record + 16);
            directory_disk = get32(record + 20);
            count = get64(record + 32);
            directory_size = get64(record + 40);
            directory_offset = get64(record + 48);
            directory_end_limit = record_offset;
        }
    }
    if (disk != 0 || directory_disk != 0) {
        throw Error(where + ": multi-disk (split) zip archives are not supported");
    }
    if (directory_offset > directory_end_limit ||
        directory_size > directory_end_limit - directory_offset) {
        throw Error(where + ": corrupt zip: central directory (offset " +
                    std::to_string(directory_offset) + ", " + std::to_string(directory_size) +
                    " bytes) lies outside the file; is it truncated?");
    }
    if (count > directory_size / k_central_header_size) {
        throw Error(where + ": corrupt zip: " + std::to_string(count) +
                    " members cannot fit in a central directory of " +
                    std::to_string(directory_size) + " bytes");
    }

    std::vector<unsigned char> directory(static_cast<std::size_t>(directory_size));
    pread_exact(fd, directory.data(), directory.size(), directory_offset, where);

    Directory result;
    result.central_directory_offset = directory_offset;
    result.entries.reserve(static_cast<std::size_t>(count));
    std::size_t position = 0;
    for (std::uint64_t index = 0; index < count; ++index) {
        auto entry_error = [&](const std::string& what) {
            return Error(where + ": corrupt zip central directory entry " + std::to_string(index) +
                         ": " + what);
        };
        if (position + k_central_header_size > directory.size()) {
            throw entry_error("runs past the end of the directory");
        }
        const unsigned char* header = &directory[position];
        if (get32(header) != k_central_header_signature) throw entry_error("bad signature");
        Entry entry;
        entry.flags = get16(header + 8);
        entry.method = get16(header + 10);
        entry.crc32 = get32(header + 16);
        entry.compressed_size = get32(header + 20);
        entry.uncompressed_size = get32(header + 24);
        std::size_t name_length = get16(header + 28);
        std::size_t extra_length = get16(header + 30);
        std::size_t comment_length = get16(header + 32);
        std::uint32_t start_disk = get16(header + 34);
        entry.local_header_offset = get32(header + 42);
        std::size_t record_size =
            k_central_header_size + name_length + extra_length + comment_length;
        if (position + record_size > directory.size()) {
            throw entry_error("name/extra fields run past the end of the directory");
        }
        entry.name.assign(reinterpret_cast<const char*>(header + k_central_header_size),
                          name_length);
        if (entry.name.find('\0') != std::string::npos) {
            throw entry_error("member name contains a NUL byte");
        }

        // zip64 extra: only the fields saturated in the fixed record are present, in order.
        const unsigned char* extra = header + k_central_header_size + name_length;
        for (std::size_t at = 0; at + 4 <= extra_length;) {
            std::uint16_t id = get16(extra + at);
            std::size_t size = get16(extra + at + 2);
            if (at + 4 + size > extra_length) {
                throw entry_error("extra field runs past its record ('" + entry.name + "')");
            }
            if (id == k_zip64_extra_id) {
                const unsigned char* field = extra + at + 4;
                std::size_t left = size;
                auto take64 = [&](std::uint64_t& value) {
                    if (left < 8)
                        throw entry_error("short zip64 extra field ('" + entry.name + "')");
                    value = get64(field);
                    field += 8;
                    left -= 8;
                };
                if (entry.uncompressed_size == k_max32) take64(entry.uncompressed_size);
                if (entry.compressed_size == k_max32) take64(entry.compressed_size);
                if (entry.local_header_offset == k_max32) take64(entry.local_header_offset);
                if (start_disk == k_max16) {
                    if (left < 4)
                        throw entry_error("short zip64 extra field ('" + entry.name + "')");
                    start_disk = get32(field);
                }
            }
            at += 4 + size;
        }
        if (start_disk != 0) throw entry_error("member on another disk ('" + entry.name + "')");
        result.entries.push_back(std::move(entry));
        position += record_size;
    }
    return result;
}

std::uint64_t data_offset(int fd, std::uint64_t file_size, const Entry& entry, std::uint64_t limit,
                          const std::string& where) {
    std::string member = where + ": member '" + entry.name + "'";
    if (entry.local_header_offset + k_local_header_size > std::min(file_size, limit)) {
        throw Error(member + ": local header offset " + std::to_string(entry.local_header_offset) +
                    " lies outside the archive");
    }
    unsigned char header[k_local_header_size];
    pread_exact(fd, header, sizeof header, entry.local_header_offset, member);
    if (get32(header) != k_local_header_signature) {
        throw Error(member + ": bad local header signature at offset " +
                    std::to_string(entry.local_header_offset));
    }
    std::size_t name_length = get16(header + 26);
    std::size_t extra_length = get16(header + 28);
    if (name_length != entry.name.size()) {
        throw Error(member + ": local header names a different member");
    }
    std::string local_name(name_length, '\0');
    pread_exact(fd, local_name.data(), name_length, entry.local_header_offset + k_local_header_size,
                member);
    if (local_name != entry.name) {
        throw Error(member + ": local header names a different member ('" + local_name + "')");
    }
    std::uint64_t offset =
        entry.local_header_offset + k_local_header_size + name_length + extra_length;
    if (offset > limit || entry.compressed_size > limit - offset) {
        throw Error(member + ": data (" + std::to_string(entry.compressed_size) +
                    " bytes at offset " + std::to_string(offset) +
                    ") runs past the end of the member area; the archive is truncated or corrupt");
    }
    return offset;
}

// ---------------------------------------------------------------------------------------

struct MemberReader::Inflater {
    z_stream stream{};
    std::vector<unsigned char> input;
    bool ended = false;
};

MemberReader::MemberReader(int fd, const Entry& entry, std::uint64_t data_offset, std::string where)
    : m_fd(fd),
      m_entry(entry),
      m_next_input_offset(data_offset),
      m_input_left(entry.compressed_size),
      m_remaining(entry.uncompressed_size),
      m_where(std::move(where)) {
    if (entry.flags & k_flag_encrypted) {
        throw Error(m_where + ": encrypted members are not supported");
    }
    if (entry.method == k_method_stored) {
        if (entry.compressed_size != entry.uncompressed_size) {
            throw Error(m_where + ": stored member declares " +
                        std::to_string(entry.compressed_size) + " bytes compressed but " +
                        std::to_string(entry.uncompressed_size) + " uncompressed");
        }
        return;
    }
    if (entry.method != k_method_deflate) {
        throw Error(m_where + ": compression method " + std::to_string(entry.method) +
                    " is not supported (only stored and deflate, as numpy writes)");
    }
    m_inflater = new Inflater;
    if (inflateInit2(&m_inflater->stream, -MAX_WBITS) != Z_OK) {
        delete m_inflater;
        m_inflater = nullptr;
        throw Error(m_where + ": cannot initialise zlib");
    }
    m_inflater->input.resize(static_cast<std::size_t>(
        std::min<std::uint64_t>(std::max<std::uint64_t>(entry.compressed_size, 1), k_io_block)));
}

MemberReader::~MemberReader() {
    if (m_inflater) {
        inflateEnd(&m_inflater->stream);
        delete m_inflater;
    }
}

void MemberReader::refill_input() {
    auto& input = m_inflater->input;
    std::size_t chunk =
        static_cast<std::size_t>(std::min<std::uint64_t>(m_input_left, input.size()));
    pread_exact(m_fd, input.data(), chunk, m_next_input_offset, m_where);
    m_next_input_offset += chunk;
    m_input_left -= chunk;
    m_inflater->stream.next_in = input.data();
    m_inflater->stream.avail_in = static_cast<uInt>(chunk);
}

void MemberReader::read(std::byte* destination, std::size_t size) {
    if (size > m_remaining) {
        throw Error(m_where + ": asked for " + std::to_string(size) + " bytes but only " +
                    std::to_string(m_remaining) + " remain in the member");
    }
    if (!m_inflater) {
        pread_exact(m_fd, destination, size, m_next_input_offset, m_where);
        m_next_input_offset += size;
        m_remaining -= size;
        return;
    }
    auto& stream = m_inflater->stream;
    while (size > 0) {
        std::size_t chunk = std::min<std::size_t>(size, std::size_t{1} << 30);
        stream.next_out = reinterpret_cast<Bytef*>(destination);
        stream.avail_out = static_cast<uInt>(chunk);
        while (stream.avail_out > 0) {
            if (stream.avail_in == 0 && m_input_left > 0) refill_input();
            int status = inflate(&stream, Z_NO_FLUSH);
            if (status == Z_STREAM_END) {
                if (stream.avail_out > 0) {
                    throw Error(m_where + ": deflate data ends " +
                                std::to_string(m_remaining - (chunk - stream.avail_out)) +
                                " bytes before the declared size of " +
                                std::to_string(m_entry.uncompressed_size));
                }
                m_inflater->ended = true;
                break;
            }
            check_inflate_status(status);
        }
        destination += chunk;
        size -= chunk;
        m_remaining -= chunk;
    }
}

void MemberReader::finish() {
    if (!m_inflater || m_inflater->ended) return;
    auto& stream = m_inflater->stream;
    unsigned char scratch[1];
    for (;;) {
        if (stream.avail_in == 0 && m_input_left > 0) refill_input();
        stream.next_out = scratch;
        stream.avail_out = sizeof scratch;
        int status = inflate(&stream, Z_NO_FLUSH);
        if (stream.avail_out == 0) {
            throw Error(m_where + ": member inflates beyond its declared size of " +
                        std::to_string(m_entry.uncompressed_size) +
                        " bytes (corrupt archive or zip bomb)");
        }
        if (status == Z_STREAM_END) {
            m_inflater->ended = true;
            return;
        }
        check_inflate_status(status);
    }
}

void MemberReader::check_inflate_status(int status) const {
    const auto& stream = m_inflater->stream;
    if (status == Z_BUF_ERROR && stream.avail_in == 0 && m_input_left == 0) {
        throw Error(m_where + ": compressed data is truncated");
    }
    if (status != Z_OK && status != Z_BUF_ERROR) {
        throw Error(
            m_where + ": corrupt deflate data (" +
            (stream.msg ? std::string(stream.msg) : "zlib error " + std::to_string(status)) + ")");
    }
}

// ---------------------------------------------------------------------------------------

Writer::Writer(int fd, bool force_zip64, std::string where)
    : m_fd(fd), m_force_zip64(force_zip64), m_where(std::move(where)) {}

void Writer::write_all(std::span<const std::byte> bytes) {
    const std::byte* data = bytes.data();
    std::size_t size = bytes.size();
    while (size > 0) {
        std::size_t chunk = std::min<std::size_t>(size, std::size_t{1} << 30);
        ssize_t n = ::write(m_fd, data, chunk);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw Error(m_where + ": write failed: " + std::strerror(errno));
        }
        data += n;
        size -= static_cast<std::size_t>(n);
        m_offset += static_cast<std::uint64_t>(n);
    }
}

std::vector<std::byte> Writer::local_header(const Entry& entry, bool zip64) const {
    std::vector<std::byte> header;
    header.reserve(k_local_header_size + entry.name.size() + 20);
    put32(header, k_local_header_signature);
    put16(header, zip64 ? 45 : 20);
    put_entry_fields(header, entry, zip64);
    put16(header, zip64 ? 20 : 0);
    put_bytes(header, entry.name);
    if (zip64) {
        put16(header, k_zip64_extra_id);
        put16(header, 16);
        put64(header, entry.uncompressed_size);
        put64(header, entry.compressed_size);
    }
    return header;
}

void Writer::add_stored(const std::string& name,
                        std::span<const std::span<const std::byte>> parts) {
    if (name.size() > k_max16) throw Error(m_where + ": member name too long: " + name);
    Entry entry;
    entry.name = name;
    entry.method = k_method_stored;
    entry.flags = name_flags(name);
    entry.local_header_offset = m_offset;
    for (auto part : parts) entry.uncompressed_size += part.size();
    entry.compressed_size = entry.uncompressed_size;
    bool zip64 = m_force_zip64 || entry.uncompressed_size >= k_max32;
    write_all(local_header(entry, zip64));
    // One pass over the data: each block is checksummed while it is hot in cache and then
    // written; the CRC is patched into the local header afterwards.
    std::uint32_t crc = 0;
    for (auto part : parts) {
        for (std::size_t at = 0; at < part.size();) {
            std::size_t chunk = std::min<std::size_t>(part.size() - at, 4 * k_io_block);
            crc = crc32_serial(crc, part.data() + at, chunk);
            write_all(part.subspan(at, chunk));
            at += chunk;
        }
    }
    entry.crc32 = crc;
    patch_crc(entry);
    m_written.push_back({std::move(entry), zip64});
}

void Writer::patch_crc(const Entry& entry) {
    std::vector<std::byte> field;
    put32(field, entry.crc32);
    // The CRC sits at offset 14 of the local header.
    if (::pwrite(m_fd, field.data(), field.size(),
                 static_cast<off_t>(entry.local_header_offset + 14)) != 4) {
        throw Error(m_where + ": write failed: " + std::strerror(errno));
    }
}

void Writer::add_deflate(const std::string& name, std::span<const std::span<const std::byte>> parts,
                         int level) {
    if (name.size() > k_max16) throw Error(m_where + ": member name too long: " + name);
    Entry entry;
    entry.name = name;
    entry.method = k_method_deflate;
    entry.flags = name_flags(name);
    entry.local_header_offset = m_offset;
    for (auto part : parts) entry.uncompressed_size += part.size();
    // Incompressible data grows by a few bytes per 16 KiB block: leave room below 4 GiB.
    bool zip64 = m_force_zip64 || entry.uncompressed_size >= 0xF0000000u;
    write_all(local_header(entry, zip64));

    z_stream stream{};
    if (deflateInit2(&stream, level, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        throw Error(m_where + ": cannot initialise zlib deflate");
    }
    std::vector<std::byte> output(k_io_block);
    std::uint32_t crc = 0;
    std::uint64_t compressed = 0;
    auto drain = [&](int flush) {
        int status;
        do {
            stream.next_out = reinterpret_cast<Bytef*>(output.data());
            stream.avail_out = static_cast<uInt>(output.size());
            status = deflate(&stream, flush);
            if (status == Z_STREAM_ERROR) {
                deflateEnd(&stream);
                throw Error(m_where + ": deflate failed for member '" + name + "'");
            }
            std::size_t produced = output.size() - stream.avail_out;
            compressed += produced;
            write_all({output.data(), produced});
        } while (stream.avail_out == 0 || (flush == Z_FINISH && status != Z_STREAM_END));
    };
    try {
        for (auto part : parts) {
            crc = crc32(crc, part.data(), part.size());
            const std::byte* data = part.data();
            std::size_t left = part.size();
            while (left > 0) {
                std::size_t chunk = std::min<std::size_t>(left, std::size_t{1} << 30);
                stream.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(data));
                stream.avail_in = static_cast<uInt>(chunk);
                drain(Z_NO_FLUSH);
                data += chunk;
                left -= chunk;
            }
        }
        drain(Z_FINISH);
    } catch (...) {
        deflateEnd(&stream);
        throw;
    }
    deflateEnd(&stream);
    entry.crc32 = crc;
    entry.compressed_size = compressed;
    if (!zip64 && compressed >= k_max32) {
        throw Error(m_where + ": member '" + name + "' compressed to over 4 GiB; write it stored");
    }
    auto header = local_header(entry, zip64);
    if (::pwrite(m_fd, header.data(), header.size(),
                 static_cast<off_t>(entry.local_header_offset)) !=
        static_cast<ssize_t>(header.size())) {
        throw Error(m_where + ": write failed: " + std::strerror(errno));
    }
    m_written.push_back({std::move(entry), zip64});
}

void Writer::finish() {
    std::uint64_t directory_offset = m_offset;
    std::vector<std::byte> directory;
    for (const auto& written : m_written) {
        const Entry& entry = written.entry;
        bool big_sizes =
            m_force_zip64 || entry.uncompressed_size >= k_max32 || entry.compressed_size >= k_max32;
        bool big_offset = m_force_zip64 || entry.local_header_offset >= k_max32;
        bool zip64 = big_sizes || big_offset;
        std::uint16_t version = zip64 || written.zip64_local ? 45 : 20;
        put32(directory, k_central_header_signature);
        put16(directory, static_cast<std::uint16_t>(3 << 8 | version));  // made by Unix
        put16(directory, version);
        put_entry_fields(directory, entry, big_sizes);
        std::uint16_t extra_size =
            static_cast<std::uint16_t>((big_sizes ? 16 : 0) + (big_offset ? 8 : 0));
        put16(directory, zip64 ? static_cast<std::uint16_t>(4 + extra_size) : 0);
        put16(directory, 0);               // comment length
        put16(directory, 0);               // disk number start
        put16(directory, 0);               // internal attributes
        put32(directory, 0100644u << 16);  // regular file, rw-r--r--
        put32(directory,
              big_offset ? k_max32 : static_cast<std::uint32_t>(entry.local_header_offset));
        put_bytes(directory, entry.name);
        if (zip64) {
            put16(directory, k_zip64_extra_id);
            put16(directory, extra_size);
            if (big_sizes) {
                put64(directory, entry.uncompressed_size);
                put64(directory, entry.compressed_size);
            }
            if (big_offset) put64(directory, entry.local_header_offset);
        }
        if (directory.size() >= k_io_block) {
            write_all(directory);
            directory.clear();
        }
    }
    write_all(directory);
    directory.clear();
    std::uint64_t directory_size = m_offset - directory_offset;
    std::uint64_t count = m_written.size();
    bool zip64_end = m_force_zip64 || count >= k_max16 || directory_offset >= k_max32 ||
                     directory_size >= k_max32;
    std::vector<std::byte> end;
    if (zip64_end) {
        std::uint64_t record_offset = m_offset;
        put32(end, k_zip64_end_signature);
        put64(end, k_zip64_end_size - 12);
        put16(end, 3 << 8 | 45);
        put16(end, 45);
        put32(end, 0);
        put32(end, 0);
        put64(end, count);
        put64(end, count);
        put64(end, directory_size);
        put64(end, directory_offset);
        put32(end, k_zip64_locator_signature);
        put32(end, 0);
        put64(end, record_offset);
        put32(end, 1);
    }
    put32(end, k_end_signature);
    put16(end, 0);
    put16(end, 0);
    put16(end, zip64_end ? k_max16 : static_cast<std::uint16_t>(count));
    put16(end, zip64_end ? k_max16 : static_cast<std::uint16_t>(count));
    put32(end, zip64_end ? k_max32 : static_cast<std::uint32_t>(directory_size));
    put32(end, zip64_end ? k_max32 : static_cast<std::uint32_t>(directory_offset));
    put16(end, 0);
    write_all(end);
}

}  // namespace fedcli::npz::zip
