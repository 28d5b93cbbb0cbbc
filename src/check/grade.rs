//! What clients will show: the XEP-0479 (Compliance Suites 2023) levels
//! of the server columns, Core and Advanced, for each category (IM,
//! Mobile, Web, A/V, each on top of the Core suite), and the lines of
//! Conversations' "Server info" screen.
//!
//! Computed from the server's own feature registry: the default features
//! kept by their `enabled(config)`, exactly as `Server::build` filters
//! them, with their XEPs and account disco features; plus what lives in
//! the transport rather than in a feature (listeners for direct TLS,
//! components, WebSocket/BOSH) and settings a feature reads at run time
//! (stream management's). Every requirement not met names the setting
//! that meets it.

use std::collections::BTreeSet;

use super::Report;
use crate::config::Config;

/// A specification the suites name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Spec {
    Xep(u16),
    Rfc(u16),
    /// XEP-0313 on chat rooms (history from the room's archive).
    MucArchive,
    /// `pubsub#publish-options` on the account (OMEMO keys' access model).
    PublishOptions,
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Spec::Xep(n) => write!(f, "XEP-{n:04}"),
            Spec::Rfc(n) => write!(f, "RFC {n}"),
            Spec::MucArchive => f.write_str("XEP-0313 in chat rooms"),
            Spec::PublishOptions => f.write_str("PEP publish-options"),
        }
    }
}

/// What this configuration offers.
pub fn offered(config: &Config) -> BTreeSet<Spec> {
    let features: Vec<_> = crate::modules::default_features()
        .into_iter()
        .filter(|f| f.enabled(config))
        .collect();
    let mut out: BTreeSet<Spec> = features
        .iter()
        .flat_map(|f| f.xeps().iter().copied())
        .chain(crate::modules::IMPLIED_XEPS.iter().copied())
        .map(Spec::Xep)
        .collect();
    let account_disco = features.iter().flat_map(|f| f.disco().account.iter());
    if account_disco
        .into_iter()
        .any(|f| *f == "http://jabber.org/protocol/pubsub#publish-options")
    {
        out.insert(Spec::PublishOptions);
    }
    // The core of XMPP, TLS (a certificate is always present, at worst
    // the development one) and roster versioning live in the stream code.
    out.extend([
        Spec::Rfc(6120),
        Spec::Rfc(6121),
        Spec::Rfc(7590),
        Spec::Xep(237),
    ]);
    if !config.stream_management.enabled {
        out.remove(&Spec::Xep(198));
    }
    if !config.c2s.listen_tls.is_empty() {
        out.insert(Spec::Xep(368));
    }
    // Components (XEP-0114) are part of the server whether or not a
    // listener is configured yet: one is added with its component.
    out.insert(Spec::Xep(114));
    if !config.http.listen.is_empty() || !config.http.listen_tls.is_empty() {
        out.extend([Spec::Rfc(7395), Spec::Xep(124), Spec::Xep(206)]);
    }
    if config.muc.enabled && config.muc.archive && config.mam.enabled {
        out.insert(Spec::MucArchive);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Core,
    Web,
    Im,
    Mobile,
    Av,
}

/// One row of XEP-0479's tables, server columns.
struct Row {
    suite: Suite,
    what: &'static str,
    /// Met when every spec of one of these alternatives is offered.
    any_of: &'static [&'static [Spec]],
    core: bool,
    advanced: bool,
    /// The setting that meets it.
    enable: &'static str,
}

use Spec::{Rfc, Xep};

const fn row(
    suite: Suite,
    what: &'static str,
    any_of: &'static [&'static [Spec]],
    core: bool,
    advanced: bool,
    enable: &'static str,
) -> Row {
    Row {
        suite,
        what,
        any_of,
        core,
        advanced,
        enable,
    }
}

