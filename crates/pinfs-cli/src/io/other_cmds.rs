//! `io` commands that touch no file (CLI.md "Other"): `sleep` pauses the
//! actor (to order actors in a script by time where nothing else orders
//! them), `echo` prints its text (to make script output readable).
//!
//! `wait` is listed with them in CLI.md but is the runner's own command: it
//! waits for an actor's thread rather than running on it (see `io/mod.rs`).

use std::time::Duration;

use super::parse::{Line, OptSpec};
use super::{CmdResult, Ctx};

/// Longest `sleep` accepted, in milliseconds (an hour): a typo should not
/// hang a script for days.
pub const MAX_SLEEP_MS: u64 = 3_600_000;

const SLEEP: OptSpec = OptSpec::plain("sleep MS");

/// Run `line` if it is one of these commands.
pub fn run(ctx: &mut Ctx<'_>, line: &Line) -> Option<CmdResult> {
    match line.name.as_str() {
        "sleep" => Some(sleep(line)),
        "echo" => {
            ctx.out.line(&line.rest);
            Some(Ok(()))
        }
        _ => None,
    }
}

fn sleep(line: &Line) -> CmdResult {
    let args = SLEEP.parse(&line.args)?;
    let [ms] = args.exactly()?;
    let ms = args.millis(ms)?;
    if ms > MAX_SLEEP_MS {
        return Err(args.error(format!("at most {MAX_SLEEP_MS} ms")));
    }
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}
