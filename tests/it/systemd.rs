//! The systemd path as documented, without systemd as PID 1: `deploy/systemd/install.sh` installs
//! into a temporary root, then the daemon is started the way `deploy/systemd/ghl-sync.service`
//! says (its `Environment=`, `EnvironmentFile=`, `LoadCredential=`/`SetCredential=`,
//! `StateDirectory=`, `ExecStartPre=`, `ExecStart=`), checked healthy, syncing, and stopped with
//! SIGTERM. A credential that cannot be loaded and has no default fails the start as systemd
//! does (243/CREDENTIALS).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::helpers::{
    binary, fast_ghl, signal, spawn_with_only, start_sandbox, wait_for_search, wait_until_healthy, wait_with_limit,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = "ghl-sync.service";

/// A unit's `[Service]` settings that matter for starting it.
#[derive(Debug, Default)]
struct Unit {
    environment: Vec<(String, String)>,
    /// (path, optional: a leading `-`)
    environment_files: Vec<(String, bool)>,
    load_credentials: Vec<(String, String)>,
    set_credentials: Vec<(String, String)>,
    state_directory: Option<String>,
    exec_start_pre: Vec<Vec<String>>,
    exec_start: Vec<String>,
}

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::default();
    let mut service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            service = line == "[Service]";
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| service && !line.starts_with('#')) else {
            continue;
        };
        let words = || value.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        match key {
            "Environment" => {
                let (k, v) = value.split_once('=').unwrap();
                unit.environment.push((k.to_owned(), v.to_owned()));
            }
            "EnvironmentFile" => match value.strip_prefix('-') {
                Some(path) => unit.environment_files.push((path.to_owned(), true)),
                None => unit.environment_files.push((value.to_owned(), false)),
            },
            "LoadCredential" => {
                let (id, path) = value.split_once(':').unwrap();
                unit.load_credentials.push((id.to_owned(), path.to_owned()));
            }
            "SetCredential" => {
                let (id, data) = value.split_once(':').unwrap();
                unit.set_credentials.push((id.to_owned(), data.replace("\\n", "\n")));
            }
            "StateDirectory" => unit.state_directory = Some(value.to_owned()),
            "ExecStartPre" => unit.exec_start_pre.push(words()),
            "ExecStart" => unit.exec_start = words(),
            _ => {}
        }
    }
    unit
}

/// A machine's root directory, as install.sh and the unit see it.
struct Machine {
    root: tempfile::TempDir,
}

