// `fedcli certs create`: a small certificate authority for a federation's TLS — a CA, the
// combiner's certificate and optional client certificates (mutual TLS), ECDSA P-256 keys,
// made with OpenSSL's library (docs/security.md).
#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "cli/app.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"

namespace fedcli::cli {

namespace {

namespace fs = std::filesystem;

struct KeyFree {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct CertFree {
    void operator()(X509* cert) const { X509_free(cert); }
};
struct BioFree {
    void operator()(BIO* bio) const { BIO_free(bio); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;
using Bio = std::unique_ptr<BIO, BioFree>;

[[noreturn]] void openssl_failed(const std::string& what) {
    throw Error("certs create: " + what + " failed (OpenSSL)");
}

Key make_key() {
    Key key(EVP_EC_gen("P-256"));
    if (!key) openssl_failed("making an ECDSA P-256 key");
    return key;
}

bool is_ip_address(const std::string& host) {
    unsigned char buffer[sizeof(in6_addr)];
    return ::inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
           ::inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX context;
    X509V3_set_ctx_nodb(&context);
    X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str());
    if (!extension) openssl_failed("adding the extension '" + value + "'");
    const int added = X509_add_ext(cert, extension, -1);
    X509_EXTENSION_free(extension);
    if (added != 1) openssl_failed("adding the extension '" + value + "'");
}

/// A certificate for `key` named `common_name`, valid `days`, signed by `issuer_key` (and
/// `issuer`, or itself when null).
Cert make_cert(EVP_PKEY* key, const std::string& common_name, int days, X509* issuer,
               EVP_PKEY* issuer_key, const std::vector<std::pair<int, std::string>>& extensions) {
    Cert cert(X509_new());
    if (!cert) openssl_failed("making a certificate");
    X509_set_version(cert.get(), 2);  // v3
    unsigned char serial_bytes[16];
    if (RAND_bytes(serial_bytes, sizeof serial_bytes) != 1) openssl_failed("a serial number");
    serial_bytes[0] &= 0x7f;  // positive
    BIGNUM* serial = BN_bin2bn(serial_bytes, sizeof serial_bytes, nullptr);
    BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert.get()));
    BN_free(serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);  // tolerate clock skew
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 24 * 3600);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>("fedcli"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                               0);
    X509* signer = issuer ? issuer : cert.get();
    X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
    for (const auto& [nid, value] : extensions) add_extension(cert.get(), signer, nid, value);
    if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0) openssl_failed("signing");
    return cert;
}

/// Writes `text` to `file` (replacing it) with `mode`, set before any byte is written.
void write_file(const fs::path& file, const std::string& text, mode_t mode) {
    fs::path temporary = file;
    temporary += ".tmp";
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) throw Error(file.string() + ": cannot write: " + std::strerror(errno));
    const bool written =
        ::fchmod(fd, mode) == 0 &&
        ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
        ::fsync(fd) == 0;
    const int saved = errno;
    ::close(fd);
    if (!written || ::rename(temporary.c_str(), file.c_str()) != 0) {
        const int error = written ? errno : saved;
        ::unlink(temporary.c_str());
        throw Error(file.string() + ": cannot write: " + std::strerror(error));
    }
}

std::string bio_text(BIO* bio) {
    char* data = nullptr;
    const long size = BIO_get_mem_data(bio, &data);
    return std::string(data, static_cast<std::size_t>(size));
}

void write_cert(const fs::path& file, X509* cert) {
    Bio bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1)
        openssl_failed("writing " + file.string());
    write_file(file, bio_text(bio.get()), 0644);
}

void write_key(const fs::path& file, EVP_PKEY* key) {
    Bio bio(BIO_new(BIO_s_mem()));
    if (!bio ||
        PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
        openssl_failed("writing " + file.string());
    }
    write_file(file, bio_text(bio.get()), 0600);
}

Cert read_cert(const fs::path& file) {
    Bio bio(BIO_new_file(file.c_str(), "r"));
    Cert cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!cert) throw Error(file.string() + ": cannot read the CA certificate");
    return cert;
}

Key read_key(const fs::path& file) {
    Bio bio(BIO_new_file(file.c_str(), "r"));
    Key key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!key) throw Error(file.string() + ": cannot read the CA key");
    return key;
}

bool valid_name(const std::string& name) {
    if (name.empty() || name.size() > 64) return false;
    for (char c : name) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
        if (!ok) return false;
    }
    return name != "." && name != "..";
}

struct CreateOptions {
    fs::path out;
    std::string host;
    std::vector<std::string> clients;
    int days = 825;
};

