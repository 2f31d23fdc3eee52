//! The speed report: `bench.md`, `bench.json`, `bench.svg` (step time per model and
//! backend as bars, log scale).

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::fmt::table;
use super::{Output, Provenance, ReportSet};
use crate::study::pair_name;
use crate::backends::BackendKind;
use crate::error::{Error, Result};
use crate::study::bench::BenchReport;

pub fn outputs(report: &BenchReport, machine: &str, provenance: &Provenance) -> Result<ReportSet> {
    let plots = vec![Output { file_name: "bench.svg".into(), contents: bars(report)? }];
    super::set("bench", provenance, report, markdown(report, machine), plots)
}

fn kinds(report: &BenchReport) -> Vec<BackendKind> {
    let mut k: Vec<BackendKind> = report.models.values().flat_map(|m| m.step_ms.keys().copied()).collect();
    k.sort();
    k.dedup();
    k
}

fn markdown(report: &BenchReport, machine: &str) -> String {
    let kinds = kinds(report);
    let mut md = format!(
        "# Speed\n\nMedian over {} interleaved training steps per model (batch 25, f32, after warm-up) and over the evaluation \
         batches of 100 timed between them; {} thread(s) for libtorch. Machine: {machine}.\n\n![step time](bench.svg)\n\n",
        report.steps, report.threads
    );
    let mut header = vec!["model".to_string()];
    header.extend(kinds.iter().map(|k| format!("{k} step ms")));
    // Every engine-versus-other pair the run measured, in the order of the backends.
    let pairs: Vec<String> = kinds.iter().filter(|&&k| k != BackendKind::ENGINE).map(|&k| pair_name(BackendKind::ENGINE, k)).collect();
    header.extend(pairs.iter().map(|p| format!("{p} time ratio")));
    header.extend(kinds.iter().map(|k| format!("{k} eval ms")));
    let rows: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|(name, m)| {
            let mut r = vec![name.clone()];
            r.extend(kinds.iter().map(|k| m.step_ms.get(k).map_or("-".into(), |v| format!("{v:.2}"))));
            r.extend(pairs.iter().map(|p| m.ratios.get(p).map_or("-".into(), |v| format!("{v:.2}"))));
            r.extend(kinds.iter().map(|k| m.eval_ms.get(k).map_or("-".into(), |v| format!("{v:.2}"))));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    md += &memory_section(report, &kinds);
    md += "\n## Matrix products (f32, GFLOP/s)\n\n";
    let mut header = vec!["shape m×k·k×n".to_string(), "what".to_string()];
    header.extend(kinds.iter().map(|k| k.to_string()));
    let rows: Vec<Vec<String>> = report
        .gemm
        .iter()
        .map(|g| {
            let mut r = vec![format!("{}×{}·{}×{}", g.m, g.k, g.k, g.n), g.what.to_string()];
            r.extend(kinds.iter().map(|k| g.gflops.get(k).map_or("-".into(), |v| format!("{v:.1}"))));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    let p = &report.peak;
    md += &format!(
        "\nMachine peak, measured (a loop of independent {} FMAs, f32): {:.1} GFLOP/s on one thread, {:.1} on {} \
         thread(s) at once. The products above run on {} thread(s).\n",
        p.isa, p.one_thread_gflops, p.all_threads_gflops, p.threads, report.threads
    );
    md += &ops_section(report, &kinds);
    if let Some(f) = &report.fuzz {
        let shares: Vec<String> = f.backend_seconds.iter().map(|(k, t)| format!("{k} {t:.1} s ({:.0}%)", 100.0 * t / f.seconds.max(1e-9))).collect();
        md += &format!(
            "\n## Differential fuzzing\n\n{} generated programs (`parity-report fuzz --cases {} --seed 0`, f64, these backends, finite differences \
             included) in {:.1} s: **{:.0} cases per second**. The backends' runs take {}; the rest of the oracle (each node alone, finite \
             differences) {:.1} s; attributing and shrinking findings {:.1} s.\n",
            f.cases,
            f.cases,
            f.seconds,
            f.cases_per_second,
            shares.join(", "),
            f.oracle_seconds,
            f.shrink_seconds
        );
    }
    md
}

/// One row per op: microseconds per call (forward and backward of its first case).
fn ops_section(report: &BenchReport, kinds: &[BackendKind]) -> String {
    if report.ops.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n## Ops (f32, µs per call)\n\nEach op's first generated case (`parity-report ops`'s case 0 of seed 0: small shapes, so these \
         times are mostly each framework's per-op overhead), forward and backward of its weighted-sum loss in one executor; the \
         median of {} rounds' medians of {} calls, the backends taking turns. No target: a row to watch, not a bar.\n\n",
        crate::study::bench::OP_ROUNDS,
        crate::study::bench::OP_CALLS
    );
    let mut header = vec!["op".to_string(), "case".to_string()];
    header.extend(kinds.iter().map(|k| format!("{k} µs")));
    let rows: Vec<Vec<String>> = report
        .ops
        .iter()
        .map(|o| {
            let mut r = vec![format!("`{}`", o.op), o.case.replace('|', "\\|")];
            r.extend(kinds.iter().map(|k| match (o.micros.get(k), o.refused.get(k)) {
                (Some(v), _) => format!("{v:.1}"),
                (None, Some(_)) => "refused".into(),
                _ => "-".into(),
            }));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    md
}

/// Peak resident memory and wall time of one epoch per model and backend, and what the
/// epochs add up to over the seed's 25 epochs.
fn memory_section(report: &BenchReport, kinds: &[BackendKind]) -> String {
    if report.memory_images == 0 || report.models.values().all(|m| m.peak_rss_mb.is_empty()) {
        return String::new();
    }
    let mut md = format!(
        "\n## Memory and epoch time\n\nOne training epoch of {} images (batch 25, f32) per model and backend, each in a \
         child process of its own: resident size before the first step (program, data, the backend's libraries, the \
         model), the resident high-water mark over the epoch (`VmHWM`, reset just before the first step), and the epoch's wall \
         time.\n\n",
        report.memory_images
    );
    let mut header = vec!["model".to_string()];
    header.extend(kinds.iter().map(|k| format!("{k} peak MB")));
    header.extend(kinds.iter().map(|k| format!("{k} before MB")));
    header.extend(kinds.iter().map(|k| format!("{k} epoch s")));
    let cell = |m: &std::collections::BTreeMap<BackendKind, f64>, k: &BackendKind, digits: usize| {
        m.get(k).map_or("-".into(), |v| format!("{v:.digits$}"))
    };
    let rows: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|(name, m)| {
            let mut r = vec![name.clone()];
            r.extend(kinds.iter().map(|k| cell(&m.peak_rss_mb, k, 0)));
            r.extend(kinds.iter().map(|k| cell(&m.baseline_rss_mb, k, 0)));
            r.extend(kinds.iter().map(|k| cell(&m.epoch_s, k, 1)));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    if report.memory_images == 60_000 && report.models.len() == 9 {
        let totals: Vec<String> = kinds
            .iter()
            .filter_map(|k| {
                let sum: Option<f64> = report.models.values().map(|m| m.epoch_s.get(k).copied()).sum();
                sum.map(|s| format!("{k} {:.1} h", s * 25.0 / 3600.0))
            })
            .collect();
        md += &format!(
            "\nThe seed study's training (25 epochs of the nine models) at these epoch times: {} (evaluation not \
             included).\n",
            totals.join(", ")
        );
    }
    md
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plotting failed: {e}"))
}

/// Grouped bars: one group per model, one bar per backend.
fn bars(report: &BenchReport) -> Result<String> {
    let kinds = kinds(report);
    let names: Vec<&String> = report.models.keys().collect();
    let values: Vec<f64> = report.models.values().flat_map(|m| m.step_ms.values().copied()).filter(|v| *v > 0.0).collect();
    let (lo, hi) = (values.iter().copied().fold(f64::INFINITY, f64::min) / 2.0, values.iter().copied().fold(0.0, f64::max) * 2.0);
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.01, 1.0) };
    let colors = [RGBColor(214, 39, 40), RGBColor(31, 119, 180), RGBColor(44, 160, 44)];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 490)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        // The legend gets a strip of its own below the bars, where it hides none of them.
        let (chart_area, legend_area) = root.split_vertically(460);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption("Training step time at batch 25 (median, ms, log scale)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..names.len() as f64 - 0.5, (lo..hi).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len() + 1)
            .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-9 && *x >= 0.0 { names.get(x.round() as usize).map(|s| s.to_string()).unwrap_or_default() } else { String::new() })
            .y_label_formatter(&|v| format!("{v:.3}"))
            .y_desc("ms per step")
            .draw()
            .map_err(plot_err)?;
        let width = 0.8 / kinds.len().max(1) as f64;
        let legend_style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (ki, kind) in kinds.iter().enumerate() {
            let color = colors[ki % colors.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = report
                .models
                .values()
                .enumerate()
                .filter_map(|(mi, m)| {
                    let v = *m.step_ms.get(kind)?;
                    let x0 = mi as f64 - 0.4 + ki as f64 * width;
                    Some(Rectangle::new([(x0, lo), (x0 + width, v)], color.filled()))
                })
                .collect();
            chart.draw_series(rects).map_err(plot_err)?;
            let x = 72 + 110 * ki as i32;
            legend_area.draw(&Rectangle::new([(x, 9), (x + 12, 21)], color.filled())).map_err(plot_err)?;
            legend_area.draw(&Text::new(kind.to_string(), (x + 18, 15), legend_style.clone())).map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}
