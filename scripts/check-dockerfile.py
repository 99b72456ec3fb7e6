#!/usr/bin/env python3
"""Replays the Dockerfile's build stages without Docker, cheaply, to catch a broken image build.

Our build machines have no Docker engine, so `docker build` never runs in CI. This script does
what the builder stage does, in a temporary directory:

- WORKDIR, ENV and ARG are applied; COPY copies from the build context (the repository, minus
  what `.dockerignore` excludes) with Docker's rules (a directory source copies its contents);
- RUN runs its shell command as written (`sh -c`), with a `cargo` shim first on PATH: `cargo
  build …` becomes `cargo metadata --offline` (plus `--locked` when the build has it), which
  loads every workspace manifest and checks every declared target path (`[[bench]]`, `[[bin]]`,
  `[lib]`, workspace members) and that `Cargo.lock` is up to date, without compiling anything;
  `--bin NAME` must name a binary target. Every other cargo command runs for real.

Then the runtime stage is checked: every `COPY --from=<stage>` source must be something that
stage produced (a file it has, or `<workdir>/target/release/<bin>` of a bin it built), and every
plain `COPY` source must exist in the build context and not be excluded by `.dockerignore`.

Usage: scripts/check-dockerfile.py [Dockerfile] (default: the repository's). Exit 0 when the
replay passes, 1 with the failing step otherwise. Takes a few seconds.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The shim: `cargo build ARGS` -> a manifest-only check; anything else -> the real cargo.
CARGO_SHIM = r"""#!/bin/sh
if [ "$1" = "build" ]; then
  shift
  locked=""
  bins=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --locked) locked="--locked" ;;
      --bin) shift; bins="$bins $1" ;;
      --bin=*) bins="$bins ${1#--bin=}" ;;
    esac
    shift
  done
  # Only this platform's dependencies: the others are not downloaded here.
  host=$(rustc -vV | sed -n 's/^host: //p')
  "$REAL_CARGO" metadata --offline $locked --format-version 1 --filter-platform "$host" > "$SHIM_LOG.json" || exit $?
  # `cargo metadata` lists declared targets without checking their files; `cargo build` does.
  python3 "$CHECKER" --targets "$SHIM_LOG.json" || exit 101
  printf '%s|%s\n' "$PWD" "$bins" >> "$SHIM_LOG"
  exit 0
