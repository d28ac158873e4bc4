use std::fmt;

/// Decides whether a presented bearer token is accepted.
pub trait TokenCheck: Send + Sync {
    fn accepts(&self, presented: &str) -> bool;
}

impl TokenCheck for AdminToken {
    fn accepts(&self, presented: &str) -> bool {
        self.matches(presented)
    }
}

/// The admin bearer token. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Compares in time independent of where the strings differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_token_and_never_prints_it() {
        let token = AdminToken::new("s3cret".into());
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3creT"));
        assert_eq!(format!("{token} {token:?}"), "*** ***");
    }
}
