#include "core/aggregate/diff.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <unordered_map>

#include "core/aggregate/internal.hpp"
#include "core/npz/mapped.hpp"

namespace fedcli::aggregate {
namespace {

struct ArrayView {
    std::string name;
    npz::DType dtype;
    npz::Shape shape;
    std::uint64_t count;
    const std::byte* data;
};

struct Partial {
    std::uint64_t differing = 0;
    std::uint64_t non_finite = 0;
    double max_abs = 0;
    double sum_abs = 0;
    double sum_squares = 0;
};

constexpr std::uint64_t k_chunk = 1 << 16;

ModelDifference compare(const std::vector<ArrayView>& a, const std::vector<ArrayView>& b,
                        unsigned threads) {
    ModelDifference result;
    std::unordered_map<std::string, std::size_t> in_b;
    for (std::size_t i = 0; i < b.size(); ++i) in_b.emplace(b[i].name, i);
    std::unordered_map<std::string, bool> in_a;
    for (const auto& view : a) in_a.emplace(view.name, true);

    // Work items: chunks of the arrays present in both with equal shapes.
    struct Task {
        std::size_t array;  // index into result.arrays
        const ArrayView* left;
        const ArrayView* right;
        std::uint64_t offset, count;
    };
    std::vector<Task> tasks;
    for (const auto& left : a) {
        ArrayDifference entry;
        entry.name = left.name;
        entry.dtype_a = left.dtype;
        entry.shape_a = left.shape;
        auto found = in_b.find(left.name);
        if (found == in_b.end()) {
            entry.status = ArrayDifference::Status::only_in_a;
        } else {
            const ArrayView& right = b[found->second];
            entry.dtype_b = right.dtype;
            entry.shape_b = right.shape;
            if (left.shape != right.shape) {
                entry.status = ArrayDifference::Status::shape_mismatch;
            } else {
                entry.elements = left.count;
                for (std::uint64_t offset = 0; offset < left.count; offset += k_chunk) {
                    tasks.push_back({result.arrays.size(), &left, &right, offset,
                                     std::min(k_chunk, left.count - offset)});
                }
            }
        }
        result.arrays.push_back(std::move(entry));
    }
    for (const auto& right : b) {
        if (in_a.count(right.name)) continue;
        ArrayDifference entry;
        entry.name = right.name;
        entry.status = ArrayDifference::Status::only_in_b;
        entry.dtype_b = right.dtype;
        entry.shape_b = right.shape;
        result.arrays.push_back(std::move(entry));
    }

    std::vector<Partial> partials(tasks.size());
    detail::parallel_for(tasks.size(), threads, [&](std::size_t index) {
        const Task& task = tasks[index];
        Partial& partial = partials[index];
        constexpr std::size_t k_block = 1024;
        double left[k_block], right[k_block];
        for (std::uint64_t done = 0; done < task.count; done += k_block) {
            auto n = static_cast<std::size_t>(std::min<std::uint64_t>(k_block, task.count - done));
            detail::load_doubles(task.left->dtype, task.left->data, task.offset + done, left, n);
            detail::load_doubles(task.right->dtype, task.right->data, task.offset + done, right, n);
            for (std::size_t i = 0; i < n; ++i) {
                double x = left[i], y = right[i];
                if (x == y || (std::isnan(x) && std::isnan(y))) continue;
                if (!std::isfinite(x) || !std::isfinite(y)) {
                    ++partial.non_finite;
                    continue;
                }
                double d = std::fabs(x - y);
                ++partial.differing;
                partial.max_abs = std::max(partial.max_abs, d);
                partial.sum_abs += d;
                partial.sum_squares += d * d;
            }
        }
    });

    std::vector<double> sum_abs(result.arrays.size(), 0.0), sum_squares(result.arrays.size(), 0.0);
    for (std::size_t index = 0; index < tasks.size(); ++index) {
        auto& entry = result.arrays[tasks[index].array];
        const Partial& partial = partials[index];
        entry.differing += partial.differing;
        entry.non_finite_mismatches += partial.non_finite;
        entry.max_abs = std::max(entry.max_abs, partial.max_abs);
        sum_abs[tasks[index].array] += partial.sum_abs;
        sum_squares[tasks[index].array] += partial.sum_squares;
    }
    double total_squares = 0;
    for (std::size_t i = 0; i < result.arrays.size(); ++i) {
        auto& entry = result.arrays[i];
        if (entry.status != ArrayDifference::Status::compared) {
            result.identical = false;
            continue;
        }
        std::uint64_t finite = entry.elements - entry.non_finite_mismatches;
        entry.mean_abs = finite ? sum_abs[i] / static_cast<double>(finite) : 0.0;
        entry.l2 = std::sqrt(sum_squares[i]);
        total_squares += sum_squares[i];
        result.elements += entry.elements;
        result.differing += entry.differing;
        result.non_finite_mismatches += entry.non_finite_mismatches;
        result.max_abs = std::max(result.max_abs, entry.max_abs);
        if (entry.dtype_a != entry.dtype_b || entry.differing || entry.non_finite_mismatches) {
            result.identical = false;
        }
    }
    result.l2 = std::sqrt(total_squares);
    return result;
}

std::vector<ArrayView> views(const npz::ParameterSet& set) {
    std::vector<ArrayView> out;
    for (const auto& entry : set) {
        out.push_back({entry.name, entry.array.dtype(), entry.array.shape(), entry.array.size(),
                       entry.array.data()});
    }
    return out;
}

std::vector<ArrayView> views(const npz::MappedNpz& file) {
    std::vector<ArrayView> out;
    for (std::size_t i = 0; i < file.members().size(); ++i) {
        const auto& member = file.members()[i];
        out.push_back({member.key, member.array.dtype, member.array.shape,
                       npz::element_count(member.array.shape), file.data(i).data()});
    }
    return out;
}

const char* status_name(ArrayDifference::Status status) {
    switch (status) {
        case ArrayDifference::Status::compared:
            return "compared";
        case ArrayDifference::Status::only_in_a:
            return "only_in_a";
        case ArrayDifference::Status::only_in_b:
            return "only_in_b";
        case ArrayDifference::Status::shape_mismatch:
            return "shape_mismatch";
    }
    return "compared";
}

}  // namespace

ModelDifference diff_models(const npz::ParameterSet& a, const npz::ParameterSet& b,
                            unsigned threads) {
    return compare(views(a), views(b), threads);
}

ModelDifference diff_files(const std::filesystem::path& a, const std::filesystem::path& b,
                           unsigned threads) {
    npz::MappedNpz left(a), right(b);
    return compare(views(left), views(right), threads);
}

nlohmann::json difference_json(const ModelDifference& difference) {
    nlohmann::json arrays = nlohmann::json::array();
    for (const auto& entry : difference.arrays) {
        nlohmann::json item;
        item["name"] = entry.name;
        item["status"] = status_name(entry.status);
        if (entry.status != ArrayDifference::Status::only_in_b) {
            item["dtype_a"] = npz::dtype_name(entry.dtype_a);
            item["shape_a"] = entry.shape_a;
        }
        if (entry.status != ArrayDifference::Status::only_in_a) {
            item["dtype_b"] = npz::dtype_name(entry.dtype_b);
            item["shape_b"] = entry.shape_b;
        }
        if (entry.status == ArrayDifference::Status::compared) {
            item["elements"] = entry.elements;
            item["differing"] = entry.differing;
            item["non_finite_mismatches"] = entry.non_finite_mismatches;
            item["max_abs"] = entry.max_abs;
            item["mean_abs"] = entry.mean_abs;
            item["l2"] = entry.l2;
        }
        arrays.push_back(std::move(item));
    }
    nlohmann::json json;
    json["identical"] = difference.identical;
    json["elements"] = difference.elements;
    json["differing"] = difference.differing;
    json["non_finite_mismatches"] = difference.non_finite_mismatches;
    json["max_abs"] = difference.max_abs;
    json["l2"] = difference.l2;
    json["arrays"] = std::move(arrays);
    return json;
}

}  // namespace fedcli::aggregate
