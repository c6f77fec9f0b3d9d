//! The one helper of the command-line boundary for scenario tests: run
//! `pinfs io` with options and `-c` commands.

use std::process::Command;

/// Run `pinfs io` with `opts` and the commands; (stdout, stderr, success).
/// A panic on stderr fails the test whatever the scenario expects.
pub fn io(opts: &[&str], cmds: &[&str]) -> (String, String, bool) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pinfs"));
    c.arg("io").args(opts);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.output().expect("run pinfs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        out.status.success(),
    )
}
