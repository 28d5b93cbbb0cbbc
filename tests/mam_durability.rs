//! The archive after a crash: the real `waxwing` binary is killed with
//! SIGKILL once the sender's messages are acknowledged (XEP-0198 `<a/>`)
//! and the recipient has read them, then restarted on the same SQLite
//! file. Every one of them must be in both archives, and the recipient's
//! archive ids must be the stanza-ids it was given.
//!
//! The harness is the one of tests/durability.rs.

mod common;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Client, DOMAIN};
use waxwing::xml::NS_CLIENT;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const NS_SM: &str = "urn:xmpp:sm:3";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_SID: &str = "urn:xmpp:sid:0";
const ALICE: (&str, &str) = ("alice", "alice secret");
const BOB: (&str, &str) = ("bob", "bob secret");
const COUNT: usize = 300;

/// A `waxwing serve` process on files in a temporary directory.
struct Waxwing {
    dir: tempfile::TempDir,
    config: PathBuf,
    c2s: SocketAddr,
    child: Option<Child>,
}

impl Waxwing {
    /// Writes the config and creates the accounts (not started yet).
    fn new(users: &[(&str, &str)]) -> Waxwing {
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
                 [c2s]\nlisten = [\"{c2s}\"]\nlisten_tls = [\"{tls}\"]\n",
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

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_waxwing"));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    fn ctl(&self, args: &[&str]) {
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

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("waxwing.log")
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Starts `waxwing serve` and waits until the c2s port accepts.
    fn start(&mut self) {
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
    fn kill_9(&mut self) {
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

/// The archive ids and bodies of `c`'s whole archive, oldest first.
async fn archive(c: &mut Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let set = if after.is_empty() {
            "<max>250</max>".to_string()
        } else {
            format!("<max>250</max><after>{after}</after>")
        };
        c.send_str(&format!(
            "<iq type='set' id='q'><query xmlns='{NS_MAM}'><set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>"
        ))
        .await;
        loop {
            let e = c.next_element().await;
            if e.is("iq", NS_CLIENT) && e.attr("id") == Some("q") {
                assert_eq!(e.attr("type"), Some("result"), "{e:?}");
                let fin = e.get_child("fin", NS_MAM).unwrap();
                if fin.attr("complete") == Some("true") {
                    return out;
                }
                break;
            }
            if let Some(r) = e.get_child("result", NS_MAM) {
                let id = r.attr("id").unwrap().to_string();
                let body = r
                    .get_child("forwarded", "urn:xmpp:forward:0")
                    .and_then(|f| f.get_child("message", NS_CLIENT))
                    .and_then(|m| m.get_child("body", NS_CLIENT))
                    .map(|b| b.text())
                    .unwrap_or_default();
                after = id.clone();
                out.push((id, body));
            }
        }
    }
}

#[tokio::test]
async fn acknowledged_and_received_messages_survive_kill_9() {
    let mut w = Waxwing::new(&[ALICE, BOB]);
    w.start();
    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("phone")).await;
    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("laptop")).await;
    alice.send_str(&format!("<enable xmlns='{NS_SM}'/>")).await;
    loop {
        let e = alice.next_element().await;
        if e.is("enabled", NS_SM) {
            break;
        }
    }
    // One burst, so many messages share the writer's batches.
    let mut burst = String::new();
    for i in 0..COUNT {
        burst.push_str(&format!(
            "<message type='chat' to='{}@{DOMAIN}' id='k{i}'><body>kept {i}</body></message>",
            BOB.0
        ));
    }
    burst.push_str(&format!("<r xmlns='{NS_SM}'/>"));
    alice.send_str(&burst).await;
    // The server acknowledges every message to its sender…
    loop {
        let e = alice.next_element().await;
        if e.is("a", NS_SM) {
            let h: usize = e.attr("h").unwrap().parse().unwrap();
            if h >= COUNT {
                break;
            }
        }
    }
    // …and the recipient has read every one, with its archive id.
    let mut delivered = Vec::new();
    while delivered.len() < COUNT {
        let e = bob.next_element().await;
        if e.is("message", NS_CLIENT) {
            let ids: Vec<String> = e
                .children()
                .filter(|c| c.is("stanza-id", NS_SID))
                .map(|c| c.attr("id").unwrap().to_string())
                .collect();
            assert_eq!(ids.len(), 1, "{e:?}");
            delivered.push((
                ids[0].clone(),
                e.get_child("body", NS_CLIENT).unwrap().text(),
            ));
        }
    }
    w.kill_9();
    drop((alice, bob));

    w.start();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("kept {i}")).collect();
    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("phone")).await;
    let bobs = archive(&mut bob).await;
    assert_eq!(bobs, delivered);
    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("laptop")).await;
    let alices: Vec<String> = archive(&mut alice)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(alices, expected);

    // `ctl archive purge` beside the running server: nothing before 2000,
    // then everything.
    let alice_jid = format!("{}@{DOMAIN}", ALICE.0);
    w.ctl(&["archive", "purge", &alice_jid, "--before", "2000-01-01"]);
    assert_eq!(archive(&mut alice).await.len(), COUNT);
    w.ctl(&["archive", "purge", &alice_jid]);
    assert!(archive(&mut alice).await.is_empty());
    assert_eq!(archive(&mut bob).await.len(), COUNT);
}
