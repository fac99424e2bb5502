// numpy-compatible .npy and .npz parameter files.
//
// A parameter file is a zip archive of .npy members, exactly as numpy's np.savez /
// np.savez_compressed write it: stored or deflate members, zip64 records for members and
// archives over 4 GiB (and wherever a writer chose to use them), NPY format versions 1.0,
// 2.0 and 3.0. Supported dtypes: float16/32/64, int8/16/32/64, uint8/16/32/64 and bool,
// little- or big-endian, C or Fortran order, any rank including 0-d and empty arrays.
//
// In memory an Array is always C order and little-endian (the host order: fedcli targets
// little-endian machines): the reader byte-swaps big-endian data and reorders Fortran-order
// data on the way in, so callers never see either. Writers always produce little-endian,
// C-order NPY 1.0 headers (2.0 when a header does not fit in 65535 bytes), byte-compatible
// with numpy's own headers.
//
// Every failure throws fedcli::Error naming the file and, where it applies, the member:
// truncated data, bad magic, a header whose shape disagrees with the member size, object
// or structured dtypes, duplicate keys, CRC mismatches, members that inflate beyond their
// declared size, or declared sizes above ReadOptions::max_total_bytes (zip bombs).
//
// Thread-safety: Array, Buffer and ParameterSet are plain values (no shared state). A
// Reader may be used from several threads at once for read()/verify() of members (it only
// uses pread on its descriptor).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace fedcli::npz {

enum class DType : std::uint8_t {
    float16,
    float32,
    float64,
    int8,
    int16,
    int32,
    int64,
    uint8,
    uint16,
    uint32,
    uint64,
    boolean,
};

/// Size of one element in bytes.
std::size_t dtype_size(DType dtype);
/// numpy's name: "float32", "int64", "bool", ...
std::string_view dtype_name(DType dtype);
/// numpy's little-endian type string as written in NPY headers: "<f4", "|u1", "|b1", ...
std::string_view dtype_descr(DType dtype);
/// Parses numpy's name ("float32", "bool"); nullopt when unknown.
std::optional<DType> dtype_from_name(std::string_view name);
/// True for float16/32/64.
bool dtype_is_float(DType dtype);

/// Owned, 64-byte aligned, uninitialised memory. Blocks of 2 MiB and more come from mmap
/// with MADV_HUGEPAGE, because first touch of fresh 4 KiB pages is very slow on the VMs we
/// run on. Move-only.
class Buffer {
  public:
    Buffer() = default;
    explicit Buffer(std::size_t size);
    ~Buffer();
    Buffer(Buffer&& other) noexcept;
    Buffer& operator=(Buffer&& other) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    std::byte* data() { return m_data; }
    const std::byte* data() const { return m_data; }
    std::size_t size() const { return m_size; }

  private:
    void release() noexcept;

    std::byte* m_data = nullptr;
    std::size_t m_size = 0;
    bool m_mapped = false;
};

using Shape = std::vector<std::uint64_t>;

/// Number of elements of a shape (1 for a 0-d shape); throws on overflow.
std::uint64_t element_count(const Shape& shape);
/// "[64, 784]", "[]" for 0-d.
std::string format_shape(const Shape& shape);

/// An n-dimensional array: dtype, shape and C-order little-endian data.
class Array {
  public:
    Array() = default;
    /// Allocates uninitialised storage for the given dtype and shape.
    Array(DType dtype, Shape shape);

    DType dtype() const { return m_dtype; }
    const Shape& shape() const { return m_shape; }
    std::uint64_t size() const { return m_size; }  ///< number of elements
    std::uint64_t byte_size() const { return m_size * dtype_size(m_dtype); }

    std::byte* data() { return m_buffer.data(); }
    const std::byte* data() const { return m_buffer.data(); }

    /// Typed view; throws fedcli::Error if T does not match the dtype's element size and kind.
    template <class T>
    std::span<T> values();
    template <class T>
    std::span<const T> values() const;

    /// Deep copy.
    Array clone() const;

  private:
    DType m_dtype = DType::float32;
    Shape m_shape;
    std::uint64_t m_size = 0;
    Buffer m_buffer;
};

/// How the keys of a parameter set are named.
enum class KeyConvention {
    numbered,  ///< "0", "1", ... "N-1": FEDn's numpyhelper
    numpy,     ///< "arr_0", "arr_1", ...: np.savez(*arrays)
    named,     ///< anything else (e.g. a state_dict's "fc1.weight")
};

