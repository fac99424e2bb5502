// Tests for core/aggregate (and the npz helpers it brought: npz::MappedNpz, float16).
//
// Small cases are computed by hand and checked exactly. The FedOpt family is checked
// against a numpy implementation of the same formulas run at test time, over several rounds
// and with a save/load of the server state in the middle. FedAvg is checked for arrival-
// order independence over every permutation of its updates, and every rejection rule is
// exercised with the exact message it produces.
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/aggregate/aggregator.hpp"
#include "core/aggregate/diff.hpp"
#include "core/aggregate/internal.hpp"
#include "core/error.hpp"
#include "core/npz/half.hpp"
#include "core/npz/mapped.hpp"
#include "core/npz/npz.hpp"
#include "tests/unit/support.hpp"

namespace {

using namespace fedcli;
using namespace fedcli::aggregate;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using fedcli::test::run_python;
using fedcli::test::TempDir;
using fedcli::test::write_file;
using npz::Array;
using npz::DType;
using npz::ParameterSet;
using npz::Shape;

using Model = std::shared_ptr<const ParameterSet>;

template <class T>
Array make_array(Shape shape, const std::vector<T>& values) {
    Array array(npz::dtype_of<T>(), std::move(shape));
    REQUIRE(values.size() == array.size());
    if (!values.empty()) std::memcpy(array.data(), values.data(), values.size() * sizeof(T));
    return array;
}

Array make_half(Shape shape, const std::vector<double>& values) {
    Array array(DType::float16, std::move(shape));
    REQUIRE(values.size() == array.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        std::uint16_t bits = npz::double_to_half(values[i]);
        std::memcpy(array.data() + 2 * i, &bits, 2);
    }
    return array;
}

template <class T>
std::vector<T> values_of(const ParameterSet& set, const std::string& name) {
    const Array* array = set.find(name);
    REQUIRE(array != nullptr);
    auto span = array->values<T>();
    return {span.begin(), span.end()};
}

std::vector<double> half_values(const ParameterSet& set, const std::string& name) {
    const Array* array = set.find(name);
    REQUIRE(array != nullptr);
    REQUIRE(array->dtype() == DType::float16);
    std::vector<double> out(array->size());
    for (std::size_t i = 0; i < out.size(); ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, array->data() + 2 * i, 2);
        out[i] = npz::half_to_double(bits);
    }
    return out;
}

void add_all(ParameterSet&) {}

template <class... Rest>
void add_all(ParameterSet& set, std::string name, Array array, Rest&&... rest) {
    set.add(std::move(name), std::move(array));
    add_all(set, std::forward<Rest>(rest)...);
}

/// set_of("w", array, "b", array2, ...)
template <class... Items>
ParameterSet set_of(Items&&... items) {
    ParameterSet set;
    add_all(set, std::forward<Items>(items)...);
    return set;
}

ParameterSet copy_of(const ParameterSet& set) {
    ParameterSet copy;
    for (const auto& entry : set) copy.add(entry.name, entry.array.clone());
    return copy;
}

UpdateInfo info(std::uint64_t examples, std::string client = "") {
    UpdateInfo update;
    update.client = std::move(client);
    update.metadata["num_examples"] = examples;
    return update;
}

bool same_bytes(const ParameterSet& a, const ParameterSet& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i].name != b[i].name || a[i].array.dtype() != b[i].array.dtype() ||
            a[i].array.shape() != b[i].array.shape() ||
            std::memcmp(a[i].array.data(), b[i].array.data(), a[i].array.byte_size()) != 0) {
            return false;
        }
    }
    return true;
}

/// Distance in units in the last place between two float32 values of the same sign.
std::int64_t ulp_distance(float a, float b) {
    auto order = [](float x) {
        auto bits = std::bit_cast<std::int32_t>(x);
        return bits < 0 ? std::int64_t{std::numeric_limits<std::int32_t>::min()} - bits
                        : std::int64_t{bits};
    };
    return std::llabs(order(a) - order(b));
}

/// A model with a float32 matrix, a float64 vector, a float16 vector and a counter.
Model small_model() {
    auto model = std::make_shared<ParameterSet>();
    model->add("w", make_array<float>({2, 2}, {0, 0, 0, 0}));
    model->add("b", make_array<double>({3}, {0, 0, 0}));
    model->add("h", make_half({2}, {0, 0}));
    model->add("num_batches_tracked", make_array<std::int64_t>({}, {100}));
    return model;
}

Model small_update(std::vector<float> w, std::vector<double> b, std::vector<double> h,
                   std::int64_t counter) {
    auto model = std::make_shared<ParameterSet>();
    model->add("w", make_array<float>({2, 2}, w));
    model->add("b", make_array<double>({3}, b));
    model->add("h", make_half({2}, h));
    model->add("num_batches_tracked", make_array<std::int64_t>({}, {counter}));
    return model;
}

std::vector<float> random_floats(std::mt19937_64& rng, std::size_t n, double scale = 1.0) {
    std::normal_distribution<float> normal(0.0f, static_cast<float>(scale));
    std::vector<float> out(n);
    for (auto& value : out) value = normal(rng);
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// float16

TEST_CASE("float16 conversions match numpy bit for bit", "[aggregate][half]") {
    TempDir dir;
    // Every half pattern widened, and a set of doubles (random, ties, subnormals, overflow
    // edges, specials) narrowed, by numpy.
    run_python(R"PY(
import sys, numpy as np
out = sys.argv[1]
bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
np.asarray(bits.view(np.float16).astype(np.float32)).tofile(out + '/widened.f32')
rng = np.random.default_rng(7)
halves = bits.view(np.float16).astype(np.float64)
halves = halves[np.isfinite(halves)]
mids = (np.sort(halves)[:-1] + np.sort(halves)[1:]) / 2
special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e300, -1e300, 2.0**-24,
                    2.0**-25, 2.0**-25 * 1.0000001, 3 * 2.0**-26, 2.0**-14, 2.0**-14 * (1 - 2.0**-12),
                    np.inf, -np.inf, np.nan, 1/3, 2/3, 0.1])
values = np.concatenate([special, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                         rng.standard_normal(20000) * 100, rng.standard_normal(20000) * 1e-5])
values.tofile(out + '/values.f64')
values.astype(np.float16).view(np.uint16).tofile(out + '/narrowed.u16')
)PY",
               {dir.path().string()});
    auto read_all = [&](const std::string& name) { return fedcli::test::read_file(dir / name); };
    std::string widened = read_all("widened.f32");
    REQUIRE(widened.size() == 65536 * 4);
    std::size_t widen_mismatches = 0;
    for (std::uint32_t h = 0; h < 65536; ++h) {
        float expected;
        std::memcpy(&expected, widened.data() + 4 * h, 4);
        float actual = npz::half_to_float(static_cast<std::uint16_t>(h));
        if (std::bit_cast<std::uint32_t>(expected) != std::bit_cast<std::uint32_t>(actual)) {
            ++widen_mismatches;
        }
    }
    CHECK(widen_mismatches == 0);

    std::string values = read_all("values.f64");
    std::string narrowed = read_all("narrowed.u16");
    std::size_t count = values.size() / 8;
    REQUIRE(narrowed.size() == count * 2);
    std::size_t narrow_mismatches = 0;
    for (std::size_t i = 0; i < count; ++i) {
        double value;
        std::uint16_t expected;
        std::memcpy(&value, values.data() + 8 * i, 8);
        std::memcpy(&expected, narrowed.data() + 2 * i, 2);
        std::uint16_t actual = npz::double_to_half(value);
        if (actual != expected) {
            ++narrow_mismatches;
            UNSCOPED_INFO("value " << value << ": numpy " << expected << ", fedcli " << actual);
        }
    }
    CHECK(narrow_mismatches == 0);
    CHECK(count > 100000);
}

// ---------------------------------------------------------------------------------------
// MappedNpz

