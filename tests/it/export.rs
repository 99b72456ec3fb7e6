//! Exports of a synced sandbox: both formats through the library and the CLI, and one round of
//! the scheduled exports (catch-up of a missed slot, atomic files, rotation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ghl_sync::config::{ExportFormat, ExportSchedule, ExportSettings};
use ghl_sync::export::{CSV_COLUMNS, export_to_path, list_exports, run_scheduled_exports};
use ghl_sync::sync::engine::RunOptions;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, fast_ghl, settings_for, spawn, start_sandbox, wait_with_limit, write_config};

/// A minimal RFC 4180 reader (quoted fields with `""`, CRLF or LF line ends).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "a quote inside an unquoted field");
                quoted = true;
            }
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.peek(), Some(&'\n'), "a bare CR outside quotes"),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quoted field");
    assert!(field.is_empty() && row.is_empty(), "the last line has no line end");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_hold_every_contact_once_and_csv_escapes_round_trip() {
    let sandbox = start_sandbox(fast_ghl(120)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let tricky = sandbox.ghl.create_contact(
        &location,
        json!({"firstName": "Zoë \"Z\"", "lastName": "O'Neil, Jr.", "email": "zoe@example.com",
               "companyName": "Acme, Inc\r\nSecond line", "tags": ["vip", "a,b"]}),
    );
    assert!(!tricky.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
    let expected: BTreeSet<String> = sandbox.ghl.contact_ids(&location).into_iter().collect();
    assert_eq!(expected.len(), 121);

    // JSONL: one record per line, every contact once.
    let jsonl = dir.path().join("out.jsonl");
    let summary =
        export_to_path(&app.store, &location, ExportFormat::Jsonl, &jsonl, &ProgressBar::hidden()).await.unwrap();
    assert_eq!(summary.contacts, 121);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let records: BTreeMap<String, Value> = text
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            (record["id"].as_str().unwrap().to_owned(), record)
        })
        .collect();
    assert_eq!(text.lines().count(), 121, "one line per contact");
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), expected, "every contact id once");

    // CSV: header, one row per contact, fields that survive the escaping.
    let csv = dir.path().join("out.csv");
    let summary = export_to_path(&app.store, &location, ExportFormat::Csv, &csv, &ProgressBar::hidden()).await.unwrap();
    assert_eq!(summary.contacts, 121);
    let rows = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    let header = &rows[0];
    assert_eq!(&header[..CSV_COLUMNS.len()], CSV_COLUMNS);
    assert_eq!(header.len(), CSV_COLUMNS.len() + summary.custom_fields);
    assert!(header[CSV_COLUMNS.len()..].iter().all(|h| h.starts_with("cf.")));
    assert_eq!(rows.len(), 1 + 121);
    assert!(rows.iter().all(|r| r.len() == header.len()), "every row has every column");
    let ids: Vec<&String> = rows[1..].iter().map(|r| &r[0]).collect();
    assert_eq!(ids.iter().map(|id| (*id).clone()).collect::<BTreeSet<_>>(), expected);
    assert_eq!(ids.len(), expected.len(), "no contact twice");
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    for row in &rows[1..] {
        let record = &records[&row[0]];
        for name in ["firstName", "lastName", "email", "companyName", "dateAdded"] {
            assert_eq!(row[column(name)], record[name].as_str().unwrap_or(""), "{name} of {}", row[0]);
        }
        let tags: Vec<&str> = record["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(row[column("tags")], tags.join(";"));
    }
    let zoe = rows.iter().find(|r| r[0] == tricky).unwrap();
    assert_eq!(zoe[column("firstName")], "Zoë \"Z\"");
    assert_eq!(zoe[column("companyName")], "Acme, Inc\r\nSecond line");
    // Custom field values land in their column.
    let with_custom = records.values().find(|r| r["customFields"].as_array().is_some_and(|a| !a.is_empty())).unwrap();
    let first = &with_custom["customFields"][0];
    let row = rows.iter().find(|r| r[0] == with_custom["id"].as_str().unwrap()).unwrap();
    let cell = &row[column(&format!("cf.{}", first["id"].as_str().unwrap()))];
    match &first["value"] {
        Value::String(s) => assert_eq!(cell, s),
        Value::Array(_) => assert!(!cell.is_empty()),
        other => assert_eq!(cell, &other.to_string()),
    }
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| { e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp") })
            .count(),
        0,
        "no temporary files left"
    );

    // The CLI, against the same database: stdout and --output, unknown location refused.
    app.store.close().await;
    let cfg =
        write_config(dir.path(), &format!("[store]\n{}", crate::helpers::store_keys(&dir.path().join("ghl-sync.db"))));
    let cfg = cfg.to_str().unwrap();
    // Read stdout while it runs (the export is larger than a pipe's buffer).
    let args = ["export", "--config", cfg, "--location", &location, "--format", "jsonl"].map(str::to_owned);
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::helpers::binary()).args(args).env_remove("RUST_LOG").output().unwrap()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (String::from_utf8(output.stdout).unwrap(), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 121);
    assert!(stderr.contains("121 contact(s)"), "{stderr}");
    let out = dir.path().join("cli.csv");
    let (status, _, stderr) = wait_with_limit(
        spawn(&["export", "--config", cfg, "--location", &location, "--output", out.to_str().unwrap()], &[]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(parse_csv(&std::fs::read_to_string(&out).unwrap()).len(), 122, "csv from the extension");
    let (status, _, stderr) =
        wait_with_limit(spawn(&["export", "--config", cfg, "--location", "nope"], &[]), Duration::from_secs(30));
    assert!(!status.success());
    assert!(stderr.contains("unknown location nope"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_slot_is_caught_up_at_start_and_old_exports_are_rotated() {
    let sandbox = start_sandbox(fast_ghl(30)).await;
    let (_dir, app, exports, locations) = synced_with_an_exports_directory(&sandbox).await;
    // Two old exports of the first location: a nightly slot has passed since, so it is due.
    for stamp in ["20000101T030000Z", "20000102T030000Z"] {
        std::fs::write(exports.join(format!("contacts-{}-{stamp}.csv", locations[0])), "old").unwrap();
    }
    let settings = ExportSettings {
        schedule: ExportSchedule::Nightly,
        at: "03:00".into(),
        // On SQLite the default (exports/ next to the database); PostgreSQL has no such place.
        directory: crate::helpers::on_postgres().then(|| exports.clone()),
        format: ExportFormat::Jsonl,
        keep: 2,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_scheduled_exports(app.store.clone(), settings, Arc::new(|_: &str| true), stop.clone()));
    let started = std::time::Instant::now();
    loop {
        let newest = list_exports(&exports, &locations[0]).unwrap();
        if newest.first().is_some_and(|(_, p)| p.extension().is_some_and(|e| e == "jsonl")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no catch-up export");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();

    let kept = list_exports(&exports, &locations[0]).unwrap();
    assert_eq!(kept.len(), 2, "keep = 2: the oldest export was deleted");
    assert!(kept[1].1.ends_with(format!("contacts-{}-20000102T030000Z.csv", locations[0])));
    let text = std::fs::read_to_string(&kept[0].1).unwrap();
    assert_eq!(text.lines().count(), 30);
    // A location without any export waits for the next slot instead of exporting at start.
    assert!(list_exports(&exports, &locations[1]).unwrap().is_empty());
    assert!(
        std::fs::read_dir(&exports).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")),
        "no temporary files"
    );
}

/// Replicas: a daemon exports only the locations it leases (the filter the app passes is the
/// lease check), so a location is exported once per slot however many replicas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_exports_cover_only_the_locations_this_daemon_holds() {
    let sandbox = start_sandbox(fast_ghl(10)).await;
    let (_dir, app, exports, locations) = synced_with_an_exports_directory(&sandbox).await;
    assert!(locations.len() >= 2);
    // Both locations are due (an export older than the last slot).
    for location in &locations[..2] {
        std::fs::write(exports.join(format!("contacts-{location}-20000101T030000Z.csv")), "old").unwrap();
    }
    let settings = ExportSettings {
        schedule: ExportSchedule::Nightly,
        at: "03:00".into(),
        directory: Some(exports.clone()),
        format: ExportFormat::Jsonl,
        keep: 5,
    };
    let held = locations[1].clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_scheduled_exports(
        app.store.clone(),
        settings,
        Arc::new(move |location: &str| location == held),
        stop.clone(),
    ));
    let started = std::time::Instant::now();
    while list_exports(&exports, &locations[1]).unwrap().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the held location was not exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The round has passed the other location by now (a round is one pass over the list).
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(list_exports(&exports, &locations[0]).unwrap().len(), 1, "a location held elsewhere is not exported");
}

/// A daemon whose store holds every sandbox location (one pass), an empty `exports/` directory
/// next to its store, and the sandbox's location ids.
async fn synced_with_an_exports_directory(
    sandbox: &ghl_sync_sandbox::Sandbox,
) -> (tempfile::TempDir, ghl_sync::app::App, std::path::PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(sandbox, dir.path()))).await.unwrap();
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
    let exports = dir.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let locations = sandbox.ghl.locations().into_iter().map(|l| l.id).collect();
    (dir, app, exports, locations)
}
