#include "core/npz/npz.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <new>

#include "core/error.hpp"
#include "core/npz/zip.hpp"

namespace fedcli::npz {
namespace {

struct DTypeRow {
    DType dtype;
    std::string_view name;
    std::string_view descr;
    char kind;
    std::size_t size;
};

constexpr std::array<DTypeRow, 12> k_dtypes{{
    {DType::float16, "float16", "<f2", 'f', 2},
    {DType::float32, "float32", "<f4", 'f', 4},
    {DType::float64, "float64", "<f8", 'f', 8},
    {DType::int8, "int8", "|i1", 'i', 1},
    {DType::int16, "int16", "<i2", 'i', 2},
    {DType::int32, "int32", "<i4", 'i', 4},
    {DType::int64, "int64", "<i8", 'i', 8},
    {DType::uint8, "uint8", "|u1", 'u', 1},
    {DType::uint16, "uint16", "<u2", 'u', 2},
    {DType::uint32, "uint32", "<u4", 'u', 4},
    {DType::uint64, "uint64", "<u8", 'u', 8},
    {DType::boolean, "bool", "|b1", 'b', 1},
}};

const DTypeRow& row(DType dtype) {
    return k_dtypes[static_cast<std::size_t>(dtype)];
}

constexpr std::string_view k_npy_magic{"\x93NUMPY", 6};
constexpr std::size_t k_huge_page = std::size_t{2} << 20;
constexpr std::size_t k_alignment = 64;
// numpy refuses headers over 10000 bytes by default; allow far more (long shapes) but
// never an unbounded allocation from a lying length field.
constexpr std::size_t k_max_npy_header = std::size_t{16} << 20;

std::string quote(std::string_view text) {
    return "'" + std::string(text) + "'";
}

// ---------------------------------------------------------------------------------------
// NPY header dictionary: a Python literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }

class HeaderParser {
  public:
    HeaderParser(std::string_view text, const std::string& where) : m_text(text), m_where(where) {}

    ArrayInfo parse() {
        ArrayInfo info;
        bool have_descr = false, have_order = false, have_shape = false;
        skip_space();
        expect('{');
        for (;;) {
            skip_space();
            if (peek() == '}') break;
            std::string key = parse_string();
            skip_space();
            expect(':');
            skip_space();
            if (key == "descr") {
                if (have_descr) fail("duplicate key 'descr'");
                have_descr = true;
                if (peek() == '[') {
                    fail(
                        "structured dtypes (record arrays) are not supported; save plain "
                        "numeric arrays");
                }
                parse_descr(parse_string(), info);
            } else if (key == "fortran_order") {
                if (have_order) fail("duplicate key 'fortran_order'");
                have_order = true;
                info.fortran_order = parse_bool();
            } else if (key == "shape") {
                if (have_shape) fail("duplicate key 'shape'");
                have_shape = true;
                info.shape = parse_shape();
            } else {
                fail("unexpected key " + quote(key) +
                     " (an NPY header has exactly 'descr', 'fortran_order' and 'shape')");
            }
            skip_space();
            if (peek() == ',') {
                ++m_position;
                continue;
            }
            if (peek() == '}') break;
            fail("expected ',' or '}'");
        }
        expect('}');
        while (m_position < m_text.size()) {
            char c = m_text[m_position++];
            if (c != ' ' && c != '\n' && c != '\t' && c != '\r' && c != '\0') {
                fail("unexpected text after the header dictionary");
            }
        }
        if (!have_descr || !have_order || !have_shape) {
            fail(std::string("missing key ") + (!have_descr   ? "'descr'"
                                                : !have_order ? "'fortran_order'"
                                                              : "'shape'"));
        }
        try {
            element_count(info.shape);  // rejects shapes whose size overflows
        } catch (const Error& error) {
            fail(error.what());
        }
        return info;
    }