TEST_CASE("MappedNpz serves stored members from the mapping and others via Reader",
          "[aggregate][mapped]") {
    TempDir dir;
    run_python(R"PY(
import sys, numpy as np
out = sys.argv[1]
a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
np.savez(out + '/stored.npz', a=a, big=a.astype('>f4'), fortran=np.asfortranarray(a), n=np.int64(5))
np.savez_compressed(out + '/deflate.npz', a=a)
np.save(out + '/single.npy', a)
)PY",
               {dir.path().string()});
    std::vector<float> expected(12);
    for (int i = 0; i < 12; ++i) expected[i] = static_cast<float>(i) / 7.0f;

    auto check = [&](const npz::MappedNpz& file, const std::string& key, bool mapped) {
        auto index = file.find(key);
        REQUIRE(index);
        CHECK(file.is_mapped(*index) == mapped);
        auto bytes = file.data(*index);
        REQUIRE(bytes.size() == 48);
        std::vector<float> actual(12);
        std::memcpy(actual.data(), bytes.data(), 48);
        CHECK(actual == expected);
        CHECK(file.read(*index).shape() == Shape{3, 4});
    };
    npz::MappedNpz stored(dir / "stored.npz");
    check(stored, "a", true);
    check(stored, "big", false);
    check(stored, "fortran", false);
    npz::MappedNpz deflate(dir / "deflate.npz");
    check(deflate, "a", false);
    npz::MappedNpz single(dir / "single.npy");
    CHECK(single.members().size() == 1);
    check(single, "single", true);

    // A flipped data byte in a stored member is caught by the CRC check while mapping.
    std::string bytes = fedcli::test::read_file(dir / "stored.npz");
    auto index = stored.find("a");
    std::size_t at = static_cast<std::size_t>(stored.members()[*index].data_offset +
                                              stored.members()[*index].npy_header_size + 5);
    bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
    write_file(dir / "corrupt.npz", bytes);
    REQUIRE_THROWS_WITH(npz::MappedNpz(dir / "corrupt.npz"), Contains("CRC-32 mismatch"));
    npz::ReadOptions trusting;
    trusting.verify_crc = false;
    CHECK_NOTHROW(npz::MappedNpz(dir / "corrupt.npz", trusting));
    REQUIRE_THROWS_WITH(npz::MappedNpz(dir / "corrupt.npz", {}, npz::Residency::release),
                        Contains("CRC-32 mismatch"));
    // Released pages stay readable: they refault from the page cache.
    npz::MappedNpz lean(dir / "stored.npz", {}, npz::Residency::release);
    CHECK(lean.residency() == npz::Residency::release);
    auto a = lean.data(*lean.find("a"));
    lean.prefetch(a.data(), a.size());
    lean.release(a.data(), a.size());
    check(lean, "a", true);
    REQUIRE_THROWS_WITH(npz::MappedNpz(dir / "missing.npz"), Contains("cannot open"));
}

// ---------------------------------------------------------------------------------------
// Configuration

TEST_CASE("config parsing, defaults and errors", "[aggregate][config]") {
    auto config = Config::from_items(
        {"learning_rate=0.01", "beta1 = 0.5", R"({"tau": 1e-3})", "verify_crc=false"});
    CHECK(config.values().at("learning_rate") == 0.01);
    CHECK(config.values().at("beta1") == 0.5);
    CHECK(config.values().at("tau") == 1e-3);
    CHECK(config.values().at("verify_crc") == 0);
    auto adam = make_aggregator("fedadam", config);
    CHECK(adam->settings().at("learning_rate") == 0.01);
    CHECK(adam->settings().at("beta2") == 0.99);  // default

    // FEDn's defaults.
    auto defaults = make_aggregator("fedyogi")->settings();
    CHECK(defaults.at("learning_rate") == 1e-3);
    CHECK(defaults.at("beta1") == 0.9);
    CHECK(defaults.at("beta2") == 0.99);
    CHECK(defaults.at("tau") == 1e-4);
    CHECK(defaults.at("max_examples") == 1e9);
    CHECK(make_aggregator("fedavgm")->settings().at("momentum") == 0.9);
    CHECK(make_aggregator("trimmedmean")->settings().at("beta") == 0.2);

    CHECK(make_aggregator("fedadam", Config::from_items({"lr=0.5"}))
              ->settings()
              .at("learning_rate") == 0.5);
    CHECK(Config::from_json({{"f", 2}, {"verify_crc", true}}).values().at("f") == 2);
    std::size_t seen = 0;
    for (const auto& [key, value] : Config::from_items({"a=1", "b=2"}).values()) {
        seen += key.size() == 1 && (value == 1 || value == 2);
    }
    CHECK(seen == 2);

    REQUIRE_THROWS_WITH(make_aggregator("fedavgg"),
                        Contains("unknown aggregator 'fedavgg' (did you mean 'fedavg'?)"));
    REQUIRE_THROWS_WITH(make_aggregator("median"), Contains("did you mean 'fedmedian'?"));
    REQUIRE_THROWS_WITH(make_aggregator("fedadam", Config::from_items({"bta1=0.5"})),
                        Contains("fedadam has no setting 'bta1' (did you mean 'beta1'?)"));
    REQUIRE_THROWS_WITH(make_aggregator("fedadagrad", Config::from_items({"beta2=0.5"})),
                        Contains("fedadagrad has no setting 'beta2'"));
    REQUIRE_THROWS_WITH(make_aggregator("fedadam", Config::from_items({"beta1=1"})),
                        Contains("'beta1' must be in [0, 1), got 1"));
    REQUIRE_THROWS_WITH(make_aggregator("fedavg", Config::from_items({"batch=2.5"})),
                        Contains("'batch' must be a whole number"));
    REQUIRE_THROWS_WITH(make_aggregator("fedadam", Config::from_items({"lr=1", "learning_rate=1"})),
                        Contains("both 'lr' and 'learning_rate'"));
    REQUIRE_THROWS_WITH(Config::from_items({"lr"}), Contains("expected key=value"));
    REQUIRE_THROWS_WITH(Config::from_items({"lr=fast"}), Contains("must be a finite number"));
    REQUIRE_THROWS_WITH(Config::from_items({"{not json"}), Contains("not valid JSON"));
    REQUIRE_THROWS_WITH(Config::from_json({{"lr", "0.1"}}), Contains("must be a number"));

    // Every catalog entry builds with its defaults and documents each parameter.
    for (const auto& entry : aggregator_catalog()) {
        auto aggregator = make_aggregator(entry.name);
        CHECK(aggregator->name() == entry.name);
        for (const auto& parameter : entry.parameters) {
            CHECK(aggregator->settings().at(std::string(parameter.key)) == parameter.default_value);
            CHECK_FALSE(parameter.description.empty());
        }
    }
}

// ---------------------------------------------------------------------------------------
// FedAvg

TEST_CASE("fedavg: hand-computed weighted mean, integer max, float16 and float64",
          "[aggregate][fedavg]") {
    auto aggregator = make_aggregator("fedavg");
    aggregator->begin_round(small_model());
    CHECK_FALSE(
        aggregator->fold(small_update({1, 2, 3, 4}, {1, -1, 0.5}, {1, 0.25}, 110), info(1, "c1")));
    CHECK_FALSE(
        aggregator->fold(small_update({5, 6, 7, 8}, {3, 1, 0.5}, {2, -0.25}, 130), info(3, "c2")));
    ParameterSet result;
    auto summary = aggregator->finish(result);
    // (1*x1 + 3*x2) / 4
    CHECK(values_of<float>(result, "w") == std::vector<float>{4, 5, 6, 7});
    CHECK(values_of<double>(result, "b") == std::vector<double>{2.5, 0.5, 0.5});
    CHECK(half_values(result, "h") == std::vector<double>{1.75, -0.125});
    // Integer arrays: elementwise maximum, never averaged.
    CHECK(values_of<std::int64_t>(result, "num_batches_tracked") == std::vector<std::int64_t>{130});
    CHECK(summary.used == 2);
    CHECK(summary.rejected == 0);
    CHECK(summary.total_examples == 4);
    CHECK(summary.updates[0].description == "update from client 'c1'");
    CHECK(result[0].name == "w");
    CHECK(result[3].name == "num_batches_tracked");

    // Round two reuses the result's buffers.
    const std::byte* before = result[0].array.data();
    aggregator->begin_round(small_model());
    aggregator->fold(small_update({2, 2, 2, 2}, {0, 0, 0}, {0, 0}, 1), info(5));
    aggregator->finish(result);
    CHECK(result[0].array.data() == before);
    CHECK(values_of<float>(result, "w") == std::vector<float>{2, 2, 2, 2});
    CHECK(values_of<std::int64_t>(result, "num_batches_tracked") == std::vector<std::int64_t>{1});
}

