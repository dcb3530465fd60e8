//! The journal drain: one thread per shard that moves events from the shard's ring into its
//! journal segments, applies the sync policy, and tells the reactor how far the journal got
//! (for `ack = "logged"` endpoints).
//!
//! It never blocks the reactor: the ring is the only thing they share. When the ring is empty the
//! drain naps (DRAIN_NAP) while traffic flows and sleeps deeply once it stops; the reactor wakes
//! it for `logged` requests, a filling ring, or a deep sleeper (Dekker handshake on
//! `drain_sleeping`, see `ShardShared::notify_drain`).
//! Reload: each event carries the generation of the config it was made under; at the first event
//! of a new generation the drain switches the journal to that config's schema (a new segment
//! when it changed), so every record lands in a segment whose header describes it.
//! A journal error (disk full at rotation) leaves the event at the ring's head and retries with
//! backoff: the ring fills, the reactor answers 503, nothing acknowledged is lost.

use std::sync::atomic::fence;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SyncPolicy;
use crate::constants::DRAIN_BATCH_EVENTS;
use crate::journal::ShardJournal;
use crate::metrics::latency::LocalHistogram;
use crate::ring::Consumer;
use crate::runtime::ShardShared;

/// While events keep coming, the drain naps this long between looks at an empty ring instead of
/// asking the reactor to wake it: a `received` event reaches the journal within this bound, and
/// the reactor pays no wake-up per request. `logged` requests and a ring past half full wake
/// the drain at once, so neither waits for it. Each nap ends in a timer interrupt and a switch
/// on the reactor's CPU: at 125k requests/s, 1 ms naps cost 0.3 µs of CPU per request more
/// than 5 ms naps (4 alternating pairs, every pair agreeing); 10 ms saved nothing more.
pub const DRAIN_NAP: Duration = Duration::from_millis(5);
/// Naps in a row that found nothing (~200 ms) before the drain sleeps deeply and asks to be woken.
const NAPS_BEFORE_SLEEP: u32 = 40;
/// Longest deep sleep (safety net only: the reactor wakes a deep sleeper on the next push).
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Backoff after a journal error.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);
/// Once the reactor has exited (shutdown), how long a failing journal is retried before the
/// drain gives up on the events left in the ring, says how many, and lets the process exit 1:
/// a shutdown must end (systemd would kill it anyway), and freeing disk space in that time
/// still saves them.
pub const STOP_RETRY: Duration = Duration::from_secs(10);

/// After a full batch the drain yields its CPU when fewer events than this wait in the ring.
/// A drain that shares its core with the reactor otherwise catches up on a nap's backlog (~650
/// events at 130k/s) in one run, and on this `PREEMPT_NONE` kernel the reactor waits it out:
/// wrk's saturated p99 was 0.33–0.54 ms with the yield against 0.49–0.64 ms without (9 of 10
/// alternating pairs lower, CPU per request the same; perf/RESULTS.md). Above the bound (or a
/// quarter of a smaller ring) the drain does not yield, so a filling ring is not starved into
/// 503s (an unguarded yield was). A `logged` request deep in the backlog may wait a few
/// reactor turns longer; its reactor is what runs meanwhile.
const YIELD_BELOW_EVENTS: usize = 1024;

/// How soon an `interval` sync that found the previous one still running tries again.
const SYNC_BUSY_RETRY: Duration = Duration::from_millis(10);

/// Scheduling niceness of drain threads. A drain shares its CPU with its reactor when there are
/// as many shards as CPUs; its bursts (prefaulting, rotation, msync) must not preempt the reactor
/// mid-batch. At +5 it still gets a quarter of the CPU when both are runnable, far more than it
/// needs (a memcpy and a CRC per event).
pub const DRAIN_NICE: i32 = 5;

