//! Who may publish over RESP: `AUTH [username] password` and `HELLO ... AUTH`.
//!
//! The connection layer only asks an [`Authenticator`] two things — whether authentication
//! is required, and whether a username/password pair is good — so another scheme (per-role
//! publish tokens, where the username names the role and the password is its token) plugs in
//! without touching the protocol code. [`PasswordAuth`] is the `[resp] password` scheme:
//! one shared password, user `default`, as a Redis with `requirepass` behaves.

use subtle::ConstantTimeEq;

/// The identity a connection publishes as once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user or role name (`default` for the shared password).
    pub user: String,
}

/// Why `AUTH` failed; the texts are Redis's, which client libraries recognize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `AUTH` sent to a listener that has no password.
    #[error(
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
    )]
    NotConfigured,
    /// Unknown user or wrong password.
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
}

/// Decides who may publish.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether a connection must authenticate before anything but `AUTH`, `HELLO`, `QUIT`
    /// and `RESET`.
    fn required(&self) -> bool;

    /// Checks `AUTH password` (`user` is `None`) or `AUTH user password`.
    fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Result<Principal, AuthError>;
}

/// One shared password for user `default` (`[resp] password`), or no authentication.
#[derive(Clone, Default)]
pub struct PasswordAuth {
    password: Option<Vec<u8>>,
}

impl std::fmt::Debug for PasswordAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("required", &self.password.is_some())
            .finish()
    }
}

impl PasswordAuth {
    /// `None`: every connection may publish.
    pub fn new(password: Option<&str>) -> PasswordAuth {
        PasswordAuth {
            password: password.map(|p| p.as_bytes().to_vec()),
        }
    }
}

impl Authenticator for PasswordAuth {
    fn required(&self) -> bool {
        self.password.is_some()
    }

    fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Result<Principal, AuthError> {
        let Some(expected) = &self.password else {
            return Err(AuthError::NotConfigured);
        };
        let user_ok = user.is_none_or(|u| u == b"default");
        // Constant time ([`subtle`]), so timing does not reveal a prefix.
        if user_ok & bool::from(expected.as_slice().ct_eq(password)) {
            Ok(Principal {
                user: "default".into(),
            })
        } else {
            Err(AuthError::WrongPass)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_and_user_password() {
        let auth = PasswordAuth::new(Some("s3cret"));
        assert!(auth.required());
        assert!(auth.authenticate(None, b"s3cret").is_ok());
        assert!(auth.authenticate(Some(b"default"), b"s3cret").is_ok());
        assert_eq!(
            auth.authenticate(Some(b"admin"), b"s3cret"),
            Err(AuthError::WrongPass)
        );
        assert_eq!(auth.authenticate(None, b"s3cre"), Err(AuthError::WrongPass));
        assert_eq!(
            auth.authenticate(None, b"s3cret!"),
            Err(AuthError::WrongPass)
        );
        assert_eq!(auth.authenticate(None, b""), Err(AuthError::WrongPass));
        let open = PasswordAuth::new(None);
        assert!(!open.required());
        assert_eq!(open.authenticate(None, b"x"), Err(AuthError::NotConfigured));
    }
}
