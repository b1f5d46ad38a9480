//! Kubernetes label selectors in their string form (`kubectl get -l`): parse, print, match.
//!
//! The syntax and meaning follow k8s.io/apimachinery `labels.Parse`: `key=value`, `key==value`,
//! `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, joined by commas; the empty
//! selector matches everything. Keys and values are checked as Kubernetes label keys and values,
//! so a typo is refused when the config is read, not discovered as "nothing matches" later.
//!
//! Deliberately not supported: the numeric `<` / `>` operators (they are for node affinity, not
//! Services), empty members inside a set (`key in (a,)`, which apimachinery reads as `a` or the
//! empty value: here it is refused as the trailing comma it almost always is; the empty value is
//! spelled `key=`), field selectors, and the structured `matchLabels` / `matchExpressions` form,
//! which kube-core already has. `==` is read as `=` and printed as `=`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A parsed label selector: every requirement must hold. Empty matches everything.
///
/// Read from config as a string, and refused there if it does not parse. Requirements are kept
/// sorted and deduplicated, so two selectors that differ only in order compare equal and print
/// the same.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One comma-separated part of a selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Requirement {
    key: String,
    op: Operator,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Operator {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Parses the `kubectl get -l` syntax. The error names the problem and where it is, e.g.
    /// ``expected `(` after `in` at `shop)` ``.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parser = Parser::new(text);
        let mut requirements = Vec::new();
        if parser.peek().kind == Kind::End {
            return Ok(Self::default());
        }
        loop {
            requirements.push(parser.requirement()?);
            let next = parser.bump();
            match next.kind {
                Kind::End => break,
                Kind::Sym(Sym::Comma) => {
                    if parser.peek().kind == Kind::End {
                        return Err("trailing `,` at end of selector".to_owned());
                    }
                }
                _ => {
                    return Err(format!(
                        "expected `,` or end of selector {}",
                        parser.at(next.at)
                    ));
                }
            }
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }

    /// Whether `labels` satisfy every requirement (apimachinery's meaning: `!=` and `notin` also
    /// hold when the key is absent).
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Operator::Equals(want) => value == Some(want),
                Operator::NotEquals(want) => value != Some(want),
                Operator::In(set) => value.is_some_and(|v| set.contains(v)),
                Operator::NotIn(set) => !value.is_some_and(|v| set.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }

    /// True for the selector that matches everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// The canonical form: requirements sorted by key, set members sorted, no spaces except around
/// `in` / `notin`. It parses back to an equal selector.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = &r.key;
            match &r.op {
                Operator::Equals(v) => write!(f, "{key}={v}")?,
                Operator::NotEquals(v) => write!(f, "{key}!={v}")?,
                Operator::In(set) => write!(f, "{key} in ({})", join(set))?,
                Operator::NotIn(set) => write!(f, "{key} notin ({})", join(set))?,
                Operator::Exists => f.write_str(key)?,
                Operator::DoesNotExist => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(",")
}

impl TryFrom<String> for LabelSelector {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl Serialize for LabelSelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Comma,
    Open,
    Close,
    Lt,
    Gt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Word(&'a str),
    Sym(Sym),
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind<'a>,
    /// Byte offset in the selector, for "at `…`" in errors.
    at: usize,
}

/// Ends a word. Anything else (quotes, unicode) stays in the word, so validation can name the
/// whole bad key or value rather than an odd fragment of it.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '!' | '=' | ',' | '(' | ')' | '<' | '>')
}

fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let kind = match c {
            c if c.is_whitespace() => continue,
            // As apimachinery: `!=` and `==` only when adjacent, so `a ! = b` is refused.
            '!' | '=' => {
                let doubled = chars.next_if(|&(_, n)| n == '=').is_some();
                Kind::Sym(match (c, doubled) {
                    ('!', true) => Sym::NotEq,
                    ('!', false) => Sym::Bang,
                    (_, true) => Sym::DoubleEq,
                    (_, false) => Sym::Eq,
                })
            }
            ',' => Kind::Sym(Sym::Comma),
            '(' => Kind::Sym(Sym::Open),
            ')' => Kind::Sym(Sym::Close),
            '<' => Kind::Sym(Sym::Lt),
            '>' => Kind::Sym(Sym::Gt),
            _ => {
                let mut end = at + c.len_utf8();
                while let Some((i, n)) = chars.next_if(|&(_, n)| !is_special(n)) {
                    end = i + n.len_utf8();
                }
                // `at` and `end` come from char_indices, so both are char boundaries.
                Kind::Word(text.get(at..end).unwrap_or_default())
            }
        };
        tokens.push(Token { kind, at });
    }
    tokens
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token<'a>>,
    next: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            tokens: tokenize(text),
            next: 0,
        }
    }

    fn peek(&self) -> Token<'a> {
        self.tokens.get(self.next).copied().unwrap_or(Token {
            kind: Kind::End,
            at: self.text.len(),
        })
    }

    fn bump(&mut self) -> Token<'a> {
        let token = self.peek();
        self.next += 1;
        token
    }

    /// "at `rest of the input`", shortened: the spot is what a reader needs, not the whole tail.
    fn at(&self, offset: usize) -> String {
        const SHOWN: usize = 30;
        let rest = self.text.get(offset..).unwrap_or_default();
        if rest.is_empty() {
            return "at end of selector".to_owned();
        }
        let mut shown: String = rest
            .chars()
            .take(SHOWN)
            .flat_map(char::escape_debug)
            .collect();
        if rest.chars().nth(SHOWN).is_some() {
            shown.push('…');
        }
        format!("at `{shown}`")
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let first = self.bump();
        match first.kind {
            Kind::Sym(Sym::Bang) => {
                let key = self.key("`!`")?;
                let next = self.peek();
                if let Kind::Sym(Sym::Eq | Sym::DoubleEq | Sym::NotEq) | Kind::Word(_) = next.kind {
                    return Err(format!(
                        "`!{key}` takes no operator (use `{key}!=value` or `{key} notin (…)`) {}",
                        self.at(next.at)
                    ));
                }
                Ok(Requirement {
                    key,
                    op: Operator::DoesNotExist,
                })
            }
            Kind::Word(word) => {
                check_key(word)?;
                let key = word.to_owned();
                let op = self.operator(&key)?;
                Ok(Requirement { key, op })
            }
            Kind::Sym(Sym::Comma) => Err(format!("empty requirement {}", self.at(first.at))),
            Kind::Sym(_) | Kind::End => Err(format!(
                "expected a label key or `!key` {}",
                self.at(first.at)
            )),
        }
    }

    fn key(&mut self, after: &str) -> Result<String, String> {
        let token = self.bump();
        match token.kind {
            Kind::Word(word) => {
                check_key(word)?;
                Ok(word.to_owned())
            }
            _ => Err(format!(
                "expected a label key after {after} {}",
                self.at(token.at)
            )),
        }
    }

    fn operator(&mut self, key: &str) -> Result<Operator, String> {
        let token = self.peek();
        match token.kind {
            Kind::End | Kind::Sym(Sym::Comma) => Ok(Operator::Exists),
            Kind::Sym(Sym::Eq | Sym::DoubleEq) => {
                self.bump();
                Ok(Operator::Equals(self.value(token)?))
            }
            Kind::Sym(Sym::NotEq) => {
                self.bump();
                Ok(Operator::NotEquals(self.value(token)?))
            }
            Kind::Word("in") => {
                self.bump();
                Ok(Operator::In(self.set("in")?))
            }
            Kind::Word("notin") => {
                self.bump();
                Ok(Operator::NotIn(self.set("notin")?))
            }
            Kind::Sym(Sym::Lt | Sym::Gt) => Err(format!(
                "unsupported operator after `{key}` (expected `=`, `==`, `!=`, `in` or `notin`) {}",
                self.at(token.at)
            )),
            Kind::Word(_) | Kind::Sym(Sym::Bang) => Err(format!(
                "unknown operator after `{key}` (expected `=`, `==`, `!=`, `in` or `notin`) {}",
                self.at(token.at)
            )),
            Kind::Sym(Sym::Open | Sym::Close) => Err(format!(
                "expected an operator after `{key}` {}",
                self.at(token.at)
            )),
        }
    }

    /// The value after `=`, `==` or `!=`; absent means the empty value, as in apimachinery.
    fn value(&mut self, operator: Token<'_>) -> Result<String, String> {
        let token = self.peek();
        match token.kind {
            Kind::End | Kind::Sym(Sym::Comma) => Ok(String::new()),
            Kind::Word(word) => {
                self.bump();
                check_value(word)?;
                Ok(word.to_owned())
            }
            Kind::Sym(_) => Err(format!(
                "expected a label value after `{}` {}",
                self.text
                    .get(operator.at..token.at)
                    .unwrap_or_default()
                    .trim(),
                self.at(token.at)
            )),
        }
    }

    /// `(a,b,…)` after `in` / `notin`: at least one value, no empty members.
    fn set(&mut self, operator: &str) -> Result<BTreeSet<String>, String> {
        let open = self.bump();
        if open.kind != Kind::Sym(Sym::Open) {
            return Err(format!(
                "expected `(` after `{operator}` {}",
                self.at(open.at)
            ));
        }
        if let token @ Token {
            kind: Kind::Sym(Sym::Close),
            ..
        } = self.peek()
        {
            return Err(format!(
                "`{operator}` needs at least one value {}",
                self.at(token.at)
            ));
        }
        let mut values = BTreeSet::new();
        loop {
            let token = self.bump();
            match token.kind {
                Kind::Word(word) => {
                    check_value(word)?;
                    values.insert(word.to_owned());
                }
                // Only reachable after a comma: the empty list was refused above.
                Kind::Sym(Sym::Close) => {
                    return Err(format!(
                        "trailing `,` in the `{operator}` list {}",
                        self.at(token.at)
                    ));
                }
                Kind::Sym(Sym::Comma) => {
                    return Err(format!(
                        "empty value in the `{operator}` list {}",
                        self.at(token.at)
                    ));
                }
                Kind::End => {
                    return Err(format!(
                        "unclosed `(` after `{operator}`: expected a value at end of selector"
                    ));
                }
                Kind::Sym(_) => {
                    return Err(format!(
                        "expected a value in the `{operator}` list {}",
                        self.at(token.at)
                    ));
                }
            }
            let token = self.bump();
            match token.kind {
                Kind::Sym(Sym::Comma) => {}
                Kind::Sym(Sym::Close) => return Ok(values),
                Kind::End => {
                    return Err(format!(
                        "unclosed `(` after `{operator}`: expected `,` or `)` at end of selector"
                    ));
                }
                _ => {
                    return Err(format!(
                        "expected `,` or `)` in the `{operator}` list {}",
                        self.at(token.at)
                    ));
                }
            }
        }
    }
}