impl Machine {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.path().join(absolute.trim_start_matches('/'))
    }

    fn install(&self) {
        let output = Command::new("sh")
            .arg(Path::new(REPO).join("deploy/systemd/install.sh"))
            .arg(binary())
            .env("ROOT", self.root.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "install.sh failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn mode(&self, absolute: &str) -> u32 {
        std::fs::metadata(self.path(absolute)).unwrap().permissions().mode() & 0o777
    }

    /// What systemd would give the unit's processes: its environment and credentials.
    /// `Err` is the start failing as systemd fails it.
    fn prepare(&self, unit: &Unit) -> Result<Vec<(String, String)>, String> {
        let mut env = vec![("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())];
        let mut set = |key: &str, value: String| {
            env.retain(|(k, _)| k != key);
            env.push((key.to_owned(), value));
        };
        for (key, value) in &unit.environment {
            let value = if value.starts_with('/') { self.path(value).to_string_lossy().into() } else { value.clone() };
            set(key, value);
        }
        for (file, optional) in &unit.environment_files {
            match std::fs::read_to_string(self.path(file)) {
                Ok(text) => {
                    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                        let (key, value) = line.split_once('=').unwrap();
                        set(key, value.to_owned());
                    }
                }
                Err(_) if *optional => {}
                Err(error) => return Err(format!("EnvironmentFile={file}: {error}")),
            }
        }
        if let Some(name) = &unit.state_directory {
            let dir = self.path(&format!("/var/lib/{name}"));
            std::fs::create_dir_all(&dir).unwrap();
            set("STATE_DIRECTORY", dir.to_string_lossy().into());
        }
        if !unit.load_credentials.is_empty() || !unit.set_credentials.is_empty() {
            let dir = self.path(&format!("/run/credentials/{UNIT}"));
            std::fs::create_dir_all(&dir).unwrap();
            for (id, path) in &unit.load_credentials {
                let data = match std::fs::read(self.path(path)) {
                    Ok(data) => data,
                    Err(error) => match unit.set_credentials.iter().find(|(set_id, _)| set_id == id) {
                        // "the latter will act as default if the former cannot be retrieved"
                        Some((_, default)) => default.clone().into_bytes(),
                        None => return Err(format!("243/CREDENTIALS: LoadCredential={id}:{path}: {error}")),
                    },
                };
                std::fs::write(dir.join(id), data).unwrap();
            }
            for (id, data) in &unit.set_credentials {
                if !unit.load_credentials.iter().any(|(load_id, _)| load_id == id) {
                    std::fs::write(dir.join(id), data).unwrap();
                }
            }
            set("CREDENTIALS_DIRECTORY", dir.to_string_lossy().into());
        }
        Ok(env)
    }

    /// The unit's command line with the binary mapped into this root.
    fn command<'a>(&self, words: &'a [String]) -> (PathBuf, &'a [String]) {
        (self.path(&words[0]), &words[1..])
    }

    /// Runs one `ExecStartPre=` command to the end: (exit code, stdout + stderr).
    fn run_pre(&self, words: &[String], env: &[(String, String)]) -> (Option<i32>, String) {
        let (program, args) = self.command(words);
        let output = Command::new(program).args(args).env_clear().envs(env.iter().cloned()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), text)
    }
}

fn installed_unit(machine: &Machine) -> Unit {
    parse_unit(&std::fs::read_to_string(machine.path(&format!("/etc/systemd/system/{UNIT}"))).unwrap())
}

#[test]
fn install_creates_what_the_unit_needs_with_private_modes_and_keeps_it_on_a_second_run() {
    if crate::helpers::sqlite_only("the shipped config keeps the store in a SQLite file") {
        return;
    }
    let machine = Machine { root: tempfile::tempdir().unwrap() };
    machine.install();
    assert_eq!(machine.mode("/usr/local/bin/ghl-sync"), 0o755);
    assert_eq!(machine.mode("/etc/ghl-sync/credentials"), 0o700);
    assert_eq!(machine.mode("/etc/ghl-sync/credentials/master_key"), 0o600);
    assert_eq!(machine.mode("/etc/ghl-sync/ghl-sync.env"), 0o600);
    assert!(machine.path("/etc/ghl-sync/ghl-sync.toml").is_file());
    let unit = installed_unit(&machine);
    for (_, path) in &unit.load_credentials {
        assert!(machine.path(path).is_file(), "the unit loads {path}, which the install did not create");
    }
    let key = std::fs::read_to_string(machine.path("/etc/ghl-sync/credentials/master_key")).unwrap();
    std::fs::write(machine.path("/etc/ghl-sync/ghl-sync.env"), "GHL_SYNC_PIT=edited\n").unwrap();
    machine.install();
    assert_eq!(std::fs::read_to_string(machine.path("/etc/ghl-sync/credentials/master_key")).unwrap(), key);
    assert_eq!(std::fs::read_to_string(machine.path("/etc/ghl-sync/ghl-sync.env")).unwrap(), "GHL_SYNC_PIT=edited\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_unit_starts_a_pit_only_daemon_that_syncs_and_stops_on_sigterm() {
    if crate::helpers::sqlite_only("the shipped config keeps the store in a SQLite file") {
        return;
    }
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let location = sandbox.ghl.locations()[0].clone();
    let machine = Machine { root: tempfile::tempdir().unwrap() };
    machine.install();
    // What the operator writes (sudoedit); the last two lines aim it at the sandbox, not GHL.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    std::fs::write(
        machine.path("/etc/ghl-sync/ghl-sync.env"),
        format!(
            "GHL_SYNC_LOCATION_ID={}\nGHL_SYNC_PIT={}\nGHL_SYNC__GHL__BASE_URL={}\nGHL_SYNC__SERVER__LISTEN=127.0.0.1:{port}\n",
            location.id,
            location.pit,
            sandbox.ghl_url()
        ),
    )
    .unwrap();
    let unit = installed_unit(&machine);
    let env = machine.prepare(&unit).unwrap();
    for pre in &unit.exec_start_pre {
        let (code, output) = machine.run_pre(pre, &env);
        assert_eq!(code, Some(0), "ExecStartPre={pre:?}: {output}");
    }
    let (program, args) = machine.command(&unit.exec_start);
    assert_eq!(std::fs::read(&program).unwrap().len(), std::fs::read(binary()).unwrap().len());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = spawn_with_only(&args, &env);
    let (child, healthy) = tokio::task::spawn_blocking(move || {
        let healthy = wait_until_healthy(&mut child, &["health".to_owned()], &env);
        (child, healthy)
    })
    .await
    .unwrap();
    if let Err(error) = healthy {
        let (_, _, stderr) = wait_with_limit(child, Duration::from_secs(5));
        panic!("{error}:\n{stderr}");
    }
    wait_for_search(&sandbox, Duration::from_secs(30)).await;
    assert!(machine.path("/var/lib/ghl-sync/ghl-sync.db").is_file(), "the database lives in the StateDirectory");
    signal(&child, "TERM");
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(10))).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(&location.pit), "the token leaked into the logs");
    sandbox.stop().await;
}

