#include "core/util/json_fields.hpp"

#include "core/error.hpp"

namespace fedcli::util {

using nlohmann::json;

Fields::Fields(const json& object, std::string document, std::string where)
    : m_object(object), m_document(std::move(document)), m_where(std::move(where)) {
    if (!m_object.is_object()) throw Error(m_document + ": " + m_where + ": expected an object");
}

const json& Fields::at(const char* name) const {
    auto found = m_object.find(name);
    if (found == m_object.end()) fail(name, "missing");
    return *found;
}

std::string Fields::string(const char* name) const {
    const json& value = at(name);
    if (!value.is_string()) fail(name, "expected a string");
    return value.get<std::string>();
}

std::uint64_t Fields::number(const char* name) const {
    const json& value = at(name);
    const bool whole =
        value.is_number_unsigned() || (value.is_number_integer() && value.get<std::int64_t>() >= 0);
    if (!whole) fail(name, "expected a number >= 0");
    return value.get<std::uint64_t>();
}

std::optional<std::uint64_t> Fields::optional_number(const char* name) const {
    if (at(name).is_null()) return std::nullopt;
    return number(name);
}

std::optional<std::string> Fields::optional_string(const char* name) const {
    if (at(name).is_null()) return std::nullopt;
    return string(name);
}

bool Fields::boolean(const char* name) const {
    const json& value = at(name);
    if (!value.is_boolean()) fail(name, "expected true or false");
    return value.get<bool>();
}

std::vector<std::string> Fields::strings(const char* name) const {
    const json& value = at(name);
    if (!value.is_array()) fail(name, "expected an array of strings");
    std::vector<std::string> items;
    for (const json& item : value) {
        if (!item.is_string()) fail(name, "expected an array of strings");
        items.push_back(item.get<std::string>());
    }
    return items;
}

Fields Fields::object(const char* name) const {
    return Fields(at(name), m_document, path(name));
}

std::string Fields::path(const char* name) const {
    return m_where + "." + name;
}

void Fields::fail(const char* name, const std::string& problem) const {
    throw Error(m_document + ": " + path(name) + ": " + problem);
}

}  // namespace fedcli::util
