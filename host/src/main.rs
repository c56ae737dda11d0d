//! The `sluice` command (see [`sluice::cli`]).

/// mimalloc instead of the system allocator: records are allocated on one
/// thread and freed on another (source, workers, delivery), which glibc's
/// malloc serialises on an arena lock. See `BENCHMARKS.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