pub fn run(
    shared: Arc<ShardShared>,
    mut ring: Consumer,
    mut journal: ShardJournal,
    sync: SyncPolicy,
    sync_interval: Duration,
    publish_interval: Duration,
) {
    // SAFETY: setpriority on this thread's own tid (Linux: per-thread niceness); failure only
    // leaves the default priority.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, DRAIN_NICE) };
    if sync == SyncPolicy::None {
        journal.leave_writeback_to_kernel();
    }
    let counters = &shared.counters;
    let mut next_sync = Instant::now() + sync_interval;
    let mut dirty = false;
    let mut error_logged = false;
    // Under `always`, a failed msync: the kernel cannot say which records reached the disk (it
    // reports an error once, and a later msync succeeds without proving the earlier pages
    // were written). No `logged` request is answered from then on; a restart recovers.
    let mut durability_lost = false;
    let mut naps = 0u32;
    // Generation of the config whose schema the journal writes with.
    let mut gen = 0u32;
    // Ingest-to-journal latency (metrics::latency): receive times of the batch, recorded against
    // one clock read once the batch is appended.
    let mut latency = LocalHistogram::new();
    // How long each sync took (`ShardJournal::take_sync_duration_ns`), on whichever thread.
    let mut sync_latency = LocalHistogram::new();
    let mut batch_ts = [0u64; DRAIN_BATCH_EVENTS];
    let mut next_publish = Instant::now() + publish_interval;
    // When the reactor had exited and the journal was failing: the STOP_RETRY clock.
    let mut failing_at_stop: Option<Instant> = None;
    // A small ring (ring_events is configurable down to 16) is never yielded on past a quarter.
    let yield_below = YIELD_BELOW_EVENTS.min(ring.capacity() / 4);
    loop {
        let mut last_seq = 0;
        let mut failed = false;
        let mut appended = 0usize;
        let n = ring.pop_batch(DRAIN_BATCH_EVENTS, |e| {
            debug_assert!(e.seq > last_seq, "ring order");
            if e.config_gen != gen {
                match switch_schema(&shared, &mut journal, e.config_gen) {
                    Ok(()) => gen = e.config_gen,
                    Err(err) => {
                        if !error_logged {
                            eprintln!("tracker: shard {}: journal schema switch failed, retrying: {err}", shared.index);
                            error_logged = true;
                        }
                        counters.journal_errors.fetch_add(1, Relaxed);
                        failed = true;
                        return false;
                    }
                }
            }
            let ts_ns = e.ts_ns;
            match journal.append(e) {
                Ok(()) => {
                    last_seq = e.seq;
                    batch_ts[appended] = ts_ns;
                    appended += 1;
                    true
                }
                Err(err) => {
                    if !error_logged {
                        eprintln!("tracker: shard {}: journal append failed, retrying: {err}", shared.index);
                        error_logged = true;
                    }
                    counters.journal_errors.fetch_add(1, Relaxed);
                    failed = true;
                    false
                }
            }
        });
        if n > 0 {
            let now_ns = crate::clock::unix_nanos();
            for &ts in &batch_ts[..appended] {
                latency.record(now_ns.saturating_sub(ts));
            }
            error_logged = false;
            dirty = true;
            counters.journal_records.fetch_add(n as u64, Relaxed);
            counters.journal_bytes.store(journal.bytes_written_total(), Relaxed);
            if sync == SyncPolicy::Always {
                if !sync_now(&shared, &mut journal) && !durability_lost {
                    durability_lost = true;
                    eprintln!(
                        "tracker: shard {}: with sync = \"always\" a failed msync leaves no way to know which \
                         records are on disk: logged endpoints answer 503 until the tracker is restarted",
                        shared.index
                    );
                    shared.set_journal_failing(true);
                }
                dirty = false;
            }
            if !durability_lost {
                shared.publish_journaled(last_seq);
            }
            // After the publish: `logged` requests of this batch need not wait for it.
            match sync {
                SyncPolicy::Interval => journal.start_writeback(),
                SyncPolicy::None | SyncPolicy::Always => journal.unmap_written(),
            }
        }
        if sync == SyncPolicy::Interval {
            // The sync runs on a helper thread (journal/background_sync.rs): a disk that stalls
            // holds it, not this drain, which goes on emptying the ring. One at a time; a
            // failed one is said as soon as it is known.
            if let Some(Err(e)) = journal.background_sync_done() {
                sync_failed(&shared, &e);
            }
            if dirty && Instant::now() >= next_sync {
                match journal.sync_in_background() {
                    // The last one still runs (a slow disk): this one starts once it ends.
                    None => next_sync = Instant::now() + sync_interval.min(SYNC_BUSY_RETRY),
                    Some(r) => {
                        if let Err(e) = r {
                            sync_failed(&shared, &e);
                        }
                        dirty = false;
                        next_sync = Instant::now() + sync_interval;
                    }
                }
            }
        }
        if let Some(ns) = journal.take_sync_duration_ns() {
            sync_latency.record(ns);
            counters.journal_syncs.store(journal.syncs(), Relaxed);
        }
        if Instant::now() >= next_publish {
            latency.publish(&counters.latency.journal);
            sync_latency.publish(&counters.latency.journal_sync);
            next_publish = Instant::now() + publish_interval;
        }
        if failed {
            shared.set_journal_failing(true);
            if shared.reactor_done.load(SeqCst) {
                let since = *failing_at_stop.get_or_insert_with(Instant::now);
                if since.elapsed() >= STOP_RETRY {
                    let lost = ring.len() as u64;
                    shared.events_lost.store(lost, SeqCst);
                    eprintln!(
                        "tracker: shard {}: the journal still fails {} s into shutdown; giving up on {lost} event(s) \
                         acknowledged as received that were never written (see the errors above)",
                        shared.index,
                        STOP_RETRY.as_secs()
                    );
                    break;
                }
            }
            std::thread::sleep(ERROR_BACKOFF);
            continue;
        }
        if n > 0 {
            shared.set_journal_failing(durability_lost);
            failing_at_stop = None;
            naps = 0;
            if n == DRAIN_BATCH_EVENTS && ring.len() < yield_below {
                // More to do, but not much: let a reactor that shares this core answer first.
                std::thread::yield_now();
            }
        } else {
            if shared.reactor_done.load(SeqCst) && ring.is_empty() {
                break;
            }
            if naps < NAPS_BEFORE_SLEEP {
                naps += 1;
                std::thread::park_timeout(DRAIN_NAP);
                continue;
            }
            shared.drain_sleeping.store(true, SeqCst);
            // Dekker with notify_drain (a commit's Release store, fence, load of drain_sleeping):
            // the ring's tails are read with Acquire loads, which a SeqCst store alone does not
            // keep after it everywhere (on x86 it is a full barrier; on a weaker CPU the check
            // could see the ring empty while the reactor still sees the drain awake, and the
            // events would wait for IDLE_PARK).
            fence(SeqCst);
            if ring.is_empty() && !shared.reactor_done.load(SeqCst) {
                let park = if dirty && sync == SyncPolicy::Interval {
                    next_sync.saturating_duration_since(Instant::now()).min(IDLE_PARK)
                } else {
                    IDLE_PARK
                };
                std::thread::park_timeout(park);
            }
            shared.drain_sleeping.store(false, SeqCst);
        }
    }
    // A clean stop only when every event of the ring made it into the journal.
    // The final sync, timed here: a clean close consumes the journal.
    shared.set_journal_end(journal.end());
    let start = Instant::now();
    let result = if ring.is_empty() { journal.close_clean() } else { journal.sync() };
    sync_latency.record(start.elapsed().as_nanos() as u64);
    if let Err(e) = result {
        shared.final_sync_failed.store(true, SeqCst);
        eprintln!("tracker: shard {}: final journal sync failed: {e}", shared.index);
    }
    latency.publish_wait(&counters.latency.journal);
    sync_latency.publish_wait(&counters.latency.journal_sync);
}

