//! Authentication: configured users and permissions ([`users`]), operator/JWT mode
//! ([`jwt`]) and TLS ([`tls`]). Depends only on [`crate::core`].

pub mod jwt;
pub mod tls;
pub mod users;
