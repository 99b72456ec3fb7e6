//! The `grants` table (and the `locations` rows grants create or park): OAuth grants and
//! imported private integration tokens, tokens sealed with the master key; and the
//! cross-replica refresh lock of a grant ([`lock_refresh`]).

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::db::{Conn, on_db};
use super::{Store, StoreError, now_ms};

/// What a grant row authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// An OAuth grant of one location (sub-account install).
    Location,
    /// An agency OAuth grant; location tokens are minted from it.
    Company,
    /// A private integration token imported with `ghl-sync auth import-pit`.
    Pit,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Location => "location",
            GrantKind::Company => "company",
            GrantKind::Pit => "pit",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "location" => Some(GrantKind::Location),
            "company" => Some(GrantKind::Company),
            "pit" => Some(GrantKind::Pit),
            _ => None,
        }
    }
}

/// A token sealed with the master key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// One row of `grants`.
#[derive(Debug, Clone)]
pub struct GrantRow {
    /// Location id, or company id for agency grants.
    pub resource_id: String,
    pub kind: GrantKind,
    pub company_id: Option<String>,
    pub access_token: Option<Sealed>,
    pub refresh_token: Option<Sealed>,
    /// Epoch ms; `None` for PITs.
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub generation: i64,
    pub needs_reauth: bool,
    pub reauth_reason: Option<String>,
    pub updated_at: i64,
}

/// Tokens to store for a new or re-installed grant.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub resource_id: String,
    pub kind: GrantKind,
    pub company_id: Option<String>,
    pub access_token: Sealed,
    pub refresh_token: Option<Sealed>,
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
}

/// A location row to create or refresh alongside a grant.
#[derive(Debug, Clone)]
pub struct LocationRow {
    pub id: String,
    pub name: Option<String>,
    pub company_id: Option<String>,
}

const COLUMNS: &str = "resource_id, resource_kind, company_id, access_token, refresh_token, expires_at, scope, \
                       generation, needs_reauth, reauth_reason, updated_at";

/// A `grants` row as both backends decode it (the kind still text, the flag an integer).
#[derive(sqlx::FromRow)]
struct StoredGrant {
    resource_id: String,
    resource_kind: String,
    company_id: Option<String>,
    access_token: Option<Vec<u8>>,
    refresh_token: Option<Vec<u8>>,
    expires_at: Option<i64>,
    scope: Option<String>,
    generation: i64,
    needs_reauth: i64,
    reauth_reason: Option<String>,
    updated_at: i64,
}

fn from_row(row: StoredGrant) -> Result<GrantRow, sqlx::Error> {
    let kind = GrantKind::parse(&row.resource_kind).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "resource_kind".into(),
        source: format!("unknown grant kind {:?}", row.resource_kind).into(),
    })?;
    Ok(GrantRow {
        resource_id: row.resource_id,
        kind,
        company_id: row.company_id,
        access_token: row.access_token.map(Sealed),
        refresh_token: row.refresh_token.map(Sealed),
        expires_at: row.expires_at,
        scope: row.scope,
        generation: row.generation,
        needs_reauth: row.needs_reauth != 0,
        reauth_reason: row.reauth_reason,
        updated_at: row.updated_at,
    })
}

/// The grant row of `resource_id`, if any.
pub async fn load(store: &Store, resource_id: &str) -> Result<Option<GrantRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM grants WHERE resource_id = $1");
    let row: Option<StoredGrant> =
        on_db!(store.db(), |pool| sqlx::query_as(&sql).bind(resource_id).fetch_optional(pool).await)?;
    Ok(row.map(from_row).transpose()?)
}

/// Every grant, ordered by kind and id.
pub async fn list(store: &Store) -> Result<Vec<GrantRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM grants ORDER BY resource_kind, resource_id");
    let rows: Vec<StoredGrant> = on_db!(store.db(), |pool| sqlx::query_as(&sql).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(from_row).collect::<Result<_, _>>()?)
}