TEST_CASE("fedavg: bool arrays combine by logical or", "[aggregate][fedavg]") {
    auto global = std::make_shared<ParameterSet>();
    Array zeros(DType::boolean, {3});
    std::memset(zeros.data(), 0, 3);
    global->add("mask", std::move(zeros));
    auto update = [](std::vector<bool> bits) {
        auto set = std::make_shared<ParameterSet>();
        Array array(DType::boolean, {3});
        for (std::size_t i = 0; i < 3; ++i)
            array.data()[i] = std::byte{bits[i] ? std::uint8_t{1} : std::uint8_t{0}};
        set->add("mask", std::move(array));
        return set;
    };
    auto aggregator = make_aggregator("fedavg");
    aggregator->begin_round(global);
    aggregator->fold(update({true, false, false}), info(1));
    aggregator->fold(update({false, false, true}), info(1));
    ParameterSet result;
    aggregator->finish(result);
    auto bytes = result[0].array.data();
    CHECK(std::to_integer<int>(bytes[0]) == 1);
    CHECK(std::to_integer<int>(bytes[1]) == 0);
    CHECK(std::to_integer<int>(bytes[2]) == 1);
}

TEST_CASE("fedavg: float16 matches numpy's rounding of the exact mean", "[aggregate][fedavg]") {
    TempDir dir;
    // Totals are powers of two, so the float64 mean is exact and the only rounding is the
    // final one to float16, which must match numpy's.
    run_python(R"PY(
import sys, numpy as np
out = sys.argv[1]
rng = np.random.default_rng(3)
g = np.zeros(4001, np.float16)
us = [(rng.standard_normal(4001) * 10).astype(np.float16) for _ in range(3)]
ns = [2, 2, 4]
np.savez(out + '/g.npz', h=g)
for k, u in enumerate(us):
    np.savez(out + '/u%d.npz' % k, h=u)
mean = sum(n * u.astype(np.float64) for n, u in zip(ns, us)) / sum(ns)
np.savez(out + '/expected.npz', h=mean.astype(np.float16))
)PY",
               {dir.path().string()});
    auto aggregator = make_aggregator("fedavg");
    aggregator->begin_round(std::make_shared<ParameterSet>(npz::read_npz(dir / "g.npz")));
    std::uint64_t counts[] = {2, 2, 4};
    for (int k = 0; k < 3; ++k) {
        CHECK_FALSE(aggregator->fold(dir / ("u" + std::to_string(k) + ".npz"), info(counts[k])));
    }
    ParameterSet result;
    aggregator->finish(result);
    CHECK(same_bytes(result, npz::read_npz(dir / "expected.npz")));
}

TEST_CASE("fedavg: every arrival order gives the same bits, within 1 ulp of the exact mean",
          "[aggregate][fedavg]") {
    TempDir dir;
    constexpr std::size_t k_updates = 6;
    constexpr std::size_t k_elements = 20011;  // not a multiple of 8: exercises the tails
    std::mt19937_64 rng(11);
    auto global = std::make_shared<ParameterSet>();
    global->add("w", make_array<float>({k_elements}, std::vector<float>(k_elements, 0)));
    std::vector<Model> updates;
    std::vector<std::uint64_t> counts;
    std::uniform_int_distribution<std::uint64_t> count(1, 5000);
    for (std::size_t k = 0; k < k_updates; ++k) {
        auto set = std::make_shared<ParameterSet>();
        // Different magnitudes make float32 accumulation order-dependent.
        set->add("w", make_array<float>({k_elements},
                                        random_floats(rng, k_elements, std::pow(10.0, k % 3))));
        npz::write_npz(dir / ("u" + std::to_string(k) + ".npz"), *set);
        npz::WriteOptions deflate;
        deflate.compression = npz::Compression::deflate;
        npz::write_npz(dir / ("z" + std::to_string(k) + ".npz"), *set, deflate);
        updates.push_back(set);
        counts.push_back(count(rng));
    }
    // The exact weighted mean rounded once, by numpy in float64.
    std::string counts_text;
    for (auto n : counts) counts_text += std::to_string(n) + ",";
    run_python(R"PY(
import sys, numpy as np
out, counts = sys.argv[1], [int(c) for c in sys.argv[2].split(',') if c]
us = [np.load(out + '/u%d.npz' % k)['w'].astype(np.float64) for k in range(len(counts))]
mean = sum(n * u for n, u in zip(counts, us)) / sum(counts)
np.savez(out + '/expected.npz', w=mean.astype(np.float32))
)PY",
               {dir.path().string(), counts_text});
    auto expected = values_of<float>(npz::read_npz(dir / "expected.npz"), "w");

    auto check_close = [&](const std::vector<float>& actual) {
        std::int64_t worst = 0;
        std::size_t inexact = 0;
        for (std::size_t i = 0; i < k_elements; ++i) {
            worst = std::max(worst, ulp_distance(actual[i], expected[i]));
            inexact += actual[i] != expected[i];
        }
        CHECK(worst <= 1);
        CHECK(inexact < k_elements / 1000);
    };

    std::vector<std::size_t> order(k_updates);
    std::iota(order.begin(), order.end(), 0);
    std::vector<float> first;
    std::size_t permutations = 0, differing = 0;
    auto aggregator = make_aggregator("fedavg");
    do {
        aggregator->begin_round(global);
        for (auto k : order) aggregator->fold(updates[k], info(counts[k]));
        ParameterSet result;
        aggregator->finish(result);
        auto values = values_of<float>(result, "w");
        if (first.empty()) {
            first = values;
            check_close(values);
        } else if (values != first) {
            ++differing;
        }
        ++permutations;
    } while (std::next_permutation(order.begin(), order.end()));
    CHECK(permutations == 720);
    CHECK(differing == 0);

    // The streaming path (batches of 2 through the float64 accumulator, from mapped files;
    // compressed files, folded one by one) stays within 1 ulp of the exact mean, in forward
    // and reverse order.
    for (auto [reverse, prefix] : {std::pair{false, "u"}, std::pair{true, "u"},
                                   std::pair{false, "z"}, std::pair{true, "z"}}) {
        auto streaming = make_aggregator("fedavg", Config::from_items({"batch=2"}));
        streaming->begin_round(global);
        for (std::size_t i = 0; i < k_updates; ++i) {
            std::size_t k = reverse ? k_updates - 1 - i : i;
            CHECK_FALSE(
                streaming->fold(dir / (prefix + std::to_string(k) + ".npz"), info(counts[k])));
        }
        ParameterSet result;
        CHECK(streaming->finish(result).used == k_updates);
        check_close(values_of<float>(result, "w"));
    }
}

TEST_CASE("fedavg: results do not depend on the number of threads", "[aggregate][fedavg]") {
    std::mt19937_64 rng(5);
    constexpr std::size_t k_elements = 300007;  // several chunks
    auto global = std::make_shared<ParameterSet>();
    global->add("w", make_array<float>({k_elements}, std::vector<float>(k_elements, 0)));
    global->add("d", make_array<double>({1000}, std::vector<double>(1000, 0)));
    std::vector<Model> updates;
    for (int k = 0; k < 5; ++k) {
        auto set = std::make_shared<ParameterSet>();
        set->add("w", make_array<float>({k_elements}, random_floats(rng, k_elements)));
        auto d = random_floats(rng, 1000);
        set->add("d", make_array<double>({1000}, std::vector<double>(d.begin(), d.end())));
        updates.push_back(set);
    }
    std::vector<ParameterSet> results;
    for (const char* threads : {"threads=1", "threads=2", "threads=3"}) {
        for (const char* batch : {"batch=16", "batch=2"}) {
            auto aggregator = make_aggregator("fedavg", Config::from_items({threads, batch}));
            aggregator->begin_round(global);
            for (int k = 0; k < 5; ++k) aggregator->fold(updates[k], info(10 + k));
            ParameterSet result;
            aggregator->finish(result);
            results.push_back(std::move(result));
        }
    }
    for (std::size_t i = 2; i < results.size(); ++i) {
        CHECK(same_bytes(results[i], results[i % 2]));
    }
}

