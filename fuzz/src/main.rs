//! `skiff-fuzz [TARGET...] [--runs N] [--seed S]`: runs each target (default: all) on N
//! generated inputs (default 100,000) and prints one line per target. Exits non-zero if
//! any input made a target panic; the input is written to `fuzz/crashes/`.
//! `skiff-fuzz --replay TARGET FILE` runs one saved input again.

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let mut runs = 100_000u64;
    let mut seed = 0x5eed_u64;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            "--replay" => {
                // `--replay TARGET FILE`: run one saved input, panics shown.
                let (name, file) = (args.next().expect("TARGET"), args.next().expect("FILE"));
                let target = skiff_fuzz::TARGETS
                    .iter()
                    .find(|t| t.name == name)
                    .expect("a known target");
                let input = std::fs::read(&file).expect("a readable input");
                println!("accepted: {}", skiff_fuzz::replay(target, &input));
                return ExitCode::SUCCESS;
            }
            other => names.push(other.to_string()),
        }
    }
    let targets: Vec<_> = skiff_fuzz::TARGETS
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
        .collect();
    if targets.is_empty() {
        eprintln!(
            "no such target; targets: {}",
            skiff_fuzz::TARGETS
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(2);
    }
    let mut failed = false;
    for target in targets {
        let started = Instant::now();
        let report = skiff_fuzz::run(target, runs, seed);
        println!(
            "{:<12} {:>8} inputs in {:>6.1} s ({:>7.0}/s), {} accepted, slowest {:?}, {} panics",
            target.name,
            report.runs,
            started.elapsed().as_secs_f64(),
            report.runs as f64 / started.elapsed().as_secs_f64(),
            report.accepted,
            report.slowest,
            report.crashes.len()
        );
        for path in &report.crashes {
            println!("  crash input: {}", path.display());
        }
        failed |= !report.crashes.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
