//! The configuration: it loads and validates (the server's own loader,
//! so every problem it would refuse to start with is reported with its
//! line), and the settings that weaken a deployment without breaking it.

use std::path::Path;

use super::Report;
use crate::config::{Config, ConfigError};

/// Reports on the loaded configuration; None when it did not load (then
/// nothing else can be checked).
pub fn check(
    loaded: Result<Config, ConfigError>,
    path: Option<&Path>,
    report: &mut Report,
) -> Option<Config> {
    let name = path.map_or("the built-in defaults".to_string(), |p| {
        p.display().to_string()
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            for p in &e.problems {
                let fix = match p.line {
                    Some(l) => format!("edit line {l} of {name}"),
                    None => format!("edit {name}"),
                };
                report.fail("config", format!("{name}: {p}"), fix);
            }
            report.fail(
                "config",
                "the server will not start with this configuration; nothing else was checked",
                format!("`waxwing check-config --config {name}` after each change"),
            );
            return None;
        }
    };
    report.ok("config", format!("{name} loads and validates"));
    if path.is_none() {
        report.warn(
            "config",
            "no --config given: checking the built-in defaults (localhost, a development certificate)",
            "pass the file the server runs with: `waxwing ctl --config FILE check`",
        );
    }
    if !config.c2s.require_encryption {
        report.warn(
            "config",
            "clients may log in without TLS",
            "[c2s] require_encryption = true",
        );
    }
    if config.s2s.enabled() && !config.s2s.require_encryption {
        report.warn(
            "config",
            "peers may federate without TLS (most public servers refuse that)",
            "[s2s] require_encryption = true",
        );
    }
    Some(config)
}
