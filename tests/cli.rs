//! The `waxwing` binary's commands: check-config, ctl user …, ctl listings
//! without a server, --version.

use std::io::Write;
use std::process::{Command, Stdio};

fn waxwing() -> Command {
    Command::new(env!("CARGO_BIN_EXE_waxwing"))
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("waxwing.toml");
    let body = format!(
        "[[host]]\ndomain = \"example.org\"\n[database]\nurl = \"sqlite://{}/db.sqlite\"\n{extra}",
        dir.display()
    );
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn version_is_printed() {
    let out = waxwing().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_reports_every_problem_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "");
    let out = waxwing()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "log_level = \"info\"\nlisten = 1\n[c2s]\nidle_timeout = -5\nmystery = true\n",
    )
    .unwrap();
    let out = waxwing()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: unknown key 'listen'"), "{err}");
    assert!(err.contains("line 4: c2s.idle_timeout"), "{err}");
    assert!(err.contains("line 5: unknown key 'c2s.mystery'"), "{err}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/waxwing.example.toml");
    let out = waxwing()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ctl_user_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let run = |args: &[&str]| {
        let out = waxwing()
            .arg("ctl")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert!(run(&["user", "add", "alice@example.org", "pw1"]).0);
    let (ok, msg) = run(&["user", "add", "alice@example.org", "pw1"]);
    assert!(!ok && msg.contains("already exists"), "{msg}");
    let (ok, msg) = run(&["user", "add", "eve@not-ours.org", "pw"]);
    assert!(!ok && msg.contains("not a configured host"), "{msg}");

    // The password can come from stdin, so it stays out of shell history.
    let mut child = waxwing()
        .arg("ctl")
        .arg("--config")
        .arg(&cfg)
        .args(["user", "add", "Bob@Example.org"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (ok, list) = run(&["user", "list"]);
    assert!(ok);
    assert_eq!(
        list.trim(),
        "alice@example.org\nbob@example.org",
        "JIDs are normalised"
    );
    assert!(run(&["user", "passwd", "alice@example.org", "pw2"]).0);
    let (ok, msg) = run(&["user", "passwd", "nobody@example.org", "x"]);
    assert!(!ok && msg.contains("does not exist"), "{msg}");
    assert!(run(&["user", "del", "alice@example.org"]).0);
    let (_, list) = run(&["user", "list", "example.org"]);
    assert_eq!(list.trim(), "bob@example.org");
}

#[test]
fn ctl_listing_without_a_running_server_fails_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    for args in [&["stats"][..], &["sessions", "list"], &["s2s", "list"]] {
        let out = waxwing()
            .arg("ctl")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            format!(
                "no running server at {}/waxwing.sock (is it started with this config?)",
                dir.path().display()
            ),
            "{args:?}"
        );
        assert!(out.stdout.is_empty());
    }
    // Listings never touch the database.
    assert!(!dir.path().join("db.sqlite").exists());

    // Disabled channel: said so.
    let cfg = write_config(dir.path(), "[admin]\nsocket = \"\"\n");
    let out = waxwing()
        .args(["ctl", "--config"])
        .arg(&cfg)
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
}
