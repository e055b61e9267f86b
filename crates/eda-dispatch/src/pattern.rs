//! Type patterns for dynamic subscribers: `order.*`, `*.created`, `*`.

/// A glob over event types: `*` matches any run of characters (dots included),
/// everything else matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypePattern {
    text: String,
}

impl TypePattern {
    /// Parses a pattern.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            text: pattern.into(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        glob(self.text.as_bytes(), event_type.as_bytes())
    }
}

/// Iterative glob with backtracking to the last `*`: linear in practice, no recursion.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| TypePattern::new(p).matches(t);
        assert!(m("order.*", "order.created"));
        assert!(m("order.*", "order.line.added"));
        assert!(!m("order.*", "orders.created"));
        assert!(!m("order.*", "order"));
        assert!(m("*.created", "order.created"));
        assert!(m("*", "anything"));
        assert!(m("order.created", "order.created"));
        assert!(!m("order.created", "order.created2"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }
}
