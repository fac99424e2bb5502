// This client's share of Fashion-MNIST (Debian's dataset-fashion-mnist), without LibTorch.
//
// Every client computes the same split of the 60,000 training images from the settings
// alone and keeps its own share: the shares are disjoint and together are the whole
// training set. Every client evaluates on the whole test set (10,000 images).
//
// Environment (the same on every client):
//   FEDCLI_CLIENT_INDEX, FEDCLI_NUM_CLIENTS   set by fedcli (0, 1 when absent)
//   FEDCLI_PARTITION     iid (default) | dirichlet
//   FEDCLI_ALPHA         Dirichlet concentration (0.5)
//   FEDCLI_SEED          seed of the split (0)
//   FEDCLI_MAX_EXAMPLES  keep at most this many of the share and of the test set (0: all)
//   FEDCLI_FASHION_MNIST folder with the four idx .gz files (/usr/share/datasets/fashion-mnist)
//
// The random draws use std::mt19937_64, whose output the C++ standard fixes, and
// distributions written here (the standard library's are implementation-defined), so
// clients built with different compilers still agree on the split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace example {

/// An idx file's content: uint8 values and the shape from its header.
struct Idx {
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> values;
};

/// Reads one gzip'd idx file from the data set folder; throws naming the file.
Idx read_idx(const std::string& name);

/// A number from the environment, or `fallback` when unset; throws when not a number.
long environment_long(const char* name, long fallback);
double environment_double(const char* name, double fallback);

struct PartitionSettings {
    std::string scheme = "iid";  // iid | dirichlet
    double alpha = 0.5;
    std::uint64_t seed = 0;
    long index = 0;
    long count = 1;
    long max_examples = 0;
};

/// The settings from the environment, checked (a clear error for each bad value).
PartitionSettings partition_settings();

/// Splits 0..labels.size()-1 into `count` disjoint sorted index lists covering it all.
/// iid: a seeded permutation cut into near-equal parts. dirichlet: for each class, its
/// examples shuffled and cut in proportions drawn from Dirichlet(alpha, ..., alpha),
/// redrawn until every share has at least 10 examples. Depends only on its arguments.
std::vector<std::vector<std::int64_t>> partition(const std::vector<std::uint8_t>& labels,
                                                 long count, const std::string& scheme,
                                                 double alpha, std::uint64_t seed);

/// This client's training share and the test set: images (N x 784, uint8) and labels.
struct Share {
    std::vector<std::int64_t> train_index;  ///< positions in the training set, ascending
    std::vector<std::uint8_t> train_images, train_labels, test_images, test_labels;
    std::int64_t train_count() const { return static_cast<std::int64_t>(train_labels.size()); }
    std::int64_t test_count() const { return static_cast<std::int64_t>(test_labels.size()); }
};

Share load_share(const PartitionSettings& settings);

/// "client 1/4 (dirichlet alpha 0.5, seed 3)".
std::string describe(const PartitionSettings& settings);

/// A file name that holds every setting: "client-1-of-4-dirichlet-alpha0.5-seed3".
std::string share_name(const PartitionSettings& settings);

}  // namespace example
