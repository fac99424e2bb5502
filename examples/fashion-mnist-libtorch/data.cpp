#include "data.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

namespace example {
namespace {

constexpr std::size_t k_min_share = 10;
constexpr std::size_t k_image_size = 28 * 28;

std::string dataset_folder() {
    const char* value = std::getenv("FEDCLI_FASHION_MNIST");
    return value && *value ? value : "/usr/share/datasets/fashion-mnist";
}

/// Portable draws from std::mt19937_64 (whose output the standard fixes).
class Random {
  public:
    explicit Random(std::uint64_t seed) : m_engine(seed) {}
    /// Uniform in [0, 1) with 53 random bits.
    double uniform() { return static_cast<double>(m_engine() >> 11) * 0x1.0p-53; }
    /// Uniform in [0, bound), without modulo bias (rejection).
    std::uint64_t below(std::uint64_t bound) {
        std::uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
        std::uint64_t value;
        do value = m_engine();
        while (value >= limit);
        return value % bound;
    }
    /// Standard normal (Box-Muller; the second value is discarded to keep it stateless).
    double normal() {
        double u = 1.0 - uniform();  // (0, 1]
        return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * uniform());
    }
    /// Gamma(shape, 1): Marsaglia and Tsang (2000), boosted for shape < 1.
    double gamma(double shape) {
        if (shape < 1.0) {
            double boosted = gamma(shape + 1.0);  // drawn first: the order is part of the split
            return boosted * std::pow(1.0 - uniform(), 1.0 / shape);
        }
        double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
        for (;;) {
            double x = normal(), v = 1.0 + c * x;
            if (v <= 0) continue;
            v = v * v * v;
            double u = 1.0 - uniform();
            if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
        }
    }
    template <typename T>
    void shuffle(std::vector<T>& values) {  // Fisher-Yates
        for (std::size_t i = values.size(); i > 1; --i) std::swap(values[i - 1], values[below(i)]);
    }

  private:
    std::mt19937_64 m_engine;
};

std::vector<std::int64_t> iota(std::size_t count) {
    std::vector<std::int64_t> values(count);
    std::iota(values.begin(), values.end(), 0);
    return values;
}

/// Copies the rows `rows` of a row-major uint8 table with `width` columns.
std::vector<std::uint8_t> select_rows(const std::vector<std::uint8_t>& table, std::size_t width,
                                      const std::vector<std::int64_t>& rows) {
    std::vector<std::uint8_t> result(rows.size() * width);
    for (std::size_t i = 0; i < rows.size(); ++i) {
        std::copy_n(table.begin() + rows[i] * width, width, result.begin() + i * width);
    }
    return result;
}

std::string environment(const char* name) {
    const char* value = std::getenv(name);
    return value ? value : "";
}

}  // namespace

Idx read_idx(const std::string& name) {
    std::string path = dataset_folder() + "/" + name;
    gzFile file = gzopen(path.c_str(), "rb");
    if (!file) {
        throw std::runtime_error(path +
                                 " is missing: install Debian's dataset-fashion-mnist or set "
                                 "FEDCLI_FASHION_MNIST to a folder with the idx files");
    }
    std::vector<std::uint8_t> content;
    std::vector<std::uint8_t> block(1 << 20);
    int n;
    while ((n = gzread(file, block.data(), static_cast<unsigned>(block.size()))) > 0) {
        content.insert(content.end(), block.begin(), block.begin() + n);
    }
    bool failed = n < 0;
    gzclose(file);
    if (failed) throw std::runtime_error(path + ": not a readable gzip file");
    if (content.size() < 4 || content[0] != 0 || content[1] != 0 || content[2] != 8) {
        throw std::runtime_error(path + ": not an idx file of unsigned bytes");
    }
    Idx idx;
    std::size_t offset = 4, expected = 1;
    for (int i = 0; i < content[3]; ++i, offset += 4) {
        if (offset + 4 > content.size()) throw std::runtime_error(path + ": truncated header");
        std::int64_t size = std::int64_t{content[offset]} << 24 |
                            std::int64_t{content[offset + 1]} << 16 |
                            std::int64_t{content[offset + 2]} << 8 | content[offset + 3];
        idx.shape.push_back(size);
        expected *= static_cast<std::size_t>(size);
    }
    if (content.size() - offset != expected) {
        throw std::runtime_error(path + ": holds " + std::to_string(content.size() - offset) +
                                 " values, its header says " + std::to_string(expected));
    }
    idx.values.assign(content.begin() + static_cast<std::ptrdiff_t>(offset), content.end());
    return idx;
}