fi
exec "$REAL_CARGO" "$@"
"""


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> list[Stage]:
    """Splits a Dockerfile into stages of instructions (continuations joined, comments dropped)."""
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            if keyword not in ("ARG",):
                raise SystemExit(f"Dockerfile:{start}: {keyword} before the first FROM")
        else:
            stages[-1].instructions.append(Instruction(start, keyword, args))
    if pending:
        raise SystemExit("Dockerfile: the last instruction ends with a continuation")
    return stages


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.rstrip("/").lstrip("/"))
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a path is excluded when it or one of its parents matches the
    last matching pattern (patterns starting with `!` re-include)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if any(fnmatch.fnmatchcase(prefix, body) or fnmatch.fnmatchcase(prefix, body.replace("**/", "")) for prefix in prefixes):
            excluded = not negate
    return excluded


def split_args(args: str) -> list[str]:
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


class Failure(Exception):
    pass


class Replay:
    def __init__(self, context: Path, root: Path):
        self.context = context
        self.root = root  # the stage's filesystem
        self.workdir = "/"
        self.env: dict[str, str] = {}
        self.patterns = dockerignore(context)
        # (host directory, --bin names) of every `cargo build` the stage ran.
        self.builds: list[tuple[str, list[str]]] = []

    def host(self, container_path: str) -> Path:
        absolute = container_path if container_path.startswith("/") else os.path.join(self.workdir, container_path)
        return self.root / os.path.normpath(absolute).lstrip("/")

    def copy_from_context(self, sources: list[str], dest: str, where: str) -> None:
        target = self.host(dest)
        many = len(sources) > 1 or any(any(c in s for c in "*?[") for s in sources)
        if many and not dest.endswith("/"):
            raise Failure(f"{where}: COPY with several sources needs a destination ending in /")
        for source in sources:
            matches = sorted(self.context.glob(source)) if any(c in source for c in "*?[") else [self.context / source]
            matches = [m for m in matches if m.exists()]
            relative = [os.path.relpath(m, self.context) for m in matches]
            kept = [(m, r) for m, r in zip(matches, relative) if r == "." or not ignored(r, self.patterns)]
            if not kept:
                raise Failure(f"{where}: COPY source {source!r} is not in the build context (or .dockerignore excludes it)")
            for path, rel in kept:
                if path.is_dir():
                    self.copy_tree(path, target)
                else:
                    into = target / path.name if (dest.endswith("/") or target.is_dir()) else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, into)

    def copy_tree(self, source: Path, target: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(source):
            rel_dir = os.path.relpath(dirpath, self.context)
            dirnames[:] = [d for d in dirnames if not ignored(os.path.normpath(os.path.join(rel_dir, d)), self.patterns)]
            out = target / os.path.relpath(dirpath, source)
            out.mkdir(parents=True, exist_ok=True)
            for name in filenames:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if not ignored(rel, self.patterns):
                    shutil.copy2(os.path.join(dirpath, name), out / name, follow_symlinks=False)

    def run(self, command: str, where: str, shim_dir: Path, shim_log: Path) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["PATH"] = f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        env["SHIM_LOG"] = str(shim_log)
        env["CHECKER"] = str(Path(__file__).resolve())
        absolute = [word for word in shlex.split(command) if word.startswith("/")]
        if absolute:
            raise Failure(
                f"{where}: a build-stage RUN uses absolute paths ({', '.join(absolute)}); the replay runs it on this "
                "machine, so keep build-stage paths relative to WORKDIR"
            )
        cwd = self.host(self.workdir)
        cwd.mkdir(parents=True, exist_ok=True)
        # A stage's absolute paths (`/src/...`) are mapped into the temporary root.
        shown = command if len(command) < 160 else command[:157] + "..."
        print(f"  RUN {shown}")
        result = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise Failure(f"{where}: RUN failed (exit {result.returncode}):\n{output}")


def replay(dockerfile: Path, context: Path) -> None:
    stages = parse(dockerfile.read_text())
    if not stages:
        raise Failure("no FROM in the Dockerfile")
    real_cargo = shutil.which("cargo")
    if real_cargo is None:
        raise Failure("cargo is not on PATH")
    names = {stage.name: index for index, stage in enumerate(stages) if stage.name}
    with tempfile.TemporaryDirectory(prefix="check-dockerfile-") as tmp:
        tmp_path = Path(tmp)
        shim_dir = tmp_path / "shim"
        shim_dir.mkdir()
        shim = shim_dir / "cargo"
        shim.write_text(CARGO_SHIM)
        shim.chmod(0o755)
        os.environ["REAL_CARGO"] = real_cargo
        replays: list[Replay] = []
        for index, stage in enumerate(stages):
            label = stage.name or f"stage {index}"
            print(f"{label} (FROM {stage.base})")
            state = Replay(context, tmp_path / f"stage{index}")
            state.root.mkdir()
            shim_log = tmp_path / f"stage{index}.cargo-builds"
            for instruction in stage.instructions:
                where = f"Dockerfile:{instruction.line} ({label})"
                keyword, args = instruction.keyword, instruction.args
                if keyword == "WORKDIR":
                    state.workdir = os.path.join(state.workdir, args)
                    state.host(state.workdir).mkdir(parents=True, exist_ok=True)
                elif keyword in ("ENV", "ARG"):
                    for pair in shlex.split(args):
                        if "=" in pair:
                            key, _, value = pair.partition("=")
                            state.env[key] = value
                elif keyword in ("COPY", "ADD"):
                    words = split_args(args)
                    flags = [w for w in words if w.startswith("--")]
                    paths = [w for w in words if not w.startswith("--")]
                    if len(paths) < 2:
                        raise Failure(f"{where}: COPY needs a source and a destination")
                    sources, dest = paths[:-1], paths[-1]
                    origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                    if origin is None:
                        state.copy_from_context(sources, dest, where)
                        print(f"  COPY {' '.join(sources)} -> {dest}")
                        continue
                    if origin not in names or names[origin] >= index:
                        raise Failure(f"{where}: COPY --from={origin}: no earlier stage of that name")
                    producer = replays[names[origin]]
                    for source in sources:
                        check_produced(producer, source, where)
                        print(f"  COPY --from={origin} {source} (produced by that stage)")
                elif keyword == "RUN":
                    if index < len(stages) - 1:
                        state.run(args, where, shim_dir, shim_log)
                    else:
                        print(f"  RUN (runtime stage, not replayed): {args[:80]}")
                elif keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK", "EXPOSE", "VOLUME", "USER", "STOPSIGNAL", "LABEL", "SHELL"):
                    continue
                else:
                    raise Failure(f"{where}: instruction {keyword} is not understood by this check; extend scripts/check-dockerfile.py")
            for entry in shim_log.read_text().splitlines() if shim_log.exists() else []:
                directory, _, bins = entry.partition("|")
                state.builds.append((directory, bins.split()))
            for directory, bins in state.builds:
                available = bin_targets(Path(directory))
                for name in bins:
                    if name not in available:
                        raise Failure(f"{label}: cargo build --bin {name}: no such binary (bins: {', '.join(sorted(available))})")
            replays.append(state)


def check_produced(producer: Replay, source: str, where: str) -> None:
    """A `COPY --from` source exists in the producing stage, or is a release binary it built."""
    if producer.host(source).exists():
        return
    for built, bins in producer.builds:
        container_dir = "/" + os.path.relpath(built, producer.root)
        release = os.path.join(os.path.normpath(container_dir), "target", "release") + "/"
        if source.startswith(release):
            name = source[len(release):]
            available = bin_targets(Path(built))
            if name in available and (not bins or name in bins):
                return
            raise Failure(
                f"{where}: COPY --from: {source} is not a binary that stage builds "
                f"(built: {', '.join(bins) or 'all bins'}; bins: {', '.join(sorted(available))})"
            )
    raise Failure(f"{where}: COPY --from: {source} does not exist in that stage and no cargo build there produces it")


def bin_targets(workspace: Path) -> set[str]:
    cargo = os.environ["REAL_CARGO"]
    output = subprocess.run(
        [cargo, "metadata", "--offline", "--no-deps", "--format-version", "1"],
        cwd=workspace, capture_output=True, text=True, check=True,
    ).stdout
    metadata = json.loads(output)
    return {t["name"] for p in metadata["packages"] for t in p["targets"] if "bin" in t["kind"]}


DEFAULT_DIRS = {"bench": "benches", "test": "tests", "example": "examples", "bin": "src/bin"}


def declared_targets(manifest: Path) -> list[tuple[str, str, list[Path]]]:
    """(kind, name, candidate paths) of every target a manifest declares explicitly."""
    import tomllib

    data = tomllib.loads(manifest.read_text())
    root = manifest.parent
    package = data.get("package", {}).get("name", "?")
    found = []
    lib = data.get("lib")
    if lib is not None:
        found.append(("lib", lib.get("name", package), [root / lib.get("path", "src/lib.rs")]))
    for kind in ("bin", "bench", "test", "example"):
        for target in data.get(kind, []):
            name = target.get("name", "?")
            if "path" in target:
                candidates = [root / target["path"]]
            else:
                base = root / DEFAULT_DIRS[kind]
                candidates = [base / f"{name}.rs", base / name / "main.rs"]
                if kind == "bin" and name == package:
                    candidates.insert(0, root / "src/main.rs")
            found.append((kind, name, candidates))
    return found


def check_targets(metadata_file: Path) -> int:
    """Every target of every workspace member has its source file, as `cargo build` requires:
    `cargo metadata` silently leaves out a declared target whose file is missing."""
    metadata = json.loads(metadata_file.read_text())
    members = set(metadata["workspace_members"])
    missing = []
    for package in metadata["packages"]:
        if package["id"] not in members:
            continue
        manifest = Path(package["manifest_path"])
        for kind, name, candidates in declared_targets(manifest):
            if not any(path.exists() for path in candidates):
                shown = " or ".join(f"`{os.path.relpath(path, manifest.parent)}`" for path in candidates)
                missing.append(f"error: can't find `{name}` {kind} at {shown} (package {package['name']})")
        for target in package["targets"]:
            if not Path(target["src_path"]).exists():
                missing.append(f"error: can't find `{target['name']}` at `{target['src_path']}`")
    for line in missing:
        print(line, file=sys.stderr)
    return 1 if missing else 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--targets":
        return check_targets(Path(sys.argv[2]))
    dockerfile = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO / "Dockerfile"
    try:
        replay(dockerfile, REPO)
    except Failure as failure:
        print(f"FAIL: {failure}", file=sys.stderr)
        return 1
    print("Dockerfile replay ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
