//! The admin socket's requests that change the running server (`waxwing
//! ctl user disable|enable`, `ctl session kick`, `ctl announce`), done by
//! the same [`super::actions`] the XEP-0133 commands call.
//!
//! Request lines: `user disable JID`, `user enable JID`, `session kick
//! JID` (a full JID ends that session, a bare one all of the account's),
//! `announce TEXT` (to every host; TEXT is the rest of the line with `\n`
//! for a line break and `\\` for a backslash, see [`escape`]), `room list`
//! (room JID, occupants, persistent) and `room destroy ROOM [REASON]`
//! (REASON escaped as TEXT is).

use jid::Jid;

use super::actions;
use crate::server::Server;

/// One answer: rows of fields, or the error line's message.
pub type Answer = Result<Vec<Vec<String>>, String>;

/// Makes announcement text one request line: `\` and line breaks escaped.
pub fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\r', "")
        .replace('\n', "\\n")
}

/// The inverse of [`escape`]; a lone or unknown escape is kept as written.
pub fn unescape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Answers `line` if it is one of these requests (None: not ours).
pub async fn answer(server: &Server, line: &str) -> Option<Answer> {
    let line = line.trim();
    let mut words = line.splitn(3, char::is_whitespace);
    let (first, second) = (words.next()?, words.next().unwrap_or_default());
    let rest = words.next().unwrap_or_default().trim();
    let message = |e: crate::stanza::StanzaError| {
        e.text
            .unwrap_or_else(|| e.condition.wire_name().to_string())
    };
    Some(match (first, second) {
        ("user", "disable" | "enable") => {
            let jid = match actions::local_account(server, rest) {
                Ok(j) => j,
                Err(e) => return Some(Err(message(e))),
            };
            let done = if second == "disable" {
                actions::disable_user(server, &jid).await
            } else {
                actions::enable_user(server, &jid).await
            };
            done.map(|()| vec![vec![format!("{jid} {second}d")]])
                .map_err(message)
        }
        ("session", "kick") => {
            if let Err(e) = actions::local_account(server, rest) {
                return Some(Err(message(e)));
            }
            match Jid::new(rest) {
                Ok(jid) => Ok(vec![vec![format!(
                    "{} sessions ended",
                    actions::end_sessions(server, &jid)
                )]]),
                Err(e) => Err(format!("bad JID: {e}")),
            }
        }
        ("announce", _) => {
            // The text starts after "announce": the second word is its first.
            let text = unescape(line["announce".len()..].trim());
            if text.is_empty() {
                return Some(Err("nothing to announce".into()));
            }
            let max = server.config().admin.max_announcement_bytes;
            if text.len() > max {
                return Some(Err(format!("an announcement has at most {max} bytes")));
            }
            let domains = server.domains();
            let mut hosts: Vec<&String> = domains
                .iter()
                .filter(|d| server.is_local_domain(d))
                .collect();
            hosts.sort();
            let reached: usize = hosts
                .into_iter()
                .map(|h| actions::announce(server, h, &text))
                .sum();
            Ok(vec![vec![format!("sent to {reached} sessions")]])
        }
        ("room", "list") if rest.is_empty() => match muc(server) {
            Ok(m) => m.control.list().await.map(|rooms| {
                rooms
                    .into_iter()
                    .map(|(jid, n, persistent)| {
                        vec![
                            jid,
                            n.to_string(),
                            if persistent { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect()
            }),
            Err(e) => Err(e),
        },
        ("room", "destroy") => {
            let (room, reason) = match rest.split_once(char::is_whitespace) {
                Some((r, why)) => (r, Some(unescape(why.trim())).filter(|w| !w.is_empty())),
                None => (rest, None),
            };
            let room = match jid::BareJid::new(room) {
                Ok(j) if j.node().is_some() => j,
                _ => return Some(Err(format!("'{room}' is not a room JID"))),
            };
            match muc(server) {
                Ok(m) => match m.control.destroy(room.to_string(), reason).await {
                    Ok(true) => Ok(vec![vec![format!("{room} destroyed")]]),
                    Ok(false) => Err(format!("no room {room}")),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        _ => return None,
    })
}

fn muc(server: &Server) -> Result<&crate::modules::muc::Muc, String> {
    server
        .features
        .get::<crate::modules::muc::Muc>()
        .ok_or_else(|| "the chat service is off ([muc] enabled = false)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_text_survives_the_line() {
        for t in [
            "plain",
            "two\nlines",
            "back\\slash\\n not a break",
            "\\",
            "",
        ] {
            let e = escape(t);
            assert!(!e.contains('\n'));
            assert_eq!(unescape(&e), t);
        }
    }
}