  private:
    [[noreturn]] void fail(const std::string& what) const {
        throw Error(m_where + ": bad NPY header: " + what);
    }
    char peek() const { return m_position < m_text.size() ? m_text[m_position] : '\0'; }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++m_position;
    }
    void skip_space() {
        while (m_position < m_text.size() &&
               (m_text[m_position] == ' ' || m_text[m_position] == '\t' ||
                m_text[m_position] == '\n' || m_text[m_position] == '\r')) {
            ++m_position;
        }
    }
    std::string parse_string() {
        char quote_char = peek();
        if (quote_char != '\'' && quote_char != '"') fail("expected a quoted string");
        ++m_position;
        std::size_t end = m_text.find(quote_char, m_position);
        if (end == std::string_view::npos) fail("unterminated string");
        std::string value(m_text.substr(m_position, end - m_position));
        m_position = end + 1;
        return value;
    }
    bool parse_bool() {
        if (m_text.substr(m_position, 4) == "True") {
            m_position += 4;
            return true;
        }
        if (m_text.substr(m_position, 5) == "False") {
            m_position += 5;
            return false;
        }
        fail("'fortran_order' must be True or False");
    }
    Shape parse_shape() {
        Shape shape;
        expect('(');
        for (;;) {
            skip_space();
            if (peek() == ')') break;
            if (peek() == '-') fail("negative dimension in shape");
            std::uint64_t value = 0;
            auto begin = m_text.data() + m_position;
            auto [end, error] = std::from_chars(begin, m_text.data() + m_text.size(), value);
            if (error == std::errc::result_out_of_range) fail("dimension too large in shape");
            if (error != std::errc{} || end == begin) fail("expected an integer in 'shape'");
            m_position += static_cast<std::size_t>(end - begin);
            if (peek() == 'L') ++m_position;  // Python 2 long literal
            shape.push_back(value);
            skip_space();
            if (peek() == ',') {
                ++m_position;
                continue;
            }
            if (peek() != ')') fail("expected ',' or ')' in 'shape'");
        }
        expect(')');
        return shape;
    }
    void parse_descr(const std::string& descr, ArrayInfo& info) const {
        std::string_view text = descr;
        char order = '|';
        if (!text.empty() &&
            (text[0] == '<' || text[0] == '>' || text[0] == '|' || text[0] == '=')) {
            order = text[0];
            text.remove_prefix(1);
        }
        if (text.empty()) fail("empty dtype");
        char kind = text[0];
        std::size_t size = 0;
        auto [end, error] = std::from_chars(text.data() + 1, text.data() + text.size(), size);
        bool sized = error == std::errc{} && end == text.data() + text.size();
        switch (kind) {
            case 'O':
                fail("dtype " + quote(descr) +
                     " is an object array (pickled Python objects), which is not supported: "
                     "parameter files must hold numeric arrays");
            case 'c':
                fail("complex dtype " + quote(descr) + " is not supported");
            case 'U':
            case 'S':
            case 'a':
                fail("string dtype " + quote(descr) + " is not supported");
            case 'M':
            case 'm':
                fail("datetime dtype " + quote(descr) + " is not supported");
            case 'V':
                fail("void/structured dtype " + quote(descr) + " is not supported");
            default:
                break;
        }
        for (const auto& candidate : k_dtypes) {
            if (candidate.kind == kind && sized && candidate.size == size) {
                if (size > 1 && order == '|') {
                    fail("dtype " + quote(descr) + " has no byte order");
                }
                info.dtype = candidate.dtype;
                info.big_endian = size > 1 && order == '>';
                return;
            }
        }
        fail("unsupported dtype " + quote(descr) +
             " (supported: float16/32/64, int8..64, uint8..64, bool)");
    }

    std::string_view m_text;
    const std::string& m_where;
    std::size_t m_position = 0;
};

std::uint16_t get16(const std::byte* p) {
    return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) |
                                      std::to_integer<unsigned>(p[1]) << 8);
}
std::uint32_t get32(const std::byte* p) {
    return static_cast<std::uint32_t>(get16(p)) | static_cast<std::uint32_t>(get16(p + 2)) << 16;
}

/// In-place byte swap of every element.
void byteswap(std::byte* data, std::uint64_t count, std::size_t size) {
    switch (size) {
        case 2: {
            auto* p = reinterpret_cast<std::uint16_t*>(data);
            for (std::uint64_t i = 0; i < count; ++i) p[i] = __builtin_bswap16(p[i]);
            break;
        }
        case 4: {
            auto* p = reinterpret_cast<std::uint32_t*>(data);
            for (std::uint64_t i = 0; i < count; ++i) p[i] = __builtin_bswap32(p[i]);
            break;
        }
        case 8: {
            auto* p = reinterpret_cast<std::uint64_t*>(data);
            for (std::uint64_t i = 0; i < count; ++i) p[i] = __builtin_bswap64(p[i]);
            break;
        }
        default:
            break;
    }
}

