// fedcli_torch: moving a module's state to and from .npz, cross-checked against PyTorch.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "core/npz/npz.hpp"
#include "core/torch/parameters.hpp"
#include "tests/unit/support.hpp"

namespace {

using fedcli::test::TempDir;

// Same architecture as the Python class in python_state_dict(): nested module, BatchNorm
// buffers (running stats and the int64 num_batches_tracked counter).
struct Block : torch::nn::Module {
    Block() {
        linear = register_module("linear", torch::nn::Linear(8, 4));
        norm = register_module("norm", torch::nn::BatchNorm1d(4));
    }
    torch::nn::Linear linear{nullptr};
    torch::nn::BatchNorm1d norm{nullptr};
};

struct Net : torch::nn::Module {
    Net() {
        input = register_module("input", torch::nn::Linear(3, 8));
        block = register_module("block", std::make_shared<Block>());
        output = register_module("output", torch::nn::Linear(4, 2));
    }
    torch::nn::Linear input{nullptr};
    std::shared_ptr<Block> block;
    torch::nn::Linear output{nullptr};
};

const char* k_python_net = R"PY(
import sys, numpy as np, torch
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)
        self.norm = torch.nn.BatchNorm1d(4)
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input = torch.nn.Linear(3, 8)
        self.block = Block()
        self.output = torch.nn.Linear(4, 2)
)PY";

}  // namespace

TEST_CASE("state entries follow PyTorch's state_dict order and names") {
    TempDir dir;
    auto names_file = dir / "names.txt";
    fedcli::test::run_python(
        std::string(k_python_net) +
            "open(sys.argv[1], 'w').write('\\n'.join(Net().state_dict().keys()))",
        {names_file.string()});
    Net net;
    std::string expected = fedcli::test::read_file(names_file);
    std::string actual;
    for (const auto& [name, tensor] : fedcli::torch::state_entries(net)) {
        if (!actual.empty()) actual += "\n";
        actual += name;
    }
    REQUIRE(actual == expected);
}

TEST_CASE("a module round-trips through an npz file") {
    TempDir dir;
    torch::manual_seed(1);
    Net source;
    source.block->norm->running_mean.fill_(0.25);
    source.block->norm->num_batches_tracked.fill_(7);
    fedcli::torch::save(source, dir / "model.npz");

    auto parameters = fedcli::npz::read_npz(dir / "model.npz");
    REQUIRE(parameters.key_convention() == fedcli::npz::KeyConvention::numbered);
    REQUIRE(parameters.size() == fedcli::torch::state_entries(source).size());

    torch::manual_seed(2);
    Net target;
    fedcli::torch::load(target, dir / "model.npz");
    auto a = fedcli::torch::state_entries(source);
    auto b = fedcli::torch::state_entries(target);
    for (std::size_t i = 0; i < a.size(); ++i) {
        INFO(a[i].first);
        REQUIRE(torch::equal(a[i].second, b[i].second));
    }
    REQUIRE(target.block->norm->num_batches_tracked.item<int64_t>() == 7);
}

TEST_CASE("a PyTorch-written state_dict loads by name and by position") {
    TempDir dir;
    auto named = dir / "named.npz";
    auto numbered = dir / "numbered.npz";
    fedcli::test::run_python(
        std::string(k_python_net) +
            "torch.manual_seed(3)\n"
            "net = Net()\n"
            "net.block.norm.running_var.fill_(2.5)\n"
            "sd = {k: v.numpy() for k, v in net.state_dict().items()}\n"
            "np.savez(sys.argv[1], **sd)\n"
            "np.savez(sys.argv[2], **{str(i): v for i, v in enumerate(sd.values())})\n"
            "np.savez(sys.argv[3], **{str(i): v for i, v in enumerate(sd.values())})\n",
        {named.string(), numbered.string(), (dir / "check.npz").string()});
    Net by_name, by_position;
    fedcli::torch::load(by_name, named);
    fedcli::torch::load(by_position, numbered);
    REQUIRE(torch::allclose(by_name.block->norm->running_var, torch::full({4}, 2.5)));
    auto a = fedcli::torch::state_entries(by_name);
    auto b = fedcli::torch::state_entries(by_position);
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(torch::equal(a[i].second, b[i].second));

    // And what fedcli_torch writes, PyTorch loads into the same values.
    fedcli::torch::save(by_name, dir / "from-cpp.npz", fedcli::torch::Keys::named);
    fedcli::test::run_python(
        std::string(k_python_net) +
            "a = np.load(sys.argv[1]); b = np.load(sys.argv[2])\n"
            "net = Net(); net.load_state_dict({k: torch.from_numpy(a[k]) for k in a.files})\n"
            "assert list(a.files) == list(net.state_dict().keys())\n"
            "for k in a.files: assert np.array_equal(a[k], b[k]), k\n",
        {(dir / "from-cpp.npz").string(), named.string()});
}

TEST_CASE("a mismatched parameter file is refused and leaves the module untouched") {
    TempDir dir;
    Net net;
    auto before = net.input->weight.clone();
    auto parameters = fedcli::torch::to_parameters(net);
    parameters[0].array = fedcli::npz::Array(fedcli::npz::DType::float32, {8, 4});
    fedcli::npz::write_npz(dir / "bad.npz", parameters);
    REQUIRE_THROWS_WITH(fedcli::torch::load(net, dir / "bad.npz"),
                        Catch::Contains("bad.npz") && Catch::Contains("array \"0\"") &&
                            Catch::Contains("[8, 4]") && Catch::Contains("[8, 3]"));
    REQUIRE(torch::equal(before, net.input->weight));

    fedcli::npz::ParameterSet too_few;
    too_few.add("0", fedcli::npz::Array(fedcli::npz::DType::float32, {8, 3}));
    REQUIRE_THROWS_WITH(fedcli::torch::from_parameters(net, too_few),
                        Catch::Contains("has 1 arrays"));
}

TEST_CASE("metadata must carry a positive integer num_examples") {
    TempDir dir;
    auto output = dir / "update.npz";
    REQUIRE_THROWS_WITH(fedcli::torch::save_metadata({{"num_examples", 0}}, output),
                        Catch::Contains("num_examples"));
    REQUIRE_THROWS(fedcli::torch::save_metadata({{"num_examples", 2.5}}, output));
    fedcli::torch::save_metadata({{"num_examples", 12}, {"loss", 0.5}}, output);
    auto text = fedcli::test::read_file(dir / "update.npz-metadata");
    REQUIRE(nlohmann::json::parse(text)["num_examples"] == 12);
    REQUIRE(fedcli::torch::load_settings(dir / "none.npz").empty());
}
