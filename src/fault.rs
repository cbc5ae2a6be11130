//! Named fault points (docs/reliability.md, "Fault points and the simulation").
//!
//! A point sits where a crash, an error or a delay tests a promise of the design: after a
//! script changed Redis and before the caller hears of it, between a DB commit and the
//! journal acknowledgement, and so on ([`POINTS`]). Built without the `fault-injection`
//! feature (every release build) a point is an empty inline function. With it, a point is
//! armed from the environment at start-up:
//!
//! `INVENTORY_FAULTS="persist.before_ack=abort@0.02;lease.renew=sleep(3000)@0.1*2"`
//!
//! - actions: `error` (the point returns [`Injected`]; the caller treats it as the failure
//!   of what it guards), `sleep(ms)` (a delay), `abort` (the process dies at once, like
//!   `kill -9` at exactly that point);
//! - `@p`: the probability of firing at each pass (default 1), `*n`: fire at most n times;
//! - `INVENTORY_FAULT_SEED` seeds the decisions: pass k of a point fires or not by a hash
//!   of (seed, point, k), so a seed replays the same decisions for the same passes.

/// A fault fired at a point armed with `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fault injected at {0}")]
pub struct Injected(pub &'static str);

/// Every point, and what it stands for.
pub const POINTS: &[(&str, &str)] = &[
    (
        "script.after_reply",
        "a shard's script call answered; its callers not yet",
    ),
    (
        "persist.mid_batch",
        "inside the persistence transaction, after the ledger rows, before the lines and stock rows",
    ),
    (
        "persist.before_ack",
        "the persistence transaction committed; the journal entries not yet acknowledged",
    ),
    (
        "persist.claim",
        "claiming journal entries another consumer left pending",
    ),
    (
        "kafka.before_produce",
        "an order event decided and its consume-log row written; the outcome not yet produced",
    ),
    (
        "kafka.before_offset_store",
        "the outcome produced and acknowledged; the offset not yet stored",
    ),
    (
        "expiry.before_release",
        "the expiry job read due holds and decided; the releases not yet sent",
    ),
    (
        "reconcile.before_repair",
        "reconciliation found a difference; the repair not yet written",
    ),
    (
        "cluster.after_hold",
        "cluster mode: an order's groups answered its holds; commit or abort not yet sent",
    ),
    (
        "cluster.after_commit",
        "cluster mode: the groups committed an order spanning them; its claim not yet settled",
    ),
    (
        "lease.renew",
        "the supervisor lease renewal about to be sent (sleep: a renewal delayed past expiry)",
    ),
];

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn point(_name: &'static str) -> Result<(), Injected> {
    Ok(())
}

/// Times each point fired (empty without the feature).
#[cfg(not(feature = "fault-injection"))]
pub fn fired() -> Vec<(&'static str, u64)> {
    Vec::new()
}

#[cfg(feature = "fault-injection")]
pub use armed::{fired, parse, point, Action, Arming};

#[cfg(feature = "fault-injection")]
mod armed {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::{Injected, POINTS};

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Action {
        Error,
        Sleep(Duration),
        Abort,
    }

    #[derive(Debug)]
    pub struct Arming {
        pub action: Action,
        pub probability: f64,
        pub max_fires: u64,
        passes: AtomicU64,
        fires: AtomicU64,
    }

    struct Faults {
        seed: u64,
        points: HashMap<&'static str, Arming>,
    }

    static FAULTS: OnceLock<Faults> = OnceLock::new();

    /// Parses an `INVENTORY_FAULTS` value. Unknown points and bad actions are errors, so a
    /// typo cannot leave a simulation without its faults.
    pub fn parse(spec: &str) -> Result<HashMap<&'static str, Arming>, String> {
        let mut out = HashMap::new();
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rest) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected point=action"))?;
            let name = POINTS
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n == name.trim())
                .ok_or_else(|| format!("{name:?} is not a fault point"))?;
            let (rest, max_fires) = match rest.split_once('*') {
                Some((r, n)) => (
                    r,
                    n.parse::<u64>()
                        .map_err(|_| format!("{item:?}: bad count {n:?}"))?,
                ),
                None => (rest, u64::MAX),
            };
            let (action, probability) = match rest.split_once('@') {
                Some((a, p)) => (
                    a,
                    p.parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| format!("{item:?}: bad probability {p:?}"))?,
                ),
                None => (rest, 1.0),
            };
            let action = match action.trim() {
                "error" => Action::Error,
                "abort" => Action::Abort,
                other => {
                    let ms = other
                        .strip_prefix("sleep(")
                        .and_then(|s| s.strip_suffix(')'))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| format!("{item:?}: unknown action {other:?}"))?;
                    Action::Sleep(Duration::from_millis(ms))
                }
            };
            out.insert(
                name,
                Arming {
                    action,
                    probability,
                    max_fires,
                    passes: AtomicU64::new(0),
                    fires: AtomicU64::new(0),
                },
            );
        }
        Ok(out)
    }

    fn faults() -> &'static Faults {
        FAULTS.get_or_init(|| {
            let spec = std::env::var("INVENTORY_FAULTS").unwrap_or_default();
            let points = match parse(&spec) {
                Ok(points) => points,
                Err(e) => {
                    // Start-up, not a request path: a simulation with a broken spec must
                    // not run as if it injected something.
                    eprintln!("INVENTORY_FAULTS: {e}");
                    std::process::exit(2);
                }
            };
            let seed = std::env::var("INVENTORY_FAULT_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if !points.is_empty() {
                tracing::warn!(spec, seed, "fault points armed");
            }
            Faults { seed, points }
        })
    }

    /// splitmix64: a well-mixed hash of the seed, the point and the pass.
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn decide(seed: u64, name: &str, pass: u64, probability: f64) -> bool {
        let named = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let roll = mix(seed ^ mix(named ^ mix(pass)));
        (roll >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }

    pub async fn point(name: &'static str) -> Result<(), Injected> {
        let faults = faults();
        let Some(arming) = faults.points.get(name) else {
            return Ok(());
        };
        let pass = arming.passes.fetch_add(1, Ordering::Relaxed);
        if !decide(faults.seed, name, pass, arming.probability) {
            return Ok(());
        }
        if arming.fires.fetch_add(1, Ordering::Relaxed) >= arming.max_fires {
            return Ok(());
        }
        tracing::warn!(point = name, pass, action = ?arming.action, "fault injected");
        match arming.action {
            Action::Error => Err(Injected(name)),
            Action::Sleep(pause) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
            Action::Abort => std::process::abort(),
        }
    }

    /// Times each armed point fired.
    pub fn fired() -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = faults()
            .points
            .iter()
            .map(|(name, a)| (*name, a.fires.load(Ordering::Relaxed).min(a.max_fires)))
            .collect();
        out.sort();
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_spec_arms_named_points_and_rejects_typos() {
            let armed = parse(
                "persist.before_ack=abort@0.25; lease.renew=sleep(300)*2;script.after_reply=error",
            )
            .unwrap();
            assert_eq!(armed["persist.before_ack"].action, Action::Abort);
            assert_eq!(armed["persist.before_ack"].probability, 0.25);
            assert_eq!(
                armed["lease.renew"].action,
                Action::Sleep(Duration::from_millis(300))
            );
            assert_eq!(armed["lease.renew"].max_fires, 2);
            assert_eq!(armed["script.after_reply"].action, Action::Error);
            assert!(parse("persist.before_akc=abort").is_err());
            assert!(parse("lease.renew=explode").is_err());
            assert!(parse("lease.renew=error@1.5").is_err());
            assert!(parse("").unwrap().is_empty());
        }

        #[test]
        fn decisions_replay_from_the_seed() {
            let run = |seed| {
                (0..1000)
                    .map(|pass| decide(seed, "persist.before_ack", pass, 0.1))
                    .collect::<Vec<_>>()
            };
            assert_eq!(run(7), run(7));
            assert_ne!(run(7), run(8));
            let fires = run(7).iter().filter(|f| **f).count();
            assert!((50..150).contains(&fires), "{fires} of 1000 at p=0.1");
        }
    }
}
