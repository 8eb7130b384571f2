//! The patterns of `securexfer ls PATTERN`, matched by the client (the server has no glob
//! language: docs/protocol-v4.md, "LIST"): `*` any run of characters but `/`, `?` one
//! character but `/`, `[abc]`, `[a-z]`, `[!a]` one character of (or not of) a set. Any
//! other character matches itself. An unclosed `[` is a literal `[`.

/// Whether `pattern` has anything but literal characters.
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Whether `name` matches `pattern` whole.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    // Iterative with one backtrack point for the latest `*`: linear in practice, and
    // never exponential whatever the pattern.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some(&c) => {
                let (matched, len) = one(&p[pi..], n[ni]).unwrap_or((c == n[ni], 1));
                if matched {
                    pi += len;
                    ni += 1;
                    continue;
                }
            }
            None => {}
        }
        match star {
            // The `*` takes one more character, never a `/`.
            Some((sp, sn)) if n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `?` or a `[set]` at the start of `p` against `n`: whether it matches and how many
/// pattern characters it took; `None` when `p` starts with neither.
fn one(p: &[char], n: char) -> Option<(bool, usize)> {
    match p.first()? {
        '?' => Some((n != '/', 1)),
        '[' => {
            let close = p.iter().skip(2).position(|&c| c == ']')? + 2;
            let (negate, set) = match p[1] {
                '!' | '^' => (true, &p[2..close]),
                _ => (false, &p[1..close]),
            };
            if set.is_empty() {
                return None;
            }
            let mut found = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    found |= (set[i]..=set[i + 2]).contains(&n);
                    i += 3;
                } else {
                    found |= set[i] == n;
                    i += 1;
                }
            }
            Some((found != negate && n != '/', close + 1))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_questions_and_sets_match_as_a_shell_does_within_one_component() {
        for (pattern, name) in [
            ("*", "report.pdf"),
            ("*.pdf", "report.pdf"),
            ("r*t.pdf", "report.pdf"),
            ("*e*", "report"),
            ("?eport.pdf", "report.pdf"),
            ("[rs]eport.pdf", "report.pdf"),
            ("[a-z]eport.pdf", "report.pdf"),
            ("[!a]eport.pdf", "report.pdf"),
            ("report.pdf", "report.pdf"),
            ("**", ""),
            ("é*", "été"),
            ("a[", "a["),
            ("docs/*", "docs/a"),
        ] {
            assert!(matches(pattern, name), "{pattern:?} should match {name:?}");
        }
        for (pattern, name) in [
            ("*.pdf", "report.txt"),
            ("?", ""),
            ("?", "ab"),
            ("[!r]eport.pdf", "report.pdf"),
            ("[a-c]x", "dx"),
            ("report", "report.pdf"),
            ("*", "docs/a"),
            ("docs?a", "docs/a"),
        ] {
            assert!(!matches(pattern, name), "{pattern:?} should not match {name:?}");
        }
        assert!(is_pattern("*.pdf") && is_pattern("a?") && is_pattern("[ab]"));
        assert!(!is_pattern("report.pdf"));
    }

    #[test]
    fn a_pathological_pattern_stays_fast() {
        let name = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!matches(&pattern, &name));
    }
}
