//! The one verdict every benchmark prints for a target.
//!
//! A benchmark line that has a target ends with `target met` or `target NOT
//! met: RATIO (target GOAL)`, worded the same in `bench fs`, `bench lease`
//! and `bench map`, and each benchmark ends with one summary line in the same
//! words. A reader (or a script grepping for `NOT met`) needs no knowledge of
//! which benchmark printed the line. [`Latency`] is the one way a
//! benchmark turns samples into the percentiles it compares.

use std::fmt;
use std::time::Duration;

/// What a ratio must be to meet its target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// The ratio must be at least this (speed relative to the baseline).
    AtLeast(f64),
    /// The ratio must be at most this (time or cost relative to the baseline).
    AtMost(f64),
    /// An absolute time, in seconds, must be below this (a target the issue
    /// states in milliseconds, such as a truncate of 1 GiB under 10 ms).
    TimeUnder(Duration),
}

impl Goal {
    /// Whether `ratio` meets the goal.
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(min) => ratio >= min,
            Goal::AtMost(max) => ratio <= max,
            Goal::TimeUnder(limit) => ratio < limit.as_secs_f64(),
        }
    }

    /// `value` as the goal measures it: `0.910x`, or `38.01 ms`.
    fn shown(self, value: f64) -> String {
        match self {
            Goal::TimeUnder(_) => format!("{:.2} ms", value * 1e3),
            _ => format!("{value:.3}x"),
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtLeast(min) => write!(f, ">= {min}x"),
            Goal::AtMost(max) => write!(f, "<= {max}x"),
            Goal::TimeUnder(limit) => write!(f, "< {} ms", limit.as_secs_f64() * 1e3),
        }
    }
}

/// The end of a line with a target: `target met`, or `target NOT met: 0.91x
/// (target >= 0.95x)`. `ratio` is a time in seconds for [`Goal::TimeUnder`].
pub fn verdict(ratio: f64, goal: Goal) -> String {
    if goal.met(ratio) {
        "target met".to_string()
    } else {
        format!("target NOT met: {} (target {goal})", goal.shown(ratio))
    }
}

/// The targets of one benchmark: each line's verdict, and the summary.
#[derive(Debug, Default)]
pub struct Scorecard {
    /// The lines whose target was missed, as `LABEL RATIO`.
    missed: Vec<String>,
    /// How many lines had a target.
    checked: usize,
}

impl Scorecard {
    /// The verdict for one line (`label` names it in the summary).
    pub fn check(&mut self, label: &str, ratio: f64, goal: Goal) -> String {
        self.checked += 1;
        if !goal.met(ratio) {
            self.missed.push(format!("{label} ({})", goal.shown(ratio)));
        }
        verdict(ratio, goal)
    }

    /// The summary line: `all N targets: target met`, or `all N targets:
    /// target NOT met: A, B`.
    pub fn summary(&self) -> String {
        let n = self.checked;
        if self.missed.is_empty() {
            format!("all {n} targets: target met")
        } else {
            format!(
                "all {n} targets: target NOT met: {}",
                self.missed.join(", ")
            )
        }
    }
}

/// Percentiles of a set of samples (round trips, operations).
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

impl Latency {
    /// The percentiles of `samples` (at least one).
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
        Latency {
            p50: at(50),
            p99: at(99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_read_the_same_everywhere() {
        assert_eq!(verdict(1.2, Goal::AtLeast(1.0)), "target met");
        assert_eq!(
            verdict(0.91, Goal::AtLeast(0.95)),
            "target NOT met: 0.910x (target >= 0.95x)"
        );
        assert_eq!(verdict(0.2, Goal::AtMost(0.25)), "target met");
        assert!(verdict(0.3, Goal::AtMost(0.25)).starts_with("target NOT met: "));
        let mut card = Scorecard::default();
        assert_eq!(card.check("a", 1.0, Goal::AtLeast(0.9)), "target met");
        assert_eq!(card.summary(), "all 1 targets: target met");
        card.check("b", 0.5, Goal::AtLeast(0.9));
        assert_eq!(card.summary(), "all 2 targets: target NOT met: b (0.500x)");
        let ten_ms = Goal::TimeUnder(Duration::from_millis(10));
        assert_eq!(verdict(0.009, ten_ms), "target met");
        assert_eq!(
            verdict(0.038, ten_ms),
            "target NOT met: 38.00 ms (target < 10 ms)"
        );
    }
}
