// FedAvg throughput against a same-run memory ceiling and against numpy.
//
//   bench_aggregate [--updates 8] [--elements 25000000] [--arrays 8] [--repeat 11]
//                   [--threads 0] [--python /usr/bin/python3] [--ratio-target 0.85]
//                   [--speedup-target 3]
//
// K in-memory float32 updates of N elements each (split into --arrays arrays, like a
// model's layers) are aggregated by fedcli's fedavg aggregator: begin_round, K folds with
// num_examples weights, finish into a result reused across rounds (a combiner does the
// same), all validation included. Throughput is bytes of update data per second (K*N*4
// bytes per round).
//
// The ceiling is measured in the same run on the same buffers: a plain multithreaded
// read-only sum of all K updates, as the best of two access orders (each update in turn;
// all updates in lockstep). numpy's best is np.einsum('k,kn->n', w, X) on a (K, N) float32
// array of the same size (the stacking is not timed), via --python if numpy is there; the
// BLAS product w @ X is printed for information.
//
// For reference it also times the same threads reading all updates in lockstep and writing
// their plain sum (non-temporal stores): the least traffic of any pass that writes a result.
//
// Every figure is the best of its timings over --repeat rounds; each round times the ceiling
// in both access orders, FedAvg twice, the reference, and (in a numpy worker process that
// keeps its array between requests) einsum twice and matmul once, so that all of them see
// the same machine state and FedAvg, the ceiling and einsum get as many chances each to
// meet a quiet moment of this noisy machine. Buffers are touched before timing: first touch of
// fresh memory is very slow on the VMs we run on. Exits 1 when FedAvg is below --ratio-target of
// the ceiling or below --speedup-target times numpy einsum, 2 on a usage or setup error.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/aggregate/aggregator.hpp"
#include "core/error.hpp"
#include "core/npz/npz.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using fedcli::npz::Array;
using fedcli::npz::DType;
using fedcli::npz::ParameterSet;

struct Options {
    std::size_t updates = 8;
    std::size_t elements = 25'000'000;
    std::size_t arrays = 8;
    int repeat = 11;
    unsigned threads = 0;
    std::string python = "/usr/bin/python3";
    double ratio_target = 0.85;
    double speedup_target = 3.0;
};

[[noreturn]] void usage(const char* program) {
    std::fprintf(stderr,
                 "usage: %s [--updates K] [--elements N] [--arrays A] [--repeat R] [--threads T] "
                 "[--python PATH] [--ratio-target X] [--speedup-target X]\n",
                 program);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        std::string flag = argv[i];
        if (i + 1 >= argc) usage(argv[0]);
        std::string value = argv[++i];
        try {
            if (flag == "--updates")
                options.updates = std::stoul(value);
            else if (flag == "--elements")
                options.elements = static_cast<std::size_t>(std::stod(value));
            else if (flag == "--arrays")
                options.arrays = std::stoul(value);
            else if (flag == "--repeat")
                options.repeat = std::stoi(value);
            else if (flag == "--threads")
                options.threads = static_cast<unsigned>(std::stoul(value));
            else if (flag == "--python")
                options.python = value;
            else if (flag == "--ratio-target")
                options.ratio_target = std::stod(value);
            else if (flag == "--speedup-target")
                options.speedup_target = std::stod(value);
            else
                usage(argv[0]);
        } catch (const std::exception&) {
            usage(argv[0]);
        }
    }
    if (options.updates < 1 || options.elements < options.arrays || options.arrays < 1 ||
        options.repeat < 1) {
        usage(argv[0]);
    }
    return options;
}

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---------------------------------------------------------------------------------------
// The ceiling: read-only sums

float sum_portable(const float* p, std::size_t n) {
    float s[8] = {};
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) s[j] += p[i + j];
    }
    for (; i < n; ++i) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) float sum_avx2(const float* p, std::size_t n) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
        b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
        c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 16));
        d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 24));
    }
    a = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, a);
    float s = 0;
    for (float lane : lanes) s += lane;
    return s + sum_portable(p + i, n - i);
}

