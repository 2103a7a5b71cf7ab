//! The `pg-rekey` command: parse arguments, run, map the outcome to an exit code.
//!
//! Exit codes, one rule for every command: 0 done; 1 found something or
//! gave up with nothing harmed (plan blockers, verify differences, a cutover
//! that gave up or whose swap rolled back, a rewrite refused by its
//! preflight or stopped by its data, Ctrl-C); 2 error. Errors map to 1 or 2
//! by [`pg_rekey::Error::exit_code`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = pg_rekey::cli::Cli::parse();
    if let Err(e) = pg_rekey::telemetry::init_from(&cli.global) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(pg_rekey::commands::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", pg_rekey::error::chain(&e));
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
