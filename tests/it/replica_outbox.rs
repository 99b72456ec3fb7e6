//! Issue 21: delivery workers on several replicas share one outbox. Two dispatchers (two
//! replica ids, two store handles on one PostgreSQL schema) drain a few hundred rows into the
//! sandbox's webhook sink: every key arrives exactly once, none twice, and changes folded into
//! rows while they are in flight still go out, newest last. Connectors that call GHL take only
//! the rows of the locations their replica leases. The PostgreSQL test is skipped (with a
//! message) where no server answers, unless `GHL_SYNC_REQUIRE_POSTGRES=1` (`.ci/run`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghl_sync::config::{Config, ConfigSource, load_from_str};
use ghl_sync::connectors::{self, Connector};
use ghl_sync::dispatch::Dispatcher;
use ghl_sync::domain::{EntityKind, Operation, idempotency_key};
use ghl_sync::store::outbox::{self, EnqueuePolicy, NewChange};
use ghl_sync::store::{Store, codec, now_ms};
use ghl_sync_sandbox::sink::SinkMode;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const CONNECTOR: &str = "webhook.crm";

fn config(sandbox: &Sandbox, dir: &std::path::Path) -> Config {
    let text = format!(
        "[store]\npath = {:?}\n[dispatch]\npoll_interval = \"20ms\"\nbackoff_base = \"10ms\"\nbackoff_max = \"40ms\"\n\
         [connectors.webhook.crm]\nurl = \"{}\"\nbatch_size = 5\nconcurrency = 2\nmax_attempts = 100\ntimeout = \"5s\"\n",
        dir.join("unused.db"),
        sandbox.sink_url("crm")
    );
    load_from_str(&text, ConfigSource::InCode, HashMap::new()).unwrap()
}

fn record(id: &str, version: i64) -> Value {
    json!({"id": id, "firstName": "Ada", "lastName": format!("L{id}"), "version": version})
}

fn hash(record: &Value) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(record).unwrap()).into()
}

/// The key of a record version (what the outbox gives it).
fn key(id: &str, version: i64) -> String {
    let record = record(id, version);
    idempotency_key(CONNECTOR, EntityKind::Contact, id, version, &hash(&record), "")
}

/// Writes a contact change as the sync engine does (a newer one folds into a pending row).
async fn put(store: &Store, connector: &str, location: &str, id: &str, version: i64) {
    let record = record(id, version);
    let packed = codec::pack(&record);
    let content_hash = hash(&record);
    let change = NewChange {
        connector,
        location_id: location,
        entity: EntityKind::Contact,
        entity_id: id,
        contact_id: Some(id),
        operation: if version == 1 { Operation::Created } else { Operation::Updated },
        record: &packed,
        content_hash: &content_hash,
        revision: version,
        changed_at: now_ms(),
    };
    outbox::enqueue_all(store, "test", &[(change, None)], EnqueuePolicy::Fold).await.unwrap();
}