long environment_long(const char* name, long fallback) {
    std::string value = environment(name);
    if (value.empty()) return fallback;
    char* end = nullptr;
    long number = std::strtol(value.c_str(), &end, 10);
    if (*end != '\0')
        throw std::runtime_error(std::string(name) + "=" + value + ": not an integer");
    return number;
}

double environment_double(const char* name, double fallback) {
    std::string value = environment(name);
    if (value.empty()) return fallback;
    char* end = nullptr;
    double number = std::strtod(value.c_str(), &end);
    if (*end != '\0') throw std::runtime_error(std::string(name) + "=" + value + ": not a number");
    return number;
}

PartitionSettings partition_settings() {
    PartitionSettings settings;
    std::string scheme = environment("FEDCLI_PARTITION");
    if (!scheme.empty()) settings.scheme = scheme;
    if (settings.scheme != "iid" && settings.scheme != "dirichlet") {
        throw std::runtime_error("FEDCLI_PARTITION=" + settings.scheme +
                                 ": expected iid or dirichlet");
    }
    settings.alpha = environment_double("FEDCLI_ALPHA", 0.5);
    if (!(settings.alpha > 0)) throw std::runtime_error("FEDCLI_ALPHA must be positive");
    long seed = environment_long("FEDCLI_SEED", 0);
    if (seed < 0) throw std::runtime_error("FEDCLI_SEED must not be negative");
    settings.seed = static_cast<std::uint64_t>(seed);
    settings.index = environment_long("FEDCLI_CLIENT_INDEX", 0);
    settings.count = environment_long("FEDCLI_NUM_CLIENTS", 1);
    if (settings.count < 1 || settings.index < 0 || settings.index >= settings.count) {
        throw std::runtime_error("FEDCLI_CLIENT_INDEX=" + std::to_string(settings.index) +
                                 " is outside 0.." + std::to_string(settings.count - 1));
    }
    settings.max_examples = environment_long("FEDCLI_MAX_EXAMPLES", 0);
    if (settings.max_examples < 0) {
        throw std::runtime_error("FEDCLI_MAX_EXAMPLES must not be negative");
    }
    return settings;
}

