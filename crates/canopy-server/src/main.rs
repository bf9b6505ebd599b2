//! The `canopy-server` binary.

fn main() {
    std::process::exit(canopy_server::process::run::main());
}