/// Copies Fortran-order `source` into C-order `destination` (same shape and element size).
void fortran_to_c(const std::byte* source, std::byte* destination, const Shape& shape,
                  std::size_t size) {
    std::size_t rank = shape.size();
    std::uint64_t count = element_count(shape);
    if (count == 0) return;
    // Fortran strides: the first index varies fastest.
    std::vector<std::uint64_t> stride(rank, 1);
    for (std::size_t k = 1; k < rank; ++k) stride[k] = stride[k - 1] * shape[k - 1];
    std::vector<std::uint64_t> index(rank, 0);
    std::uint64_t source_element = 0;
    for (std::uint64_t c = 0; c < count; ++c) {
        std::memcpy(destination + c * size, source + source_element * size, size);
        // Advance the C-order odometer (last index fastest) and track the Fortran offset.
        for (std::size_t k = rank; k-- > 0;) {
            if (++index[k] < shape[k]) {
                source_element += stride[k];
                break;
            }
            source_element -= stride[k] * (shape[k] - 1);
            index[k] = 0;
        }
    }
}

/// Brings raw NPY data into the in-memory form: C order, little-endian.
Array finish_array(Array raw, const ArrayInfo& info) {
    std::size_t size = dtype_size(info.dtype);
    if (info.big_endian) byteswap(raw.data(), raw.size(), size);
    if (info.fortran_order && info.shape.size() > 1) {
        Array ordered(info.dtype, info.shape);
        fortran_to_c(raw.data(), ordered.data(), info.shape, size);
        return ordered;
    }
    return raw;
}

bool canonical_index(std::string_view text, std::uint64_t& value) {
    if (text.empty() || (text.size() > 1 && text[0] == '0')) return false;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    return error == std::errc{} && end == text.data() + text.size();
}

/// Index of a key under a convention ("7" or "arr_7"), assuming the convention holds.
std::uint64_t convention_index(const std::string& key, KeyConvention convention) {
    std::uint64_t value = 0;
    canonical_index(convention == KeyConvention::numpy ? std::string_view(key).substr(4) : key,
                    value);
    return value;
}

std::string errno_text() {
    return std::strerror(errno);
}

/// The zip entry a member was read from (what MemberReader needs).
zip::Entry zip_entry(const MemberInfo& member) {
    zip::Entry entry;
    entry.name = member.member_name;
    entry.method =
        member.compression == Compression::deflate ? zip::k_method_deflate : zip::k_method_stored;
    entry.compressed_size = member.compressed_size;
    entry.uncompressed_size = member.uncompressed_size;
    entry.crc32 = member.crc32;
    return entry;
}

/// A file created next to its destination and renamed over it on commit(), so readers
/// never see a half-written file; removed if never committed.
class AtomicFile {
  public:
    explicit AtomicFile(const std::filesystem::path& destination) : m_destination(destination) {
        auto folder = destination.parent_path();
        if (folder.empty()) folder = ".";
        std::string pattern =
            (folder / ("." + destination.filename().string() + ".tmp.XXXXXX")).string();
        m_fd = ::mkostemp(pattern.data(), O_CLOEXEC);
        if (m_fd < 0) {
            throw Error(destination.string() + ": cannot create: " + errno_text() +
                        (std::filesystem::is_directory(folder) ? "" : " (folder does not exist)"));
        }
        m_temporary = pattern;
        ::fchmod(m_fd, 0644);
    }
    ~AtomicFile() {
        if (m_fd >= 0) ::close(m_fd);
        if (!m_temporary.empty()) ::unlink(m_temporary.c_str());
    }
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    int fd() const { return m_fd; }

    void commit() {
        int fd = m_fd;
        m_fd = -1;
        if (::close(fd) != 0)
            throw Error(m_destination.string() + ": write failed: " + errno_text());
        if (::rename(m_temporary.c_str(), m_destination.c_str()) != 0) {
            throw Error(m_destination.string() + ": cannot rename into place: " + errno_text());
        }
        m_temporary.clear();
    }

  private:
    std::filesystem::path m_destination;
    std::string m_temporary;
    int m_fd = -1;
};

