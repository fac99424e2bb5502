// Entry point command lines: POSIX shell word splitting without a shell.
//
// An entry point's `command:` ("python3 train.py --epochs 2") is split into argv the way
// a POSIX shell splits words, and then run directly (no shell in between), so file names
// passed as arguments can never inject shell syntax. Supported quoting, as in sh:
//   - unquoted blanks (space, tab, newline) separate words; `#` at the start of a word
//     starts a comment that runs to the end of the line;
//   - '...' keeps everything literally (no escapes inside);
//   - "..." keeps everything literally except `\` before `"`, `\`, `$`, a backquote or a
//     newline, which escapes it (a backslash-newline pair is removed);
//   - outside quotes `\` escapes the next character (backslash-newline is removed);
//   - quotes may be mixed inside one word: a'b c'"d" is the single word `ab cd`.
// No expansion happens, so characters a shell would *interpret* are errors rather than
// silently passed on: unquoted operators `| & ; < > ( )`, `$NAME`/`${...}`/`$(...)` and
// backquotes (also inside "..."), unquoted glob characters `* ? [`, a leading `~`, and a
// leading `NAME=value` assignment. The error names the entry point and the character and
// says how to fix it: quote it, or wrap the whole command in `sh -c '...'` when shell
// features are really wanted.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace fedcli::dispatch {

/// Splits `command` into words (see the header comment). `where` names the command in
/// errors, e.g. "fedn.yaml:7: entry point 'train'". Throws fedcli::Error for an empty
/// command, an unterminated quote, a trailing backslash or a character that needs a shell.
std::vector<std::string> split_command(std::string_view command, const std::string& where);

/// Quotes one word so that split_command (and sh) read it back unchanged: words made only of
/// safe characters are returned as they are, anything else is put in single quotes.
std::string quote_word(std::string_view word);

/// The words joined by spaces, each quoted with quote_word: for messages and logs.
std::string format_command(const std::vector<std::string>& words);

}  // namespace fedcli::dispatch
