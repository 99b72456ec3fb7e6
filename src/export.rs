//! Exports of the snapshot's contacts: the writers behind `ghl-sync export` (`cli::export`)
//! and the scheduled exports of `[export]`.
//!
//! Rows are streamed from the `contacts` table (`store::snapshot::scan_location_contacts`), so
//! memory stays flat whatever the location's size. Both passes of a CSV export run in one read
//! transaction: SQLite's WAL gives them the same snapshot while the daemon keeps syncing.
//!
//! **CSV** (RFC 4180: `,` separated, CRLF line ends, fields with `,` `"` CR or LF quoted, `"`
//! doubled), a header row, then one row per contact with the columns
//! `id, firstName, lastName, email, phone, companyName, tags, dateAdded, dateUpdated` and one
//! `cf.<custom field id>` column per custom field found on any of the location's contacts (a
//! first pass over the rows collects them, sorted by id). Arrays (tags, multi-option custom
//! fields) are joined with `;`, objects are written as JSON, a missing value is an empty field.
//! Values are written as stored: a spreadsheet may read a value starting with `=` as a formula.
//!
//! **JSONL**: one contact record per line, exactly as stored (the normalised GHL contact JSON).
//!
//! Files are written atomically (a temporary file in the same directory, fsync, rename) and are
//! owner-only (0600): they hold personal data.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::ProgressBar;
use serde_json::Value;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, Time};
use tokio_util::sync::CancellationToken;

use crate::config::{ExportFormat, ExportSchedule, ExportSettings};
use crate::store::Store;
use crate::store::snapshot::{self, ScanItem};

/// The fixed CSV columns: (header, field of the GHL contact record).
pub const CSV_COLUMNS: &[&str] =
    &["id", "firstName", "lastName", "email", "phone", "companyName", "tags", "dateAdded", "dateUpdated"];

/// Prefix of the custom field columns (`cf.<id>`).
pub const CUSTOM_FIELD_PREFIX: &str = "cf.";

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub contacts: u64,
    /// Custom field columns (CSV only).
    pub custom_fields: usize,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
        }
    }
}

/// Streams one location's contacts into `out` (not flushed). `bar` counts contacts. Every
/// pass reads the same snapshot (one read transaction, `store::snapshot`), while the daemon
/// keeps syncing; the store's writer is never held.
pub async fn export_location<W: Write + Send>(
    store: &Store,
    location: &str,
    format: ExportFormat,
    out: &mut W,
    bar: &ProgressBar,
) -> anyhow::Result<ExportSummary> {
    let passes = match format {
        ExportFormat::Jsonl => 1,
        // The first pass collects the custom field columns, the second writes.
        ExportFormat::Csv => 2,
    };
    let mut summary = ExportSummary::default();
    let mut found = BTreeSet::new();
    let mut custom: Vec<String> = Vec::new();
    let mut line = String::with_capacity(1024);
    snapshot::scan_location_contacts(store, location, passes, |item| -> anyhow::Result<()> {
        match item {
            ScanItem::Total(total) => bar.set_length(total),
            ScanItem::Pass(0) if format == ExportFormat::Csv => bar.set_message("finding custom fields"),
            ScanItem::Pass(_) => {
                if format == ExportFormat::Csv {
                    custom = std::mem::take(&mut found).into_iter().collect();
                    summary.custom_fields = custom.len();
                    csv_header(&custom, &mut line);
                    out.write_all(line.as_bytes()).context("cannot write the export")?;
                }
                bar.set_position(0);
                bar.set_message("writing");
            }
            ScanItem::Contact { pass: 0, record, .. } if format == ExportFormat::Csv => {
                for field in record.get("customFields").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(id) = field.get("id").and_then(Value::as_str).filter(|id| !found.contains(*id)) {
                        found.insert(id.to_owned());
                    }
                }
                bar.inc(1);
            }
            ScanItem::Contact { contact_id, record, .. } => {
                match format {
                    ExportFormat::Jsonl => {
                        serde_json::to_writer(&mut *out, record).context("cannot write the export")?;
                        out.write_all(b"\n").context("cannot write the export")?;
                    }
                    ExportFormat::Csv => {
                        line.clear();
                        csv_row(contact_id, record, &custom, &mut line);
                        out.write_all(line.as_bytes()).context("cannot write the export")?;
                    }
                }
                summary.contacts += 1;
                bar.inc(1);
            }
        }
        Ok(())
    })
    .await?;
    Ok(summary)
}