TEST_CASE("fedavg: every kernel (portable, AVX2, AVX-512) computes the same mean",
          "[aggregate][fedavg]") {
    using detail::KernelLevel;
    struct Restore {
        KernelLevel previous = detail::cap_kernel_level(KernelLevel::avx512);
        ~Restore() { detail::cap_kernel_level(previous); }
    } restore;

    std::mt19937_64 rng(17);
    constexpr std::size_t n = 4133;  // tails after 32-, 16- and 8-element steps
    auto global = std::make_shared<ParameterSet>();
    global->add("f", make_array<float>({n}, std::vector<float>(n, 0)));
    global->add("d", make_array<double>({n}, std::vector<double>(n, 0)));
    global->add("h", make_half({n}, std::vector<double>(n, 0)));
    std::vector<Model> updates;
    std::vector<std::uint64_t> counts{3, 1, 7, 2, 5};
    for (std::size_t k = 0; k < counts.size(); ++k) {
        auto set = std::make_shared<ParameterSet>();
        auto f = random_floats(rng, n, 1 + k);
        set->add("f", make_array<float>({n}, f));
        std::vector<double> d(f.begin(), f.end());
        for (auto& value : d) value *= 1.0 + 1e-9;
        set->add("d", make_array<double>({n}, d));
        std::vector<double> h(f.begin(), f.end());
        set->add("h", make_half({n}, h));
        updates.push_back(set);
    }
    auto poisoned = std::make_shared<ParameterSet>(copy_of(*updates[0]));
    poisoned->find("d")->values<double>()[n - 2] = std::numeric_limits<double>::infinity();

    // Reference: the weighted mean in long double, rounded once.
    long double total = 0;
    for (auto c : counts) total += c;
    std::vector<std::vector<double>> halves;
    for (const auto& update : updates) halves.push_back(half_values(*update, "h"));
    auto reference = [&](const std::string& name, std::size_t i) {
        long double sum = 0;
        for (std::size_t k = 0; k < counts.size(); ++k) {
            double value = name == "f"   ? updates[k]->find("f")->values<float>()[i]
                           : name == "d" ? updates[k]->find("d")->values<double>()[i]
                                         : halves[k][i];
            sum += static_cast<long double>(counts[k]) * value;
        }
        return sum / total;
    };

    for (auto level : {KernelLevel::portable, KernelLevel::avx2, KernelLevel::avx512}) {
        detail::cap_kernel_level(level);
        for (const char* batch : {"batch=16", "batch=2"}) {
            INFO("kernel level " << static_cast<int>(detail::kernel_level()) << ", " << batch);
            auto aggregator = make_aggregator("fedavg", Config::from_items({batch}));
            aggregator->begin_round(global);
            for (std::size_t k = 0; k < counts.size(); ++k) {
                if (k == 3) aggregator->fold(poisoned, info(50));
                aggregator->fold(updates[k], info(counts[k]));
            }
            ParameterSet result;
            auto summary = aggregator->finish(result);
            CHECK(summary.rejected == 1);
            CHECK(summary.updates[3].reason == "array \"d\" holds +Inf at [4131]");
            auto f = values_of<float>(result, "f");
            auto d = values_of<double>(result, "d");
            auto h = half_values(result, "h");
            std::int64_t worst = 0;
            double worst_relative = 0, worst_half = 0;
            for (std::size_t i = 0; i < n; ++i) {
                worst = std::max(worst, ulp_distance(f[i], static_cast<float>(reference("f", i))));
                long double exact = reference("d", i);
                worst_relative =
                    std::max(worst_relative, static_cast<double>(std::fabs(d[i] - exact) /
                                                                 std::max(1.0L, std::fabs(exact))));
                double expected_half = npz::half_to_double(
                    npz::double_to_half(static_cast<double>(reference("h", i))));
                worst_half = std::max(worst_half, std::fabs(h[i] - expected_half) /
                                                      std::max(1e-3, std::fabs(expected_half)));
            }
            CHECK(worst <= 1);
            CHECK(worst_relative < 1e-14);
            CHECK(worst_half <= 1.0 / 1024);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation and rejection

TEST_CASE("rejected updates are reported with client, file and array; the round goes on",
          "[aggregate][validation]") {
    TempDir dir;
    auto global = std::make_shared<ParameterSet>();
    global->add("w", make_array<float>({3, 2}, {0, 0, 0, 0, 0, 0}));
    global->add("b", make_array<float>({2}, {0, 0}));
    auto write = [&](const std::string& name, ParameterSet set) {
        npz::write_npz(dir / name, set);
        return dir / name;
    };
    auto good1 = write("good1.npz", set_of("w", make_array<float>({3, 2}, {1, 1, 1, 1, 1, 1}), "b",
                                           make_array<float>({2}, {1, 1})));
    auto good2 = write("good2.npz", set_of("w", make_array<float>({3, 2}, {3, 3, 3, 3, 3, 3}), "b",
                                           make_array<float>({2}, {3, 3})));
    auto shape = write("shape.npz", set_of("w", make_array<float>({2, 3}, {1, 1, 1, 1, 1, 1}), "b",
                                           make_array<float>({2}, {1, 1})));
    auto dtype = write("dtype.npz", set_of("w", make_array<double>({3, 2}, {1, 1, 1, 1, 1, 1}), "b",
                                           make_array<float>({2}, {1, 1})));
    auto missing = write("missing.npz", set_of("w", make_array<float>({3, 2}, {1, 1, 1, 1, 1, 1})));
    auto extra = write("extra.npz",
                       set_of("w", make_array<float>({3, 2}, {1, 1, 1, 1, 1, 1}), "b",
                              make_array<float>({2}, {1, 1}), "c", make_array<float>({1}, {1})));
    auto many = write("many.npz", set_of("w", make_array<float>({6}, {1, 1, 1, 1, 1, 1}), "c",
                                         make_array<float>({1}, {1})));
    float nan = std::numeric_limits<float>::quiet_NaN();
    float inf = std::numeric_limits<float>::infinity();
    auto with_nan = write("nan.npz", set_of("w", make_array<float>({3, 2}, {1, 1, 1, nan, 1, 1}),
                                            "b", make_array<float>({2}, {1, 1})));
    auto with_inf = write("inf.npz", set_of("w", make_array<float>({3, 2}, {1, 1, 1, 1, 1, 1}), "b",
                                            make_array<float>({2}, {1, -inf})));
    write_file(dir / "garbage.npz", "this is not a zip file at all, just some text");

    for (const char* name : {"fedavg", "fedadam", "fedmedian"}) {
        DYNAMIC_SECTION(name) {
            auto aggregator = make_aggregator(name, Config::from_items({"max_examples=1000"}));
            aggregator->begin_round(global);
            auto reject = [&](const std::filesystem::path& file, UpdateInfo update) {
                return aggregator->fold(file, update);
            };
            CHECK_FALSE(reject(good1, info(1, "c1")));
            auto r = reject(shape, info(1, "c3"));
            REQUIRE(r);
            CHECK(r->message() == "update from client 'c3' (" + shape.string() +
                                      "): array \"w\" has shape [2, 3], global model has [3, 2]");
            r = reject(dtype, info(1));
            REQUIRE(r);
            CHECK(r->message() == "update '" + dtype.string() +
                                      "': array \"w\" is float64, global model has float32");
            r = reject(missing, info(1));
            REQUIRE(r);
            CHECK(r->reason == "array \"b\" is missing");
            r = reject(extra, info(1));
            REQUIRE(r);
            CHECK(r->reason == "array \"c\" is not in the global model");
            r = reject(many, info(1));
            REQUIRE(r);
            CHECK(r->reason ==
                  "array \"w\" has shape [6], global model has [3, 2] (and 2 more mismatches)");
            r = reject(dir / "garbage.npz", info(1));
            REQUIRE(r);
            CHECK_THAT(r->reason, Contains("zip"));
            r = reject(dir / "nope.npz", info(1));
            REQUIRE(r);
            CHECK_THAT(r->reason, Contains("cannot open"));

            UpdateInfo no_count;
            CHECK(reject(good2, no_count)->reason == "metadata has no \"num_examples\"");
            UpdateInfo bad = info(1);
            bad.metadata["num_examples"] = 0;
            CHECK(reject(good2, bad)->reason == "num_examples must be a positive integer, got 0");
            bad.metadata["num_examples"] = -4;
            CHECK(reject(good2, bad)->reason == "num_examples must be a positive integer, got -4");
            bad.metadata["num_examples"] = 2.5;
            CHECK(reject(good2, bad)->reason == "num_examples must be a positive integer, got 2.5");
            bad.metadata["num_examples"] = "12";
            CHECK(reject(good2, bad)->reason ==
                  "num_examples must be a positive integer, got \"12\"");
            CHECK(reject(good2, info(1001))->reason ==
                  "num_examples 1001 is above the limit max_examples=1000");
            UpdateInfo array_metadata;
            array_metadata.metadata = nlohmann::json::array();
            CHECK(reject(good2, array_metadata)->reason == "metadata is not a JSON object");
            UpdateInfo unreadable;
            unreadable.metadata_error = "u.npz-metadata: not valid JSON";
            CHECK(reject(good2, unreadable)->reason == "u.npz-metadata: not valid JSON");

            // NaN/Inf: the streaming aggregators find them while folding, fedmedian at once.
            auto nan_rejection = reject(with_nan, info(1, "c7"));
            auto inf_rejection = reject(with_inf, info(1));
            CHECK_FALSE(reject(good2, info(3, "c2")));
            if (std::string(name) == "fedmedian") {
                REQUIRE(nan_rejection);
                CHECK(nan_rejection->reason == "array \"w\" holds NaN at [1, 1]");
                REQUIRE(inf_rejection);
                CHECK(inf_rejection->reason == "array \"b\" holds -Inf at [1]");
            } else {
                CHECK_FALSE(nan_rejection);
                CHECK_FALSE(inf_rejection);
            }

            ParameterSet result;
            auto summary = aggregator->finish(result);
            CHECK(summary.used == 2);
            CHECK(summary.rejected == summary.updates.size() - 2);
            CHECK(summary.total_examples == 4);
            bool found_nan = false;
            for (const auto& outcome : summary.updates) {
                if (outcome.file == with_nan.string()) {
                    found_nan = true;
                    CHECK(outcome.status == UpdateStatus::rejected);
                    CHECK(outcome.message() == "update from client 'c7' (" + with_nan.string() +
                                                   "): array \"w\" holds NaN at [1, 1]");
                }
                if (outcome.file == with_inf.string()) {
                    CHECK(outcome.reason == "array \"b\" holds -Inf at [1]");
                }
            }
            CHECK(found_nan);
            if (std::string(name) == "fedavg") {
                // (1*1 + 3*3) / 4, exactly as if the bad updates had never been sent.
                CHECK(values_of<float>(result, "w") == std::vector<float>(6, 2.5f));
                CHECK(values_of<float>(result, "b") == std::vector<float>(2, 2.5f));
            }
            if (std::string(name) == "fedmedian") {
                CHECK(values_of<float>(result, "w") == std::vector<float>(6, 2.0f));
            }
        }
    }
}

TEST_CASE("fedavg: a NaN update leaves no trace, in one batch or across batches",
          "[aggregate][validation]") {
    std::mt19937_64 rng(21);
    constexpr std::size_t n = 50000;
    auto global = std::make_shared<ParameterSet>();
    global->add("w", make_array<float>({n}, std::vector<float>(n, 0)));
    std::vector<Model> good;
    for (int k = 0; k < 4; ++k) {
        auto set = std::make_shared<ParameterSet>();
        set->add("w", make_array<float>({n}, random_floats(rng, n)));
        good.push_back(set);
    }
    auto poisoned = std::make_shared<ParameterSet>();
    auto values = random_floats(rng, n, 1e30);
    values[n - 3] = std::numeric_limits<float>::quiet_NaN();  // huge values, NaN at the end
    poisoned->add("w", make_array<float>({n}, values));

    auto run = [&](const char* batch, int poison_at) {
        auto aggregator = make_aggregator("fedavg", Config::from_items({batch}));
        aggregator->begin_round(global);
        for (int k = 0; k < 4; ++k) {
            if (k == poison_at) CHECK_FALSE(aggregator->fold(poisoned, info(1000, "evil")));
            aggregator->fold(good[k], info(10 + k));
        }
        ParameterSet result;
        auto summary = aggregator->finish(result);
        CHECK(summary.used == 4);
        CHECK(summary.rejected == (poison_at >= 0 ? 1u : 0u));
        return result;
    };
    auto clean = run("batch=16", -1);
    CHECK(same_bytes(run("batch=16", 0), clean));
    CHECK(same_bytes(run("batch=16", 3), clean));
    // Across batches the partition of the updates changes, so compare within 1 ulp.
    for (int poison_at : {0, 1, 3}) {
        auto streamed = values_of<float>(run("batch=2", poison_at), "w");
        auto expected = values_of<float>(clean, "w");
        std::int64_t worst = 0;
        for (std::size_t i = 0; i < n; ++i)
            worst = std::max(worst, ulp_distance(streamed[i], expected[i]));
        CHECK(worst <= 1);
    }
}

TEST_CASE("finishing without a usable update fails and lists the rejections",
          "[aggregate][validation]") {
    auto aggregator = make_aggregator("fedavg");
    ParameterSet result;
    REQUIRE_THROWS_WITH(aggregator->fold(small_model(), info(1)), Contains("outside a round"));
    aggregator->begin_round(small_model());
    REQUIRE_THROWS_WITH(aggregator->finish(result), Contains("no update was folded"));
    aggregator->begin_round(small_model());
    auto bad = std::make_shared<ParameterSet>();
    bad->add("w", make_array<float>({1}, {1}));
    aggregator->fold(bad, info(1, "c9"));
    REQUIRE_THROWS_WITH(aggregator->finish(result),
                        Contains("no usable update in this round (1 folded, all rejected): "
                                 "update from client 'c9': array \"w\" has shape [1], global "
                                 "model has [2, 2]"));
    // The round is over after a failed finish.
    REQUIRE_THROWS_WITH(aggregator->finish(result), Contains("outside a round"));
}

// ---------------------------------------------------------------------------------------
// FedOpt family against numpy

TEST_CASE("fedadam, fedyogi, fedadagrad and fedavgm match a numpy reference over rounds",
          "[aggregate][fedopt]") {
    TempDir dir;
    constexpr int k_rounds = 3, k_clients = 3;
    // numpy writes the seed model and every update, and the reference result of every
    // round for every optimiser, each round starting from the reference's previous result.
    run_python(R"PY(
import sys, numpy as np
out = sys.argv[1]
rng = np.random.default_rng(5)
R, K = 3, 3
shapes = {'w': ((5, 7), np.float32), 'b': ((7,), np.float64), 'h': ((6,), np.float16)}
g0 = {k: (rng.standard_normal(s) * 0.5).astype(t) for k, (s, t) in shapes.items()}
g0['count'] = np.int64(7)
np.savez(out + '/g0.npz', **g0)
ns = rng.integers(1, 100, size=(R, K))
np.savetxt(out + '/ns.txt', ns, fmt='%d')
ups = {}
for r in range(R):
    for k in range(K):
        u = {key: (g0[key].astype(np.float64) + rng.standard_normal(s) * (0.1 + 0.3 * r)).astype(t)
             for key, (s, t) in shapes.items()}
        u['count'] = np.int64(7 + 10 * r + k)
        np.savez(out + '/u%d_%d.npz' % (r, k), **u)
        ups[r, k] = u

def state_dtype(t):
    return np.float64 if t == np.float64 else np.float32

settings = {'fedadam': dict(lr=0.01, b1=0.9, b2=0.99, tau=1e-3),
            'fedyogi': dict(lr=0.01, b1=0.9, b2=0.99, tau=1e-3),
            'fedadagrad': dict(lr=0.01, b1=0.9, tau=1e-3),
            'fedavgm': dict(lr=0.7, momentum=0.5)}
for name, p in settings.items():
    g = dict(g0); m = {}; v = {}
    for r in range(R):
        total = int(ns[r].sum())
        new = {}
        for key, (s, t) in shapes.items():
            mean = sum((int(ns[r][k]) / total) * ups[r, k][key].astype(np.float64) for k in range(K))
            x = g[key].astype(np.float64)
            delta = mean - x
            st = state_dtype(t)
            m0 = m[key].astype(np.float64) if key in m else np.zeros(s)
            if name == 'fedavgm':
                m1 = p['momentum'] * m0 + delta
                new[key] = (x + p['lr'] * m1).astype(t)
                m[key] = m1.astype(st)
                continue
            v0 = v[key].astype(np.float64) if key in v else np.full(s, p['tau'] ** 2)
            m1 = p['b1'] * m0 + (1 - p['b1']) * delta
            d2 = delta * delta
            if name == 'fedadam':
                v1 = p['b2'] * v0 + (1 - p['b2']) * d2
            elif name == 'fedyogi':
                v1 = v0 - (1 - p['b2']) * d2 * np.sign(v0 - d2)
            else:
                v1 = v0 + d2
            new[key] = (x + p['lr'] * m1 / (np.sqrt(v1) + p['tau'])).astype(t)
            m[key] = m1.astype(st); v[key] = v1.astype(st)
        new['count'] = np.int64(max(int(ups[r, k]['count']) for k in range(K)))
        np.savez(out + '/ref_%s_%d.npz' % (name, r), **new)
        g = new
)PY",
               {dir.path().string()});
    std::vector<std::vector<std::uint64_t>> counts(k_rounds, std::vector<std::uint64_t>(k_clients));
    {
        std::ifstream in(dir / "ns.txt");
        for (auto& row : counts) {
            for (auto& n : row) in >> n;
        }
    }
    auto path = [&](const std::string& name) { return dir / name; };
    auto update_path = [&](int r, int k) {
        return path("u" + std::to_string(r) + "_" + std::to_string(k) + ".npz");
    };

    auto check_close = [&](const ParameterSet& actual, const ParameterSet& expected) {
        REQUIRE(actual.size() == expected.size());
        auto w = values_of<float>(actual, "w"), w_ref = values_of<float>(expected, "w");
        std::int64_t worst = 0;
        for (std::size_t i = 0; i < w.size(); ++i)
            worst = std::max(worst, ulp_distance(w[i], w_ref[i]));
        CHECK(worst <= 2);
        auto b = values_of<double>(actual, "b"), b_ref = values_of<double>(expected, "b");
        for (std::size_t i = 0; i < b.size(); ++i) CHECK(b[i] == Approx(b_ref[i]).epsilon(1e-12));
        auto h = half_values(actual, "h"), h_ref = half_values(expected, "h");
        for (std::size_t i = 0; i < h.size(); ++i) {
            CHECK(std::fabs(h[i] - h_ref[i]) <= std::ldexp(std::fabs(h_ref[i]), -10) + 1e-7);
        }
        CHECK(values_of<std::int64_t>(actual, "count") ==
              values_of<std::int64_t>(expected, "count"));
    };

    struct Case {
        const char* name;
        std::vector<std::string> config;
    };
    for (const Case& test : {Case{"fedadam", {"lr=0.01", "tau=1e-3"}},
                             Case{"fedyogi", {"learning_rate=0.01", "tau=1e-3"}},
                             Case{"fedadagrad", {"lr=0.01", "tau=1e-3"}},
                             Case{"fedavgm", {"lr=0.7", "momentum=0.5"}}}) {
        DYNAMIC_SECTION(test.name) {
            auto config = Config::from_items(test.config);
            auto aggregator = make_aggregator(test.name, config);
            CHECK(aggregator->has_state());
            Model global = std::make_shared<ParameterSet>(npz::read_npz(path("g0.npz")));
            std::vector<ParameterSet> results;
            for (int r = 0; r < k_rounds; ++r) {
                aggregator->begin_round(global);
                for (int k = 0; k < k_clients; ++k) {
                    CHECK_FALSE(aggregator->fold(update_path(r, k), info(counts[r][k])));
                }
                ParameterSet result;
                aggregator->finish(result);
                check_close(result, npz::read_npz(path("ref_" + std::string(test.name) + "_" +
                                                       std::to_string(r) + ".npz")));
                if (r == 0) aggregator->save_state(path(std::string(test.name) + "_state.npz"));
                results.push_back(copy_of(result));
                global = std::make_shared<ParameterSet>(std::move(result));
            }

            // The saved state has the documented keys and dtypes.
            auto state = npz::read_npz(path(std::string(test.name) + "_state.npz"));
            REQUIRE(state.find("m/w") != nullptr);
            CHECK(state.find("m/w")->dtype() == DType::float32);
            CHECK(state.find("m/b")->dtype() == DType::float64);
            CHECK(state.find("m/h")->dtype() == DType::float32);
            CHECK(state.find("m/count") == nullptr);
            CHECK((state.find("v/w") != nullptr) == (std::string(test.name) != "fedavgm"));

            // A fresh aggregator that loads the state after round 0 continues identically.
            auto resumed = make_aggregator(test.name, config);
            resumed->load_state(path(std::string(test.name) + "_state.npz"));
            Model resumed_global = std::make_shared<ParameterSet>(copy_of(results[0]));
            for (int r = 1; r < k_rounds; ++r) {
                resumed->begin_round(resumed_global);
                for (int k = 0; k < k_clients; ++k)
                    resumed->fold(update_path(r, k), info(counts[r][k]));
                ParameterSet result;
                resumed->finish(result);
                CHECK(same_bytes(result, results[r]));
                resumed_global = std::make_shared<ParameterSet>(std::move(result));
            }

            // Without the state the optimiser restarts, and the result differs.
            auto restarted = make_aggregator(test.name, config);
            restarted->begin_round(std::make_shared<ParameterSet>(copy_of(results[0])));
            for (int k = 0; k < k_clients; ++k)
                restarted->fold(update_path(1, k), info(counts[1][k]));
            ParameterSet restarted_result;
            restarted->finish(restarted_result);
            CHECK_FALSE(same_bytes(restarted_result, results[1]));
        }
    }
}

TEST_CASE("server state is checked against the model and rejected when foreign",
          "[aggregate][fedopt]") {
    TempDir dir;
    auto adam = make_aggregator("fedadam");
    adam->begin_round(small_model());
    adam->fold(small_update({1, 2, 3, 4}, {1, 2, 3}, {1, 2}, 1), info(1));
    ParameterSet result;
    adam->finish(result);
    adam->save_state(dir / "state.npz");

    // State of another model: refused at begin_round, with the array named.
    auto other = std::make_shared<ParameterSet>();
    other->add("w", make_array<float>({4}, {0, 0, 0, 0}));
    auto loaded = make_aggregator("fedadam");
    loaded->load_state(dir / "state.npz");
    REQUIRE_THROWS_WITH(loaded->begin_round(other),
                        Contains("does not match the global model: \"m/w\" is float32 [2, 2], "
                                 "expected float32 [4]"));
    loaded->reset_state();
    CHECK_NOTHROW(loaded->begin_round(other));

    // fedavgm state has no v/ arrays; fedadam state is not fedavgm state.
    REQUIRE_THROWS_WITH(make_aggregator("fedavgm")->load_state(dir / "state.npz"),
                        Contains("array \"v/w\" is not fedavgm state"));
    REQUIRE_THROWS_WITH(make_aggregator("fedavg")->load_state(dir / "state.npz"),
                        Contains("fedavg keeps no server state"));

    // Before any round there is no state: an empty archive, accepted by every aggregator.
    make_aggregator("fedyogi")->save_state(dir / "empty.npz");
    CHECK(npz::read_npz(dir / "empty.npz").empty());
    CHECK_NOTHROW(make_aggregator("fedavg")->load_state(dir / "empty.npz"));
    CHECK_FALSE(make_aggregator("krum")->has_state());

    // The optimisers step from the global values, so a NaN there is refused up front.
    auto broken = std::make_shared<ParameterSet>(copy_of(*small_model()));
    broken->find("b")->values<double>()[1] = std::nan("");
    REQUIRE_THROWS_WITH(make_aggregator("fedyogi")->begin_round(broken),
                        Contains("fedyogi: the global model's array \"b\" holds NaN at [1]"));
    CHECK_NOTHROW(make_aggregator("fedavg")->begin_round(broken));
}

// ---------------------------------------------------------------------------------------
// Robust aggregators

namespace {

Model vector_model(std::vector<float> w, std::int32_t counter = 0) {
    auto set = std::make_shared<ParameterSet>();
    std::size_t n = w.size();
    set->add("w", make_array<float>({n}, w));
    set->add("steps", make_array<std::int32_t>({}, {counter}));
    return set;
}

ParameterSet run_rule(const std::string& name, const std::vector<std::string>& config,
                      const std::vector<Model>& updates, RoundSummary* summary = nullptr) {
    auto aggregator = make_aggregator(name, Config::from_items(config));
    aggregator->begin_round(
        vector_model(std::vector<float>(updates.front()->find("w")->size(), 0)));
    for (std::size_t k = 0; k < updates.size(); ++k) {
        CHECK_FALSE(aggregator->fold(updates[k], info(1 + 1000 * k, "c" + std::to_string(k))));
    }
    ParameterSet result;
    auto outcome = aggregator->finish(result);
    if (summary) *summary = outcome;
    return result;
}

}  // namespace

TEST_CASE("fedmedian: coordinate-wise median, unweighted; integers take the lower median",
          "[aggregate][robust]") {
    std::vector<Model> odd{vector_model({1, 5, 2, -1}, 4), vector_model({3, 1, 7, -2}, 9),
                           vector_model({2, 2, 2, 100}, 6)};
    auto result = run_rule("fedmedian", {}, odd);
    CHECK(values_of<float>(result, "w") == std::vector<float>{2, 2, 2, -1});
    CHECK(values_of<std::int32_t>(result, "steps") == std::vector<std::int32_t>{6});

    auto even = odd;
    even.push_back(vector_model({10, 0, 3, 0}, 1));
    result = run_rule("fedmedian", {}, even);
    // Mean of the two middle values.
    CHECK(values_of<float>(result, "w") == std::vector<float>{2.5, 1.5, 2.5, -0.5});
    CHECK(values_of<std::int32_t>(result, "steps") == std::vector<std::int32_t>{4});
}

TEST_CASE("trimmedmean: drops floor(beta*n) values at each end", "[aggregate][robust]") {
    std::vector<Model> updates{vector_model({1, 10}), vector_model({2, 20}), vector_model({3, 30}),
                               vector_model({4, 40}), vector_model({100, -1000})};
    // beta 0.2, n 5: one trimmed at each end.
    auto result = run_rule("trimmedmean", {}, updates);
    CHECK(values_of<float>(result, "w") == std::vector<float>{3, 20});
    // beta 0.1: nothing trimmed (floor(0.5) = 0), a plain unweighted mean.
    result = run_rule("trimmedmean", {"beta=0.1"}, updates);
    CHECK(values_of<float>(result, "w") == std::vector<float>{22, -180});
    // beta 0.4: two trimmed at each end: the median.
    result = run_rule("trimmedmean", {"beta=0.4"}, updates);
    CHECK(values_of<float>(result, "w") == std::vector<float>{3, 20});
}

TEST_CASE("krum and multikrum select by Blanchard scores", "[aggregate][robust]") {
    // Four honest updates around 0 and one far away.
    std::vector<Model> updates{vector_model({0, 0}, 1), vector_model({1, 0}, 2),
                               vector_model({0, 2}, 3), vector_model({1, 1}, 4),
                               vector_model({50, 50}, 99)};
    // Squared distances: d01=1 d02=4 d03=2 d12=5 d13=1 d23=2, outlier far. With f=1 each
    // score sums the n-f-2 = 2 smallest: s0=1+2=3, s1=1+1=2, s2=2+4=6, s3=1+2=3.
    RoundSummary summary;
    auto result = run_rule("krum", {}, updates, &summary);
    CHECK(values_of<float>(result, "w") == std::vector<float>{1, 0});
    CHECK(values_of<std::int32_t>(result, "steps") == std::vector<std::int32_t>{2});
    CHECK(summary.used == 1);
    CHECK(summary.not_selected == 4);
    CHECK(summary.total_examples == 1001);
    CHECK(summary.updates[1].status == UpdateStatus::used);
    REQUIRE(summary.updates[0].score);
    CHECK(*summary.updates[0].score == 3);
    CHECK(*summary.updates[1].score == 2);
    CHECK(*summary.updates[2].score == 6);
    CHECK_THAT(summary.updates[4].reason, Contains("not selected by krum"));

    // multikrum m=3: s1=2, then s0=3 and s3=3 (tie kept in arrival order); unweighted mean.
    result = run_rule("multikrum", {"m=3"}, updates, &summary);
    CHECK(values_of<float>(result, "w") == std::vector<float>{2.0f / 3.0f, 1.0f / 3.0f});
    CHECK(values_of<std::int32_t>(result, "steps") == std::vector<std::int32_t>{4});
    CHECK(summary.used == 3);
    CHECK(summary.updates[2].status == UpdateStatus::not_selected);
    // m=0 means n - f = 4: everything but the outlier.
    result = run_rule("multikrum", {}, updates, &summary);
    CHECK(values_of<float>(result, "w") == std::vector<float>{0.5, 0.75});

    std::vector<Model> few(updates.begin(), updates.begin() + 4);
    REQUIRE_THROWS_WITH(
        run_rule("krum", {}, few),
        Contains("krum with f=1 needs at least 5 usable updates (n >= 2f+3), got 4"));
    REQUIRE_THROWS_WITH(run_rule("multikrum", {"m=5"}, updates), Contains("m=5 exceeds n - f = 4"));
    CHECK_NOTHROW(run_rule("krum", {"f=0"}, few));
}

TEST_CASE("robust aggregators read updates from mapped files, thread-count independent",
          "[aggregate][robust]") {
    TempDir dir;
    std::mt19937_64 rng(9);
    constexpr std::size_t n = 70001;
    std::vector<Model> updates;
    for (int k = 0; k < 7; ++k) {
        auto set = std::make_shared<ParameterSet>();
        set->add("w", make_array<float>({n}, random_floats(rng, n, 1 + k)));
        set->add("steps", make_array<std::int32_t>({}, {k}));
        npz::WriteOptions options;
        options.compression = k % 2 ? npz::Compression::deflate : npz::Compression::stored;
        npz::write_npz(dir / ("u" + std::to_string(k) + ".npz"), *set, options);
        updates.push_back(set);
    }
    for (const char* name : {"fedmedian", "trimmedmean", "krum", "multikrum"}) {
        DYNAMIC_SECTION(name) {
            std::vector<ParameterSet> results;
            std::vector<RoundSummary> summaries;
            for (const char* threads : {"threads=1", "threads=3"}) {
                for (bool from_files : {false, true}) {
                    std::vector<std::string> config{threads};
                    if (std::string(name).find("krum") != std::string::npos)
                        config.push_back("f=2");
                    auto aggregator = make_aggregator(name, Config::from_items(config));
                    aggregator->begin_round(vector_model(std::vector<float>(n, 0)));
                    for (int k = 0; k < 7; ++k) {
                        if (from_files) {
                            CHECK_FALSE(aggregator->fold(dir / ("u" + std::to_string(k) + ".npz"),
                                                         info(1)));
                        } else {
                            CHECK_FALSE(aggregator->fold(updates[k], info(1)));
                        }
                    }
                    ParameterSet result;
                    summaries.push_back(aggregator->finish(result));
                    results.push_back(std::move(result));
                }
            }
            for (std::size_t i = 1; i < results.size(); ++i) {
                CHECK(same_bytes(results[i], results[0]));
                for (std::size_t k = 0; k < 7; ++k) {
                    CHECK(summaries[i].updates[k].score == summaries[0].updates[k].score);
                }
            }
        }
    }
}

namespace {

/// The file-backed part of this process's resident set (RssFile in /proc/self/status), bytes.
std::uint64_t resident_file_bytes() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("RssFile:", 0) == 0) return std::stoull(line.substr(8)) * 1024;
    }
    FAIL("no RssFile in /proc/self/status");
    return 0;
}

}  // namespace

