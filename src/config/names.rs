//! Checks shared by the sections: secret ids and the names of tenants and roles.

use crate::ids::SecretId;

/// A secret id is a Secrets Manager name (`A-Za-z0-9/_+=.@-`, up to 512 characters) or ARN. Anything else, or
/// a name that looks like a random credential, is refused: the config holds ids, never values.
pub(crate) fn check_secret_id(at: &str, id: &SecretId, problems: &mut Vec<String>) {
    let s = id.as_str();
    if s.is_empty() {
        problems.push(format!("{at}: secret id is empty"));
        return;
    }
    let name_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:".contains(&b));
    let arn = s.starts_with("arn:");
    // A long run of mixed-case letters and digits without any separator reads like a password or a key.
    let random_looking = s.len() >= 24
        && !s.bytes().any(|b| b"/_.:-@".contains(&b))
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_uppercase())
        && s.bytes().any(|b| b.is_ascii_lowercase());
    if !name_chars || (!arn && (s.len() > 512 || s.contains(':'))) || random_looking {
        // The value itself is not repeated: it may be a secret.
        problems.push(format!(
            "{at}: a secret id ({} characters) that looks like an inline secret value; the config holds secret \
             ids only (a Secrets Manager name or ARN): put the value in the secret store",
            s.len()
        ));
    }
}

/// Tenant ids and role names: short, printable, no quoting needed anywhere.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_secret_ids() {
        assert!(valid_name("acme-1.eu_west"));
        assert!(!valid_name("bad role"));
        assert!(!valid_name(""));
        let mut problems = Vec::new();
        check_secret_id("t", &SecretId::new("tenants/acme/db"), &mut problems);
        check_secret_id(
            "t",
            &SecretId::new("arn:aws:secretsmanager:eu-west-1:1:secret:x"),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        check_secret_id(
            "t",
            &SecretId::new("Xy7Qm2Lp9Rt4Vb8Nc3Kd6Hf1"),
            &mut problems,
        );
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("Xy7Q"), "the value is not echoed");
    }
}
