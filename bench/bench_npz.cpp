// Reading and writing a large stored .npz: fedcli's npz module against numpy's
// np.load / np.savez on the same file, in the same run.
//
//   bench_npz [--megabytes 400] [--arrays 8] [--repeat 5] [--python /usr/bin/python3]
//             [--dir DIR] [--ceiling 1.5]
//
// Both sides read the same numpy-written file from the page cache and write the same
// parameters to a new file (the previous output is deleted before each timed write, on both
// sides: replacing a file also pays for freeing the old file's cached pages); each figure is
// the best of --repeat runs. Prints, for read and write, the
// time ratio fedcli/numpy against the ceiling (target: at most 1.5) and exits 1 when a
// ratio is above it.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "core/npz/npz.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    double megabytes = 400;
    int arrays = 8;
    int repeat = 5;
    double ceiling = 1.5;
    std::string python = "/usr/bin/python3";
    std::filesystem::path dir;
};

[[noreturn]] void usage(const char* program) {
    std::fprintf(stderr,
                 "usage: %s [--megabytes N] [--arrays N] [--repeat N] [--python PATH] "
                 "[--dir DIR] [--ceiling X]\n",
                 program);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        std::string flag = argv[i];
        if (i + 1 >= argc) usage(argv[0]);
        std::string value = argv[++i];
        if (flag == "--megabytes")
            options.megabytes = std::stod(value);
        else if (flag == "--arrays")
            options.arrays = std::stoi(value);
        else if (flag == "--repeat")
            options.repeat = std::stoi(value);
        else if (flag == "--python")
            options.python = value;
        else if (flag == "--dir")
            options.dir = value;
        else if (flag == "--ceiling")
            options.ceiling = std::stod(value);
        else
            usage(argv[0]);
    }
    if (options.arrays < 1 || options.repeat < 1 || options.megabytes <= 0) usage(argv[0]);
    return options;
}

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// numpy side: writes the reference file, then times np.load (materialising every array)
// and np.savez, printing "numpy_read SECONDS" and "numpy_write SECONDS".
const char* k_numpy_script = R"PY(
import os, sys, time, numpy as np
path, out, megabytes, arrays, repeat = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
count = int(megabytes * 1e6 / 4 / arrays)
params = {str(i): rng.standard_normal(count, dtype=np.float32) for i in range(arrays)}
np.savez(path, **params)
best_read = best_write = float("inf")
for _ in range(repeat):
    start = time.perf_counter()
    with np.load(path) as f:
        loaded = {k: f[k] for k in f.files}
    best_read = min(best_read, time.perf_counter() - start)
    del loaded
    if os.path.exists(out):
        os.unlink(out)
    start = time.perf_counter()
    np.savez(out, **params)
    best_write = min(best_write, time.perf_counter() - start)
print("numpy_read", best_read)
print("numpy_write", best_write)
)PY";

}  // namespace

int main(int argc, char** argv) {
    Options options = parse(argc, argv);
    std::filesystem::path dir = options.dir;
    bool own_dir = dir.empty();
    if (own_dir) {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "bench_npz.XXXXXX").string();
        if (!mkdtemp(pattern.data())) {
            std::perror("mkdtemp");
            return 2;
        }
        dir = pattern;
    }
    auto reference = dir / "numpy.npz";
    auto numpy_out = dir / "numpy-out.npz";
    auto fedcli_out = dir / "fedcli-out.npz";

    std::string command = options.python + " -c '" + k_numpy_script + "' " + reference.string() +
                          " " + numpy_out.string() + " " + std::to_string(options.megabytes) + " " +
                          std::to_string(options.arrays) + " " + std::to_string(options.repeat);
    FILE* pipe = popen(command.c_str(), "r");
    double numpy_read = 0, numpy_write = 0;
    char line[256];
    while (pipe && std::fgets(line, sizeof line, pipe)) {
        char name[64];
        double value;
        if (std::sscanf(line, "%63s %lf", name, &value) == 2) {
            if (std::strcmp(name, "numpy_read") == 0) numpy_read = value;
            if (std::strcmp(name, "numpy_write") == 0) numpy_write = value;
        }
    }
    if (!pipe || pclose(pipe) != 0 || numpy_read <= 0 || numpy_write <= 0) {
        std::fprintf(stderr, "bench_npz: the numpy side failed (%s)\n", options.python.c_str());
        return 2;
    }

    double best_read = 1e30, best_write = 1e30;
    std::uint64_t bytes = 0;
    for (int i = 0; i < options.repeat; ++i) {
        auto start = Clock::now();
        auto parameters = fedcli::npz::read_npz(reference);
        best_read = std::min(best_read, seconds_since(start));
        bytes = parameters.total_bytes();
        std::filesystem::remove(fedcli_out);
        start = Clock::now();
        fedcli::npz::write_npz(fedcli_out, parameters);
        best_write = std::min(best_write, seconds_since(start));
    }
    // Both writers must have produced the same arrays.
    auto ours = fedcli::npz::read_npz(fedcli_out);
    auto theirs = fedcli::npz::read_npz(numpy_out);
    bool same = ours.size() == theirs.size();
    for (std::size_t i = 0; same && i < ours.size(); ++i) {
        same = ours[i].name == theirs[i].name &&
               ours[i].array.byte_size() == theirs[i].array.byte_size() &&
               std::memcmp(ours[i].array.data(), theirs[i].array.data(),
                           ours[i].array.byte_size()) == 0;
    }

    double gb = static_cast<double>(bytes) / 1e9;
    double read_ratio = best_read / numpy_read;
    double write_ratio = best_write / numpy_write;
    std::printf("npz: %d arrays, %.1f MB of float32, best of %d\n", options.arrays, gb * 1e3,
                options.repeat);
    std::printf("  read   fedcli %.3f s (%.2f GB/s)   numpy np.load  %.3f s (%.2f GB/s)\n",
                best_read, gb / best_read, numpy_read, gb / numpy_read);
    std::printf("  write  fedcli %.3f s (%.2f GB/s)   numpy np.savez %.3f s (%.2f GB/s)\n",
                best_write, gb / best_write, numpy_write, gb / numpy_write);
    std::printf("  read ratio fedcli/numpy = %.2f (ceiling %.2f) %s\n", read_ratio, options.ceiling,
                read_ratio <= options.ceiling ? "ok" : "ABOVE CEILING");
    std::printf("  write ratio fedcli/numpy = %.2f (ceiling %.2f) %s\n", write_ratio,
                options.ceiling, write_ratio <= options.ceiling ? "ok" : "ABOVE CEILING");
    std::printf("  outputs identical: %s\n", same ? "yes" : "NO");

    if (own_dir) std::filesystem::remove_all(dir);
    return read_ratio <= options.ceiling && write_ratio <= options.ceiling && same ? 0 : 1;
}