/// Exports into `path` atomically: nothing appears at `path` unless the whole export succeeded.
pub async fn export_to_path(
    store: &Store,
    location: &str,
    format: ExportFormat,
    path: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<ExportSummary> {
    let mut file = AtomicFile::create(path)?;
    let summary = export_location(store, location, format, file.writer(), bar).await?;
    tokio::task::spawn_blocking(move || file.commit()).await??;
    Ok(summary)
}

// --- CSV -----------------------------------------------------------------------------------

/// Appends `field` to `out`, quoted when RFC 4180 requires it.
pub fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        for c in field.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The header line (with its CRLF) into `out`.
pub fn csv_header(custom_fields: &[String], out: &mut String) {
    out.clear();
    let custom = custom_fields.iter().map(|id| format!("{CUSTOM_FIELD_PREFIX}{id}"));
    let names = CSV_COLUMNS.iter().map(|c| (*c).to_owned()).chain(custom);
    for (i, name) in names.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_csv_field(out, &name);
    }
    out.push_str("\r\n");
}

/// One contact's line (with its CRLF) appended to `out`.
pub fn csv_row(contact_id: &str, record: &Value, custom_fields: &[String], out: &mut String) {
    for (i, column) in CSV_COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if *column == "id" {
            push_csv_field(out, contact_id);
        } else {
            push_csv_field(out, &text(record.get(*column)));
        }
    }
    let values: HashMap<&str, &Value> = record
        .get("customFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| Some((f.get("id")?.as_str()?, f.get("value").unwrap_or(&Value::Null))))
        .collect();
    for id in custom_fields {
        out.push(',');
        push_csv_field(out, &text(values.get(id.as_str()).copied()));
    }
    out.push_str("\r\n");
}

/// A JSON value as CSV text: arrays joined with `;`, objects as JSON, null/missing empty.
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.iter().map(|v| text(Some(v))).collect::<Vec<_>>().join(";"),
        Some(other) => other.to_string(),
    }
}

// --- Atomic files --------------------------------------------------------------------------

/// A file written under a temporary name in the target's directory and renamed into place on
/// [`commit`](Self::commit). Dropped uncommitted (an error, a cancelled task), the temporary
/// file is removed.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: &Path) -> anyhow::Result<Self> {
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = target.file_name().with_context(|| format!("{} is not a file name", target.display()))?;
        let temp =
            dir.join(format!(".{}.{}-{:08x}.tmp", name.to_string_lossy(), std::process::id(), fastrand::u32(..)));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(&temp).with_context(|| format!("cannot create a file in {}", dir.display()))?;
        Ok(Self { target: target.to_path_buf(), temp, writer: Some(BufWriter::with_capacity(256 * 1024, file)) })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        // Only `commit` (which consumes self) takes the writer.
        self.writer.get_or_insert_with(|| unreachable!("the writer is present until commit"))
    }

    /// Flushes, syncs to disk and renames over the target (blocking: fsync).
    pub fn commit(mut self) -> anyhow::Result<()> {
        let writer = self.writer.take().context("already committed")?;
        let file = writer.into_inner().map_err(|e| e.into_error()).context("cannot write the export")?;
        file.sync_all().context("cannot sync the export to disk")?;
        drop(file);
        std::fs::rename(&self.temp, &self.target)
            .with_context(|| format!("cannot rename the export to {}", self.target.display()))?;
        // The rename itself must survive a crash: sync the directory (best effort).
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = File::open(dir)
        {
            dir.sync_all().ok();
        }
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            self.writer.take();
            std::fs::remove_file(&self.temp).ok();
        }
    }
}

