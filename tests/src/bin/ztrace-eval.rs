//! `ztrace-eval [--cross-host] [--requests N] [--clients C] [--shape S[,S…]] [--out FILE]`: the
//! ground-truth linking evaluation at benchmark scale (N requests per shape; shapes: sequential,
//! asyncio, node, pool, java, go, tokenfree; default all) (run as root; `cargo xtask eval` builds
//! everything and runs this). With `--cross-host`, the cross-host variant instead: hosts as
//! network namespaces, one agent each (shapes: thread, pool, dnat, callback, noagent, control; default
//! all). Prints the score as Markdown — and writes it to FILE — whatever the numbers: the CI
//! tests (tests/e2e_linking.rs, tests/e2e_crosshost.rs) are the ones that assert the targets.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ztrace_e2e::{
    eval::Shape,
    harness::is_root,
    topology::{Config, run},
    xeval::{self, XShape},
    xtopology,
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
    let mut cross_host = false;
    let mut shape_names: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--requests" => config.requests = value("--requests")?.parse().context("--requests")?,
            "--clients" => config.clients = value("--clients")?.parse().context("--clients")?,
            "--out" => out = Some(value("--out")?),
            "--shape" => shape_names = Some(value("--shape")?),
            "--cross-host" => cross_host = true,
            _ => bail!(
                "unknown argument {a}; usage: ztrace-eval [--cross-host] [--requests N] \
                 [--clients C] [--shape S[,S…]] [--out FILE]"
            ),
        }
    }
    if !is_root() {
        bail!("the evaluation loads eBPF probes: run it as root");
    }
    let (mut report, misses) = if cross_host {
        let shapes = match &shape_names {
            Some(names) => parse_shapes(names, XShape::by_name, XShape::ALL.map(XShape::name))?,
            None => XShape::ALL.to_vec(),
        };
        let run = xtopology::run(xeval::Config {
            requests: config.requests,
            clients: config.clients,
            shapes,
        })?;
        (run.markdown(), run.target_failures())
    } else {
        if let Some(names) = &shape_names {
            let shapes = parse_shapes(names, Shape::by_name, Shape::ALL.map(Shape::name))?;
            config.shapes = Box::leak(shapes.into_boxed_slice());
        }
        let run = run(config)?;
        let score = run.score();
        (run.report(&score), score.target_failures())
    };
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

/// `a,b,c` → shapes, or an error naming the known ones.
fn parse_shapes<S, const N: usize>(
    names: &str,
    by_name: impl Fn(&str) -> Option<S>,
    all: [&str; N],
) -> Result<Vec<S>> {
    names
        .split(',')
        .map(|n| {
            by_name(n).with_context(|| format!("unknown shape {n}; shapes: {}", all.join(", ")))
        })
        .collect()
}
