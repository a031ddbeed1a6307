//! The detector model's per-class tag patterns (`[labels] tag_patterns` in its
//! manifest, sent with every Detect reply), compiled for one page's tag rule.

use std::collections::HashMap;

use regex::Regex;

use crate::assign::Fit;

/// Compiled patterns by class; a class without one (or with one that does not
/// compile) is judged by geometry alone.
#[derive(Debug, Default)]
pub struct TagPatterns(HashMap<String, Regex>);

impl TagPatterns {
    /// Each pattern must match a whole tag (`VAV-\d+` matches `VAV-12`, not
    /// `XVAV-12`). A pattern that does not compile is logged and left out: a bad
    /// manifest must not cost the caller their tags.
    pub fn new(patterns: &HashMap<String, String>) -> Self {
        let mut compiled = HashMap::with_capacity(patterns.len());
        for (class, pattern) in patterns {
            match Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => {
                    compiled.insert(class.clone(), regex);
                }
                Err(error) => {
                    tracing::warn!(%class, %pattern, %error, "the detector model's tag pattern does not compile; ignored");
                }
            }
        }
        Self(compiled)
    }

    /// Whether `tag` (already cleaned by `tag_text`) fits `class`, as read or once
    /// [`repaired`](Self::repair).
    pub fn fit(&self, class: &str, tag: &str) -> Fit {
        match self.0.get(class) {
            Some(regex) if regex.is_match(tag) => Fit::Matches,
            Some(_) if self.repair(class, tag).is_some() => Fit::Matches,
            Some(_) => Fit::Misses,
            None => Fit::Unknown,
        }
    }

    /// `tag` made to fit `class`'s pattern by the one correction a recognizer's
    /// slip explains: a character swapped for one it resembles (`S0-336` for
    /// `SD-336`, `MO-703` for `MD-703`) or the hyphen between the letters and the
    /// digits lost (`T215`). None when the tag fits as read, the class has no
    /// pattern, or no single correction fits; also when more than one does, since
    /// choosing between them would be a guess. A straight stroke at either end may
    /// also be a leader line or the symbol's edge read as `I`: dropping it is one
    /// more correction, so `MD-21I` stays as read (`MD-211` and `MD-21` both fit).
    pub fn repair(&self, class: &str, tag: &str) -> Option<String> {
        let regex = self.0.get(class)?;
        if regex.is_match(tag) {
            return None;
        }
        let chars: Vec<char> = tag.chars().collect();
        let mut fits: Vec<String> = Vec::new();
        let mut consider = |candidate: String| {
            if regex.is_match(&candidate) && !fits.contains(&candidate) {
                fits.push(candidate);
            }
        };
        let stroke = |c: char| matches!(c, 'I' | 'l' | '|' | '1');
        if chars.len() > 1 {
            if stroke(chars[0]) {
                consider(chars[1..].iter().collect());
            }
            if stroke(chars[chars.len() - 1]) {
                consider(chars[..chars.len() - 1].iter().collect());
            }
        }
        for (index, &c) in chars.iter().enumerate() {
            for &instead in look_alikes(c) {
                let mut candidate = chars.clone();
                candidate[index] = instead;
                consider(candidate.into_iter().collect());
            }
            let letter_then_digit =
                index > 0 && chars[index - 1].is_ascii_alphabetic() && c.is_ascii_digit();
            if letter_then_digit {
                let mut candidate = chars.clone();
                candidate.insert(index, '-');
                consider(candidate.into_iter().collect());
            }
        }
        (fits.len() == 1).then(|| fits.remove(0))
    }
}

