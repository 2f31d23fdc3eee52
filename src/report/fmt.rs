//! Number formatting shared by the Markdown reports.

/// A number in scientific notation with three significant digits; `0` stays `0`.
pub fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v:.2e}")
    }
}

/// A value printed with enough digits to tell neighbouring floats apart.
pub fn full(v: f64) -> String {
    format!("{v:.17e}")
}

/// A Markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}|\n", header.join(" | "), header.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for r in rows {
        s += &format!("| {} |\n", r.join(" | "));
    }
    s
}