int open_for_reading(const std::filesystem::path& path, std::uint64_t& size) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw Error(path.string() + ": cannot open: " + errno_text());
    }
    struct stat info {};
    if (::fstat(fd, &info) != 0) {
        ::close(fd);
        throw Error(path.string() + ": cannot stat: " + errno_text());
    }
    if (S_ISDIR(info.st_mode)) {
        ::close(fd);
        throw Error(path.string() + ": is a folder, not a parameter file");
    }
    size = static_cast<std::uint64_t>(info.st_size);
    return fd;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// dtypes

std::size_t dtype_size(DType dtype) {
    return row(dtype).size;
}
std::string_view dtype_name(DType dtype) {
    return row(dtype).name;
}
std::string_view dtype_descr(DType dtype) {
    return row(dtype).descr;
}
bool dtype_is_float(DType dtype) {
    return row(dtype).kind == 'f';
}

std::optional<DType> dtype_from_name(std::string_view name) {
    for (const auto& candidate : k_dtypes) {
        if (candidate.name == name) return candidate.dtype;
    }
    return std::nullopt;
}

void throw_dtype_mismatch(DType actual, DType wanted) {
    throw Error("array is " + std::string(dtype_name(actual)) + ", not " +
                std::string(dtype_name(wanted)));
}

// ---------------------------------------------------------------------------------------
// Buffer

Buffer::Buffer(std::size_t size) : m_size(size) {
    if (size == 0) return;
    if (size >= k_huge_page) {
        // Map an extra huge page so the block can start on a 2 MiB boundary, which lets the
        // kernel back all of it with huge pages; trim the slack on both sides.
        std::size_t length = (size + k_huge_page - 1) / k_huge_page * k_huge_page;
        void* raw = ::mmap(nullptr, length + k_huge_page, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) throw std::bad_alloc();
        auto start = reinterpret_cast<std::uintptr_t>(raw);
        auto aligned = (start + k_huge_page - 1) & ~(std::uintptr_t{k_huge_page} - 1);
        if (aligned > start) ::munmap(raw, aligned - start);
        std::size_t tail = start + length + k_huge_page - (aligned + length);
        if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + length), tail);
        ::madvise(reinterpret_cast<void*>(aligned), length, MADV_HUGEPAGE);
        m_data = reinterpret_cast<std::byte*>(aligned);
        m_mapped = true;
        return;
    }
    std::size_t length = (size + k_alignment - 1) / k_alignment * k_alignment;
    m_data = static_cast<std::byte*>(std::aligned_alloc(k_alignment, length));
    if (!m_data) throw std::bad_alloc();
}

Buffer::~Buffer() {
    release();
}

Buffer::Buffer(Buffer&& other) noexcept
    : m_data(other.m_data), m_size(other.m_size), m_mapped(other.m_mapped) {
    other.m_data = nullptr;
    other.m_size = 0;
    other.m_mapped = false;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
    if (this != &other) {
        release();
        m_data = other.m_data;
        m_size = other.m_size;
        m_mapped = other.m_mapped;
        other.m_data = nullptr;
        other.m_size = 0;
        other.m_mapped = false;
    }
    return *this;
}

void Buffer::release() noexcept {
    if (!m_data) return;
    if (m_mapped) {
        std::size_t length = (m_size + k_huge_page - 1) / k_huge_page * k_huge_page;
        ::munmap(m_data, length);
    } else {
        std::free(m_data);
    }
    m_data = nullptr;
}

// ---------------------------------------------------------------------------------------
// Array and ParameterSet

std::uint64_t element_count(const Shape& shape) {
    std::uint64_t count = 1;
    for (auto dimension : shape) {
        if (dimension != 0 && count > std::numeric_limits<std::uint64_t>::max() / 16 / dimension) {
            throw Error("shape " + format_shape(shape) + " is too large");
        }
        count *= dimension;
    }
    return count;
}

std::string format_shape(const Shape& shape) {
    std::string text = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) text += ", ";
        text += std::to_string(shape[i]);
    }
    return text + "]";
}

Array::Array(DType dtype, Shape shape)
    : m_dtype(dtype),
      m_shape(std::move(shape)),
      m_size(element_count(m_shape)),
      m_buffer(static_cast<std::size_t>(m_size * dtype_size(dtype))) {}

Array Array::clone() const {
    Array copy(m_dtype, m_shape);
    if (byte_size()) std::memcpy(copy.data(), data(), byte_size());
    return copy;
}

