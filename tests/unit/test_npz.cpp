// Tests for core/npz: numpy-compatible .npy/.npz reading and writing.
//
// Every format claim is cross-checked against numpy itself at test time, in both directions:
// numpy writes and fedcli reads (values compared byte for byte against a C-order
// little-endian reference dump written by numpy), fedcli writes and numpy reads (a Python
// script asserts dtype, shape, bytes and zip structure and exits non-zero on any mismatch).
// Fixtures, good and hostile, are generated in each test's own temp dir: no binary file is
// committed. Python work is batched into one interpreter launch per test case.
#include "core/npz/npz.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "tests/unit/support.hpp"

namespace {

using namespace fedcli::npz;
using Catch::Matchers::Contains;
using fedcli::test::read_file;
using fedcli::test::run_python;
using fedcli::test::TempDir;
using fedcli::test::write_file;

constexpr DType k_all_dtypes[] = {
    DType::float16, DType::float32, DType::float64, DType::int8,   DType::int16,  DType::int32,
    DType::int64,   DType::uint8,   DType::uint16,  DType::uint32, DType::uint64, DType::boolean,
};

// Helpers shared by every Python script. Scripts get the test's temp dir as argv[1] and
// report what they wrote as tab-separated lines whose first field is a tag.
const char* const k_python_prelude = R"PY(
import io, os, struct, sys, warnings, zipfile, zlib
import numpy as np

out = sys.argv[1]

def path(name):
    return os.path.join(out, name)

def emit(*fields):
    print(*fields, sep='\t')

def shape_text(shape):
    return ','.join(str(d) for d in shape)

def canon_bytes(a):
    """C-order little-endian bytes: what a fedcli Array holds."""
    return a.astype(a.dtype.newbyteorder('<')).tobytes(order='C')

def ref(tag, file, key, a):
    """Dumps the reference bytes of `a` and announces them."""
    raw = '%s.%s.raw' % (file, key)
    with open(path(raw), 'wb') as f:
        f.write(canon_bytes(a))
    emit(tag, file, key, a.dtype.name, shape_text(a.shape), raw)

def sample(descr, shape, rng):
    """Random values over the dtype's whole range, with NaN/inf/-0 for floats."""
    dt = np.dtype(descr)
    native = dt.newbyteorder('=')
    n = int(np.prod(shape, dtype=np.int64))
    if dt.kind == 'b':
        v = rng.integers(0, 2, n).astype(bool)
    elif dt.kind == 'f':
        v = (rng.standard_normal(n) * 1000).astype(native)
        special = np.array([np.nan, np.inf, -np.inf, -0.0, 65504.0], dtype=native)[:n]
        v[:len(special)] = special
    else:
        info = np.iinfo(native)
        v = rng.integers(info.min, info.max, n, endpoint=True, dtype=native)
    return v.reshape(shape).astype(dt)

def npy_bytes(a, version=None):
    f = io.BytesIO()
    np.lib.format.write_array(f, a, version=version)
    return f.getvalue()

def npy_header(descr, shape, fortran=False, version=None):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        np.lib.format._write_array_header(
            f, {'descr': descr, 'fortran_order': fortran, 'shape': tuple(shape)}, version)
    return f.getvalue()

def deflate(data, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()

def local_data_offset(data, header_offset):
    name_len, extra_len = struct.unpack('<HH', data[header_offset + 26:header_offset + 30])
    return header_offset + 30 + name_len + extra_len

def member_facts(file):
    """What fedcli's MemberInfo must say about every member, from zipfile and np.lib.format."""
    data = open(path(file), 'rb').read()
    with zipfile.ZipFile(path(file)) as zf:
        for zi in zf.infolist():
            f = io.BytesIO(zf.read(zi))
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)
            compression = 'deflate' if zi.compress_type == zipfile.ZIP_DEFLATED else 'stored'
            emit('MEMBER', file, zi.filename, compression, zi.compress_size, zi.file_size,
                 zi.CRC, local_data_offset(data, zi.header_offset), f.tell(), int(fortran),
                 int(dtype.byteorder == '>'), version[0])

def raw_zip(file, members, eocd_count=None):
    """A zip built by hand, so that every field can be made to lie. members: dicts with
    name, data (as stored), and optionally method, crc, usize, csize, flags, offset."""
    body = b''
    central = b''
    for m in members:
        name = m['name'].encode()
        data = m['data']
        method = m.get('method', 0)
        crc = m.get('crc', zlib.crc32(data) if method == 0 else 0)
        usize = m.get('usize', len(data))
        csize = m.get('csize', len(data))
        flags = m.get('flags', 0)
        offset = m.get('offset', len(body))
        body_offset = len(body)
        body += struct.pack('<IHHHHHIIIHH', 0x04034b50, 20, flags, method, 0, 0x21, crc,
                            csize, usize, len(name), 0) + name + data
        central += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 20, 20, flags, method, 0,
                               0x21, crc, csize, usize, len(name), 0, 0, 0, 0, 0,
                               offset) + name
    count = len(members) if eocd_count is None else eocd_count
    eocd = struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, count, count, len(central), len(body), 0)
    with open(path(file), 'wb') as f:
        f.write(body + central + eocd)
)PY";

std::string run_script(const TempDir& dir, const std::string& body) {
    return run_python(std::string(k_python_prelude) + body, {dir.path().string()});
}

std::vector<std::string> split(const std::string& text, char separator) {
    std::vector<std::string> parts;
    std::string::size_type start = 0;
    while (true) {
        auto end = text.find(separator, start);
        parts.push_back(text.substr(start, end - start));
        if (end == std::string::npos) return parts;
        start = end + 1;
    }
}

/// The fields after the tag of every output line tagged `tag`.
std::vector<std::vector<std::string>> records(const std::string& output, const std::string& tag) {
    std::vector<std::vector<std::string>> found;
    for (const auto& line : split(output, '\n')) {
        auto fields = split(line, '\t');
        if (fields.size() > 1 && fields[0] == tag) {
            fields.erase(fields.begin());
            found.push_back(std::move(fields));
        }
    }
    return found;
}

Shape parse_shape(const std::string& text) {
    Shape shape;
    if (text.empty()) return shape;
    for (const auto& part : split(text, ',')) shape.push_back(std::stoull(part));
    return shape;
}

std::string shape_text(const Shape& shape) {
    std::string text;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) text += ',';
        text += std::to_string(shape[i]);
    }
    return text;
}

DType dtype_named(const std::string& name) {
    auto dtype = dtype_from_name(name);
    INFO("dtype name " << name);
    REQUIRE(dtype.has_value());
    return *dtype;
}

std::string unhex(const std::string& hex) {
    std::string bytes;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    return bytes;
}