/// Sum over K streams read in lockstep, 8 floats at a time per stream.
__attribute__((target("avx2"))) float sum_lockstep_avx2(const float* const* p, std::size_t k,
                                                        std::size_t begin, std::size_t end) {
    __m256 a = _mm256_setzero_ps(), b = a;
    std::size_t i = begin;
    for (; i + 16 <= end; i += 16) {
        for (std::size_t j = 0; j < k; ++j) {
            a = _mm256_add_ps(a, _mm256_loadu_ps(p[j] + i));
            b = _mm256_add_ps(b, _mm256_loadu_ps(p[j] + i + 8));
        }
    }
    a = _mm256_add_ps(a, b);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, a);
    float s = 0;
    for (float lane : lanes) s += lane;
    for (std::size_t j = 0; j < k; ++j) s += sum_portable(p[j] + i, end - i);
    return s;
}

/// Like sum_lockstep_avx2, but also stores the elementwise sum (non-temporal): the
/// cheapest pass that reads K streams and writes one, for reference.
__attribute__((target("avx2"))) void add_lockstep_avx2(const float* const* p, std::size_t k,
                                                       float* out, std::size_t begin,
                                                       std::size_t end) {
    std::size_t i = begin;
    for (; i + 16 <= end; i += 16) {
        __m256 a = _mm256_setzero_ps(), b = a;
        for (std::size_t j = 0; j < k; ++j) {
            a = _mm256_add_ps(a, _mm256_loadu_ps(p[j] + i));
            b = _mm256_add_ps(b, _mm256_loadu_ps(p[j] + i + 8));
        }
        _mm256_stream_ps(out + i, a);
        _mm256_stream_ps(out + i + 8, b);
    }
    for (; i < end; ++i) {
        float s = 0;
        for (std::size_t j = 0; j < k; ++j) s += p[j][i];
        out[i] = s;
    }
    _mm_sfence();
}
#endif

bool have_avx2() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

float sum(const float* p, std::size_t n) {
#if defined(__x86_64__)
    if (have_avx2()) return sum_avx2(p, n);
#endif
    return sum_portable(p, n);
}

float sum_lockstep(const float* const* p, std::size_t k, std::size_t begin, std::size_t end) {
#if defined(__x86_64__)
    if (have_avx2()) return sum_lockstep_avx2(p, k, begin, end);
#endif
    float s = 0;
    for (std::size_t i = begin; i < end; i += 4096) {
        std::size_t stop = std::min(end, i + 4096);
        for (std::size_t j = 0; j < k; ++j) s += sum_portable(p[j] + i, stop - i);
    }
    return s;
}

/// The read-only sum of every update on `threads` threads, each taking a contiguous share
/// of every array; `lockstep` reads the K updates side by side instead of one after another.
double ceiling_seconds(const std::vector<std::shared_ptr<const ParameterSet>>& updates,
                       unsigned threads, bool lockstep, volatile float& sink) {
    std::size_t arrays = updates.front()->size();
    std::vector<float> partial(threads, 0.0f);
    auto start = Clock::now();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            float s = 0;
            std::vector<const float*> streams(updates.size());
            for (std::size_t a = 0; a < arrays; ++a) {
                std::size_t n = (*updates.front())[a].array.size();
                std::size_t share = (n / threads + 15) / 16 * 16;
                std::size_t begin = std::min(n, t * share), end = std::min(n, begin + share);
                if (lockstep) {
                    for (std::size_t k = 0; k < updates.size(); ++k) {
                        streams[k] = (*updates[k])[a].array.values<float>().data();
                    }
                    s += sum_lockstep(streams.data(), streams.size(), begin, end);
                } else {
                    for (const auto& update : updates) {
                        s += sum((*update)[a].array.values<float>().data() + begin, end - begin);
                    }
                }
            }
            partial[t] = s;
        });
    }
    for (auto& thread : pool) thread.join();
    double seconds = seconds_since(start);
    float total = 0;
    for (float s : partial) total += s;
    sink = sink + total;
    return seconds;
}

