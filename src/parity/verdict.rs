//! Verdicts from pairwise comparisons: which voice is the odd one out.

/// The one name whose every pair fails while every pair without it holds; `None` when
/// no single name explains the failures (two against two, everyone apart, or fewer
/// than three voices).
pub fn odd_one_out<'a>(names: &[&'a str], pair_fails: impl Fn(&str, &str) -> bool) -> Option<&'a str> {
    if names.len() < 3 {
        return None;
    }
    names.iter().copied().find(|&k| {
        names.iter().enumerate().all(|(i, &a)| names[i + 1..].iter().all(|&b| pair_fails(a, b) == (a == k || b == k)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_one_out_needs_a_single_explanation() {
        let names = ["engine", "candle", "torch"];
        let fails = |bad: &'static str| move |a: &str, b: &str| a == bad || b == bad;
        assert_eq!(odd_one_out(&names, fails("candle")), Some("candle"));
        assert_eq!(odd_one_out(&names, |_: &str, _: &str| true), None);
        assert_eq!(odd_one_out(&names, |_: &str, _: &str| false), None);
        assert_eq!(odd_one_out(&names[..2], fails("candle")), None);
    }
}
