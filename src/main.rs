use std::process::ExitCode;

use clap::Parser;

/// A proxied request makes some forty small allocations; glibc's allocator spent a tenth of
/// the request's CPU on them, mimalloc far less (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = aibridge::cli::Cli::parse();
    match aibridge::run(cli) {
        Ok(code) => code,
        // A reader that stopped reading (`| head -1`) got what it wanted: not an error.
        Err(error) if aibridge::is_closed_stdout(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(aibridge::exit::USAGE)
        }
    }
}