TEST_CASE("release_pages=1: same bits, and pending updates stay out of the resident set",
          "[aggregate][fedavg][memory]") {
    TempDir dir;
    std::mt19937_64 rng(33);
    constexpr std::size_t n = 4 << 20;  // 16 MiB of float32 per update
    constexpr int k_updates = 4;
    for (int k = 0; k < k_updates; ++k) {
        ParameterSet set;
        set.add("w", make_array<float>({n}, random_floats(rng, n, 1 + k)));
        set.add("steps", make_array<std::int64_t>({}, {k}));
        npz::write_npz(dir / ("u" + std::to_string(k) + ".npz"), set);
    }
    auto global = std::make_shared<ParameterSet>();
    global->add("w", make_array<float>({n}, std::vector<float>(n, 0)));
    global->add("steps", make_array<std::int64_t>({}, {0}));

    auto run = [&](const char* release, std::uint64_t& pending_growth) {
        auto aggregator = make_aggregator("fedavg", Config::from_items({release, "batch=16"}));
        aggregator->begin_round(global);
        std::uint64_t before = resident_file_bytes();
        for (int k = 0; k < k_updates; ++k) {
            CHECK_FALSE(aggregator->fold(dir / ("u" + std::to_string(k) + ".npz"), info(10 + k)));
        }
        std::uint64_t after = resident_file_bytes();
        pending_growth = after > before ? after - before : 0;
        ParameterSet result;
        CHECK(aggregator->finish(result).used == k_updates);
        return result;
    };
    std::uint64_t kept_growth = 0;
    std::uint64_t released_growth = 0;
    auto kept = run("release_pages=0", kept_growth);
    auto released = run("release_pages=1", released_growth);
    CHECK(same_bytes(released, kept));
    // Kept: all four files are mapped and populated (64 MiB). Released: the CRC check walked
    // them a window at a time and dropped every window.
    CHECK(kept_growth >= std::uint64_t{k_updates} * n * sizeof(float) * 9 / 10);
    CHECK(released_growth < std::uint64_t{8} << 20);
}

