// Tests for core/package: gitignore-style rules, deterministic package creation, listing
// and hostile-archive-proof extraction.
//
// Ignore semantics are checked from a table of (rules, path, expected verdict) rows. Package
// format claims are cross-checked with Python's tarfile/gzip, which read our packages and
// also write the FEDn-style and hostile archives that extraction is tested against. Every
// fixture is made at test time in the test's own temp dir; no binary file is committed.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <clocale>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/package/ignore.hpp"
#include "core/package/package.hpp"
#include "core/util/sha256.hpp"
#include "tests/unit/support.hpp"

namespace {

namespace fs = std::filesystem;
using namespace fedcli::package;
using Catch::Matchers::Contains;
using fedcli::test::read_file;
using fedcli::test::run_python;
using fedcli::test::TempDir;
using fedcli::test::write_file;

// ---------------------------------------------------------------------------------------
// Helpers

void write(const fs::path& path, const std::string& text, fs::perms perms = fs::perms(0644)) {
    fs::create_directories(path.parent_path());
    write_file(path, text);
    fs::permissions(path, perms);
}

std::string random_bytes(std::size_t size, unsigned seed) {
    std::mt19937 generator(seed);
    std::string bytes(size, '\0');
    for (auto& byte : bytes) byte = static_cast<char>(generator() & 0xff);
    return bytes;
}

/// A small project with the shapes a package must get right: nested and empty folders, an
/// executable script, a file over 1 MiB, names over 100 bytes, a non-ASCII name, ignored
/// files and folders, and an in-tree symlink.
void make_project(const fs::path& root) {
    write(root / "fedcli.yaml", "entry_points:\n  train:\n    command: python train.py\n");
    write(root / "train.py", "print('train')\n");
    write(root / "scripts/run.sh", "#!/bin/sh\necho run\n", fs::perms(0755));
    write(root / "a/b/c.txt", "nested\n");
    write(root / "weights.bin", random_bytes((std::size_t{3} << 20) + 17, 7));
    // Over 100 bytes: split into ustar prefix + name, and one that needs a pax path record.
    write(root / (std::string(60, 'd') + "/" + std::string(70, 'f') + ".txt"), "long name\n");
    write(root / (std::string(120, 'g') + ".txt"), "longer name\n");
    write(root / "caf\xc3\xa9.txt", "utf-8 name\n");
    write(root / "data/train.csv", "1,2,3\n");
    write(root / "debug.log", "noise\n");
    write(root / "keep.log", "kept by negation\n");
    write(root / "__pycache__/train.cpython-311.pyc", "bytecode");
    write(root / ".git/HEAD", "ref: refs/heads/main\n");
    write(root / ".fedcli/logs/train.log", "entry point output\n");
    write(root / ".ignore", "# data stays with the client\ndata/\n*.log\n!keep.log\n");
    fs::create_directories(root / "empty");
    fs::create_symlink("a/b/c.txt", root / "link.txt");
}

/// What a folder holds, for comparing trees: path -> "file:<exec>:<content>",
/// "dir", or "symlink:<target>".
std::map<std::string, std::string> snapshot(const fs::path& root) {
    std::map<std::string, std::string> tree;
    for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
         ++it) {
        auto relative = it->path().lexically_relative(root).generic_string();
        auto status = it->symlink_status();
        if (fs::is_symlink(status)) {
            tree[relative] = "symlink:" + fs::read_symlink(it->path()).string();
        } else if (fs::is_directory(status)) {
            tree[relative] = "dir";
        } else {
            bool exec = (status.permissions() & fs::perms::owner_exec) != fs::perms::none;
            tree[relative] = std::string("file:") + (exec ? "x:" : "-:") + read_file(it->path());
        }
    }
    return tree;
}

std::set<std::string> folder_names(const fs::path& folder) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(folder)) {
        names.insert(entry.path().filename().string());
    }
    return names;
}

std::vector<std::string> entry_paths(const fs::path& archive) {
    std::vector<std::string> paths;
    for (const auto& entry : list(archive)) paths.push_back(entry.path);
    return paths;
}

void set_all_mtimes(const fs::path& root, fs::file_time_type time) {
    for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
         ++it) {
        if (!it->is_symlink()) fs::last_write_time(it->path(), time);
    }
}

// ---------------------------------------------------------------------------------------
// Ignore rules

struct IgnoreRow {
    const char* rules;
    const char* path;
    bool is_directory;
    bool ignored;
};

constexpr bool k_dir = true;
constexpr bool k_file = false;

