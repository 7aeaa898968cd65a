//! Reading the final answer out of a solution: strictly from a `#### <integer>` line (GSM8K's
//! convention, as ETS's reward uses it), or flexibly from the last number in the text.

/// How to find the answer in a solution's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Extraction {
    /// Only a `#### <number>` marker counts (the last one in the text).
    Strict,
    /// The `####` marker if present, else the last number anywhere in the text.
    Flexible,
}

impl Extraction {
    /// Every extraction by name, with a one-line description.
    pub const NAMES: [(&str, &str); 2] = [
        ("strict", "only a `#### n` marker counts"),
        (
            "flexible",
            "the `#### n` marker, else the last number in the text",
        ),
    ];

    /// Its name, as [`Extraction::from_str`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Flexible => "flexible",
        }
    }
}

impl std::str::FromStr for Extraction {
    type Err = crate::SpecError;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "strict" => Ok(Self::Strict),
            "flexible" => Ok(Self::Flexible),
            other => Err(crate::SpecError::Strategy(format!(
                "unknown answer extraction {other:?}; use strict or flexible"
            ))),
        }
    }
}

/// A number as written, normalised: commas and a leading `+` dropped, trailing `.0…` removed,
/// e.g. "1,234.00" → "1234". None if `token` is not a number.
pub fn normalize_number(token: &str) -> Option<String> {
    let t = token.trim().trim_end_matches('.').replace(',', "");
    let t = t.strip_prefix('+').unwrap_or(&t).to_string();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => ("-", rest.to_string()),
        None => ("", t),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i.to_string(), f.to_string()),
        None => (digits, String::new()),
    };
    if int.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let sign = if int == "0" && frac.is_empty() {
        ""
    } else {
        sign
    };
    Some(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// Every number-like token in `text`, in order, normalised.
fn numbers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ',' | '-' | '+')))
        .filter_map(normalize_number)
        .collect()
}

/// The answer `text` gives, normalised, or None when it gives none.
pub fn extract_answer(text: &str, extraction: Extraction) -> Option<String> {
    if let Some(pos) = text.rfind("####") {
        let rest = &text[pos + 4..];
        let line = rest.lines().next().unwrap_or("");
        if let Some(first) = numbers(line).into_iter().next() {
            return Some(first);
        }
    }
    match extraction {
        Extraction::Strict => None,
        Extraction::Flexible => numbers(text).pop(),
    }
}

/// Whether `text`'s answer equals `truth` (both normalised as numbers).
pub fn is_correct(text: &str, truth: &str, extraction: Extraction) -> bool {
    match (extract_answer(text, extraction), normalize_number(truth)) {
        (Some(a), Some(t)) => a == t,
        _ => false,
    }
}

/// The most frequent answer among `answers` (None entries abstain); ties go to the answer seen
/// first. None when nobody answered.
pub fn majority_vote(answers: &[Option<String>]) -> Option<String> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for answer in answers.iter().flatten() {
        match counts.iter_mut().find(|(a, _)| *a == answer.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((answer.as_str(), 1)),
        }
    }
    let best = counts.iter().map(|&(_, n)| n).max()?;
    counts
        .into_iter()
        .find(|&(_, n)| n == best)
        .map(|(a, _)| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_vote_counts_and_breaks_ties_by_order() {
        let v = |xs: &[Option<&str>]| xs.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(
            majority_vote(&v(&[Some("3"), None, Some("5"), Some("5")])).as_deref(),
            Some("5")
        );
        assert_eq!(
            majority_vote(&v(&[Some("7"), Some("2")])).as_deref(),
            Some("7")
        );
        assert_eq!(majority_vote(&v(&[None, None])), None);
    }

    #[test]
    fn strict_reads_the_last_marker() {
        let text = "14 + 9 = 23\n#### 12\nwait\n#### 23\n";
        assert_eq!(
            extract_answer(text, Extraction::Strict).as_deref(),
            Some("23")
        );
        assert_eq!(
            extract_answer("#### 1,234.00", Extraction::Strict).as_deref(),
            Some("1234")
        );
        assert_eq!(
            extract_answer("####-7", Extraction::Strict).as_deref(),
            Some("-7")
        );
        assert_eq!(extract_answer("so it is 23.", Extraction::Strict), None);
        assert_eq!(extract_answer("#### none", Extraction::Strict), None);
    }

    #[test]
    fn flexible_falls_back_to_the_last_number() {
        assert_eq!(
            extract_answer("so it is 23.", Extraction::Flexible).as_deref(),
            Some("23")
        );
        assert_eq!(
            extract_answer("3 - 5 = -2", Extraction::Flexible).as_deref(),
            Some("-2")
        );
        assert_eq!(extract_answer("no numbers", Extraction::Flexible), None);
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_number("007").as_deref(), Some("7"));
        assert_eq!(normalize_number("-0").as_deref(), Some("0"));
        assert_eq!(normalize_number("2.50").as_deref(), Some("2.5"));
        assert_eq!(normalize_number("+3").as_deref(), Some("3"));
        assert_eq!(normalize_number("1.2.3"), None);
        assert_eq!(normalize_number("-"), None);
    }

    #[test]
    fn verifier() {
        assert!(is_correct("a\n#### 18", "18", Extraction::Strict));
        assert!(!is_correct("a\n#### 17", "18", Extraction::Strict));
        assert!(!is_correct("the answer is 18", "18", Extraction::Strict));
        assert!(is_correct("the answer is 18", "18.0", Extraction::Flexible));
    }
}