const NAME_RULE: &str =
    "at most 63 of `A-Z a-z 0-9 - _ .`, starting and ending with a letter or digit";

/// A label key: `[prefix/]name`, the prefix a DNS subdomain (apimachinery `IsQualifiedName`).
fn check_key(key: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid label key `{}`: {why}", key.escape_debug()));
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return bad("the prefix before `/` is empty");
        }
        if prefix.len() > 253 {
            return bad("the prefix is longer than 253 characters");
        }
        if !prefix.split('.').all(is_dns_label) {
            return bad(
                "the prefix must be a lowercase DNS subdomain (`a-z 0-9 - .`, each part \
                 starting and ending with a letter or digit)",
            );
        }
        if name.contains('/') {
            return bad("a key has at most one `/`");
        }
    }
    if name.is_empty() {
        return bad("the name is empty");
    }
    if !is_name(name) {
        return bad(&format!("the name must be {NAME_RULE}"));
    }
    Ok(())
}

/// A label value: empty, or the same rule as a key's name.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value `{}`: a value must be empty or {NAME_RULE}",
            value.escape_debug()
        ))
    }
}

fn is_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    // Checked on bytes: every allowed character is ASCII, so bytes and characters agree.
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A selector, the labels it is matched against, and whether it matches.
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    fn check_table(rows: &[Row<'_>]) {
        for (selector, pairs, want) in rows {
            let parsed = LabelSelector::parse(selector)
                .unwrap_or_else(|e| panic!("`{selector}` should parse: {e}"));
            assert_eq!(
                parsed.matches(&labels(pairs)),
                *want,
                "`{selector}` against {pairs:?}"
            );
        }
    }

    #[test]
    fn an_empty_selector_matches_everything() {
        for text in ["", "   ", "\t\n "] {
            let s = LabelSelector::parse(text).unwrap();
            assert!(s.is_empty());
            assert_eq!(s, LabelSelector::default());
            assert!(s.matches(&labels(&[])));
            assert!(s.matches(&labels(&[("app", "shop")])));
            assert_eq!(s.to_string(), "");
        }
    }

    #[test]
    fn equals_and_double_equals_need_the_exact_value() {
        check_table(&[
            ("tier=backend", &[("tier", "backend")], true),
            ("tier==backend", &[("tier", "backend")], true),
            ("tier=backend", &[("tier", "frontend")], false),
            ("tier=backend", &[], false),
            ("tier=backend", &[("other", "backend")], false),
            ("tier=", &[("tier", "")], true),
            ("tier=", &[], false),
            ("tier==", &[("tier", "x")], false),
        ]);
        assert_eq!(
            LabelSelector::parse("tier==backend").unwrap(),
            LabelSelector::parse("tier=backend").unwrap()
        );
    }

    #[test]
    fn not_equals_matches_a_service_without_the_key() {
        check_table(&[
            ("tier!=backend", &[], true),
            ("tier!=backend", &[("tier", "frontend")], true),
            ("tier!=backend", &[("tier", "backend")], false),
            ("tier!=", &[("tier", "")], false),
            ("tier!=", &[("tier", "x")], true),
        ]);
    }

    #[test]
    fn in_matches_a_listed_value_and_needs_the_key() {
        check_table(&[
            ("env in (prod,staging)", &[("env", "prod")], true),
            ("env in (prod,staging)", &[("env", "staging")], true),
            ("env in (prod,staging)", &[("env", "dev")], false),
            ("env in (prod,staging)", &[], false),
            ("env in (prod)", &[("env", "prod")], true),
        ]);
    }

    #[test]
    fn notin_matches_a_service_without_the_key() {
        check_table(&[
            ("env notin (prod,staging)", &[], true),
            ("env notin (prod,staging)", &[("env", "dev")], true),
            ("env notin (prod,staging)", &[("env", "prod")], false),
            ("env notin (prod,staging)", &[("env", "staging")], false),
        ]);
    }

    #[test]
    fn exists_and_does_not_exist_look_only_at_the_key() {
        check_table(&[
            ("canary", &[("canary", "")], true),
            ("canary", &[("canary", "yes")], true),
            ("canary", &[], false),
            ("!canary", &[], true),
            ("!canary", &[("canary", "")], false),
            ("!canary", &[("other", "x")], true),
        ]);
    }

    #[test]
    fn every_requirement_must_hold() {
        check_table(&[
            ("a=1,b=2", &[("a", "1"), ("b", "2")], true),
            ("a=1,b=2", &[("a", "1")], false),
            ("a=1,a=2", &[("a", "1")], false),
            ("a,!b,c in (x)", &[("a", ""), ("c", "x")], true),
            ("a,!b,c in (x)", &[("a", ""), ("b", ""), ("c", "x")], false),
        ]);
    }

    #[test]
    fn whitespace_around_tokens_is_ignored() {
        let canonical = LabelSelector::parse("a=1,b!=2,c in (x,y),d notin (z),e,!f").unwrap();
        for text in [
            " a = 1 , b != 2 , c in ( x , y ) , d notin ( z ) , e , ! f ",
            "a=1,\tb!=2,\nc in(x,y),d notin(z),e,!f",
            "  a==1  ,b!=2,c   in   (y,x),d notin (z), e ,!f\n",
        ] {
            assert_eq!(LabelSelector::parse(text).unwrap(), canonical, "`{text}`");
        }
    }

    #[test]
    fn the_issues_example_parses_and_matches() {
        let s = LabelSelector::parse("tier=backend,app.kubernetes.io/part-of in (shop)").unwrap();
        assert_eq!(
            s.to_string(),
            "app.kubernetes.io/part-of in (shop),tier=backend"
        );
        check_table(&[
            (
                "tier=backend,app.kubernetes.io/part-of in (shop)",
                &[("tier", "backend"), ("app.kubernetes.io/part-of", "shop")],
                true,
            ),
            (
                "tier=backend,app.kubernetes.io/part-of in (shop)",
                &[("tier", "backend"), ("app.kubernetes.io/part-of", "blog")],
                false,
            ),
            (
                "tier=backend,app.kubernetes.io/part-of in (shop)",
                &[("tier", "backend")],
                false,
            ),
        ]);
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let rows = [
            ("tier=backend", "tier=backend"),
            ("tier==backend", "tier=backend"),
            ("tier = ", "tier="),
            ("tier!=", "tier!="),
            ("b,a", "a,b"),
            ("!b, a", "a,!b"),
            ("x in (c,a,b,a)", "x in (a,b,c)"),
            ("x notin (b , a)", "x notin (a,b)"),
            ("a=1,a=1", "a=1"),
            ("z=1,a!=2,m in (q)", "a!=2,m in (q),z=1"),
            ("example.com/v=A_b.c-9", "example.com/v=A_b.c-9"),
        ];
        for (text, want) in rows {
            let s = LabelSelector::parse(text).unwrap();
            assert_eq!(s.to_string(), want, "`{text}`");
            assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s, "`{text}`");
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_message_naming_the_spot() {
        let rows = [
            ("app in shop)", "expected `(` after `in` at `shop)`"),
            ("app notin", "expected `(` after `notin` at end of selector"),
            ("app in ()", "`in` needs at least one value at `)`"),
            ("app notin ()", "`notin` needs at least one value at `)`"),
            ("app in (a,)", "trailing `,` in the `in` list at `)`"),
            ("app in (a,,b)", "empty value in the `in` list at `,b)`"),
            ("app in (,a)", "empty value in the `in` list at `,a)`"),
            (
                "app in (a b)",
                "expected `,` or `)` in the `in` list at `b)`",
            ),
            ("app in (a", "unclosed `(` after `in`"),
            ("app in (a,", "unclosed `(` after `in`"),
            ("app in (=)", "expected a value in the `in` list at `=)`"),
            ("a=b,", "trailing `,` at end of selector"),
            ("a=b,,c", "empty requirement at `,c`"),
            (",a", "empty requirement at `,a`"),
            ("a=b c=d", "expected `,` or end of selector at `c=d`"),
            ("a=b=c", "expected `,` or end of selector at `=c`"),
            ("a in (x) y", "expected `,` or end of selector at `y`"),
            ("app is shop", "unknown operator after `app`"),
            ("app is shop", "at `is shop`"),
            ("app ! = shop", "unknown operator after `app`"),
            ("version>2", "unsupported operator after `version`"),
            ("version < 2", "at `< 2`"),
            ("app (x)", "expected an operator after `app` at `(x)`"),
            ("a===b", "expected a label value after `==` at `=b`"),
            ("a!=(b)", "expected a label value after `!=` at `(b)`"),
            ("=b", "expected a label key or `!key` at `=b`"),
            ("!", "expected a label key after `!` at end of selector"),
            ("!=b", "expected a label key or `!key` at `!=b`"),
            ("!app=shop", "`!app` takes no operator"),
            ("!app in (x)", "`!app` takes no operator"),
            (
                "Tier/x=1",
                "invalid label key `Tier/x`: the prefix must be a lowercase DNS",
            ),
            (
                "/x=1",
                "invalid label key `/x`: the prefix before `/` is empty",
            ),
            ("a/=1", "invalid label key `a/`: the name is empty"),
            (
                "a/b/c",
                "invalid label key `a/b/c`: a key has at most one `/`",
            ),
            ("a..b/c", "the prefix must be a lowercase DNS subdomain"),
            ("-a=1", "invalid label key `-a`"),
            ("a-=1", "invalid label key `a-`"),
            ("é=1", "invalid label key `é`"),
            ("a=b_", "invalid label value `b_`"),
            ("a=\"b\"", "invalid label value `\\\"b\\\"`"),
            (
                "a in (ok,no!)",
                "expected `,` or `)` in the `in` list at `!)`",
            ),
            ("a in (x:y)", "invalid label value `x:y`"),
            ("a=b\nc", "expected `,` or end of selector at `c`"),
        ];
        for (text, want) in rows {
            let err = LabelSelector::parse(text).unwrap_err();
            assert!(err.contains(want), "`{text}`: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn long_input_is_shortened_in_the_message() {
        let text = format!("a=b c{}", "x".repeat(100));
        let err = LabelSelector::parse(&text).unwrap_err();
        assert!(err.ends_with("…`"), "{err}");
        assert!(err.len() < 100, "{err}");
    }

    #[test]
    fn keys_and_values_follow_the_kubernetes_length_limits() {
        let name63 = "n".repeat(63);
        let name64 = "n".repeat(64);
        let prefix253 = format!("{}.{}", "p".repeat(126), "q".repeat(126));
        let prefix254 = format!("{prefix253}r");
        let ok = [
            format!("{name63}=v"),
            format!("{prefix253}/{name63}"),
            format!("k={name63}"),
            format!("k in ({name63})"),
            "app.kubernetes.io/part-of=shop".to_owned(),
            "K_8.s-x=V.1_-z".to_owned(),
            "a=1".to_owned(),
        ];
        for text in &ok {
            assert!(LabelSelector::parse(text).is_ok(), "`{text}`");
        }
        let bad = [
            (format!("{name64}=v"), "the name must be"),
            (format!("{prefix254}/n"), "longer than 253"),
            (format!("k={name64}"), "invalid label value"),
        ];
        for (text, want) in &bad {
            let err = LabelSelector::parse(text).unwrap_err();
            assert!(err.contains(want), "`{text}`: {err}");
        }
    }

    #[test]
    fn serde_reads_and_writes_the_string_form() {
        let s: LabelSelector =
            serde_json::from_str(r#""tier=backend, app.kubernetes.io/part-of in (shop)""#).unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#""app.kubernetes.io/part-of in (shop),tier=backend""#
        );
        let err = serde_json::from_str::<LabelSelector>(r#""app in shop""#).unwrap_err();
        assert!(err.to_string().contains("expected `(` after `in`"), "{err}");
        let empty: LabelSelector = serde_json::from_str(r#""""#).unwrap();
        assert!(empty.is_empty());
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = LabelSelector::parse(&text);
        }

        #[test]
        fn generated_selectors_parse_and_print_back_to_the_same_selector(
            parts in prop::collection::vec(
                (
                    r"(ex\.com/)?[a-zA-Z][a-z0-9._-]{0,3}[a-z]",
                    0..7_usize,
                    r"[a-z0-9]{0,3}",
                    prop::collection::vec(r"[A-Z0-9][a-z._-]{0,3}[a-z0-9]", 1..4),
                    r"[ \t]{0,2}",
                ),
                1..5,
            )
        ) {
            let text = parts
                .iter()
                .map(|(key, op, value, set, ws)| {
                    let set = set.join(&format!("{ws},{ws}"));
                    match op {
                        0 => format!("{ws}{key}{ws}={ws}{value}{ws}"),
                        1 => format!("{key}=={value}"),
                        2 => format!("{key}{ws}!={ws}{value}"),
                        3 => format!("{ws}{key} in{ws}({ws}{set}{ws}){ws}"),
                        4 => format!("{key} notin ({set})"),
                        5 => format!("{ws}{key}{ws}"),
                        _ => format!("{ws}!{ws}{key}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let s = LabelSelector::parse(&text);
            prop_assert!(s.is_ok(), "`{}`: {:?}", text, s);
            let s = s.unwrap();
            let printed = s.to_string();
            prop_assert_eq!(LabelSelector::parse(&printed), Ok(s), "`{}` printed `{}`", text, printed);
        }

        #[test]
        fn whatever_parses_prints_back_to_the_same_selector(
            text in r"[ab/.!=,() \-_xinot<>]{0,40}"
        ) {
            if let Ok(s) = LabelSelector::parse(&text) {
                let printed = s.to_string();
                prop_assert_eq!(LabelSelector::parse(&printed), Ok(s), "printed `{}`", printed);
            }
        }
    }
}
