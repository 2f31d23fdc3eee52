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

/// Two equal camps: the voices split into two groups of the same size (at least two
/// each), every pair inside a group holds and every pair across fails. With four
/// backends a two-against-two split has no majority to side with: both sides are
/// reported, and neither is picked.
pub fn no_majority<'a>(names: &[&'a str], pair_fails: impl Fn(&str, &str) -> bool) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let first = *names.first()?;
    let (side, other): (Vec<&str>, Vec<&str>) = names.iter().copied().partition(|&n| n == first || !pair_fails(first, n));
    let clique = |g: &[&str]| g.iter().enumerate().all(|(i, &a)| g[i + 1..].iter().all(|&b| !pair_fails(a, b)));
    let apart = side.iter().all(|&a| other.iter().all(|&b| pair_fails(a, b)));
    (side.len() >= 2 && side.len() == other.len() && clique(&side) && clique(&other) && apart).then_some((side, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_against_two_is_no_majority() {
        let names = ["engine", "candle", "torch", "burn"];
        let camp = |n: &str| n == "engine" || n == "torch";
        let split = |a: &str, b: &str| camp(a) != camp(b);
        assert_eq!(no_majority(&names, split), Some((vec!["engine", "torch"], vec!["candle", "burn"])));
        assert_eq!(odd_one_out(&names, split), None);
        // Three against one is an odd one out, not a split.
        let one = |a: &str, b: &str| a == "burn" || b == "burn";
        assert_eq!(no_majority(&names, one), None);
        assert_eq!(odd_one_out(&names, one), Some("burn"));
        // Everyone apart: neither.
        assert_eq!(no_majority(&names, |_: &str, _: &str| true), None);
        assert_eq!(no_majority(&names[..2], |_: &str, _: &str| true), None);
    }

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
