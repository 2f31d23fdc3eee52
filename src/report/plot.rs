//! Line charts as SVG strings (plotters), shared by every report.
//!
//! Nothing is drawn over the data: each panel's legend sits below its plotting area and
//! the labels of its reference lines in the right margin. Every series has a colour and
//! a marker shape of its own, staggered along the curve, so curves lying exactly on top
//! of each other can still be told apart. The ticks are computed here, never by
//! plotters: its logarithmic axis loops for ever on spans beyond f64 (a tolerance of
//! 1e300 over differences of 1e-18) and drops ticks below 2.2e-16.

use std::ops::Range;

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn like series `look` of a panel (default: its own position), so that one run
    /// keeps its colour and marker across panels that leave some series out.
    look: Option<usize>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points, look: None }
    }

    /// Drawn like the series at position `i`.
    pub fn like(self, i: usize) -> Series {
        Series { look: Some(i), ..self }
    }
}

/// What the x values are; in these reports every x is a whole number.
pub enum XAxis {
    /// A count (step, epoch): ticks at whole numbers only.
    Count,
    /// Position i is called `names[i]` (parameters in forward order): one tick per name.
    Named(Vec<String>),
}

/// One panel: a title, axis labels and its lines.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Horizontal reference lines (value, label), e.g. a tolerance; labelled in the
    /// right margin.
    pub hlines: Vec<(f64, String)>,
    /// Values above this (and NaN) are drawn at it (a diverging run would flatten the others).
    pub y_clip: Option<f64>,
    /// Values below this (zero differences, which a log axis cannot show) are drawn at
    /// it, on a line labelled as exact agreement when any point lies there.
    pub y_floor: Option<f64>,
}

impl Panel {
    /// The look of each series: its own position unless told otherwise.
    fn looks(&self) -> Vec<usize> {
        self.series.iter().enumerate().map(|(i, s)| s.look.unwrap_or(i)).collect()
    }

    /// The reference lines drawn: the given ones the axis can show (finite; positive on a
    /// log axis), held within its bounds, and the floor when some point is on it.
    fn reference_lines(&self) -> Vec<(f64, String)> {
        let on_floor = |f: f64| self.series.iter().flat_map(|s| &s.points).any(|&(_, y)| y <= f);
        let floor = self.y_floor.filter(|&f| on_floor(f)).map(|f| (f, "exact agreement".to_string()));
        let shown = |&(v, _): &(f64, String)| v.is_finite() && (!self.log_y || v > 0.0);
        self.hlines.iter().cloned().chain(floor).filter(shown).map(|(v, l)| (clamp_y(self.log_y, v), l)).collect()
    }
}

const FONT: &str = "sans-serif";
const TICK_FONT: u32 = 13;
const LEGEND_FONT: u32 = 13;
const HLINE_FONT: u32 = 12;
/// Height of one row of the legend strip below a chart, in pixels.
const LEGEND_ROW: i32 = 18;
/// Width of a legend entry's line sample; its marker sits in the middle.
const SWATCH: i32 = 28;
const Y_LABEL_AREA: i32 = 72;
const MARGIN: i32 = 10;
/// Markers per series at most; longer series get one every few points.
const MAX_MARKERS: usize = 16;
/// Magnitudes beyond these are drawn at them, so every range and tick stays finite.
const LOG_MIN: f64 = 1e-300;
const LIN_MAX: f64 = 1e300;

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

/// Marker shapes, hollow so that markers drawn on the same spot stay visible. Seven
/// shapes against nine colours: no two of the first 63 series look alike.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    TriangleUp,
    Diamond,
    TriangleDown,
    Cross,
    Plus,
}

const SHAPES: [Shape; 7] =
    [Shape::Circle, Shape::Square, Shape::TriangleUp, Shape::Diamond, Shape::TriangleDown, Shape::Cross, Shape::Plus];

/// How series `i` is drawn.
#[derive(Clone, Copy)]
struct Look {
    color: RGBColor,
    shape: Shape,
}

impl Look {
    fn of(i: usize) -> Look {
        Look { color: COLORS[i % COLORS.len()], shape: SHAPES[i % SHAPES.len()] }
    }
}

/// An axis whose ticks are ours: `bold` labelled, `light` grid lines only.
struct Ticks<R> {
    inner: R,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticks<R> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plotting failed: {e}"))
}

/// Panels stacked vertically in one SVG.
pub fn stacked_svg(panels: &[Panel], width: u32, panel_height: u32) -> Result<String> {
    grid_svg(panels, 1, width, panel_height)
}

