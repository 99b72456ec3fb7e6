//! `replicas` and `location_leases`: which daemon polls which location when several daemons
//! (replicas) share one PostgreSQL store (issue 21). All of their SQL lives here; the lease
//! keeper (`crate::sync::leases`) calls [`tick`] every third of the lease TTL and
//! [`release_all`] at a clean stop.
//!
//! Contract:
//! - **One holder per location.** A lease row names its holder and when it expires. A replica
//!   claims only rows that are free or expired, locked with `FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL (SQLite has one writer: its write transaction is exclusive), and renews only
//!   rows it still holds (`WHERE holder = me`): a renewal that lost the race to a claim of the
//!   same expired row renews nothing.
//! - **Even spread.** Each tick a replica holds at most `ceil(locations / live replicas)`
//!   (a replica is live while its heartbeat is younger than the TTL and it has not stopped):
//!   above that it hands the excess back, below it claims free or expired leases. Leases move
//!   when replicas join, leave or die, within the TTL plus one tick.
//! - **Handing back is graceful.** A lease handed back keeps its holder until `now + drain`,
//!   so the old holder's run in flight ends before another replica may claim it; a clean stop
//!   releases every lease at once (expiry = the stop).
//! - Times are the callers' epoch ms ([`super::now_ms`]): replicas' clocks must agree to well
//!   within the drain (NTP does; docs/scaling.md says so).

use super::db::{Conn, for_backend, json_list, json_values, on_db, rows};
use super::{Store, StoreError};

/// The replica calling [`tick`]: its row in `replicas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
}

impl Replica {
    /// This process ([`super::replica_id`]).
    pub fn this_process(started_at: i64) -> Self {
        Self {
            id: super::replica_id().to_owned(),
            host: super::host_name(),
            pid: i64::from(std::process::id()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
        }
    }
}

/// How long leases live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// A lease not renewed within this expires (and a replica without a heartbeat within it
    /// is gone).
    pub ttl_ms: i64,
    /// A lease handed back to even the spread stays with its holder this long, so the run in
    /// flight ends before another replica claims it.
    pub drain_ms: i64,
}

/// A lease this replica claimed in a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub location: String,
    /// The replica that held it before (`None`: never held).
    pub previous_holder: Option<String>,
    /// When the previous lease ended (epoch ms; 0 when never held): the previous holder sent
    /// its last requests before this.
    pub previous_expiry: i64,
}

/// What a [`tick`] left this replica with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Every lease this replica holds after the tick, renewed or new, sorted.
    pub held: Vec<String>,
    /// Of `held`, the ones claimed in this tick.
    pub acquired: Vec<Acquired>,
    /// Leases handed back to even the spread (held until `now + drain`, not renewed again).
    pub released: Vec<String>,
    /// Live replicas, this one included.
    pub live_replicas: i64,
    /// The most leases one replica holds now.
    pub share: usize,
}

/// Location ids per `INSERT` of missing lease rows.
const INSERT_CHUNK: usize = 500;
/// Stopped or silent replicas' rows are kept this long for `status`, then removed.
const FORGET_REPLICAS_AFTER_MS: i64 = 7 * 24 * 3600 * 1000;