void ParameterSet::add(std::string name, Array array) {
    if (name.empty()) throw Error("parameter names must not be empty");
    if (m_index.count(name)) throw Error("duplicate parameter name '" + name + "'");
    m_index.emplace(name, m_entries.size());
    m_entries.push_back({std::move(name), std::move(array)});
}

Array* ParameterSet::find(std::string_view name) {
    auto found = m_index.find(std::string(name));
    return found == m_index.end() ? nullptr : &m_entries[found->second].array;
}

const Array* ParameterSet::find(std::string_view name) const {
    auto found = m_index.find(std::string(name));
    return found == m_index.end() ? nullptr : &m_entries[found->second].array;
}

std::uint64_t ParameterSet::total_elements() const {
    std::uint64_t total = 0;
    for (const auto& entry : m_entries) total += entry.array.size();
    return total;
}

std::uint64_t ParameterSet::total_bytes() const {
    std::uint64_t total = 0;
    for (const auto& entry : m_entries) total += entry.array.byte_size();
    return total;
}

KeyConvention ParameterSet::key_convention() const {
    std::vector<std::string> keys;
    keys.reserve(m_entries.size());
    for (const auto& entry : m_entries) keys.push_back(entry.name);
    return npz::key_convention(keys);
}

KeyConvention key_convention(const std::vector<std::string>& keys) {
    if (keys.empty()) return KeyConvention::named;
    for (auto convention : {KeyConvention::numbered, KeyConvention::numpy}) {
        std::vector<bool> seen(keys.size(), false);
        bool matches = true;
        for (const auto& key : keys) {
            std::string_view digits = key;
            if (convention == KeyConvention::numpy) {
                if (digits.substr(0, 4) != "arr_") {
                    matches = false;
                    break;
                }
                digits.remove_prefix(4);
            }
            std::uint64_t index = 0;
            if (!canonical_index(digits, index) || index >= keys.size() || seen[index]) {
                matches = false;
                break;
            }
            seen[index] = true;
        }
        if (matches) return convention;
    }
    return KeyConvention::named;
}

// ---------------------------------------------------------------------------------------
// NPY

std::size_t npy_header_size(std::span<const std::byte> prefix, const std::string& where) {
    if (prefix.size() < 10 ||
        std::memcmp(prefix.data(), k_npy_magic.data(), k_npy_magic.size()) != 0) {
        throw Error(where + ": not an NPY array (bad magic; expected \\x93NUMPY)");
    }
    int major = std::to_integer<int>(prefix[6]);
    int minor = std::to_integer<int>(prefix[7]);
    if (minor != 0 || major < 1 || major > 3) {
        throw Error(where + ": unsupported NPY format version " + std::to_string(major) + "." +
                    std::to_string(minor) + " (supported: 1.0, 2.0, 3.0)");
    }
    if (major == 1) return 10 + get16(prefix.data() + 8);
    if (prefix.size() < 12) throw Error(where + ": NPY header is truncated");
    return 12 + static_cast<std::size_t>(get32(prefix.data() + 8));
}

NpyHeader parse_npy_header(std::span<const std::byte> bytes, const std::string& where) {
    NpyHeader header;
    header.header_size = npy_header_size(bytes, where);
    header.major_version = std::to_integer<int>(bytes[6]);
    if (header.header_size > bytes.size()) {
        throw Error(where + ": NPY header is truncated (declares " +
                    std::to_string(header.header_size) + " bytes, have " +
                    std::to_string(bytes.size()) + ")");
    }
    std::size_t prefix = header.major_version == 1 ? 10 : 12;
    std::string_view text(reinterpret_cast<const char*>(bytes.data()) + prefix,
                          header.header_size - prefix);
    header.info = HeaderParser(text, where).parse();
    return header;
}

std::string format_npy_header(DType dtype, const Shape& shape) {
    std::string dictionary =
        "{'descr': '" + std::string(dtype_descr(dtype)) + "', 'fortran_order': False, 'shape': (";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) dictionary += ", ";
        dictionary += std::to_string(shape[i]);
    }
    if (shape.size() == 1) dictionary += ",";
    dictionary += "), }";
    // numpy leaves room for the first axis to grow to 21 digits in place.
    if (!shape.empty()) dictionary.append(21 - std::to_string(shape[0]).size(), ' ');

    std::size_t text_length = dictionary.size() + 1;  // + '\n'
    auto wrap = [&](int major, std::size_t prefix_size) {
        std::size_t pad = k_alignment - (prefix_size + text_length) % k_alignment;
        std::size_t length = text_length + pad;
        std::string header(k_npy_magic);
        header += static_cast<char>(major);
        header += '\0';
        for (std::size_t i = 0; i < prefix_size - 8; ++i) {
            header += static_cast<char>((length >> (8 * i)) & 0xFF);
        }
        header += dictionary;
        header.append(pad, ' ');
        header += '\n';
        return std::make_pair(header, length);
    };
    auto [version1, length1] = wrap(1, 10);
    if (length1 <= 0xFFFF) return version1;
    return wrap(2, 12).first;
}

