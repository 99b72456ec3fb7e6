//! Delivery end to end: hand-written outbox rows (as the sync engine writes them, per the
//! outbox contract) → dispatcher → webhook connector → the sandbox's webhook sink.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ghl_sync::cli::dlq as dcli;
use ghl_sync::cli::replay::{self as rcli, ReplayFilter};
use ghl_sync::config::{Config, ConfigSource, load_from_str};
use ghl_sync::connectors::{self, Connector};
use ghl_sync::dispatch::Dispatcher;
use ghl_sync::domain::{EntityKind, Operation, idempotency_key};
use ghl_sync::store::dead_letters::{self, Retried};
use ghl_sync::store::outbox::{self, EnqueuePolicy, NewChange};
use ghl_sync::store::{Store, codec, now_ms};
use ghl_sync_sandbox::sink::{Delivery as SinkDelivery, SinkMode};
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "s3cret";

struct Env {
    sandbox: Sandbox,
    store: Store,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let sandbox = Sandbox::start(SandboxOptions::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    Env { sandbox, store, dir }
}

impl Env {
    /// A config with fast retries and the given connector tables (`{sink:NAME}` → the sink URL).
    fn config(&self, connectors: &str) -> Config {
        let mut text = format!(
            "[store]\n{}[dispatch]\nbackoff_base = \"10ms\"\nbackoff_max = \"40ms\"\n\
             breaker_threshold = 3\nbreaker_cooldown = \"30ms\"\n{connectors}",
            crate::helpers::store_keys(&self.dir.path().join("ghl-sync.db"))
        );
        for name in ["crm", "ops", "bad"] {
            text = text.replace(&format!("{{sink:{name}}}"), self.sandbox.sink_url(name).as_str());
        }
        load_from_str(&text, ConfigSource::InCode, HashMap::new()).unwrap()
    }

    fn dispatcher(&self, config: &Config) -> (Dispatcher, Vec<Arc<dyn Connector>>) {
        let connectors = connectors::build(config, &CancellationToken::new()).unwrap();
        (Dispatcher::new(self.store.clone(), connectors.clone(), config.settings.dispatch.clone()), connectors)
    }

    async fn pending(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
            .fetch_one(&crate::helpers::db(&self.store).await)
            .await
            .unwrap()
    }

    async fn dead(&self) -> Vec<(String, String, String)> {
        sqlx::query_as("SELECT connector, entity_id, reason FROM dead_letters ORDER BY id")
            .fetch_all(&crate::helpers::db(&self.store).await)
            .await
            .unwrap()
    }

    /// Runs passes until nothing is pending (bounded).
    async fn drain(&self, dispatcher: &Dispatcher) {
        for _ in 0..400 {
            dispatcher.run_once().await;
            if self.pending().await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("outbox not drained: {} pending", self.pending().await);
    }
}

fn hash(record: &Value) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(record).unwrap()).into()
}

/// The record version a test record stands for: its `version` field (1 without one).
fn revision(record: &Value) -> i64 {
    record["version"].as_i64().unwrap_or(1)
}

/// The key the outbox gives a test record's version for `connector`.
fn key_of(connector: &str, entity: &str, id: &str, record: &Value) -> String {
    idempotency_key(connector, EntityKind::parse(entity).unwrap(), id, revision(record), &hash(record), "")
}

/// The idempotency key each entity id was delivered under (the last one when several).
fn keys_by_entity(deliveries: &[SinkDelivery]) -> BTreeMap<String, String> {
    deliveries
        .iter()
        .map(|d| {
            let entity_id = d.json().unwrap()["entity_id"].as_str().unwrap().to_owned();
            (entity_id, d.header("idempotency-key").unwrap().to_owned())
        })
        .collect()
}

