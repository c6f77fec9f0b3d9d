//! `pinfs bench ipc --quick`: it starts its own daemon and holder processes,
//! prints a verdict on every line that has a target, logs nothing, and
//! leaves nothing behind (its directory under `/dev/shm`, its processes).
//! The figures are not asserted (no wall-clock assertions); their presence
//! and wording are.

use std::process::Command;

#[test]
fn bench_ipc_quick_prints_a_verdict_per_target_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(["bench", "ipc", "--quick"])
        .env_remove("PINFS_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run pinfs bench ipc");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stderr, "", "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let with_target: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("target met") || l.contains("target NOT met: "))
        .collect();
    for lease in ["write lease", "layout lease"] {
        for mode in ["hot", "cold"] {
            for p in ["p50", "p99"] {
                let label = format!("{lease}, {mode} {p}");
                assert!(
                    with_target.iter().any(|l| l.starts_with(&label)),
                    "{label}: {stdout}"
                );
            }
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("pinfs {lease}, {mode}, medians: "))),
                "breakdown of {lease} {mode}: {stdout}"
            );
        }
    }
    for label in ["read through the mapping", "write through the mapping"] {
        assert!(
            with_target.iter().any(|l| l.starts_with(label)),
            "{label}: {stdout}"
        );
    }
    for op in ["pread 4 KiB", "pwrite 4 KiB", "open + close", "stat"] {
        assert!(lines.iter().any(|l| l.starts_with(op)), "{op}: {stdout}");
    }
    let summary = lines.last().copied().unwrap_or_default();
    assert!(summary.starts_with("all 10 targets: target "), "{stdout}");
    assert_eq!(with_target.len(), 11, "10 lines and the summary: {stdout}");
    // The bench's directory (pool, socket, the kernel's files), named in
    // its first line, is gone.
    let header = lines.first().copied().unwrap_or_default();
    let dir = header
        .split("pool ")
        .nth(1)
        .and_then(|rest| rest.split("/pool").next())
        .unwrap_or_default();
    assert!(dir.starts_with("/dev/shm/pinfs-bench-ipc-"), "{header}");
    assert!(
        !std::path::Path::new(dir).exists(),
        "{dir} left behind by the bench"
    );
}