Array read_npy(const std::filesystem::path& path) {
    std::uint64_t file_size = 0;
    int fd = open_for_reading(path, file_size);
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    std::string where = path.string();
    std::vector<std::byte> prefix(
        static_cast<std::size_t>(std::min<std::uint64_t>(file_size, k_npy_prefix_size)));
    zip::pread_exact(fd, prefix.data(), prefix.size(), 0, where);
    std::size_t header_size = npy_header_size(prefix, where);
    if (header_size > k_max_npy_header) throw Error(where + ": NPY header is implausibly large");
    std::vector<std::byte> header_bytes(header_size);
    zip::pread_exact(fd, header_bytes.data(), header_size, 0, where);
    auto header = parse_npy_header(header_bytes, where);
    std::uint64_t data_size = header.info.byte_size();
    if (file_size - header_size != data_size) {
        throw Error(where + ": header says " + std::string(dtype_name(header.info.dtype)) + " " +
                    format_shape(header.info.shape) + " (" + std::to_string(data_size) +
                    " bytes of data) but the file holds " +
                    std::to_string(file_size - header_size) + " bytes after the header");
    }
    Array raw(header.info.dtype, header.info.shape);
    zip::pread_with_crc(fd, raw.data(), static_cast<std::size_t>(data_size), header_size, 0, where);
    return finish_array(std::move(raw), header.info);
}

void write_npy(const std::filesystem::path& path, const Array& array) {
    AtomicFile file(path);
    std::string header = format_npy_header(array.dtype(), array.shape());
    for (auto [data, size] :
         {std::pair{reinterpret_cast<const std::byte*>(header.data()), header.size()},
          std::pair{array.data(), static_cast<std::size_t>(array.byte_size())}}) {
        while (size > 0) {
            ssize_t n = ::write(file.fd(), data, std::min<std::size_t>(size, std::size_t{1} << 30));
            if (n < 0) {
                if (errno == EINTR) continue;
                throw Error(path.string() + ": write failed: " + errno_text());
            }
            data += n;
            size -= static_cast<std::size_t>(n);
        }
    }
    file.commit();
}

// ---------------------------------------------------------------------------------------
// NPZ

Reader::Reader(const std::filesystem::path& path, ReadOptions options)
    : m_display_name(path.string()), m_options(options) {
    m_fd = open_for_reading(path, m_file_size);
    m_owns_fd = true;
    try {
        open_from_fd();
    } catch (...) {
        ::close(m_fd);
        throw;
    }
}

Reader::Reader(int fd, std::string display_name, ReadOptions options)
    : m_fd(fd), m_display_name(std::move(display_name)), m_options(options) {
    struct stat info {};
    if (::fstat(fd, &info) != 0) throw Error(m_display_name + ": cannot stat: " + errno_text());
    m_file_size = static_cast<std::uint64_t>(info.st_size);
    open_from_fd();
}

Reader::~Reader() {
    if (m_owns_fd) ::close(m_fd);
}

std::string Reader::where(const MemberInfo& member) const {
    return m_display_name + ": member '" + member.member_name + "'";
}