/// Panels in rows of `columns`, left to right, in one SVG.
pub fn grid_svg(panels: &[Panel], columns: usize, panel_width: u32, panel_height: u32) -> Result<String> {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let frame = Frame::fitting(panels);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (panel_width * columns as u32, panel_height * rows as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
            draw_panel(area, panel, &frame)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Room around the plotting area shared by every panel of a figure, so that their axes
/// line up: the right margin holds the reference-line labels, the band under the x axis
/// the parameter names.
struct Frame {
    right: i32,
    names: i32,
}

impl Frame {
    fn fitting(panels: &[Panel]) -> Frame {
        let right = panels
            .iter()
            .flat_map(Panel::reference_lines)
            .map(|(_, l)| text_width(&l, HLINE_FONT) + 8)
            .max()
            .unwrap_or(0);
        let names = panels
            .iter()
            .flat_map(|p| match &p.x_axis {
                XAxis::Named(names) => names.as_slice(),
                XAxis::Count => &[],
            })
            .map(|n| text_width(n, TICK_FONT) + 4)
            .max()
            .unwrap_or(16);
        Frame { right, names }
    }
}

/// Approximate width of `text` in pixels at plotters' font `size` (the SVG backend
/// writes font-size = size / 1.24; sans-serif glyphs average about 0.6 em).
fn text_width(text: &str, size: u32) -> i32 {
    (text.chars().count() as f64 * size as f64 * 0.5).ceil() as i32
}

/// The points of a series as drawn: clipped at `y_clip`, `None` where nothing can be
/// drawn (NaN or infinity without a clip, non-positive on a log axis).
fn drawable(p: &Panel, points: &[(f64, f64)]) -> Vec<Option<(f64, f64)>> {
    points
        .iter()
        .map(|&(x, y)| {
            let y = match (p.y_clip, p.y_floor) {
                (Some(c), _) if y > c || y.is_nan() => c,
                (_, Some(f)) if y < f => f,
                _ => y,
            };
            let ok = x.is_finite() && y.is_finite() && (!p.log_y || y > 0.0);
            ok.then(|| (x, clamp_y(p.log_y, y)))
        })
        .collect()
}

fn clamp_y(log_y: bool, y: f64) -> f64 {
    if log_y {
        y.clamp(LOG_MIN, 1.0 / LOG_MIN)
    } else {
        y.clamp(-LIN_MAX, LIN_MAX)
    }
}

/// Runs of consecutive drawable points: a line is broken where a point cannot be drawn
/// instead of bridging the gap.
fn segments(points: &[Option<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    points.split(Option::is_none).filter(|s| !s.is_empty()).map(|s| s.iter().flatten().copied().collect()).collect()
}

/// Indices of the points of series `i` (of `n`) that get a marker: at most about
/// MAX_MARKERS, staggered between series (while each keeps a few) so that identical
/// curves show every series' markers side by side.
fn marker_indices(len: usize, i: usize, n: usize) -> impl Iterator<Item = usize> {
    let stride = len.div_ceil(MAX_MARKERS).max(n.min(len / 4)).max(1);
    let offset = i * stride / n.max(1) % stride;
    (offset..len).step_by(stride)
}

/// Multiples of a 1-2-5 step, at most about `target` of them, between `lo` and `hi`.
fn nice_ticks(lo: f64, hi: f64, target: f64, min_step: f64) -> Vec<f64> {
    let raw = ((hi - lo) / target).max(min_step);
    let decade = 10f64.powf(raw.log10().floor());
    let step =
        [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * decade).find(|&s| s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * decade);
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    (first..=last).map(|k| k as f64 * step).collect()
}

/// The x range and its ticks: whole numbers only, half a unit of room on either side so
/// that a single epoch sits in the middle of the axis.
fn x_axis(p: &Panel, points: &[Vec<Option<(f64, f64)>>]) -> (f64, f64, Vec<f64>) {
    match &p.x_axis {
        XAxis::Named(names) => {
            let n = names.len().max(1);
            (-0.5, n as f64 - 0.5, (0..names.len()).map(|i| i as f64).collect())
        }
        XAxis::Count => {
            let xs = points.iter().flatten().flatten().map(|&(x, _)| x);
            let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
            let (x0, x1) = if x0 <= x1 { (x0, x1) } else { (0.0, 1.0) };
            (x0 - 0.5, x1 + 0.5, nice_ticks(x0, x1, 8.0, 1.0))
        }
    }
}

/// The y range: every drawable point and every reference line.
fn y_range(p: &Panel, points: &[Vec<Option<(f64, f64)>>]) -> (f64, f64) {
    let lines = p.reference_lines().into_iter().map(|(v, _)| v);
    let ys = points.iter().flatten().flatten().map(|&(_, y)| y).chain(lines);
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    match (y0 <= y1, p.log_y) {
        (false, true) => (1.0, 10.0),
        (false, false) => (0.0, 1.0),
        (true, true) => (y0 / 2.0, y1 * 2.0),
        (true, false) => {
            let pad = ((y1 - y0) * 0.05).max(y0.abs().max(y1.abs()) * 0.01).max(1e-9);
            (y0 - pad, y1 + pad)
        }
    }
}

/// Log-axis ticks: (labelled, grid only). Decades, every few of them on a wide axis;
/// 1-2-5 or every mantissa on an axis too narrow to hold three decades.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (e0, e1) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
    let decades: Vec<f64> = (e0..=e1).map(|e| 10f64.powi(e)).collect();
    // A grid line per decade only while they stay apart; beyond, the labelled ones.
    let light = if decades.len() <= 30 { decades.clone() } else { vec![] };
    if decades.len() >= 3 {
        let stride = decades.len().div_ceil(8) as i32;
        let bold = (e0..=e1).filter(|e| e.rem_euclid(stride) == 0).map(|e| 10f64.powi(e)).collect();
        return (bold, light);
    }
    let mantissas = |ms: &[f64]| -> Vec<f64> {
        (e0 - 1..=e1)
            .flat_map(|e| ms.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let coarse = mantissas(&[1.0, 2.0, 5.0]);
    let bold = if coarse.len() >= 3 { coarse } else { mantissas(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]) };
    (bold, light)
}

fn log_label(v: f64) -> String {
    format!("{v:.0e}")
}

/// Linear ticks carry as many decimals as their step needs.
fn linear_label(v: f64, step: f64) -> String {
    if step >= 1e-4 && v.abs() < 1e6 {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2e}")
    }
}

/// Where the legend entries go in the strip below the chart: (x, row) per entry,
/// wrapping at `width`.
fn legend_layout(labels: &[&str], width: i32) -> Vec<(i32, i32)> {
    let (mut x, mut row) = (Y_LABEL_AREA + MARGIN, 0);
    labels
        .iter()
        .map(|l| {
            let w = SWATCH + 6 + text_width(l, LEGEND_FONT) + 18;
            if x + w > width && x > Y_LABEL_AREA + MARGIN {
                (x, row) = (Y_LABEL_AREA + MARGIN, row + 1);
            }
            let at = (x, row);
            x += w;
            at
        })
        .collect()
}

/// One panel: the chart, and the legend in a strip below it.
fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel, frame: &Frame) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points: Vec<Vec<Option<(f64, f64)>>> = p.series.iter().map(|s| drawable(p, &s.points)).collect();
    let (w, h) = area.dim_in_pixel();
    let labels: Vec<&str> = p.series.iter().map(|s| s.label.as_str()).collect();
    let legend = legend_layout(&labels, w as i32);
    let legend_height = legend.last().map_or(0, |&(_, row)| (row + 1) * LEGEND_ROW + 6);
    let (chart_area, legend_area) = area.split_vertically(h as i32 - legend_height);
    let (x0, x1, x_ticks) = x_axis(p, &points);
    let (y0, y1) = y_range(p, &points);
    let mut builder = ChartBuilder::on(&chart_area);
    builder
        .caption(&p.title, (FONT, 18))
        .margin(MARGIN)
        .margin_right(MARGIN + frame.right)
        .x_label_area_size(frame.names + 24)
        .y_label_area_size(Y_LABEL_AREA);
    let x = Ticks { inner: RangedCoordf64::from(x0..x1), bold: x_ticks, light: vec![] };
    if p.log_y {
        let (bold, light) = log_ticks(y0, y1);
        let y = Ticks { inner: LogCoord::from((y0..y1).log_scale()), bold, light };
        draw_chart(&mut builder, &chart_area, p, &points, x, y, &log_label)?;
    } else {
        let bold = nice_ticks(y0, y1, 6.0, 0.0);
        let step = if bold.len() > 1 { bold[1] - bold[0] } else { y1 - y0 };
        let y = Ticks { inner: RangedCoordf64::from(y0..y1), bold, light: vec![] };
        draw_chart(&mut builder, &chart_area, p, &points, x, y, &|v| linear_label(v, step))?;
    }
    draw_legend(&legend_area, p, &legend)
}

