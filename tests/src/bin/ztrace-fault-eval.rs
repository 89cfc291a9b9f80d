//! `ztrace-fault-eval [--minutes M] [--rps R] [--window S] [--start-windows N] [--out FILE]`: the fault-injection evaluation of
//! tail sampling and anomaly detection (tests/src/faults.rs), as root; `cargo xtask eval
//! --faults` builds everything and runs this. Prints the report as Markdown and writes it to
//! FILE; asserts nothing.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use ztrace_e2e::{
    faults::{FaultConfig, run},
    harness::is_root,
};

fn main() -> ExitCode {
    match main_() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztrace-fault-eval: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main_() -> Result<()> {
    let mut c = FaultConfig::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            // Steady phases take 3/4 of the time (three of them), faults 1/4 (two).
            "--minutes" => {
                let m: f64 = value("--minutes")?.parse().context("--minutes")?;
                c.steady = Duration::from_secs_f64(m * 60.0 * 0.25);
                c.fault = Duration::from_secs_f64(m * 60.0 * 0.125);
            }
            "--rps" => c.rps = value("--rps")?.parse().context("--rps")?,
            "--window" => {
                c.window = Duration::from_secs(value("--window")?.parse().context("--window")?)
            }
            "--start-windows" => {
                c.start_windows = Some(
                    value("--start-windows")?
                        .parse()
                        .context("--start-windows")?,
                )
            }
            "--out" => out = Some(value("--out")?),
            _ => bail!(
                "unknown argument {a}; usage: ztrace-fault-eval [--minutes M] [--rps R] [--window SECONDS] [--start-windows N] [--out FILE]"
            ),
        }
    }
    if !is_root() {
        bail!("the evaluation loads eBPF probes: run it as root");
    }
    let md = run(c)?;
    println!("{md}");
    if let Some(path) = out {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, &md).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
