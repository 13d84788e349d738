//! Operator accounts of the dashboard (`outpost-server admin add|passwd|remove`): who may
//! sign in at /admin/. A password is either given by the operator (on standard input) or
//! generated and shown once; only its Argon2id hash is stored. Every change is audited.

use super::auth::{self, AuthError};
use crate::server::store::{ServerStore, ServerStoreError};

/// Why an account could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not possible as asked; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    /// The name or the password is not acceptable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The database.
    #[error(transparent)]
    Store(#[from] ServerStoreError),
}

/// What to do with an operator account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// A new account (refused if the name exists).
    Add,
    /// A new password for an existing account.
    Passwd,
}

impl AccountChange {
    fn audit_action(self) -> &'static str {
        match self {
            AccountChange::Add => "admin add",
            AccountChange::Passwd => "admin passwd",
        }
    }
}

/// The password an account ended with: the operator's own, or one generated to be shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewPassword {
    /// The operator gave it.
    Given,
    /// Generated; shown once, never stored in the clear.
    Generated(String),
}

/// `admin add` / `admin passwd`: sets `name`'s password (`given`, or a generated one).
pub fn set_account(
    store: &dyn ServerStore,
    change: AccountChange,
    name: &str,
    given: Option<String>,
    actor: &str,
) -> Result<NewPassword, AccountError> {
    let exists = store.admin_password_hash(name)?.is_some();
    match change {
        AccountChange::Add if exists => {
            return Err(AccountError::Refused(format!(
            "operator {name:?} exists already; `outpost-server admin passwd {name}` gives a new password"
        )))
        }
        AccountChange::Passwd if !exists => {
            return Err(AccountError::Refused(format!(
                "no operator {name:?}; create it with `outpost-server admin add {name}`"
            )))
        }
        _ => {}
    }
    let (password, shown) = match given {
        Some(p) => (p, NewPassword::Given),
        None => {
            let p = auth::generate_password();
            (p.clone(), NewPassword::Generated(p))
        }
    };
    auth::set_password(store, name, &password).map_err(|e| AccountError::Refused(e.to_string()))?;
    store.audit(actor, change.audit_action(), name)?;
    Ok(shown)
}

/// `admin remove`: deletes the account and ends its sessions.
pub fn remove_account(
    store: &dyn ServerStore,
    name: &str,
    actor: &str,
) -> Result<(), AccountError> {
    if !store.remove_admin(name)? {
        return Err(AccountError::Refused(format!("no operator {name:?}")));
    }
    store.audit(actor, "admin remove", name)?;
    Ok(())
}
