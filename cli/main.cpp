// The fedcli binary: everything lives in fedcli_cli (cli/app.hpp).
#include "cli/app.hpp"

int main(int argc, char** argv) {
    return fedcli::cli::run(argc, argv);
}