const IgnoreRow k_ignore_rows[] = {
    // no rules, comments and blank lines
    {"", "a.txt", k_file, false},
    {"# a.txt\n\n   \n", "a.txt", k_file, false},
    {"# comment\n", "# comment", k_file, false},
    {"\\#hash\n", "#hash", k_file, true},
    {"\\!bang\n", "!bang", k_file, true},
    // unanchored patterns match the base name at any depth
    {"*.log\n", "a.log", k_file, true},
    {"*.log\n", "deep/er/a.log", k_file, true},
    {"*.log\n", "a.logx", k_file, false},
    {"node_modules\n", "web/node_modules/x.js", k_file, true},
    {"frotz\n", "a/frotz", k_dir, true},
    // trailing spaces are trimmed unless escaped; CRLF line ends are accepted
    {"trail   \n", "trail", k_file, true},
    {"trail\\ \n", "trail ", k_file, true},
    {"trail\\ \n", "trail", k_file, false},
    {"*.tmp\r\nx\r\n", "a.tmp", k_file, true},
    // trailing '/' matches folders only (and so everything inside them)
    {"build/\n", "build", k_dir, true},
    {"build/\n", "build", k_file, false},
    {"build/\n", "src/build", k_dir, true},
    {"build/\n", "build/x.o", k_file, true},
    // a slash at the start or in the middle anchors the pattern at the root
    {"/top.txt\n", "top.txt", k_file, true},
    {"/top.txt\n", "sub/top.txt", k_file, false},
    {"doc/frotz\n", "doc/frotz", k_file, true},
    {"doc/frotz\n", "a/doc/frotz", k_file, false},
    {"foo/*\n", "foo/x", k_file, true},
    {"foo/*\n", "foo/x/y", k_file, true},
    {"foo/*\n", "foo", k_dir, false},
    {"x/a*b\n", "x/aXYb", k_file, true},
    {"x/a*b\n", "x/a/b", k_file, false},
    // wildcards and classes
    {"?.py\n", "a.py", k_file, true},
    {"?.py\n", "ab.py", k_file, false},
    {"[abc].c\n", "b.c", k_file, true},
    {"[abc].c\n", "d.c", k_file, false},
    {"[!abc].c\n", "d.c", k_file, true},
    {"[^abc].c\n", "a.c", k_file, false},
    {"[a-c]x\n", "bx", k_file, true},
    {"[a-c]x\n", "dx", k_file, false},
    {"[]]x\n", "]x", k_file, true},
    {"[[:digit:]]*\n", "7up", k_file, true},
    {"[[:digit:]]*\n", "up", k_file, false},
    {"a[/]b\n", "a/b", k_file, false},
    {"\\*star\n", "*star", k_file, true},
    {"\\*star\n", "xstar", k_file, false},
    // "**"
    {"**/logs\n", "logs", k_dir, true},
    {"**/logs\n", "a/b/logs", k_dir, true},
    {"**/logs/debug.log\n", "logs/debug.log", k_file, true},
    {"**/logs/debug.log\n", "x/y/logs/debug.log", k_file, true},
    {"abc/**\n", "abc/x", k_file, true},
    {"abc/**\n", "abc/x/y", k_file, true},
    {"abc/**\n", "abc", k_dir, false},
    {"a/**/b\n", "a/b", k_file, true},
    {"a/**/b\n", "a/x/b", k_file, true},
    {"a/**/b\n", "a/x/y/b", k_file, true},
    {"a/**/b\n", "a/xb", k_file, false},
    {"a/**/b\n", "c/a/b", k_file, false},
    {"**\n", "any/thing", k_file, true},
    {"foo**bar\n", "fooXbar", k_file, true},
    {"/x/**y\n", "x/a/y", k_file, false},
    // negation: the last matching pattern wins...
    {"*.txt\n!keep.txt\n", "keep.txt", k_file, false},
    {"*.txt\n!keep.txt\n", "other.txt", k_file, true},
    {"!x.log\n*.log\n", "x.log", k_file, true},
    {"*.npz\n!/seed.npz\n", "seed.npz", k_file, false},
    {"*.npz\n!/seed.npz\n", "sub/seed.npz", k_file, true},
    // ...but nothing inside an excluded folder comes back
    {"data/\n!data/keep.csv\n", "data/keep.csv", k_file, true},
    {"data\n!data/keep.csv\n", "data/keep.csv", k_file, true},
    {"data/*\n!data/keep.csv\n", "data/keep.csv", k_file, false},
    {"data/*\n!data/keep.csv\n", "data/other.csv", k_file, true},
    {"abc/**\n!abc/keep\n", "abc/keep", k_file, false},
    {"*\n!*/\n!*.py\n", "pkg/mod.py", k_file, false},
    {"*\n!*/\n!*.py\n", "pkg/mod.txt", k_file, true},
};

TEST_CASE("ignore rules follow gitignore semantics", "[ignore]") {
    for (const auto& row : k_ignore_rows) {
        INFO("rules:\n"
             << row.rules << "path: " << row.path << (row.is_directory ? " (folder)" : " (file)"));
        auto rules = IgnoreRules::parse(row.rules, ".ignore");
        CHECK(rules.is_ignored(row.path, row.is_directory) == row.ignored);
    }
}

TEST_CASE("ignore rules: excludes() judges the path alone, is_ignored() its parents too",
          "[ignore]") {
    auto rules = IgnoreRules::parse("data/\n!data/keep.csv\n", ".ignore");
    CHECK_FALSE(rules.excludes("data/keep.csv", false));
    CHECK(rules.is_ignored("data/keep.csv", false));
    CHECK(rules.size() == 2);
    CHECK(IgnoreRules::parse("# only\n\n!\n/\n", "x").empty());
}

TEST_CASE("ignore rules: malformed patterns name the file and line", "[ignore]") {
    CHECK_THROWS_WITH(IgnoreRules::parse("ok\n[abc\n", "proj/.ignore"),
                      Contains("proj/.ignore:2") && Contains("'[abc'") && Contains("unterminated"));
    CHECK_THROWS_WITH(IgnoreRules::parse("foo\\", ".fednignore"),
                      Contains(".fednignore:1") && Contains("lone '\\'"));
    CHECK_THROWS_WITH(IgnoreRules::parse("\n\n[[:bogus:]]\n", ".ignore"),
                      Contains(".ignore:3") && Contains("[:bogus:]"));
}