// --- Scheduled exports ---------------------------------------------------------------------

/// Parses `HH:MM` (UTC).
pub fn parse_time_of_day(text: &str) -> Option<Time> {
    Time::parse(text.trim(), format_description!("[hour]:[minute]")).ok()
}

/// The newest scheduled slot at or before `now`: today's (or yesterday's) `at` for nightly, the
/// latest Sunday's for weekly. None when the schedule is off.
pub fn last_slot(schedule: ExportSchedule, at: Time, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let today = now.date().with_time(at).assume_utc();
    match schedule {
        ExportSchedule::Off => None,
        ExportSchedule::Nightly => Some(if today <= now { today } else { today - time::Duration::days(1) }),
        ExportSchedule::Weekly => {
            let sunday = today - time::Duration::days(i64::from(now.weekday().number_days_from_sunday()));
            Some(if sunday <= now { sunday } else { sunday - time::Duration::days(7) })
        }
    }
}

fn period(schedule: ExportSchedule) -> time::Duration {
    match schedule {
        ExportSchedule::Weekly => time::Duration::days(7),
        _ => time::Duration::days(1),
    }
}

/// `contacts-<location>-<UTC timestamp>.<ext>`, e.g. `contacts-loc1-20250105T030000Z.csv`.
pub fn export_file_name(location: &str, at: OffsetDateTime, format: ExportFormat) -> String {
    let stamp = at
        .to_offset(time::UtcOffset::UTC)
        .format(format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_default();
    format!("contacts-{location}-{stamp}.{}", format.extension())
}

/// The timestamp of an export file of `location` (either format), or None for any other file.
pub fn parse_export_file_name(location: &str, name: &str) -> Option<OffsetDateTime> {
    let rest = name.strip_prefix("contacts-")?.strip_prefix(location)?.strip_prefix('-')?;
    let stamp = rest.strip_suffix(".csv").or_else(|| rest.strip_suffix(".jsonl"))?;
    PrimitiveDateTime::parse(stamp, format_description!("[year][month][day]T[hour][minute][second]Z"))
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// `location`'s exports in `dir`, newest first.
pub fn list_exports(dir: &Path, location: &str) -> std::io::Result<Vec<(OffsetDateTime, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(at) = name.to_str().and_then(|n| parse_export_file_name(location, n)) {
            found.push((at, entry.path()));
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Deletes all but the newest `keep` exports of `location`; returns what was deleted.
pub fn rotate(dir: &Path, location: &str, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (_, path) in list_exports(dir, location)?.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Where scheduled exports go: `[export] directory`, else `exports/` next to the database.
pub fn export_directory(store: &Store, settings: &ExportSettings) -> PathBuf {
    settings.directory.clone().unwrap_or_else(|| match store.path().parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("exports"),
        _ => PathBuf::from("exports"),
    })
}

/// The scheduled exports of `[export]`, until `stop`: at each slot every active location's
/// contacts are exported to `contacts-<location>-<UTC timestamp>.<ext>` and older files beyond
/// `keep` are deleted. A slot missed while the daemon was down is caught up at start (when the
/// location has an older export; a location's first export waits for a slot). Failures are
/// logged and retried at the next slot. Returns at once when the schedule is off.
///
/// Only locations `mine` accepts are exported: a replica exports the locations it leases, so
/// each location is exported once per slot however many replicas run (a lease that moves
/// mid-round leaves its slot to the next holder's catch-up, at most 15 minutes later).
pub async fn run_scheduled_exports(
    store: Store,
    settings: ExportSettings,
    mine: crate::sync::engine::Fence,
    stop: CancellationToken,
) {
    let Some(at) = parse_time_of_day(&settings.at) else {
        tracing::warn!(at = %settings.at, "export.at is not HH:MM; scheduled exports are off");
        return;
    };
    if settings.schedule == ExportSchedule::Off {
        return;
    }
    let dir = export_directory(&store, &settings);
    let started = OffsetDateTime::now_utc();
    tracing::info!(directory = %dir.display(), schedule = ?settings.schedule, at = %settings.at, "Scheduled exports on");
    // Sleep in steps so a changed wall clock (suspend, NTP) is noticed.
    const MAX_SLEEP: Duration = Duration::from_secs(15 * 60);
    while !stop.is_cancelled() {
        let now = OffsetDateTime::now_utc();
        let Some(slot) = last_slot(settings.schedule, at, now) else { return };
        match scheduled_round(&store, &settings, &dir, slot, started, &mine, &stop).await {
            Ok(()) => {}
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "Scheduled export round failed"),
        }
        let next = slot + period(settings.schedule);
        let wait = (next - OffsetDateTime::now_utc()).clamp(time::Duration::seconds(1), time::Duration::days(8));
        let wait = Duration::try_from(wait).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn scheduled_round(
    store: &Store,
    settings: &ExportSettings,
    dir: &Path,
    slot: OffsetDateTime,
    started: OffsetDateTime,
    mine: &crate::sync::engine::Fence,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut locations = crate::store::locations::active(store).await?;
    locations.retain(|location| mine(location));
    if locations.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for location in locations {
        let newest = list_exports(dir, &location)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .first()
            .map(|(at, _)| *at);
        let due = match newest {
            Some(newest) => newest < slot,
            None => slot > started,
        };
        if !due {
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let path = dir.join(export_file_name(&location, now, settings.format));
        let hidden = ProgressBar::hidden();
        let export = export_to_path(store, &location, settings.format, &path, &hidden);
        let result = tokio::select! {
            // Dropping the export removes its temporary file.
            () = stop.cancelled() => return Ok(()),
            result = export => result,
        };
        match result {
            Ok(summary) => {
                tracing::info!(location = %location, contacts = summary.contacts, file = %path.display(), "Export written");
                match rotate(dir, &location, settings.keep) {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::info!(location = %location, removed = removed.len(), "Old exports deleted");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(location = %location, error = %error, "Cannot delete old exports"),
                }
            }
            Err(error) => {
                tracing::warn!(location = %location, error = %format!("{error:#}"), "Scheduled export failed");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn field(text: &str) -> String {
        let mut out = String::new();
        push_csv_field(&mut out, text);
        out
    }

    /// The daemon spawns the schedule loop on its task tracker: it must be `Send + 'static`.
    #[allow(dead_code, reason = "a compile-time check")]
    fn scheduled_exports_can_be_spawned(store: Store, settings: ExportSettings, stop: CancellationToken) {
        fn spawnable<T: Send + 'static>(_: &T) {}
        spawnable(&run_scheduled_exports(store, settings, std::sync::Arc::new(|_: &str| true), stop));
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field(""), "");
        assert_eq!(field("+1 555 0100"), "+1 555 0100");
        assert_eq!(field("Acme, Inc"), "\"Acme, Inc\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(field("\""), "\"\"\"\"");
        assert_eq!(field("ünïcödé; semi"), "ünïcödé; semi");
    }

    #[test]
    fn csv_rows_have_fixed_columns_then_custom_fields() {
        let custom = vec!["f1".to_owned(), "f2".to_owned(), "f3".to_owned()];
        let mut header = String::new();
        csv_header(&custom, &mut header);
        assert_eq!(
            header,
            "id,firstName,lastName,email,phone,companyName,tags,dateAdded,dateUpdated,cf.f1,cf.f2,cf.f3\r\n"
        );
        let record = json!({
            "id": "c1", "firstName": "Ann", "lastName": "O\"Neil", "email": "ann@example.com",
            "companyName": "Acme, Inc", "tags": ["vip", "lead"], "dateAdded": "2024-01-01T00:00:00.000Z",
            "customFields": [{"id": "f3", "value": ["a", "b"]}, {"id": "f1", "value": 42}, {"id": "zz", "value": "x"}],
        });
        let mut row = String::new();
        csv_row("c1", &record, &custom, &mut row);
        assert_eq!(
            row,
            "c1,Ann,\"O\"\"Neil\",ann@example.com,,\"Acme, Inc\",vip;lead,2024-01-01T00:00:00.000Z,,42,,a;b\r\n"
        );
    }

    #[test]
    fn export_file_names_round_trip_and_ignore_other_files() {
        let at = datetime!(2025-01-05 03:00:07 UTC);
        let name = export_file_name("loc1", at, ExportFormat::Csv);
        assert_eq!(name, "contacts-loc1-20250105T030007Z.csv");
        assert_eq!(parse_export_file_name("loc1", &name), Some(at));
        assert_eq!(parse_export_file_name("loc1", "contacts-loc1-20250105T030007Z.jsonl"), Some(at));
        assert_eq!(parse_export_file_name("loc", &name), None, "another location's prefix");
        assert_eq!(parse_export_file_name("loc1", "contacts-loc1-20250105T030007Z.csv.tmp"), None);
        assert_eq!(parse_export_file_name("loc1", ".contacts-loc1-20250105T030007Z.csv.1-2.tmp"), None);
        assert_eq!(parse_export_file_name("loc1", "contacts-loc1-latest.csv"), None);
    }

    #[test]
    fn rotation_keeps_the_newest_exports_of_that_location_only() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "contacts-loc1-20250101T030000Z.csv",
            "contacts-loc1-20250102T030000Z.jsonl",
            "contacts-loc1-20250103T030000Z.csv",
            "contacts-loc1-20250104T030000Z.csv",
            "contacts-loc2-20250101T030000Z.csv",
            "notes.txt",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let removed = rotate(dir.path(), "loc1", 2).unwrap();
        assert_eq!(removed.len(), 2);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "contacts-loc1-20250103T030000Z.csv",
                "contacts-loc1-20250104T030000Z.csv",
                "contacts-loc2-20250101T030000Z.csv",
                "notes.txt"
            ]
        );
        assert!(rotate(dir.path(), "loc1", 2).unwrap().is_empty(), "idempotent");
    }

    #[test]
    fn atomic_files_appear_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.csv");
        let mut file = AtomicFile::create(&target).unwrap();
        file.writer().write_all(b"a,b\r\n").unwrap();
        assert!(!target.exists());
        file.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"a,b\r\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");

        let mut dropped = AtomicFile::create(&dir.path().join("other.csv")).unwrap();
        dropped.writer().write_all(b"partial").unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "an abandoned export leaves nothing");
    }

    #[test]
    fn slots_are_the_latest_scheduled_time_at_or_before_now() {
        let at = parse_time_of_day("03:00").unwrap();
        // 2025-01-08 is a Wednesday.
        let now = datetime!(2025-01-08 02:59 UTC);
        assert_eq!(last_slot(ExportSchedule::Nightly, at, now), Some(datetime!(2025-01-07 03:00 UTC)));
        assert_eq!(
            last_slot(ExportSchedule::Nightly, at, datetime!(2025-01-08 03:00 UTC)),
            Some(datetime!(2025-01-08 03:00 UTC))
        );
        assert_eq!(last_slot(ExportSchedule::Weekly, at, now), Some(datetime!(2025-01-05 03:00 UTC)));
        assert_eq!(
            last_slot(ExportSchedule::Weekly, at, datetime!(2025-01-05 02:00 UTC)),
            Some(datetime!(2024-12-29 03:00 UTC))
        );
        assert_eq!(last_slot(ExportSchedule::Off, at, now), None);
        assert!(parse_time_of_day("3am").is_none());
        assert!(parse_time_of_day("25:00").is_none());
    }
}
