//! `Command::output` with a time limit, for the launcher's CLI tests: a hung `metaloop` (or
//! mpirun job) fails its test instead of holding CI.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long one command of a test may run (`METALOOP_TEST_TIMEOUT_S`, default 600 s).
pub fn limit() -> Duration {
    let secs = std::env::var("METALOOP_TEST_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

pub trait OutputWithin {
    /// Like `output().unwrap()`, but past [`limit`] the child is sent SIGTERM (mpirun passes it
    /// on), then SIGKILL 15 s later, and the test fails.
    fn output_within_limit(&mut self) -> Output;
}

impl OutputWithin for Command {
    fn output_within_limit(&mut self) -> Output {
        let shown = format!("{self:?}");
        let child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        let pid = child.id().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let limit = limit();
        match rx.recv_timeout(limit) {
            Ok(out) => out.unwrap_or_else(|e| panic!("{shown}: {e}")),
            Err(_) => {
                let kill = |sig: &str| Command::new("kill").args([sig, &pid]).status();
                let _ = kill("-TERM");
                if rx.recv_timeout(Duration::from_secs(15)).is_err() {
                    let _ = kill("-KILL");
                }
                panic!("{shown} still ran after {limit:?}: killed");
            }
        }
    }
}