TEST_CASE("ignore rules: long star runs stay fast", "[ignore]") {
    auto rules = IgnoreRules::parse("*a*a*a*a*a*a*a*a*a*a*a*a*b\n", ".ignore");
    CHECK_FALSE(rules.is_ignored(std::string(250, 'a'), false));
    CHECK(rules.is_ignored(std::string(250, 'a') + "b", false));
}

TEST_CASE("project ignore files: defaults, .fednignore, .scaleoutignore, .ignore in order",
          "[ignore]") {
    TempDir dir;
    write(dir / ".fednignore", "*.npz\n");
    write(dir / ".scaleoutignore", "*.bin\n");
    write(dir / ".ignore", "!seed.npz\n");
    auto rules = load_project_ignore_rules(dir.path());
    CHECK(rules.is_ignored("model.npz", false));
    CHECK_FALSE(rules.is_ignored("seed.npz", false));
    CHECK(rules.is_ignored("w.bin", false));
    CHECK(rules.is_ignored(".git", true));
    CHECK(rules.is_ignored("sub/__pycache__/m.pyc", false));

    auto bare = load_project_ignore_rules(dir.path(), DefaultIgnores::no);
    CHECK_FALSE(bare.is_ignored(".git", true));

    write(dir / ".ignore", "!.git/\n[broken\n");
    CHECK_THROWS_WITH(load_project_ignore_rules(dir.path()),
                      Contains((dir / ".ignore").string() + ":2"));
    write(dir / ".ignore", "!.git/\n");
    CHECK_FALSE(load_project_ignore_rules(dir.path()).is_ignored(".git/HEAD", false));
}

// ---------------------------------------------------------------------------------------
// Creating

TEST_CASE("create then extract round-trips content, exec bits, folders and symlinks", "[package]") {
    TempDir dir;
    auto project = dir / "project";
    make_project(project);
    auto result = create(project, dir / "out/package.tgz");

    CHECK(result.path == dir / "out/package.tgz");
    CHECK(result.size_bytes == fs::file_size(dir / "out/package.tgz"));
    CHECK(result.sha256 == fedcli::util::sha256_file(dir / "out/package.tgz"));
    // fedcli.yaml, train.py, run.sh, c.txt, weights.bin, 2 long names, café, keep.log, .ignore
    CHECK(result.file_count == 10);
    CHECK(result.symlink_count == 1);
    // a, a/b, empty, scripts, the long folder
    CHECK(result.directory_count == 5);

    auto extracted = extract(dir / "out/package.tgz", dir / "extracted");
    CHECK(extracted.destination == dir / "extracted");
    CHECK(extracted.file_count == 10);
    CHECK(extracted.symlink_count == 1);
    CHECK(extracted.total_bytes == result.content_bytes);

    auto expected = snapshot(project);
    for (const char* left_out :
         {"data", "data/train.csv", "debug.log", "__pycache__", "__pycache__/train.cpython-311.pyc",
          ".git", ".git/HEAD", ".fedcli", ".fedcli/logs", ".fedcli/logs/train.log"}) {
        CHECK(expected.erase(left_out) == 1);
    }
    auto actual = snapshot(dir / "extracted");
    CHECK(actual.size() == expected.size());
    for (const auto& [path, description] : expected) {
        INFO(path);
        REQUIRE(actual.count(path) == 1);
        CHECK((actual[path] == description));
    }
    CHECK(actual["scripts/run.sh"].rfind("file:x:", 0) == 0);
    CHECK(actual["train.py"].rfind("file:-:", 0) == 0);
    CHECK(folder_names(dir.path()) == std::set<std::string>{"extracted", "out", "project"});
}

TEST_CASE("packages are normalised gzip pax tars that Python's tarfile reads", "[package]") {
    TempDir dir;
    make_project(dir / "project");
    create(dir / "project", dir / "package.tgz", CreateOptions{});
    // Checks every byte-level promise of docs/packages.md that Python can observe.
    run_python(R"PY(
import gzip, sys, tarfile
path = sys.argv[1]
raw = open(path, 'rb').read()
assert raw[:3] == b'\x1f\x8b\x08', 'gzip magic and deflate'
assert raw[3] == 0, 'no FNAME/FEXTRA/FCOMMENT/FHCRC flags: %d' % raw[3]
assert raw[4:8] == b'\0\0\0\0', 'gzip mtime must be 0'
assert raw[9] == 3, 'OS byte is Unix'
data = gzip.decompress(raw)
assert data[257:265] == b'ustar\x0000', 'POSIX ustar magic'
assert len(data) % 512 == 0 and data[-1024:] == bytes(1024), 'two zero blocks end the tar'
with tarfile.open(path, 'r:gz') as tar:
    members = tar.getmembers()
names = [m.name for m in members]
stored = [m.name + '/' if m.isdir() else m.name for m in members]
assert stored == sorted(stored, key=lambda n: n.encode()), stored
assert stored.index('a/') + 1 == stored.index('a/b/'), stored
assert names[0] == '.ignore', names
assert 'caf\u00e9.txt' in names, names
assert not any(n.startswith(('/', './')) or '..' in n.split('/') for n in names), names
for m in members:
    assert m.mtime == 0 and m.uid == 0 and m.gid == 0, (m.name, m.mtime, m.uid, m.gid)
    assert m.uname == '' and m.gname == '', (m.name, m.uname, m.gname)
    if m.isdir():
        assert m.mode == 0o755, (m.name, oct(m.mode))
    elif m.issym():
        assert m.mode == 0o777 and m.linkname == 'a/b/c.txt', (m.name, oct(m.mode), m.linkname)
    else:
        assert m.isfile(), m.name
        want = 0o755 if m.name == 'scripts/run.sh' else 0o644
        assert m.mode == want, (m.name, oct(m.mode))
long = sorted(n for n in names if len(n) > 100)
assert long == ['d' * 60 + '/' + 'f' * 70 + '.txt', 'g' * 120 + '.txt'], long
)PY",
               {(dir / "package.tgz").string()});
}