/// The agency a location belongs to, as recorded by an install.
pub async fn company_of_location(store: &Store, location_id: &str) -> Result<Option<String>, StoreError> {
    let company: Option<Option<String>> =
        on_db!(store.db(), |pool| sqlx::query_scalar("SELECT company_id FROM locations WHERE id = $1")
            .bind(location_id)
            .fetch_optional(pool)
            .await)?;
    Ok(company.flatten())
}

async fn upsert_location(conn: Conn<'_>, location: &LocationRow, now: i64) -> Result<(), sqlx::Error> {
    on_db!(conn, |c| sqlx::query(
        "INSERT INTO locations (id, name, company_id, status, status_reason, updated_at) \
         VALUES ($1, $2, $3, 'active', NULL, $4) \
         ON CONFLICT(id) DO UPDATE SET name = COALESCE(excluded.name, locations.name), \
           company_id = COALESCE(excluded.company_id, locations.company_id), \
           status = CASE WHEN locations.status = 'needs_reauth' THEN 'active' ELSE locations.status END, \
           status_reason = CASE WHEN locations.status = 'needs_reauth' THEN NULL ELSE locations.status_reason END, \
           updated_at = excluded.updated_at",
    )
    .bind(&location.id)
    .bind(&location.name)
    .bind(&location.company_id)
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Stores a new grant (or replaces one on re-install: the generation moves on and any
/// `needs_reauth` mark is cleared), plus its location rows, in one transaction.
/// Returns the new generation.
pub async fn store_grant(store: &Store, grant: &NewGrant, locations: &[LocationRow]) -> Result<i64, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("grant_store").await?;
    let generation: i64 = on_db!(tx.conn(), |c| {
        sqlx::query_scalar(
        "INSERT INTO grants (resource_id, resource_kind, company_id, access_token, refresh_token, expires_at, scope, \
           generation, needs_reauth, reauth_reason, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 0, NULL, $8) \
         ON CONFLICT(resource_id) DO UPDATE SET resource_kind = excluded.resource_kind, \
           company_id = excluded.company_id, access_token = excluded.access_token, \
           refresh_token = excluded.refresh_token, expires_at = excluded.expires_at, scope = excluded.scope, \
           generation = grants.generation + 1, needs_reauth = 0, reauth_reason = NULL, \
           updated_at = excluded.updated_at \
         RETURNING generation",
    )
    .bind(&grant.resource_id)
    .bind(grant.kind.as_str())
    .bind(&grant.company_id)
    .bind(&grant.access_token.0)
    .bind(grant.refresh_token.as_ref().map(|t| &t.0))
    .bind(grant.expires_at)
    .bind(&grant.scope)
    .bind(now)
    .fetch_one(c)
    .await
    })?;
    for location in locations {
        upsert_location(tx.conn(), location, now).await?;
    }
    tx.commit().await?;
    Ok(generation)
}

/// Stores a rotated token pair if the row is still at `generation`; returns the new
/// generation, or `None` when someone else rotated first (nothing written).
/// The commit happens before the caller may use the new access token.
pub async fn rotate(
    store: &Store,
    resource_id: &str,
    generation: i64,
    access_token: &Sealed,
    refresh_token: Option<&Sealed>,
    expires_at: i64,
    scope: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let mut tx = store.begin_write("grant_rotate").await?;
    let updated: Option<i64> = on_db!(tx.conn(), |c| sqlx::query_scalar(
        "UPDATE grants SET access_token = $1, refresh_token = COALESCE($2, refresh_token), expires_at = $3, \
           scope = COALESCE($4, scope), generation = generation + 1, updated_at = $5 \
         WHERE resource_id = $6 AND generation = $7 RETURNING generation",
    )
    .bind(&access_token.0)
    .bind(refresh_token.map(|t| &t.0))
    .bind(expires_at)
    .bind(scope)
    .bind(now_ms())
    .bind(resource_id)
    .bind(generation)
    .fetch_optional(c)
    .await)?;
    tx.commit().await?;
    Ok(updated)
}

/// Parks a grant at `generation` and the locations it serves: `needs_reauth` with `reason`.
/// Returns false when the row moved on meanwhile (a newer token exists: nothing parked).
pub async fn mark_needs_reauth(store: &Store, grant: &GrantRow, reason: &str) -> Result<bool, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("grant_park").await?;
    let updated = on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE grants SET needs_reauth = 1, reauth_reason = $1, updated_at = $2 \
         WHERE resource_id = $3 AND generation = $4",
    )
    .bind(reason)
    .bind(now)
    .bind(&grant.resource_id)
    .bind(grant.generation)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    if updated == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    match grant.kind {
        GrantKind::Company => {
            // Every location of the agency that has no grant of its own.
            on_db!(tx.conn(), |c| sqlx::query(
                "UPDATE locations SET status = 'needs_reauth', status_reason = $1, updated_at = $2 \
                 WHERE company_id = $3 AND id NOT IN (SELECT resource_id FROM grants WHERE resource_kind != 'company')",
            )
            .bind(reason)
            .bind(now)
            .bind(&grant.resource_id)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
        }
        GrantKind::Location | GrantKind::Pit => {
            on_db!(tx.conn(), |c| sqlx::query(
                "INSERT INTO locations (id, company_id, status, status_reason, updated_at) \
                 VALUES ($1, $2, 'needs_reauth', $3, $4) \
                 ON CONFLICT(id) DO UPDATE SET status = 'needs_reauth', status_reason = excluded.status_reason, \
                   updated_at = excluded.updated_at",
            )
            .bind(&grant.resource_id)
            .bind(&grant.company_id)
            .bind(reason)
            .bind(now)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// `(status, status_reason)` of a location row.
pub async fn location_status(store: &Store, location_id: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_as("SELECT status, status_reason FROM locations WHERE id = $1")
        .bind(location_id)
        .fetch_optional(pool)
        .await)?)
}

/// Every grant that holds a token or is parked: `(resource_id, needs_reauth)`, for readiness
/// (a grant without a token that is not parked is not a grant yet).
pub async fn reauth_flags(store: &Store) -> Result<Vec<(String, bool)>, StoreError> {
    let rows: Vec<(String, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT resource_id, needs_reauth FROM grants WHERE access_token IS NOT NULL OR needs_reauth = 1 \
         ORDER BY resource_id",
    )
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().map(|(id, flag)| (id, flag != 0)).collect())
}

/// Re-seals every stored token (key rotation) in one transaction: `reseal` turns a token
/// sealed with the old key into one sealed with the new key. Returns how many grants were
/// re-sealed; if `reseal` fails for any token, nothing changes and its error is returned.
/// `reseal` must be pure computation (it runs inside the write transaction).
pub async fn reseal_all<E>(store: &Store, mut reseal: impl FnMut(&Sealed) -> Result<Sealed, E>) -> Result<usize, E>
where
    E: From<StoreError>,
{
    let mut tx = store.begin_write("auth_rekey").await?;
    type Row = (String, Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Row> =
        on_db!(tx.conn(), |c| sqlx::query_as("SELECT resource_id, access_token, refresh_token FROM grants")
            .fetch_all(c)
            .await)
        .map_err(StoreError::from)?;
    let count = rows.len();
    for (resource, access, refresh) in rows {
        let access = access.map(|bytes| reseal(&Sealed(bytes))).transpose()?;
        let refresh = refresh.map(|bytes| reseal(&Sealed(bytes))).transpose()?;
        let (access, refresh) = (access.map(|t| t.0), refresh.map(|t| t.0));
        on_db!(tx.conn(), |c| sqlx::query(
            "UPDATE grants SET access_token = $1, refresh_token = $2 WHERE resource_id = $3"
        )
        .bind(&access)
        .bind(&refresh)
        .bind(&resource)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))
        .map_err(StoreError::from)?;
    }
    tx.commit().await?;
    Ok(count)
}

/// The first half of the PostgreSQL advisory lock key of a grant's refresh (`ghlr`); the
/// second is `hashtext(current_schema() || ':' || resource_id)`, so stores in other schemas of
/// one database never meet. Two grants whose hashes collide merely take turns. The daemon's
/// own lock (`ghls`, [`super::StoreLock`]) uses another first half.
const REFRESH_LOCK_KEY: i32 = 0x6768_6c72;

/// The right to spend a grant's refresh token, across every process on the store: on
/// PostgreSQL a session advisory lock held by a connection of its own; on SQLite nothing
/// (one daemon per SQLite file, enforced by its lock file).
///
/// Release it with [`RefreshLock::release`] once the rotated pair is committed. Dropped
/// instead (an error, a cancelled task), it is released in the background; if the process
/// dies, PostgreSQL ends the session and frees the lock with it.
#[must_use = "the lock is released when dropped"]
pub struct RefreshLock {
    held: Option<HeldLock>,
}

struct HeldLock {
    conn: PgConnection,
    key: i32,
}

impl std::fmt::Debug for RefreshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshLock").field("postgres", &self.held.is_some()).finish()
    }
}