// ---------------------------------------------------------------------------------------
// aggregate_files and diff

TEST_CASE("aggregate_files: counts from FILE:N, FILE-metadata or 1; state in and out",
          "[aggregate][files]") {
    TempDir dir;
    auto global = vector_model({0, 0});
    npz::write_npz(dir / "global.npz", *global);
    npz::write_npz(dir / "a.npz", *vector_model({1, 2}, 3));
    npz::write_npz(dir / "b.npz", *vector_model({3, 6}, 5));
    npz::write_npz(dir / "c.npz", *vector_model({5, 10}, 4));
    write_file(dir / "b.npz-metadata", R"({"num_examples": 2, "training_loss": 0.5})");
    write_file(dir / "c.npz-metadata", "{broken");

    auto parsed = parse_update_argument((dir / "a.npz").string() + ":5");
    CHECK(parsed.path == dir / "a.npz");
    CHECK(parsed.num_examples == 5u);
    CHECK_FALSE(parse_update_argument((dir / "a.npz").string()).num_examples);
    CHECK_FALSE(parse_update_argument("x.npz:abc").num_examples);
    write_file(dir / "odd:7", "");
    CHECK_FALSE(parse_update_argument((dir / "odd:7").string()).num_examples);

    AggregateFilesOptions options;
    options.global = dir / "global.npz";
    options.output = dir / "out.npz";
    options.updates = {parse_update_argument((dir / "a.npz").string() + ":2"),
                       parse_update_argument((dir / "b.npz").string()),
                       parse_update_argument((dir / "c.npz").string())};
    auto summary = aggregate_files(options);
    CHECK(summary.used == 2);
    CHECK(summary.rejected == 1);
    CHECK_THAT(summary.updates[2].reason, Contains("c.npz-metadata: not valid JSON"));
    auto out = npz::read_npz(dir / "out.npz");
    CHECK(values_of<float>(out, "w") == std::vector<float>{2, 4});
    CHECK(values_of<std::int32_t>(out, "steps") == std::vector<std::int32_t>{5});
    auto json = summary_json(summary);
    CHECK(json["used"] == 2);
    CHECK(json["total_examples"] == 4);
    CHECK(json["updates"][2]["status"] == "rejected");

    // No count anywhere: weight 1 (c's broken metadata removed).
    std::filesystem::remove(dir / "c.npz-metadata");
    options.updates = {parse_update_argument((dir / "a.npz").string()),
                       parse_update_argument((dir / "c.npz").string())};
    CHECK(aggregate_files(options).total_examples == 2);
    CHECK(values_of<float>(npz::read_npz(dir / "out.npz"), "w") == std::vector<float>{3, 6});

    // fedadam through files twice with the state carried over equals one aggregator
    // running two rounds.
    options.aggregator = "fedadam";
    options.config = Config::from_items({"lr=0.1"});
    options.updates = {parse_update_argument((dir / "a.npz").string() + ":1"),
                       parse_update_argument((dir / "b.npz").string() + ":3")};
    options.state_out = dir / "state.npz";
    aggregate_files(options);
    options.global = dir / "out.npz";
    options.output = dir / "out2.npz";
    options.state_in = dir / "state.npz";
    aggregate_files(options);

    auto adam = make_aggregator("fedadam", Config::from_items({"lr=0.1"}));
    Model model = global;
    for (int round = 0; round < 2; ++round) {
        adam->begin_round(model);
        adam->fold(dir / "a.npz", info(1));
        adam->fold(dir / "b.npz", info(3));
        auto next = std::make_shared<ParameterSet>();
        adam->finish(*next);
        model = next;
    }
    CHECK(same_bytes(*model, npz::read_npz(dir / "out2.npz")));

    options.state_in = dir / "missing-state.npz";
    REQUIRE_THROWS_WITH(aggregate_files(options), Contains("missing-state.npz"));
    options.state_in.clear();
    options.aggregator = "fedavg";
    options.config = Config();
    options.updates = {parse_update_argument((dir / "nothing.npz").string())};
    REQUIRE_THROWS_WITH(aggregate_files(options), Contains("no usable update"));
}

