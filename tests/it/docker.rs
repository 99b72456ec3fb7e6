//! The container as documented, without Docker (no engine runs on our build machines): the
//! binary runs with the Dockerfile's environment, entrypoint and health check, plus the exact
//! arguments of the README's `docker run` or of `deploy/docker-compose.yml`. Container paths
//! map to the repository (bind mounts, files the image copies) or to a temporary directory
//! (volumes); the only changes are the listener (a free loopback port instead of 0.0.0.0),
//! GHL's address (the sandbox) and the example location and token (the sandbox's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::{
    fast_ghl, signal, spawn_with_only, start_sandbox, wait_for_search, wait_until_healthy, wait_with_limit,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// What the image's final stage declares.
#[derive(Debug, Default)]
struct Image {
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
    /// (container path, repository path) of files copied from the build context.
    files: Vec<(String, PathBuf)>,
    /// Where the binary built in the first stage is copied.
    binary: String,
}

/// How a container is started: its environment, mounts and published port.
#[derive(Debug, Default)]
struct Run {
    env: Vec<(String, String)>,
    /// (container path, source): a host path or a named volume.
    mounts: Vec<(String, Mount)>,
    /// The container port of `-p` / `ports:`.
    published: Option<u16>,
    healthcheck: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum Mount {
    Host(PathBuf),
    Volume(String),
}

/// Dockerfile instructions with continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (pending.is_empty() && line.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(' ').unwrap_or((&full, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
    }
    out
}

fn json_words(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("expected the exec form [\"…\"], got {args:?}: {e}"))
}

fn parse_image() -> Image {
    let text = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).unwrap();
    let all = instructions(&text);
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let mut image = Image::default();
    for (keyword, args) in &all[last_from + 1..] {
        match keyword.as_str() {
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (key, value) = pair.split_once('=').unwrap();
                    image.env.push((key.to_owned(), value.to_owned()));
                }
            }
            "ENTRYPOINT" => image.entrypoint = json_words(args),
            "CMD" => image.cmd = json_words(args),
            "HEALTHCHECK" => image.healthcheck = json_words(args.split_once("CMD ").unwrap().1),
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (sources, dest) = words.split_at(words.len() - 1);
                if sources[0].starts_with("--from=") {
                    image.binary = dest[0].to_owned();
                } else {
                    assert_eq!(sources.len(), 1, "one file per COPY in the runtime stage: {args}");
                    image.files.push((dest[0].to_owned(), Path::new(REPO).join(sources[0])));
                }
            }
            _ => {}
        }
    }
    image
}

fn mount(spec: &str, relative_to: &Path) -> (String, Mount) {
    let mut parts = spec.split(':');
    let (source, target) = (parts.next().unwrap(), parts.next().unwrap().to_owned());
    let source = if source.starts_with('/') || source.starts_with('.') {
        Mount::Host(relative_to.join(source))
    } else {
        Mount::Volume(source.to_owned())
    };
    (target, source)
}

fn container_port(spec: &str) -> u16 {
    spec.trim_matches('"').rsplit(':').next().unwrap().parse().unwrap()
}

/// The README's `docker run`, word by word (run from the repository: `$PWD` is the repo).
fn readme_docker_run() -> Run {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let section = readme.split("## Running in Docker").nth(1).unwrap();
    let start = section.find("docker run").unwrap();
    let mut command = String::new();
    for line in section[start..].lines() {
        match line.trim().strip_suffix('\\') {
            Some(part) => command.push_str(part),
            None => {
                command.push_str(line.trim());
                break;
            }
        }
        command.push(' ');
    }
    let words: Vec<String> =
        command.split_whitespace().map(|w| w.trim_matches('"').replace("$PWD", REPO)).collect::<Vec<_>>();
    assert_eq!(words[..2], ["docker", "run"]);
    let mut run = Run::default();
    let mut rest = words[2..].iter();
    let mut image = None;
    while let Some(word) = rest.next() {
        match word.as_str() {
            "-d" => {}
            "--name" => drop(rest.next()),
            "-p" => run.published = Some(container_port(rest.next().unwrap())),
            "-v" => run.mounts.push(mount(rest.next().unwrap(), Path::new("/"))),
            "-e" => {
                let (key, value) = rest.next().unwrap().split_once('=').unwrap();
                run.env.push((key.to_owned(), value.to_owned()));
            }
            other if other.starts_with('-') => panic!("the test does not know `docker run {other}`; teach it"),
            other => image = Some(other.to_owned()),
        }
    }
    assert_eq!(image.as_deref(), Some("ghl-sync"), "the image built by `docker build -t ghl-sync .`");
    run
}

