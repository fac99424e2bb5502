// Turning Ctrl-C into a clean stop of a running entry point.
//
// Entry points run in their own process group (process.hpp), so the terminal's SIGINT
// reaches only fedcli, not them. Without a handler fedcli would die and leave the entry point
// running. An InterruptGuard catches SIGINT, SIGTERM and SIGHUP while it lives and makes a
// descriptor readable; pass fd() as RunRequest::cancel_fd (or ProcessSpec::cancel_fd) and
// the run stops its whole process group and throws / reports "was cancelled". The caller
// then exits as it sees fit (e.g. code 130 for SIGINT).
//
// Thread-safety: at most one guard may exist at a time in a process (signal dispositions
// are process-wide); constructing a second throws fedcli::Error. The handler only write()s
// to a non-blocking pipe, which is async-signal-safe.
#pragma once

#include <csignal>

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

}  // namespace fedcli::dispatch
