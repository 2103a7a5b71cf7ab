//! The `pg-rekey` command: parse arguments, run, map the outcome to an exit code.

fn main() {
    println!("pg-rekey {}", env!("CARGO_PKG_VERSION"));
}
