//! Delegation path patterns: shell-style, matched one `/`-separated component at a time
//! (as python-tuf's `fnmatch` per component): `*` (any run within a component), `?` (one
//! character), `[abc]`, `[a-z]`, `[!abc]`. A pattern and a path with a different number of
//! components never match, so `models/*` does not cover `models/a/b`.

/// Whether `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    pat.len() == parts.len()
        && pat.iter().zip(&parts).all(|(p, s)| {
            let p: Vec<char> = p.chars().collect();
            let s: Vec<char> = s.chars().collect();
            component(&p, &s)
        })
}

fn component(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len()).any(|i| component(rest, &s[i..])),
        Some(('?', rest)) => !s.is_empty() && component(rest, &s[1..]),
        Some(('[', rest)) => match (class(rest, s.first().copied()), s.split_first()) {
            (Some((true, after)), Some((_, srest))) => component(after, srest),
            (Some(_), _) => false,
            // An unclosed `[` is a literal, as in fnmatch.
            (None, _) => s.first() == Some(&'[') && component(rest, &s[1..]),
        },
        Some((c, rest)) => s.first() == Some(c) && component(rest, &s[1..]),
    }
}

/// Reads a `[...]` class (after the `[`): whether `c` is in it, and the pattern after `]`.
fn class(p: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negate, mut i) = match p.first() {
        Some('!') => (true, 1),
        _ => (false, 0),
    };
    let start = i;
    let mut hit = false;
    while i < p.len() {
        if p[i] == ']' && i > start {
            let hit = c.is_some() && (hit != negate);
            return Some((hit, &p[i + 1..]));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hit |= c.is_some_and(|c| p[i] <= c && c <= p[i + 2]);
            i += 3;
        } else {
            hit |= c == Some(p[i]);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn components_and_wildcards() {
        assert!(matches("models/*", "models/landcover"));
        assert!(!matches("models/*", "models/landcover/head.onnx"));
        assert!(matches("models/*/*.onnx", "models/landcover/head.onnx"));
        assert!(matches("*", "file.txt"));
        assert!(matches("f?le.[a-t]xt", "file.txt"));
        assert!(!matches("f?le.[!t]xt", "file.txt"));
        assert!(matches("", ""));
        assert!(!matches("a*", "b"));
        assert!(matches("[x", "[x"));
    }
}