void Reader::open_from_fd() {
    if (m_file_size == 0) throw Error(m_display_name + ": file is empty");
    if (m_file_size >= k_npy_magic.size()) {
        char magic[6];
        zip::pread_exact(m_fd, magic, sizeof magic, 0, m_display_name);
        if (std::string_view(magic, sizeof magic) == k_npy_magic) {
            throw Error(m_display_name + ": is a single .npy array, not an .npz archive");
        }
    }
    auto directory = zip::read_directory(m_fd, m_file_size, m_display_name);

    std::uint64_t declared = 0;
    std::map<std::string, std::size_t> seen;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> extents;  // [header, data end)
    for (std::size_t i = 0; i < directory.entries.size(); ++i) {
        const auto& entry = directory.entries[i];
        std::string member_where = m_display_name + ": member '" + entry.name + "'";
        constexpr std::string_view k_suffix = ".npy";
        if (entry.name.size() <= k_suffix.size() ||
            entry.name.compare(entry.name.size() - k_suffix.size(), k_suffix.size(), k_suffix) !=
                0) {
            throw Error(member_where +
                        " is not a .npy array (every member of an .npz is named <key>.npy)");
        }
        std::string key = entry.name.substr(0, entry.name.size() - k_suffix.size());
        if (auto [it, inserted] = seen.emplace(key, i); !inserted) {
            throw Error(m_display_name + ": duplicate key '" + key + "' (members " +
                        std::to_string(it->second) + " and " + std::to_string(i) + ")");
        }
        declared += entry.uncompressed_size;
        if (entry.uncompressed_size > m_options.max_total_bytes ||
            declared > m_options.max_total_bytes) {
            throw Error(member_where + ": archive declares more than " +
                        std::to_string(m_options.max_total_bytes) +
                        " bytes of uncompressed data, above the configured limit");
        }

        MemberInfo member;
        member.member_name = entry.name;
        member.key = std::move(key);
        member.compression =
            entry.method == zip::k_method_deflate ? Compression::deflate : Compression::stored;
        member.compressed_size = entry.compressed_size;
        member.uncompressed_size = entry.uncompressed_size;
        member.crc32 = entry.crc32;
        member.data_offset = zip::data_offset(m_fd, m_file_size, entry,
                                              directory.central_directory_offset, member_where);
        extents.emplace_back(entry.local_header_offset, member.data_offset + entry.compressed_size);

        zip::MemberReader stream(m_fd, entry, member.data_offset, member_where);
        if (entry.uncompressed_size < 10) {
            throw Error(member_where + ": too short (" + std::to_string(entry.uncompressed_size) +
                        " bytes) to hold an NPY header");
        }
        std::vector<std::byte> header(std::min<std::size_t>(
            static_cast<std::size_t>(entry.uncompressed_size), k_npy_prefix_size));
        stream.read(header.data(), header.size());
        std::size_t header_size = npy_header_size(header, member_where);
        if (header_size > entry.uncompressed_size || header_size > k_max_npy_header) {
            throw Error(member_where + ": NPY header length " + std::to_string(header_size) +
                        " exceeds the member size of " + std::to_string(entry.uncompressed_size) +
                        " bytes");
        }
        if (header_size < header.size()) header.resize(header_size);
        std::size_t have = header.size();
        header.resize(header_size);
        stream.read(header.data() + have, header_size - have);
        auto parsed = parse_npy_header(header, member_where);
        member.array = parsed.info;
        member.npy_header_size = header_size;
        std::uint64_t data_size = parsed.info.byte_size();
        if (entry.uncompressed_size - header_size != data_size) {
            throw Error(
                member_where + ": header says " + std::string(dtype_name(parsed.info.dtype)) + " " +
                format_shape(parsed.info.shape) + " (" + std::to_string(data_size) +
                " bytes of data) but the member holds " +
                std::to_string(entry.uncompressed_size - header_size) + " bytes after the header");
        }
        m_members.push_back(std::move(member));
    }

    // Overlapping members are a zip-bomb technique and never written by numpy.
    std::sort(extents.begin(), extents.end());
    for (std::size_t i = 1; i < extents.size(); ++i) {
        if (extents[i].first < extents[i - 1].second) {
            throw Error(m_display_name + ": corrupt zip: members overlap at offset " +
                        std::to_string(extents[i].first));
        }
    }

    std::vector<std::string> keys;
    for (const auto& member : m_members) keys.push_back(member.key);
    auto convention = key_convention(keys);
    if (convention != KeyConvention::named) {
        std::stable_sort(m_members.begin(), m_members.end(),
                         [convention](const MemberInfo& a, const MemberInfo& b) {
                             return convention_index(a.key, convention) <
                                    convention_index(b.key, convention);
                         });
    }
}

std::optional<std::size_t> Reader::find(std::string_view key) const {
    for (std::size_t i = 0; i < m_members.size(); ++i) {
        if (m_members[i].key == key) return i;
    }
    return std::nullopt;
}

