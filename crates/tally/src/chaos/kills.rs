//! Killing processes at moments drawn from the seed, and supervising them meanwhile.
//!
//! [`plan`] is pure: the `n`th kill's moment (from the run's start), victim and time down
//! depend on the seed and the settings only, so a run can be repeated. One process is down at
//! a time: the next moment is drawn after the previous victim is due back. [`run`] carries the
//! plan out while the load lasts, and restarts any process that exits by itself, as a
//! supervisor (systemd, Kubernetes) would; such exits are recorded, never hidden.

use std::time::{Duration, Instant};

use tally_loadgen::mix::SplitMix64;
use tally_loadgen::serde::Serialize;
use tokio::sync::watch;

use crate::chaos::fleet::Fleet;

/// How long a restarted process may take to be ready: it migrates, joins its consumer groups
/// and takes its leases; a minute means it will not.
pub const RESTART_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often processes are checked for exits while waiting for the next kill.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);
/// Most kills in one run: bounds the plan, and is far past any run's length.
pub const KILLS_MAX: usize = 10_000;
/// Mixed into the seed, so that the kill stream is not the order mix's.
const KILL_STREAM: u64 = 0x6b69_6c6c_6b69_6c6c;

/// One kill of the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedKill {
    /// From the run's start.
    pub at: Duration,
    /// Index into the victims the plan was drawn for.
    pub victim: usize,
    pub down_for: Duration,
}

/// The kills of a run of `killing.victims` candidates: the gap before each is uniform in
/// [every / 2, 3 every / 2) after the previous victim is due back, the victim uniform, the time
/// down uniform in [down_min, down_max).
pub fn plan(killing: &Killing) -> impl Iterator<Item = PlannedKill> + use<> {
    let (every, down_min) = (killing.every, killing.down_min);
    let victims = killing.victims.len() as u64;
    assert!(victims > 0 && !every.is_zero() && down_min <= killing.down_max);
    let down_spread = killing.down_max - down_min;
    let mut rng = SplitMix64::new(killing.seed ^ KILL_STREAM);
    let mut free_from = Duration::ZERO;
    (0..KILLS_MAX).map(move |_| {
        let gap = every.mul_f64(0.5 + rng.next_unit());
        let victim = rng.next_in(0, victims - 1) as usize;
        let down_for = down_min + down_spread.mul_f64(rng.next_unit());
        let at = free_from + gap;
        free_from = at + down_for;
        PlannedKill {
            at,
            victim,
            down_for,
        }
    })
}

/// One kill as it happened.
#[derive(Debug, Clone, Serialize)]
#[serde(crate = "tally_loadgen::serde")]
pub struct Kill {
    /// Seconds from the run's start to the SIGKILL.
    pub at_s: f64,
    pub victim: String,
    pub down_s: f64,
    /// Seconds from the restart to the process answering `/readyz`; `None` if it never did.
    pub ready_after_s: Option<f64>,
}

/// A process that exited without being killed, and was started again.
#[derive(Debug, Clone, Serialize)]
#[serde(crate = "tally_loadgen::serde")]
pub struct Exit {
    pub at_s: f64,
    pub process: String,
    pub status: String,
    pub log: String,
}

/// What [`run`] did.
#[derive(Debug, Default)]
pub struct Chaos {
    pub kills: Vec<Kill>,
    pub exits: Vec<Exit>,
    /// Processes that did not come back, each a violation.
    pub failures: Vec<String>,
}

/// What to kill: the fleet's indexes of the candidates, how often, and for how long.
#[derive(Debug, Clone)]
pub struct Killing {
    pub victims: Vec<usize>,
    /// The mean time between a victim's return and the next kill.
    pub every: Duration,
    pub down_min: Duration,
    pub down_max: Duration,
    pub seed: u64,
}

