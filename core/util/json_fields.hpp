// Reading a JSON object that another fedcli process wrote (client options handed to the
// daemon, a project described by a `fedcli project validate --json` child): every missing
// field or value of the wrong kind is an error that names the document and the field's
// path, e.g. "client options: options.channel.token: expected a string".
//
// Thread-safety: a Fields only reads the object it refers to, which must outlive it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace fedcli::util {

class Fields {
  public:
    /// `document` names the JSON in errors ("client options"); `where` is the object's path
    /// ("options"). Throws fedcli::Error when `object` is not an object.
    Fields(const nlohmann::json& object, std::string document, std::string where);

    const nlohmann::json& at(const char* name) const;
    std::string string(const char* name) const;
    std::uint64_t number(const char* name) const;                          ///< a whole number >= 0
    std::optional<std::uint64_t> optional_number(const char* name) const;  ///< null: nullopt
    std::optional<std::string> optional_string(const char* name) const;    ///< null: nullopt
    bool boolean(const char* name) const;
    std::vector<std::string> strings(const char* name) const;
    /// The field, itself an object.
    Fields object(const char* name) const;
    /// "options.name": the field's path, for errors.
    std::string path(const char* name) const;
    /// Throws fedcli::Error "document: where.name: problem".
    [[noreturn]] void fail(const char* name, const std::string& problem) const;

  private:
    const nlohmann::json& m_object;
    std::string m_document;
    std::string m_where;
};

}  // namespace fedcli::util
