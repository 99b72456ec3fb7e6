//! The `locations` table: the locations the daemon knows (configured, or installed through
//! OAuth) and whether each one is synced.
//!
//! Contract:
//! - A location is **active** (synced) unless its status is `disabled` or `uninstalled`;
//!   [`active`] is the one definition of that rule. `needs_reauth` locations stay in the
//!   list: the engine skips them until a new grant clears the mark.
//! - Public functions take `&Store` and plain data and run their whole transaction
//!   themselves (writes through [`Store::begin_write`], reads through
//!   [`Store::read_pool`]). The `*_in` helpers take a connection already inside a write
//!   transaction; they are for other store modules (the webhook inbox records an install in
//!   the same transaction as its dedupe row) and for `server::ghl_webhook::record` until that
//!   moves to `store::hints`.
//! - The grants' parking of locations (`store::grants`) writes this table too; everything
//!   else goes through here ([`mark_needs_reauth`] and [`status_of`] are for the sync engine,
//!   whose own SQL on this table moves here with the rest of the engine's).

use sqlx::SqliteConnection;

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
    let ids =
        sqlx::query_scalar("SELECT id FROM locations WHERE status NOT IN ('disabled', 'uninstalled') ORDER BY id")
            .fetch_all(store.read_pool())
            .await?;
    Ok(ids)
}

/// Every location row, ordered by id.
pub async fn list(store: &Store) -> Result<Vec<LocationRow>, StoreError> {
    type Row = (String, Option<String>, Option<String>, String, Option<String>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT id, name, company_id, status, status_reason FROM locations ORDER BY id")
            .fetch_all(store.read_pool())
            .await?;
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
    let known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM locations WHERE id = ?1) OR EXISTS (SELECT 1 FROM contacts WHERE location_id = ?1)",
    )
    .bind(location)
    .fetch_one(store.read_pool())
    .await?;
    Ok(known)
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
        sqlx::query(
            "INSERT INTO locations (id, name, status, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = COALESCE(excluded.name, name), updated_at = excluded.updated_at, \
             status = CASE WHEN excluded.status = 'disabled' OR ? THEN excluded.status \
                           WHEN status = 'disabled' THEN 'active' ELSE status END",
        )
        .bind(&location.id)
        .bind(&location.name)
        .bind(status)
        .bind(now)
        .bind(location.pit)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The status of `location_id`'s row (None: no row yet).
pub async fn status_of(store: &Store, location_id: &str) -> Result<Option<String>, StoreError> {
    let status = sqlx::query_scalar("SELECT status FROM locations WHERE id = ?")
        .bind(location_id)
        .fetch_optional(store.read_pool())
        .await?;
    Ok(status)
}