/// One lease round for `me` over `locations` (the active locations), in one write
/// transaction: heartbeat, renew the leases in `keep` still held, hand back the excess over
/// the even share or claim free and expired leases up to it.
pub async fn tick(
    store: &Store,
    me: &Replica,
    locations: &[String],
    keep: &[String],
    now: i64,
    terms: LeaseTerms,
) -> Result<Tick, StoreError> {
    // On the urgent writer: a renewal queued behind page commits could outlast the fence.
    let mut tx = store.begin_urgent_write("lease_tick").await?;
    let mut conn = tx.conn();
    on_db!(conn.reborrow(), |c| sqlx::query(
        "INSERT INTO replicas (id, host, pid, version, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, stopped_at = NULL"
    )
    .bind(&me.id)
    .bind(&me.host)
    .bind(me.pid)
    .bind(&me.version)
    .bind(me.started_at)
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    on_db!(conn.reborrow(), |c| sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
        .bind(now - FORGET_REPLICAS_AFTER_MS)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    for chunk in locations.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO location_leases (location_id) VALUES {} ON CONFLICT (location_id) DO NOTHING",
            rows(0, chunk.len(), 1)
        );
        on_db!(conn.reborrow(), |c, pg| {
            let sql = for_backend(pg, &sql);
            let mut query = sqlx::query(&sql);
            for location in chunk {
                query = query.bind(location);
            }
            query.execute(c).await.map(|done| done.rows_affected())
        })?;
    }
    let live: i64 = on_db!(conn.reborrow(), |c| sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM replicas WHERE stopped_at IS NULL AND heartbeat_at > $1"
    )
    .bind(now - terms.ttl_ms)
    .fetch_one(c)
    .await)?;
    let live = live.max(1);
    let share = locations.len().div_ceil(live as usize);

    let keep: Vec<&String> = keep.iter().filter(|k| locations.contains(k)).collect();
    let keep_json = json_list(&keep);
    let mut renewed: Vec<String> = on_db!(conn.reborrow(), |c, pg| sqlx::query_scalar(&format!(
        "UPDATE location_leases SET expires_at = $1, renewed_at = $2 \
         WHERE holder = $3 AND location_id IN ({}) RETURNING location_id",
        json_values(pg, 4)
    ))
    .bind(now + terms.ttl_ms)
    .bind(now)
    .bind(&me.id)
    .bind(&keep_json)
    .fetch_all(c)
    .await)?;
    renewed.sort();

    let mut released = Vec::new();
    let mut acquired = Vec::new();
    if renewed.len() > share {
        released = renewed.split_off(share);
        let json = json_list(&released);
        on_db!(conn.reborrow(), |c, pg| sqlx::query(&format!(
            "UPDATE location_leases SET expires_at = $1 WHERE holder = $2 AND location_id IN ({})",
            json_values(pg, 3)
        ))
        .bind(now + terms.drain_ms)
        .bind(&me.id)
        .bind(&json)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    } else if renewed.len() < share {
        let wanted = (share - renewed.len()) as i64;
        let all = json_list(locations);
        let free: Vec<(String, Option<String>, i64)> = on_db!(conn.reborrow(), |c, pg| sqlx::query_as(&format!(
            "SELECT location_id, holder, expires_at FROM location_leases \
             WHERE location_id IN ({}) AND (holder IS NULL OR expires_at <= $2) \
             ORDER BY location_id LIMIT $3{}",
            json_values(pg, 1),
            if pg { " FOR UPDATE SKIP LOCKED" } else { "" }
        ))
        .bind(&all)
        .bind(now)
        .bind(wanted)
        .fetch_all(c)
        .await)?;
        if !free.is_empty() {
            let ids: Vec<&String> = free.iter().map(|(id, _, _)| id).collect();
            let json = json_list(&ids);
            on_db!(conn.reborrow(), |c, pg| sqlx::query(&format!(
                "UPDATE location_leases SET holder = $1, acquired_at = $2, renewed_at = $2, expires_at = $3, \
                   moves = moves + CASE WHEN holder IS NULL OR holder = $1 THEN 0 ELSE 1 END \
                 WHERE location_id IN ({})",
                json_values(pg, 4)
            ))
            .bind(&me.id)
            .bind(now)
            .bind(now + terms.ttl_ms)
            .bind(&json)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
        }
        acquired = free
            .into_iter()
            .map(|(location, holder, expires_at)| Acquired {
                location,
                previous_expiry: if holder.is_some() { expires_at } else { 0 },
                previous_holder: holder,
            })
            .collect();
    }
    tx.commit().await?;
    let mut held = renewed;
    held.extend(acquired.iter().map(|a| a.location.clone()));
    held.sort();
    Ok(Tick { held, acquired, released, live_replicas: live, share })
}

/// A clean stop: every lease of `me` ends now (others claim them at their next tick) and the
/// replica is marked stopped. Returns the leases released.
pub async fn release_all(store: &Store, me: &str, now: i64) -> Result<u64, StoreError> {
    let mut tx = store.begin_write("lease_release").await?;
    let mut conn = tx.conn();
    let released = on_db!(conn.reborrow(), |c| sqlx::query(
        "UPDATE location_leases SET expires_at = $1 WHERE holder = $2 AND expires_at > $1"
    )
    .bind(now)
    .bind(me)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    on_db!(conn.reborrow(), |c| sqlx::query("UPDATE replicas SET stopped_at = $1 WHERE id = $2")
        .bind(now)
        .bind(me)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(released)
}

/// One replica as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ReplicaRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub stopped_at: Option<i64>,
    /// Leases it holds (unexpired at the time of the read).
    pub leases: i64,
}

/// One lease as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct LeaseRow {
    pub location_id: String,
    pub holder: Option<String>,
    pub acquired_at: i64,
    pub expires_at: i64,
    pub renewed_at: i64,
    pub moves: i64,
}

/// Replicas with their heartbeat and the number of unexpired leases each holds (binds: now,
/// oldest heartbeat shown).
const REPLICAS_SQL: &str = "SELECT r.id, r.host, r.pid, r.version, r.started_at, r.heartbeat_at, r.stopped_at, \
       CAST((SELECT COUNT(*) FROM location_leases l WHERE l.holder = r.id AND l.expires_at > $1) AS BIGINT) AS leases \
     FROM replicas r WHERE r.heartbeat_at > $2 ORDER BY r.heartbeat_at DESC, r.id";
const LEASES_SQL: &str =
    "SELECT location_id, holder, acquired_at, expires_at, renewed_at, moves FROM location_leases ORDER BY location_id";

/// Replicas seen within `since_ms` of `now` (newest heartbeat first) with the number of
/// unexpired leases each holds.
pub async fn replicas(store: &Store, now: i64, since_ms: i64) -> Result<Vec<ReplicaRow>, StoreError> {
    Ok(on_db!(store.db(), |c| sqlx::query_as(REPLICAS_SQL).bind(now).bind(now - since_ms).fetch_all(c).await)?)
}

/// [`replicas`] inside a read transaction (the status read model's).
pub(crate) async fn replicas_in(conn: Conn<'_>, now: i64, since_ms: i64) -> Result<Vec<ReplicaRow>, StoreError> {
    Ok(on_db!(conn, |c| sqlx::query_as(REPLICAS_SQL).bind(now).bind(now - since_ms).fetch_all(c).await)?)
}

/// Every lease row, by location.
pub async fn leases(store: &Store) -> Result<Vec<LeaseRow>, StoreError> {
    Ok(on_db!(store.db(), |c| sqlx::query_as(LEASES_SQL).fetch_all(c).await)?)
}

/// [`leases`] inside a read transaction.
pub(crate) async fn leases_in(conn: Conn<'_>) -> Result<Vec<LeaseRow>, StoreError> {
    Ok(on_db!(conn, |c| sqlx::query_as(LEASES_SQL).fetch_all(c).await)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::stores;

    const TERMS: LeaseTerms = LeaseTerms { ttl_ms: 30_000, drain_ms: 5_000 };

    fn replica(id: &str) -> Replica {
        Replica { id: id.into(), host: "h".into(), pid: 1, version: "t".into(), started_at: 0 }
    }

    fn locations(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("loc{i:02}")).collect()
    }

    #[tokio::test]
    async fn one_replica_takes_every_lease_and_keeps_them_by_renewing() {
        for (_guard, store) in stores().await {
            let all = locations(5);
            let a = replica("a");
            let first = tick(&store, &a, &all, &[], 1_000, TERMS).await.unwrap();
            assert_eq!(first.held, all);
            assert_eq!(first.acquired.len(), 5);
            assert!(first.acquired.iter().all(|x| x.previous_holder.is_none() && x.previous_expiry == 0));
            assert_eq!((first.live_replicas, first.share), (1, 5));
            let again = tick(&store, &a, &all, &first.held, 11_000, TERMS).await.unwrap();
            assert_eq!(again.held, all);
            assert!(again.acquired.is_empty() && again.released.is_empty());
            let rows = leases(&store).await.unwrap();
            assert!(rows.iter().all(|l| l.holder.as_deref() == Some("a") && l.expires_at == 41_000 && l.moves == 0));
        }
    }

    #[tokio::test]
    async fn leases_spread_evenly_when_a_replica_joins_and_move_when_one_dies() {
        for (_guard, store) in stores().await {
            let all = locations(30);
            let (a, b, c) = (replica("a"), replica("b"), replica("c"));
            let mut held_a = tick(&store, &a, &all, &[], 0, TERMS).await.unwrap().held;
            assert_eq!(held_a.len(), 30);
            // B joins: nothing is free yet, so B claims nothing; A sees two live replicas and
            // hands back half, held until the drain ends.
            let b0 = tick(&store, &b, &all, &[], 1_000, TERMS).await.unwrap();
            assert!(b0.held.is_empty());
            let a1 = tick(&store, &a, &all, &held_a, 2_000, TERMS).await.unwrap();
            assert_eq!((a1.held.len(), a1.released.len(), a1.share), (15, 15, 15));
            held_a = a1.held;
            let b_early = tick(&store, &b, &all, &[], 3_000, TERMS).await.unwrap();
            assert!(b_early.held.is_empty(), "handed-back leases wait for the drain");
            let b1 = tick(&store, &b, &all, &[], 2_000 + TERMS.drain_ms, TERMS).await.unwrap();
            assert_eq!(b1.held, a1.released);
            assert!(
                b1.acquired.iter().all(|x| x.previous_holder.as_deref() == Some("a") && x.previous_expiry == 7_000)
            );
            // C joins; everyone ticks until the spread settles at 10 each.
            let mut held_b = b1.held;
            let mut held_c = Vec::new();
            for round in 0..4 {
                let now = 10_000 + round * 6_000;
                held_c = tick(&store, &c, &all, &held_c, now, TERMS).await.unwrap().held;
                held_a = tick(&store, &a, &all, &held_a, now + 1, TERMS).await.unwrap().held;
                held_b = tick(&store, &b, &all, &held_b, now + 2, TERMS).await.unwrap().held;
            }
            assert_eq!((held_a.len(), held_b.len(), held_c.len()), (10, 10, 10));
            let mut union: Vec<String> = held_a.iter().chain(&held_b).chain(&held_c).cloned().collect();
            union.sort();
            assert_eq!(union, all, "every location held by exactly one replica");
            // C dies (no more ticks) while A and B go on ticking: once C's heartbeat and
            // leases are older than the TTL, A and B split its locations.
            let mut taken = Vec::new();
            let mut live = 0;
            for now in (38_000..=70_000).step_by(8_000) {
                let a2 = tick(&store, &a, &all, &held_a, now, TERMS).await.unwrap();
                let b2 = tick(&store, &b, &all, &held_b, now + 1, TERMS).await.unwrap();
                (held_a, held_b, live) = (a2.held, b2.held, b2.live_replicas);
                taken.extend(a2.acquired.into_iter().chain(b2.acquired));
            }
            assert_eq!((live, held_a.len(), held_b.len()), (2, 15, 15));
            assert_eq!(taken.len(), 10);
            assert!(taken.iter().all(|x| x.previous_holder.as_deref() == Some("c")), "{taken:?}");
            let moved: i64 = leases(&store).await.unwrap().iter().map(|l| l.moves).sum();
            assert!(moved >= 25, "moves counted: {moved}");
        }
    }

    /// A renewal must not queue behind the writer's page commits (a replica whose renewal
    /// waits past its fence stops polling its own locations): on PostgreSQL it runs on the
    /// urgent writer while a long write holds the main one.
    #[tokio::test]
    async fn a_renewal_does_not_wait_for_a_write_holding_the_main_writer_on_postgres() {
        let Some((_guard, store)) = crate::store::testing::postgres_store().await else { return };
        let all = locations(3);
        let a = replica("a");
        let held = tick(&store, &a, &all, &[], 0, TERMS).await.unwrap().held;
        let page_commit = store.begin_write("test: a long page commit").await.unwrap();
        let renewed =
            tokio::time::timeout(std::time::Duration::from_secs(2), tick(&store, &a, &all, &held, 1_000, TERMS))
                .await
                .expect("the renewal waited for the main writer")
                .unwrap();
        assert_eq!(renewed.held, all);
        page_commit.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn a_lease_claimed_by_another_after_expiry_is_not_renewed_by_the_old_holder() {
        for (_guard, store) in stores().await {
            let all = locations(2);
            let (a, b) = (replica("a"), replica("b"));
            let held = tick(&store, &a, &all, &[], 0, TERMS).await.unwrap().held;
            // A stalls past the TTL; B claims both.
            let b1 = tick(&store, &b, &all, &[], TERMS.ttl_ms + 1, TERMS).await.unwrap();
            assert_eq!(b1.held, all);
            let a1 = tick(&store, &a, &all, &held, TERMS.ttl_ms + 2, TERMS).await.unwrap();
            assert!(a1.held.is_empty(), "A must not renew leases B holds: {a1:?}");
            assert!(leases(&store).await.unwrap().iter().all(|l| l.holder.as_deref() == Some("b")));
        }
    }

    #[tokio::test]
    async fn a_clean_stop_releases_at_once_and_shows_as_stopped() {
        for (_guard, store) in stores().await {
            let all = locations(3);
            let (a, b) = (replica("a"), replica("b"));
            tick(&store, &a, &all, &[], 0, TERMS).await.unwrap();
            tick(&store, &b, &all, &[], 100, TERMS).await.unwrap();
            assert_eq!(release_all(&store, "a", 1_000).await.unwrap(), 3);
            let b1 = tick(&store, &b, &all, &[], 1_001, TERMS).await.unwrap();
            assert_eq!(b1.held, all);
            assert_eq!(b1.live_replicas, 1);
            assert!(b1.acquired.iter().all(|x| x.previous_expiry == 1_000));
            let shown = replicas(&store, 1_002, 60_000).await.unwrap();
            assert_eq!(shown.len(), 2);
            let row_a = shown.iter().find(|r| r.id == "a").unwrap();
            assert_eq!((row_a.stopped_at, row_a.leases), (Some(1_000), 0));
            assert_eq!(shown.iter().find(|r| r.id == "b").unwrap().leases, 3);
        }
    }
}
