use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = aibridge::cli::Cli::parse();
    match aibridge::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(aibridge::exit::USAGE)
        }
    }
}
