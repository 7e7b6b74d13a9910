//! Model scoring against LightGBM itself: a model trained by LightGBM
//! (Python, deploy/models/train_lightgbm.py; installed by
//! deploy/ci/install-tools.sh) on `backtest --features-out` of generated
//! history scores every row as LightGBM's own `predict` does (to 1e-6), and
//! the engine hands it to the rules: a rule on `model.score` hits exactly
//! the payments LightGBM scores above its threshold.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fraudline::engine::features::catalogue::CATALOGUE;
use fraudline::engine::model::Model;
use fraudline::engine::FeatureVector;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The CSV's rows as feature vectors, by the header's names.
fn rows(csv: &Path) -> Vec<FeatureVector> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let columns: Vec<usize> = header[3..]
        .iter()
        .map(|n| {
            CATALOGUE
                .iter()
                .position(|f| f.name == *n)
                .unwrap_or_else(|| panic!("{n} not in the catalogue"))
        })
        .collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let mut fv = FeatureVector::default();
            for (c, v) in columns.iter().zip(&cells[3..]) {
                if !v.is_empty() {
                    fv.0[*c] = v.parse().unwrap();
                }
            }
            fv
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraudline_scores_equal_lightgbms_own_predictions() {
    let (python, site) = (PathBuf::from("python3"), common::lightgbm_site());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = env!("CARGO_BIN_EXE_fraudline");
    let history = run(Command::new(bin).args([
        "gen",
        "--count",
        "10000",
        "--accounts",
        "3000",
        "--events-per-sec",
        "50",
        "--fraud-rate",
        "0.03",
        "--seed",
        "5",
    ]));
    std::fs::write(d.join("history.jsonl"), history).unwrap();
    let pack = common::repo().join("deploy/rules/default.toml");
    run(Command::new(bin)
        .arg("backtest")
        .arg("--rules")
        .arg(&pack)
        .args([
            "--events",
            "history.jsonl",
            "--features-out",
            "features.csv",
        ])
        .current_dir(d));
    run(Command::new(&python)
        .arg(common::repo().join("deploy/models/train_lightgbm.py"))
        .args([
            "features.csv",
            "model.txt",
            "--trees",
            "100",
            "--depth",
            "6",
        ])
        .args(["--predictions", "lightgbm.txt"])
        .env("PYTHONPATH", &site)
        .current_dir(d));

    let model = Model::parse(
        "model.txt",
        &std::fs::read_to_string(d.join("model.txt")).unwrap(),
    )
    .expect("fraudline loads LightGBM's model");
    assert_eq!(model.trees(), 100);
    let expected: Vec<f64> = std::fs::read_to_string(d.join("lightgbm.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let features = rows(&d.join("features.csv"));
    assert_eq!(features.len(), 10_000);
    assert_eq!(expected.len(), features.len());
    let mut worst = 0.0f64;
    for (fv, want) in features.iter().zip(&expected) {
        worst = worst.max((model.score(fv) - want).abs());
    }
    eprintln!("10,000 rows: largest difference from LightGBM {worst:e}");
    assert!(worst <= 1e-6, "largest difference {worst}");

    // The explain's contributions: on every row they and the bias add up
    // to the raw score, and they name only features the model reads.
    let mut explained = 0;
    for fv in &features {
        let (bias, c) = model
            .contributions(fv)
            .expect("LightGBM writes internal values");
        let total = bias + c.iter().map(|c| c.value).sum::<f64>();
        assert!(
            (total - model.raw(fv)).abs() < 1e-9,
            "{total} vs {}",
            model.raw(fv)
        );
        assert!(c.iter().all(|c| model.features.contains(&c.feature)));
        explained += usize::from(!c.is_empty());
    }
    assert!(explained > 9_000, "only {explained} rows had contributions");
    let above = expected.iter().filter(|p| **p > 0.5).count();
    assert!(
        above > 0,
        "the model flags nothing: the rule check below would prove nothing"
    );

    // The engine gives it to the rules: a rule on model.score hits the
    // payments LightGBM scores above 0.5, no more, no fewer.
    std::fs::write(
        d.join("model-rules.toml"),
        "version = \"model-1\"\n[thresholds]\nreview = 40\nhold = 80\n\
         [[rule]]\nid = \"MODEL_HIGH\"\nwhen = \"model.score > 0.5\"\nscore = 50\nreason = \"the model says fraud\"\n",
    )
    .unwrap();
    let report = run(Command::new(bin)
        .args([
            "backtest",
            "--rules",
            "model-rules.toml",
            "--model",
            "model.txt",
        ])
        .args(["--events", "history.jsonl", "--format", "json"])
        .current_dir(d));
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    let hits = r["rules"][0]["hits"].as_u64().unwrap();
    assert_eq!(
        hits as usize, above,
        "rule hits vs LightGBM's count above 0.5"
    );

    // Shadow mode: a second model (fewer, shallower trees) scored beside
    // the first. Its scores are LightGBM's own for it, the rules still read
    // only the active model, and the report ranks both.
    run(Command::new(&python)
        .arg(common::repo().join("deploy/models/train_lightgbm.py"))
        .args([
            "features.csv",
            "shadow.txt",
            "--trees",
            "40",
            "--depth",
            "4",
        ])
        .args(["--seed", "2", "--predictions", "lightgbm-shadow.txt"])
        .env("PYTHONPATH", &site)
        .current_dir(d));
    let shadow = Model::parse(
        "shadow.txt",
        &std::fs::read_to_string(d.join("shadow.txt")).unwrap(),
    )
    .unwrap();
    let report = run(Command::new(bin)
        .args(["backtest", "--rules", "model-rules.toml"])
        .args(["--model", "model.txt", "--shadow-model", "shadow.txt"])
        .args(["--events", "history.jsonl", "--format", "json"])
        .args(["--verdicts-out", "verdicts.jsonl"])
        .current_dir(d));
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        r["rules"][0]["hits"].as_u64().unwrap() as usize,
        above,
        "a shadow model changes no rule hit"
    );
    let roles: Vec<(&str, &str)> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        vec![("active", &*model.version), ("shadow", &*shadow.version)]
    );
    for m in r["models"].as_array().unwrap() {
        let ap = m["average_precision"].as_f64().unwrap();
        assert!(ap > 0.0 && ap <= 1.0, "{m}");
    }
    let want_shadow: Vec<f64> = std::fs::read_to_string(d.join("lightgbm-shadow.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let got: Vec<(f64, f64)> = std::fs::read_to_string(d.join("verdicts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["model_score"].as_f64().unwrap(),
                v["shadow_model_score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), want_shadow.len());
    for (i, ((active, shadow_score), (want_a, want_s))) in got
        .iter()
        .zip(expected.iter().zip(&want_shadow))
        .enumerate()
    {
        assert!(
            (active - want_a).abs() <= 1e-6,
            "row {i}: active {active} vs {want_a}"
        );
        assert!(
            (shadow_score - want_s).abs() <= 1e-6,
            "row {i}: shadow {shadow_score} vs {want_s}"
        );
    }

    // The service: both models loaded, each verdict names their versions
    // and scores and (explain on) the top contributions; a bad shadow file
    // is refused and the shadow in use stays; promoting is moving the
    // shadow model to model.file.
    let live = d.join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::copy(d.join("model.txt"), live.join("model.txt")).unwrap();
    std::fs::copy(d.join("shadow.txt"), live.join("shadow.txt")).unwrap();
    let s = common::inline::Server::start(&format!(
        "[engine]\nexplain_in_verdicts = true\n[model]\nfile = \"{}\"\nshadow_file = \"{}\"\nwatch_interval_ms = 100\n",
        live.join("model.txt").display(),
        live.join("shadow.txt").display()
    ))
    .await;
    let score = || async {
        common::inline::json(
            common::inline::post(&s.url(), common::inline::payment().to_json()).await,
        )
        .await
    };
    let v = score().await;
    assert_eq!(v["model_version"], *model.version, "{v}");
    assert_eq!(v["shadow_model_version"], *shadow.version, "{v}");
    let (a, sh) = (
        v["model_score"].as_f64().unwrap(),
        v["shadow_model_score"].as_f64().unwrap(),
    );
    assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&sh), "{v}");
    let top = v["model_contributions"].as_array().expect("explain");
    assert!(!top.is_empty() && top.len() <= 5, "{v}");
    assert!(top
        .iter()
        .all(|c| model.features.contains(&c["feature"].as_str().unwrap())));

    std::fs::write(live.join("shadow.txt"), "tree\nnot a model\n").unwrap();
    let refused = "fraudline_model_reloads_total{role=\"shadow\",result=\"refused\"}";
    let start = std::time::Instant::now();
    while common::inline::series(&s.metrics().await, refused) < 1.0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "bad shadow file not seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        score().await["shadow_model_version"],
        *shadow.version,
        "the shadow model in use stays"
    );

    let promoted = live.join("promote.tmp");
    std::fs::copy(d.join("shadow.txt"), &promoted).unwrap();
    std::fs::rename(&promoted, live.join("model.txt")).unwrap();
    let start = std::time::Instant::now();
    loop {
        let v = score().await;
        if v["model_version"] == *shadow.version {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "not promoted: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let m = s.metrics().await;
    assert_eq!(
        common::inline::series(
            &m,
            &format!(
                "fraudline_model_info{{role=\"active\",sha256=\"{}\"}}",
                shadow.sha256
            )
        ),
        1.0,
        "{m}"
    );

    // A model naming a feature fraudline does not have is refused.
    let bad = std::fs::read_to_string(d.join("model.txt"))
        .unwrap()
        .replacen("payer_count_1m", "payer_shoe_size", 1);
    std::fs::write(d.join("bad.txt"), bad).unwrap();
    let out = Command::new(bin)
        .args([
            "backtest",
            "--rules",
            "model-rules.toml",
            "--model",
            "bad.txt",
        ])
        .args(["--events", "history.jsonl"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("payer_shoe_size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
