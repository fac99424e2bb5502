// Entry points of a fedcli project in C++ with LibTorch: FEDn's mnist MLP (784-64-32-10)
// on Fashion-MNIST (Debian's dataset-fashion-mnist).
//
//   fedcli-entry build [OUTPUT]            writes the seed model (default seed.npz)
//   fedcli-entry startup                   checks that this client's data is readable
//   fedcli-entry train INPUT OUTPUT        SGD; settings epochs, batch_size, learning_rate
//   fedcli-entry validate INPUT OUTPUT     loss/accuracy on this client's share and the test set
//   fedcli-entry predict INPUT OUTPUT      predictions for 100 test images
//
// Environment: FEDCLI_CLIENT_INDEX / FEDCLI_NUM_CLIENTS pick this client's IID share,
// FEDCLI_FASHION_MNIST the data folder, FEDCLI_TORCH_THREADS torch's threads (1).
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/torch/parameters.hpp"

namespace {

struct Net : torch::nn::Module {
    Net() {
        fc1 = register_module("fc1", torch::nn::Linear(784, 64));
        fc2 = register_module("fc2", torch::nn::Linear(64, 32));
        fc3 = register_module("fc3", torch::nn::Linear(32, 10));
    }
    torch::Tensor forward(torch::Tensor x) {
        x = torch::relu(fc1->forward(x));
        x = torch::dropout(x, 0.5, is_training());
        x = torch::relu(fc2->forward(x));
        return fc3->forward(x);
    }
    torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

long environment_number(const char* name, long fallback) {
    const char* value = std::getenv(name);
    return value && *value ? std::strtol(value, nullptr, 10) : fallback;
}

std::string dataset_folder() {
    const char* value = std::getenv("FEDCLI_FASHION_MNIST");
    return value && *value ? value : "/usr/share/datasets/fashion-mnist";
}

/// Reads a gzip'd idx file into a uint8 tensor of its shape.
torch::Tensor read_idx(const std::string& name) {
    std::string path = dataset_folder() + "/" + name;
    gzFile file = gzopen(path.c_str(), "rb");
    if (!file) {
        throw fedcli::Error(path +
                            " is missing: install Debian's dataset-fashion-mnist or set "
                            "FEDCLI_FASHION_MNIST");
    }
    std::vector<unsigned char> content;
    unsigned char block[1 << 16];
    int n;
    while ((n = gzread(file, block, sizeof block)) > 0)
        content.insert(content.end(), block, block + n);
    gzclose(file);
    if (content.size() < 4) throw fedcli::Error(path + ": not an idx file");
    int dimensions = content[3];
    std::vector<int64_t> shape;
    std::size_t offset = 4;
    for (int i = 0; i < dimensions; ++i, offset += 4) {
        shape.push_back(int64_t{content[offset]} << 24 | int64_t{content[offset + 1]} << 16 |
                        int64_t{content[offset + 2]} << 8 | int64_t{content[offset + 3]});
    }
    auto tensor = torch::empty(shape, torch::kUInt8);
    if (content.size() - offset != static_cast<std::size_t>(tensor.numel())) {
        throw fedcli::Error(path + ": size does not match its header");
    }
    std::memcpy(tensor.data_ptr(), content.data() + offset, tensor.numel());
    return tensor;
}

struct Data {
    torch::Tensor x_train, y_train, x_test, y_test;
};

/// This client's IID share of the training set and the whole test set.
Data load_data() {
    long index = environment_number("FEDCLI_CLIENT_INDEX", 0);
    long count = environment_number("FEDCLI_NUM_CLIENTS", 1);
    if (count < 1 || index < 0 || index >= count) {
        throw fedcli::Error("FEDCLI_CLIENT_INDEX=" + std::to_string(index) + " is outside 0.." +
                            std::to_string(count - 1));
    }
    auto images = read_idx("train-images-idx3-ubyte.gz");
    auto labels = read_idx("train-labels-idx1-ubyte.gz");
    std::vector<int64_t> order(images.size(0));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(1234));
    int64_t begin = images.size(0) * index / count, end = images.size(0) * (index + 1) / count;
    std::vector<int64_t> part(order.begin() + begin, order.begin() + end);
    std::sort(part.begin(), part.end());
    auto selection = torch::tensor(part, torch::kInt64);
    auto to_float = [](const torch::Tensor& x) {
        return x.reshape({x.size(0), 784}).to(torch::kFloat32) / 255.0;
    };
    return {to_float(images.index_select(0, selection)),
            labels.index_select(0, selection).to(torch::kInt64),
            to_float(read_idx("t10k-images-idx3-ubyte.gz")),
            read_idx("t10k-labels-idx1-ubyte.gz").to(torch::kInt64)};
}

std::pair<double, double> evaluate(Net& net, const torch::Tensor& x, const torch::Tensor& y) {
    torch::NoGradGuard no_grad;
    net.eval();
    auto logits = net.forward(x);
    double loss = torch::nn::functional::cross_entropy(logits, y).item<double>();
    double accuracy = logits.argmax(1).eq(y).to(torch::kFloat64).mean().item<double>();
    return {loss, accuracy};
}

int train(const std::string& input, const std::string& output) {
    auto settings = fedcli::torch::load_settings(input);
    int epochs = settings.value("epochs", 1);
    int batch_size = settings.value("batch_size", 32);
    double learning_rate = settings.value("learning_rate", 0.01);
    torch::manual_seed(1000 * settings.value("round", 0) +
                       environment_number("FEDCLI_CLIENT_INDEX", 0));
    Data data = load_data();
    Net net;
    fedcli::torch::load(net, input);
    torch::optim::SGD optimizer(net.parameters(), torch::optim::SGDOptions(learning_rate));
    int64_t examples = data.x_train.size(0);
    for (int epoch = 0; epoch < epochs; ++epoch) {
        net.train();
        auto order = torch::randperm(examples, torch::kInt64);
        for (int64_t start = 0; start < examples; start += batch_size) {
            auto batch = order.slice(0, start, std::min(start + batch_size, examples));
            optimizer.zero_grad();
            auto loss = torch::nn::functional::cross_entropy(
                net.forward(data.x_train.index_select(0, batch)),
                data.y_train.index_select(0, batch));
            loss.backward();
            optimizer.step();
        }
    }
    fedcli::torch::save(net, output);
    auto [loss, accuracy] = evaluate(net, data.x_train, data.y_train);
    fedcli::torch::save_metadata({{"num_examples", examples},
                                  {"epochs", epochs},
                                  {"batch_size", batch_size},
                                  {"learning_rate", learning_rate},
                                  {"training_loss", loss},
                                  {"training_accuracy", accuracy}},
                                 output);
    std::cout << "trained on " << examples << " examples: loss " << loss << ", accuracy "
              << accuracy << "\n";
    return 0;
}

int validate(const std::string& input, const std::string& output) {
    Data data = load_data();
    Net net;
    fedcli::torch::load(net, input);
    auto [train_loss, train_accuracy] = evaluate(net, data.x_train, data.y_train);
    auto [test_loss, test_accuracy] = evaluate(net, data.x_test, data.y_test);
    fedcli::torch::save_metrics({{"training_loss", train_loss},
                                 {"training_accuracy", train_accuracy},
                                 {"test_loss", test_loss},
                                 {"test_accuracy", test_accuracy}},
                                output);
    std::cout << "test accuracy " << test_accuracy << ", test loss " << test_loss << "\n";
    return 0;
}

int predict(const std::string& input, const std::string& output) {
    Data data = load_data();
    Net net;
    fedcli::torch::load(net, input);
    torch::NoGradGuard no_grad;
    net.eval();
    auto predictions = net.forward(data.x_test.slice(0, 0, 100)).argmax(1);
    std::vector<int64_t> values(predictions.data_ptr<int64_t>(),
                                predictions.data_ptr<int64_t>() + predictions.numel());
    fedcli::torch::save_metrics({{"predictions", values}, {"count", values.size()}}, output);
    std::cout << "predicted " << values.size() << " examples\n";
    return 0;
}

int usage() {
    std::cerr
        << "usage: fedcli-entry build [OUTPUT] | startup | train|validate|predict INPUT OUTPUT\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    torch::set_num_threads(static_cast<int>(environment_number("FEDCLI_TORCH_THREADS", 1)));
    if (argc < 2) return usage();
    std::string command = argv[1];
    try {
        if (command == "build") {
            std::string output = argc > 2 ? argv[2] : "seed.npz";
            torch::manual_seed(0);
            Net net;
            fedcli::torch::save(net, output);
            std::cout << "seed model written to " << output << "\n";
            return 0;
        }
        if (command == "startup") {
            Data data = load_data();
            std::cout << "client " << environment_number("FEDCLI_CLIENT_INDEX", 0) << "/"
                      << environment_number("FEDCLI_NUM_CLIENTS", 1) << ": " << data.x_train.size(0)
                      << " training and " << data.x_test.size(0) << " test examples\n";
            return 0;
        }
        if (argc != 4) return usage();
        if (command == "train") return train(argv[2], argv[3]);
        if (command == "validate") return validate(argv[2], argv[3]);
        if (command == "predict") return predict(argv[2], argv[3]);
        return usage();
    } catch (const std::exception& error) {
        std::cerr << "fedcli-entry " << command << ": error: " << error.what() << "\n";
        return 1;
    }
}
