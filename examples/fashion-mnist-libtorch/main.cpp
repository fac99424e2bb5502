// Entry points of examples/fashion-mnist-libtorch: Fashion-MNIST with LibTorch (Debian's
// libtorch-dev), the same task, models and defaults as examples/fashion-mnist-pytorch.
//
//   fashion-mnist build [OUTPUT]         the seed model ($FEDCLI_MODEL, $FEDCLI_SEED)
//   fashion-mnist startup                this client's share: sizes and label counts
//   fashion-mnist train INPUT OUTPUT     local epochs; OUTPUT-metadata with num_examples
//   fashion-mnist validate INPUT OUTPUT  training/test loss and accuracy (JSON)
//   fashion-mnist predict INPUT OUTPUT   predictions for the first 100 test images (JSON)
//
// Models (FEDCLI_MODEL, read by build; the others recognise the model from the file):
//   cnn (default)  conv3x3(16)-maxpool-conv3x3(32)-maxpool-fc128-fc10  (206,922 parameters)
//   mlp            FEDn's mnist MLP 784-64-32-10 with dropout 0.5     (52,650 parameters)
//                  on standardized pixels (Fashion-MNIST's mean 0.2860, std 0.3530)
// Parameters are stored in state_dict order under keys "0".."N-1", so the files are
// interchangeable with the PyTorch example's.
//
// Threads: FEDCLI_TORCH_THREADS (1); entry.sh also sets OPENBLAS_NUM_THREADS and
// OMP_NUM_THREADS from it before the program starts. Seeds: FEDCLI_SEED (0) fixes the seed
// model and, with the round and the client index, each round's shuffling and dropout.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include "core/torch/parameters.hpp"
#include "data.hpp"

namespace {

namespace F = torch::nn::functional;

/// Both models behind one interface, so the entry points do not care which one they run.
struct Model : torch::nn::Module {
    virtual torch::Tensor forward(torch::Tensor x) = 0;  // x: [N, 1, 28, 28] in [0, 1]
};

struct CNN : Model {
    CNN() {
        conv1 = register_module("conv1",
                                torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)));
        conv2 = register_module("conv2",
                                torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)));
        fc1 = register_module("fc1", torch::nn::Linear(32 * 7 * 7, 128));
        fc2 = register_module("fc2", torch::nn::Linear(128, 10));
    }
    torch::Tensor forward(torch::Tensor x) override {
        x = F::max_pool2d(torch::relu(conv1->forward(x)), F::MaxPool2dFuncOptions(2));
        x = F::max_pool2d(torch::relu(conv2->forward(x)), F::MaxPool2dFuncOptions(2));
        return fc2->forward(torch::relu(fc1->forward(x.flatten(1))));
    }
    torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
    torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