/// Writes a change the way the sync engine does (`store::outbox::enqueue`, `Fold`): one pending
/// row per record; a newer change folds into the pending row (created + updated stays created).
async fn put(store: &Store, connector: &str, entity: &str, id: &str, contact: &str, operation: &str, record: &Value) {
    let packed = codec::pack(record);
    let content_hash = hash(record);
    let change = NewChange {
        connector,
        location_id: "loc1",
        entity: EntityKind::parse(entity).unwrap(),
        entity_id: id,
        contact_id: Some(contact),
        operation: Operation::parse(operation).unwrap(),
        record: &packed,
        content_hash: &content_hash,
        revision: revision(record),
        changed_at: now_ms(),
    };
    outbox::enqueue_all(store, "test", &[(change, None)], EnqueuePolicy::Fold).await.unwrap();
}

/// The sync engine's snapshot of a contact (its revision: the record's `version`).
async fn snapshot(store: &Store, id: &str, record: &Value) {
    let now = now_ms();
    let mut conn = crate::helpers::raw(store).await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(
        "INSERT INTO contacts (location_id, contact_id, hash, record, date_updated_ms, first_seen_at, \
         revision, updated_at) VALUES ('loc1', $1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (location_id, contact_id) DO UPDATE SET hash = excluded.hash, record = excluded.record, \
         date_updated_ms = excluded.date_updated_ms, revision = excluded.revision, updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(&hash(record)[..])
    .bind(codec::pack(record))
    .bind(now)
    .bind(now)
    .bind(revision(record))
    .bind(now)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Idempotency keys of the deliveries `name` received (all attempts), in arrival order.
fn received_keys(env: &Env, name: &str, accepted_only: bool) -> Vec<String> {
    let deliveries =
        if accepted_only { env.sandbox.sink.accepted(Some(name)) } else { env.sandbox.sink.deliveries(Some(name)) };
    deliveries.iter().map(|d| d.header("idempotency-key").unwrap().to_owned()).collect()
}

fn contact(id: &str, version: u32) -> Value {
    json!({"id": id, "firstName": "Ada", "lastName": format!("L{id}"), "email": format!("{id}@example.test"),
           "tags": ["vip"], "version": version})
}

fn verify_signature(delivery: &SinkDelivery) {
    let timestamp = delivery.header("x-ghl-sync-timestamp").expect("timestamp header");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", delivery.body).as_bytes());
    let expected = format!("sha256={}", ghl_sync::connectors::webhook::client::hex(&mac.finalize().into_bytes()));
    assert_eq!(delivery.header("x-ghl-sync-signature"), Some(expected.as_str()));
}

const CRM: &str = "[connectors.webhook.crm]\nurl = \"{sink:crm}\"\nsecret = \"s3cret\"\nbatch_size = 4\nconcurrency = 3\nmax_attempts = 100\ntimeout = \"2s\"\n";

#[tokio::test]
async fn every_outbox_row_becomes_exactly_one_accepted_delivery_per_connector() {
    let env = env().await;
    let ops = "[connectors.webhook.ops]\nurl = \"{sink:ops}\"\ntemplate = \"slack\"\nevents = [\"task.completed\"]\n";
    let config = env.config(&format!("{CRM}{ops}"));
    let (dispatcher, connectors) = env.dispatcher(&config);
    env.sandbox.sink.set_mode("crm", SinkMode::FailRate(0.3));

    let mut expected_keys = BTreeSet::new();
    for i in 0..30 {
        let id = format!("c{i:02}");
        let record = contact(&id, 1);
        snapshot(&env.store, &id, &record).await;
        put(&env.store, "webhook.crm", "contact", &id, &id, "created", &record).await;
        expected_keys.insert(key_of("webhook.crm", "contact", &id, &record));
    }
    for i in 0..5 {
        let task =
            json!({"id": format!("t{i}"), "title": format!("Call back {i}"), "completed": true, "contactId": "c01"});
        for connector in &connectors {
            if connector.interested("task.completed", "loc1") {
                put(&env.store, connector.id(), "task", &format!("t{i}"), "c01", "completed", &task).await;
            }
        }
        expected_keys.insert(key_of("webhook.crm", "task", &format!("t{i}"), &task));
    }
    assert!(!connectors[1].interested("contact.created", "loc1"));

    env.drain(&dispatcher).await;

    let accepted = env.sandbox.sink.accepted(Some("crm"));
    let keys: Vec<String> = accepted.iter().map(|d| d.header("idempotency-key").unwrap().to_owned()).collect();
    assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), expected_keys);
    assert_eq!(accepted.len(), expected_keys.len(), "one accepted delivery per row");
    let attempts = env.sandbox.sink.deliveries(Some("crm"));
    // Redeliveries only after failures, always with the same key; bounded.
    assert!(attempts.len() < expected_keys.len() * 4, "{} attempts", attempts.len());
    let failed_keys: BTreeSet<&str> =
        attempts.iter().filter(|d| !d.accepted()).map(|d| d.header("idempotency-key").unwrap()).collect();
    assert!(failed_keys.iter().all(|k| expected_keys.contains(*k)));
    for delivery in &accepted {
        verify_signature(delivery);
        let body = delivery.json().unwrap();
        assert_eq!(body["id"].as_str(), delivery.header("idempotency-key"));
        assert_eq!(body["location_id"], "loc1");
        assert!(body["changed_at"].as_str().unwrap().ends_with('Z'));
        match body["entity"].as_str().unwrap() {
            "contact" => {
                assert_eq!(body["type"], "contact.created");
                assert_eq!(body["data"]["id"], body["entity_id"]);
            }
            "task" => {
                assert_eq!(body["type"], "task.completed");
                assert_eq!(body["contact_id"], "c01");
            }
            other => panic!("unexpected entity {other}"),
        }
    }

    let slack = env.sandbox.sink.accepted(Some("ops"));
    assert_eq!(slack.len(), 5);
    let texts: BTreeSet<String> =
        slack.iter().map(|d| d.json().unwrap()["text"].as_str().unwrap().to_owned()).collect();
    assert!(texts.contains("Task completed: Call back 0 (contact Ada Lc01)"), "{texts:?}");
    assert!(slack[0].header("x-ghl-sync-signature").is_none(), "no secret, no signature");

    // A second pass sends nothing.
    let before = env.sandbox.sink.deliveries(None).len();
    let summary = dispatcher.run_once().await;
    assert_eq!(summary.total().delivered, 0);
    assert_eq!(env.sandbox.sink.deliveries(None).len(), before);
    assert!(env.dead().await.is_empty());
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_sink_down_for_a_while_then_back_gets_everything_in_order_per_record_and_nothing_dead() {
    let env = env().await;
    let config = env.config(CRM);
    let (dispatcher, _) = env.dispatcher(&config);
    let dispatcher = Arc::new(dispatcher);
    env.sandbox.sink.set_mode("crm", SinkMode::Down);
    for i in 0..10 {
        let id = format!("c{i}");
        put(&env.store, "webhook.crm", "contact", &id, &id, "created", &contact(&id, 1)).await;
    }
    let stop = CancellationToken::new();
    let runner = tokio::spawn({
        let dispatcher = dispatcher.clone();
        let stop = stop.clone();
        async move { dispatcher.run(stop).await }
    });
    let waker = dispatcher.waker();
    // Failing for a while; newer changes replace pending ones meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let id = format!("c{i}");
        put(&env.store, "webhook.crm", "contact", &id, &id, "updated", &contact(&id, 2)).await;
    }
    waker.wake();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(env.sandbox.sink.accepted(Some("crm")).is_empty());
    assert!(env.sandbox.sink.deliveries(Some("crm")).len() >= 10, "it kept trying");
    env.sandbox.sink.set_mode("crm", SinkMode::Ok);
    waker.wake();
    for _ in 0..300 {
        if env.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.pending().await, 0);
    // One more change per record after recovery, delivered in order.
    for i in 0..10 {
        let id = format!("c{i}");
        put(&env.store, "webhook.crm", "contact", &id, &id, "updated", &contact(&id, 3)).await;
    }
    waker.wake();
    for _ in 0..300 {
        if env.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    runner.await.unwrap();

    assert!(env.dead().await.is_empty());
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for delivery in env.sandbox.sink.accepted(Some("crm")) {
        let body = delivery.json().unwrap();
        versions
            .entry(body["entity_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["data"]["version"].as_u64().unwrap());
    }
    assert_eq!(versions.len(), 10);
    for (id, seen) in &versions {
        let latest_before = if id.as_str() < "c5" { 2 } else { 1 };
        assert_eq!(seen, &vec![latest_before, 3], "{id}: latest state once, then the newer change");
    }
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_change_that_replaces_a_row_in_flight_is_delivered_after_it_not_lost() {
    let env = env().await;
    let config = env.config(CRM);
    let (dispatcher, _) = env.dispatcher(&config);
    let dispatcher = Arc::new(dispatcher);
    env.sandbox.sink.set_mode("crm", SinkMode::Slow(Duration::from_millis(300)));
    put(&env.store, "webhook.crm", "contact", "c1", "c1", "created", &contact("c1", 1)).await;
    let pass = tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move { dispatcher.run_once().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    put(&env.store, "webhook.crm", "contact", "c1", "c1", "updated", &contact("c1", 2)).await;
    let summary = pass.await.unwrap();
    // The first outcome did not touch the replaced row: it stayed pending and (being due)
    // went out after the first delivery.
    assert_eq!(summary.total().superseded, 1);
    env.sandbox.sink.set_mode("crm", SinkMode::Ok);
    env.drain(&dispatcher).await;
    let versions: Vec<u64> = env
        .sandbox
        .sink
        .accepted(Some("crm"))
        .iter()
        .map(|d| d.json().unwrap()["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);
    let ops: Vec<String> = env
        .sandbox
        .sink
        .accepted(Some("crm"))
        .iter()
        .map(|d| d.json().unwrap()["type"].as_str().unwrap().into())
        .collect();
    assert_eq!(ops, vec!["contact.created", "contact.created"], "created + updated stays created");
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_rejecting_sink_fills_dead_letters_and_dlq_retry_delivers_them_after_the_fix() {
    let env = env().await;
    let config = env.config(CRM);
    let (dispatcher, _) = env.dispatcher(&config);
    env.sandbox.sink.set_mode("crm", SinkMode::Reject(400));
    for i in 0..4 {
        let id = format!("c{i}");
        snapshot(&env.store, &id, &contact(&id, 1)).await;
        put(&env.store, "webhook.crm", "contact", &id, &id, "created", &contact(&id, 1)).await;
    }
    let summary = dispatcher.run_once().await;
    assert_eq!(summary.total().dead, 4);
    let dead = env.dead().await;
    assert_eq!(dead.len(), 4);
    assert!(dead.iter().all(|(c, _, reason)| c == "webhook.crm"
        && reason == r#"the webhook answered 400 Bad Request: {"error":"Bad Request","ok":false,"status":400}"#));
    assert_eq!(env.sandbox.sink.deliveries(Some("crm")).len(), 4, "a permanent refusal is not retried");
    let listed = dead_letters::list(&env.store, Some("webhook.crm"), 100).await.unwrap();
    assert_eq!(listed.len(), 4);

    // c0 changes and is delivered while its old version sits in dead letters.
    env.sandbox.sink.set_mode("crm", SinkMode::Ok);
    snapshot(&env.store, "c0", &contact("c0", 2)).await;
    put(&env.store, "webhook.crm", "contact", "c0", "c0", "updated", &contact("c0", 2)).await;
    env.drain(&dispatcher).await;
    env.sandbox.sink.clear();

    let retried = dcli::retry_dead_letters(&env.store, None, Some("webhook.crm")).await.unwrap();
    let outcomes: Vec<Retried> = retried.iter().map(|(_, r)| *r).collect();
    assert_eq!(outcomes, vec![Retried::RequeuedCurrent, Retried::Requeued, Retried::Requeued, Retried::Requeued]);
    assert!(env.dead().await.is_empty());
    env.drain(&dispatcher).await;
    let mut got: Vec<(String, u64)> = env
        .sandbox
        .sink
        .accepted(Some("crm"))
        .iter()
        .map(|d| {
            let body = d.json().unwrap();
            (body["entity_id"].as_str().unwrap().to_owned(), body["data"]["version"].as_u64().unwrap())
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![("c0".into(), 2), ("c1".into(), 1), ("c2".into(), 1), ("c3".into(), 1)], "c0 never regresses");

    // drop
    env.sandbox.sink.set_mode("crm", SinkMode::Reject(410));
    put(&env.store, "webhook.crm", "contact", "c9", "c9", "created", &contact("c9", 1)).await;
    dispatcher.run_once().await;
    let letter = dead_letters::list(&env.store, None, 10).await.unwrap();
    assert_eq!(letter.len(), 1);
    assert!(dead_letters::remove(&env.store, letter[0].id).await.unwrap());
    assert!(env.dead().await.is_empty());
    env.sandbox.stop().await;
}

#[tokio::test]
async fn retries_are_exhausted_into_dead_letters_after_max_attempts() {
    let env = env().await;
    let config = env.config(&CRM.replace("max_attempts = 100", "max_attempts = 3"));
    let (dispatcher, _) = env.dispatcher(&config);
    env.sandbox.sink.set_mode("crm", SinkMode::Down);
    put(&env.store, "webhook.crm", "contact", "c1", "c1", "created", &contact("c1", 1)).await;
    env.drain(&dispatcher).await;
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1);
    // The dead letter says why the last attempt failed (the sink's answer, scrubbed and cut).
    assert_eq!(
        dead[0].2,
        r#"gave up after 3 attempts; last: the webhook answered 503 Service Unavailable: {"error":"Service Unavailable","ok":false,"status":503}"#
    );
    assert_eq!(env.sandbox.sink.deliveries(Some("crm")).len(), 3);
    env.sandbox.stop().await;
}

#[tokio::test]
async fn an_unmappable_record_goes_to_dead_letters_with_the_reason_while_the_rest_flow() {
    let env = env().await;
    let fields = "fields = [{ from = \"email\", to = \"email\", transform = \"lowercase\", required = true }, \
                  { to = \"name\", template = \"{firstName} {lastName}\" }, { from = \"tags\", to = \"tags\", transform = \"join\" }]\n";
    let config = env.config(&format!("{CRM}{fields}"));
    let (dispatcher, _) = env.dispatcher(&config);
    put(
        &env.store,
        "webhook.crm",
        "contact",
        "c1",
        "c1",
        "created",
        &json!({"id": "c1", "email": "A@X.TEST", "firstName": "Ada", "tags": ["a", "b"]}),
    )
    .await;
    put(
        &env.store,
        "webhook.crm",
        "contact",
        "c2",
        "c2",
        "created",
        &json!({"id": "c2", "firstName": "No", "lastName": "Email"}),
    )
    .await;
    put(&env.store, "webhook.crm", "contact", "c3", "c3", "created", &json!({"id": "c3", "email": "c@x.test"})).await;
    env.drain(&dispatcher).await;
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, "c2");
    assert_eq!(dead[0].2, "cannot map the record: required field `email` has no value (source `email`)");
    let data: Vec<Value> =
        env.sandbox.sink.accepted(Some("crm")).iter().map(|d| d.json().unwrap()["data"].clone()).collect();
    assert_eq!(data, vec![json!({"email": "a@x.test", "name": "Ada", "tags": "a, b"}), json!({"email": "c@x.test"})]);
    env.sandbox.stop().await;
}

#[tokio::test]
async fn mapping_mistakes_in_config_are_caught_by_validate_with_key_paths() {
    let text = "[connectors.webhook.crm]\nurl = \"https://hooks.example.test/x\"\n\
                fields = [{ from = \"email\", to = \"email\" }, { from = \"emial\", to = \"e\" }, \
                { to = \"n\", template = \"{firstName} {surname}\" }]\nmessage = \"{nope}\"\n";
    let error = load_from_str(text, ConfigSource::InCode, HashMap::new()).unwrap_err();
    let problems = error.problems();
    assert!(
        problems.iter().any(|p| p.starts_with("connectors.webhook.crm.fields[1].from: unknown source field \"emial\"")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("connectors.webhook.crm.fields[2].template: unknown source field \"surname\"")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("connectors.webhook.crm.message: unknown source field \"nope\"")),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[tokio::test]
async fn replay_resends_the_snapshot_in_the_new_shape_and_check_probes_each_connector() {
    let env = env().await;
    for i in 0..3 {
        let id = format!("c{i}");
        snapshot(&env.store, &id, &contact(&id, 7)).await;
    }
    let fields = "fields = [{ from = \"email\", to = \"mail\" }, { from = \"@event\", to = \"event\" }]\n";
    let config = env.config(&format!("{CRM}{fields}"));
    let (dispatcher, connectors) = env.dispatcher(&config);
    let summary = rcli::replay(&env.store, connectors[0].as_ref(), &ReplayFilter::default()).await.unwrap();
    assert_eq!(summary.enqueued, 3);
    let one = ReplayFilter { contact: Some("c1".into()), ..ReplayFilter::default() };
    assert_eq!(rcli::replay(&env.store, connectors[0].as_ref(), &one).await.unwrap().already_pending, 1);
    env.drain(&dispatcher).await;
    let data: Vec<Value> =
        env.sandbox.sink.accepted(Some("crm")).iter().map(|d| d.json().unwrap()["data"].clone()).collect();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0], json!({"mail": "c0@example.test", "event": "contact.updated"}));

    // check: a signed probe, and a sample of a real contact mapped for the connector.
    env.sandbox.sink.clear();
    let lines = ghl_sync::cli::check::check_connectors(&connectors).await;
    assert!(lines[0].ok, "{lines:?}");
    let probe = &env.sandbox.sink.deliveries(Some("crm"))[0];
    assert_eq!(probe.json().unwrap()["type"], "ghl_sync.check");
    verify_signature(probe);
    let sample = ghl_sync::cli::check::sample(&env.store, connectors[0].as_ref()).await.unwrap().unwrap();
    assert_eq!(sample["type"], "contact.updated");
    assert!(sample["data"]["mail"].as_str().unwrap().ends_with("@example.test"));
    env.sandbox.sink.set_mode("crm", SinkMode::Reject(404));
    let lines = ghl_sync::cli::check::check_connectors(&connectors).await;
    assert!(!lines[0].ok);
    assert_eq!(lines[0].name, "webhook.crm");
    env.sandbox.stop().await;
}

/// A connector that holds everything back (`Park`) for its first calls, then delivers.
struct Parking {
    calls: std::sync::atomic::AtomicUsize,
    park_first: usize,
}

#[async_trait::async_trait]
impl Connector for Parking {
    fn id(&self) -> &str {
        "parking"
    }

    fn interested(&self, _: &str, _: &str) -> bool {
        true
    }

    fn settings(&self) -> connectors::DeliverySettings {
        connectors::DeliverySettings { batch_size: 10, concurrency: 1, max_attempts: 2 }
    }

    async fn check(&self) -> Result<connectors::CheckReport, connectors::ConnectorError> {
        Ok(connectors::CheckReport { detail: "ok".into() })
    }

    fn preview(&self, _: &connectors::Delivery) -> Result<Value, connectors::ConnectorError> {
        Ok(Value::Null)
    }

    async fn deliver(&self, batch: &[connectors::Delivery]) -> Vec<connectors::Outcome> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let outcome = if call < self.park_first {
            connectors::Outcome::Park(Duration::from_millis(5))
        } else {
            connectors::Outcome::Done
        };
        vec![outcome; batch.len()]
    }
}

#[tokio::test]
async fn parking_is_not_an_attempt_and_never_ends_in_dead_letters() {
    let env = env().await;
    let config = env.config("");
    let parking = Arc::new(Parking { calls: Default::default(), park_first: 5 });
    let dispatcher = Dispatcher::new(env.store.clone(), vec![parking.clone()], config.settings.dispatch.clone());
    put(&env.store, "parking", "contact", "c1", "c1", "created", &contact("c1", 1)).await;
    env.drain(&dispatcher).await;
    // Parked five times with max_attempts = 2, then delivered: only the delivery counted.
    assert_eq!(parking.calls.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert!(env.dead().await.is_empty());
    let attempts: i64 = sqlx::query_scalar("SELECT attempts FROM outbox WHERE connector = 'parking'")
        .fetch_one(&crate::helpers::db(&env.store).await)
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_dead_letter_retry_carries_the_key_of_the_first_delivery() {
    let env = env().await;
    let config = env.config(CRM);
    let (dispatcher, connectors) = env.dispatcher(&config);
    env.sandbox.sink.set_mode("crm", SinkMode::Reject(400));
    for i in 0..5 {
        let id = format!("c{i}");
        snapshot(&env.store, &id, &contact(&id, 1)).await;
        if i < 4 {
            put(&env.store, "webhook.crm", "contact", &id, &id, "created", &contact(&id, 1)).await;
        }
    }
    // c4 first went out in a `replay --new-keys`: its first key is a salted one.
    let salted =
        ReplayFilter { contact: Some("c4".into()), new_keys: Some("replay-x".into()), ..ReplayFilter::default() };
    assert_eq!(rcli::replay(&env.store, connectors[0].as_ref(), &salted).await.unwrap().enqueued, 1);
    env.drain(&dispatcher).await;
    let first = keys_by_entity(&env.sandbox.sink.deliveries(Some("crm")));
    assert_eq!(first.len(), 5);
    let letters = dead_letters::list(&env.store, Some("webhook.crm"), 10).await.unwrap();
    assert_eq!(letters.len(), 5);
    assert!(letters.iter().all(|l| l.revision == Some(1)), "dead letters keep the record version: {letters:?}");
    let entity_of: BTreeMap<i64, String> = letters.iter().map(|l| (l.id, l.entity_id.clone().unwrap())).collect();

    // c3 changes meanwhile; its newer change is pending (not delivered) when the retry runs.
    put(&env.store, "webhook.crm", "contact", "c3", "c3", "updated", &contact("c3", 2)).await;
    env.sandbox.sink.set_mode("crm", SinkMode::Ok);
    env.sandbox.sink.clear();
    let retried = dcli::retry_dead_letters(&env.store, None, Some("webhook.crm")).await.unwrap();
    let outcomes: BTreeMap<&str, Retried> = retried.iter().map(|(id, r)| (entity_of[id].as_str(), *r)).collect();
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("c0", Retried::Requeued),
            ("c1", Retried::Requeued),
            ("c2", Retried::Requeued),
            ("c3", Retried::NewerPending),
            ("c4", Retried::Requeued),
        ])
    );
    assert!(dcli::retried_text(Retried::NewerPending).contains("newer change for the same record is pending"));
    assert!(env.dead().await.is_empty());
    env.drain(&dispatcher).await;

    let again = keys_by_entity(&env.sandbox.sink.accepted(Some("crm")));
    let mut expected = first.clone();
    expected.insert("c3".into(), key_of("webhook.crm", "contact", "c3", &contact("c3", 2)));
    assert_eq!(again, expected, "retried versions carry the keys of their first delivery; c3's newer change its own");
    assert_eq!(env.sandbox.sink.accepted(Some("crm")).len(), 5, "each once");
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_replay_of_a_delivered_version_carries_its_first_key_and_new_keys_asks_for_new_ones() {
    let env = env().await;
    let config = env.config(CRM);
    let (dispatcher, connectors) = env.dispatcher(&config);
    for i in 0..3 {
        let id = format!("c{i}");
        snapshot(&env.store, &id, &contact(&id, 3)).await;
        put(&env.store, "webhook.crm", "contact", &id, &id, "created", &contact(&id, 3)).await;
    }
    env.drain(&dispatcher).await;
    let mut first = received_keys(&env, "crm", true);
    first.sort();
    assert_eq!(first.len(), 3);

    env.sandbox.sink.clear();
    let summary = rcli::replay(&env.store, connectors[0].as_ref(), &ReplayFilter::default()).await.unwrap();
    assert_eq!(summary.enqueued, 3);
    env.drain(&dispatcher).await;
    let mut replayed = received_keys(&env, "crm", true);
    replayed.sort();
    assert_eq!(replayed, first, "a replayed version carries the key of its first delivery");

    let mut seen: BTreeSet<String> = first.iter().cloned().collect();
    for salt in ["replay-1", "replay-2"] {
        env.sandbox.sink.clear();
        let fresh = ReplayFilter { new_keys: Some(salt.into()), ..ReplayFilter::default() };
        assert_eq!(rcli::replay(&env.store, connectors[0].as_ref(), &fresh).await.unwrap().enqueued, 3);
        env.drain(&dispatcher).await;
        let keys = received_keys(&env, "crm", true);
        assert_eq!(keys.len(), 3);
        for key in keys {
            assert!(seen.insert(key), "--new-keys sends every version under a key never used before");
        }
    }
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_worker_that_cannot_record_outcomes_backs_off_and_never_resends_the_delivered_batch() {
    use sqlx::Connection as _;

    let env = env().await;
    let path = env.dir.path().join("ghl-sync.db");
    let config = env.config(CRM);
    for i in 0..6 {
        let id = format!("c{i}");
        put(&env.store, "webhook.crm", "contact", &id, &id, "created", &contact(&id, 1)).await;
    }
    // The dispatcher's store gives up on a busy writer after 20 ms; once the rows are claimed
    // and in flight (a slow sink), another connection takes the write lock, so every attempt
    // to record outcomes fails ("database is locked").
    let store = crate::helpers::open_store_waiting(&path, Duration::from_millis(20)).await;
    let mut settings = config.settings.dispatch.clone();
    settings.poll_interval = ghl_sync::config::Dur::millis(5);
    let connectors = connectors::build(&config, &CancellationToken::new()).unwrap();
    let dispatcher = Arc::new(Dispatcher::new(store.clone(), connectors, settings));
    env.sandbox.sink.set_mode("crm", SinkMode::Slow(Duration::from_millis(300)));

    let stop = CancellationToken::new();
    let runner = tokio::spawn({
        let dispatcher = dispatcher.clone();
        let stop = stop.clone();
        async move { dispatcher.run(stop).await }
    });
    let claimed = || async {
        let claimed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE claimed_by IS NOT NULL")
            .fetch_one(&crate::helpers::db(&env.store).await)
            .await
            .unwrap();
        claimed
    };
    for _ in 0..500 {
        if claimed().await == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(claimed().await, 6, "the rows were claimed");
    let mut holder = crate::helpers::raw(&env.store).await;
    crate::helpers::hold_write_lock(&mut holder, "outbox").await;
    env.sandbox.sink.wait_for(Some("crm"), 6, Duration::from_secs(10)).await;
    for _ in 0..500 {
        if store.write_health().failing.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.write_health().failing.is_some(), "recording the outcomes failed");
    // The fault lasts a while: a worker that re-sent on every failed write would send the
    // batch dozens of times by now (5 ms poll, 20 ms busy wait).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        env.sandbox.sink.deliveries(Some("crm")).len(),
        6,
        "the batch was sent once while the store could not write"
    );
    assert_eq!(env.pending().await, 6, "nothing was recorded");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    for _ in 0..500 {
        if env.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    runner.await.unwrap();
    assert_eq!(env.pending().await, 0, "the held outcomes were recorded once the store could write");
    let done: Vec<(String, i64)> = sqlx::query_as("SELECT status, attempts FROM outbox ORDER BY id")
        .fetch_all(&crate::helpers::db(&env.store).await)
        .await
        .unwrap();
    assert_eq!(done, vec![("done".to_owned(), 1); 6]);
    let keys = received_keys(&env, "crm", false);
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 6);
    assert_eq!(keys.len(), 6, "each row was delivered exactly once");
    env.sandbox.stop().await;
}
