//! Prints the template's metadata regions with their indices (what a
//! hand-written seed's `region` byte selects); given seed files, prints what
//! fsck says of the image each one makes.

use pinfs::fs::Fs;
use pinfs::media::RecordingMedia;

fn main() {
    let t = pinfs_fuzz::Template::get();
    let seeds: Vec<String> = std::env::args().skip(1).collect();
    if seeds.is_empty() {
        for (i, r) in t.regions.iter().enumerate() {
            println!("{i:3} {:<32} {:>10} {:>6}", r.name, r.start, r.len);
        }
    }
    for path in seeds {
        let Ok(data) = std::fs::read(&path) else {
            println!("{path}: unreadable");
            continue;
        };
        let media = RecordingMedia::from_image(t.image_for(&data));
        match Fs::fsck(&media) {
            Ok(r) if r.problems.is_empty() => println!("{path}: consistent"),
            Ok(r) => println!("{path}: {}", r.problems.join("; ")),
            Err(e) => println!("{path}: refused: {e}"),
        }
    }
}
