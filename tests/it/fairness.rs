//! Issue 22, many locations on one daemon: with fewer concurrency permits than locations,
//! bulk work (a first sync's children backlog) yields its permit whenever another location
//! waits for one, so every location's backlog advances in turns instead of one location
//! backfilling while the others starve. Counted in the store, not timed.

use std::time::Duration;

use ghl_sync::config::Dur;
use ghl_sync::store::snapshot;
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, fast_ghl, raw, settings_for, start_sandbox};

const LOCATIONS: usize = 3;
/// Six yielding chunks of 16 contacts (2 rounds of 8 concurrent reads) per location.
const CONTACTS: usize = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_take_turns_at_their_children_backlogs_with_one_permit() {
    let mut ghl = fast_ghl(CONTACTS);
    ghl.locations = LOCATIONS;
    let sandbox = start_sandbox(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.sync.max_concurrent_locations = 1;
    // No poll falls due during the test: only the waiting locations make bulk work yield.
    settings.sync.contacts_interval = Dur::secs(3600);
    // Per-contact task reads: every backlog chunk is child reads.
    settings.sync.task_search = false;
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let store = app.store.clone();
    let locations: Vec<String> = sandbox.ghl.locations().into_iter().map(|l| l.id).collect();
    assert_eq!(locations.len(), LOCATIONS);
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    // Every location's contacts stored and children read.
    let mut finished = false;
    for _ in 0..1200 {
        let mut done = true;
        for location in &locations {
            let stored = snapshot::contact_count(&store, location).await.unwrap();
            let due = snapshot::children_due(&store, location, 1, &Default::default()).await.unwrap();
            done &= stored == CONTACTS as u64 && due.is_empty();
        }
        if done {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished, "the children backlogs did not finish");
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // When each location's children were first and last read (a chunk's commit stamps its
    // contacts; no sweep re-reads them within the hour-long poll interval).
    let mut conn = raw(&store).await;
    let spans: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT location_id, MIN(children_synced_at), MAX(children_synced_at), COUNT(children_synced_at) \
         FROM contacts GROUP BY location_id ORDER BY location_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(spans.len(), LOCATIONS);
    for (location, _, _, read) in &spans {
        assert_eq!(*read, CONTACTS as i64, "{location}: every contact's children read once");
    }
    // Every location got child reads before any location finished its backlog.
    let first_finished = spans.iter().map(|(_, _, last, _)| *last).min().unwrap();
    for (location, first, _, _) in &spans {
        assert!(
            *first < first_finished,
            "{location} read no children before another location finished its whole backlog: {spans:?}"
        );
    }
    sandbox.stop().await;
}