TEST_CASE("model diff: per-array max/mean abs difference and L2 norm", "[aggregate][diff]") {
    TempDir dir;
    ParameterSet a, b;
    a.add("w", make_array<float>({2, 2}, {1, 2, 3, 4}));
    b.add("w", make_array<float>({2, 2}, {1, 2.5, 3, 2}));  // differences 0, .5, 0, 2
    a.add("d", make_array<double>({2}, {1, std::nan("")}));
    b.add("d", make_array<double>({2}, {1, std::nan("")}));  // NaN == NaN
    a.add("n", make_array<std::int64_t>({3}, {1, 2, 3}));
    b.add("n", make_array<double>({3}, {1, 2, 3}));  // same values, other dtype
    a.add("x", make_array<float>({2}, {0, 0}));
    b.add("x", make_array<float>({1, 2}, {0, 0}));
    a.add("only_a", make_array<float>({1}, {0}));
    b.add("only_b", make_array<float>({1}, {0}));
    a.add("inf", make_array<float>({2}, {std::numeric_limits<float>::infinity(), 1}));
    b.add("inf", make_array<float>({2}, {1, 1}));

    auto difference = diff_models(a, b);
    REQUIRE(difference.arrays.size() == 7);
    const auto& w = difference.arrays[0];
    CHECK(w.status == ArrayDifference::Status::compared);
    CHECK(w.max_abs == 2);
    CHECK(w.mean_abs == 0.625);
    CHECK(w.l2 == Approx(std::sqrt(4.25)));
    CHECK(w.differing == 2);
    CHECK(difference.arrays[1].differing == 0);
    CHECK(difference.arrays[2].differing == 0);
    CHECK(difference.arrays[2].dtype_b == DType::float64);
    CHECK(difference.arrays[3].status == ArrayDifference::Status::shape_mismatch);
    CHECK(difference.arrays[4].status == ArrayDifference::Status::only_in_a);
    CHECK(difference.arrays[5].non_finite_mismatches == 1);
    CHECK(difference.arrays[6].name == "only_b");
    CHECK(difference.arrays[6].status == ArrayDifference::Status::only_in_b);
    CHECK(difference.max_abs == 2);
    CHECK(difference.l2 == Approx(std::sqrt(4.25)));
    CHECK_FALSE(difference.identical);
    CHECK(diff_models(a, a).identical);

    npz::write_npz(dir / "a.npz", a);
    npz::write_npz(dir / "b.npz", b);
    CHECK(difference_json(diff_files(dir / "a.npz", dir / "b.npz")) == difference_json(difference));
    CHECK(difference_json(difference)["arrays"][0]["max_abs"] == 2.0);
}