/// Carries out the kill plan (if any) from `start` until `stop` turns true, restarting any
/// process that exits by itself meanwhile. A kill under way finishes (its victim restarted and
/// ready) before this returns, so that the fleet is whole afterwards.
pub async fn run(
    fleet: &mut Fleet,
    killing: Option<&Killing>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Chaos> {
    let mut chaos = Chaos::default();
    let mut planned = killing
        .filter(|killing| !killing.victims.is_empty() && !killing.every.is_zero())
        .map(plan);
    loop {
        let next = planned.as_mut().and_then(Iterator::next);
        // Supervise until the kill is due or the load is over.
        loop {
            supervise(fleet, start, &mut chaos).await?;
            if *stop.borrow() {
                return Ok(chaos);
            }
            let due = next.map(|kill| start + kill.at);
            if due.is_some_and(|due| Instant::now() >= due) {
                break;
            }
            let nap = due.map_or(SUPERVISE_INTERVAL, |due| {
                due.saturating_duration_since(Instant::now())
                    .min(SUPERVISE_INTERVAL)
            });
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { return Ok(chaos) },
                () = tokio::time::sleep(nap) => {}
            }
        }
        if let (Some(kill), Some(killing)) = (next, killing) {
            let index = killing.victims[kill.victim];
            chaos
                .kills
                .push(kill_and_restart(fleet, index, kill.down_for, start).await?);
            let last = chaos
                .kills
                .last()
                .filter(|kill| kill.ready_after_s.is_none());
            if let Some(kill) = last {
                chaos.failures.push(format!(
                    "{} did not come back after the kill at {:.1}s; see {}",
                    kill.victim,
                    kill.at_s,
                    fleet.log(index).display()
                ));
            }
        }
    }
}

async fn kill_and_restart(
    fleet: &mut Fleet,
    index: usize,
    down_for: Duration,
    start: Instant,
) -> anyhow::Result<Kill> {
    let name = fleet.spec(index).name.clone();
    let at = start.elapsed();
    fleet.kill(index).await?;
    eprintln!(
        "chaos {:>6.1}s  killed {name}; down for {:.1}s",
        at.as_secs_f64(),
        down_for.as_secs_f64()
    );
    tokio::time::sleep(down_for).await;
    fleet.restart(index)?;
    let restarted = Instant::now();
    let ready_after_s = match fleet.wait_ready(index, RESTART_READY_TIMEOUT).await {
        Ok(()) => Some(restarted.elapsed().as_secs_f64()),
        Err(error) => {
            eprintln!("chaos: {error:#}");
            None
        }
    };
    Ok(Kill {
        at_s: at.as_secs_f64(),
        victim: name,
        down_s: down_for.as_secs_f64(),
        ready_after_s,
    })
}

/// Restarts every process that exited by itself, recording each exit.
pub async fn supervise(fleet: &mut Fleet, start: Instant, chaos: &mut Chaos) -> anyhow::Result<()> {
    for (index, status) in fleet.reap_exited()? {
        let exit = Exit {
            at_s: start.elapsed().as_secs_f64(),
            process: fleet.spec(index).name.clone(),
            status: status.to_string(),
            log: fleet.log(index).display().to_string(),
        };
        eprintln!(
            "chaos {:>6.1}s  {} exited by itself ({}); starting it again",
            exit.at_s, exit.process, exit.status
        );
        chaos.exits.push(exit);
        fleet.restart(index)?;
        if let Err(error) = fleet.wait_ready(index, RESTART_READY_TIMEOUT).await {
            chaos.failures.push(format!("{error:#}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killing(seed: u64, every_s: u64, victims: usize) -> Killing {
        Killing {
            victims: (0..victims).collect(),
            every: Duration::from_secs(every_s),
            down_min: DOWN_MIN,
            down_max: DOWN_MAX,
            seed,
        }
    }

    const DOWN_MIN: Duration = Duration::from_secs(1);
    const DOWN_MAX: Duration = Duration::from_secs(5);

    #[test]
    fn the_same_seed_gives_the_same_kills_and_another_seed_others() {
        let kills: Vec<PlannedKill> = plan(&killing(7, 5, 3)).take(50).collect();
        assert_eq!(kills, plan(&killing(7, 5, 3)).take(50).collect::<Vec<_>>());
        assert_ne!(kills, plan(&killing(8, 5, 3)).take(50).collect::<Vec<_>>());
    }

    #[test]
    fn kills_never_overlap_and_keep_to_their_bounds() {
        let every = Duration::from_secs(4);
        let kills: Vec<PlannedKill> = plan(&killing(1, 4, 4)).take(1_000).collect();
        for pair in kills.windows(2) {
            let back = pair[0].at + pair[0].down_for;
            let gap = pair[1].at - back;
            assert!(gap >= every / 2 && gap < every * 3 / 2, "{gap:?}");
        }
        for kill in &kills {
            assert!(kill.victim < 4);
            assert!((DOWN_MIN..DOWN_MAX).contains(&kill.down_for));
        }
        let victims: std::collections::HashSet<usize> = kills.iter().map(|k| k.victim).collect();
        assert_eq!(
            victims.len(),
            4,
            "every candidate is picked over many kills"
        );
        // On average one kill per `every` plus the mean time down.
        let mean_s = kills.last().map_or(0.0, |k| k.at.as_secs_f64()) / kills.len() as f64;
        assert!((mean_s - 7.0).abs() < 0.3, "{mean_s}");
    }
}
