//! The real `sluice` command line, built in this package so that the
//! end-to-end tests can start it (and `kill -9` it) as a process.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
