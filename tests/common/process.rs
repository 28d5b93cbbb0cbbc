//! A `waxwing serve` process run from the built binary, for tests that
//! kill it (SIGKILL) and start it again on the same files.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, DOMAIN};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `waxwing serve` process on files in a temporary directory.
pub struct Waxwing {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub c2s: SocketAddr,
    pub child: Option<Child>,
}

impl Waxwing {
    /// Writes the config and creates the accounts (not started yet).
    pub fn new(users: &[(&str, &str)]) -> Waxwing {
        let dir = tempfile::tempdir().unwrap();
        let c2s: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("waxwing.toml");
        // A Rust string literal of an ASCII path is a valid TOML basic string.
        let q = |s: String| format!("{s:?}");
        fs::write(
            &config,
            format!(
                "log_level = \"debug\"\n\
                 [[host]]\ndomain = \"{DOMAIN}\"\n\
                 [database]\nurl = {}\n\
                 [tls]\ndev_cert_dir = {}\n\
                 [c2s]\nlisten = [\"{c2s}\"]\nlisten_tls = [\"{tls}\"]\n\
                 [http]\nlisten = []\nlisten_tls = []\n",
                q(format!(
                    "sqlite://{}",
                    dir.path().join("waxwing.db").display()
                )),
                q(dir.path().join("certs").display().to_string()),
            ),
        )
        .unwrap();
        let w = Waxwing {
            dir,
            config,
            c2s,
            child: None,
        };
        for (user, password) in users {
            w.ctl(&["user", "add", &format!("{user}@{DOMAIN}"), password]);
        }
        w
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_waxwing"));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    pub fn ctl(&self, args: &[&str]) {
        let out = self
            .command()
            .arg("ctl")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "waxwing ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("waxwing.log")
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Starts `waxwing serve` and waits until the c2s port accepts.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command()
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "waxwing serve exited during start: {status}\n{}",
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&self.c2s, Duration::from_secs(1)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not accepting after {START_TIMEOUT:?}\n{}",
                self.c2s,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no graceful shutdown, no chance to flush anything.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("not running");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}

impl Drop for Waxwing {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- waxwing log ---\n{}", self.log_tail());
        }
    }
}
