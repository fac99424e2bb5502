// core/util: suggestions for typos, SHA-256, byte sizes and JSON payload limits.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "core/util/json_fields.hpp"
#include "core/util/limits.hpp"
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

TEST_CASE("byte sizes parse the way people write them") {
    using fedcli::util::parse_byte_size;
    CHECK(parse_byte_size("4096", "--max-memory") == 4096);
    CHECK(parse_byte_size("512M", "--max-memory") == std::uint64_t{512} << 20);
    CHECK(parse_byte_size("2G", "--max-memory") == std::uint64_t{2} << 30);
    CHECK(parse_byte_size("2g", "--max-memory") == std::uint64_t{2} << 30);
    CHECK(parse_byte_size("2GiB", "--max-memory") == std::uint64_t{2} << 30);
    CHECK(parse_byte_size("2GB", "--max-memory") == std::uint64_t{2} << 30);
    CHECK(parse_byte_size("1.5M", "--max-memory") == 1572864);
    CHECK(parse_byte_size("64 KiB", "--max-memory") == 65536);
    CHECK(parse_byte_size("1T", "--max-memory") == std::uint64_t{1} << 40);
    CHECK(parse_byte_size("100B", "--max-memory") == 100);
    CHECK(parse_byte_size("18446744073709551615", "x") == UINT64_MAX);

    for (const char* bad : {"", "G", "2X", "2 GiBs", "-1", "1.2.3", ".5G", "5.G", "0", "0.0001",
                            "18446744073709551616", "17179869184G", "1e9"}) {
        INFO(bad);
        CHECK_THROWS_WITH(parse_byte_size(bad, "--max-memory"),
                          Catch::Contains(std::string("--max-memory: '") + bad + "'") &&
                              Catch::Contains("512M or 2G"));
    }
}

TEST_CASE("byte sizes format exactly when they can") {
    using fedcli::util::format_byte_size;
    CHECK(format_byte_size(0) == "0 B");
    CHECK(format_byte_size(1023) == "1023 B");
    CHECK(format_byte_size(1024) == "1 KiB");
    CHECK(format_byte_size(std::uint64_t{512} << 20) == "512 MiB");
    CHECK(format_byte_size(std::uint64_t{2} << 30) == "2 GiB");
    CHECK(format_byte_size(1572864) == "1.5 MiB");
    CHECK(format_byte_size(UINT64_MAX) == "16.0 EiB");
}

TEST_CASE("check_json_size refuses payloads too large or too deeply nested") {
    using fedcli::util::check_json_size;
    CHECK_NOTHROW(check_json_size(R"({"loss": 0.5, "nested": {"a": [1, 2, [3]]}})", 1024,
                                  "metrics from client 'c1'"));
    std::string big = "{\"x\": \"" + std::string(2000, 'a') + "\"}";
    CHECK_THROWS_WITH(check_json_size(big, 1024, "metrics from client 'c1'"),
                      "metrics from client 'c1' is 2.0 KiB of JSON, above the limit of 1 KiB");
    CHECK_NOTHROW(check_json_size(big, big.size(), "metrics"));

    std::string deep = std::string(65, '[') + std::string(65, ']');
    CHECK_THROWS_WITH(check_json_size(deep, 1 << 20, "update metadata"),
                      "update metadata nests arrays/objects deeper than 64 levels");
    CHECK_NOTHROW(check_json_size(deep, 1 << 20, "update metadata", 65));
    // Brackets inside strings, escaped quotes included, do not count.
    std::string in_string = "{\"s\": \"\\\"" + std::string(100, '[') + "\"}";
    CHECK_NOTHROW(check_json_size(in_string, 1 << 20, "metadata", 2));
    // Sequential (not nested) containers stay shallow.
    std::string wide = "[" + std::string(1000, ' ') + "]";
    for (int i = 0; i < 100; ++i) wide += "{}";
    CHECK_NOTHROW(check_json_size(wide, 1 << 20, "metadata", 1));
}

TEST_CASE("Fields reads each kind of field and names the path of a bad one") {
    const nlohmann::json document = nlohmann::json::parse(
        R"({"name": "c1", "count": 3, "limit": null, "on": true, "tags": ["a", "b"],
            "inner": {"depth": -1}, "text": null})");
    const fedcli::util::Fields fields(document, "doc", "root");
    CHECK(fields.string("name") == "c1");
    CHECK(fields.number("count") == 3);
    CHECK_FALSE(fields.optional_number("limit").has_value());
    CHECK_FALSE(fields.optional_string("text").has_value());
    CHECK(fields.optional_string("name") == "c1");
    CHECK(fields.boolean("on"));
    CHECK(fields.strings("tags") == std::vector<std::string>{"a", "b"});
    CHECK(fields.path("inner") == "root.inner");

    using fedcli::test::error_of;
    CHECK(error_of([&] { fields.string("missing"); }) == "doc: root.missing: missing");
    CHECK(error_of([&] { fields.string("count"); }) == "doc: root.count: expected a string");
    CHECK(error_of([&] { fields.number("name"); }) == "doc: root.name: expected a number >= 0");
    CHECK(error_of([&] { fields.boolean("count"); }) == "doc: root.count: expected true or false");
    CHECK(error_of([&] { fields.strings("name"); }) ==
          "doc: root.name: expected an array of strings");
    CHECK(error_of([&] { fields.object("inner").number("depth"); }) ==
          "doc: root.inner.depth: expected a number >= 0");
    CHECK(error_of([&] { fields.object("name"); }) == "doc: root.name: expected an object");
    CHECK(error_of([&] { fields.fail("tags", "too many"); }) == "doc: root.tags: too many");
}