#[test]
fn without_a_master_key_a_pit_install_starts_and_only_oauth_asks_for_the_key() {
    if crate::helpers::sqlite_only("the shipped config keeps the store in a SQLite file") {
        return;
    }
    let machine = Machine { root: tempfile::tempdir().unwrap() };
    machine.install();
    std::fs::write(machine.path("/etc/ghl-sync/ghl-sync.env"), "GHL_SYNC_LOCATION_ID=loc1\nGHL_SYNC_PIT=pit-x\n")
        .unwrap();
    let unit = installed_unit(&machine);
    let validate = |machine: &Machine| {
        let env = machine.prepare(&unit).expect("the unit must start (no 243/CREDENTIALS)");
        machine.run_pre(&unit.exec_start_pre[0], &env)
    };
    let oauth = "GHL_SYNC__GHL__OAUTH__CLIENT_ID=app\nGHL_SYNC__GHL__OAUTH__CLIENT_SECRET=s\n";

    // With the key install.sh created, OAuth finds it through the credential, no config key needed.
    std::fs::write(
        machine.path("/etc/ghl-sync/ghl-sync.env"),
        format!("GHL_SYNC_LOCATION_ID=loc1\nGHL_SYNC_PIT=pit-x\n{oauth}"),
    )
    .unwrap();
    assert_eq!(validate(&machine).0, Some(0), "{}", validate(&machine).1);

    // The key file is gone: the PIT install still starts; OAuth says what is missing.
    std::fs::remove_file(machine.path("/etc/ghl-sync/credentials/master_key")).unwrap();
    let (code, output) = validate(&machine);
    assert_eq!(code, Some(78), "{output}");
    assert!(output.contains("store.master_key: OAuth tokens are stored encrypted"), "{output}");
    std::fs::write(machine.path("/etc/ghl-sync/ghl-sync.env"), "GHL_SYNC_LOCATION_ID=loc1\nGHL_SYNC_PIT=pit-x\n")
        .unwrap();
    let (code, output) = validate(&machine);
    assert_eq!(code, Some(0), "{output}");
}
