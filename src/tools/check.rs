//! `fraudline rules check FILE`: validate a rule file and run its tests, for
//! analysts, editors and CI. Exit code 0 when the file loads and every test
//! passes, 1 otherwise.

use std::path::Path;

use serde::Serialize;

use crate::engine::rules::file::{self, RuleFileError, TestOutcome};

/// The whole result, as `--format json` prints it.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub file: String,
    pub ok: bool,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub rules: usize,
    pub shadow_rules: usize,
    pub errors: Vec<RuleFileError>,
    pub tests: Vec<TestOutcome>,
}

pub fn check(path: &Path) -> CheckReport {
    let name = path.display().to_string();
    match crate::reload::rules::load_file(path) {
        Err(e) => CheckReport {
            file: name,
            ok: false,
            version: None,
            sha256: None,
            rules: 0,
            shadow_rules: 0,
            errors: e.errors(),
            tests: Vec::new(),
        },
        Ok(f) => {
            let tests = file::run_tests(&f);
            CheckReport {
                file: name,
                ok: tests.iter().all(|t| t.passed),
                version: Some(f.rules.version.to_string()),
                sha256: Some(f.rules.hash.to_string()),
                rules: f.rules.rules.len(),
                shadow_rules: f
                    .rules
                    .rules
                    .iter()
                    .filter(|r| r.mode == crate::engine::rules::Mode::Shadow)
                    .count(),
                errors: Vec::new(),
                tests,
            }
        }
    }
}

/// The report for people: errors as `file:line:col: message`, then tests.
pub fn render_text(r: &CheckReport) -> String {
    let mut out = String::new();
    for e in &r.errors {
        out.push_str(&format!("{e}\n"));
    }
    if let (Some(v), Some(h)) = (&r.version, &r.sha256) {
        out.push_str(&format!(
            "{}: version {v}, {} rules ({} shadow), {h}\n",
            r.file, r.rules, r.shadow_rules
        ));
    }
    for t in &r.tests {
        if t.passed {
            out.push_str(&format!("  ok    {}:{} {}\n", r.file, t.line, t.name));
        } else {
            out.push_str(&format!(
                "  FAIL  {}:{} {}: {}\n",
                r.file,
                t.line,
                t.name,
                t.problems.join("; ")
            ));
        }
    }
    let failed = r.tests.iter().filter(|t| !t.passed).count();
    if r.errors.is_empty() {
        out.push_str(&format!(
            "{} tests, {} passed, {} failed\n",
            r.tests.len(),
            r.tests.len() - failed,
            failed
        ));
    } else {
        out.push_str(&format!(
            "{} error(s); the file would be refused\n",
            r.errors.len()
        ));
    }
    out
}