/// The chart itself: mesh, lines, markers, parameter names, reference lines.
fn draw_chart<'a, DB, Y>(
    builder: &mut ChartBuilder<'a, '_, DB>,
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    points: &[Vec<Option<(f64, f64)>>],
    x: Ticks<RangedCoordf64>,
    y: Ticks<Y>,
    y_label: &dyn Fn(f64) -> String,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    let mut c = builder.build_cartesian_2d(x, y).map_err(plot_err)?;
    let named = matches!(p.x_axis, XAxis::Named(_));
    c.configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style((FONT, TICK_FONT))
        .x_label_formatter(&|v| if named { String::new() } else { format!("{v:.0}") })
        .y_label_formatter(&|v| y_label(*v))
        .draw()
        .map_err(plot_err)?;
    let base = area.get_base_pixel();
    let to_area = |(px, py): (i32, i32)| (px - base.0, py - base.1);
    let looks = p.looks();
    let n = looks.iter().max().map_or(0, |m| m + 1);
    for (pts, &i) in points.iter().zip(&looks) {
        let look = Look::of(i);
        for seg in segments(pts) {
            c.draw_series(LineSeries::new(seg, look.color.stroke_width(2))).map_err(plot_err)?;
        }
        for pt in marker_indices(pts.len(), i, n).filter_map(|j| pts[j]) {
            draw_marker(area, look, to_area(c.backend_coord(&pt)))?;
        }
    }
    let (xr, yr) = (c.x_range(), c.y_range());
    if let XAxis::Named(names) = &p.x_axis {
        let style = TextStyle::from((FONT, TICK_FONT).into_font())
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in names.iter().enumerate() {
            let (px, py) = to_area(c.backend_coord(&(i as f64, yr.start)));
            area.draw_text(name, &style, (px, py + 8)).map_err(plot_err)?;
        }
    }
    let mut labels = Vec::new();
    let lines = p.reference_lines();
    for (v, label) in &lines {
        let v = v.clamp(yr.start, yr.end);
        c.draw_series(DashedLineSeries::new(vec![(xr.start, v), (xr.end, v)], 6, 4, BLACK.mix(0.7).stroke_width(1)))
            .map_err(plot_err)?;
        labels.push((to_area(c.backend_coord(&(xr.end, v))), label));
    }
    draw_hline_labels(area, labels)
}

