//! The upload URL: the running server already probes it at start, as a
//! client will use it (`web::self_check`: a GET of the public URL that only
//! this very process can answer). This asks the running server for that
//! outcome through the admin channel rather than probing again from here,
//! where the answer could not be told apart from another server's.

use super::Report;
use crate::admin::CallError;
use crate::config::Config;

pub async fn check(config: &Config, report: &mut Report) {
    if !config.upload.enabled || crate::modules::upload::base_url(config).is_none() {
        return;
    }
    if !config.upload.self_check {
        report.warn(
            "upload",
            "the upload URL self-check is off; whether clients can reach the URL is unknown",
            "[upload] self_check = true",
        );
        return;
    }
    let Some(path) = config.admin_socket() else {
        report.warn(
            "upload",
            "the admin channel is off, so the server's upload URL self-check cannot be read",
            "remove [admin] socket = \"\" (or set a path)",
        );
        return;
    };
    let rows = match crate::admin::request(&path, crate::admin::Request::Stats.line()).await {
        Ok(rows) => rows,
        Err(CallError::NoServer) => {
            report.warn(
                "upload",
                format!(
                    "no running server at {}: the upload URL was not checked",
                    path.display()
                ),
                "start the server with this configuration and check again",
            );
            return;
        }
        Err(CallError::Server(e) | CallError::Io(e)) => {
            report.warn(
                "upload",
                format!("the admin channel answered: {e}"),
                "see the server's log",
            );
            return;
        }
    };
    let result = rows
        .iter()
        .find(|r| r.first().is_some_and(|k| k == "upload_url_check"))
        .and_then(|r| r.get(1))
        .cloned()
        .unwrap_or_default();
    let base = crate::modules::upload::base_url(config).unwrap_or_default();
    if result == "ok" {
        report.ok(
            "upload",
            format!("{base}: the server's self-check reached itself"),
        );
    } else if result == "pending" || result.is_empty() {
        report.warn(
            "upload",
            format!("{base}: the server's self-check has not finished yet"),
            "check again in a minute ([upload] self_check_for)",
        );
    } else {
        report.fail(
            "upload",
            format!("{base}: {result}"),
            "set [http] public_url to the URL clients reach this server's HTTP listener at, \
             and make any reverse proxy forward /upload/ to it",
        );
    }
}
