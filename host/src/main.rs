//! The `sluice` command (see [`sluice::cli`]).

/// mimalloc instead of the system allocator: records are allocated on one
/// thread and freed on another (source, workers, delivery), which glibc's
/// malloc serialises on an arena lock. See `BENCHMARKS.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    sluice::cli::main()
}

/// Opts this process out of transparent huge pages (unless
/// `SLUICE_ALLOW_THP=1`). Batches are short-lived buffers of a few hundred
/// KiB; where the machine's THP setting is `always`, every fresh 2 MiB
/// region the allocator touches is zeroed whole in the page fault, which
/// cost up to a third of a file → lake pipeline's time (BENCHMARKS.md).
#[allow(unsafe_code)]
fn no_transparent_huge_pages() {
    if std::env::var_os("SLUICE_ALLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes no pointers and
    // only sets a flag on this process's memory map; an error (an old
    // kernel) leaves things as they were and is ignored.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