/// Syncs the journal; false (logged and counted) when that failed.
fn sync_now(shared: &ShardShared, journal: &mut ShardJournal) -> bool {
    journal.sync().map_err(|e| sync_failed(shared, &e)).is_ok()
}

fn sync_failed(shared: &ShardShared, e: &crate::journal::JournalError) {
    shared.counters.journal_errors.fetch_add(1, Relaxed);
    eprintln!("tracker: shard {}: journal sync failed: {e}", shared.index);
}

/// Moves the journal to the schema of config generation `to` (cold: once per reload).
#[cold]
fn switch_schema(
    shared: &ShardShared,
    journal: &mut ShardJournal,
    to: u32,
) -> Result<(), crate::journal::JournalError> {
    let Some(cfg) = shared.reload.config_for_drain(to) else {
        // The reactor queues a config before it makes an event with it, so this cannot happen;
        // writing under the schema in use keeps the record (a reader decodes it with that one).
        debug_assert!(false, "no config queued for generation {to}");
        eprintln!("tracker: shard {}: no config for generation {to}; keeping the journal's schema", shared.index);
        return Ok(());
    };
    if journal.set_schema(&cfg.schema)? {
        eprintln!(
            "tracker: shard {}: journal starts segment {}: the reloaded config (generation {to}) changed the schema",
            shared.index,
            journal.segment_number()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::ShardCounters;

    /// Regression: a final sync that failed at shutdown was logged, and the process still
    /// exited 0, as if every event were on disk.
    #[test]
    fn a_final_sync_that_fails_is_flagged_for_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = ShardJournal::open(dir.path(), 0, 1 << 20, &Config::embedded().schema).unwrap();
        let shared = Arc::new(ShardShared::new(0, ShardCounters::new(1, 1), Default::default()).unwrap());
        let (mut producer, consumer) = crate::ring::ring(16);
        producer.reserve().unwrap();
        producer.commit();
        shared.reactor_done.store(true, SeqCst);
        let drain_shared = shared.clone();
        let long = Duration::from_secs(3600);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The drain's own thread: every msync it makes fails, as on a disk error.
            crate::journal::FAIL_MSYNC.set(true);
            run(drain_shared, consumer, journal, SyncPolicy::Interval, long, long);
            let _ = tx.send(());
        });
        // Bounded: a drain that never ends fails the test instead of hanging it.
        rx.recv_timeout(Duration::from_secs(30)).expect("the drain did not end within 30 s");
        assert_eq!(shared.journaled.load(SeqCst), 1, "the event was appended");
        assert!(shared.final_sync_failed());
    }
}
