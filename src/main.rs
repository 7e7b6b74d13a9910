//! The `fraudline` binary: a thin CLI over the library.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use fraudline::config::Config;
use fraudline::engine::{Engine, EngineConfig};
use fraudline::event::{self, Limits};
use fraudline::tools::{demo, gen};

#[derive(Parser)]
#[command(
    name = "fraudline",
    version,
    about = "Real-time transaction fraud scoring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate a rule file and run its tests; exit 0 if all is well, 1 if not.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
    },
}

#[derive(Subcommand)]
enum BlocklistCommand {
    /// Validate a blocklist file (CSV with a header, or .jsonl); print counts and errors; exit 0 or 1.
    Check {
        file: PathBuf,
        /// Accept up to this many bad lines (reported) as the service would.
        #[arg(long, default_value_t = 0)]
        max_bad_lines: usize,
        /// Country calling code national phone numbers are read in, as `[blocklist] country_code`.
        #[arg(long, default_value = "")]
        country_code: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume payments from Kafka, publish verdicts.
    Run {
        /// TOML config file (defaults: deploy/config/fraudline.toml, embedded).
        #[arg(long, env = "FRAUDLINE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file (with env overrides) and exit 0 or 1.
    CheckConfig {
        #[arg(long, env = "FRAUDLINE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The product in one command: synthetic traffic, scored live, /metrics served.
    Demo {
        /// Events per second (0 = as fast as possible).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Stop after this many seconds (default: run until ctrl-c).
        #[arg(long)]
        duration: Option<u64>,
        /// Where to serve /metrics ("" to disable).
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 0.02)]
        fraud_rate: f64,
        /// Payments of history (three days, before now) scored first, so
        /// customers have habits the rules read (0: start cold).
        #[arg(long, default_value_t = 1_000_000)]
        history: u64,
    },
    /// Score JSON events (one per line) from a file or stdin; print verdicts as JSON lines.
    Score {
        /// Input file; "-" or absent for stdin.
        file: Option<PathBuf>,
        /// Include the feature values each decision saw.
        #[arg(long)]
        explain: bool,
        /// Rule file (default: the built-in checks).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Blocklist, as the service reads it (CSV with a header, or .jsonl).
        /// Without it no list is checked.
        #[arg(long)]
        blocklist: Option<PathBuf>,
        /// A LightGBM text model rules read as model.score; with --explain
        /// each verdict lists the features that moved its score most.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Tools for blocklist files.
    Blocklist {
        #[command(subcommand)]
        command: BlocklistCommand,
    },
    /// Analyst tools for rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Replay historical events (JSON lines, .gz ok) through a rule file offline.
    Backtest {
        /// The service's config file: its [features] and [engine] settings,
        /// limits, rule file and blocklist files, so the replay's verdicts
        /// are the service's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The rule file (default: the config's rules.file, else the
        /// built-in rules).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Compare against this rule file: the verdicts that changed, and why.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// A LightGBM text model rules read as model.score (default: the
        /// config's model.file).
        #[arg(long)]
        model: Option<PathBuf>,
        /// A second LightGBM model scored in shadow beside --model
        /// (default: the config's model.shadow_file): its ranking is
        /// reported beside the active model's, the rules never read it.
        #[arg(long)]
        shadow_model: Option<PathBuf>,
        #[arg(long)]
        events: PathBuf,
        /// Blocklist for the replay, as the service reads it (CSV with a header, or .jsonl).
        #[arg(long)]
        blocklist: Option<PathBuf>,
        /// Write one JSON verdict per event here.
        #[arg(long)]
        verdicts_out: Option<PathBuf>,
        /// Write every event's features and label here (CSV), to train a model.
        #[arg(long)]
        features_out: Option<PathBuf>,
        /// Write the report as one self-contained HTML page here (charts,
        /// precision / recall curves, per-rule table; no network needed).
        #[arg(long)]
        html: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
    },
    /// Search the review / hold thresholds (and, within --bound, rule
    /// scores) on labelled events for the best recall at a target precision
    /// or the lowest cost; prints the curve and the change as a diff of the
    /// rule file (checked: it compiles and the file's own tests pass).
    Tune {
        /// The rule file to tune (default: the config's rules.file).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// The service's config file, as for backtest.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Labelled events (gen output, or history with a "label" field).
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        blocklist: Option<PathBuf>,
        /// The precision flagged payments (REVIEW or HOLD) must reach; the
        /// search maximises recall under it.
        #[arg(long, default_value_t = 0.9, conflicts_with = "review_cost")]
        target_precision: f64,
        /// Instead: minimise fraud money let through (minor units) plus
        /// this cost per flagged payment.
        #[arg(long)]
        review_cost: Option<f64>,
        /// The precision the hold threshold is chosen for.
        #[arg(long, default_value_t = 0.95)]
        hold_precision: f64,
        /// A rule score the search may move: RULE_ID=MIN..MAX (repeatable).
        #[arg(long = "bound")]
        bounds: Vec<fraudline::tools::tune::Bound>,
        /// Score step tried within a bound.
        #[arg(long, default_value_t = 5)]
        step: i32,
        /// Write the suggested rule file here.
        #[arg(long)]
        write: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
    },
    /// Measure feature-state memory: load generated payments into a fresh
    /// feature store and print the RSS it added, per account (JSON).
    FeaturesMemory {
        /// Customers in the generated population.
        #[arg(long, default_value_t = 1_000_000)]
        accounts: u32,
        /// Payments to load (spread over 24 h of event time).
        #[arg(long, default_value_t = 5_000_000)]
        payments: u64,
    },
    /// Generate labelled synthetic payment events.
    Gen {
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 0.02)]
        fraud_rate: f64,
        #[arg(long, value_enum, default_value_t = GenFormat::Json)]
        format: GenFormat,
        /// Event time of the first event (ms since the epoch; default: one hour ago).
        #[arg(long)]
        start_ms: Option<i64>,
        /// Simulated events per second of event time.
        #[arg(long, default_value_t = 1000.0)]
        events_per_sec: f64,
        /// Ordinary customers in the population.
        #[arg(long, default_value_t = 10_000)]
        accounts: u32,
        /// Also write the generator's blocklist here (JSON lines, for `backtest --blocklist`).
        #[arg(long)]
        blocklist_out: Option<PathBuf>,
        /// Produce to this Kafka topic instead of writing to stdout.
        #[arg(long, requires = "brokers")]
        topic: Option<String>,
        #[arg(long)]
        brokers: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormat {
    Json,
    Protobuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = Config::load(config.as_deref())?;
            fraudline::telemetry::init_tracing(cfg.log.format, &cfg.log.level);
            fraudline::app::run(cfg, shutdown_signal()).await?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            Config::load(config.as_deref())?;
            println!("config ok");
            Ok(())
        }
        Command::Demo {
            rate,
            duration,
            listen,
            seed,
            fraud_rate,
            history,
        } => {
            let listen = if listen.is_empty() {
                None
            } else {
                Some(
                    listen
                        .parse()
                        .with_context(|| format!("--listen {listen:?}"))?,
                )
            };
            let opts = demo::DemoOptions {
                rate,
                duration: duration.map(Duration::from_secs),
                seed,
                fraud_rate,
                history,
            };
            demo::run_with_metrics(opts, listen).await?;
            Ok(())
        }
        Command::Score {
            file,
            explain,
            rules,
            blocklist,
            model,
        } => score(file, explain, rules, blocklist, model),
        Command::Blocklist {
            command:
                BlocklistCommand::Check {
                    file,
                    max_bad_lines,
                    country_code,
                },
        } => match fraudline::reload::blocklist::build(
            std::slice::from_ref(&file),
            max_bad_lines,
            &country_code,
        ) {
            Ok(b) => {
                use fraudline::engine::ListKind;
                let total: usize = ListKind::ALL.iter().map(|k| b.table.count(*k)).sum();
                println!("{}: {} entries", file.display(), total);
                for k in ListKind::ALL {
                    if b.table.count(k) > 0 {
                        println!("  {:<8} {}", k.as_str(), b.table.count(k));
                    }
                }
                for bad in &b.skipped {
                    println!("skipped {bad}");
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        Command::Rules {
            command: RulesCommand::Check { file, format },
        } => {
            let r = fraudline::tools::check::check(&file);
            match format {
                OutFormat::Text => print!("{}", fraudline::tools::check::render_text(&r)),
                OutFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
            }
            std::process::exit(if r.ok { 0 } else { 1 });
        }
        Command::Backtest {
            config,
            rules,
            baseline,
            model,
            shadow_model,
            events,
            blocklist,
            verdicts_out,
            features_out,
            html,
            format,
        } => {
            use std::io::IsTerminal;
            let config = match &config {
                Some(path) => Some(fraudline::config::Config::load(Some(path))?),
                None => None,
            };
            let opts = fraudline::tools::backtest::Options {
                config,
                rules,
                baseline,
                model,
                shadow_model,
                events,
                blocklist,
                verdicts_out,
                features_out,
                progress: std::io::stderr().is_terminal(),
            };
            let r = fraudline::tools::backtest::run(&opts)?;
            if let Some(path) = &html {
                std::fs::write(path, fraudline::tools::report_html::render(&r))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            match format {
                OutFormat::Text => print!("{}", fraudline::tools::backtest::render_text(&r)),
                OutFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
            }
            Ok(())
        }
        Command::Tune {
            rules,
            config,
            events,
            blocklist,
            target_precision,
            review_cost,
            hold_precision,
            bounds,
            step,
            write,
            format,
        } => {
            use fraudline::tools::tune;
            let config = match &config {
                Some(path) => Some(fraudline::config::Config::load(Some(path))?),
                None => None,
            };
            let opts = tune::Options {
                replay: fraudline::tools::backtest::Options {
                    config,
                    rules,
                    baseline: None,
                    model: None,
                    shadow_model: None,
                    events,
                    blocklist,
                    verdicts_out: None,
                    features_out: None,
                    progress: false,
                },
                objective: match review_cost {
                    Some(c) => tune::Objective::Cost {
                        review_cost_minor: c,
                    },
                    None => tune::Objective::Precision(target_precision),
                },
                hold_precision,
                bounds,
                step,
            };
            let s = tune::run(&opts)?;
            if let Some(path) = &write {
                std::fs::write(path, &s.new_text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            match format {
                OutFormat::Text => print!("{}", tune::render_text(&s)),
                OutFormat::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(())
        }
        Command::FeaturesMemory { accounts, payments } => {
            let r = fraudline::tools::memory::measure(accounts, payments, Default::default());
            println!("{}", serde_json::to_string_pretty(&r)?);
            eprintln!(
                "{} accounts (+{} devices/phones/IPs): {:.0} bytes RSS per account ({:.0} walked), {:.1} MiB added, {:.0} payments/s loading",
                r.accounts,
                r.other_entities,
                r.rss_per_account_bytes,
                r.walked_per_account_bytes,
                r.rss_after_bytes.saturating_sub(r.rss_before_bytes) as f64 / 1048576.0,
                r.payments_per_second
            );
            Ok(())
        }
        Command::Gen {
            count,
            seed,
            fraud_rate,
            format,
            start_ms,
            events_per_sec,
            accounts,
            blocklist_out,
            topic,
            brokers,
        } => {
            let cfg = gen::GenConfig {
                seed,
                fraud_rate,
                start_ms: start_ms.unwrap_or_else(|| fraudline::now_ms() - 3_600_000),
                events_per_sec,
                accounts,
            };
            if let Some(path) = blocklist_out {
                let mut out = std::io::BufWriter::new(
                    std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                );
                for e in gen::Generator::new(cfg.clone()).blocklist_entries() {
                    let line = serde_json::json!({
                        "kind": e.kind.as_str(),
                        "value": e.value,
                        "action": e.action.as_str(),
                        "reason": e.reason,
                    });
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
            }
            match (topic, brokers) {
                (Some(topic), Some(brokers)) => produce(cfg, count, format, &brokers, &topic).await,
                _ => match write_events(cfg, count, format) {
                    // `fraudline gen | head` is fine.
                    Err(e)
                        if e.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
                    {
                        Ok(())
                    }
                    r => r,
                },
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received; draining");
}

fn score(
    file: Option<PathBuf>,
    explain: bool,
    rules: Option<PathBuf>,
    blocklist: Option<PathBuf>,
    model: Option<PathBuf>,
) -> Result<()> {
    let input: Box<dyn BufRead> = match file {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let engine = Engine::new(EngineConfig::default());
    if let Some(r) = rules {
        engine.set_rules(fraudline::reload::rules::load_file(&r)?.rules);
    }
    // Only the list it is given: an empty one otherwise (earlier builds
    // loaded the generator's 50 fake accounts as a HOLD list).
    if let Some(b) = blocklist {
        engine.set_blocklist(fraudline::tools::backtest::load_blocklist(&b)?);
    }
    if let Some(m) = model {
        engine.set_model(Some(fraudline::reload::model::load_file(&m)?));
    }
    let limits = Limits::default();
    let mut out = std::io::stdout().lock();
    let mut bad = 0usize;
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match event::decode(
            line.as_bytes(),
            Some(event::Format::Json),
            &limits,
            fraudline::now_ms(),
        ) {
            Ok(p) => {
                let v = engine.score(&p);
                writeln!(out, "{}", v.to_json(&p.event_id, explain))?;
            }
            Err(e) => {
                bad += 1;
                eprintln!("line {}: {} ({})", n + 1, e, e.kind());
            }
        }
    }
    if bad > 0 {
        bail!("{bad} line(s) could not be scored");
    }
    Ok(())
}

fn write_events(cfg: gen::GenConfig, count: u64, format: GenFormat) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (p, label) in gen::Generator::new(cfg).take(count as usize) {
        match format {
            GenFormat::Json => {
                let mut j = event::JsonEvent::from_wire(&p.to_wire());
                j.label = Some(label.to_string());
                writeln!(out, "{}", serde_json::to_string(&j)?)?;
            }
            GenFormat::Protobuf => {
                // Length-delimited protobuf, as prost writes it.
                use prost::Message;
                let bytes = p.to_wire().encode_length_delimited_to_vec();
                out.write_all(&bytes)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn produce(
    cfg: gen::GenConfig,
    count: u64,
    format: GenFormat,
    brokers: &str,
    topic: &str,
) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the producer")?;
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for (p, _) in gen::Generator::new(cfg).take(count as usize) {
        let payload = match format {
            GenFormat::Json => p.to_json().into_bytes(),
            GenFormat::Protobuf => p.to_protobuf(),
        };
        loop {
            let rec = FutureRecord::to(topic)
                .key(&p.payer.account)
                .payload(&payload);
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((_, _)) => {
                    if let Some(r) = pending.next().await {
                        r.context("delivery cancelled")?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
    }
    while let Some(r) = pending.next().await {
        r.context("delivery cancelled")?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    eprintln!("produced {count} events to {topic}");
    Ok(())
}