async fn pending(store: &Store) -> i64 {
    outbox::depth(store).await.unwrap().iter().map(|depth| depth.pending).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_store_deliver_every_key_exactly_once_newest_version_last() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
    let Some(url) = ghl_sync::store::testing::postgres_test_url().await else { return };
    let sandbox = Sandbox::start(SandboxOptions::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&sandbox, dir.path());
    // A little latency widens the window in which both replicas look at the same rows.
    sandbox.sink.set_mode("crm", SinkMode::Slow(Duration::from_millis(3)));
    let open = || async { Store::connect_postgres(&url, Duration::from_secs(5)).await.unwrap() };
    let (one, two) = (open().await, open().await);
    let dispatcher = |store: &Store, replica: &str| {
        let connectors = connectors::build(&config, &CancellationToken::new()).unwrap();
        Arc::new(
            Dispatcher::new(store.clone(), connectors, config.settings.dispatch.clone())
                .with_replica(replica.to_owned()),
        )
    };
    let (a, b) = (dispatcher(&one, "replica-a"), dispatcher(&two, "replica-b"));
    assert_eq!(a.replica(), "replica-a");

    // Phase 1: 300 rows over three locations, drained by both replicas at once.
    const ROWS: usize = 300;
    let ids: Vec<String> = (0..ROWS).map(|i| format!("c{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        put(&one, CONNECTOR, &format!("loc{}", i % 3), id, 1).await;
    }
    let drain = |dispatcher: Arc<Dispatcher>, store: Store| {
        tokio::spawn(async move {
            let mut delivered = 0;
            for _ in 0..2_000 {
                let summary = dispatcher.run_once().await;
                assert!(summary.errors.is_empty(), "{:?}", summary.errors);
                delivered += summary.total().delivered;
                if pending(&store).await == 0 {
                    return delivered;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("not drained: {} pending", pending(&store).await);
        })
    };
    let (by_a, by_b) = (drain(a.clone(), one.clone()), drain(b.clone(), two.clone()));
    let (by_a, by_b) = (by_a.await.unwrap(), by_b.await.unwrap());
    assert_eq!(by_a + by_b, ROWS as u64, "each row recorded delivered once: {by_a} + {by_b}");
    assert!(by_a > 0 && by_b > 0, "both replicas delivered: {by_a} + {by_b}");
    let attempts = sandbox.sink.deliveries(Some("crm"));
    assert_eq!(attempts.len(), ROWS, "one request per row, no row sent by both replicas");
    let keys: BTreeSet<String> = attempts.iter().map(|d| d.header("idempotency-key").unwrap().to_owned()).collect();
    let expected: BTreeSet<String> = ids.iter().map(|id| key(id, 1)).collect();
    assert_eq!(keys, expected);

    // Phase 2: both replicas run as daemons while the sync keeps changing 60 records (a change
    // folds into a row that may be claimed and in flight) and adds 60 new ones.
    let stop = CancellationToken::new();
    let runs = [a.clone(), b.clone()].map(|dispatcher| {
        let stop = stop.clone();
        tokio::spawn(async move { dispatcher.run(stop).await })
    });
    let wakers = [a.waker(), b.waker()];
    for version in 2..=5 {
        for (i, id) in ids.iter().take(60).enumerate() {
            put(if i % 2 == 0 { &one } else { &two }, CONNECTOR, &format!("loc{}", i % 3), id, version).await;
        }
        for i in 0..15 {
            put(&one, CONNECTOR, "loc0", &format!("n{version}-{i:02}"), 1).await;
        }
        wakers.iter().for_each(|waker| waker.wake());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut drained = false;
    for _ in 0..1_000 {
        if pending(&one).await == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "not drained: {} pending", pending(&one).await);
    stop.cancel();
    for run in runs {
        run.await.unwrap();
    }

    let attempts = sandbox.sink.deliveries(Some("crm"));
    assert!(attempts.iter().all(|d| d.accepted()));
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for delivery in &attempts {
        *seen.entry(delivery.header("idempotency-key").unwrap().to_owned()).or_default() += 1;
        let body = delivery.json().unwrap();
        let id = body["entity_id"].as_str().unwrap().to_owned();
        versions.entry(id).or_default().push(body["data"]["version"].as_i64().unwrap());
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "keys delivered twice: {twice:?}");
    for id in ids.iter().take(60) {
        let delivered = &versions[id];
        assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{id}: versions out of order: {delivered:?}");
        assert_eq!(delivered.last(), Some(&5), "{id}: the newest version went out last: {delivered:?}");
        assert!(seen.contains_key(&key(id, 5)));
    }
    for version in 2..=5 {
        for i in 0..15 {
            assert_eq!(versions[&format!("n{version}-{i:02}")], [1]);
        }
    }
    // A clean stop leaves no claim behind.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let claimed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE claimed_by IS NOT NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(claimed, 0);
    pool.close().await;
    one.close().await;
    two.close().await;
    sandbox.stop().await;
}

/// A connector that calls GHL and records the locations it was handed.
struct WriteBack {
    seen: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Connector for WriteBack {
    fn id(&self) -> &str {
        "writeback"
    }

    fn interested(&self, _: &str, _: &str) -> bool {
        true
    }

    fn calls_ghl(&self) -> bool {
        true
    }

    async fn check(&self) -> Result<connectors::CheckReport, connectors::ConnectorError> {
        Ok(connectors::CheckReport { detail: "ok".into() })
    }

    fn preview(&self, _: &connectors::Delivery) -> Result<Value, connectors::ConnectorError> {
        Ok(Value::Null)
    }

    async fn deliver(&self, batch: &[connectors::Delivery]) -> Vec<connectors::Outcome> {
        self.seen.lock().unwrap().extend(batch.iter().map(|d| d.location_id.clone()));
        vec![connectors::Outcome::Done; batch.len()]
    }
}

#[tokio::test]
async fn connectors_that_call_ghl_take_only_rows_of_the_locations_the_replica_leases() {
    let sandbox = Sandbox::start(SandboxOptions::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    let config = config(&sandbox, dir.path());
    for location in ["loc1", "loc2", "loc3"] {
        for i in 0..3 {
            put(&store, "writeback", location, &format!("{location}-c{i}"), 1).await;
            put(&store, CONNECTOR, location, &format!("{location}-c{i}"), 1).await;
        }
    }
    let leased = Arc::new(Mutex::new(vec!["loc1".to_owned()]));
    let writeback = Arc::new(WriteBack { seen: Mutex::new(Vec::new()) });
    let mut connectors = connectors::build(&config, &CancellationToken::new()).unwrap();
    connectors.push(writeback.clone());
    let filter = {
        let leased = leased.clone();
        Arc::new(move || Some(leased.lock().unwrap().clone()))
    };
    let dispatcher = Dispatcher::new(store.clone(), connectors, config.settings.dispatch.clone())
        .with_replica("replica-a".to_owned())
        .with_location_filter(filter);

    let summary = dispatcher.run_once().await;
    assert_eq!(summary.connectors["writeback"].delivered, 3, "loc1's rows only");
    assert_eq!(summary.connectors[CONNECTOR].delivered, 9, "a webhook is not limited");
    assert_eq!(*writeback.seen.lock().unwrap(), ["loc1"; 3]);

    // `sync --once` asks for loc2 and loc3; the replica now leases loc2 as well.
    leased.lock().unwrap().push("loc2".to_owned());
    let asked = ["loc2".to_owned(), "loc3".to_owned()];
    assert_eq!(dispatcher.run_once_for(Some(&asked)).await.connectors["writeback"].delivered, 3, "loc2 only");
    // Another replica took loc3 over: its rows were waiting for it.
    leased.lock().unwrap().push("loc3".to_owned());
    assert_eq!(dispatcher.run_once().await.connectors["writeback"].delivered, 3);
    let seen = writeback.seen.lock().unwrap().clone();
    assert_eq!(seen, ["loc1", "loc1", "loc1", "loc2", "loc2", "loc2", "loc3", "loc3", "loc3"]);
    assert_eq!(pending(&store).await, 0);
    sandbox.stop().await;
}

#[tokio::test]
async fn claims_are_renewed_while_a_slow_delivery_runs_past_the_claim_ttl() {
    let sandbox = Sandbox::start(SandboxOptions::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    let config = config(&sandbox, dir.path());
    for i in 0..2 {
        put(&store, CONNECTOR, "loc1", &format!("c{i}"), 1).await;
    }
    // Each request takes 500 ms; a claim lasts 120 ms unless renewed (every 40 ms).
    sandbox.sink.set_mode("crm", SinkMode::Slow(Duration::from_millis(500)));
    let connectors = connectors::build(&config, &CancellationToken::new()).unwrap();
    let dispatcher = Dispatcher::new(store.clone(), connectors, config.settings.dispatch.clone())
        .with_replica("replica-a".to_owned())
        .with_claim_ttl(Duration::from_millis(120));
    let other = async {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let claim = outbox::Claim { claimer: "replica-b", now: now_ms(), for_ms: 1_000 };
        outbox::claim(&store, CONNECTOR, i64::MAX, 10, None, claim).await.unwrap()
    };
    let (summary, taken) = tokio::join!(dispatcher.run_once(), other);
    assert!(taken.is_empty(), "another replica took rows in flight: {taken:?}");
    assert_eq!(summary.total().delivered, 2);
    assert_eq!(sandbox.sink.deliveries(Some("crm")).len(), 2, "each row sent once");
    sandbox.stop().await;
}
