//! The `locations` table: the locations the daemon knows (configured, or installed through
//! OAuth) and whether each one is synced.
//!
//! Contract:
//! - A location is **active** (synced) unless its status is `disabled` or `uninstalled`;
//!   [`active`] is the one definition of that rule. `needs_reauth` locations stay in the
//!   list: the engine skips them until a new grant clears the mark.
//! - Public functions take `&Store` and plain data and run their whole transaction
//!   themselves (writes through [`Store::begin_write`], reads through [`Store::db`]). The `*_in` helpers take a connection already inside a write
//!   transaction; they are for other store modules (the webhook inbox records an install in
//!   the same transaction as its dedupe row) and for `server::ghl_webhook::record` until that
//!   moves to `store::hints`.
//! - The grants' parking of locations (`store::grants`) writes this table too; everything
//!   else goes through here ([`mark_needs_reauth`] and [`status_of`] are for the sync engine,
//!   whose own SQL on this table moves here with the rest of the engine's).

use super::db::{Conn, on_db};
use super::{Store, StoreError, now_ms};

/// The statuses a location row can have.
pub mod status {
    pub const ACTIVE: &str = "active";
    pub const NEEDS_REAUTH: &str = "needs_reauth";
    pub const UNINSTALLED: &str = "uninstalled";
    pub const DISABLED: &str = "disabled";
}

/// A location from the config file, as `register_configured` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredLocation {
    pub id: String,
    pub name: Option<String>,
    pub enabled: bool,
    /// Authenticated by a private integration token (not OAuth).
    pub pit: bool,
}

/// One row of `locations` (without its timestamps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationRow {
    pub id: String,
    pub name: Option<String>,
    pub company_id: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
}

/// The ids of the locations to sync, ordered: every location not `disabled` or `uninstalled`.
pub async fn active(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT id FROM locations WHERE status NOT IN ('disabled', 'uninstalled') ORDER BY id"
    )
    .fetch_all(pool)
    .await)?)
}

/// Every location row, ordered by id.
pub async fn list(store: &Store) -> Result<Vec<LocationRow>, StoreError> {
    type Row = (String, Option<String>, Option<String>, String, Option<String>);
    let rows: Vec<Row> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT id, name, company_id, status, status_reason FROM locations ORDER BY id"
    )
    .fetch_all(pool)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|(id, name, company_id, status, status_reason)| LocationRow {
            id,
            name,
            company_id,
            status,
            status_reason,
        })
        .collect())
}

/// Whether `location` is known: it has a row, or the snapshot has contacts of it.
pub async fn is_known(store: &Store, location: &str) -> Result<bool, StoreError> {
    let known: i64 = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM locations WHERE id = $1) \
           OR EXISTS (SELECT 1 FROM contacts WHERE location_id = $1) THEN CAST(1 AS BIGINT) ELSE 0 END",
    )
    .bind(location)
    .fetch_one(pool)
    .await)?;
    Ok(known != 0)
}

/// Configured locations become rows, in one transaction. A location disabled in the config
/// is marked so. `needs_reauth` is kept for OAuth locations (a new install clears it) and
/// cleared for private-integration-token locations: the operator may have fixed the token,
/// and a still-bad token is caught again by the first request.
pub async fn register_configured(store: &Store, locations: &[ConfiguredLocation]) -> Result<(), StoreError> {
    if locations.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = store.begin_write("locations_register").await?;
    for location in locations {
        let status = if location.enabled { status::ACTIVE } else { status::DISABLED };
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO locations (id, name, status, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET name = COALESCE(excluded.name, locations.name), \
             updated_at = excluded.updated_at, \
             status = CASE WHEN excluded.status = 'disabled' OR $5 = 1 THEN excluded.status \
                           WHEN locations.status = 'disabled' THEN 'active' ELSE locations.status END",
        )
        .bind(&location.id)
        .bind(&location.name)
        .bind(status)
        .bind(now)
        .bind(i64::from(location.pit))
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    }
    tx.commit().await
}

/// The status of `location_id`'s row (None: no row yet).
pub async fn status_of(store: &Store, location_id: &str) -> Result<Option<String>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar("SELECT status FROM locations WHERE id = $1")
        .bind(location_id)
        .fetch_optional(pool)
        .await)?)
}

