//! Whether a holder's process still exists, from `/proc` of the broker's PID
//! namespace. A process the broker cannot see (another namespace, another host)
//! counts as gone, which keeps the plain orphan rules for it.

/// True while `/proc/PID` shows a process that is not a zombie. A stopped
/// (SIGSTOP) or sleeping process is running in this sense: it still holds memory.
pub fn is_running(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state …`: comm may hold spaces and parentheses, so read the
    // state after the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_pid_zero_does_not() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(0));
    }

    #[test]
    fn a_zombie_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped: once it exits it stays in /proc as a zombie. Bounded wait.
        let mut waited = 0;
        while is_running(pid) && waited < 500 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        assert!(!is_running(pid), "an exited, unreaped child is not running");
        child.wait().unwrap();
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_running(pid));
    }
}