TEST_CASE("the same tree gives the same sha256; a different tree a different one", "[package]") {
    TempDir dir;
    auto project = dir / "project";
    make_project(project);
    auto first = create(project, dir / "first.tgz");

    // Timestamps, group/other permission bits and the project's location do not matter.
    set_all_mtimes(project, fs::file_time_type::clock::now() - std::chrono::hours(1000));
    fs::permissions(project / "train.py", fs::perms(0600));
    auto second = create(project, dir / "second.tgz");
    CHECK(second.sha256 == first.sha256);
    CHECK(read_file(dir / "second.tgz") == read_file(dir / "first.tgz"));

    fs::create_directories(dir / "elsewhere");
    fs::copy(project, dir / "elsewhere/copy",
             fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    CHECK(create(dir / "elsewhere/copy", dir / "third.tgz").sha256 == first.sha256);

    // The locale does not change how names are written.
    const char* previous = std::setlocale(LC_ALL, nullptr);
    std::string saved = previous ? previous : "C";
    if (std::setlocale(LC_ALL, "C.UTF-8")) {
        auto localised = create(project, dir / "localised.tgz");
        std::setlocale(LC_ALL, saved.c_str());
        CHECK(localised.sha256 == first.sha256);
    }

    SECTION("content") {
        write(project / "a/b/c.txt", "nested!\n");
        CHECK(create(project, dir / "changed.tgz").sha256 != first.sha256);
    }
    SECTION("exec bit") {
        fs::permissions(project / "train.py", fs::perms(0700));
        CHECK(create(project, dir / "changed.tgz").sha256 != first.sha256);
    }
    SECTION("name") {
        fs::rename(project / "train.py", project / "train2.py");
        CHECK(create(project, dir / "changed.tgz").sha256 != first.sha256);
    }
    SECTION("options") {
        CreateOptions options;
        options.mtime = 1700000000;
        CHECK(create(project, dir / "changed.tgz", options).sha256 != first.sha256);
    }
}

TEST_CASE("the output file inside the project is never packaged", "[package]") {
    TempDir dir;
    write(dir / "fedcli.yaml", "entry_points: {}\n");
    auto first = create(dir.path(), dir / "package.tgz");
    auto second = create(dir.path(), dir / "package.tgz");
    CHECK(second.sha256 == first.sha256);
    CHECK(entry_paths(dir / "package.tgz") == std::vector<std::string>{"fedcli.yaml"});
    // Named through a symlinked folder it is still the same file.
    TempDir other;
    fs::create_directory_symlink(dir.path(), other / "alias");
    auto third = create(other / "alias", other / "alias/package.tgz");
    CHECK(third.sha256 == first.sha256);
    CHECK(folder_names(dir.path()) == std::set<std::string>{"fedcli.yaml", "package.tgz"});
}

TEST_CASE("list reports path, type, size, mode and link target in archive order", "[package]") {
    TempDir dir;
    write(dir / "p/run.sh", "#!/bin/sh\n", fs::perms(0755));
    write(dir / "p/sub/data.txt", "12345");
    write(dir / "p/sub.txt", "");
    fs::create_symlink("sub/data.txt", dir / "p/link");
    create(dir / "p", dir / "p.tgz");
    auto entries = list(dir / "p.tgz");
    REQUIRE(entries.size() == 5);
    CHECK(entries[0].path == "link");
    CHECK(entries[0].type == EntryType::symlink);
    CHECK(entries[0].link_target == "sub/data.txt");
    CHECK(entries[1].path == "run.sh");
    CHECK(entries[1].type == EntryType::file);
    CHECK(entries[1].mode == 0755);
    CHECK(entries[1].size == 10);
    // Bytewise order of stored names: '.' (0x2e) sorts before '/' (0x2f).
    CHECK(entries[2].path == "sub.txt");
    CHECK(entries[2].size == 0);
    CHECK(entries[3].path == "sub/");
    CHECK(entries[3].type == EntryType::directory);
    CHECK(entries[3].mode == 0755);
    CHECK(entries[4].path == "sub/data.txt");
    CHECK(entries[4].mode == 0644);
    CHECK(entries[4].size == 5);
    CHECK(entry_type_name(EntryType::character_device) == "character device");
}

TEST_CASE("create refuses symlinks leading outside and special files, leaving no output",
          "[package]") {
    TempDir dir;
    auto project = dir / "project";
    write(project / "fedcli.yaml", "entry_points: {}\n");
    write(dir / "secret.txt", "secret\n");

    SECTION("relative symlink out of the project") {
        fs::create_directories(project / "sub");
        fs::create_symlink("../../secret.txt", project / "sub/bad");
        CHECK_THROWS_WITH(create(project, dir / "out/package.tgz"),
                          Contains("sub/bad") && Contains("'../../secret.txt'") &&
                              Contains("outside the project"));
    }
    SECTION("absolute symlink") {
        fs::create_symlink(dir / "secret.txt", project / "abs");
        CHECK_THROWS_WITH(create(project, dir / "out/package.tgz"),
                          Contains("abs") && Contains("outside the project"));
    }
    SECTION("symlink escaping through another symlink") {
        fs::create_symlink(".", project / "self");
        fs::create_symlink("self/../secret.txt", project / "sneaky");
        CHECK_THROWS_WITH(create(project, dir / "out/package.tgz"),
                          Contains("sneaky") && Contains("outside the project"));
    }
    SECTION("fifo") {
        REQUIRE(::mkfifo((project / "pipe").c_str(), 0644) == 0);
        CHECK_THROWS_WITH(create(project, dir / "out/package.tgz"),
                          Contains("pipe") && Contains("special file"));
    }
    CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("ignored symlinks and special files do not stop create", "[package]") {
    TempDir dir;
    auto project = dir / "project";
    write(project / "fedcli.yaml", "entry_points: {}\n");
    write(project / ".ignore", ".venv/\npipe\n");
    fs::create_directories(project / ".venv/bin");
    fs::create_symlink("/usr/bin/python3", project / ".venv/bin/python");
    REQUIRE(::mkfifo((project / "pipe").c_str(), 0644) == 0);
    create(project, dir / "package.tgz");
    CHECK(entry_paths(dir / "package.tgz") == std::vector<std::string>{".ignore", "fedcli.yaml"});
}

// ---------------------------------------------------------------------------------------
// Extracting

// Python helpers shared by the archive-making scripts: argv[1] is the folder to write in.
const char* const k_python_tar_prelude = R"PY(
import io, os, sys, tarfile
out = sys.argv[1]

def info(name, kind=tarfile.REGTYPE, mode=0o644, size=0, link=''):
    entry = tarfile.TarInfo(name)
    entry.type, entry.mode, entry.size, entry.linkname = kind, mode, size, link
    return entry

def data(tar, name, content=b'x', mode=0o644):
    tar.addfile(info(name, mode=mode, size=len(content)), io.BytesIO(content))

def folder(tar, name):
    tar.addfile(info(name, tarfile.DIRTYPE, 0o755))

def symlink(tar, name, target):
    tar.addfile(info(name, tarfile.SYMTYPE, 0o777, link=target))

def hardlink(tar, name, target):
    tar.addfile(info(name, tarfile.LNKTYPE, 0o644, link=target))

def make(name, *entries, mode='w:gz'):
    os.makedirs(os.path.join(out, name), exist_ok=True)
    with tarfile.open(os.path.join(out, name, 'package.tgz'), mode,
                      format=tarfile.PAX_FORMAT) as tar:
        for add in entries:
            add(tar)
)PY";

struct HostileCase {
    const char* name;
    const char* entry;   ///< the entry the error must name
    const char* reason;  ///< and what it must say about it
    std::size_t max_entries = 10000;
    std::uint64_t max_total_bytes = std::uint64_t{1} << 30;
};

TEST_CASE("hostile archives are rejected, naming the entry and leaving nothing behind",
          "[extract]") {
    TempDir dir;
    run_python(std::string(k_python_tar_prelude) + R"PY(
D, S, H = data, symlink, hardlink
make('dotdot', lambda t: D(t, 'ok.txt'), lambda t: D(t, '../evil.sh'))
make('absolute', lambda t: D(t, 'ok.txt'), lambda t: D(t, '/etc/evil'))
make('middle-dotdot', lambda t: folder(t, 'a'), lambda t: D(t, 'a/../../evil'))
make('symlink-absolute', lambda t: S(t, 'etc', '/etc'), lambda t: D(t, 'etc/passwd', b'owned'))
make('symlink-up', lambda t: S(t, 'up', '..'), lambda t: D(t, 'up/evil'))
make('symlink-deep-up', lambda t: folder(t, 'a'), lambda t: S(t, 'a/b', '../../x'))
make('symlink-chain', lambda t: S(t, 'self', '.'), lambda t: S(t, 'escape', 'self/..'))
make('through-symlink', lambda t: folder(t, 'sub'), lambda t: S(t, 'inner', 'sub'),
     lambda t: D(t, 'inner/x'))
make('hardlink-outside', lambda t: D(t, 'ok.txt'), lambda t: H(t, 'h', '../outside.txt'))
make('hardlink-absolute', lambda t: H(t, 'h', '/etc/passwd'))
make('hardlink-unknown', lambda t: D(t, 'ok.txt'), lambda t: H(t, 'h', 'missing.txt'))
make('hardlink-to-folder', lambda t: folder(t, 'd'), lambda t: H(t, 'h', 'd'))
def device(tar):
    entry = info('dev/null2', tarfile.CHRTYPE, 0o666)
    entry.devmajor, entry.devminor = 1, 3
    tar.addfile(entry)
make('char-device', lambda t: D(t, 'ok.txt'), device)
make('block-device', lambda t: tarfile.TarFile.addfile(t, info('sda', tarfile.BLKTYPE)))
make('fifo', lambda t: tarfile.TarFile.addfile(t, info('pipe', tarfile.FIFOTYPE)))
make('too-many', *[lambda t, i=i: D(t, 'f%d' % i) for i in range(5)])
make('too-big', lambda t: D(t, 'big', b'y' * 5000))
make('too-big-total', lambda t: D(t, 'a', b'1' * 2000), lambda t: D(t, 'b', b'2' * 2000),
     lambda t: D(t, 'c', b'3' * 2000))
make('duplicate', lambda t: D(t, 'a.txt'), lambda t: D(t, 'a.txt', b'again'))
make('file-then-child', lambda t: D(t, 'a'), lambda t: D(t, 'a/b'))
make('folder-then-file', lambda t: folder(t, 'a'), lambda t: D(t, 'a'))
make('symlink-over-file', lambda t: D(t, 'a'), lambda t: S(t, 'a', 'b'))
make('root-symlink', lambda t: S(t, '.', 'elsewhere'))
make('long-path', lambda t: D(t, 'a/' * 2100 + 'x'))
)PY",
               {dir.path().string()});

    const HostileCase cases[] = {
        {"dotdot", "../evil.sh", "path escapes the extraction folder"},
        {"absolute", "/etc/evil", "absolute paths are not allowed"},
        {"middle-dotdot", "a/../../evil", "path escapes the extraction folder"},
        {"symlink-absolute", "etc", "symlink target '/etc' is an absolute path"},
        {"symlink-up", "up", "symlink target '..' leads outside the extraction folder"},
        {"symlink-deep-up", "a/b", "symlink target '../../x' leads outside"},
        {"symlink-chain", "escape", "symlink target 'self/..' leads outside"},
        {"through-symlink", "inner/x", "path passes through the symlink 'inner'"},
        {"hardlink-outside", "h", "hard link to '../outside.txt'"},
        {"hardlink-absolute", "h", "hard link to '/etc/passwd'"},
        {"hardlink-unknown", "h", "hard link to 'missing.txt', which is not a file extracted"},
        {"hardlink-to-folder", "h", "hard link to 'd'"},
        {"char-device", "dev/null2", "character device entries are not allowed"},
        {"block-device", "sda", "block device entries are not allowed"},
        {"fifo", "pipe", "fifo entries are not allowed"},
        {"too-many", "f3", "the archive holds more than 3 entries (the limit)", 3},
        {"too-big", "big", "file data exceeds the limit of 4096 bytes", 10000, 4096},
        {"too-big-total", "c", "file data exceeds the limit of 4096 bytes", 10000, 4096},
        {"duplicate", "a.txt", "duplicate entry"},
        {"file-then-child", "a/b", "path passes through 'a', which is not a folder"},
        {"folder-then-file", "a", "duplicate entry"},
        {"symlink-over-file", "a", "duplicate entry"},
        {"root-symlink", ".", "names the extraction folder itself"},
        {"long-path", "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/...",
         "path is longer than 4096 bytes"},
    };
    for (const auto& hostile : cases) {
        auto folder = dir / hostile.name;
        auto archive = folder / "package.tgz";
        INFO("case " << hostile.name);
        ExtractOptions options;
        options.limits.max_entries = hostile.max_entries;
        options.limits.max_total_bytes = hostile.max_total_bytes;
        std::string expected =
            archive.string() + ": entry '" + hostile.entry + "': " + hostile.reason;
        CHECK_THROWS_WITH(extract(archive, folder / "out", options), Contains(expected));
        CHECK(folder_names(folder) == std::set<std::string>{"package.tgz"});
        // A destination path with missing parents: those are removed again too.
        CHECK_THROWS_AS(extract(archive, folder / "new/parents/out", options), fedcli::Error);
        CHECK(folder_names(folder) == std::set<std::string>{"package.tgz"});
    }
    // Nothing escaped into the shared parent either.
    CHECK_FALSE(fs::exists(dir / "evil.sh"));
    CHECK_FALSE(fs::exists(dir / "evil"));

    // inspect shows hostile names as they are, without judging them.
    CHECK(entry_paths(dir / "dotdot/package.tgz") ==
          std::vector<std::string>{"ok.txt", "../evil.sh"});
}

