// The one exception type that fedcli libraries throw.
//
// Library code never prints or exits: it throws fedcli::Error with a message that
// says what failed and on which file/line/member/client, e.g.
//   "model.npz: member '2.npy': header says 1000 bytes of data, member holds 996".
// Callers that add context wrap the message with Error::with_context(), which prefixes
// "<context>: ". Exactly one place in cli/ turns an Error into "fedcli: error: ..." and an
// exit code. Thread-safety: an Error is an immutable value.
#pragma once

#include <stdexcept>
#include <string>

namespace fedcli {

class Error : public std::runtime_error {
  public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}

    /// Returns a copy whose message is "<context>: <this message>".
    Error with_context(const std::string& context) const { return Error(context + ": " + what()); }
};

}  // namespace fedcli
