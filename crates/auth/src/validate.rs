//! What `POST /register` accepts: usernames, passwords and roles.

use crate::Error;

/// The longest password accepted. argon2 would take more, but nobody types 1 KiB and a cap keeps
/// hashing cost bounded per request.
pub(crate) const MAX_PASSWORD_CHARS: usize = 1024;

/// A username is 3 to 64 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn username(name: &str) -> Result<(), Error> {
    let ok_len = (3..=64).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(Error::InvalidUsername)
    }
}

/// A password is `min` to [`MAX_PASSWORD_CHARS`] characters.
pub(crate) fn password(password: &str, min: usize) -> Result<(), Error> {
    let len = password.chars().count();
    if len < min || len > MAX_PASSWORD_CHARS {
        Err(Error::WeakPassword {
            min,
            max: MAX_PASSWORD_CHARS,
        })
    } else {
        Ok(())
    }
}

/// The role to grant, one of `roles` (`[auth] roles`): `user` when none is asked for.
pub(crate) fn role<'a>(requested: Option<&'a str>, roles: &[String]) -> Result<&'a str, Error> {
    match requested {
        None => Ok("user"),
        Some(r) if roles.iter().any(|known| known == r) => Ok(r),
        Some(_) => Err(Error::InvalidRole(roles.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        for ok in ["abc", "alice", "Bob_2", "a.b-c", long.as_str()] {
            assert!(username(ok).is_ok(), "{ok:?} should be accepted");
        }
        for bad in [
            "",
            "ab",
            "with space",
            "émile",
            "a/b",
            "x@y",
            "../etc",
            too_long.as_str(),
        ] {
            assert!(username(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn passwords() {
        assert!(password("1234567", 8).is_err());
        assert!(password("12345678", 8).is_ok());
        // Characters, not bytes: eight accented letters are eight characters.
        assert!(password("éééééééé", 8).is_ok());
        assert!(password(&"x".repeat(1024), 8).is_ok());
        assert!(password(&"x".repeat(1025), 8).is_err());
    }

    #[test]
    fn roles() {
        let roles = crate::Config::default().roles;
        assert_eq!(role(None, &roles).ok(), Some("user"));
        assert_eq!(role(Some("user"), &roles).ok(), Some("user"));
        assert_eq!(role(Some("admin"), &roles).ok(), Some("admin"));
        for bad in ["guest", "Admin", "", "root", "finance"] {
            assert!(
                matches!(role(Some(bad), &roles), Err(Error::InvalidRole(_))),
                "{bad:?}"
            );
        }
        let casitas: Vec<String> = ["user", "admin", "finance", "legal"]
            .map(String::from)
            .into();
        assert_eq!(role(Some("finance"), &casitas).ok(), Some("finance"));
    }
}
