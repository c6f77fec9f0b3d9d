//! Replays the seed inputs and every saved fuzz regression through the
//! `mount_image` logic, on stable and without libFuzzer:
//! `cargo test --manifest-path fuzz/Cargo.toml --no-default-features`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[test]
fn saved_inputs_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut ran = 0;
    for dir in ["seeds/mount_image", "regressions/mount_image"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let data = std::fs::read(&path).expect("read a saved input");
            ran += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| pinfs_fuzz::mount_image(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", path.display()));
            }
        }
    }
    println!("replayed {ran} saved inputs");
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}

/// The template the patches start from must be what the fuzz target assumes:
/// it mounts clean (both variants, the replay one through journal replay),
/// and its map names every kind of metadata structure.
#[test]
fn template_is_sound() {
    use pinfs::fs::Fs;
    use pinfs::journal::Recovery;
    use pinfs::media::RecordingMedia;
    use pinfs_fuzz::{Seal, Template};
    use std::sync::Arc;

    let t = Template::get();
    for (name, image) in [("template", &t.image), ("replay", &t.replay)] {
        let report =
            Fs::fsck(&RecordingMedia::from_image(image.clone())).expect("fsck the template");
        assert!(report.problems.is_empty(), "{name}: {:?}", report.problems);
        let replayed = matches!(report.recovery, Recovery::Replayed { .. });
        assert_eq!(
            replayed,
            name == "replay",
            "{name}: recovery {:?}",
            report.recovery
        );
        let fs = Fs::mount(Arc::new(RecordingMedia::from_image(image.clone())))
            .expect("mount the template");
        assert!(fs.check().is_empty());
    }
    for seal in [
        Seal::Superblock,
        Seal::State,
        Seal::JournalHeader,
        Seal::Inode,
        Seal::Index,
        Seal::Leaf,
        Seal::Shared,
    ] {
        assert!(
            t.regions.iter().any(|r| r.seal == seal),
            "no region sealed as {seal:?}"
        );
    }
    let leaves = t.regions.iter().filter(|r| r.seal == Seal::Leaf).count();
    assert!(
        leaves >= 3,
        "expected the two-leaf file and the one-leaf file, found {leaves} leaves"
    );
    assert!(
        t.regions
            .iter()
            .filter(|r| r.name.ends_with("directory block"))
            .count()
            >= 4
    );
    for (i, r) in t.regions.iter().enumerate() {
        println!(
            "region {i:3}: {:<28} at {:#9x} len {:6} {:?}",
            r.name, r.start, r.len, r.seal
        );
    }
}