TEST_CASE("package limits: each one stops extract, scan and list with a clear error",
          "[extract][limits]") {
    TempDir dir;
    run_python(std::string(k_python_tar_prelude) + R"PY(
make('files', lambda t: data(t, 'a.txt', b'a' * 3000), lambda t: data(t, 'b.txt', b'b' * 3000),
     lambda t: data(t, 'c.txt', b'c' * 100))
# A decompression bomb hiding behind the end of the tar: 64 MiB of zeros after a tiny file.
make('bomb', lambda t: data(t, 'tiny.txt'))
import gzip
with gzip.open(os.path.join(out, 'bomb', 'package.tgz'), 'ab') as f:
    f.write(bytes(64 << 20))
)PY",
               {dir.path().string()});
    auto files = dir / "files/package.tgz";
    auto expect_refused = [&](const fs::path& archive, const Limits& limits,
                              const std::string& message) {
        ExtractOptions options;
        options.limits = limits;
        CHECK_THROWS_WITH(extract(archive, dir / "out", options), Contains(message));
        CHECK_FALSE(fs::exists(dir / "out"));
        CHECK_THROWS_WITH(list(archive, limits), Contains(message));
    };

    // The defaults let a normal package through.
    CHECK(list(files).size() == 3);
    CHECK(extract(files, dir / "fine").total_bytes == 6100);

    SECTION("package file size") {
        Limits limits;
        limits.max_package_bytes = 100;
        expect_refused(files, limits,
                       files.string() + ": the package file is " +
                           std::to_string(fs::file_size(files)) +
                           " bytes, above the limit of 100 bytes for a package");
    }
    SECTION("entry count") {
        Limits limits;
        limits.max_entries = 2;
        expect_refused(
            files, limits,
            files.string() + ": entry 'c.txt': the archive holds more than 2 entries (the limit)");
    }
    SECTION("single file size") {
        Limits limits;
        limits.max_file_bytes = 2048;
        expect_refused(files, limits,
                       files.string() +
                           ": entry 'a.txt': file is larger than the limit of 2048 bytes (2 KiB) "
                           "for one file");
    }
    SECTION("total unpacked size") {
        Limits limits;
        limits.max_total_bytes = 5000;
        expect_refused(files, limits,
                       files.string() +
                           ": entry 'b.txt': file data exceeds the limit of 5000 bytes (4.9 KiB) "
                           "for the whole archive");
    }
    SECTION("tar data beyond what the limits allow (decompression bomb)") {
        auto bomb = dir / "bomb/package.tgz";
        CHECK(fs::file_size(bomb) < (std::uint64_t{1} << 20));
        Limits limits;
        limits.max_total_bytes = 1 << 20;
        limits.max_entries = 10;
        CHECK(limits.max_tar_bytes() == (1 << 20) + 11 * 16384 + (1 << 20));
        const std::string refusal = "unpacks to more than 2277376 bytes (2.2 MiB) of tar data";
        ExtractOptions options;
        options.limits = limits;
        CHECK_THROWS_WITH(extract(bomb, dir / "out", options),
                          Contains(bomb.string() + ": ") && Contains(refusal));
        CHECK_FALSE(fs::exists(dir / "out"));
        CHECK_THROWS_WITH(list(bomb, limits), Contains(bomb.string() + ": ") && Contains(refusal));
        // With the defaults the same archive is fine: 64 MiB of padding is within them.
        CHECK(list(bomb).size() == 1);
    }
}