/// For reference only: the same threads reading all updates in lockstep and writing their
/// elementwise sum to `out` (one array per model array) — what any aggregation that writes
/// a result must at least move.
double read_write_seconds(const std::vector<std::shared_ptr<const ParameterSet>>& updates,
                          ParameterSet& out, unsigned threads) {
    std::size_t arrays = updates.front()->size();
    auto start = Clock::now();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            std::vector<const float*> streams(updates.size());
            for (std::size_t a = 0; a < arrays; ++a) {
                std::size_t n = (*updates.front())[a].array.size();
                std::size_t share = (n / threads + 15) / 16 * 16;
                std::size_t begin = std::min(n, t * share), end = std::min(n, begin + share);
                for (std::size_t k = 0; k < updates.size(); ++k) {
                    streams[k] = (*updates[k])[a].array.values<float>().data();
                }
                float* target = out[a].array.values<float>().data();
#if defined(__x86_64__)
                if (have_avx2()) {
                    add_lockstep_avx2(streams.data(), streams.size(), target, begin, end);
                    continue;
                }
#endif
                for (std::size_t i = begin; i < end; ++i) {
                    float s = 0;
                    for (const float* stream : streams) s += stream[i];
                    target[i] = s;
                }
            }
        });
    }
    for (auto& thread : pool) thread.join();
    return seconds_since(start);
}

// ---------------------------------------------------------------------------------------
// numpy

// The numpy side is a worker process that keeps its (K, N) array and times one call per
// request, so that its timings interleave with fedcli's and see the same machine state.
const char* k_numpy_script = R"PY(
import sys, time
import numpy as np
k, n = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
X = rng.standard_normal((k, n), dtype=np.float32)
w = (np.arange(1, k + 1) / (k * (k + 1) / 2)).astype(np.float32)
out = np.empty(n, np.float32)
calls = {"einsum": lambda: np.einsum('k,kn->n', w, X, out=out),
         "matmul": lambda: np.matmul(w, X, out=out)}
for call in calls.values():
    call()  # warm-up: touches out
print("ready", flush=True)
for line in sys.stdin:
    call = calls[line.strip()]
    start = time.perf_counter(); call(); elapsed = time.perf_counter() - start
    print(elapsed, flush=True)
)PY";

/// The numpy worker: started before fedcli's buffers are filled, asked for one timing at a
/// time.
class Numpy {
  public:
    /// False (with `why`) when there is no interpreter with numpy.
    bool start(const Options& options, std::string& why) {
        if (::access(options.python.c_str(), X_OK) != 0) {
            why = options.python + " not found";
            return false;
        }
        // The script goes through a file: no shell quoting of its text.
        char script[] = "/tmp/bench_aggregate_numpy.XXXXXX";
        int fd = ::mkstemp(script);
        if (fd < 0 || ::write(fd, k_numpy_script, std::strlen(k_numpy_script)) < 0) {
            why = "cannot write a temporary script";
            if (fd >= 0) ::close(fd);
            return false;
        }
        ::close(fd);
        m_script = script;
        int to_child[2], from_child[2];
        if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) {
            why = "cannot make pipes";
            return false;
        }
        const std::string updates = std::to_string(options.updates);
        const std::string elements = std::to_string(options.elements);
        m_pid = ::fork();
        if (m_pid == 0) {
            ::dup2(to_child[0], 0);
            ::dup2(from_child[1], 1);
            ::dup2(from_child[1], 2);
            ::close(to_child[1]);
            ::close(from_child[0]);
            ::execl(options.python.c_str(), options.python.c_str(), script, updates.c_str(),
                    elements.c_str(), static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::close(to_child[0]);
        ::close(from_child[1]);
        if (m_pid < 0) {
            why = "cannot start " + options.python;
            return false;
        }
        std::signal(SIGPIPE, SIG_IGN);  // a worker that died is reported, not fatal
        m_to = ::fdopen(to_child[1], "w");
        m_from = ::fdopen(from_child[0], "r");
        std::string first = read_line();
        if (first != "ready") {
            why = "the numpy side failed: " + first.substr(0, 300);
            stop();
            return false;
        }
        return true;
    }

    /// Seconds of one call of `what` ("einsum", "matmul").
    double time(const char* what) {
        std::fprintf(m_to, "%s\n", what);
        std::fflush(m_to);
        std::string line = read_line();
        char* end = nullptr;
        double seconds = std::strtod(line.c_str(), &end);
        if (end == line.c_str() || seconds <= 0) {
            throw fedcli::Error("the numpy side failed: " + line.substr(0, 300));
        }
        return seconds;
    }

    void stop() {
        if (m_to) std::fclose(m_to);
        if (m_from) std::fclose(m_from);
        m_to = m_from = nullptr;
        if (m_pid > 0) ::waitpid(m_pid, nullptr, 0);
        m_pid = -1;
        if (!m_script.empty()) ::unlink(m_script.c_str());
        m_script.clear();
    }

    ~Numpy() { stop(); }

  private:
    /// The worker's next answer ("ready" or seconds), skipping other lines (warnings); when
    /// the worker ends without one (a traceback if numpy is missing), everything it printed.
    std::string read_line() {
        std::string text;
        char* line = nullptr;
        std::size_t capacity = 0;
        while (::getline(&line, &capacity, m_from) > 0) {
            std::string_view answer(line);
            if (answer.ends_with('\n')) answer.remove_suffix(1);
            if (answer == "ready" || std::strtod(line, nullptr) > 0) {
                text = answer;
                break;
            }
            text += line;
        }
        std::free(line);
        return text.empty() ? "no output" : text;
    }

    pid_t m_pid = -1;
    FILE* m_to = nullptr;
    FILE* m_from = nullptr;
    std::string m_script;
};

}  // namespace

