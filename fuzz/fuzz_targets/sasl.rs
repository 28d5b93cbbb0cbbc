//! SASL message parsing: the SCRAM server (client-first and client-final)
//! and PLAIN.
//!
//! Input: 1 control byte, then NUL-separated fields.
//! - bit 0 clear: PLAIN. The rest is a PLAIN message; a parsed message
//!   built again with `build_plain` is the same bytes.
//! - bit 0 set: SCRAM, hash from bits 1-2, `-PLUS` chosen (bit 3), `-PLUS`
//!   offered (bit 4), channel binding data available (bit 5).
//!   - bit 6 clear ("hostile client"): fields are the client-first and the
//!     client-final messages. The account exists with real credentials,
//!     so the exchange reaches the final step; the final message cannot
//!     succeed (it cannot know the server's random nonce).
//!   - bit 6 set ("real client"): fields are username, password, client
//!     nonce, authzid (empty: none) and a mutation. A `ScramClient` with
//!     those runs the exchange against a server holding credentials for
//!     that password (bit 7: the client uses another password). With an
//!     empty mutation and the right password it must succeed and the
//!     client must accept the server's signature; a wrong password, or the
//!     mutation's bytes inserted into the client-final, must fail.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waxwing::sasl::{
    build_plain, parse_plain, saslprep, ChannelBindingData, ChannelBindingType, ScramClient,
    ScramCredentials, ScramHash, ScramServer,
};

/// Low on purpose: PBKDF2 cost is not what is being tested.
const ITERATIONS: u32 = 2;
const USER: &str = "juliet";
const PASSWORD: &str = "r0m30myr0m30";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        plain(rest);
        return;
    }
    let hash = match (flags >> 1) & 3 {
        0 => ScramHash::Sha1,
        1 => ScramHash::Sha256,
        _ => ScramHash::Sha512,
    };
    let plus = flags & 8 != 0;
    let offers_plus = flags & 16 != 0;
    let cb = if flags & 32 != 0 {
        ChannelBindingData {
            available: vec![
                (ChannelBindingType::TlsExporter, vec![0x42; 32]),
                (ChannelBindingType::TlsServerEndPoint, vec![0x17; 32]),
            ],
        }
    } else {
        ChannelBindingData::none()
    };
    let server = ScramServer::new(hash, plus, offers_plus, cb.clone())
        .with_unknown_user_iterations(ITERATIONS);
    if flags & 64 == 0 {
        hostile_client(server, hash, rest);
    } else {
        real_client(server, hash, plus, &cb, flags & 128 != 0, rest);
    }
});

fn plain(msg: &[u8]) {
    if let Ok(c) = parse_plain(msg) {
        assert!(!c.authcid.is_empty() && !c.password.is_empty());
        assert_eq!(
            build_plain(c.authzid.as_deref(), &c.authcid, &c.password),
            msg,
            "PLAIN parse/build round trip"
        );
    }
    if let Ok(s) = std::str::from_utf8(msg) {
        let _ = saslprep(s);
    }
}

/// Credentials of the one account, per hash, derived once.
fn credentials(hash: ScramHash) -> &'static ScramCredentials {
    static CREDS: OnceLock<[ScramCredentials; 3]> = OnceLock::new();
    let all = CREDS.get_or_init(|| {
        [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512]
            .map(|h| ScramCredentials::derive(h, PASSWORD, b"fuzz-salt-16byte", ITERATIONS))
    });
    match hash {
        ScramHash::Sha1 => &all[0],
        ScramHash::Sha256 => &all[1],
        _ => &all[2],
    }
}

fn hostile_client(mut server: ScramServer, hash: ScramHash, rest: &[u8]) {
    let mut fields = rest.splitn(2, |&b| b == 0);
    let first = fields.next().unwrap_or_default();
    let last = fields.next().unwrap_or_default();
    let Ok(client_first) = server.handle_client_first(first) else {
        // A failed step ends the exchange: nothing later may succeed.
        assert!(server.server_first("", None).is_empty());
        assert!(server.handle_client_final(last).is_err());
        return;
    };
    // As the c2s driver does: credentials only for a known username.
    let creds = (client_first.username == USER).then(|| credentials(hash));
    let server_first = server.server_first(&client_first.username, creds);
    assert!(!server_first.is_empty());
    assert!(
        server.handle_client_final(last).is_err(),
        "a client-final written without the server's nonce was accepted"
    );
    // The exchange is over whatever happened.
    assert!(server.handle_client_final(last).is_err());
}

/// Printable ASCII without ',', as the nonce grammar needs.
fn printable(b: &[u8]) -> String {
    let s: String = b
        .iter()
        .map(|&c| match 0x21 + (c % 94) {
            b',' => '-',
            c => char::from(c),
        })
        .collect();
    if s.is_empty() {
        "n".to_string()
    } else {
        s
    }
}

fn real_client(
    mut server: ScramServer,
    hash: ScramHash,
    plus: bool,
    cb: &ChannelBindingData,
    wrong_password: bool,
    rest: &[u8],
) {
    let mut fields = rest.splitn(5, |&b| b == 0);
    let mut field = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let (username, password, nonce, authzid) = (field(), field(), field(), field());
    let mutation = fields.next().unwrap_or_default();
    let nonce = printable(nonce.as_bytes());
    if username.is_empty() || username.contains('\0') || authzid.contains('\0') {
        return;
    }
    let client_cb = if plus {
        let Some(data) = cb.get(ChannelBindingType::TlsExporter) else {
            return;
        };
        Some((ChannelBindingType::TlsExporter, data.to_vec()))
    } else {
        None
    };
    let client_password = if wrong_password {
        format!("{password}x")
    } else {
        password.clone()
    };
    let mut client = ScramClient::with_nonce(hash, &username, &client_password, client_cb, &nonce);
    if !authzid.is_empty() {
        client = client.with_authzid(&authzid);
    }
    let first = match server.handle_client_first(&client.client_first()) {
        Ok(f) => f,
        Err(e) => panic!("a well-formed client-first was refused: {e:?}"),
    };
    assert_eq!(first.username, username, "username escaping");
    assert_eq!(
        first.authzid.as_deref(),
        (!authzid.is_empty()).then_some(authzid.as_str()),
        "authzid escaping"
    );
    let creds = ScramCredentials::derive(hash, &password, b"salt", ITERATIONS);
    let server_first = server.server_first(&first.username, Some(&creds));
    let mut client_final = match client.handle_server_first(&server_first) {
        Ok(f) => f,
        Err(e) => panic!("client refused our server-first: {e:?}"),
    };
    let mutated = !mutation.is_empty();
    if mutated {
        let at = usize::from(mutation[0]) % (client_final.len() + 1);
        client_final.splice(at..at, mutation.iter().copied());
    }
    let result = server.handle_client_final(&client_final);
    if mutated || wrong_password {
        assert!(
            result.is_err(),
            "server accepted a changed client-final or a wrong password: {:?}",
            String::from_utf8_lossy(&client_final)
        );
    } else {
        let server_final = result.unwrap_or_else(|e| panic!("right password refused: {e:?}"));
        assert_eq!(client.verify_server_final(&server_final), Ok(()));
    }
}
