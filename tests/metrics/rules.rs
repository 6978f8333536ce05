//! The shipped alert rules, checked and unit-tested with promtool.

use super::*;

/// The shipped alert rules pass `promtool check rules` and their unit tests.
#[test]
fn alert_rules_pass_promtool() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules {}:\n{out}", rules.display());
    let tests = repo_file("deploy/prometheus/alerts_test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok, "promtool test rules {}:\n{out}", tests.display());
}
