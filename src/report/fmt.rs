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

/// ULP counts above this are printed rounded: past it the exact count carries no more
/// meaning, and across zero (values of opposite sign) it is in the quintillions.
const ULPS_EXACT_UP_TO: u64 = 1_000_000;

/// A ULP distance: exact when small, `9.1e18` style when huge, `-` when undefined
/// (`u64::MAX`, a NaN or infinity on either side).
pub fn ulps(n: u64) -> String {
    if n == u64::MAX {
        "-".into()
    } else if n > ULPS_EXACT_UP_TO {
        format!("{:.1e}", n as f64)
    } else {
        n.to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulps_exact_when_small_rounded_when_huge_dash_when_undefined() {
        assert_eq!(ulps(0), "0");
        assert_eq!(ulps(232), "232");
        assert_eq!(ulps(1_000_000), "1000000");
        assert_eq!(ulps(39_991_066), "4.0e7");
        assert_eq!(ulps(9_126_449_036_324_608_426), "9.1e18");
        assert_eq!(ulps(u64::MAX - 1), "1.8e19");
        assert_eq!(ulps(u64::MAX), "-");
    }
}

/// `engine + torch`: the backends of one side of a split.
pub fn names(kinds: &[crate::backends::BackendKind]) -> String {
    kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" + ")
}