/// Parks a location: `needs_reauth` with `reason` (no personal data), creating its row if
/// needed. The engine does this when GHL refuses the location's token.
pub async fn mark_needs_reauth(store: &Store, location_id: &str, reason: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("location_park").await?;
    sqlx::query(
        "INSERT INTO locations (id, status, status_reason, updated_at) VALUES (?, 'needs_reauth', ?, ?) \
         ON CONFLICT (id) DO UPDATE SET status = 'needs_reauth', status_reason = excluded.status_reason, \
         updated_at = excluded.updated_at",
    )
    .bind(location_id)
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The status of `location_id`'s row (None: no row), read inside a write transaction.
pub(crate) async fn status_in(conn: &mut SqliteConnection, location_id: &str) -> Result<Option<String>, StoreError> {
    let status =
        sqlx::query_scalar("SELECT status FROM locations WHERE id = ?").bind(location_id).fetch_optional(conn).await?;
    Ok(status)
}

/// INSTALL of the app in a location: remember it (and its company). A location whose grant
/// is present and usable becomes `active`; otherwise `needs_reauth` until the OAuth callback
/// stores one. A location that is already active (or disabled) keeps its status. Returns the
/// status the install asked for.
pub(crate) async fn install_in(
    conn: &mut SqliteConnection,
    location_id: &str,
    company_id: Option<&str>,
    now: i64,
) -> Result<&'static str, StoreError> {
    let granted: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM grants WHERE resource_id = ? AND needs_reauth = 0 AND access_token IS NOT NULL)",
    )
    .bind(location_id)
    .fetch_one(&mut *conn)
    .await?;
    let (status, reason) = if granted {
        (status::ACTIVE, None)
    } else {
        (status::NEEDS_REAUTH, Some("installed; waiting for the OAuth grant"))
    };
    sqlx::query(
        "INSERT INTO locations (id, company_id, status, status_reason, updated_at) VALUES (?, ?, ?, ?, ?) \
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
    .execute(&mut *conn)
    .await?;
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
pub(crate) async fn uninstall_in(
    conn: &mut SqliteConnection,
    target: Uninstall<'_>,
    now: i64,
) -> Result<(), StoreError> {
    match target {
        Uninstall::Location { location_id, company_id } => {
            sqlx::query(
                "INSERT INTO locations (id, company_id, status, status_reason, updated_at) \
                 VALUES (?, ?, 'uninstalled', ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET status = 'uninstalled', status_reason = excluded.status_reason, \
                 updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(company_id)
            .bind(UNINSTALL_REASON)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE grants SET needs_reauth = 1, reauth_reason = ?, updated_at = ? WHERE resource_id = ?")
                .bind(UNINSTALL_REASON)
                .bind(now)
                .bind(location_id)
                .execute(&mut *conn)
                .await?;
        }
        Uninstall::Company { company_id } => {
            sqlx::query(
                "UPDATE locations SET status = 'uninstalled', status_reason = ?, updated_at = ? WHERE company_id = ?",
            )
            .bind(UNINSTALL_REASON)
            .bind(now)
            .bind(company_id)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE grants SET needs_reauth = 1, reauth_reason = ?, updated_at = ? \
                 WHERE resource_id = ? OR company_id = ?",
            )
            .bind(UNINSTALL_REASON)
            .bind(now)
            .bind(company_id)
            .bind(company_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), std::time::Duration::from_secs(5)).await.unwrap();
        (dir, store)
    }

    fn configured(id: &str, enabled: bool, pit: bool) -> ConfiguredLocation {
        ConfiguredLocation { id: id.into(), name: Some(format!("name {id}")), enabled, pit }
    }

    #[tokio::test]
    async fn active_locations_exclude_disabled_and_uninstalled_ones_only() {
        let (_dir, store) = store().await;
        register_configured(
            &store,
            &[configured("a", true, true), configured("b", false, true), configured("c", true, false)],
        )
        .await
        .unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        uninstall_in(&mut tx, Uninstall::Location { location_id: "d", company_id: None }, 1).await.unwrap();
        install_in(&mut tx, "e", Some("co"), 1).await.unwrap();
        tx.commit().await.unwrap();
        // `e` has no grant: needs_reauth, still listed (the engine skips it until a grant).
        assert_eq!(active(&store).await.unwrap(), ["a", "c", "e"]);
        let rows = list(&store).await.unwrap();
        assert_eq!(rows.len(), 5);
        let e = rows.iter().find(|r| r.id == "e").unwrap();
        assert_eq!((e.status.as_str(), e.company_id.as_deref()), (status::NEEDS_REAUTH, Some("co")));
        assert!(is_known(&store, "d").await.unwrap());
        mark_needs_reauth(&store, "a", "token refused").await.unwrap();
        assert_eq!(status_of(&store, "a").await.unwrap().as_deref(), Some(status::NEEDS_REAUTH));
        assert_eq!(status_of(&store, "zz").await.unwrap(), None);
        assert!(!is_known(&store, "zz").await.unwrap());
    }

    #[tokio::test]
    async fn registering_again_re_enables_and_pit_locations_drop_a_reauth_mark() {
        let (_dir, store) = store().await;
        register_configured(&store, &[configured("pit", false, true), configured("oauth", true, false)]).await.unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        sqlx::query("UPDATE locations SET status = 'needs_reauth'").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        register_configured(&store, &[configured("pit", true, true), configured("oauth", true, false)]).await.unwrap();
        let rows = list(&store).await.unwrap();
        let status_of = |id: &str| rows.iter().find(|r| r.id == id).unwrap().status.clone();
        assert_eq!(status_of("pit"), status::ACTIVE);
        assert_eq!(status_of("oauth"), status::NEEDS_REAUTH, "an OAuth location waits for a new install");
    }

    #[tokio::test]
    async fn a_company_uninstall_stops_every_location_of_the_company() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write("test").await.unwrap();
        install_in(&mut tx, "a", Some("co"), 1).await.unwrap();
        install_in(&mut tx, "b", Some("co"), 1).await.unwrap();
        install_in(&mut tx, "c", Some("other"), 1).await.unwrap();
        uninstall_in(&mut tx, Uninstall::Company { company_id: "co" }, 2).await.unwrap();
        assert_eq!(status_in(&mut tx, "a").await.unwrap().as_deref(), Some(status::UNINSTALLED));
        assert_eq!(status_in(&mut tx, "zz").await.unwrap(), None);
        tx.commit().await.unwrap();
        assert_eq!(active(&store).await.unwrap(), ["c"]);
    }
}
