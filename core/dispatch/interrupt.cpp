#include "core/dispatch/interrupt.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace fedcli::dispatch {
namespace {

constexpr int k_signals[3] = {SIGINT, SIGTERM, SIGHUP};

std::atomic<int> g_write_fd{-1};
std::atomic<int> g_caught{0};
std::atomic<bool> g_installed{false};

extern "C" void on_interrupt(int signal) {
    int saved_errno = errno;
    int expected = 0;
    g_caught.compare_exchange_strong(expected, signal);
    int fd = g_write_fd.load();
    if (fd >= 0) {
        char byte = 1;
        [[maybe_unused]] auto ignored = ::write(fd, &byte, 1);
    }
    errno = saved_errno;
}

}  // namespace

InterruptGuard::InterruptGuard() {
    if (g_installed.exchange(true)) {
        throw Error("an InterruptGuard is already active in this process");
    }
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
        g_installed = false;
        throw Error(std::string("cannot create the interrupt pipe: ") + std::strerror(errno));
    }
    m_read_fd = fds[0];
    m_write_fd = fds[1];
    g_caught = 0;
    g_write_fd = m_write_fd;
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    for (int i = 0; i < 3; ++i) ::sigaction(k_signals[i], &action, &m_previous[i]);
}

InterruptGuard::~InterruptGuard() {
    for (int i = 0; i < 3; ++i) ::sigaction(k_signals[i], &m_previous[i], nullptr);
    g_write_fd = -1;
    ::close(m_read_fd);
    ::close(m_write_fd);
    g_installed = false;
}

int InterruptGuard::signal() const {
    return g_caught.load();
}

// ---------------------------------------------------------------------------------------
// SignalWaiter

namespace {

/// The signals a SignalWaiter handles: SIGINT and SIGTERM.
sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}

}  // namespace

SignalWaiter::SignalWaiter() {
    const sigset_t set = stop_signals();
    pthread_sigmask(SIG_BLOCK, &set, &m_previous_mask);
}

void SignalWaiter::start(std::function<void(int)> on_signal) {
    m_thread = std::thread([this, on_signal = std::move(on_signal)] {
        const sigset_t set = stop_signals();
        while (true) {
            int signal = 0;
            if (sigwait(&set, &signal) != 0) continue;
            if (m_closing.load()) return;
            int expected = 0;
            if (m_received.compare_exchange_strong(expected, signal)) {
                on_signal(signal);
            } else {
                std::_Exit(128 + signal);  // a second Ctrl-C: the user does not want to wait
            }
        }
    });
}

SignalWaiter::~SignalWaiter() {
    if (m_thread.joinable()) {
        m_closing.store(true);
        pthread_kill(m_thread.native_handle(), SIGTERM);
        m_thread.join();
    }
    // Drop signals still pending so that unblocking them does not kill the process.
    const sigset_t set = stop_signals();
    timespec zero{};
    while (sigtimedwait(&set, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &m_previous_mask, nullptr);
}

}  // namespace fedcli::dispatch
