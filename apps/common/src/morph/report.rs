//! What the morphing experiment measured and how it is written: per pair and per method
//! results, the evaluation table, report.md, report.json and the pictures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use adeis_runtime::optim::OptimizerKind;
use serde::Serialize;

use super::verify::Verifier;
use super::MorphOptions;
use crate::chart::{line_chart, with_column_headers, LineChart, Series};
use crate::image::{digit_grid, Canvas};
use crate::Error;

/// One pair's outcome under one method.
#[derive(Clone, Debug, Serialize)]
pub struct PairResult {
    /// The identity loss of the initial morph.
    pub loss_initial: f64,
    /// ... and of the optimised one.
    pub loss_final: f64,
    /// The feature distance of the morph to image a.
    pub d_a: f64,
    /// ... and to image b.
    pub d_b: f64,
    /// The verification distance of the morph to image a (the identity features' d_a where
    /// the models have no separate verification embedding).
    pub verify_a: f64,
    /// ... and to image b.
    pub verify_b: f64,
    /// Whether the verifier accepts the morph as both (at FMR 0.1%).
    pub accepted: bool,
    /// ... at each of the verifier's operating points (FMR 0.1%, 1%, 10%).
    pub accepted_at: Vec<bool>,
    /// The morph's pixels.
    pub morph: Vec<f64>,
}

/// One method over all pairs.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    /// The `--methods` name.
    pub method: String,
    /// How the tables name it.
    pub label: String,
    /// The fraction of morphs accepted as both images (MMPMR) at FMR 0.1%.
    pub mmpmr: f64,
    /// ... at each of the verifier's operating points (FMR 0.1%, 1%, 10%).
    pub mmpmr_at: Vec<f64>,
    /// The pairs whose identity loss ended above its start (an optimiser that overshot, or
    /// a gradient that points the wrong way).
    pub pairs_worse: usize,
    /// The mean identity loss at the start.
    pub mean_loss_initial: f64,
    /// ... and at the end.
    pub mean_loss_final: f64,
    /// Forward model evaluations per morph (encoding included), and VJPs.
    pub nfe_per_morph: usize,
    /// VJPs per morph.
    pub vjps_per_morph: usize,
    /// Wall time of the method over all pairs (one batch) and per morph.
    pub seconds: f64,
    /// Seconds per morph.
    pub seconds_per_morph: f64,
    /// Mean identity loss over the pairs after each iteration (index 0: the start).
    pub loss_curve: Vec<f64>,
    /// Cosine similarity of the method's first gradient (x_T and z together) with the exact
    /// gradient of the sampler that ran (the discrete adjoint) at the same point: how well the
    /// method's gradient points where the loss goes down.
    pub grad_cosine: Option<f64>,
    /// |gradient| / |exact gradient| at the same point.
    pub grad_norm_ratio: Option<f64>,
    /// Each pair's outcome.
    pub pairs: Vec<PairResult>,
}

/// Everything `adeis morph` measured.
#[derive(Clone, Debug, Serialize)]
pub struct MorphReport {
    /// The pairs, as indices of the held-out images.
    pub pairs: Vec<(usize, usize)>,
    /// The pairs' classes.
    pub classes: Vec<(usize, usize)>,
    /// Optimisation iterations.
    pub iters: usize,
    /// Sampler steps.
    pub steps: usize,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Its learning rate.
    pub lr: f64,
    /// The seed of the pairs' choice.
    pub seed: u64,
    /// AdjointDEIS's own grid's steps, if it had one.
    pub adjoint_steps: Option<usize>,
    /// The verification threshold and its error rates.
    pub verifier: Verifier,
    /// Mean absolute pixel error of decoding the encoded originals (DDIM inversion round trip).
    pub reconstruction_error: f64,
    /// Model evaluations per morph spent on encoding the two images.
    pub encode_nfe_per_morph: usize,
    /// The unoptimised morph of each pair (ODE sample from the blended start).
    pub initial_morphs: Vec<Vec<f64>>,
    /// Each method's results.
    pub methods: Vec<MethodResult>,
    /// The files written.
    pub outputs: Vec<String>,
    /// Side of the (square) images.
    pub image_side: usize,
    /// What the images are ("digits", "Fashion-MNIST images").
    pub subject: String,
    /// What verifies identities.
    pub verified_by: String,
}