int main(int argc, char** argv) try {
    Options options = parse(argc, argv);
    unsigned threads =
        options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
    double gigabytes = static_cast<double>(options.updates * options.elements) * 4 / 1e9;

    // numpy's worker fills its array first, before ours are allocated.
    Numpy numpy;
    std::string numpy_missing;
    const bool have_numpy = numpy.start(options, numpy_missing);
    double best_einsum = 1e30, best_matmul = 1e30;

    // K updates of A float32 arrays, filled (first touch) before anything is timed.
    auto global = std::make_shared<ParameterSet>();
    std::vector<std::shared_ptr<const ParameterSet>> updates;
    std::vector<std::uint64_t> counts;
    for (std::size_t k = 0; k < options.updates; ++k) {
        auto update = std::make_shared<ParameterSet>();
        std::uint64_t state = 0x9E3779B97F4A7C15ull * (k + 1);
        for (std::size_t a = 0; a < options.arrays; ++a) {
            std::size_t n =
                options.elements / options.arrays + (a < options.elements % options.arrays ? 1 : 0);
            Array array(DType::float32, {n});
            auto values = array.values<float>();
            for (auto& value : values) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                value = static_cast<float>(static_cast<std::int64_t>(state >> 40) - (1 << 23)) /
                        static_cast<float>(1 << 20);
            }
            if (k == 0) {
                Array zero(DType::float32, {n});
                std::memset(zero.data(), 0, zero.byte_size());
                global->add(std::to_string(a), std::move(zero));
            }
            update->add(std::to_string(a), std::move(array));
        }
        updates.push_back(std::move(update));
        counts.push_back(100 + 37 * k);
    }

    auto config = fedcli::aggregate::Config::from_items({"threads=" + std::to_string(threads)});
    auto aggregator = fedcli::aggregate::make_aggregator("fedavg", config);
    ParameterSet result;
    auto round = [&] {
        aggregator->begin_round(global);
        for (std::size_t k = 0; k < updates.size(); ++k) {
            fedcli::aggregate::UpdateInfo info;
            info.metadata["num_examples"] = counts[k];
            if (aggregator->fold(updates[k], info)) throw fedcli::Error("update rejected");
        }
        aggregator->finish(result);
    };
    round();  // warm-up: allocates the result once, as a long-running combiner would

    ParameterSet scratch;  // for the read+write reference, touched before timing
    for (const auto& entry : result) {
        Array copy = entry.array.clone();
        scratch.add(entry.name, std::move(copy));
    }

    volatile float sink = 0;
    double best_fedavg = 1e30, best_sequential = 1e30, best_lockstep = 1e30, best_write = 1e30;
    auto time_fedavg = [&] {
        auto start = Clock::now();
        round();
        best_fedavg = std::min(best_fedavg, seconds_since(start));
    };
    // FedAvg runs after each of the ceiling's two access orders, so that it gets as many
    // chances as the ceiling to meet a quiet moment of the machine (the best of 2R timings
    // on each side, not 2R against R).
    for (int r = 0; r < options.repeat; ++r) {
        best_sequential = std::min(best_sequential, ceiling_seconds(updates, threads, false, sink));
        time_fedavg();
        best_lockstep = std::min(best_lockstep, ceiling_seconds(updates, threads, true, sink));
        time_fedavg();
        best_write = std::min(best_write, read_write_seconds(updates, scratch, threads));
        if (have_numpy) {  // as many einsum timings as FedAvg ones
            best_einsum = std::min(best_einsum, numpy.time("einsum"));
            best_einsum = std::min(best_einsum, numpy.time("einsum"));
            best_matmul = std::min(best_matmul, numpy.time("matmul"));
        }
    }
    numpy.stop();

    // Spot-check the result against a float64 reference.
    double total = 0;
    for (auto n : counts) total += static_cast<double>(n);
    std::size_t checked = 0, wrong = 0;
    for (std::size_t a = 0; a < options.arrays; ++a) {
        auto out = result[a].array.values<float>();
        for (std::size_t i = 0; i < out.size(); i += 4099) {
            double expected = 0;
            for (std::size_t k = 0; k < updates.size(); ++k) {
                expected +=
                    static_cast<double>(counts[k]) * (*updates[k])[a].array.values<float>()[i];
            }
            float reference = static_cast<float>(expected / total);
            wrong += std::fabs(out[i] - reference) > 1e-6f * std::max(1.0f, std::fabs(reference));
            ++checked;
        }
    }

    double best_ceiling = std::min(best_sequential, best_lockstep);
    double fedavg_rate = gigabytes / best_fedavg;
    double ceiling_rate = gigabytes / best_ceiling;
    double ratio = fedavg_rate / ceiling_rate;
    std::printf(
        "aggregate: fedavg of %zu updates x %zu float32 (%zu arrays), %.2f GB per round, "
        "%u threads, best of %d\n",
        options.updates, options.elements, options.arrays, gigabytes, threads, options.repeat);
    std::printf("  fedavg            %.4f s  %6.2f GB/s\n", best_fedavg, fedavg_rate);
    std::printf(
        "  ceiling           %.4f s  %6.2f GB/s  (read-only sum; one update after another "
        "%.2f GB/s, all in lockstep %.2f GB/s)\n",
        best_ceiling, ceiling_rate, gigabytes / best_sequential, gigabytes / best_lockstep);
    std::printf(
        "  for reference     %.4f s  %6.2f GB/s  (the same reads plus writing one result: "
        "fedavg is %.2f of it)\n",
        best_write, gigabytes / best_write, best_write / best_fedavg);
    bool ok = ratio >= options.ratio_target;
    std::printf("  fedavg/ceiling    %.3f (target >= %.2f) %s\n", ratio, options.ratio_target,
                ok ? "ok" : "BELOW TARGET");
    if (have_numpy) {
        double speedup = best_einsum / best_fedavg;
        bool fast = speedup >= options.speedup_target;
        std::printf(
            "  numpy einsum      %.4f s  %6.2f GB/s  (np.matmul w @ X: %.4f s, %.2f GB/s)\n",
            best_einsum, gigabytes / best_einsum, best_matmul, gigabytes / best_matmul);
        std::printf(
            "  fedavg/einsum     %.3fx (target >= %.2fx) %s; the ceiling itself is %.2fx "
            "einsum\n",
            speedup, options.speedup_target, fast ? "ok" : "BELOW TARGET",
            best_einsum / best_ceiling);
        ok = ok && fast;
    } else {
        std::printf("  numpy comparison skipped: %s\n", numpy_missing.c_str());
    }
    std::printf("  result spot check: %zu/%zu elements match the float64 reference\n",
                checked - wrong, checked);
    if (sink == 12345.0f) std::printf(" ");  // keeps the sums alive
    return ok && wrong == 0 ? 0 : 1;
} catch (const std::exception& error) {
    std::fprintf(stderr, "bench_aggregate: %s\n", error.what());
    return 2;
}
