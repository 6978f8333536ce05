//! The tests: every subcommand against etcd and strata dev, the output files,
//! and `compare`.

use super::*;

#[test]
fn every_subcommand_against_etcd() {
    let s = Server::etcd();
    all_subcommands(&s.endpoint);
}

#[test]
fn every_subcommand_against_strata_dev() {
    let s = Server::strata();
    all_subcommands(&s.endpoint);
}

#[test]
fn text_csv_and_plot_outputs() {
    let s = Server::etcd();
    let dir = tempfile::tempdir().unwrap();
    let (csv, png, json) = (
        dir.path().join("o.csv"),
        dir.path().join("o.png"),
        dir.path().join("o.json"),
    );
    let o = run_bounded(
        Command::new(BENCH)
            .args([
                "--endpoints",
                &s.endpoint,
                "--clients",
                "2",
                "put",
                "--total",
                "300",
                "--rate",
                "250",
            ])
            .arg("--csv")
            .arg(&csv)
            .arg("--plot")
            .arg(&png)
            .arg("--json")
            .arg(&json),
        RUN_TIMEOUT,
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    // etcd benchmark's layout.
    for line in [
        "Summary:",
        "  Total:\t",
        "  Slowest:\t",
        "  Fastest:\t",
        "  Average:\t",
        "  Stddev:\t",
        "  Requests/sec:\t",
        "Response time histogram:",
        "Latency distribution:",
        "  10% in ",
        "  99.9% in ",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        !err.contains('\u{1b}'),
        "no progress bar when stderr is not a terminal: {err:?}"
    );
    let csv_text = std::fs::read_to_string(&csv).expect("csv written");
    let mut lines = csv_text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("command,result,second,requests,errors"));
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    // 300 requests at 250/s: at least two seconds of series.
    assert!(rows.len() >= 2, "{csv_text}");
    assert_eq!(
        rows.iter()
            .map(|r| r[3].parse::<u64>().unwrap())
            .sum::<u64>(),
        300
    );
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .any(|p| Path::new(p).is_file())
        || std::env::var("STRATA_BENCH_FONT").is_ok();
    if font {
        assert!(o.status.success(), "{out}\n{err}");
        let png_bytes = std::fs::read(&png).expect("png written");
        assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n") && png_bytes.len() > 10_000);
    } else {
        assert!(
            !o.status.success() && err.contains("fonts-dejavu-core"),
            "{err}"
        );
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    check(&v, "put", 300);
}

#[test]
fn compare_starts_strata_and_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (json, md) = (dir.path().join("c.json"), dir.path().join("c.md"));
    let o = run_bounded(
        Command::new(BENCH)
            .env("STRATA_BIN", strata_bin())
            .args(["--json"])
            .arg(&json)
            .args([
                "compare",
                "--a",
                "strata",
                "--b",
                "etcd",
                "--members",
                "3",
                "--rounds",
                "2",
                "--etcd-bin",
                &etcd_bin(),
            ])
            .arg("--markdown")
            .arg(&md)
            .args([
                "--",
                "--clients",
                "4",
                "put",
                "--total",
                "100",
                "--key-space-size",
                "100",
            ]),
        Duration::from_secs(300),
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("A median ± spread") && out.contains("requests/sec") && out.contains("A/B"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let order: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(order, vec!["A", "B", "A", "B"], "interleaved");
    for r in runs {
        check(&r["report"], "put", 100);
    }
    assert!(v["a"]["label"].as_str().unwrap().contains("strata dev"));
    assert!(v["b"]["label"].as_str().unwrap().contains("3 members"));
    let rps = v["table"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "requests/sec")
        .unwrap();
    assert_eq!(rps["a_values"].as_array().unwrap().len(), 2);
    let ratio = f(&rps["ratio_a_over_b"]);
    assert!((ratio - f(&rps["a_median"]) / f(&rps["b_median"])).abs() < 1e-9);
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.starts_with("`strata-bench compare` — workload `--clients 4 put"),
        "{md}"
    );
    assert!(
        md.contains("\n| metric |") && md.contains("| requests/sec |"),
        "{md}"
    );
}
