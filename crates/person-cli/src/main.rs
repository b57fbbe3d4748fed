//! `person-stream`: operator CLI for the Person event stream on NATS JetStream.
//!
//! Run `person-stream --help` for the commands, and `person-stream <command> --help` for
//! each command's options and examples.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