/// XEP-0479 §2, the server columns (Core, Advanced). Client-only rows
/// (N/A for servers) are left out.
const ROWS: &[Row] = &[
    row(
        Suite::Core,
        "Core features",
        &[&[Rfc(6120)]],
        true,
        true,
        "",
    ),
    row(Suite::Core, "TLS", &[&[Rfc(7590)]], true, true, ""),
    row(
        Suite::Core,
        "Direct TLS",
        &[&[Xep(368)]],
        false,
        true,
        "[c2s] listen_tls = [\"0.0.0.0:5223\"]",
    ),
    row(
        Suite::Core,
        "Feature discovery",
        &[&[Xep(30)]],
        true,
        true,
        "",
    ),
    row(
        Suite::Core,
        "Feature broadcasts",
        &[&[Xep(115)]],
        false,
        true,
        "",
    ),
    row(
        Suite::Core,
        "Server extensibility",
        &[&[Xep(114)]],
        true,
        true,
        "",
    ),
    row(
        Suite::Core,
        "Event publishing",
        &[&[Xep(163)]],
        false,
        true,
        "[pep] enabled = true",
    ),
    row(
        Suite::Web,
        "Web connection mechanisms",
        &[&[Rfc(7395)], &[Xep(206)]],
        true,
        true,
        "[http] listen_tls (or listen behind a proxy)",
    ),
    row(Suite::Im, "Core features", &[&[Rfc(6121)]], true, true, ""),
    row(
        Suite::Im,
        "User avatar compatibility",
        &[&[Xep(398), Xep(153)]],
        false,
        true,
        "[pep] enabled = true",
    ),
    row(Suite::Im, "vcard-temp", &[&[Xep(54)]], true, true, ""),
    row(
        Suite::Im,
        "Outbound message synchronization",
        &[&[Xep(280)]],
        true,
        true,
        "",
    ),
    row(Suite::Im, "User blocking", &[&[Xep(191)]], false, true, ""),
    row(
        Suite::Im,
        "Group chat",
        &[&[Xep(45)]],
        true,
        true,
        "[muc] enabled = true",
    ),
    row(
        Suite::Im,
        "Advanced group chat",
        &[&[Xep(402), Xep(410), Spec::MucArchive]],
        false,
        true,
        "[pep] enabled, [muc] enabled, [muc] archive and [mam] enabled = true",
    ),
    row(
        Suite::Im,
        "Private data via PubSub",
        &[&[Xep(223)]],
        false,
        true,
        "[pep] enabled = true",
    ),
    row(
        Suite::Im,
        "Private XML storage",
        &[&[Xep(49)]],
        false,
        true,
        "",
    ),
    row(
        Suite::Im,
        "Stream management",
        &[&[Xep(198)]],
        false,
        true,
        "[stream_management] enabled = true",
    ),
    row(
        Suite::Im,
        "History storage / retrieval",
        &[&[Xep(313)]],
        false,
        true,
        "[mam] enabled = true",
    ),
    row(
        Suite::Im,
        "File upload",
        &[&[Xep(363)]],
        true,
        true,
        "[upload] enabled = true with an [http] listener",
    ),
    row(
        Suite::Mobile,
        "Stream management",
        &[&[Xep(198)]],
        true,
        true,
        "[stream_management] enabled = true",
    ),
    row(
        Suite::Mobile,
        "Client state indication",
        &[&[Xep(352)]],
        true,
        true,
        "",
    ),
    row(
        Suite::Mobile,
        "Third party push notifications",
        &[&[Xep(357)]],
        false,
        true,
        "[push] enabled = true",
    ),
    row(
        Suite::Av,
        "STUN/TURN server discovery",
        &[&[Xep(215)]],
        true,
        true,
        "an [[external_service]] (your STUN/TURN server)",
    ),
];

/// The rows of `suite` (and of the Core suite) not met at a level.
fn missing<'a>(offered: &BTreeSet<Spec>, suite: Suite, advanced: bool) -> Vec<&'a Row> {
    ROWS.iter()
        .filter(|r| r.suite == suite || r.suite == Suite::Core)
        .filter(|r| if advanced { r.advanced } else { r.core })
        .filter(|r| {
            !r.any_of
                .iter()
                .any(|alt| alt.iter().all(|s| offered.contains(s)))
        })
        .collect()
}

fn describe(rows: &[&Row]) -> (String, String) {
    let found = rows
        .iter()
        .map(|r| {
            let specs: Vec<String> = r.any_of[0].iter().map(Spec::to_string).collect();
            format!("{} ({})", r.what, specs.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut fixes: Vec<&str> = rows
        .iter()
        .map(|r| r.enable)
        .filter(|e| !e.is_empty())
        .collect();
    fixes.dedup();
    (found, fixes.join("; "))
}

/// The level of each category, and Conversations' server info.
pub fn check(config: &Config, report: &mut Report) {
    let offered = offered(config);
    for (suite, name) in [
        (Suite::Core, "Core"),
        (Suite::Im, "IM"),
        (Suite::Mobile, "Mobile"),
        (Suite::Web, "Web"),
        (Suite::Av, "A/V"),
    ] {
        let core = missing(&offered, suite, false);
        let advanced = missing(&offered, suite, true);
        let subject = format!("XEP-0479 {name}");
        if advanced.is_empty() {
            report.ok("grade", format!("{subject}: Advanced Server"));
        } else if core.is_empty() {
            let (found, fix) = describe(&advanced);
            report.warn(
                "grade",
                format!("{subject}: Core Server; Advanced needs {found}"),
                fix,
            );
        } else {
            let (found, fix) = describe(&core);
            report.warn(
                "grade",
                format!("{subject}: not compliant; Core needs {found}"),
                fix,
            );
        }
    }
    for (what, spec, enable) in CONVERSATIONS {
        if offered.contains(spec) {
            report.ok(
                "client",
                format!("Conversations server info: {what}: available"),
            );
        } else {
            report.warn(
                "client",
                format!("Conversations server info: {what}: unavailable"),
                *enable,
            );
        }
    }
}

/// The lines of Conversations' "Server info" screen.
const CONVERSATIONS: &[(&str, Spec, &str)] = &[
    ("Roster versioning", Xep(237), ""),
    ("Carbon messages", Xep(280), ""),
    (
        "Message archive management",
        Xep(313),
        "[mam] enabled = true",
    ),
    ("Push", Xep(357), "[push] enabled = true"),
    (
        "Stream management",
        Xep(198),
        "[stream_management] enabled = true",
    ),
    ("Client state indication", Xep(352), ""),
    ("Blocking", Xep(191), ""),
    (
        "HTTP upload",
        Xep(363),
        "[upload] enabled = true with an [http] listener",
    ),
    (
        "External service discovery",
        Xep(215),
        "an [[external_service]] (your STUN/TURN server)",
    ),
    (
        "PEP publish-options (OMEMO)",
        Spec::PublishOptions,
        "[pep] enabled = true",
    ),
];
