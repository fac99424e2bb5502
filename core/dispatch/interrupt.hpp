// Turning Ctrl-C into a clean stop of a running entry point.
//
// Entry points run in their own process group (process.hpp), so the terminal's SIGINT
// reaches only fedcli, not them. Without a handler fedcli would die and leave the entry point
// running. An InterruptGuard catches SIGINT, SIGTERM and SIGHUP while it lives and makes a
// descriptor readable; pass fd() as RunRequest::cancel_fd (or ProcessSpec::cancel_fd) and
// the run stops its whole process group and throws / reports "was cancelled". The caller
// then exits as it sees fit (e.g. code 130 for SIGINT).
//
// Daemons (`fedcli combiner start`, the client daemon) use a SignalWaiter instead: it turns
// SIGINT and SIGTERM into a call on a thread of its own.
//
// Thread-safety: at most one guard may exist at a time in a process (signal dispositions
// are process-wide); constructing a second throws fedcli::Error. The handler only write()s
// to a non-blocking pipe, which is async-signal-safe. A SignalWaiter is driven by the thread
// that created it (its own thread only calls the handler).
#pragma once

#include <atomic>
#include <csignal>
#include <functional>
#include <string>
#include <thread>

namespace fedcli::dispatch {

class InterruptGuard {
  public:
    /// Installs the handlers (the previous ones are restored by the destructor).
    InterruptGuard();
    ~InterruptGuard();
    InterruptGuard(const InterruptGuard&) = delete;
    InterruptGuard& operator=(const InterruptGuard&) = delete;

    /// Readable once a signal has arrived.
    int fd() const { return m_read_fd; }
    /// The first signal caught, or 0.
    int signal() const;

  private:
    int m_read_fd = -1;
    int m_write_fd = -1;
    struct sigaction m_previous[3];
};

/// Turns SIGINT and SIGTERM into a call on a thread of its own, so that a daemon shuts
/// down through its normal API instead of inside a signal handler. The constructor blocks
/// both signals in the calling thread; it must run before any other thread is started, so
/// that every thread (gRPC's included) inherits the mask and only sigwait() sees them.
/// Entry points are spawned with an empty mask (core/dispatch), so they still get signals.
/// A second signal while the first is being handled exits at once with 128 + signal.
class SignalWaiter {
  public:
    SignalWaiter();
    /// Wakes and joins the waiting thread, discards signals still pending, and restores
    /// the previous mask.
    ~SignalWaiter();
    SignalWaiter(const SignalWaiter&) = delete;
    SignalWaiter& operator=(const SignalWaiter&) = delete;

    /// Starts waiting; `on_signal(signal)` runs on the waiting thread for the first signal.
    void start(std::function<void(int)> on_signal);
    /// The first signal received, or 0.
    int received() const { return m_received.load(); }

  private:
    sigset_t m_previous_mask;
    std::atomic<int> m_received{0};
    std::atomic<bool> m_closing{false};
    std::thread m_thread;
};

}  // namespace fedcli::dispatch
