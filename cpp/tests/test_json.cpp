// Unit tests of the bounded JSON parser.
#include <string>

#include "s2e/json.hpp"
#include "s2e_check.hpp"

using s2e::Json;
using s2e::JsonError;

S2E_TEST(parses_values) {
    Json j = Json::parse(R"({"a": [1, -2.5e1, true, false, null], "s": "x\u00e9\n", "o": {}})");
    CHECK(j.is_object());
    const auto& a = j.at("a", "doc").as_array("a");
    CHECK(a.size() == 5);
    CHECK(a[0].is_integer() && a[0].as_int("") == 1);
    CHECK(!a[1].is_integer() && a[1].as_number("") == -25.0);
    CHECK(a[2].as_bool("") && !a[3].as_bool("") && a[4].is_null());
    CHECK(j.at("s", "doc").as_string("") == "x\xc3\xa9\n");
    CHECK(j.find("missing") == nullptr);
    EXPECT_THROW(j.at("missing", "doc"), s2e::ManifestError);
    EXPECT_THROW(j.at("s", "doc").as_int("s"), s2e::ManifestError);
}

S2E_TEST(surrogate_pairs_to_utf8) {
    CHECK(Json::parse(R"("\ud83d\ude00")").as_string("") == "\xf0\x9f\x98\x80");
    EXPECT_THROW(Json::parse(R"("\ud83d")"), JsonError);
    EXPECT_THROW(Json::parse(R"("\ude00")"), JsonError);
}

S2E_TEST(rejects_malformed) {
    const char* bad[] = {"", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "01", "1.", "-", "1e", "\"\\x\"", "nul",
                         "[1 2]", "{\"a\":1,\"a\":2}", "\"\x01\"", "1e400", "\"\xff\"", "\"\xc0\xaf\"", "{} {}"};
    for (const char* b : bad) EXPECT_THROW(Json::parse(b), JsonError);
}

S2E_TEST(limits) {
    std::string deep(70, '[');
    deep += std::string(70, ']');
    EXPECT_THROW(Json::parse(deep), JsonError);
    s2e::JsonLimits lim;
    lim.max_bytes = 4;
    EXPECT_THROW(Json::parse("[1, 2]", lim), JsonError);
    lim = s2e::JsonLimits();
    lim.max_items = 3;
    EXPECT_THROW(Json::parse("[1, 2, 3]", lim), JsonError);
    CHECK(Json::parse("[1, 2]", lim).as_array("").size() == 2);
}

S2E_TEST(every_prefix_of_a_document_is_rejected) {
    const std::string doc = R"({"k": [1, 2.5, "s\u0041", {"n": null}], "t": true})";
    CHECK(Json::parse(doc).is_object());
    for (size_t n = 0; n < doc.size(); ++n) EXPECT_THROW(Json::parse(doc.data(), n), JsonError);
}

S2E_TEST_MAIN()