int certs_create(const CreateOptions& options, std::ostream& out) {
    const std::string command = "fedcli certs create";
    if (options.host.empty() || options.host.find_first_of(" ,/") != std::string::npos) {
        throw UsageError("--host must be the combiner's host name or IP address", command);
    }
    std::set<std::string> seen;
    for (const std::string& client : options.clients) {
        if (!valid_name(client)) {
            throw UsageError("--client '" + client +
                                 "': use letters, digits, '-', '_' and '.' (it names the files)",
                             command);
        }
        if (!seen.insert(client).second) {
            throw UsageError("--client '" + client + "' is given twice", command);
        }
    }
    std::error_code error;
    fs::create_directories(options.out, error);
    if (error) throw Error(options.out.string() + ": cannot create: " + error.message());

    // An existing CA in the folder is kept, so that more client certificates can be made
    // later for the same federation.
    const fs::path ca_file = options.out / "ca.pem";
    const fs::path ca_key_file = options.out / "ca.key";
    Cert ca;
    Key ca_key;
    const bool reuse = fs::exists(ca_file) && fs::exists(ca_key_file);
    if (reuse) {
        ca = read_cert(ca_file);
        ca_key = read_key(ca_key_file);
        if (X509_check_private_key(ca.get(), ca_key.get()) != 1) {
            throw Error(ca_key_file.string() + " is not the key of " + ca_file.string());
        }
    } else {
        ca_key = make_key();
        ca = make_cert(ca_key.get(), "fedcli CA", std::max(options.days, 3650), nullptr,
                       ca_key.get(),
                       {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                        {NID_key_usage, "critical,keyCertSign,cRLSign"},
                        {NID_subject_key_identifier, "hash"}});
        write_key(ca_key_file, ca_key.get());
        write_cert(ca_file, ca.get());
    }

    std::string names = (is_ip_address(options.host) ? "IP:" : "DNS:") + options.host;
    if (options.host != "localhost") names += ",DNS:localhost";
    if (options.host != "127.0.0.1") names += ",IP:127.0.0.1";
    Key server_key = make_key();
    Cert server = make_cert(server_key.get(), options.host, options.days, ca.get(), ca_key.get(),
                            {{NID_basic_constraints, "critical,CA:FALSE"},
                             {NID_key_usage, "critical,digitalSignature"},
                             {NID_ext_key_usage, "serverAuth"},
                             {NID_subject_alt_name, names},
                             {NID_authority_key_identifier, "keyid"}});
    write_key(options.out / "server.key", server_key.get());
    write_cert(options.out / "server.pem", server.get());

    for (const std::string& client : options.clients) {
        Key key = make_key();
        Cert cert = make_cert(key.get(), "client " + client, options.days, ca.get(), ca_key.get(),
                              {{NID_basic_constraints, "critical,CA:FALSE"},
                               {NID_key_usage, "critical,digitalSignature"},
                               {NID_ext_key_usage, "clientAuth"},
                               {NID_authority_key_identifier, "keyid"}});
        write_key(options.out / ("client-" + client + ".key"), key.get());
        write_cert(options.out / ("client-" + client + ".pem"), cert.get());
    }

    const std::string dir = options.out.string();
    out << (reuse ? "kept the CA " : "made a CA ") << dir << "/ca.pem (key " << dir
        << "/ca.key, mode 0600: keep it off the combiner)\n";
    out << "combiner certificate " << dir << "/server.pem for " << names << " (key " << dir
        << "/server.key), valid " << options.days << " days\n";
    for (const std::string& client : options.clients) {
        out << "client certificate " << dir << "/client-" << client << ".pem (key " << dir
            << "/client-" << client << ".key)\n";
    }
    out << "start the combiner with --tls-cert " << dir << "/server.pem --tls-key " << dir
        << "/server.key" << (options.clients.empty() ? "" : " --client-ca " + dir + "/ca.pem")
        << "; clients and operator commands with --ca " << dir << "/ca.pem\n";
    return k_exit_success;
}

Action setup_create(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<CreateOptions>();
    command.add_option("--out", options->out, "Folder for the files (created)")
        ->type_name("DIR")
        ->required();
    command
        .add_option("--host", options->host,
                    "The combiner's host name or IP address, as clients dial it")
        ->type_name("NAME")
        ->required();
    command
        .add_option("--client", options->clients,
                    "Also make a client certificate for mutual TLS (repeatable)")
        ->type_name("NAME");
    command.add_option("--days", options->days, "Validity of the certificates in days")
        ->type_name("DAYS")
        ->check(CLI::Range(1, 36500))
        ->capture_default_str();
    command.footer(
        "Makes ECDSA P-256 keys and certificates: ca.pem and ca.key (the CA; reused when the\n"
        "folder has them, so more client certificates can be added later), server.pem and\n"
        "server.key (the combiner; names --host, localhost and 127.0.0.1), and\n"
        "client-NAME.pem and client-NAME.key per --client. Keys are written with mode 0600.\n"
        "Example:\n"
        "  fedcli certs create --out certs --host combiner.example.org --client c1 --client c2");
    std::ostream& out = streams.out;
    return [options, &out] { return certs_create(*options, out); };
}

}  // namespace

void register_certs_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"create", "Make a CA and TLS certificates for a combiner and its clients", setup_create},
    };
    add_group(app, "certs", "Make TLS certificates for a federation", k_commands, dispatch);
}

}  // namespace fedcli::cli