Array Reader::read(std::size_t index) const {
    const MemberInfo& member = m_members.at(index);
    std::string member_where = where(member);
    zip::Entry entry = zip_entry(member);

    Array raw(member.array.dtype, member.array.shape);
    std::size_t data_size = static_cast<std::size_t>(raw.byte_size());
    std::vector<std::byte> header(member.npy_header_size);
    std::uint32_t crc = 0;
    if (member.compression == Compression::stored) {
        zip::pread_exact(m_fd, header.data(), header.size(), member.data_offset, member_where);
        crc = zip::crc32(0, header.data(), header.size());
        crc = zip::pread_with_crc(m_fd, raw.data(), data_size,
                                  member.data_offset + member.npy_header_size, crc, member_where);
    } else {
        zip::MemberReader stream(m_fd, entry, member.data_offset, member_where);
        stream.read(header.data(), header.size());
        stream.read(raw.data(), data_size);
        stream.finish();
        if (m_options.verify_crc) {
            crc = zip::crc32(0, header.data(), header.size());
            crc = zip::crc32(crc, raw.data(), data_size);
        }
    }
    if (m_options.verify_crc && crc != member.crc32) {
        throw Error(member_where + ": CRC-32 mismatch (data is corrupt)");
    }
    // The header was parsed when the archive was opened; a changed header means the file
    // changed underneath us.
    if (parse_npy_header(header, member_where).info.shape != member.array.shape) {
        throw Error(member_where + ": file changed while reading");
    }
    return finish_array(std::move(raw), member.array);
}

ParameterSet Reader::read_all() const {
    ParameterSet parameters;
    for (std::size_t i = 0; i < m_members.size(); ++i) {
        parameters.add(m_members[i].key, read(i));
    }
    return parameters;
}

void Reader::verify(std::size_t index) const {
    const MemberInfo& member = m_members.at(index);
    std::string member_where = where(member);
    zip::Entry entry = zip_entry(member);
    zip::MemberReader stream(m_fd, entry, member.data_offset, member_where);
    std::vector<std::byte> block(static_cast<std::size_t>(
        std::min<std::uint64_t>(member.uncompressed_size, std::uint64_t{4} << 20)));
    std::uint32_t crc = 0;
    while (stream.remaining() > 0) {
        std::size_t chunk =
            static_cast<std::size_t>(std::min<std::uint64_t>(stream.remaining(), block.size()));
        stream.read(block.data(), chunk);
        crc = zip::crc32(crc, block.data(), chunk);
    }
    stream.finish();
    if (crc != member.crc32) throw Error(member_where + ": CRC-32 mismatch (data is corrupt)");
}

ParameterSet read_npz(const std::filesystem::path& path, const ReadOptions& options) {
    return Reader(path, options).read_all();
}

void write_npz(const std::filesystem::path& path, const ParameterSet& parameters,
               const WriteOptions& options) {
    AtomicFile file(path);
    zip::Writer writer(file.fd(), options.force_zip64, path.string());
    for (const auto& entry : parameters) {
        std::string header = format_npy_header(entry.array.dtype(), entry.array.shape());
        std::array<std::span<const std::byte>, 2> parts{
            std::span<const std::byte>(reinterpret_cast<const std::byte*>(header.data()),
                                       header.size()),
            std::span<const std::byte>(entry.array.data(),
                                       static_cast<std::size_t>(entry.array.byte_size()))};
        if (options.compression == Compression::deflate) {
            writer.add_deflate(entry.name + ".npy", parts, options.deflate_level);
        } else {
            writer.add_stored(entry.name + ".npy", parts);
        }
    }
    writer.finish();
    file.commit();
}

ParameterSet read_parameters(const std::filesystem::path& path, const ReadOptions& options) {
    std::uint64_t file_size = 0;
    int fd = open_for_reading(path, file_size);
    char magic[6] = {};
    std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(file_size, sizeof magic));
    try {
        zip::pread_exact(fd, magic, length, 0, path.string());
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    if (std::string_view(magic, length) == k_npy_magic) {
        ParameterSet parameters;
        parameters.add(path.stem().string(), read_npy(path));
        return parameters;
    }
    if (length >= 2 && magic[0] == 'P' && magic[1] == 'K') return read_npz(path, options);
    throw Error(path.string() +
                ": neither an .npz archive nor an .npy array (unrecognised file signature)");
}

}  // namespace fedcli::npz