/// Takes the refresh lock of grant `resource`, waiting at most `wait` for another process
/// that holds it (PostgreSQL queues waiters fairly and wakes the next one as soon as it is
/// released). Fails with [`StoreError::RefreshLockTimeout`] when the wait runs out. On
/// SQLite it returns at once.
pub async fn lock_refresh(store: &Store, resource: &str, wait: Duration) -> Result<RefreshLock, StoreError> {
    let Some(mut conn) = store.dedicated_postgres(&format!("ghl-sync refresh {}", super::replica_id())).await? else {
        return Ok(RefreshLock { held: None });
    };
    let started = Instant::now();
    let key: i32 = sqlx::query_scalar("SELECT hashtext(current_schema() || ':' || $1)")
        .bind(resource)
        .fetch_one(&mut conn)
        .await?;
    // Advisory lock waits honour `lock_timeout` (at least 1 ms: 0 would mean "forever").
    let wait_ms = wait.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query("SELECT set_config('lock_timeout', $1, false)").bind(wait_ms.to_string()).execute(&mut conn).await?;
    let locked =
        sqlx::query("SELECT pg_advisory_lock($1, $2)").bind(REFRESH_LOCK_KEY).bind(key).execute(&mut conn).await;
    match locked {
        Ok(_) => {
            tracing::debug!(
                grant.resource = resource,
                waited_ms = started.elapsed().as_millis() as u64,
                "Took the cross-replica refresh lock"
            );
            Ok(RefreshLock { held: Some(HeldLock { conn, key }) })
        }
        Err(error) => {
            let _closed = conn.close().await;
            match &error {
                // 55P03 lock_not_available: `lock_timeout` ran out.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                    Err(StoreError::RefreshLockTimeout { resource: resource.to_owned(), waited: wait })
                }
                _ => Err(StoreError::Query(error)),
            }
        }
    }
}

