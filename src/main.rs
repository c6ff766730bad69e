//! The `gpu-agent` binary: parse the command line, run one command, map failures to exit codes.

use std::process::ExitCode;

use clap::Parser;
use gpu_agent::cli::{Cli, Command, LogFormat};
use gpu_agent::commands::{self, Fatal};
use gpu_agent::logging;

fn main() -> ExitCode {
    let cli = Cli::parse_from(gpu_agent::cli::argv());
    let result: Result<Option<String>, Fatal> = match cli.command {
        Command::Run(args) => {
            logging::init(args.log_format);
            commands::run::run(args).map(|()| None)
        }
        Command::List(args) => {
            logging::init(LogFormat::Text);
            commands::list::run(&args).map(Some)
        }
        Command::Plan(args) => {
            logging::init(LogFormat::Text);
            commands::plan::run(&args).map(Some)
        }
        Command::Webhook(args) => {
            logging::init(args.log_format);
            commands::webhook::run(args).map(|()| None)
        }
        Command::MpsControl(args) => {
            logging::init(args.log_format);
            commands::mps_control::run(args).map(|()| None)
        }
        Command::CheckConfig { path } => {
            logging::init(LogFormat::Text);
            commands::check_config::run(&path).map(Some)
        }
    };
    match result {
        Ok(Some(output)) => {
            print!("{output}");
            if !output.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}
