//! `ztrace-eval [--requests N] [--clients C] [--shape S[,S…]] [--out FILE]`: the ground-truth
//! linking evaluation at benchmark scale (N requests per shape; shapes: sequential, asyncio,
//! node, pool, java, go, tokenfree; default all) (run as root; `cargo xtask eval` builds everything and runs this). Prints
//! the score as Markdown — and writes it to FILE — whatever the numbers: the CI test
//! (tests/e2e_linking.rs) is the one that asserts the targets.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ztrace_e2e::{
    eval::Shape,
    harness::is_root,
    topology::{Config, run},
};

fn main() -> ExitCode {
    match main_() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztrace-eval: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main_() -> Result<()> {
    let mut config = Config {
        requests: 4000,
        clients: 16,
        shapes: &Shape::ALL,
    };
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--requests" => config.requests = value("--requests")?.parse().context("--requests")?,
            "--clients" => config.clients = value("--clients")?.parse().context("--clients")?,
            "--out" => out = Some(value("--out")?),
            "--shape" => {
                let shapes = value("--shape")?
                    .split(',')
                    .map(|n| {
                        Shape::by_name(n).with_context(|| {
                            let all: Vec<_> = Shape::ALL.iter().map(|s| s.name()).collect();
                            format!("unknown shape {n}; shapes: {}", all.join(", "))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                config.shapes = Box::leak(shapes.into_boxed_slice());
            }
            _ => bail!(
                "unknown argument {a}; usage: ztrace-eval [--requests N] [--clients C] \
                 [--shape S[,S…]] [--out FILE]"
            ),
        }
    }
    if !is_root() {
        bail!("the evaluation loads eBPF probes: run it as root");
    }
    let run = run(config)?;
    let score = run.score();
    let mut report = run.report(&score);
    let misses = score.target_failures();
    if misses.is_empty() {
        report.push_str("\nEvery target met.\n");
    } else {
        report.push_str("\nTargets missed:\n");
        for m in misses {
            report.push_str(&format!("- {m}\n"));
        }
    }
    println!("{report}");
    if let Some(path) = out {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, &report).with_context(|| format!("writing {path}"))?;
        eprintln!("ztrace-eval: wrote {path}");
    }
    Ok(())
}