/// Parks a location: `needs_reauth` with `reason` (no personal data), creating its row if
/// needed. The engine does this when GHL refuses the location's token.
pub async fn mark_needs_reauth(store: &Store, location_id: &str, reason: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("location_park").await?;
    on_db!(tx.conn(), |c| sqlx::query(
        "INSERT INTO locations (id, status, status_reason, updated_at) VALUES ($1, 'needs_reauth', $2, $3) \
         ON CONFLICT (id) DO UPDATE SET status = 'needs_reauth', status_reason = excluded.status_reason, \
         updated_at = excluded.updated_at",
    )
    .bind(location_id)
    .bind(reason)
    .bind(now_ms())
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// The status of `location_id`'s row (None: no row), read inside a write transaction.
pub(crate) async fn status_in(conn: Conn<'_>, location_id: &str) -> Result<Option<String>, StoreError> {
    Ok(on_db!(conn, |c| sqlx::query_scalar("SELECT status FROM locations WHERE id = $1")
        .bind(location_id)
        .fetch_optional(c)
        .await)?)
}

/// INSTALL of the app in a location: remember it (and its company). A location whose grant
/// is present and usable becomes `active`; otherwise `needs_reauth` until the OAuth callback
/// stores one. A location that is already active (or disabled) keeps its status. Returns the
/// status the install asked for.
pub(crate) async fn install_in(
    mut conn: Conn<'_>,
    location_id: &str,
    company_id: Option<&str>,
    now: i64,
) -> Result<&'static str, StoreError> {
    let granted: i64 = on_db!(conn.reborrow(), |c| sqlx::query_scalar(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM grants WHERE resource_id = $1 AND needs_reauth = 0 \
           AND access_token IS NOT NULL) THEN CAST(1 AS BIGINT) ELSE 0 END",
    )
    .bind(location_id)
    .fetch_one(c)
    .await)?;
    let (status, reason) = if granted != 0 {
        (status::ACTIVE, None)
    } else {
        (status::NEEDS_REAUTH, Some("installed; waiting for the OAuth grant"))
    };
    on_db!(conn, |c| sqlx::query(
        "INSERT INTO locations (id, company_id, status, status_reason, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET company_id = COALESCE(excluded.company_id, locations.company_id), \
         status = CASE WHEN locations.status IN ('uninstalled', 'needs_reauth') THEN excluded.status \
                       ELSE locations.status END, \
         status_reason = CASE WHEN locations.status IN ('uninstalled', 'needs_reauth') THEN excluded.status_reason \
                       ELSE locations.status_reason END, \
         updated_at = excluded.updated_at",
    )
    .bind(location_id)
    .bind(company_id)
    .bind(status)
    .bind(reason)
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(status)
}

/// Why an uninstalled location stopped.
pub const UNINSTALL_REASON: &str = "app uninstalled (GHL webhook)";

/// What an UNINSTALL applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninstall<'a> {
    /// One location (its company, if known, is recorded on a new row).
    Location { location_id: &'a str, company_id: Option<&'a str> },
    /// Every location of an agency, and the agency's grant.
    Company { company_id: &'a str },
}

/// UNINSTALL: stop syncing (status `uninstalled`, grants flagged `needs_reauth`), keep every
/// row of data.
pub(crate) async fn uninstall_in(mut conn: Conn<'_>, target: Uninstall<'_>, now: i64) -> Result<(), StoreError> {
    match target {
        Uninstall::Location { location_id, company_id } => {
            on_db!(conn.reborrow(), |c| sqlx::query(
                "INSERT INTO locations (id, company_id, status, status_reason, updated_at) \
                 VALUES ($1, $2, 'uninstalled', $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET status = 'uninstalled', status_reason = excluded.status_reason, \
                 updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(company_id)
            .bind(UNINSTALL_REASON)
            .bind(now)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
            on_db!(conn, |c| sqlx::query(
                "UPDATE grants SET needs_reauth = 1, reauth_reason = $1, updated_at = $2 WHERE resource_id = $3"
            )
            .bind(UNINSTALL_REASON)
            .bind(now)
            .bind(location_id)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
        }
        Uninstall::Company { company_id } => {
            on_db!(conn.reborrow(), |c| {
                sqlx::query(
                "UPDATE locations SET status = 'uninstalled', status_reason = $1, updated_at = $2 WHERE company_id = $3",
            )
            .bind(UNINSTALL_REASON)
            .bind(now)
            .bind(company_id)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
            })?;
            on_db!(conn, |c| sqlx::query(
                "UPDATE grants SET needs_reauth = 1, reauth_reason = $1, updated_at = $2 \
                 WHERE resource_id = $3 OR company_id = $3",
            )
            .bind(UNINSTALL_REASON)
            .bind(now)
            .bind(company_id)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(id: &str, enabled: bool, pit: bool) -> ConfiguredLocation {
        ConfiguredLocation { id: id.into(), name: Some(format!("name {id}")), enabled, pit }
    }

    #[tokio::test]
    async fn active_locations_exclude_disabled_and_uninstalled_ones_only() {
        for (_guard, store) in crate::store::testing::stores().await {
            active_locations_exclude_disabled_and_uninstalled_ones_only_on(&store).await;
        }
    }

    async fn active_locations_exclude_disabled_and_uninstalled_ones_only_on(store: &Store) {
        register_configured(
            store,
            &[configured("a", true, true), configured("b", false, true), configured("c", true, false)],
        )
        .await
        .unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        uninstall_in(tx.conn(), Uninstall::Location { location_id: "d", company_id: None }, 1).await.unwrap();
        install_in(tx.conn(), "e", Some("co"), 1).await.unwrap();
        tx.commit().await.unwrap();
        // `e` has no grant: needs_reauth, still listed (the engine skips it until a grant).
        assert_eq!(active(store).await.unwrap(), ["a", "c", "e"]);
        let rows = list(store).await.unwrap();
        assert_eq!(rows.len(), 5);
        let e = rows.iter().find(|r| r.id == "e").unwrap();
        assert_eq!((e.status.as_str(), e.company_id.as_deref()), (status::NEEDS_REAUTH, Some("co")));
        assert!(is_known(store, "d").await.unwrap());
        mark_needs_reauth(store, "a", "token refused").await.unwrap();
        assert_eq!(status_of(store, "a").await.unwrap().as_deref(), Some(status::NEEDS_REAUTH));
        assert_eq!(status_of(store, "zz").await.unwrap(), None);
        assert!(!is_known(store, "zz").await.unwrap());
    }

    #[tokio::test]
    async fn registering_again_re_enables_and_pit_locations_drop_a_reauth_mark() {
        for (_guard, store) in crate::store::testing::stores().await {
            registering_again_re_enables_and_pit_locations_drop_a_reauth_mark_on(&store).await;
        }
    }

    async fn registering_again_re_enables_and_pit_locations_drop_a_reauth_mark_on(store: &Store) {
        register_configured(store, &[configured("pit", false, true), configured("oauth", true, false)]).await.unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| sqlx::query("UPDATE locations SET status = 'needs_reauth'")
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
        tx.commit().await.unwrap();
        register_configured(store, &[configured("pit", true, true), configured("oauth", true, false)]).await.unwrap();
        let rows = list(store).await.unwrap();
        let status_of = |id: &str| rows.iter().find(|r| r.id == id).unwrap().status.clone();
        assert_eq!(status_of("pit"), status::ACTIVE);
        assert_eq!(status_of("oauth"), status::NEEDS_REAUTH, "an OAuth location waits for a new install");
    }

    #[tokio::test]
    async fn a_company_uninstall_stops_every_location_of_the_company() {
        for (_guard, store) in crate::store::testing::stores().await {
            a_company_uninstall_stops_every_location_of_the_company_on(&store).await;
        }
    }

    async fn a_company_uninstall_stops_every_location_of_the_company_on(store: &Store) {
        let mut tx = store.begin_write("test").await.unwrap();
        install_in(tx.conn(), "a", Some("co"), 1).await.unwrap();
        install_in(tx.conn(), "b", Some("co"), 1).await.unwrap();
        install_in(tx.conn(), "c", Some("other"), 1).await.unwrap();
        uninstall_in(tx.conn(), Uninstall::Company { company_id: "co" }, 2).await.unwrap();
        assert_eq!(status_in(tx.conn(), "a").await.unwrap().as_deref(), Some(status::UNINSTALLED));
        assert_eq!(status_in(tx.conn(), "zz").await.unwrap(), None);
        tx.commit().await.unwrap();
        assert_eq!(active(store).await.unwrap(), ["c"]);
    }
}