/// Reference-line labels in the right margin, each at its line's height, pushed apart
/// when two lines are closer than a line of text.
fn draw_hline_labels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    mut labels: Vec<((i32, i32), &String)>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    labels.sort_by_key(|((_, py), _)| *py);
    let style = TextStyle::from((FONT, HLINE_FONT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut next_free = i32::MIN;
    for ((px, py), label) in labels {
        let py = py.max(next_free);
        area.draw_text(label, &style, (px + 6, py)).map_err(plot_err)?;
        next_free = py + HLINE_FONT as i32;
    }
    Ok(())
}

/// One entry per series, laid out by `legend_layout`: a line sample with the series'
/// marker on it, then the label.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel, at: &[(i32, i32)]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let style = TextStyle::from((FONT, LEGEND_FONT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for ((s, i), &(x, row)) in p.series.iter().zip(p.looks()).zip(at) {
        let look = Look::of(i);
        let y = row * LEGEND_ROW + LEGEND_ROW / 2 + 2;
        area.draw(&PathElement::new(vec![(x, y), (x + SWATCH, y)], look.color.stroke_width(2))).map_err(plot_err)?;
        draw_marker(area, look, (x + SWATCH / 2, y))?;
        area.draw_text(&s.label, &style, (x + SWATCH + 6, y)).map_err(plot_err)?;
    }
    Ok(())
}

