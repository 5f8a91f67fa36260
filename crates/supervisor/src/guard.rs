//! Who may change the fleet through the control API. On loopback (the default) anyone who can
//! reach it can already signal the processes, so every call passes. Bound to another address, a
//! call that changes something (every `POST`) needs the admin credential: HTTP Basic
//! `admin:<password>`, checked at one of the running auth instances by [`api::admin::AdminCheck`]
//! (the same argon2id check as `POST /login`, remembered for a minute).

use api::admin::AdminCheck;

use crate::fleet::{Fleet, State};

/// The check, shared by the control API's handlers.
#[derive(Clone, Debug, Default)]
pub struct AdminGuard {
    /// Off on loopback.
    required: bool,
    check: AdminCheck,
}

impl AdminGuard {
    /// A guard for a control API listening on `addr`: required unless it is loopback.
    pub fn for_addr(addr: std::net::SocketAddr, service_token: Option<String>) -> Self {
        Self {
            required: !addr.ip().is_loopback(),
            check: AdminCheck::new(service_token),
        }
    }

    /// The deployment's service credential, which internal roles want on their routes.
    pub fn service_token(&self) -> Option<&str> {
        self.check.service_token()
    }

    /// `Ok` if the call may change the fleet; otherwise the reason, for a `401`.
    pub async fn check(&self, fleet: &Fleet, authorization: Option<&str>) -> Result<(), String> {
        if !self.required {
            return Ok(());
        }
        if authorization.is_none() {
            return Err("this control API is not on loopback: send the admin credential (Basic admin:<password>)".into());
        }
        let auth = fleet
            .members("auth")
            .into_iter()
            .find(|(_, _, s)| *s == State::Active)
            .map(|(_, url, _)| url)
            .ok_or("no auth instance is running to check the credential")?;
        self.check.check(&auth, authorization).await
    }
}