TEST_CASE("a rejected archive leaves an existing destination untouched, even with replace",
          "[extract]") {
    TempDir dir;
    run_python(std::string(k_python_tar_prelude) +
                   "make('evil', lambda t: data(t, 'fine.txt'), lambda t: data(t, '../x'))\n",
               {dir.path().string()});
    write(dir / "evil/out/old.txt", "old\n");
    ExtractOptions options;
    options.overwrite = Overwrite::replace;
    CHECK_THROWS_WITH(extract(dir / "evil/package.tgz", dir / "evil/out", options),
                      Contains("entry '../x'"));
    CHECK(snapshot(dir / "evil/out") ==
          std::map<std::string, std::string>{{"old.txt", "file:-:old\n"}});
    CHECK(folder_names(dir / "evil") == std::set<std::string>{"out", "package.tgz"});
}

TEST_CASE("corrupt and truncated archives are rejected, leaving nothing behind", "[extract]") {
    TempDir dir;
    run_python(std::string(k_python_tar_prelude) + R"PY(
make('good', lambda t: data(t, 'small.txt', b'hello'),
     lambda t: data(t, 'big.bin', os.urandom(300000)))
good = open(os.path.join(out, 'good', 'package.tgz'), 'rb').read()
os.makedirs(os.path.join(out, 'truncated'))
open(os.path.join(out, 'truncated', 'package.tgz'), 'wb').write(good[:len(good) // 2])
def flip(name, start):
    os.makedirs(os.path.join(out, name))
    flipped = bytearray(good)
    for i in range(start, start + 64):
        flipped[i] ^= 0x5a
    open(os.path.join(out, name, 'package.tgz'), 'wb').write(bytes(flipped))
flip('flipped-start', 12)
flip('flipped-middle', len(good) // 2)
os.makedirs(os.path.join(out, 'garbage'))
open(os.path.join(out, 'garbage', 'package.tgz'), 'wb').write(b'this is not a tarball\n' * 100)
os.makedirs(os.path.join(out, 'empty-file'))
open(os.path.join(out, 'empty-file', 'package.tgz'), 'wb').close()
)PY",
               {dir.path().string()});
    auto truncated = dir / "truncated/package.tgz";
    CHECK_THROWS_WITH(extract(truncated, dir / "truncated/out"),
                      Contains(truncated.string() + ": entry 'big.bin'"));
    CHECK(folder_names(dir / "truncated") == std::set<std::string>{"package.tgz"});
    for (const char* name : {"flipped-start", "flipped-middle", "garbage", "empty-file"}) {
        INFO(name);
        auto archive = dir / name / "package.tgz";
        CHECK_THROWS_WITH(extract(archive, dir / name / "out"), Contains(archive.string() + ": "));
        CHECK(folder_names(dir / name) == std::set<std::string>{"package.tgz"});
        CHECK_THROWS_WITH(list(archive), Contains(archive.string() + ": "));
    }
    CHECK(extract(dir / "good/package.tgz", dir / "good/out").total_bytes == 300005);
    CHECK_THROWS_WITH(extract(dir / "missing.tgz", dir / "out"), Contains("missing.tgz"));
    CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("FEDn-style archives extract: './' prefixes, hard links, plain tar", "[extract]") {
    TempDir dir;
    run_python(std::string(k_python_tar_prelude) + R"PY(
src = os.path.join(out, 'src')
os.makedirs(os.path.join(src, 'client'))
open(os.path.join(src, 'fedn.yaml'), 'w').write('entry_points: {}\n')
open(os.path.join(src, 'caf\u00e9.txt'), 'w').write('utf-8\n')
open(os.path.join(src, 'client', 'train.py'), 'w').write('print(1)\n')
os.chmod(os.path.join(src, 'client', 'train.py'), 0o755)
os.link(os.path.join(src, 'fedn.yaml'), os.path.join(src, 'client', 'same.yaml'))
os.makedirs(os.path.join(out, 'fedn'))
with tarfile.open(os.path.join(out, 'fedn', 'package.tgz'), 'w:gz') as tar:
    tar.add(src, arcname='.')
make('plain', lambda t: data(t, 'x.txt', b'plain'), mode='w')
make('nested', lambda t: folder(t, 'pkg'), lambda t: data(t, 'pkg/fedn.yaml', b'y'),
     lambda t: symlink(t, 'pkg/link', 'fedn.yaml'))
make('two-tops', lambda t: data(t, 'a/x'), lambda t: data(t, 'b/y'))
make('untidy', lambda t: folder(t, 'd'), lambda t: data(t, 'd/x', b'dx'), lambda t: folder(t, 'd/'),
     lambda t: data(t, 'n//o/./p', b'nop'))
)PY",
               {dir.path().string()});

    auto names = entry_paths(dir / "fedn/package.tgz");
    CHECK(std::count(names.begin(), names.end(), "./fedn.yaml") == 1);
    auto result = extract(dir / "fedn/package.tgz", dir / "fedn/out");
    CHECK(read_file(dir / "fedn/out/fedn.yaml") == "entry_points: {}\n");
    CHECK(read_file(dir / "fedn/out/client/same.yaml") == "entry_points: {}\n");
    CHECK(read_file(dir / "fedn/out/caf\xc3\xa9.txt") == "utf-8\n");
    CHECK(fs::hard_link_count(dir / "fedn/out/fedn.yaml") == 2);
    CHECK((fs::status(dir / "fedn/out/client/train.py").permissions() & fs::perms::owner_exec) !=
          fs::perms::none);
    CHECK(result.file_count == 4);
    CHECK(result.stripped_folder.empty());

    extract(dir / "plain/package.tgz", dir / "plain/out");
    CHECK(read_file(dir / "plain/out/x.txt") == "plain");

    ExtractOptions strip;
    strip.top_folder = TopFolder::strip_single;
    auto stripped = extract(dir / "nested/package.tgz", dir / "nested/out", strip);
    CHECK(stripped.stripped_folder == "pkg");
    CHECK(read_file(dir / "nested/out/fedn.yaml") == "y");
    CHECK(read_file(dir / "nested/out/link") == "y");
    CHECK(folder_names(dir / "nested") == std::set<std::string>{"out", "package.tgz"});

    auto kept = extract(dir / "nested/package.tgz", dir / "nested/kept");
    CHECK(kept.stripped_folder.empty());
    CHECK(read_file(dir / "nested/kept/pkg/fedn.yaml") == "y");

    auto untidy = extract(dir / "untidy/package.tgz", dir / "untidy/out");
    CHECK(untidy.directory_count == 1);
    CHECK(untidy.entry_count == 4);
    CHECK(read_file(dir / "untidy/out/d/x") == "dx");
    CHECK(read_file(dir / "untidy/out/n/o/p") == "nop");

    auto two = extract(dir / "two-tops/package.tgz", dir / "two-tops/out", strip);
    CHECK(two.stripped_folder.empty());
    CHECK(fs::exists(dir / "two-tops/out/a/x"));
}

TEST_CASE("extract into existing folders: empty is fine, non-empty needs replace", "[extract]") {
    TempDir dir;
    write(dir / "p/new.txt", "new\n");
    create(dir / "p", dir / "p.tgz");

    fs::create_directories(dir / "empty");
    extract(dir / "p.tgz", dir / "empty");
    CHECK(read_file(dir / "empty/new.txt") == "new\n");

    write(dir / "full/old.txt", "old\n");
    CHECK_THROWS_WITH(extract(dir / "p.tgz", dir / "full"),
                      Contains("full") && Contains("not empty"));
    CHECK(read_file(dir / "full/old.txt") == "old\n");

    ExtractOptions replace;
    replace.overwrite = Overwrite::replace;
    extract(dir / "p.tgz", dir / "full", replace);
    CHECK(snapshot(dir / "full") ==
          std::map<std::string, std::string>{{"new.txt", "file:-:new\n"}});

    write(dir / "file", "x");
    CHECK_THROWS_WITH(extract(dir / "p.tgz", dir / "file", replace), Contains("not a folder"));

    extract(dir / "p.tgz", dir / "deep/er/out/");
    CHECK(read_file(dir / "deep/er/out/new.txt") == "new\n");
    CHECK(folder_names(dir.path()) ==
          std::set<std::string>{"deep", "empty", "file", "full", "p", "p.tgz"});
}

}  // namespace