/// The upscaling of an image of `side` pixels in a pair's picture (about 96 pixels) and in
/// pairs.png (about 64).
pub fn picture_scales(side: usize) -> (usize, usize) {
    ((96 / side).max(1), (64 / side).max(1))
}

/// Writes the pictures, report.md, report.json and report.html into `opts.out`, all or nothing:
/// each is staged beside its target and they are renamed into place together at the end.
pub fn write_outputs(
    report: &mut MorphReport,
    img_a: &[f64],
    img_b: &[f64],
    opts: &MorphOptions,
) -> Result<(), Error> {
    let out = |name: &str| opts.out.join(name);
    let mut written: Vec<PathBuf> = Vec::new();
    let mut files = adeis_io::Outputs::new();
    let png = |canvas: Canvas, p: &Path| canvas.png_bytes().map_err(|e| Error::file(p, e));
    // One grid per pair: a, b, the initial morph, then each optimising method's morph; and all
    // of them as the rows of pairs.png.
    let mut all_rows = Vec::new();
    let side = report.image_side;
    let pixels = side * side;
    let (big, small) = picture_scales(side);
    let method_names: Vec<String> = report
        .methods
        .iter()
        .filter(|m| m.method != "none")
        .map(|m| m.label.clone())
        .collect();
    let headers = |a: String, b: String| {
        let mut h = vec![a, b, "initial morph".to_string()];
        h.extend(method_names.iter().cloned());
        h
    };
    let columns = |n: usize, cell: usize, gap: usize| -> Vec<(usize, usize)> {
        (0..n).map(|c| (gap + c * (cell + gap), cell)).collect()
    };
    let labelled = |grid: &Canvas, h: Vec<String>, cell: usize, gap: usize| {
        let cols = columns(h.len(), cell, gap);
        with_column_headers(grid, &h, &cols, 24)
    };
    for (i, (ca, cb)) in report.classes.iter().enumerate().take(opts.max_pair_images) {
        let mut row = vec![
            img_a[i * pixels..(i + 1) * pixels].to_vec(),
            img_b[i * pixels..(i + 1) * pixels].to_vec(),
            report.initial_morphs[i].clone(),
        ];
        row.extend(
            report
                .methods
                .iter()
                .filter(|m| m.method != "none")
                .map(|m| m.pairs[i].morph.clone()),
        );
        let p = out(&format!("pair_{i:03}_{ca}_{cb}.png"));
        let grid = digit_grid(std::slice::from_ref(&row), side, big, 6);
        let picture = labelled(
            &grid,
            headers(format!("a ({ca})"), format!("b ({cb})")),
            side * big,
            6,
        )
        .map_err(|e| Error::file(&p, e))?;
        files.stage(&p, &png(picture, &p)?)?;
        written.push(p);
        all_rows.push(row);
    }
    let p = out("pairs.png");
    let grid = digit_grid(&all_rows, side, small, 4);
    let picture = labelled(&grid, headers("a".into(), "b".into()), side * small, 4)
        .map_err(|e| Error::file(&p, e))?;
    files.stage(&p, &png(picture, &p)?)?;
    written.push(p);
    let curves: Vec<Series> = report
        .methods
        .iter()
        .map(|m| Series {
            name: m.label.clone(),
            values: m.loss_curve.clone(),
        })
        .collect();
    let p = out("loss_curve.png");
    let title = format!(
        "Morphing {}: mean identity loss by method ({} pairs)",
        report.subject,
        report.pairs.len()
    );
    let chart = line_chart(&LineChart {
        title: &title,
        x_label: "optimisation iteration",
        y_label: "mean identity loss",
        series: &curves,
        width: 800,
        height: 450,
    })
    .map_err(|e| Error::file(&p, e))?;
    files.stage(&p, &png(chart, &p)?)?;
    written.push(p);
    let p = out("report.md");
    written.push(p.clone());
    let p_json = out("report.json");
    written.push(p_json.clone());
    let p_html = out("report.html");
    written.push(p_html.clone());
    report.outputs = written.iter().map(|p| p.display().to_string()).collect();
    let md = markdown(report);
    files.stage(&p, md.as_bytes())?;
    let mut pictures = vec![
        (
            "Mean identity loss of the morphs against the optimisation iteration, by method"
                .to_string(),
            "loss_curve.png".to_string(),
        ),
        (
            "Every pair: a, b, the initial (unoptimised) morph, then each method's optimised morph"
                .to_string(),
            "pairs.png".to_string(),
        ),
    ];
    for f in written.iter().filter_map(|p| p.file_name()?.to_str()) {
        if f.starts_with("pair_") {
            pictures.push((format!("`{f}`"), f.to_string()));
        }
    }
    let title = format!("Morphing {}", report.subject);
    files.stage(
        &p_html,
        crate::html::page(&title, &md, &pictures).as_bytes(),
    )?;
    files.stage(
        &p_json,
        serde_json::to_string_pretty(report).unwrap().as_bytes(),
    )?;
    files.commit()?;
    Ok(())
}

