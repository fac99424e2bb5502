// core/util: suggestions for typos and SHA-256.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "core/util/sha256.hpp"
#include "core/util/suggest.hpp"
#include "tests/unit/support.hpp"

TEST_CASE("edit distance and closest match answer typos") {
    using fedcli::util::closest_match;
    using fedcli::util::edit_distance;

    CHECK(edit_distance("model", "model") == 0);
    CHECK(edit_distance("modle", "model") == 1);
    CHECK(edit_distance("inspct", "inspect") == 1);
    CHECK(edit_distance("", "abc") == 3);
    CHECK(edit_distance("kitten", "sitting") == 3);

    const std::vector<std::string> names = {"model", "project", "combiner"};
    CHECK(closest_match("modle", names) == "model");
    CHECK(closest_match("projcet", names) == "project");
    CHECK(closest_match("comb", names) == "combiner");
    CHECK_FALSE(closest_match("xyzzy", names).has_value());
    CHECK_FALSE(closest_match("", names).has_value());
}

TEST_CASE("sha256 of buffers and files matches the standard test vectors") {
    using fedcli::util::sha256_file;
    using fedcli::util::sha256_hex;
    auto bytes = [](std::string_view text) {
        return std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                          text.size());
    };
    CHECK(sha256_hex(bytes("")) ==
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256_hex(bytes("abc")) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    fedcli::test::TempDir dir;
    // Larger than the 1 MiB read block, so the file is hashed in several updates.
    std::string content((std::size_t{3} << 20) + 5, 'x');
    fedcli::test::write_file(dir / "big.bin", content);
    CHECK(sha256_file(dir / "big.bin") == sha256_hex(bytes(content)));
    REQUIRE_THROWS_WITH(sha256_file(dir / "missing.bin"),
                        Catch::Contains("missing.bin") && Catch::Contains("cannot open"));
}