impl RefreshLock {
    /// Releases the lock and closes its connection. A failure is only logged: closing the
    /// connection ends the session, which frees the lock anyway.
    pub async fn release(mut self) {
        if let Some(held) = self.held.take() {
            held.unlock().await;
        }
    }
}

impl HeldLock {
    async fn unlock(mut self) {
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1, $2)")
            .bind(REFRESH_LOCK_KEY)
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await;
        if let Err(error) = unlocked {
            tracing::warn!(error = %error, "Could not release a refresh lock; closing its connection frees it");
        }
        let _closed = self.conn.close().await;
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(held.unlock());
            }
            // No runtime left: dropping the connection ends the session, and with it the lock.
            Err(_) => drop(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, kind: GrantKind) -> NewGrant {
        NewGrant {
            resource_id: id.into(),
            kind,
            company_id: Some("co".into()),
            access_token: Sealed(vec![1, 2, 3]),
            refresh_token: Some(Sealed(vec![4])),
            expires_at: Some(10),
            scope: Some("contacts.readonly".into()),
        }
    }

    #[tokio::test]
    async fn reinstalling_bumps_the_generation_and_clears_the_reauth_mark() {
        for (_guard, store) in crate::store::testing::stores().await {
            reinstalling_bumps_the_generation_and_clears_the_reauth_mark_on(&store).await;
        }
    }

    async fn reinstalling_bumps_the_generation_and_clears_the_reauth_mark_on(pool: &Store) {
        let location = LocationRow { id: "loc".into(), name: Some("A".into()), company_id: Some("co".into()) };
        assert_eq!(
            store_grant(pool, &grant("loc", GrantKind::Location), std::slice::from_ref(&location)).await.unwrap(),
            1
        );
        let row = load(pool, "loc").await.unwrap().unwrap();
        assert!(mark_needs_reauth(pool, &row, "refresh token revoked").await.unwrap());
        assert_eq!(location_status(pool, "loc").await.unwrap().unwrap().0, "needs_reauth");
        assert_eq!(store_grant(pool, &grant("loc", GrantKind::Location), &[location]).await.unwrap(), 2);
        let row = load(pool, "loc").await.unwrap().unwrap();
        assert!(!row.needs_reauth && row.reauth_reason.is_none());
        assert_eq!(location_status(pool, "loc").await.unwrap().unwrap(), ("active".into(), None));
    }

    #[tokio::test]
    async fn rotation_only_applies_to_the_generation_it_read() {
        for (_guard, store) in crate::store::testing::stores().await {
            rotation_only_applies_to_the_generation_it_read_on(&store).await;
        }
    }

    async fn rotation_only_applies_to_the_generation_it_read_on(pool: &Store) {
        store_grant(pool, &grant("loc", GrantKind::Location), &[]).await.unwrap();
        let new = Sealed(vec![9]);
        assert_eq!(rotate(pool, "loc", 1, &new, Some(&new), 99, None).await.unwrap(), Some(2));
        assert_eq!(rotate(pool, "loc", 1, &new, Some(&new), 99, None).await.unwrap(), None);
        let row = load(pool, "loc").await.unwrap().unwrap();
        assert_eq!((row.generation, row.expires_at, row.scope.as_deref()), (2, Some(99), Some("contacts.readonly")));
        // A stale park does nothing.
        let stale = GrantRow { generation: 1, ..row };
        assert!(!mark_needs_reauth(pool, &stale, "x").await.unwrap());
    }

    #[tokio::test]
    async fn a_parked_company_grant_parks_its_locations_without_own_grants() {
        for (_guard, store) in crate::store::testing::stores().await {
            a_parked_company_grant_parks_its_locations_without_own_grants_on(&store).await;
        }
    }

    async fn a_parked_company_grant_parks_its_locations_without_own_grants_on(pool: &Store) {
        let locs: Vec<LocationRow> = ["a", "b"]
            .iter()
            .map(|id| LocationRow { id: (*id).into(), name: None, company_id: Some("co".into()) })
            .collect();
        store_grant(pool, &grant("co", GrantKind::Company), &locs).await.unwrap();
        store_grant(pool, &grant("b", GrantKind::Location), &[]).await.unwrap();
        let row = load(pool, "co").await.unwrap().unwrap();
        assert!(mark_needs_reauth(pool, &row, "gone").await.unwrap());
        assert_eq!(location_status(pool, "a").await.unwrap().unwrap().0, "needs_reauth");
        assert_eq!(location_status(pool, "b").await.unwrap().unwrap().0, "active");
        assert_eq!(company_of_location(pool, "a").await.unwrap().as_deref(), Some("co"));
        assert_eq!(list(pool).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn resealing_rewrites_every_token_or_none() {
        for (_guard, store) in crate::store::testing::stores().await {
            resealing_rewrites_every_token_or_none_on(&store).await;
        }
    }

    async fn resealing_rewrites_every_token_or_none_on(pool: &Store) {
        store_grant(pool, &grant("a", GrantKind::Location), &[]).await.unwrap();
        store_grant(pool, &NewGrant { refresh_token: None, ..grant("b", GrantKind::Pit) }, &[]).await.unwrap();
        let flip = |t: &Sealed| Ok::<_, StoreError>(Sealed(t.0.iter().map(|b| b ^ 0xff).collect()));
        assert_eq!(reseal_all(pool, flip).await.unwrap(), 2);
        let a = load(pool, "a").await.unwrap().unwrap();
        assert_eq!((a.access_token, a.refresh_token), (Some(Sealed(vec![254, 253, 252])), Some(Sealed(vec![251]))));
        let b = load(pool, "b").await.unwrap().unwrap();
        assert_eq!(
            (b.access_token, b.refresh_token, b.kind),
            (Some(Sealed(vec![254, 253, 252])), None, GrantKind::Pit)
        );
        let refused = reseal_all(pool, |_| Err::<Sealed, _>(StoreError::Corrupt("no key".into()))).await;
        assert!(refused.is_err());
        assert_eq!(load(pool, "a").await.unwrap().unwrap().access_token, Some(Sealed(vec![254, 253, 252])));
        assert_eq!(reauth_flags(pool).await.unwrap(), vec![("a".to_owned(), false), ("b".to_owned(), false)]);
    }

    #[tokio::test]
    async fn the_refresh_lock_is_exclusive_per_grant_bounded_and_freed_on_release_or_drop() {
        for (_guard, store) in crate::store::testing::stores().await {
            the_refresh_lock_is_exclusive_per_grant_bounded_and_freed_on_release_or_drop_on(&store).await;
        }
    }

    async fn the_refresh_lock_is_exclusive_per_grant_bounded_and_freed_on_release_or_drop_on(store: &Store) {
        let short = Duration::from_millis(100);
        let held = lock_refresh(store, "loc", short).await.unwrap();
        let second = lock_refresh(store, "loc", short).await;
        if !store.is_postgres() {
            // SQLite: one daemon per file, nothing to exclude.
            second.unwrap().release().await;
            held.release().await;
            return;
        }
        let error = second.unwrap_err();
        assert!(matches!(error, StoreError::RefreshLockTimeout { ref resource, .. } if resource == "loc"), "{error}");
        assert!(error.to_string().contains("held by another replica"), "{error}");
        // Another grant is not in the way.
        lock_refresh(store, "other", short).await.unwrap().release().await;
        // A waiter is woken when the holder releases, well before its own deadline.
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let lock = lock_refresh(&store, "loc", Duration::from_secs(20)).await.unwrap();
                (started.elapsed(), lock)
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.release().await;
        let (waited, lock) = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(10), "{waited:?}");
        // Dropped without release (an error path, a cancelled task): freed in the background.
        drop(lock);
        let mut freed = false;
        for _ in 0..50 {
            match lock_refresh(store, "loc", short).await {
                Ok(lock) => {
                    lock.release().await;
                    freed = true;
                    break;
                }
                Err(StoreError::RefreshLockTimeout { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert!(freed, "a dropped refresh lock was never freed");
    }

    #[tokio::test]
    async fn refresh_locks_of_stores_in_other_schemas_do_not_meet() {
        let Some((_a, one)) = crate::store::testing::postgres_store().await else { return };
        let Some((_b, two)) = crate::store::testing::postgres_store().await else { return };
        let held = lock_refresh(&one, "loc", Duration::from_millis(100)).await.unwrap();
        lock_refresh(&two, "loc", Duration::from_millis(100)).await.unwrap().release().await;
        held.release().await;
    }
}
