//! libgomp reads `OMP_WAIT_POLICY` once, when it loads; with its default (spinning)
//! libtorch ran 10–25× slower on a 2-vCPU VM. Binaries that run models call
//! [`ensure_passive_wait_policy`] first thing in `main`, before libtorch loads.

/// Re-executes the current binary with `OMP_WAIT_POLICY=PASSIVE` unless the variable
/// is already set (an operator's explicit choice wins). Returns only when it is set.
pub fn ensure_passive_wait_policy() {
    reexec_with(&passive_wait_policy());
}

/// `OMP_WAIT_POLICY=PASSIVE`, unless the operator set a policy.
pub fn passive_wait_policy() -> Vec<(&'static str, String)> {
    match std::env::var_os("OMP_WAIT_POLICY") {
        Some(_) => Vec::new(),
        None => vec![("OMP_WAIT_POLICY", "PASSIVE".to_owned())],
    }
}

/// Re-executes the current binary with `vars` set, for variables libraries read once
/// as they load; returns at once when there are none (or, warning, if exec fails).
pub fn reexec_with(vars: &[(&'static str, String)]) {
    if vars.is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let error = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .envs(vars.iter().map(|(name, value)| (name, value)))
                .exec();
            // exec only returns on failure: run on, and say what is missing.
            let names: Vec<&str> = vars.iter().map(|(name, _)| *name).collect();
            eprintln!(
                "warning: could not re-exec with {} set ({error}); libtorch may be slow or uncapped",
                names.join(", ")
            );
        }
    }
}
