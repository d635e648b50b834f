//! The `fpt` binary: parse flags, start logging, dispatch.
use clap::Parser;

fn main() {
    reuse_freed_buffers();
    let cli = fpt::cli::Cli::parse();
    fpt::telemetry::init(cli.log_json);
    if let Err(e) = fpt::cli::run(cli) {
        // The reader of our output went away (`fpt predict … | head`): nothing is wrong here.
        if e.downcast_ref::<fpt::cli::StdoutClosed>().is_some() {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc gives every block over 128 KiB back to the kernel when it is freed (and trims the heap's
/// free top), so each training step of a small model faults its activation buffers in again and
/// the kernel zeroes them. Blocks up to 32 MiB now stay in the heap, as does up to 256 MiB of free
/// top, and are reused: tiny-config training about 2000 -> 2800 samples/s (`fpt bench --case tiny`,
/// alternating). A `GLIBC_TUNABLES` set by the user wins.
fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes allocator thresholds; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}