std::span<const std::byte> as_bytes(const std::string& text) {
    return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

std::string bytes_of(const Array& array) {
    if (array.byte_size() == 0) return {};
    return {reinterpret_cast<const char*>(array.data()),
            static_cast<std::size_t>(array.byte_size())};
}

bool same_array(const Array& a, const Array& b) {
    return a.dtype() == b.dtype() && a.shape() == b.shape() && a.size() == b.size() &&
           bytes_of(a) == bytes_of(b);
}

/// Checks an array against numpy's reference: dtype, shape and C-order little-endian bytes.
void check_against_reference(const Array& array, const std::vector<std::string>& ref,
                             const TempDir& dir) {
    // ref: file, key, dtype name, shape, raw file
    INFO("file " << ref[0] << ", key " << ref[1] << ", " << ref[2] << " " << ref[3]);
    CHECK(dtype_name(array.dtype()) == ref[2]);
    CHECK(array.shape() == parse_shape(ref[3]));
    CHECK(array.size() == element_count(parse_shape(ref[3])));
    bool same_bytes = bytes_of(array) == read_file(dir / ref[4]);
    CHECK(same_bytes);
}

Array random_array(DType dtype, const Shape& shape, std::mt19937_64& random) {
    Array array(dtype, shape);
    auto* bytes = array.data();
    for (std::uint64_t i = 0; i < array.byte_size(); ++i) {
        auto value = static_cast<unsigned char>(random());
        // bool arrays hold 0 or 1 only, as numpy writes them.
        bytes[i] =
            std::byte{dtype == DType::boolean ? static_cast<unsigned char>(value & 1) : value};
    }
    return array;
}

template <class T>
Array filled(DType dtype, const Shape& shape, T value) {
    Array array(dtype, shape);
    for (auto& element : array.values<T>()) element = value;
    return array;
}

/// What an operation on hostile input did: fedcli::Error is the only acceptable failure.
struct Outcome {
    enum class Kind { returned, fedcli_error, other_exception } kind = Kind::returned;
    std::string message;
};

Outcome outcome_of(const std::function<void()>& operation) {
    Outcome outcome;
    try {
        operation();
    } catch (const fedcli::Error& error) {
        outcome = {Outcome::Kind::fedcli_error, error.what()};
    } catch (const std::exception& error) {
        outcome = {Outcome::Kind::other_exception, error.what()};
    } catch (...) {
        outcome = {Outcome::Kind::other_exception, "(not a std::exception)"};
    }
    return outcome;
}

/// Requires a fedcli::Error whose message contains every one of `names`.
void check_error_naming(const Outcome& outcome, const std::vector<std::string>& names) {
    INFO("message: " << outcome.message);
    CHECK(outcome.kind == Outcome::Kind::fedcli_error);
    for (const auto& name : names)
        if (!name.empty()) CHECK_THAT(outcome.message, Contains(name));
}

/// Opens, reads and verifies every member, as a consumer of the file would.
void read_everything(const std::filesystem::path& path, const ReadOptions& options) {
    Reader reader(path, options);
    for (std::size_t i = 0; i < reader.members().size(); ++i) {
        reader.read(i);
        reader.verify(i);
    }
}

std::vector<std::string> keys_of(const Reader& reader) {
    std::vector<std::string> keys;
    for (const auto& member : reader.members()) keys.push_back(member.key);
    return keys;
}

std::vector<std::string> keys_of(const ParameterSet& parameters) {
    std::vector<std::string> keys;
    for (const auto& entry : parameters) keys.push_back(entry.name);
    return keys;
}

std::vector<std::string> files_in(const std::filesystem::path& folder) {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(folder))
        names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Values, buffers and parameter sets (no numpy needed)

TEST_CASE("element_count and format_shape", "[npz]") {
    CHECK(element_count({}) == 1);
    CHECK(element_count({0}) == 0);
    CHECK(element_count({3, 0}) == 0);
    CHECK(element_count({2, 3, 4}) == 24);
    CHECK(element_count({std::uint64_t{1} << 40, 1, std::uint64_t{1} << 10}) == std::uint64_t{1}
                                                                                    << 50);
    CHECK_THROWS_AS(element_count({std::uint64_t{1} << 32, std::uint64_t{1} << 32}), fedcli::Error);
    CHECK_THROWS_AS(element_count({std::uint64_t{1} << 63, 2}), fedcli::Error);
    CHECK_THROWS_AS(element_count({3, 5, std::uint64_t{1} << 62}), fedcli::Error);
    CHECK_THROWS_AS(Array(DType::uint8, {std::uint64_t{1} << 32, std::uint64_t{1} << 32}),
                    fedcli::Error);
    // Elements fit in 64 bits but bytes do not: must not silently allocate a wrapped size.
    CHECK_THROWS(Array(DType::float64, {std::uint64_t{1} << 62}));

    CHECK(format_shape({}) == "[]");
    CHECK(format_shape({64, 784}) == "[64, 784]");
    CHECK(format_shape({0}) == "[0]");
}

TEST_CASE("Buffer is aligned, owns its memory and moves", "[npz]") {
    Buffer empty;
    CHECK(empty.data() == nullptr);
    CHECK(empty.size() == 0);

    for (std::size_t size : {std::size_t{1}, std::size_t{63}, std::size_t{4097},
                             std::size_t{2} << 20, (std::size_t{3} << 20) + 1}) {
        INFO("size " << size);
        Buffer buffer(size);
        REQUIRE(buffer.data() != nullptr);
        CHECK(buffer.size() == size);
        CHECK(reinterpret_cast<std::uintptr_t>(buffer.data()) % 64 == 0);
        for (std::size_t i = 0; i < size; ++i) buffer.data()[i] = std::byte(i * 7);
        bool intact = true;
        for (std::size_t i = 0; i < size; ++i) intact &= buffer.data()[i] == std::byte(i * 7);
        CHECK(intact);

        std::byte* memory = buffer.data();
        Buffer moved(std::move(buffer));
        CHECK(moved.data() == memory);
        CHECK(moved.size() == size);
        CHECK(buffer.data() == nullptr);  // NOLINT(bugprone-use-after-move): the contract
        CHECK(buffer.size() == 0);

        Buffer assigned(100);
        assigned = std::move(moved);
        CHECK(assigned.data() == memory);
        CHECK(assigned.size() == size);
        CHECK(moved.data() == nullptr);  // NOLINT(bugprone-use-after-move)
        CHECK(moved.size() == 0);
        CHECK(assigned.data()[size - 1] == std::byte((size - 1) * 7));

        // Assigning into a moved-from buffer makes it usable again.
        moved = Buffer(16);
        CHECK(moved.size() == 16);
    }
}

TEST_CASE("Array typed access checks the dtype", "[npz]") {
    Array floats(DType::float32, {2, 3});
    CHECK(floats.size() == 6);
    CHECK(floats.byte_size() == 24);
    CHECK(floats.values<float>().size() == 6);
    CHECK(reinterpret_cast<void*>(floats.values<float>().data()) == floats.data());
    const Array& constant = floats;
    CHECK(constant.values<float>().size() == 6);

    CHECK_THROWS_AS(floats.values<double>(), fedcli::Error);
    CHECK_THROWS_AS(floats.values<std::int32_t>(), fedcli::Error);  // same size, other kind
    CHECK_THROWS_AS(floats.values<std::uint32_t>(), fedcli::Error);
    CHECK_THROWS_AS(constant.values<double>(), fedcli::Error);
    CHECK_THROWS_WITH(floats.values<double>(), Contains("float32") && Contains("float64"));

    Array bytes(DType::uint8, {4});
    CHECK_THROWS_AS(bytes.values<bool>(), fedcli::Error);
    CHECK_THROWS_AS(bytes.values<std::int8_t>(), fedcli::Error);
    Array flags(DType::boolean, {4});
    CHECK_THROWS_AS(flags.values<std::uint8_t>(), fedcli::Error);
    CHECK(flags.values<bool>().size() == 4);
    Array halves(DType::float16, {4});
    CHECK_THROWS_AS(halves.values<std::uint16_t>(), fedcli::Error);
    CHECK(halves.byte_size() == 8);

    Array scalar(DType::int64, {});
    CHECK(scalar.size() == 1);
    scalar.values<std::int64_t>()[0] = -5;
    CHECK(scalar.values<std::int64_t>()[0] == -5);
    Array none(DType::int64, {3, 0});
    CHECK(none.size() == 0);
    CHECK(none.values<std::int64_t>().empty());
}

TEST_CASE("Array::clone is a deep copy", "[npz]") {
    std::mt19937_64 random(1);
    Array original = random_array(DType::float64, {3, 4}, random);
    Array copy = original.clone();
    CHECK(same_array(copy, original));
    CHECK(copy.data() != original.data());
    double before = copy.values<double>()[5];
    original.values<double>()[5] = before + 1.0;
    CHECK(copy.values<double>()[5] == before);

    Array big = random_array(DType::uint8, {std::size_t{3} << 20}, random);
    Array big_copy = big.clone();
    CHECK(same_array(big_copy, big));
    big.values<std::uint8_t>()[12345] ^= 0xFF;
    CHECK_FALSE(same_array(big_copy, big));

    Array scalar = filled<std::int16_t>(DType::int16, {}, 7);
    CHECK(same_array(scalar.clone(), scalar));
    Array empty(DType::float32, {0, 5});
    Array empty_copy = empty.clone();
    CHECK(empty_copy.shape() == Shape{0, 5});
    CHECK(empty_copy.size() == 0);
}

TEST_CASE("ParameterSet keeps order and unique names", "[npz]") {
    ParameterSet parameters;
    CHECK(parameters.empty());
    parameters.add("fc1.weight", Array(DType::float32, {4, 3}));
    parameters.add("fc1.bias", Array(DType::float64, {4}));
    parameters.add("step", Array(DType::int64, {}));
    CHECK(parameters.size() == 3);
    CHECK(keys_of(parameters) == std::vector<std::string>{"fc1.weight", "fc1.bias", "step"});
    CHECK(parameters[1].name == "fc1.bias");
    CHECK(parameters.total_elements() == 12 + 4 + 1);
    CHECK(parameters.total_bytes() == 48 + 32 + 8);
    REQUIRE(parameters.find("fc1.bias") != nullptr);
    CHECK(parameters.find("fc1.bias")->dtype() == DType::float64);
    CHECK(parameters.find("fc2.bias") == nullptr);
    const ParameterSet& constant = parameters;
    CHECK(constant.find("step") != nullptr);

    CHECK_THROWS_AS(parameters.add("fc1.bias", Array(DType::float32, {1})), fedcli::Error);
    CHECK_THROWS_WITH(parameters.add("fc1.bias", Array(DType::float32, {1})), Contains("fc1.bias"));
    CHECK_THROWS_AS(parameters.add("", Array(DType::float32, {1})), fedcli::Error);
    CHECK(parameters.size() == 3);
    CHECK(parameters.key_convention() == KeyConvention::named);

    ParameterSet numbered;
    numbered.add("1", Array(DType::float32, {1}));
    numbered.add("0", Array(DType::float32, {1}));
    CHECK(numbered.key_convention() == KeyConvention::numbered);
}

TEST_CASE("key_convention classifies key lists", "[npz]") {
    using Keys = std::vector<std::string>;
    CHECK(key_convention(Keys{"0"}) == KeyConvention::numbered);
    CHECK(key_convention(Keys{"0", "1", "2"}) == KeyConvention::numbered);
    CHECK(key_convention(Keys{"2", "0", "1"}) == KeyConvention::numbered);
    Keys eleven;
    for (int i = 10; i >= 0; --i) eleven.push_back(std::to_string(i));
    CHECK(key_convention(eleven) == KeyConvention::numbered);
    CHECK(key_convention(Keys{"arr_0"}) == KeyConvention::numpy);
    CHECK(key_convention(Keys{"arr_1", "arr_0", "arr_2"}) == KeyConvention::numpy);
    CHECK(key_convention(Keys{"0", "2"}) == KeyConvention::named);      // gap
    CHECK(key_convention(Keys{"1", "2"}) == KeyConvention::named);      // not from 0
    CHECK(key_convention(Keys{"0", "01"}) == KeyConvention::named);     // not "1"
    CHECK(key_convention(Keys{"0", "arr_1"}) == KeyConvention::named);  // mixed
    CHECK(key_convention(Keys{"arr_0", "arr_2"}) == KeyConvention::named);
    CHECK(key_convention(Keys{"arr_x"}) == KeyConvention::named);
    CHECK(key_convention(Keys{"fc1.weight", "fc1.bias"}) == KeyConvention::named);
}

// ---------------------------------------------------------------------------------------
// NPY headers and dtypes against numpy

TEST_CASE("dtype helpers and NPY headers match numpy byte for byte", "[npz][numpy]") {
    TempDir dir;
    auto output = run_script(dir, R"PY(
for name in ['float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8',
             'uint16', 'uint32', 'uint64', 'bool']:
    d = np.dtype(name)
    emit('DTYPE', name, d.itemsize, d.str, int(d.kind == 'f'))

def unpadded_size(descr, shape):
    d = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    if shape:
        d += ' ' * (21 - len(repr(shape[0])))
    return 10 + len(d) + 1

def header_record(descr, shape, fortran=False, version=None):
    h = npy_header(descr, shape, fortran, version)
    emit('HEADER', np.dtype(descr).name, descr, shape_text(shape), int(fortran), h[6], h.hex())
    return h

shapes = [(), (0,), (3, 0), (10,), (64, 784), (1, 2, 3, 4, 5, 6, 7, 8), (2**40,),
          (4294967296, 3)]
for descr in ['<f2', '<f4', '<f8', '|i1', '<i2', '<i4', '<i8', '|u1', '<u2', '<u4', '<u8',
              '|b1']:
    for shape in shapes:
        header_record(descr, shape)

# Data offsets just below, at and just above a multiple of 64: numpy adds a whole 64 bytes
# of padding when the unpadded header is already aligned.
found = {}
for ndim in range(1, 16):
    for digits in range(1, 10):
        shape = (5,) + (int('9' * digits),) + (1,) * (ndim - 1)
        residue = unpadded_size('<f4', shape) % 64
        if residue in (63, 0, 1) and residue not in found:
            found[residue] = shape
assert sorted(found) == [0, 1, 63], found
for residue, shape in found.items():
    h = header_record('<f4', shape)
    assert len(h) == (unpadded_size('<f4', shape) // 64 + 1) * 64
    emit('BOUNDARY', residue, len(h))

# A header too long for NPY 1.0 (numpy switches to 2.0).
header_record('<f4', (1,) * 22000)

# Headers fedcli only parses: big-endian, Fortran order, versions 2.0 and 3.0.
header_record('>f8', (3, 4), True)
header_record('>i2', (7,))
header_record('<u8', (2, 3, 4), True, (2, 0))
header_record('>u4', (), False, (3, 0))
header_record('|b1', (0, 9), False, (3, 0))
)PY");

    auto dtypes = records(output, "DTYPE");
    REQUIRE(dtypes.size() == 12);
    for (const auto& row : dtypes) {
        INFO("dtype " << row[0]);
        DType dtype = dtype_named(row[0]);
        CHECK(dtype_name(dtype) == row[0]);
        CHECK(dtype_size(dtype) == std::stoul(row[1]));
        CHECK(dtype_descr(dtype) == row[2]);
        CHECK(dtype_is_float(dtype) == (row[3] == "1"));
    }
    CHECK_FALSE(dtype_from_name("complex64").has_value());
    CHECK_FALSE(dtype_from_name("object").has_value());
    CHECK_FALSE(dtype_from_name("").has_value());
    CHECK_FALSE(dtype_from_name("float32 ").has_value());

    CHECK(records(output, "BOUNDARY").size() == 3);
    auto headers = records(output, "HEADER");
    REQUIRE(headers.size() == 12 * 8 + 3 + 1 + 5);
    std::size_t formatted = 0;
    for (const auto& row : headers) {
        // row: dtype name, descr, shape, fortran, major version, header hex
        const std::string numpy_header = unhex(row[5]);
        const Shape shape = parse_shape(row[2]);
        const bool fortran = row[3] == "1";
        const int version = std::stoi(row[4]);
        const bool big_endian = row[1][0] == '>';
        INFO("descr " << row[1] << " shape (" << row[2] << ") fortran " << fortran << " version "
                      << version << " header size " << numpy_header.size());
        DType dtype = dtype_named(row[0]);

        if (!fortran && !big_endian && (version == 1 || numpy_header.size() > 65535)) {
            ++formatted;
            std::string ours = format_npy_header(dtype, shape);
            bool identical = ours == numpy_header;
            CHECK(identical);
            if (!identical && numpy_header.size() < 400) {
                CHECK(ours == numpy_header);
            }
        }

        auto header_bytes = as_bytes(numpy_header);
        CHECK(npy_header_size(header_bytes.first(k_npy_prefix_size), "numpy.npy") ==
              numpy_header.size());
        NpyHeader parsed = parse_npy_header(header_bytes, "numpy.npy");
        CHECK(parsed.info.dtype == dtype);
        CHECK(parsed.info.shape == shape);
        CHECK(parsed.info.fortran_order == fortran);
        CHECK(parsed.info.big_endian == big_endian);
        CHECK(parsed.major_version == version);
        CHECK(parsed.header_size == numpy_header.size());
    }
    CHECK(formatted == 12 * 8 + 3 + 1);
}

namespace {

/// numpy's framing of a header dict, for hand-made headers.
std::string npy_with_dict(const std::string& dict, int major_version = 1) {
    std::string prefix = "\x93NUMPY";
    prefix.push_back(static_cast<char>(major_version));
    prefix.push_back('\0');
    std::size_t length_bytes = major_version == 1 ? 2 : 4;
    std::size_t unpadded = prefix.size() + length_bytes + dict.size() + 1;
    std::size_t padding = 64 - unpadded % 64;
    std::string body = dict + std::string(padding, ' ') + "\n";
    for (std::size_t i = 0; i < length_bytes; ++i)
        prefix.push_back(static_cast<char>((body.size() >> (8 * i)) & 0xFF));
    return prefix + body;
}

std::string header_dict(const std::string& descr, const std::string& shape,
                        const std::string& fortran = "False") {
    return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

}  // namespace

TEST_CASE("parse_npy_header accepts numpy's variants and rejects malformed headers", "[npz]") {
    // What np.load accepts: any key order, no trailing comma, extra spaces.
    for (const std::string& dict :
         {std::string("{'shape': (3, 2), 'fortran_order': True, 'descr': '>i4'}"),
          std::string("{'descr': '>i4', 'fortran_order': True, 'shape': (3, 2)}"),
          std::string("{'descr':'>i4','fortran_order':True,'shape':(3,2),}")}) {
        INFO("dict " << dict);
        auto header = npy_with_dict(dict);
        NpyHeader parsed = parse_npy_header(as_bytes(header), "variant.npy");
        CHECK(parsed.info.dtype == DType::int32);
        CHECK(parsed.info.shape == Shape{3, 2});
        CHECK(parsed.info.fortran_order);
        CHECK(parsed.info.big_endian);
        CHECK(parsed.header_size == header.size());
    }
    {
        auto header = npy_with_dict(header_dict("<u8", "(7,)"), 2);
        NpyHeader parsed = parse_npy_header(as_bytes(header), "v2.npy");
        CHECK(parsed.major_version == 2);
        CHECK(parsed.info.dtype == DType::uint64);
        CHECK(parsed.info.shape == Shape{7});
        CHECK(npy_header_size(as_bytes(header).first(k_npy_prefix_size), "v2.npy") ==
              header.size());
    }

    struct Bad {
        const char* label;
        std::string bytes;
    };
    const std::string good = npy_with_dict(header_dict("<f4", "(3,)"));
    std::vector<Bad> bad = {
        {"shape beyond uint64", npy_with_dict(header_dict("<f4", "(18446744073709551616,)"))},
        {"negative dimension", npy_with_dict(header_dict("<f4", "(-1,)"))},
        {"element count overflow", npy_with_dict(header_dict("<f4", "(4294967296, 4294967296)"))},
        {"shape not a tuple", npy_with_dict(header_dict("<f4", "3"))},
        {"complex", npy_with_dict(header_dict("<c8", "(3,)"))},
        {"object", npy_with_dict(header_dict("|O", "(3,)"))},
        {"unicode", npy_with_dict(header_dict("<U3", "(3,)"))},
        {"long double", npy_with_dict(header_dict("<f16", "(3,)"))},
        {"datetime", npy_with_dict(header_dict("<M8[s]", "(3,)"))},
        {"structured", npy_with_dict("{'descr': [('a', '<i4'), ('b', '<f8')], 'fortran_order': "
                                     "False, 'shape': (3,), }")},
        {"missing shape", npy_with_dict("{'descr': '<f4', 'fortran_order': False, }")},
        {"missing descr", npy_with_dict("{'fortran_order': False, 'shape': (3,), }")},
        {"bad fortran_order", npy_with_dict(header_dict("<f4", "(3,)", "maybe"))},
        {"not a dict", npy_with_dict("hello world")},
        {"unterminated dict",
         npy_with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (3,")},
        {"bad magic", "\x93NUMPZ" + good.substr(6)},
        {"version 4.0", good.substr(0, 6) + '\x04' + good.substr(7)},
        {"truncated header", good.substr(0, 40)},
        {"prefix only", good.substr(0, 10)},
        {"nothing", ""},
    };
    for (const Bad& case_ : bad) {
        INFO(case_.label);
        auto outcome = outcome_of([&] { parse_npy_header(as_bytes(case_.bytes), "layer3.npy"); });
        check_error_naming(outcome, {"layer3.npy"});
    }
    // npy_header_size on prefixes that cannot be a header.
    for (const std::string& prefix :
         {std::string("\x93NUMPZ\x01\x00\x76\x00\x00\x00", 12),
          std::string("\x93NUMPY\x09\x00\x76\x00\x00\x00", 12), std::string("\x93NU", 4)}) {
        auto outcome = outcome_of([&] { npy_header_size(as_bytes(prefix), "layer4.npy"); });
        check_error_naming(outcome, {"layer4.npy"});
    }
}

// ---------------------------------------------------------------------------------------
// numpy writes, fedcli reads

TEST_CASE("read_npy reads what numpy writes, and write_npy writes what np.save writes",
          "[npz][numpy]") {
    TempDir dir;
    auto output = run_script(dir, R"PY(
rng = np.random.default_rng(11)
cases = []
for kind in ['f2', 'f4', 'f8', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'b1']:
    if kind in ('i1', 'u1', 'b1'):
        cases.append(('%s' % kind, sample('|' + kind, (3, 5), rng), None))
    else:
        cases.append(('%s_le' % kind, sample('<' + kind, (3, 5), rng), None))
        cases.append(('%s_be' % kind, sample('>' + kind, (3, 5), rng), None))
cases += [
    ('fortran_2d', np.asfortranarray(sample('<f4', (3, 4), rng)), None),
    ('fortran_3d', np.asfortranarray(sample('<i8', (2, 3, 4), rng)), None),
    ('fortran_3d_be', np.asfortranarray(sample('>f8', (17, 9, 5), rng)), None),
    ('fortran_2d_u2_be', np.asfortranarray(sample('>u2', (5, 7), rng)), None),
    ('fortran_bool', np.asfortranarray(sample('|b1', (4, 3, 2), rng)), None),
    ('scalar_f8', np.array(3.25), None),
    ('scalar_i4_be', np.array(-7, dtype='>i4'), None),
    ('scalar_bool', np.array(True), None),
    ('empty_1d', np.zeros((0,), '<f4'), None),
    ('empty_2d', np.zeros((3, 0), '<i2'), None),
    ('empty_be', np.zeros((0, 5), '>u4'), None),
    ('version_2', sample('<f4', (6, 2), rng), (2, 0)),
    ('version_3', sample('>i8', (2, 2), rng), (3, 0)),
    ('version_2_fortran', np.asfortranarray(sample('<u4', (3, 5), rng)), (2, 0)),
]
for name, a, version in cases:
    file = name + '.npy'
    with open(path(file), 'wb') as f:
        np.lib.format.write_array(f, a, version=version)
    assert a.ndim < 2 or a.size == 0 or not name.startswith('fortran') or (
        a.flags.f_contiguous and not a.flags.c_contiguous)
    # What fedcli's writer must produce for the same values: np.save of the C-order
    # little-endian copy.
    np.save(path(file + '.canonical.npy'), a.astype(a.dtype.newbyteorder('<'), order='C'))
    ref('CASE', file, '-', a)
    emit('LAYOUT', file, int(a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous),
         int(a.dtype.byteorder == '>'), (version or (1, 0))[0])

# An empty Fortran-order array: numpy never writes one itself (it is C-contiguous too), but
# np.load reads it, so fedcli must as well.
with open(path('fortran_empty.npy'), 'wb') as f:
    f.write(npy_header('<f4', (3, 0), True))
assert np.load(path('fortran_empty.npy')).shape == (3, 0)
ref('CASE', 'fortran_empty.npy', '-', np.zeros((3, 0), '<f4'))
emit('LAYOUT', 'fortran_empty.npy', 1, 0, 1)
np.save(path('fortran_empty.npy.canonical.npy'), np.zeros((3, 0), '<f4'))
)PY");

    auto cases = records(output, "CASE");
    auto layouts = records(output, "LAYOUT");
    REQUIRE(cases.size() == 36);
    REQUIRE(layouts.size() == cases.size());
    std::filesystem::create_directory(dir / "ours");
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const auto& file = cases[i][0];
        INFO("case " << file);
        Array array = read_npy(dir / file);
        check_against_reference(array, cases[i], dir);

        // The header really was what the case claims (so the test covers what it says).
        std::string raw = read_file(dir / file);
        NpyHeader header = parse_npy_header(as_bytes(raw), file);
        CHECK(header.info.fortran_order == (layouts[i][1] == "1"));
        CHECK(header.info.big_endian == (layouts[i][2] == "1"));
        CHECK(header.major_version == std::stoi(layouts[i][3]));
        CHECK(header.header_size + array.byte_size() == raw.size());

        ParameterSet as_parameters = read_parameters(dir / file);
        REQUIRE(as_parameters.size() == 1);
        CHECK(as_parameters[0].name == std::filesystem::path(file).stem().string());
        CHECK(same_array(as_parameters[0].array, array));

        write_npy(dir / "ours" / file, array);
        bool identical_to_numpy =
            read_file(dir / "ours" / file) == read_file(dir / (file + ".canonical.npy"));
        CHECK(identical_to_numpy);
    }
}

TEST_CASE("Reader reads np.savez and np.savez_compressed files", "[npz][numpy]") {
    TempDir dir;
    auto output = run_script(dir, R"PY(
rng = np.random.default_rng(5)
arrays = {}
for kind in ['f2', 'f4', 'f8', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'b1']:
    order = '|' if kind in ('i1', 'u1', 'b1') else '<'
    arrays['layer.%s' % kind] = sample(order + kind, (4, 3), rng)
    if order == '<':
        arrays['big.%s' % kind] = sample('>' + kind, (5,), rng)
arrays['fortran.2d'] = np.asfortranarray(sample('<f4', (6, 7), rng))
arrays['fortran.3d'] = np.asfortranarray(sample('>i4', (3, 4, 5), rng))
arrays['scalar'] = np.array(2.5, dtype='<f2')
arrays['empty'] = np.zeros((0,), '<f8')
arrays['empty.2d'] = np.zeros((3, 0), '<u1')
arrays['large'] = sample('<f4', (300, 200), rng)
np.savez(path('stored.npz'), **arrays)
np.savez_compressed(path('compressed.npz'), **arrays)
for file in ['stored.npz', 'compressed.npz']:
    for key, a in arrays.items():
        ref('REF', file, key, a)
    member_facts(file)
    # numpy writes zip64 extra fields in every local header: fedcli must accept them.
    data = open(path(file), 'rb').read()
    assert struct.unpack('<H', data[30 + len('layer.f2.npy'):][:2])[0] == 1
    emit('SIZE', file, len(data))

# Members in NPY format versions 1.0, 2.0 and 3.0, stored and deflated.
versions = {'v1': ((1, 0), sample('<f8', (3, 3), rng)), 'v2': ((2, 0), sample('>i2', (4,), rng)),
            'v3': ((3, 0), np.asfortranarray(sample('<u8', (2, 5), rng)))}
with zipfile.ZipFile(path('versions.npz'), 'w') as zf:
    for key, (version, a) in versions.items():
        zf.writestr(key + '.npy', npy_bytes(a, version),
                    zipfile.ZIP_DEFLATED if key == 'v2' else zipfile.ZIP_STORED)
for key, (version, a) in versions.items():
    ref('REF', 'versions.npz', key, a)
member_facts('versions.npz')
emit('SIZE', 'versions.npz', os.path.getsize(path('versions.npz')))
)PY");

    auto refs = records(output, "REF");
    auto facts = records(output, "MEMBER");
    REQUIRE(refs.size() == 2 * 27 + 3);
    REQUIRE(facts.size() == refs.size());
    std::map<std::string, std::uint64_t> sizes;
    for (const auto& row : records(output, "SIZE")) sizes[row[0]] = std::stoull(row[1]);
    REQUIRE(sizes.size() == 3);

    for (const auto& [file, file_size] : sizes) {
        INFO("file " << file);
        std::vector<std::vector<std::string>> file_refs, file_facts;
        for (const auto& row : refs)
            if (row[0] == file) file_refs.push_back(row);
        for (const auto& row : facts)
            if (row[0] == file) file_facts.push_back(row);

        Reader reader(dir / file);
        CHECK(reader.file_size() == file_size);
        CHECK(reader.display_name().find(file) != std::string::npos);
        REQUIRE(reader.members().size() == file_refs.size());
        for (std::size_t i = 0; i < file_refs.size(); ++i) {
            const MemberInfo& member = reader.members()[i];
            const auto& fact = file_facts[i];
            INFO("member " << fact[1]);
            // Named keys keep file order.
            CHECK(member.key == file_refs[i][1]);
            CHECK(member.member_name == fact[1]);
            CHECK(member.key + ".npy" == member.member_name);
            CHECK(member.compression ==
                  (fact[2] == "deflate" ? Compression::deflate : Compression::stored));
            CHECK(member.compressed_size == std::stoull(fact[3]));
            CHECK(member.uncompressed_size == std::stoull(fact[4]));
            CHECK(member.crc32 == std::stoul(fact[5]));
            CHECK(member.data_offset == std::stoull(fact[6]));
            CHECK(member.npy_header_size == std::stoull(fact[7]));
            CHECK(member.array.fortran_order == (fact[8] == "1"));
            CHECK(member.array.big_endian == (fact[9] == "1"));
            CHECK(dtype_name(member.array.dtype) == file_refs[i][2]);
            CHECK(member.array.shape == parse_shape(file_refs[i][3]));
            CHECK(reader.find(member.key) == std::optional<std::size_t>(i));

            check_against_reference(reader.read(i), file_refs[i], dir);
            CHECK_NOTHROW(reader.verify(i));
        }
        CHECK_FALSE(reader.find("no.such.key").has_value());

        std::vector<ParameterSet> loaded;
        loaded.push_back(read_npz(dir / file));
        loaded.push_back(read_parameters(dir / file));
        loaded.push_back(reader.read_all());
        for (const ParameterSet& parameters : loaded) {
            REQUIRE(parameters.size() == file_refs.size());
            CHECK(parameters.key_convention() == KeyConvention::named);
            for (std::size_t i = 0; i < file_refs.size(); ++i) {
                CHECK(parameters[i].name == file_refs[i][1]);
                check_against_reference(parameters[i].array, file_refs[i], dir);
            }
        }
    }
}

TEST_CASE("numbered and numpy keys come back in index order, named keys in file order",
          "[npz][numpy]") {
    TempDir dir;
    auto output = run_script(dir, R"PY(
def small(v):
    return npy_bytes(np.full((2,), v, dtype='<i4'))

def zip_members(file, pairs, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path(file), 'w', compression) as zf:
        for key, v in pairs:
            zf.writestr(key + '.npy', small(v))

def expect(file, convention, pairs):
    emit('ORDER', file, convention, ','.join('%s=%d' % kv for kv in pairs))

shuffled = [10, 2, 0, 7, 1, 9, 3, 5, 4, 8, 6]
zip_members('numbered_shuffled.npz', [(str(i), i) for i in shuffled])
expect('numbered_shuffled.npz', 'numbered', [(str(i), i) for i in range(11)])
zip_members('numpy_shuffled.npz', [('arr_%d' % i, i) for i in shuffled], zipfile.ZIP_DEFLATED)
expect('numpy_shuffled.npz', 'numpy', [('arr_%d' % i, i) for i in range(11)])

# FEDn's numpyhelper: np.savez(path, **{str(i): a}).
np.savez(path('fedn.npz'), **{str(i): np.full((2,), i, '<i4') for i in range(12)})
expect('fedn.npz', 'numbered', [(str(i), i) for i in range(12)])
np.savez_compressed(path('positional.npz'), *[np.full((2,), i, '<i4') for i in range(12)])
expect('positional.npz', 'numpy', [('arr_%d' % i, i) for i in range(12)])

named = [('fc2.weight', 0), ('fc1.weight', 1), ('bias', 2), ('10', 3), ('a', 4)]
zip_members('named.npz', named)
expect('named.npz', 'named', named)
zip_members('gap.npz', [('2', 2), ('0', 0)])
expect('gap.npz', 'named', [('2', 2), ('0', 0)])
zip_members('mixed.npz', [('1', 1), ('0', 0), ('arr_2', 2)])
expect('mixed.npz', 'named', [('1', 1), ('0', 0), ('arr_2', 2)])
)PY");

    auto orders = records(output, "ORDER");
    REQUIRE(orders.size() == 7);
    for (const auto& row : orders) {
        const auto& file = row[0];
        INFO("file " << file);
        std::vector<std::string> keys;
        std::vector<std::int32_t> values;
        for (const auto& pair : split(row[2], ',')) {
            auto parts = split(pair, '=');
            keys.push_back(parts[0]);
            values.push_back(std::stoi(parts[1]));
        }
        KeyConvention convention = row[1] == "numbered" ? KeyConvention::numbered
                                   : row[1] == "numpy"  ? KeyConvention::numpy
                                                        : KeyConvention::named;

        Reader reader(dir / file);
        CHECK(keys_of(reader) == keys);
        for (std::size_t i = 0; i < keys.size() && i < reader.members().size(); ++i) {
            INFO("key " << keys[i]);
            CHECK(reader.members()[i].member_name == keys[i] + ".npy");
            Array array = reader.read(i);
            REQUIRE(array.dtype() == DType::int32);
            CHECK(array.values<std::int32_t>()[0] == values[i]);
            CHECK(reader.find(keys[i]) == std::optional<std::size_t>(i));
        }
        ParameterSet parameters = read_npz(dir / file);
        CHECK(keys_of(parameters) == keys);
        CHECK(parameters.key_convention() == convention);
        CHECK(key_convention(keys) == convention);
        for (std::size_t i = 0; i < keys.size() && i < parameters.size(); ++i)
            CHECK(parameters[i].array.values<std::int32_t>()[1] == values[i]);
    }
}

TEST_CASE("zip64: an archive with more than 65535 members", "[npz][numpy]") {
    TempDir dir;
    auto output = run_script(dir, R"PY(
count = 65536 + 100
header = npy_bytes(np.zeros((1,), '<u4'))[:-4]
order = np.random.default_rng(3).permutation(count)
with zipfile.ZipFile(path('many.npz'), 'w') as zf:
    for i in order:
        zf.writestr('%d.npy' % i, header + struct.pack('<I', int(i)))
data = open(path('many.npz'), 'rb').read()
eocd = data.rfind(b'PK\x05\x06')
assert data[eocd - 20:eocd - 16] == b'PK\x06\x07', 'zipfile wrote no zip64 locator'
assert struct.unpack('<H', data[eocd + 10:eocd + 12])[0] == 0xFFFF
emit('COUNT', count)
)PY");
    auto counts = records(output, "COUNT");
    REQUIRE(counts.size() == 1);
    const std::size_t count = std::stoul(counts[0][0]);

    Reader reader(dir / "many.npz");
    REQUIRE(reader.members().size() == count);
    bool keys_in_order = true;
    for (std::size_t i = 0; i < count; ++i)
        keys_in_order &= reader.members()[i].key == std::to_string(i);
    CHECK(keys_in_order);
    ParameterSet parameters = reader.read_all();
    REQUIRE(parameters.size() == count);
    CHECK(parameters.key_convention() == KeyConvention::numbered);
    bool values_match = true;
    for (std::size_t i = 0; i < count; ++i)
        values_match &= parameters[i].array.shape() == Shape{1} &&
                        parameters[i].array.values<std::uint32_t>()[0] == i;
    CHECK(values_match);
    CHECK_NOTHROW(reader.verify(count - 1));
}

// ---------------------------------------------------------------------------------------
// fedcli writes, numpy reads

TEST_CASE("numpy reads what write_npz and write_npy write", "[npz][numpy]") {
    TempDir dir;
    std::mt19937_64 random(42);
    const std::vector<std::pair<std::string, Shape>> shapes = {
        {"scalar", {}}, {"empty", {0}}, {"empty2d", {3, 0}}, {"vector", {7}}, {"cube", {2, 3, 4}},
    };
    ParameterSet parameters;
    std::string manifest;
    for (DType dtype : k_all_dtypes) {
        for (const auto& [label, shape] : shapes) {
            std::string key = std::string(dtype_name(dtype)) + "." + label;
            Array array = random_array(dtype, shape, random);
            write_file(dir / (key + ".raw"), bytes_of(array));
            manifest += key + "\t" + std::string(dtype_descr(dtype)) + "\t" + shape_text(shape) +
                        "\t" + key + ".raw\n";
            write_npy(dir / ("npy_" + key + ".npy"), array);
            parameters.add(key, std::move(array));
        }
    }
    parameters.add("conv1.weight", random_array(DType::float32, {16, 3, 5, 5}, random));
    manifest += "conv1.weight\t<f4\t16,3,5,5\tconv1.weight.raw\n";
    write_file(dir / "conv1.weight.raw", bytes_of(*parameters.find("conv1.weight")));
    write_npy(dir / "npy_conv1.weight.npy", *parameters.find("conv1.weight"));
    write_file(dir / "arrays.tsv", manifest);

    std::string files;
    for (auto compression : {Compression::stored, Compression::deflate}) {
        for (bool zip64 : {false, true}) {
            std::string name =
                std::string(compression == Compression::stored ? "stored" : "deflate") +
                (zip64 ? "_zip64" : "") + ".npz";
            WriteOptions options;
            options.compression = compression;
            options.force_zip64 = zip64;
            write_npz(dir / name, parameters, options);
            files += name + "\t" + (compression == Compression::stored ? "stored" : "deflate") +
                     "\t" + (zip64 ? "1" : "0") + "\n";
        }
    }
    WriteOptions level9;
    level9.compression = Compression::deflate;
    level9.deflate_level = 9;
    write_npz(dir / "deflate9.npz", parameters, level9);
    files += "deflate9.npz\tdeflate\t0\n";
    write_file(dir / "files.tsv", files);

    ParameterSet numbered;
    for (std::int64_t i = 0; i < 12; ++i)
        numbered.add(std::to_string(i), filled<std::int64_t>(DType::int64, {3}, i));
    write_npz(dir / "numbered.npz", numbered);

    run_script(dir, R"PY(
entries = [line.split('\t') for line in open(path('arrays.tsv')).read().splitlines()]
keys = [e[0] for e in entries]

def check(a, entry, where):
    key, descr, shape, raw = entry
    expected_shape = tuple(int(d) for d in shape.split(',')) if shape else ()
    assert a.dtype.str == descr, (where, key, a.dtype.str, descr)
    assert a.shape == expected_shape, (where, key, a.shape, expected_shape)
    assert a.tobytes() == open(path(raw), 'rb').read(), (where, key, 'values differ')

def extra_ids(extra):
    ids = []
    while len(extra) >= 4:
        header_id, size = struct.unpack('<HH', extra[:4])
        ids.append(header_id)
        extra = extra[4 + size:]
    return ids

for file, compression, zip64 in [l.split('\t') for l in open(path('files.tsv')).read().splitlines()]:
    with np.load(path(file)) as z:
        assert z.files == keys, (file, z.files)
        for e in entries:
            check(z[e[0]], e, file)
    data = open(path(file), 'rb').read()
    with zipfile.ZipFile(path(file)) as zf:
        assert zf.testzip() is None, file
        infos = zf.infolist()
        assert [zi.filename for zi in infos] == [k + '.npy' for k in keys], file
        for zi in infos:
            assert zi.date_time == (1980, 1, 1, 0, 0, 0), (file, zi.filename, zi.date_time)
            wanted = zipfile.ZIP_DEFLATED if compression == 'deflate' else zipfile.ZIP_STORED
            assert zi.compress_type == wanted, (file, zi.filename, zi.compress_type)
            offset = zi.header_offset
            name_len, extra_len = struct.unpack('<HH', data[offset + 26:offset + 30])
            local_extra = data[offset + 30 + name_len:offset + 30 + name_len + extra_len]
            member_zip64 = 1 in extra_ids(local_extra) or 1 in extra_ids(zi.extra)
            assert member_zip64 == (zip64 == '1'), (file, zi.filename, 'zip64 member record')
            # Whatever the writer put in the local header, it agrees with the central one.
            assert data[offset + 26:offset + 28] == struct.pack('<H', len(zi.filename.encode()))
    eocd = data.rfind(b'PK\x05\x06')
    assert eocd == len(data) - 22, (file, 'archive comment or trailing bytes')
    has_locator = data[eocd - 20:eocd - 16] == b'PK\x06\x07'
    assert has_locator == (zip64 == '1'), (file, 'zip64 end of central directory')

for e in entries:
    file = path('npy_%s.npy' % e[0])
    a = np.load(file)
    check(a, e, file)
    raw = open(file, 'rb').read()
    assert raw == npy_bytes(a), (file, 'differs from np.save')
    assert raw[6:8] == b'\x01\x00', (file, 'not NPY 1.0')

with np.load(path('numbered.npz')) as z:
    assert z.files == [str(i) for i in range(12)], z.files
    for i in range(12):
        assert z[str(i)].dtype.str == '<i8' and (z[str(i)] == i).all() and z[str(i)].shape == (3,)
print('numpy agrees')
)PY");

    // Same parameters, same bytes; and each file reads back in C++ too.
    ParameterSet again = read_npz(dir / "deflate_zip64.npz");
    REQUIRE(again.size() == parameters.size());
    for (std::size_t i = 0; i < again.size(); ++i) {
        INFO("key " << parameters[i].name);
        CHECK(again[i].name == parameters[i].name);
        CHECK(same_array(again[i].array, parameters[i].array));
    }
}

TEST_CASE("zip64: write_npz with more than 65535 members", "[npz][numpy]") {
    TempDir dir;
    const std::size_t count = 65536 + 50;
    ParameterSet parameters;
    for (std::size_t i = 0; i < count; ++i)
        parameters.add(std::to_string(i),
                       filled<std::uint32_t>(DType::uint32, {1}, static_cast<std::uint32_t>(i)));
    write_npz(dir / "many.npz", parameters);

    run_script(dir, R"PY(
count = 65536 + 50
data = open(path('many.npz'), 'rb').read()
eocd = data.rfind(b'PK\x05\x06')
assert data[eocd - 20:eocd - 16] == b'PK\x06\x07', 'no zip64 end of central directory locator'
zip64_eocd = struct.unpack('<Q', data[eocd - 12:eocd - 4])[0]
assert data[zip64_eocd:zip64_eocd + 4] == b'PK\x06\x06'
assert struct.unpack('<Q', data[zip64_eocd + 32:zip64_eocd + 40])[0] == count
with zipfile.ZipFile(path('many.npz')) as zf:
    names = zf.namelist()
    assert names == ['%d.npy' % i for i in range(count)], 'member names/order'
    for i in list(range(0, count, 97)) + [count - 1]:
        assert struct.unpack('<I', zf.read(names[i])[-4:])[0] == i, i
    for i in [0, count - 1]:
        with zf.open(names[i]) as f:
            a = np.lib.format.read_array(f)
        assert a.dtype.str == '<u4' and a.tolist() == [i], (i, a)
)PY");
}

// ---------------------------------------------------------------------------------------
// C++ round trips

TEST_CASE("write then read round trip with random data", "[npz]") {
    TempDir dir;
    std::mt19937_64 random(7);
    ParameterSet parameters;
    for (DType dtype : k_all_dtypes) {
        int index = 0;
        for (const Shape& shape : {Shape{}, Shape{0}, Shape{5, 0, 2}, Shape{13}, Shape{3, 4, 5}}) {
            parameters.add(std::string(dtype_name(dtype)) + "." + std::to_string(index++),
                           random_array(dtype, shape, random));
        }
    }
    // 3 MiB arrays: Buffer's mmap path on both sides.
    parameters.add("big.float32", random_array(DType::float32, {1024, 768}, random));
    parameters.add("big.uint8", random_array(DType::uint8, {(std::size_t{3} << 20) + 5}, random));
    Array zeros(DType::float64, {512, 1024});
    std::memset(zeros.data(), 0, zeros.byte_size());
    parameters.add("big.zeros", std::move(zeros));

    for (auto compression : {Compression::stored, Compression::deflate}) {
        for (bool zip64 : {false, true}) {
            INFO("compression " << (compression == Compression::deflate) << " zip64 " << zip64);
            WriteOptions options;
            options.compression = compression;
            options.force_zip64 = zip64;
            auto file = dir / "model.npz";
            write_npz(file, parameters, options);

            Reader reader(file);
            REQUIRE(reader.members().size() == parameters.size());
            ParameterSet back = reader.read_all();
            REQUIRE(back.size() == parameters.size());
            for (std::size_t i = 0; i < back.size(); ++i) {
                INFO("key " << parameters[i].name);
                CHECK(back[i].name == parameters[i].name);
                CHECK(reader.members()[i].member_name == parameters[i].name + ".npy");
                CHECK(reader.members()[i].compression == compression);
                CHECK(same_array(back[i].array, parameters[i].array));
                CHECK_NOTHROW(reader.verify(i));
            }
            if (compression == Compression::deflate) {
                // 4 MiB of zeros must really have been compressed.
                auto index = reader.find("big.zeros");
                REQUIRE(index);
                CHECK(reader.members()[*index].compressed_size < 100000);
            }
        }
    }

    for (const auto& entry : parameters) {
        if (entry.name.rfind("big.", 0) != 0 && entry.name.rfind("int16", 0) != 0) continue;
        INFO("npy " << entry.name);
        auto file = dir / "single.npy";
        write_npy(file, entry.array);
        CHECK(same_array(read_npy(file), entry.array));
        ParameterSet one = read_parameters(file);
        REQUIRE(one.size() == 1);
        CHECK(one[0].name == "single");
        CHECK(same_array(one[0].array, entry.array));
    }

    // A header longer than NPY 1.0 allows: written as 2.0, read back.
    Array many_dims(DType::int8, Shape(22000, 1));
    many_dims.values<std::int8_t>()[0] = -3;
    write_npy(dir / "dims.npy", many_dims);
    std::string raw = read_file(dir / "dims.npy");
    CHECK(raw[6] == '\x02');
    Array dims_back = read_npy(dir / "dims.npy");
    CHECK(same_array(dims_back, many_dims));
}

TEST_CASE("write_npz is deterministic and atomic", "[npz]") {
    TempDir dir;
    std::mt19937_64 random(9);
    ParameterSet parameters;
    parameters.add("0", random_array(DType::float32, {100, 10}, random));
    parameters.add("1", random_array(DType::float32, {10}, random));
    for (auto compression : {Compression::stored, Compression::deflate}) {
        WriteOptions options;
        options.compression = compression;
        write_npz(dir / "a.npz", parameters, options);
        write_npz(dir / "b.npz", parameters, options);
        CHECK(read_file(dir / "a.npz") == read_file(dir / "b.npz"));
        // No temporary file is left behind.
        CHECK(files_in(dir.path()) == std::vector<std::string>{"a.npz", "b.npz"});
    }

    // Overwriting replaces the file.
    ParameterSet other;
    other.add("only", filled<std::int32_t>(DType::int32, {2}, 5));
    write_npz(dir / "a.npz", other);
    CHECK(keys_of(read_npz(dir / "a.npz")) == std::vector<std::string>{"only"});
    write_npy(dir / "x.npy", other[0].array);
    CHECK(files_in(dir.path()) == std::vector<std::string>{"a.npz", "b.npz", "x.npy"});

    // A folder that does not exist: an error naming the path, and nothing written.
    auto missing = dir / "missing" / "model.npz";
    auto outcome = outcome_of([&] { write_npz(missing, parameters); });
    check_error_naming(outcome, {"model.npz"});
    outcome = outcome_of([&] { write_npy(dir / "missing" / "model.npy", other[0].array); });
    check_error_naming(outcome, {"model.npy"});
    CHECK_FALSE(std::filesystem::exists(dir / "missing"));
}

TEST_CASE("Reader on a descriptor, and from several threads", "[npz]") {
    TempDir dir;
    std::mt19937_64 random(3);
    ParameterSet parameters;
    for (int i = 0; i < 8; ++i)
        parameters.add("layer" + std::to_string(i),
                       random_array(DType::float64, {100, 50}, random));
    WriteOptions options;
    options.compression = Compression::deflate;
    write_npz(dir / "model.npz", parameters, options);

    int fd = ::open((dir / "model.npz").c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    {
        Reader reader(fd, "update from client c3", {});
        CHECK(reader.display_name() == "update from client c3");
        REQUIRE(reader.members().size() == parameters.size());

        std::atomic<int> mismatches{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < 8; ++t) {
            threads.emplace_back([&, t] {
                for (int round = 0; round < 4; ++round) {
                    for (std::size_t k = 0; k < parameters.size(); ++k) {
                        std::size_t i = (k + t) % parameters.size();
                        try {
                            if (!same_array(reader.read(i), parameters[i].array)) ++mismatches;
                            reader.verify(i);
                        } catch (...) {
                            ++mismatches;
                        }
                    }
                }
            });
        }
        for (auto& thread : threads) thread.join();
        CHECK(mismatches == 0);
    }
    // Not owned: still open after the Reader is gone.
    CHECK(::fcntl(fd, F_GETFD) != -1);
    ::close(fd);

    write_file(dir / "garbage.bin", "not an npz file at all");
    fd = ::open((dir / "garbage.bin").c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    auto outcome = outcome_of([&] { Reader reader(fd, "update from client c4"); });
    check_error_naming(outcome, {"update from client c4"});
    CHECK(::fcntl(fd, F_GETFD) != -1);
    ::close(fd);
}

// ---------------------------------------------------------------------------------------
// Hostile input

TEST_CASE("bad input throws fedcli::Error naming the file and member", "[npz][numpy]") {
    TempDir dir;
    auto output = run_script(dir, R"PY(
rng = np.random.default_rng(13)
culprit = 'conv2.weight'   # the bad member in every file; no file name contains it
good_array = sample('<f4', (4, 8), rng)
good = npy_bytes(good_array)
healthy = npy_bytes(sample('<f8', (3,), rng))

def bad(file, member=culprit, limit=''):
    emit('BAD', file, member, limit)

def fine(file, limit=''):
    emit('GOOD', file, limit)

def member(data, **fields):
    return dict(name=culprit + '.npy', data=data, **fields)

# Hand-built zips that are valid: proof that raw_zip itself is sound.
raw_zip('control_stored.npz', [dict(name='fc.bias.npy', data=healthy), member(good)])
raw_zip('control_deflate.npz', [member(deflate(good), method=8, crc=zlib.crc32(good),
                                       usize=len(good))])
# A streaming writer: sizes and CRC in data descriptors after the data (flag bit 3).
class Unseekable(io.RawIOBase):
    def __init__(self, f):
        self.f = f
    def writable(self):
        return True
    def write(self, b):
        return self.f.write(b)
    def seekable(self):
        return False
with open(path('streamed.npz'), 'wb') as raw:
    with zipfile.ZipFile(Unseekable(raw), 'w', zipfile.ZIP_DEFLATED) as zf:
        zf.writestr('fc.bias.npy', healthy)
        zf.writestr(culprit + '.npy', good)
assert open(path('streamed.npz'), 'rb').read()[6] & 0x08, 'no data descriptor'
for file in ['control_stored.npz', 'control_deflate.npz', 'streamed.npz']:
    assert np.load(path(file))[culprit].tobytes() == good_array.tobytes()
    fine(file)
    ref('REF', file, culprit, good_array)

# Truncated numpy files, cut at several points.
np.savez(path('base.npz'), **{culprit: sample('<f8', (16, 16), rng), 'fc.bias': sample('<f8', (16,), rng)})
data = open(path('base.npz'), 'rb').read()
cd_offset = struct.unpack('<I', data[-6:-2])[0]
with zipfile.ZipFile(path('base.npz')) as zf:
    first_data = local_data_offset(data, zf.infolist()[0].header_offset)
cuts = {'empty': 0, 'signature': 4, 'local_header': 20, 'npy_header': first_data + 20,
        'data': first_data + 1000, 'before_central': cd_offset, 'central': cd_offset + 30,
        'eocd': len(data) - 10, 'last_byte': len(data) - 1}
for label, cut in cuts.items():
    with open(path('truncated_%s.npz' % label), 'wb') as f:
        f.write(data[:cut])
    bad('truncated_%s.npz' % label, '')
fine('base.npz')

with open(path('not_a_zip.npz'), 'wb') as f:
    f.write(b'this is not a zip file\n' * 20)
bad('not_a_zip.npz', '')
with open(path('random_bytes.npz'), 'wb') as f:
    f.write(rng.bytes(3000))
bad('random_bytes.npz', '')
# An end of central directory record pointing outside the file.
with open(path('central_outside.npz'), 'wb') as f:
    f.write(data[:-6] + struct.pack('<I', len(data) + 1000) + data[-2:])
bad('central_outside.npz', '')

# Members that are not (valid) NPY.
raw_zip('bad_magic.npz', [dict(name='fc.bias.npy', data=healthy), member(b'\x93NUMPZ' + good[6:])])
bad('bad_magic.npz')
with zipfile.ZipFile(path('not_npy.npz'), 'w') as zf:
    zf.writestr(culprit + '.npy', b'hello world, this is text and not an array')
bad('not_npy.npz')
raw_zip('npy_header_cut.npz', [member(good[:40])])
bad('npy_header_cut.npz')
raw_zip('npy_header_length_lies.npz', [member(good[:8] + b'\xff\xff' + good[10:])])
bad('npy_header_length_lies.npz')
raw_zip('npy_version_4.npz', [member(good[:6] + b'\x04' + good[7:])])
bad('npy_version_4.npz')
raw_zip('empty_member.npz', [member(b'')])
bad('empty_member.npz')

# Headers that lie about the shape.
data32 = sample('<f4', (32,), rng).tobytes()
raw_zip('shape_bigger.npz', [member(npy_header('<f4', (64,)) + data32)])
bad('shape_bigger.npz')
raw_zip('shape_smaller.npz', [member(npy_header('<f4', (16,)) + data32)])
bad('shape_smaller.npz')
lie = npy_header('<f4', (64,)) + data32
raw_zip('shape_bigger_deflate.npz', [member(deflate(lie), method=8, crc=zlib.crc32(lie), usize=len(lie))])
bad('shape_bigger_deflate.npz')
raw_zip('shape_overflow.npz', [member(npy_header('<f4', (4294967296, 4294967296)) + data32)])
bad('shape_overflow.npz')
raw_zip('shape_huge.npz', [member(npy_header('<f4', (2**40,)) + data32)])
bad('shape_huge.npz')

# dtypes fedcli does not support.
unsupported = {'object': np.array([{'a': 1}, None], dtype=object),
               'complex': np.zeros(3, '<c8'),
               'structured': np.zeros(3, dtype=[('a', '<i4'), ('b', '<f8')]),
               'unicode': np.array(['abc', 'de'], dtype='<U3'),
               'bytes': np.array([b'ab'], dtype='S2'),
               'datetime': np.zeros(2, '<M8[s]'),
               'longdouble': np.zeros(2, np.longdouble)}
for label, a in unsupported.items():
    np.savez(path('dtype_%s.npz' % label), **{'fc.bias': np.zeros(2), culprit: a})
    bad('dtype_%s.npz' % label)

# Duplicate keys (zipfile warns but writes both).
with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    with zipfile.ZipFile(path('duplicate.npz'), 'w') as zf:
        zf.writestr(culprit + '.npy', good)
        zf.writestr('fc.bias.npy', healthy)
        zf.writestr(culprit + '.npy', good)
bad('duplicate.npz')

# CRC mismatches: a flipped data byte in a stored numpy member; a wrong CRC on deflate.
np.savez(path('crc_stored.npz'), **{'fc.bias': sample('<f8', (8,), rng), culprit: good_array})
data = bytearray(open(path('crc_stored.npz'), 'rb').read())
with zipfile.ZipFile(path('crc_stored.npz')) as zf:
    zi = zf.getinfo(culprit + '.npy')
    flip_at = local_data_offset(data, zi.header_offset) + zi.file_size - 3
data[flip_at] ^= 0x40
open(path('crc_stored.npz'), 'wb').write(bytes(data))
bad('crc_stored.npz')
emit('FLIPPED', 'crc_stored.npz', culprit, len(good) - 3)
raw_zip('crc_deflate.npz', [member(deflate(good), method=8, crc=zlib.crc32(good) ^ 0xFFFFFFFF, usize=len(good))])
bad('crc_deflate.npz')

# Corrupt or cut deflate streams.
stream = bytearray(deflate(good))
stream[len(stream) // 2:len(stream) // 2 + 8] = b'\xff' * 8
raw_zip('deflate_corrupt.npz', [member(bytes(stream), method=8, crc=zlib.crc32(good), usize=len(good))])
bad('deflate_corrupt.npz')
stream = deflate(good)
raw_zip('deflate_cut.npz', [member(stream[:len(stream) // 2], method=8, crc=zlib.crc32(good), usize=len(good))])
bad('deflate_cut.npz')
# The stream ends before the declared size (header consistent with the declared size).
short = npy_header('|u1', (1124,)) + bytes(1024)
raw_zip('deflate_short.npz', [member(deflate(short), method=8, crc=zlib.crc32(short + bytes(100)), usize=len(short) + 100)])
bad('deflate_short.npz')

# Zip bombs: declared sizes over the limit, and data inflating beyond its declared size.
np.savez_compressed(path('bomb_declared.npz'), **{culprit: np.zeros(2**19, '<f4')})
assert os.path.getsize(path('bomb_declared.npz')) < 20000
bad('bomb_declared.npz', '', str(2**20))
fine('bomb_declared.npz')
np.savez_compressed(path('bomb_sum.npz'), **{'fc.bias': np.zeros(150000, '<f4'), culprit: np.zeros(150000, '<f4')})
bad('bomb_sum.npz', '', str(2**20))
fine('bomb_sum.npz', str(2**21))
declared_4g = npy_header('|u1', (2**32 - 200,))
raw_zip('bomb_declared_4g.npz', [member(deflate(declared_4g + bytes(10000)), method=8, crc=0, usize=2**32 - 200 + len(declared_4g))])
bad('bomb_declared_4g.npz', '', str(2**26))
honest = npy_header('|u1', (1024,)) + bytes(1024)
raw_zip('bomb_inflates_beyond.npz', [member(deflate(honest + bytes(4 << 20)), method=8, crc=zlib.crc32(honest), usize=len(honest))])
bad('bomb_inflates_beyond.npz')

# Other zip-level lies.
raw_zip('size_beyond_file.npz', [member(good, csize=len(good) + 10000, usize=len(good) + 10000)])
bad('size_beyond_file.npz')
raw_zip('local_offset_outside.npz', [member(good, offset=10**6)])
bad('local_offset_outside.npz')
raw_zip('bzip2.npz', [member(good, method=12)])
bad('bzip2.npz')
raw_zip('encrypted.npz', [member(good, flags=1)])
bad('encrypted.npz')

# Members whose names do not end in .npy.
raw_zip('not_dot_npy.npz', [dict(name='fc.bias.npy', data=healthy), dict(name=culprit + '.txt', data=good)])
bad('not_dot_npy.npz')
raw_zip('no_extension.npz', [dict(name=culprit, data=good)])
bad('no_extension.npz')

# Bad .npy files for read_npy.
open(path('npy_empty.npy'), 'wb').close()
open(path('npy_truncated.npy'), 'wb').write(good[:-3])
open(path('npy_header_cut.npy'), 'wb').write(good[:50])
open(path('npy_bad_magic.npy'), 'wb').write(b'\x93NUMPZ' + good[6:])
open(path('npy_shape_bigger.npy'), 'wb').write(npy_header('<f4', (64,)) + data32)
open(path('npy_shape_smaller.npy'), 'wb').write(npy_header('<f4', (16,)) + data32)
open(path('npy_shape_huge.npy'), 'wb').write(npy_header('<f4', (2**40,)) + data32)
open(path('npy_shape_overflow.npy'), 'wb').write(npy_header('<f4', (2**32, 2**32)) + data32)
np.save(path('npy_complex.npy'), np.zeros(3, '<c8'))
np.save(path('npy_object.npy'), np.array([None, 1], dtype=object), allow_pickle=True)
np.save(path('npy_unicode.npy'), np.array(['abc'], dtype='<U3'))
for file in ['npy_empty.npy', 'npy_truncated.npy', 'npy_header_cut.npy', 'npy_bad_magic.npy',
             'npy_shape_bigger.npy', 'npy_shape_smaller.npy', 'npy_shape_huge.npy',
             'npy_shape_overflow.npy',
             'npy_complex.npy', 'npy_object.npy', 'npy_unicode.npy']:
    emit('BADNPY', file)
)PY");

    auto good_files = records(output, "GOOD");
    auto bad_files = records(output, "BAD");
    auto bad_npy = records(output, "BADNPY");
    REQUIRE(good_files.size() == 6);
    REQUIRE(bad_files.size() == 46);
    REQUIRE(bad_npy.size() == 11);

    auto options_for = [](const std::string& limit) {
        ReadOptions options;
        if (!limit.empty()) options.max_total_bytes = std::stoull(limit);
        return options;
    };
    for (const auto& row : good_files) {
        INFO("good file " << row[0] << " limit " << row[1]);
        CHECK_NOTHROW(read_everything(dir / row[0], options_for(row[1])));
    }
    for (const auto& row : records(output, "REF")) {
        INFO("good file " << row[0]);
        Reader reader(dir / row[0]);
        auto index = reader.find(row[1]);
        REQUIRE(index);
        check_against_reference(reader.read(*index), row, dir);
    }
    for (const auto& row : bad_files) {
        const auto& file = row[0];
        INFO("bad file " << file << (row[1].empty() ? "" : ", member " + row[1]));
        ReadOptions options = options_for(row[2]);
        check_error_naming(outcome_of([&] { read_everything(dir / file, options); }),
                           {file, row[1]});
        check_error_naming(outcome_of([&] { read_npz(dir / file, options); }), {file, row[1]});
        check_error_naming(outcome_of([&] { read_parameters(dir / file, options); }),
                           {file, row[1]});
    }
    for (const auto& row : bad_npy) {
        INFO("bad npy " << row[0]);
        check_error_naming(outcome_of([&] { read_npy(dir / row[0]); }), {row[0]});
        check_error_naming(outcome_of([&] { read_parameters(dir / row[0]); }), {row[0]});
    }

    // The CRC check is what catches the flipped byte: verify() always checks, read() only
    // with verify_crc, and without it the flipped byte is returned as is.
    auto flipped = records(output, "FLIPPED");
    REQUIRE(flipped.size() == 1);
    const auto crc_file = dir / flipped[0][0];
    ReadOptions no_crc;
    no_crc.verify_crc = false;
    Reader unchecked(crc_file, no_crc);
    auto index = unchecked.find(flipped[0][1]);
    REQUIRE(index);
    Array as_stored;
    CHECK_NOTHROW(as_stored = unchecked.read(*index));
    CHECK(as_stored.shape() == Shape{4, 8});
    check_error_naming(outcome_of([&] { unchecked.verify(*index); }), {flipped[0][1]});
    Reader checked(crc_file);
    check_error_naming(outcome_of([&] { checked.read(*index); }), {flipped[0][1]});
    check_error_naming(outcome_of([&] { checked.verify(*index); }), {flipped[0][1]});
    CHECK_NOTHROW(checked.read(1 - *index));
}