/// The evaluation table (markdown).
pub fn table(r: &MorphReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| method | MMPMR at FMR {} | identity loss (start -> end) | pairs worse than the start | gradient cosine | NFE / morph | VJPs / morph | seconds (batch of {}) | seconds / morph |",
        operating_points(&r.verifier),
        r.pairs.len()
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for m in &r.methods {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} -> {:.3} | {} | {} | {} | {} | {:.1} | {:.3} |",
            m.label,
            m.mmpmr_at
                .iter()
                .map(|r| format!("{:.0}%", 100.0 * r))
                .collect::<Vec<_>>()
                .join(" / "),
            m.mean_loss_initial,
            m.mean_loss_final,
            if m.method == "none" {
                "-".to_string()
            } else {
                format!("{} of {}", m.pairs_worse, m.pairs.len())
            },
            m.grad_cosine.map_or("-".to_string(), |c| format!("{c:.3}")),
            m.nfe_per_morph,
            m.vjps_per_morph,
            m.seconds,
            m.seconds_per_morph
        );
    }
    s
}

/// "0.1% / 1% / 10%": the verifier's operating points.
fn operating_points(v: &Verifier) -> String {
    v.operating_points
        .iter()
        .map(|p| format!("{}%", 100.0 * p.target_fmr))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The verifier in one sentence: its threshold and genuine accept rate at each operating
/// point.
pub fn verifier_summary(v: &Verifier) -> String {
    let points: Vec<String> = v
        .operating_points
        .iter()
        .map(|p| {
            format!(
                "FMR {}%: distance < {:.4}, genuine accept rate {:.1}%",
                100.0 * p.target_fmr,
                p.threshold,
                100.0 * p.gar
            )
        })
        .collect();
    format!(
        "{} ({} impostor and {} genuine pairs)",
        points.join("; "),
        v.impostor_pairs,
        v.genuine_pairs
    )
}

fn markdown(r: &MorphReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Morphing report\n");
    let _ = writeln!(
        s,
        "{} pairs of held-out {}; {} iterations of {:?} (lr {}), {} sampler steps (DDIM for the ODE, SDE-DPM-Solver++1 for the SDE), AdjointDEIS on {}, seed {}.\n",
        r.pairs.len(), r.subject, r.iters, r.optimizer, r.lr, r.steps,
        r.adjoint_steps.map_or("the sampling grid".to_string(), |m| format!("its own grid of {m} steps")),
        r.seed
    );
    let v = &r.verifier;
    let _ = writeln!(
        s,
        "Verification on the cosine distance of {}, thresholds set on the held-out {}: {}. MMPMR: the fraction of morphs accepted as both images of their pair, at each operating point.\n",
        r.verified_by,
        r.subject,
        verifier_summary(v)
    );
    s.push_str(&table(r));
    let _ = writeln!(
        s,
        "\nNFE per morph includes the {} evaluations of the two DDIM inversions; the pairs run as one batch, so seconds per morph is the batch's time divided by the pairs. Encoding round trip (decode x_T^a): mean absolute pixel error {:.4} (pixels in [-1, 1]).\n",
        r.encode_nfe_per_morph, r.reconstruction_error
    );
    let _ = writeln!(s, "## Pairs\n");
    let mut head = "| pair | classes |".to_string();
    for m in &r.methods {
        let _ = write!(head, " {} d_a / d_b |", m.method);
    }
    let _ = writeln!(s, "{head}");
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(r.methods.len()));
    for (i, (ca, cb)) in r.classes.iter().enumerate() {
        let _ = write!(s, "| {i} | {ca}, {cb} |");
        for m in &r.methods {
            let p = &m.pairs[i];
            let _ = write!(
                s,
                " {:.3} / {:.3}{} |",
                p.d_a,
                p.d_b,
                if p.accepted { " (accepted)" } else { "" }
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## Files\n");
    let _ = writeln!(
        s,
        "- `pair_NNN_a_b.png`: image a, image b, the initial (unoptimised) morph, then the optimised morph of each method in the table's order, each column headed by its name; `pairs.png`: all of them, one pair per row\n- `loss_curve.png`: mean identity loss against the iteration, one line per method, named in its legend\n- `report.json`: everything here, with every morph's pixels; `report.html`: this report with its pictures"
    );
    s
}

/// The output folder's main files (for messages).
pub fn describe(out: &Path) -> String {
    format!(
        "{}/report.md (the table; report.html with the pictures), pair_*.png (a, b, the initial morph, then each method's optimised morph), loss_curve.png",
        out.display()
    )
}

#[cfg(test)]
mod header_tests {
    use super::*;
    use crate::chart::header_lines;
    use crate::morph::MorphMethod;
    use plotters::style::IntoFont;

    /// Every column header of the morph pictures fits its column, whole: wrapped, never cut,
    /// so that AdjointDEIS-1 (ODE) and (SDE) stay apart on the digits (8 x 8) and on
    /// Fashion-MNIST (28 x 28), in a pair's picture and in pairs.png.
    #[test]
    fn morph_headers_fit_whole() {
        crate::chart::register_fonts();
        let mut labels: Vec<String> = MorphMethod::ALL.iter().map(|m| m.2.to_string()).collect();
        labels.extend(["a (3)".to_string(), "b (7)".into(), "initial morph".into()]);
        for side in [8, 28] {
            let (big, small) = picture_scales(side);
            for cell in [side * big, side * small] {
                let columns = vec![(0, cell); labels.len()];
                let (size, lines) = header_lines(&labels, &columns, 24).unwrap();
                let font: plotters::style::FontDesc = (crate::chart::FONT, size).into_font();
                for (label, lines) in labels.iter().zip(&lines) {
                    let joined: String = lines.concat().split(' ').collect();
                    let whole: String = label.split(' ').collect();
                    assert_eq!(joined, whole, "{label} lost characters in {lines:?}");
                    for l in lines {
                        let w = font.box_size(l).unwrap().0 as usize;
                        assert!(w <= cell, "{l:?} is {w} px in a {cell}-px column");
                    }
                    assert!(lines.len() <= 4, "{label}: {lines:?} at {cell} px");
                }
            }
        }
    }
}
