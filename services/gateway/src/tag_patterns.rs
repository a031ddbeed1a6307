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

    /// Whether `tag` (already cleaned by `tag_text`) fits `class`.
    pub fn fit(&self, class: &str, tag: &str) -> Fit {
        match self.0.get(class) {
            Some(regex) if regex.is_match(tag) => Fit::Matches,
            Some(_) => Fit::Misses,
            None => Fit::Unknown,
        }
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
    fn a_class_without_a_pattern_or_with_a_broken_one_is_unknown() {
        let p = patterns(&[("vav_box", r"VAV-(\d+")]);
        assert_eq!(p.fit("vav_box", "VAV-1"), Fit::Unknown);
        assert_eq!(p.fit("diffuser", "SD-1"), Fit::Unknown);
    }
}