/// Ordered named arrays: a model's parameters. Order is significant (FEDn maps keys "0".."N"
/// to layers by index) and names are unique.
class ParameterSet {
  public:
    struct Entry {
        std::string name;
        Array array;
    };

    /// Appends an array; throws fedcli::Error if the name is already present or empty.
    void add(std::string name, Array array);

    std::size_t size() const { return m_entries.size(); }
    bool empty() const { return m_entries.empty(); }
    Entry& operator[](std::size_t index) { return m_entries[index]; }
    const Entry& operator[](std::size_t index) const { return m_entries[index]; }
    /// Array with this name, or nullptr.
    Array* find(std::string_view name);
    const Array* find(std::string_view name) const;

    auto begin() { return m_entries.begin(); }
    auto end() { return m_entries.end(); }
    auto begin() const { return m_entries.begin(); }
    auto end() const { return m_entries.end(); }

    std::uint64_t total_elements() const;
    std::uint64_t total_bytes() const;
    KeyConvention key_convention() const;

  private:
    std::vector<Entry> m_entries;
    std::unordered_map<std::string, std::size_t> m_index;  // name -> position
};

/// Classifies a list of keys; see KeyConvention.
KeyConvention key_convention(const std::vector<std::string>& keys);

// ---------------------------------------------------------------------------------------
// NPY format

/// What an NPY header describes.
struct ArrayInfo {
    DType dtype = DType::float32;
    Shape shape;
    bool fortran_order = false;
    bool big_endian = false;

    std::uint64_t byte_size() const { return element_count(shape) * dtype_size(dtype); }
};

/// A parsed NPY header.
struct NpyHeader {
    ArrayInfo info;
    int major_version = 1;
    std::size_t header_size = 0;  ///< bytes before the data: magic, version, length, dict
};

/// Bytes needed to know the full header size: magic (6) + version (2) + length (2 or 4).
inline constexpr std::size_t k_npy_prefix_size = 12;

/// Full header length (including the prefix) from the first k_npy_prefix_size bytes (or at
/// least 10 for a version 1.0 header). `where` names the file/member in errors.
std::size_t npy_header_size(std::span<const std::byte> prefix, const std::string& where);

/// Parses a complete NPY header. `bytes` must hold at least npy_header_size() bytes.
NpyHeader parse_npy_header(std::span<const std::byte> bytes, const std::string& where);

/// The NPY header numpy writes for this dtype and shape (C order, little-endian), padded so
/// that the data starts at a multiple of 64 bytes.
std::string format_npy_header(DType dtype, const Shape& shape);

/// Reads a .npy file.
Array read_npy(const std::filesystem::path& path);
/// Writes a .npy file (atomically: a temporary file renamed into place).
void write_npy(const std::filesystem::path& path, const Array& array);

// ---------------------------------------------------------------------------------------
// NPZ (zip) format

enum class Compression { stored, deflate };

struct ReadOptions {
    /// Upper bound on the sum of the declared uncompressed sizes of all members: anything
    /// larger is refused before a byte is allocated (zip-bomb guard).
    std::uint64_t max_total_bytes = std::uint64_t{64} << 30;
    /// Check each member's CRC-32 while reading.
    bool verify_crc = true;
};

struct WriteOptions {
    Compression compression = Compression::stored;
    int deflate_level = 6;  ///< zlib level for Compression::deflate (numpy uses 6)
    /// Write zip64 records for every member and the archive even when not needed (numpy
    /// writes zip64 local headers for every member; readers must accept both).
    bool force_zip64 = false;
};

/// One member of an npz archive as found in its central directory and NPY header.
struct MemberInfo {
    std::string member_name;  ///< name in the zip, e.g. "0.npy"
    std::string key;          ///< the array's name: member_name without ".npy"
    Compression compression = Compression::stored;
    std::uint64_t compressed_size = 0;
    std::uint64_t uncompressed_size = 0;
    std::uint32_t crc32 = 0;
    std::uint64_t data_offset = 0;  ///< file offset of the member's (possibly compressed) bytes
    ArrayInfo array;
    std::size_t npy_header_size = 0;
};