std::vector<std::vector<std::int64_t>> partition(const std::vector<std::uint8_t>& labels,
                                                 long count, const std::string& scheme,
                                                 double alpha, std::uint64_t seed) {
    auto parts = static_cast<std::size_t>(count);
    Random random(seed);
    std::vector<std::vector<std::int64_t>> shares(parts);
    if (scheme == "iid") {
        auto order = iota(labels.size());
        random.shuffle(order);
        for (std::size_t i = 0; i < parts; ++i) {
            auto begin = order.begin() + static_cast<std::ptrdiff_t>(order.size() * i / parts);
            auto end = order.begin() + static_cast<std::ptrdiff_t>(order.size() * (i + 1) / parts);
            shares[i].assign(begin, end);
            std::sort(shares[i].begin(), shares[i].end());
        }
        return shares;
    }
    if (labels.size() < k_min_share * parts) {
        throw std::runtime_error(std::to_string(labels.size()) + " examples are too few for " +
                                 std::to_string(count) + " clients");
    }
    std::vector<std::vector<std::int64_t>> classes(256);
    for (std::size_t i = 0; i < labels.size(); ++i) {
        classes[labels[i]].push_back(static_cast<std::int64_t>(i));
    }
    for (int attempt = 0; attempt < 1000; ++attempt) {
        for (auto& share : shares) share.clear();
        for (auto members : classes) {
            if (members.empty()) continue;
            random.shuffle(members);
            std::vector<double> proportions(parts);
            double total = 0;
            for (auto& p : proportions) total += p = random.gamma(alpha);
            // Cut at the rounded cumulative proportions, as numpy's split would.
            double cumulative = 0;
            std::size_t begin = 0;
            for (std::size_t i = 0; i < parts; ++i) {
                cumulative += proportions[i] / total;
                std::size_t end =
                    i + 1 == parts
                        ? members.size()
                        : std::min(members.size(),
                                   static_cast<std::size_t>(std::llround(
                                       cumulative * static_cast<double>(members.size()))));
                end = std::max(end, begin);
                shares[i].insert(shares[i].end(), members.begin() + begin, members.begin() + end);
                begin = end;
            }
        }
        bool enough = std::all_of(shares.begin(), shares.end(),
                                  [](const auto& share) { return share.size() >= k_min_share; });
        if (enough) {
            for (auto& share : shares) std::sort(share.begin(), share.end());
            return shares;
        }
    }
    std::ostringstream message;
    message << "no Dirichlet(" << alpha << ") split of " << labels.size()
            << " examples gives each of " << count << " clients " << k_min_share
            << " examples; raise FEDCLI_ALPHA";
    throw std::runtime_error(message.str());
}

Share load_share(const PartitionSettings& settings) {
    Idx train_images = read_idx("train-images-idx3-ubyte.gz");
    Idx train_labels = read_idx("train-labels-idx1-ubyte.gz");
    Idx test_images = read_idx("t10k-images-idx3-ubyte.gz");
    Idx test_labels = read_idx("t10k-labels-idx1-ubyte.gz");
    if (train_images.values.size() != train_labels.values.size() * k_image_size ||
        test_images.values.size() != test_labels.values.size() * k_image_size) {
        throw std::runtime_error(dataset_folder() + ": images and labels do not match");
    }
    auto share = partition(train_labels.values, settings.count, settings.scheme, settings.alpha,
                           settings.seed)[static_cast<std::size_t>(settings.index)];
    auto test = iota(test_labels.values.size());
    if (settings.max_examples > 0) {
        // A random subset keeps the share's label mix; the test set keeps its first ones.
        auto limit = static_cast<std::size_t>(settings.max_examples);
        Random random(settings.seed * 1'000'003 + static_cast<std::uint64_t>(settings.index));
        random.shuffle(share);
        share.resize(std::min(share.size(), limit));
        std::sort(share.begin(), share.end());
        test.resize(std::min(test.size(), limit));
    }
    Share result;
    result.train_index = share;
    result.train_images = select_rows(train_images.values, k_image_size, share);
    result.train_labels = select_rows(train_labels.values, 1, share);
    result.test_images = select_rows(test_images.values, k_image_size, test);
    result.test_labels = select_rows(test_labels.values, 1, test);
    return result;
}

std::string describe(const PartitionSettings& settings) {
    std::ostringstream text;
    text << "client " << settings.index << "/" << settings.count << " (" << settings.scheme;
    if (settings.scheme == "dirichlet") text << " alpha " << settings.alpha;
    text << ", seed " << settings.seed << ")";
    return text.str();
}

std::string share_name(const PartitionSettings& settings) {
    std::ostringstream name;
    name << "client-" << settings.index << "-of-" << settings.count << "-" << settings.scheme;
    if (settings.scheme == "dirichlet") name << "-alpha" << settings.alpha;
    name << "-seed" << settings.seed;
    if (settings.max_examples > 0) name << "-max" << settings.max_examples;
    return name.str();
}

}  // namespace example