/// `deploy/docker-compose.yml`'s one service; `${VAR:?…}` comes from `shell`.
fn compose_service(shell: &[(&str, &str)]) -> Run {
    let dir = Path::new(REPO).join("deploy");
    let text = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    let mut run = Run::default();
    let mut section = "";
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if indent == 4 {
            section = line.split(':').next().unwrap();
            continue;
        }
        let item = line.strip_prefix("- ").map(|i| i.trim_matches('"'));
        match (section, item) {
            ("environment", Some(item)) => {
                let (key, value) = item.split_once('=').unwrap();
                let value = match value.strip_prefix("${") {
                    Some(reference) => {
                        let var = reference.split([':', '}']).next().unwrap();
                        shell.iter().find(|(k, _)| *k == var).map(|(_, v)| (*v).to_owned()).unwrap()
                    }
                    None => value.to_owned(),
                };
                run.env.push((key.to_owned(), value));
            }
            ("volumes", Some(item)) => run.mounts.push(mount(item, &dir)),
            ("ports", Some(item)) => run.published = Some(container_port(item)),
            ("healthcheck", None) if line.starts_with("test:") => {
                let words = json_words(line.trim_start_matches("test:").trim());
                assert_eq!(words[0], "CMD");
                run.healthcheck = Some(words[1..].to_vec());
            }
            _ => {}
        }
    }
    run
}

/// A running "container": the daemon process and what the health check needs.
struct Container {
    child: std::process::Child,
    env: Vec<(String, String)>,
    healthcheck: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Starts the image's entrypoint the way `run` describes, against the GHL at `ghl`.
fn start(image: &Image, run: &Run, ghl: url::Url, location: &str, pit: &str) -> Container {
    let dir = tempfile::tempdir().unwrap();
    let mut mounts = run.mounts.clone();
    mounts.sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
    let host = |path: &str| -> PathBuf {
        for (target, source) in &mounts {
            if let Some(rest) = path.strip_prefix(target.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                let base = match source {
                    Mount::Host(path) => path.clone(),
                    Mount::Volume(name) => dir.path().join("volumes").join(name),
                };
                std::fs::create_dir_all(&base).unwrap();
                return base.join(rest.trim_start_matches('/'));
            }
        }
        match image.files.iter().find(|(target, _)| target == path) {
            Some((_, source)) => source.clone(),
            None => dir.path().join("rootfs").join(path.trim_start_matches('/')),
        }
    };
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let mut env: Vec<(String, String)> = Vec::new();
    for (key, value) in image.env.iter().chain(&run.env) {
        let value = match key.as_str() {
            "GHL_SYNC__SERVER__LISTEN" => {
                let listen: std::net::SocketAddr = value.parse().unwrap();
                assert!(listen.ip().is_unspecified(), "in a container the listener must take outside connections");
                assert_eq!(run.published, Some(listen.port()), "the published port is the one the daemon listens on");
                format!("127.0.0.1:{port}")
            }
            "GHL_SYNC_LOCATION_ID" => location.to_owned(),
            "GHL_SYNC_PIT" => pit.to_owned(),
            _ if value.starts_with('/') => host(value).to_string_lossy().into_owned(),
            _ => value.clone(),
        };
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value));
    }
    env.push(("GHL_SYNC__GHL__BASE_URL".into(), ghl.to_string()));
    let config = &env.iter().find(|(k, _)| k == "GHL_SYNC_CONFIG").unwrap().1;
    assert!(Path::new(config).is_file(), "the config the image reads ({config}) is not there");
    assert_eq!(image.entrypoint[0], image.binary, "the entrypoint is the binary the image copies");
    let args: Vec<&str> = image.entrypoint[1..].iter().chain(&image.cmd).map(String::as_str).collect();
    let child = spawn_with_only(&args, &env);
    let healthcheck = run.healthcheck.clone().unwrap_or_else(|| image.healthcheck.clone());
    assert_eq!(healthcheck[0], image.binary, "the health check runs the image's binary");
    Container { child, env, healthcheck, _dir: dir }
}

/// Start, healthy, syncing, `docker stop` (SIGTERM, killed after 10 s): the whole life.
async fn lives_as_documented(run: impl FnOnce(&str, &str) -> Run) {
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let first = sandbox.ghl.locations()[0].clone();
    let image = parse_image();
    let run = run(&first.id, &first.pit);
    let mut container = start(&image, &run, sandbox.ghl_url(), &first.id, &first.pit);
    let (container, healthy) = tokio::task::spawn_blocking(move || {
        let healthy = wait_until_healthy(&mut container.child, &container.healthcheck[1..], &container.env);
        (container, healthy)
    })
    .await
    .unwrap();
    if let Err(error) = healthy {
        let (_, _, stderr) = wait_with_limit(container.child, Duration::from_secs(5));
        panic!("{error}:\n{stderr}");
    }
    wait_for_search(&sandbox, Duration::from_secs(30)).await;
    signal(&container.child, "TERM");
    // `docker stop` kills after 10 s.
    let child = container.child;
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(10))).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ghl-sync stopped"), "{stderr}");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
    assert!(!stderr.contains(&first.pit), "the token leaked into the logs");
    assert!(!stderr.contains("Some("), "a Debug-printed Option in the logs:\n{stderr}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_docker_run_starts_a_healthy_daemon_that_syncs_and_stops_on_sigterm() {
    if crate::helpers::sqlite_only("the shipped config keeps the store in a SQLite file") {
        return;
    }
    lives_as_documented(|_, _| readme_docker_run()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_service_starts_a_healthy_daemon_that_syncs_and_stops_on_sigterm() {
    if crate::helpers::sqlite_only("the shipped config keeps the store in a SQLite file") {
        return;
    }
    lives_as_documented(|location, pit| compose_service(&[("GHL_SYNC_LOCATION_ID", location), ("GHL_SYNC_PIT", pit)]))
        .await;
}
