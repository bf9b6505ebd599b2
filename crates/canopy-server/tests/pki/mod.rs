//! Operator-mode test material shared by the JWT and Helm-chart tests: an operator, account
//! and user JWT set built at test time (nkeys + serde; nothing committed), `.creds` text,
//! and small client helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::new_without_default)]

#[path = "../client_sync/mod.rs"]
mod client_sync;
#[allow(unused_imports)]
pub use client_sync::sync;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use canopy_testkit::RawClient;
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A small JWT encoder: header, claims, ed25519 signature by `signer`.
pub fn encode(claims: &Value, signer: &KeyPair) -> String {
    let h = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let p = b64(&serde_json::to_vec(claims).unwrap());
    let sig = signer.sign(format!("{h}.{p}").as_bytes()).unwrap();
    format!("{h}.{p}.{}", b64(&sig))
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An operator with one account (`APP`) and the system account.
pub struct Pki {
    pub op: KeyPair,
    pub app: KeyPair,
    pub sys: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            op: KeyPair::new_operator(),
            app: KeyPair::new_account(),
            sys: KeyPair::new_account(),
        }
    }

    pub fn operator_jwt(&self) -> String {
        let k = self.op.public_key();
        encode(
            &json!({"jti": "op", "iat": now() - 10, "iss": k, "sub": k, "name": "TESTOP",
                    "nats": {"type": "operator", "version": 2,
                             "system_account": self.sys.public_key()}}),
            &self.op,
        )
    }

    pub fn account_jwt(&self, acc: &KeyPair, name: &str, extra: Value) -> String {
        let mut nats = json!({"type": "account", "version": 2,
            "limits": {"subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1,
                       "data": -1, "payload": -1, "wildcards": true}});
        if let (Some(n), Value::Object(e)) = (nats.as_object_mut(), extra) {
            for (k, v) in e {
                n.insert(k, v);
            }
        }
        encode(
            &json!({"jti": format!("acc-{name}-{}", now()), "iat": now() - 5, "iss": self.op.public_key(),
                    "sub": acc.public_key(), "name": name, "nats": nats}),
            &self.op,
        )
    }

    pub fn user_jwt(&self, acc: &KeyPair, user: &KeyPair, iat: i64, extra: Value) -> String {
        let mut c = json!({"jti": "u", "iat": iat, "iss": acc.public_key(),
            "sub": user.public_key(), "name": "user",
            "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
                     "subs": -1, "data": -1, "payload": -1}});
        if let Value::Object(e) = extra {
            for (k, v) in e {
                if k == "exp" || k == "nbf" {
                    c[k] = v;
                } else {
                    c["nats"][k] = v;
                }
            }
        }
        encode(&c, acc)
    }

    /// Hub config lines for operator mode with the memory resolver.
    pub fn memory_conf(&self, app_jwt: &str) -> String {
        format!("resolver: MEMORY\n{}", self.accounts_conf(app_jwt))
    }

    /// The operator, the system account and `resolver_preload` with `APP` (as `app_jwt`)
    /// and the system account: what `nsc generate config` writes, without the resolver.
    pub fn accounts_conf(&self, app_jwt: &str) -> String {
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            self.operator_jwt(),
            self.sys.public_key(),
            self.app.public_key(),
            app_jwt,
            self.sys.public_key(),
            self.account_jwt(&self.sys, "SYS", json!({}))
        )
    }
}

pub fn creds(jwt: &str, user: &KeyPair) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    )
}

pub async fn connect_creds(url: &str, creds_text: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_credentials(creds_text)
        .unwrap()
        .connect(url)
        .await
        .unwrap()
}

/// CONNECT on a raw connection with a JWT and the nonce signed by `signer`; returns the
/// server's first answer to `CONNECT` + `PING`.
pub fn raw_connect(addr: &str, jwt: &str, signer: &KeyPair) -> String {
    let (mut c, info) = RawClient::connect(addr).unwrap();
    let nonce = info["nonce"]
        .as_str()
        .expect("operator mode INFO carries a nonce");
    let sig = b64(&signer.sign(nonce.as_bytes()).unwrap());
    let connect = json!({"verbose": false, "pedantic": false, "jwt": jwt, "sig": sig,
                         "nkey": signer.public_key(), "lang": "raw", "version": "0"});
    c.send_str(&format!("CONNECT {connect}\r\nPING\r\n"))
        .unwrap();
    c.read_op().unwrap_or_else(|e| format!("<{e}>"))
}

pub async fn roundtrip(a: &async_nats::Client, b: &async_nats::Client, subject: &str) {
    let mut sub = b.subscribe(subject.to_string()).await.unwrap();
    b.flush().await.unwrap();
    // Interest may have to cross a leaf link: publish until one arrives.
    for _ in 0..100 {
        a.publish(subject.to_string(), "hi".into()).await.unwrap();
        a.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            assert_eq!(&m.payload[..], b"hi");
            return;
        }
    }
    panic!("no message on {subject}");
}
