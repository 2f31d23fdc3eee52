//! Line charts as SVG strings (plotters), shared by every report.

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, axis labels and its lines.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Horizontal reference lines (value, label), e.g. a tolerance.
    pub hlines: Vec<(f64, String)>,
    /// Values above this are drawn at it (a diverging run would flatten the others).
    pub y_clip: Option<f64>,
}

const COLORS: [RGBColor; 9] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plotting failed: {e}"))
}

/// Panels stacked vertically in one SVG.
pub fn stacked_svg(panels: &[Panel], width: u32, panel_height: u32) -> Result<String> {
    let clipped: Vec<Panel> = panels.iter().map(clip).collect();
    let panels = clipped.as_slice();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, panel_height * panels.len() as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn clip(p: &Panel) -> Panel {
    let cap = |y: f64| match p.y_clip {
        Some(c) if y > c || y.is_nan() => c,
        _ => y,
    };
    Panel {
        title: p.title.clone(),
        x_label: p.x_label.clone(),
        y_label: p.y_label.clone(),
        log_y: p.log_y,
        series: p.series.iter().map(|s| Series { label: s.label.clone(), points: s.points.iter().map(|&(x, y)| (x, cap(y))).collect() }).collect(),
        hlines: p.hlines.clone(),
        y_clip: p.y_clip,
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, p: &Panel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let finite = |v: f64| v.is_finite() && (!p.log_y || v > 0.0);
    let pts = p.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && finite(*y));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts.chain(p.hlines.iter().map(|(v, _)| (f64::NAN, *v)).filter(|(_, y)| finite(*y)).collect::<Vec<_>>().iter()) {
        if x.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if !y0.is_finite() {
        (y0, y1) = (1.0, 10.0);
    }
    let mut chart = ChartBuilder::on(area);
    chart.caption(&p.title, ("sans-serif", 18)).margin(12).x_label_area_size(36).y_label_area_size(72);
    if p.log_y {
        let (lo, hi) = (y0 / 2.0, y1 * 2.0);
        let mut c = chart.build_cartesian_2d(x0..x1, (lo..hi).log_scale()).map_err(plot_err)?;
        c.configure_mesh()
            .x_desc(&p.x_label)
            .y_desc(&p.y_label)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(plot_err)?;
        draw_series(&mut c, p, x0, x1)?;
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-12);
        let mut c = chart.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)).map_err(plot_err)?;
        c.configure_mesh().x_desc(&p.x_label).y_desc(&p.y_label).x_label_formatter(&x_label).draw().map_err(plot_err)?;
        draw_series(&mut c, p, x0, x1)?;
    }
    Ok(())
}

/// Whole numbers (steps, epochs) without a decimal point.
fn x_label(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn draw_series<'a, DB: DrawingBackend + 'a, X, Y>(c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>, p: &Panel, x0: f64, x1: f64) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    let keep = |y: f64| y.is_finite() && (!p.log_y || y > 0.0);
    for (i, s) in p.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|&(x, y)| x.is_finite() && keep(y)).collect();
        // Each series gets its own marker so lines lying exactly on top of each other
        // stay distinguishable.
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        // Markers only where they can be told apart; long traces are lines.
        if pts.len() > 80 {
            continue;
        }
        let size = 3 + (i as i32 % 3);
        match i % 3 {
            0 => c.draw_series(pts.iter().map(|&pt| Circle::new(pt, size, color.stroke_width(1)))).map(|_| ()),
            1 => c.draw_series(pts.iter().map(|&pt| Cross::new(pt, size, color.stroke_width(1)))).map(|_| ()),
            _ => c.draw_series(pts.iter().map(|&pt| TriangleMarker::new(pt, size, color.stroke_width(1)))).map(|_| ()),
        }
        .map_err(plot_err)?;
    }
    for (v, label) in &p.hlines {
        if keep(*v) {
            c.draw_series(LineSeries::new(vec![(x0, *v), (x1, *v)], BLACK.mix(0.5).stroke_width(1)))
                .map_err(plot_err)?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
        }
    }
    c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw().map_err(plot_err)?;
    Ok(())
}