/// The characters a recognizer takes `c` for on drawings, or `c` for them: round
/// letters and digits, straight strokes, the pairs that differ by a corner, and a
/// short hyphen on a blurred scan read as a dot or another dash (`SD.37`, `SD·38`).
fn look_alikes(c: char) -> &'static [char] {
    match c {
        '.' | '·' | ',' | '_' | '~' | '=' | '–' | '—' | '−' => &['-'],
        '0' => &['O', 'D'],
        'O' => &['0', 'D'],
        'D' => &['0', 'O'],
        '1' => &['I', 'L'],
        'I' => &['1'],
        'l' | '|' => &['1', 'I'],
        '5' => &['S'],
        'S' => &['5'],
        '8' => &['B'],
        'B' => &['8'],
        '2' => &['Z'],
        'Z' => &['2'],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(pairs: &[(&str, &str)]) -> TagPatterns {
        TagPatterns::new(
            &pairs
                .iter()
                .map(|(c, p)| ((*c).to_owned(), (*p).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn a_pattern_matches_whole_tags_only() {
        let p = patterns(&[("vav_box", r"VAV-\d+")]);
        assert_eq!(p.fit("vav_box", "VAV-12"), Fit::Matches);
        assert_eq!(p.fit("vav_box", "XVAV-12"), Fit::Misses);
        assert_eq!(p.fit("vav_box", "VAV-12A"), Fit::Misses);
        assert_eq!(p.fit("vav_box", "EF-3"), Fit::Misses);
    }

    #[test]
    fn alternatives_stay_inside_the_anchors() {
        let p = patterns(&[("damper", r"D-\d+|FD-\d+|MD-\d+")]);
        assert_eq!(p.fit("damper", "FD-3"), Fit::Matches);
        assert_eq!(p.fit("damper", "FD-3 EXTRA"), Fit::Misses);
        assert_eq!(p.fit("damper", "XD-3"), Fit::Misses);
    }

    #[test]
    fn a_tag_one_slip_from_its_pattern_is_repaired_and_only_then() {
        let p = patterns(&[
            ("diffuser", r"(SD|RD|CD)-\d+"),
            ("damper", r"(D|FD|MD)-\d+"),
            ("thermostat", r"TS?-\d+"),
            ("vav_box", r"VAV-\d+"),
        ]);
        for (class, read, repaired) in [
            ("diffuser", "S0-336", "SD-336"),
            ("diffuser", "CO-392", "CD-392"),
            ("damper", "MO-703", "MD-703"),
            ("thermostat", "T215", "T-215"),
            ("vav_box", "VAV-1O8", "VAV-108"),
            ("diffuser", "SD.37", "SD-37"),
            ("diffuser", "SD·38", "SD-38"),
            ("damper", "FD–4", "FD-4"),
        ] {
            assert_eq!(p.repair(class, read).as_deref(), Some(repaired), "{read}");
            assert_eq!(p.fit(class, read), Fit::Matches, "{read}");
        }
        // Fits as read; too far (two slips, a letter that resembles nothing needed);
        // a digit misread as another digit is no slip it can see.
        for (class, read) in [
            ("diffuser", "SD-336"),
            ("diffuser", "S0-33G"),
            ("diffuser", "SF-38"),
            ("vav_box", "VAV-709"),
            ("thermostat", "ITCLOSET"),
            ("diffuser", "SD.3.7"),
        ] {
            assert_eq!(p.repair(class, read), None, "{read}");
        }
        assert_eq!(p.fit("diffuser", "SF-38"), Fit::Misses);
        // A stroke at an end is a digit or a line: both fit, so neither is chosen.
        assert_eq!(p.repair("damper", "MD-21I"), None);
        assert_eq!(p.repair("damper", "IMD-21").as_deref(), Some("MD-21"));
        // `0-12` has one correction that fits (`O-12` does not); `D0-5` has none.
        assert_eq!(p.repair("damper", "0-12").as_deref(), Some("D-12"));
        assert_eq!(p.repair("damper", "D0-5"), None);
        // Ambiguous between two corrections: none.
        let p = patterns(&[("tag", r"(AD|A0)-\d+")]);
        assert_eq!(p.repair("tag", "AO-1"), None);
        // A class without a pattern is never repaired.
        assert_eq!(p.repair("diffuser", "S0-336"), None);
    }

    #[test]
    fn a_class_without_a_pattern_or_with_a_broken_one_is_unknown() {
        let p = patterns(&[("vav_box", r"VAV-(\d+")]);
        assert_eq!(p.fit("vav_box", "VAV-1"), Fit::Unknown);
        assert_eq!(p.fit("diffuser", "SD-1"), Fit::Unknown);
    }
}