/// A marker centred on pixel `(x, y)` of `area`.
fn draw_marker<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, look: Look, (x, y): (i32, i32)) -> Result<()>
where
    DB::ErrorType: 'static,
{
    const R: i32 = 4;
    let style = look.color.stroke_width(2);
    let outline = |corners: &[(i32, i32)]| {
        let mut path: Vec<(i32, i32)> = corners.iter().map(|&(dx, dy)| (x + dx, y + dy)).collect();
        path.push(path[0]);
        area.draw(&PathElement::new(path, style))
    };
    let strokes = |a: [(i32, i32); 2], b: [(i32, i32); 2]| {
        area.draw(&PathElement::new(vec![(x + a[0].0, y + a[0].1), (x + a[1].0, y + a[1].1)], style))?;
        area.draw(&PathElement::new(vec![(x + b[0].0, y + b[0].1), (x + b[1].0, y + b[1].1)], style))
    };
    match look.shape {
        // A notch wider than the square, so that the two stay apart when they coincide.
        Shape::Circle => area.draw(&Circle::new((x, y), R + 1, style)),
        Shape::Square => outline(&[(-R, -R), (R, -R), (R, R), (-R, R)]),
        Shape::TriangleUp => outline(&[(0, -R - 1), (R + 1, R), (-R - 1, R)]),
        Shape::Diamond => outline(&[(0, -R - 1), (R + 1, 0), (0, R + 1), (-R - 1, 0)]),
        Shape::TriangleDown => outline(&[(0, R + 1), (R + 1, -R), (-R - 1, -R)]),
        Shape::Cross => strokes([(-R, -R), (R, R)], [(-R, R), (R, -R)]),
        Shape::Plus => strokes([(-R - 1, 0), (R + 1, 0)], [(0, -R - 1), (0, R + 1)]),
    }
    .map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(log_y: bool, series: Vec<Series>, hlines: Vec<(f64, String)>) -> Panel {
        Panel {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "y".into(),
            x_axis: XAxis::Count,
            log_y,
            series,
            hlines,
            y_clip: None,
            y_floor: None,
        }
    }

    /// plotters' own log ticks loop for ever on this span; ours must not, and NaN and
    /// infinities must neither hang nor break the chart.
    #[test]
    fn huge_reference_lines_and_non_finite_points_terminate() {
        for log_y in [true, false] {
            let series = vec![Series::new(
                "a",
                vec![(0.0, 1e-18), (1.0, f64::NAN), (2.0, f64::INFINITY), (3.0, f64::NEG_INFINITY), (4.0, 1e-16)],
            )];
            let hlines = vec![(1e300, "rtol 1e300".into()), (f64::MAX, "max".into()), (f64::NAN, "nan".into())];
            let svg = stacked_svg(&[panel(log_y, series, hlines)], 600, 300).unwrap();
            assert!(svg.contains("rtol 1e300"), "the reference line is labelled");
        }
    }

    #[test]
    fn the_exact_agreement_floor_is_labelled_when_a_point_lies_on_it() {
        let mut p =
            panel(true, vec![Series::new("a", vec![(0.0, 0.0), (1.0, 1e-16)])], vec![(1e-7, "rtol 1.0e-7".into())]);
        p.y_floor = Some(1e-18);
        assert_eq!(drawable(&p, &p.series[0].points)[0], Some((0.0, 1e-18)), "zero is drawn at the floor");
        assert!(stacked_svg(&[p], 600, 300).unwrap().contains("exact agreement"));
        let mut p = panel(true, vec![Series::new("a", vec![(0.0, 1e-17)])], vec![]);
        p.y_floor = Some(1e-18);
        assert!(p.reference_lines().is_empty(), "no floor line where no point needs it");
    }

    #[test]
    fn a_single_epoch_gets_one_integer_tick_and_a_marker() {
        let p = panel(false, vec![Series::new("m", vec![(1.0, 92.5)])], vec![]);
        let points: Vec<_> = p.series.iter().map(|s| drawable(&p, &s.points)).collect();
        assert_eq!(x_axis(&p, &points), (0.5, 1.5, vec![1.0]));
        assert_eq!(marker_indices(1, 0, 1).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn count_ticks_are_whole_numbers() {
        for n in [1usize, 3, 25, 120, 1000] {
            let ticks = nice_ticks(0.0, n as f64, 8.0, 1.0);
            assert!(!ticks.is_empty() && ticks.len() <= 11, "{n}: {ticks:?}");
            assert!(ticks.iter().all(|t| t.fract() == 0.0), "{n}: {ticks:?}");
        }
    }

    #[test]
    fn identical_curves_get_staggered_markers() {
        let first: Vec<usize> = marker_indices(30, 0, 3).collect();
        let last: Vec<usize> = marker_indices(30, 2, 3).collect();
        assert!(first.len() <= MAX_MARKERS && !first.is_empty());
        assert!(first.iter().all(|i| !last.contains(i)));
    }

    #[test]
    fn log_ticks_label_every_range() {
        let labels = |ticks: Vec<f64>| ticks.into_iter().map(log_label).collect::<Vec<_>>();
        assert_eq!(labels(log_ticks(5e-19, 2e-16).0), ["1e-18", "1e-17", "1e-16"]);
        assert!(log_ticks(1.1, 4.6).0.len() >= 3, "a narrow axis still gets labels");
        assert!(log_ticks(5e-301, 2e300).0.len() <= 9, "a huge axis gets few labels");
    }
}