/// Random access to an npz file: parses the central directory and every member's NPY
/// header on construction, reads arrays on demand.
///
/// Member order: file order, except that keys following the numbered ("0".."N-1") or numpy
/// ("arr_0".."arr_N-1") convention are put in index order, as FEDn's numpyhelper and
/// np.load(...)["arr_i"] interpret them.
class Reader {
  public:
    explicit Reader(const std::filesystem::path& path, ReadOptions options = {});
    /// Reads from an open descriptor (not owned, must stay open); `display_name` is used in
    /// error messages.
    Reader(int fd, std::string display_name, ReadOptions options = {});
    ~Reader();
    Reader(const Reader&) = delete;
    Reader& operator=(const Reader&) = delete;

    const std::string& display_name() const { return m_display_name; }
    std::uint64_t file_size() const { return m_file_size; }
    const std::vector<MemberInfo>& members() const { return m_members; }
    /// Index of the member with this key, or nullopt.
    std::optional<std::size_t> find(std::string_view key) const;

    /// Reads member `index` into a new array (byte-swapped/reordered to C little-endian).
    Array read(std::size_t index) const;
    /// Reads every member, in members() order.
    ParameterSet read_all() const;
    /// Streams member `index` through its CRC check and, for deflate, through inflate,
    /// without keeping its data; throws on any corruption.
    void verify(std::size_t index) const;

  private:
    void open_from_fd();
    std::string where(const MemberInfo& member) const;

    int m_fd = -1;
    bool m_owns_fd = false;
    std::string m_display_name;
    ReadOptions m_options;
    std::uint64_t m_file_size = 0;
    std::vector<MemberInfo> m_members;
};

/// Reads a whole npz file.
ParameterSet read_npz(const std::filesystem::path& path, const ReadOptions& options = {});

/// Writes an npz file that np.load reads back identically. Members are named "<key>.npy"
/// in ParameterSet order, with a fixed timestamp (1980-01-01) so that the same parameters
/// give the same bytes. Written to a temporary file in the same folder and renamed into
/// place, so a failure never leaves a half-written file under `path`.
void write_npz(const std::filesystem::path& path, const ParameterSet& parameters,
               const WriteOptions& options = {});

/// Reads a parameter file: npz, or a single .npy (one array keyed by the file's stem).
ParameterSet read_parameters(const std::filesystem::path& path, const ReadOptions& options = {});

// ---------------------------------------------------------------------------------------
// Implementation of the typed views.

/// The dtype whose elements are C++ type T (float16 has none: use raw bytes).
template <class T>
constexpr DType dtype_of() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, float>)
        return DType::float32;
    else if constexpr (std::is_same_v<U, double>)
        return DType::float64;
    else if constexpr (std::is_same_v<U, std::int8_t>)
        return DType::int8;
    else if constexpr (std::is_same_v<U, std::int16_t>)
        return DType::int16;
    else if constexpr (std::is_same_v<U, std::int32_t>)
        return DType::int32;
    else if constexpr (std::is_same_v<U, std::int64_t>)
        return DType::int64;
    else if constexpr (std::is_same_v<U, std::uint8_t>)
        return DType::uint8;
    else if constexpr (std::is_same_v<U, std::uint16_t>)
        return DType::uint16;
    else if constexpr (std::is_same_v<U, std::uint32_t>)
        return DType::uint32;
    else if constexpr (std::is_same_v<U, std::uint64_t>)
        return DType::uint64;
    else if constexpr (std::is_same_v<U, bool>)
        return DType::boolean;
    else
        static_assert(sizeof(T) == 0, "no npz dtype for this type");
}

/// Throws fedcli::Error("array is <actual>, not <wanted>").
[[noreturn]] void throw_dtype_mismatch(DType actual, DType wanted);

template <class T>
std::span<T> Array::values() {
    if (m_dtype != dtype_of<T>()) throw_dtype_mismatch(m_dtype, dtype_of<T>());
    return {reinterpret_cast<T*>(m_buffer.data()), static_cast<std::size_t>(m_size)};
}

template <class T>
std::span<const T> Array::values() const {
    if (m_dtype != dtype_of<T>()) throw_dtype_mismatch(m_dtype, dtype_of<T>());
    return {reinterpret_cast<const T*>(m_buffer.data()), static_cast<std::size_t>(m_size)};
}

}  // namespace fedcli::npz
