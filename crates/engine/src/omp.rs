//! libgomp reads `OMP_WAIT_POLICY` once, when it loads; with its default (spinning)
//! libtorch ran 10–25× slower on a 2-vCPU VM. Binaries that run models call
//! [`ensure_passive_wait_policy`] first thing in `main`, before libtorch loads.

/// Re-executes the current binary with `OMP_WAIT_POLICY=PASSIVE` unless the variable
/// is already set (an operator's explicit choice wins). Returns only when it is set.
pub fn ensure_passive_wait_policy() {
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let error = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("OMP_WAIT_POLICY", "PASSIVE")
                .exec();
            // exec only returns on failure: run on, slower, and say why.
            eprintln!(
                "warning: could not re-exec with OMP_WAIT_POLICY=PASSIVE ({error}); libtorch may be slow"
            );
        }
    }
}