struct MLP : Model {
    MLP() {
        fc1 = register_module("fc1", torch::nn::Linear(784, 64));
        fc2 = register_module("fc2", torch::nn::Linear(64, 32));
        fc3 = register_module("fc3", torch::nn::Linear(32, 10));
    }
    torch::Tensor forward(torch::Tensor x) override {
        x = torch::relu(fc1->forward(x.flatten(1).sub(0.2860).div(0.3530)));
        x = F::dropout(x, F::DropoutFuncOptions().p(0.5).training(is_training()));
        x = torch::relu(fc2->forward(x));
        return fc3->forward(x);
    }
    torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

std::shared_ptr<Model> new_model(const std::string& name) {
    if (name == "cnn") return std::make_shared<CNN>();
    if (name == "mlp") return std::make_shared<MLP>();
    throw std::runtime_error("FEDCLI_MODEL=" + name + ": expected cnn or mlp");
}

/// The model in `path`; which one follows from its first array (4-D: the CNN).
std::pair<std::shared_ptr<Model>, std::string> load_model(const std::string& path) {
    fedcli::npz::Reader reader{std::filesystem::path(path)};
    if (reader.members().empty()) throw std::runtime_error(path + " holds no arrays");
    std::string name = reader.members().front().array.shape.size() == 4 ? "cnn" : "mlp";
    auto model = new_model(name);
    fedcli::torch::load(*model, path);  // names the array whose shape or dtype differs
    return {model, name};
}

std::int64_t parameter_count(Model& model) {
    std::int64_t count = 0;
    for (const auto& parameter : model.parameters()) count += parameter.numel();
    return count;
}

/// uint8 images (N x 784) and labels -> float [N, 1, 28, 28] in [0, 1] and int64 labels.
std::pair<torch::Tensor, torch::Tensor> as_tensors(const std::vector<std::uint8_t>& images,
                                                   const std::vector<std::uint8_t>& labels) {
    auto n = static_cast<std::int64_t>(labels.size());
    auto x =
        torch::from_blob(const_cast<std::uint8_t*>(images.data()), {n, 1, 28, 28}, torch::kUInt8)
            .to(torch::kFloat32)
            .div_(255.0);
    auto y = torch::from_blob(const_cast<std::uint8_t*>(labels.data()), {n}, torch::kUInt8)
                 .to(torch::kInt64);
    return {x, y};
}

struct Tensors {
    torch::Tensor x_train, y_train, x_test, y_test;
};

Tensors load_tensors() {
    example::Share share = example::load_share(example::partition_settings());
    auto [x_train, y_train] = as_tensors(share.train_images, share.train_labels);
    auto [x_test, y_test] = as_tensors(share.test_images, share.test_labels);
    return {x_train, y_train, x_test, y_test};
}

/// Mean cross-entropy loss and accuracy of `model` on x, y, in eval mode.
std::pair<double, double> evaluate(Model& model, const torch::Tensor& x, const torch::Tensor& y) {
    torch::NoGradGuard no_grad;
    model.eval();
    double total_loss = 0;
    std::int64_t correct = 0, n = x.size(0);
    for (std::int64_t start = 0; start < n; start += 256) {
        auto end = std::min(start + 256, n);
        auto logits = model.forward(x.slice(0, start, end));
        auto labels = y.slice(0, start, end);
        total_loss +=
            F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
        correct += logits.argmax(1).eq(labels).sum().item<std::int64_t>();
    }
    auto count = static_cast<double>(std::max<std::int64_t>(n, 1));
    return {total_loss / count, static_cast<double>(correct) / count};
}

/// The round settings, checked, with the model's defaults (those that met the quality bar
/// in docs/examples.md): the CNN trains with SGD (0.02, momentum 0.9), the MLP with Adam
/// (0.002), both at a learning rate that shrinks by 0.8 each round of the session; batch
/// 32, one epoch.
struct TrainingSettings {
    int epochs = 1;
    int batch_size = 32;
    std::string optimizer;
    double learning_rate = 0;
    double lr_decay = 1;
    double round_learning_rate = 0;  ///< learning_rate * lr_decay^(session round - 1)
    double momentum = 0.9;
    long round = 0;
};

TrainingSettings training_settings(const nlohmann::json& settings, const std::string& model) {
    auto get = [&](const char* key, auto fallback) {
        auto found = settings.find(key);
        if (found == settings.end()) return fallback;
        try {
            return found->template get<decltype(fallback)>();
        } catch (const nlohmann::json::exception&) {
            throw std::runtime_error(std::string("round setting ") + key + "=" + found->dump() +
                                     " has the wrong type");
        }
    };
    TrainingSettings chosen;
    chosen.epochs = get("epochs", 1);
    chosen.batch_size = get("batch_size", 32);
    chosen.optimizer = get("optimizer", std::string(model == "cnn" ? "sgd" : "adam"));
    if (chosen.optimizer != "sgd" && chosen.optimizer != "adam") {
        throw std::runtime_error("round setting optimizer=" + chosen.optimizer +
                                 ": expected sgd or adam");
    }
    double default_rate = chosen.optimizer == "sgd" ? 0.02 : 0.002;
    chosen.learning_rate = get("learning_rate", get("lr", default_rate));
    chosen.lr_decay = get("lr_decay", 0.8);
    chosen.momentum = get("momentum", 0.9);
    chosen.round = example::environment_long("FEDCLI_ROUND", get("round", 0L));
    if (chosen.epochs < 1 || chosen.batch_size < 1 || !(chosen.learning_rate > 0) ||
        !(chosen.lr_decay > 0 && chosen.lr_decay <= 1)) {
        throw std::runtime_error(
            "round settings need epochs >= 1, batch_size >= 1, learning_rate > 0 and "
            "0 < lr_decay <= 1");
    }
    // The schedule counts the session's rounds (the combiner's round ids count on across
    // sessions); `fedcli run train --round R` stands for round R of a session.
    long session_round = get("session_round", chosen.round);
    chosen.round_learning_rate =
        chosen.learning_rate * std::pow(chosen.lr_decay, std::max(0L, session_round - 1));
    return chosen;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(Model& model, const TrainingSettings& s) {
    if (s.optimizer == "adam") {
        return std::make_unique<torch::optim::Adam>(
            model.parameters(), torch::optim::AdamOptions(s.round_learning_rate));
    }
    return std::make_unique<torch::optim::SGD>(
        model.parameters(), torch::optim::SGDOptions(s.round_learning_rate).momentum(s.momentum));
}

int train(const std::string& input, const std::string& output) {
    auto [model, name] = load_model(input);
    TrainingSettings chosen = training_settings(fedcli::torch::load_settings(input), name);
    long index = example::environment_long("FEDCLI_CLIENT_INDEX", 0);
    auto seed = static_cast<std::uint64_t>(example::environment_long("FEDCLI_SEED", 0));
    // One stream per (seed, round, client): distinct across clients and rounds, fixed by them.
    std::uint64_t stream = (seed * 1'000'003 + static_cast<std::uint64_t>(chosen.round) * 1'009 +
                            static_cast<std::uint64_t>(index)) %
                           (std::uint64_t{1} << 63);
    torch::manual_seed(stream);  // dropout
    auto generator = at::make_generator<at::CPUGeneratorImpl>(stream);

    Tensors data = load_tensors();
    auto optimizer = make_optimizer(*model, chosen);
    std::int64_t n = data.x_train.size(0);
    double total_loss = 0;
    std::int64_t correct = 0;
    model->train();
    for (int epoch = 0; epoch < chosen.epochs; ++epoch) {
        auto order = torch::randperm(n, generator, torch::kInt64);
        total_loss = 0;
        correct = 0;
        for (std::int64_t start = 0; start < n; start += chosen.batch_size) {
            auto batch = order.slice(0, start, std::min(start + chosen.batch_size, n));
            auto labels = data.y_train.index_select(0, batch);
            optimizer->zero_grad();
            auto logits = model->forward(data.x_train.index_select(0, batch));
            auto loss = F::cross_entropy(logits, labels);
            loss.backward();
            optimizer->step();
            total_loss += loss.item<double>() * static_cast<double>(batch.size(0));
            correct += logits.argmax(1).eq(labels).sum().item<std::int64_t>();
        }
    }
    std::int64_t steps = chosen.epochs * ((n + chosen.batch_size - 1) / chosen.batch_size);
    double loss = total_loss / static_cast<double>(std::max<std::int64_t>(n, 1));
    double accuracy =
        static_cast<double>(correct) / static_cast<double>(std::max<std::int64_t>(n, 1));
    fedcli::torch::save(*model, output);
    fedcli::torch::save_metadata({{"num_examples", n},
                                  {"model", name},
                                  {"epochs", chosen.epochs},
                                  {"batch_size", chosen.batch_size},
                                  {"optimizer", chosen.optimizer},
                                  {"learning_rate", chosen.learning_rate},
                                  {"lr_decay", chosen.lr_decay},
                                  {"round_learning_rate", chosen.round_learning_rate},
                                  {"momentum", chosen.momentum},
                                  {"round", chosen.round},
                                  {"steps", steps},
                                  {"training_loss", loss},
                                  {"training_accuracy", accuracy}},
                                 output);
    std::cout << "client " << index << " round " << chosen.round << ": " << name << " trained on "
              << n << " examples (" << steps << " steps): last epoch's loss " << std::fixed
              << std::setprecision(4) << loss << ", accuracy " << accuracy << "\n";
    return 0;
}

int validate(const std::string& input, const std::string& output) {
    auto [model, name] = load_model(input);
    Tensors data = load_tensors();
    auto [training_loss, training_accuracy] = evaluate(*model, data.x_train, data.y_train);
    auto [test_loss, test_accuracy] = evaluate(*model, data.x_test, data.y_test);
    fedcli::torch::save_metrics({{"training_loss", training_loss},
                                 {"training_accuracy", training_accuracy},
                                 {"test_loss", test_loss},
                                 {"test_accuracy", test_accuracy},
                                 {"training_examples", data.x_train.size(0)},
                                 {"test_examples", data.x_test.size(0)}},
                                output);
    std::cout << name << ": training accuracy " << std::fixed << std::setprecision(4)
              << training_accuracy << ", loss " << training_loss << "; test accuracy "
              << test_accuracy << ", loss " << test_loss << "\n";
    return 0;
}

int predict(const std::string& input, const std::string& output) {
    auto [model, name] = load_model(input);
    Tensors data = load_tensors();
    torch::NoGradGuard no_grad;
    model->eval();
    auto count = std::min<std::int64_t>(100, data.x_test.size(0));
    auto predictions = model->forward(data.x_test.slice(0, 0, count)).argmax(1).contiguous();
    std::vector<std::int64_t> values(predictions.data_ptr<std::int64_t>(),
                                     predictions.data_ptr<std::int64_t>() + count);
    fedcli::torch::save_metrics({{"model", name}, {"predictions", values}, {"count", count}},
                                output);
    std::cout << name << ": predicted " << count << " test images\n";
    return 0;
}

int build(const std::string& output) {
    const char* chosen = std::getenv("FEDCLI_MODEL");
    std::string name = chosen && *chosen ? chosen : "cnn";
    long seed = example::environment_long("FEDCLI_SEED", 0);
    torch::manual_seed(static_cast<std::uint64_t>(seed));
    auto model = new_model(name);
    fedcli::torch::save(*model, output);
    std::cout << "seed model (" << name << ", " << parameter_count(*model) << " parameters, seed "
              << seed << ") written to " << output << "\n";
    return 0;
}

/// Reports this client's share and writes its positions in the training set ("index") and
/// label counts ("label_counts") to <data folder>/<share name>.npz, for inspection: every
/// entry point computes the share again from the settings.
int startup() {
    auto settings = example::partition_settings();
    example::Share share = example::load_share(settings);
    fedcli::npz::Array index(fedcli::npz::DType::int64, {share.train_index.size()});
    std::copy(share.train_index.begin(), share.train_index.end(),
              index.values<std::int64_t>().begin());
    fedcli::npz::Array counts(fedcli::npz::DType::int64, {10});
    auto count = counts.values<std::int64_t>();
    std::fill(count.begin(), count.end(), 0);
    for (auto label : share.train_labels) ++count[label % 10];
    std::ostringstream labels;
    for (std::size_t i = 0; i < count.size(); ++i) labels << (i ? ", " : "[") << count[i];

    const char* data_path = std::getenv("FEDCLI_DATA_PATH");
    std::filesystem::path folder = data_path && *data_path ? data_path : "data";
    std::filesystem::create_directories(folder);
    auto file = folder / (example::share_name(settings) + ".npz");
    fedcli::npz::ParameterSet record;
    record.add("index", std::move(index));
    record.add("label_counts", std::move(counts));
    fedcli::npz::write_npz(file, record);
    std::cout << example::describe(settings) << ": " << share.train_count()
              << " training examples, labels " << labels.str() << "]; " << share.test_count()
              << " test examples; " << file.string() << "\n";
    return 0;
}

int usage() {
    std::cerr << "usage: fashion-mnist build [OUTPUT] | startup | train|validate|predict INPUT "
                 "OUTPUT\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage();
    std::string command = argv[1];
    try {
        long threads = example::environment_long("FEDCLI_TORCH_THREADS", 1);
        if (threads < 1) throw std::runtime_error("FEDCLI_TORCH_THREADS must be at least 1");
        torch::set_num_threads(static_cast<int>(threads));
        torch::set_num_interop_threads(static_cast<int>(threads));
        if (command == "build" && argc <= 3) return build(argc == 3 ? argv[2] : "seed.npz");
        if (command == "startup" && argc == 2) return startup();
        if (argc != 4) return usage();
        if (command == "train") return train(argv[2], argv[3]);
        if (command == "validate") return validate(argv[2], argv[3]);
        if (command == "predict") return predict(argv[2], argv[3]);
        return usage();
    } catch (const std::exception& error) {
        std::cerr << "fashion-mnist " << command << ": error: " << error.what() << "\n";
        return 1;
    }
}
