//! One statement, two backends: how the store runs the same SQL on SQLite and PostgreSQL.
//!
//! Every store function writes its statements once, in SQL both backends accept, and runs
//! them through [`on_db!`], which compiles the code for each backend: the SQLite arm and the
//! PostgreSQL arm are type-checked separately, so a statement whose parameters or row types
//! do not fit one backend fails to compile rather than at run time on a user's machine.
//!
//! The SQL both accept:
//! - parameters are `$1`, `$2`, … (sqlx's SQLite driver binds `$N` by number);
//! - upserts are `INSERT … ON CONFLICT (…) DO UPDATE/NOTHING`, never `INSERT OR …`;
//! - no two-argument `MAX(a, b)`/`MIN(a, b)` (`GREATEST` on PostgreSQL): use `CASE`, or
//!   pick the text per backend with the `pg` flag [`on_db!`] binds;
//! - integers are 64-bit on both (PostgreSQL columns are `BIGINT`), flags are 0/1 integers,
//!   `SUM` is wrapped in `CAST(… AS BIGINT)` (PostgreSQL sums to NUMERIC);
//! - text compares bytewise on both (PostgreSQL columns are `COLLATE "C"`).
//!
//! The two arms of [`on_db!`] must produce one type: `execute` answers a backend's own result
//! type, so end it with `.map(|done| done.rows_affected())` inside the arm.

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::sqlite::{SqliteConnection, SqlitePool};

/// A value for one backend or the other.
pub enum Db<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// A pool to read from (SQLite's is `query_only`, PostgreSQL's read-only).
pub type Pool<'a> = Db<&'a SqlitePool, &'a PgPool>;

/// A connection inside a write transaction.
pub type Conn<'a> = Db<&'a mut SqliteConnection, &'a mut PgConnection>;

impl Conn<'_> {
    #[allow(dead_code, reason = "for the modules still to be ported (issue 21)")]
    /// The same connection, borrowed again (to pass it to a helper and keep using it).
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Db::Sqlite(c) => Db::Sqlite(&mut **c),
            Db::Postgres(c) => Db::Postgres(&mut **c),
        }
    }
}

/// Runs `$body` with `$c` bound to the backend's pool or connection, compiled once per
/// backend. `on_db!(db, |c| …)` or `on_db!(db, |c, pg| …)`, where `pg` is `true` in the
/// PostgreSQL arm (to pick a statement's text where the dialects differ).
macro_rules! on_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::store::db::Db::Sqlite($c) => $body,
            $crate::store::db::Db::Postgres($c) => $body,
        }
    };
    ($db:expr, |$c:ident, $pg:ident| $body:expr) => {
        match $db {
            $crate::store::db::Db::Sqlite($c) => {
                let $pg = false;
                $body
            }
            $crate::store::db::Db::Postgres($c) => {
                let $pg = true;
                $body
            }
        }
    };
}
pub(crate) use on_db;

/// `SELECT …` of the strings in the JSON array bound as parameter `$n` (its JSON text), for
/// `x IN (…)` with a list of any length: `json_each` on SQLite, `jsonb_array_elements_text`
/// on PostgreSQL.
pub fn json_values(pg: bool, n: usize) -> String {
    if pg {
        format!("SELECT jsonb_array_elements_text(CAST(${n} AS JSONB))")
    } else {
        format!("SELECT value FROM json_each(${n})")
    }
}

/// The JSON array text of `items`, to bind where [`json_values`] reads a list.
pub fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    serde_json::Value::Array(items.iter().map(|item| serde_json::Value::String(item.as_ref().to_owned())).collect())
        .to_string()
}

/// `$1, $2, …, $n` starting after `from` parameters: placeholders for statements built
/// with a variable number of values (`IN (…)`, multi-row `VALUES`).
pub fn params(from: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 4);
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('$');
        out.push_str(&(from + i + 1).to_string());
    }
    out
}

/// `($a, $b, $c), ($d, $e, $f), …`: `rows` tuples of `width` placeholders after `from`.
pub fn rows(from: usize, rows: usize, width: usize) -> String {
    let mut out = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        out.push_str(&params(from + r * width, width));
        out.push(')');
    }
    out
}

/// `sql` as SQLite should run it: its `$1 … $N` as anonymous `?` when they appear in exactly
/// that order, each once, outside quoted text (so they bind alike); else `sql` unchanged.
/// PostgreSQL (`pg`) always gets `sql` unchanged.
///
/// Why: SQLite keeps numbered parameters in a list that `sqlite3_bind_parameter_name`
/// searches from its start, and sqlx's SQLite driver asks it for the name of every parameter
/// of every execution, so a statement of n numbered parameters costs O(n²) at each run. With
/// the page commit's 800-parameter upserts that was 11 % of a backfill's CPU (`perf`, issue
/// 22). Anonymous parameters have no name to look up. The statements built with a variable
/// number of values ([`params`], [`rows`]) go through this.
pub fn for_backend(pg: bool, sql: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if pg {
        return Cow::Borrowed(sql);
    }
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut next, mut copied, mut i) = (1_usize, 0, 0);
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'$' => {
                let digits = bytes[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                if digits > 0 {
                    // `$` and ASCII digits: the slice is on char boundaries.
                    if sql[i + 1..i + 1 + digits].parse::<usize>().ok() != Some(next) {
                        return Cow::Borrowed(sql);
                    }
                    out.push_str(&sql[copied..i]);
                    out.push('?');
                    next += 1;
                    i += 1 + digits;
                    copied = i;
                    continue;
                }
            }
            None => {}
        }
        i += 1;
    }
    if quote.is_some() || next == 1 {
        return Cow::Borrowed(sql);
    }
    out.push_str(&sql[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_gets_anonymous_parameters_only_when_they_bind_alike() {
        let cases = [
            ("SELECT $1, $2 WHERE a IN ($3, $4)", "SELECT ?, ? WHERE a IN (?, ?)"),
            (
                "INSERT INTO t VALUES ($1, 'pending', 0, $2), ($3, '$9', \"$x\", $4)",
                "INSERT INTO t VALUES (?, 'pending', 0, ?), (?, '$9', \"$x\", ?)",
            ),
            // out of order, repeated or with a gap: numbered parameters stay
            ("SELECT $2, $1", "SELECT $2, $1"),
            ("SELECT $1 WHERE a = $1", "SELECT $1 WHERE a = $1"),
            ("SELECT $1, $3", "SELECT $1, $3"),
            // nothing to rewrite, or an unterminated quote
            ("SELECT 1", "SELECT 1"),
            ("SELECT '$1", "SELECT '$1"),
            ("SELECT $10", "SELECT $10"),
        ];
        for (sql, sqlite) in cases {
            assert_eq!(for_backend(false, sql), sqlite, "{sql}");
            assert_eq!(for_backend(true, sql), sql, "{sql}");
        }
        let many = format!("INSERT INTO t VALUES {}", rows(0, 100, 8));
        assert_eq!(for_backend(false, &many).matches('?').count(), 800);
        assert!(!for_backend(false, &many).contains('$'));
    }

    #[test]
    fn placeholders_number_from_the_given_offset() {
        assert_eq!(params(0, 3), "$1, $2, $3");
        assert_eq!(params(2, 2), "$3, $4");
        assert_eq!(params(0, 0), "");
        assert_eq!(rows(1, 2, 2), "($2, $3), ($4, $5)");
    }

    #[test]
    fn lists_bind_as_json_arrays() {
        assert_eq!(json_list(&["a", "b\"c"]), r#"["a","b\"c"]"#);
        assert_eq!(json_list::<String>(&[]), "[]");
    }
}
