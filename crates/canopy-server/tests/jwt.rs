//! Operator (JWT) mode, end to end: an operator/account/user JWT set built at test time
//! (nkeys + serde; nothing committed), clients with valid, expired, revoked and badly
//! signed JWTs, the full resolver updated over `$SYS`, `.creds` leaves joining a Canopy
//! hub and Debian's nats-server in operator mode, a `.creds` seed against a plain nkey
//! user, and token/nkey/user:pass auth on leaf remotes and routes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use canopy_testkit::{
    assert_eventually, free_fixed_port, nats_server_bin, RawClient, ServerProcess,
};
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};

mod pki;
use pki::*;

#[tokio::test]
async fn operator_mode_clients() {
    let pki = Pki::new();
    let revoked_user = KeyPair::new_user();
    let revoked_iat = now() - 100;
    let app_jwt = pki.account_jwt(
        &pki.app,
        "APP",
        json!({"revocations": {revoked_user.public_key(): now() - 50}}),
    );
    let conf = format!("listen: 127.0.0.1:-1\n{}", pki.memory_conf(&app_jwt));
    let s = ServerProcess::canopy(&conf).unwrap();

    // A valid user connects and pub/subs (async-nats with a .creds text).
    let user = KeyPair::new_user();
    let ujwt = pki.user_jwt(&pki.app, &user, now() - 10, json!({}));
    let nc = connect_creds(&s.url(), &creds(&ujwt, &user)).await;
    let nc2 = connect_creds(&s.url(), &creds(&ujwt, &user)).await;
    roundtrip(&nc, &nc2, "orders.new").await;

    // Refusals: each gets Authorization Violation and its cause in the log.
    let expired = pki.user_jwt(&pki.app, &user, now() - 100, json!({"exp": now() - 60}));
    assert_eq!(
        raw_connect(&s.addr(), &expired, &user),
        "-ERR 'Authorization Violation'"
    );
    let revoked = pki.user_jwt(&pki.app, &revoked_user, revoked_iat, json!({}));
    assert_eq!(
        raw_connect(&s.addr(), &revoked, &revoked_user),
        "-ERR 'Authorization Violation'"
    );
    // Signed by an account key the operator never signed.
    let rogue = KeyPair::new_account();
    let foreign = pki.user_jwt(&rogue, &user, now() - 10, json!({}));
    assert_eq!(
        raw_connect(&s.addr(), &foreign, &user),
        "-ERR 'Authorization Violation'"
    );
    // Claims to belong to APP but is signed by a key that is not one of APP's.
    let impostor = pki.user_jwt(
        &rogue,
        &user,
        now() - 10,
        json!({"issuer_account": pki.app.public_key()}),
    );
    assert_eq!(
        raw_connect(&s.addr(), &impostor, &user),
        "-ERR 'Authorization Violation'"
    );
    // A tampered JWT (claims changed after signing).
    let mut parts: Vec<&str> = ujwt.split('.').collect();
    let forged_claims = b64(&serde_json::to_vec(&json!({"iss": pki.app.public_key(),
        "sub": user.public_key(), "nats": {"type": "user", "pub": {"allow": [">"]}}}))
    .unwrap());
    parts[1] = &forged_claims;
    assert_eq!(
        raw_connect(&s.addr(), &parts.join("."), &user),
        "-ERR 'Authorization Violation'"
    );
    // The right JWT, the nonce signed by another key.
    assert_eq!(
        raw_connect(&s.addr(), &ujwt, &KeyPair::new_user()),
        "-ERR 'Authorization Violation'"
    );
    // Not yet valid.
    let early = pki.user_jwt(&pki.app, &user, now(), json!({"nbf": now() + 3600}));
    assert_eq!(
        raw_connect(&s.addr(), &early, &user),
        "-ERR 'Authorization Violation'"
    );
    let log = s.log();
    println!("{log}");
    for cause in [
        "expired at",
        "is revoked by account",
        "is unknown to the resolver",
        "is not trusted",
        "signature does not verify",
        "nonce signature does not verify",
        "not valid before",
    ] {
        assert!(log.contains(cause), "no {cause:?} in log:\n{log}");
    }
    let varz = s.monitor("/varz").unwrap_or(Value::Null);
    if let Some(n) = varz.get("auth_failures").and_then(Value::as_u64) {
        assert!(n >= 6, "{varz}");
    }
    // The other connections were not affected.
    roundtrip(&nc2, &nc, "still.here").await;
}

#[tokio::test]
async fn jwt_permissions_and_limits() {
    let pki = Pki::new();
    let app_jwt = pki.account_jwt(&pki.app, "APP", json!({}));
    let conf = format!("listen: 127.0.0.1:-1\n{}", pki.memory_conf(&app_jwt));
    let s = ServerProcess::canopy(&conf).unwrap();
    let user = KeyPair::new_user();
    let ujwt = pki.user_jwt(
        &pki.app,
        &user,
        now() - 10,
        json!({"pub": {"allow": ["allowed.>"]}, "subs": 1, "payload": 16}),
    );
    let (mut c, info) = RawClient::connect(&s.addr()).unwrap();
    let sig = b64(&user
        .sign(info["nonce"].as_str().unwrap().as_bytes())
        .unwrap());
    let connect = json!({"jwt": ujwt, "sig": sig, "verbose": false, "pedantic": false});
    c.send_str(&format!("CONNECT {connect}\r\nPING\r\n"))
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    c.send_str("SUB a 1\r\nSUB b 2\r\n").unwrap();
    assert_eq!(
        c.read_op().unwrap(),
        "-ERR 'maximum subscriptions exceeded'"
    );
    c.send_str("PUB denied.x 2\r\nhi\r\n").unwrap();
    assert_eq!(
        c.read_op().unwrap(),
        "-ERR 'Permissions Violation for Publish to \"denied.x\"'"
    );
    c.send_str("PUB allowed.x 20\r\n01234567890123456789\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "-ERR 'Maximum Payload Violation'");
}

/// JWT limits use -1 for "unlimited"; `subs: 0` allows no subscription, and nats-server
/// closes such a connection right after CONNECT.
#[tokio::test]
async fn jwt_zero_subs_means_none() {
    let pki = Pki::new();
    let app_jwt = pki.account_jwt(&pki.app, "APP", json!({}));
    let conf = format!("listen: 127.0.0.1:-1\n{}", pki.memory_conf(&app_jwt));
    let s = ServerProcess::canopy(&conf).unwrap();
    let connect = |limits: Value| {
        let user = KeyPair::new_user();
        let ujwt = pki.user_jwt(&pki.app, &user, now() - 10, limits);
        let (mut c, info) = RawClient::connect(&s.addr()).unwrap();
        let sig = b64(&user
            .sign(info["nonce"].as_str().unwrap().as_bytes())
            .unwrap());
        let connect = json!({"jwt": ujwt, "sig": sig, "verbose": false, "pedantic": false});
        c.send_str(&format!("CONNECT {connect}\r\nPING\r\n"))
            .unwrap();
        c
    };
    let mut none = connect(json!({"subs": 0}));
    assert_eq!(
        none.read_op().unwrap(),
        "-ERR 'maximum subscriptions exceeded'"
    );
    assert!(none.read_op().is_err(), "connection stayed open");
    let mut unlimited = connect(json!({"subs": -1}));
    assert_eq!(unlimited.read_op().unwrap(), "PONG");
    for i in 0..50 {
        unlimited.send_str(&format!("SUB s.{i} {i}\r\n")).unwrap();
    }
    unlimited.send_str("PING\r\n").unwrap();
    assert_eq!(unlimited.read_op().unwrap(), "PONG");
}

#[tokio::test]
async fn full_resolver_updates_and_lookups() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let jwt_dir = dir.path().join("jwt");
    let conf = format!(
        "listen: 127.0.0.1:-1\noperator: \"{}\"\nsystem_account: {}\nresolver {{ type: full, dir: \"{}\" }}\nresolver_preload: {{ {}: \"{}\" }}\n",
        pki.operator_jwt(),
        pki.sys.public_key(),
        jwt_dir.display(),
        pki.sys.public_key(),
        pki.account_jwt(&pki.sys, "SYS", json!({}))
    );
    let s = ServerProcess::canopy(&conf).unwrap();
    let admin = KeyPair::new_user();
    let sys_nc = connect_creds(
        &s.url(),
        &creds(
            &pki.user_jwt(&pki.sys, &admin, now() - 10, json!({})),
            &admin,
        ),
    )
    .await;
    let user = KeyPair::new_user();
    let ujwt = pki.user_jwt(&pki.app, &user, now() - 10, json!({}));
    // APP is unknown until pushed.
    assert_eq!(
        raw_connect(&s.addr(), &ujwt, &user),
        "-ERR 'Authorization Violation'"
    );
    let app_jwt = pki.account_jwt(&pki.app, "APP", json!({}));
    let r = sys_nc
        .request("$SYS.REQ.CLAIMS.UPDATE", app_jwt.clone().into())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["data"]["code"], 200, "{v}");
    assert!(jwt_dir
        .join(format!("{}.jwt", pki.app.public_key()))
        .exists());
    let app_nc = connect_creds(&s.url(), &creds(&ujwt, &user)).await;
    let lookup = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP", pki.app.public_key());
    let r = sys_nc.request(lookup, "".into()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.payload), app_jwt);

    // An account JWT signed by someone else is refused.
    let rogue = KeyPair::new_operator();
    let bad = encode(
        &json!({"iss": rogue.public_key(), "sub": pki.app.public_key(), "iat": now(),
                "nats": {"type": "account"}}),
        &rogue,
    );
    let subj = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", pki.app.public_key());
    let r = sys_nc.request(subj.clone(), bad.into()).await.unwrap();
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["error"]["code"], 400, "{v}");

    // Revoking the user closes its live connection and refuses new ones.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revoking = pki.account_jwt(
        &pki.app,
        "APP",
        json!({"revocations": {user.public_key(): now()}}),
    );
    let r = sys_nc.request(subj, revoking.into()).await.unwrap();
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["data"]["code"], 200, "{v}");
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains("revoked by an update of account"),
        "live user not revoked:\n{}",
        s.log()
    );
    drop(app_nc);
    assert_eq!(
        raw_connect(&s.addr(), &ujwt, &user),
        "-ERR 'Authorization Violation'"
    );
    drop(s);
    // A restart loads the stored JWTs: the account is known, the user still revoked.
    let s = ServerProcess::canopy(&conf).unwrap();
    let user2 = KeyPair::new_user();
    let u2 = pki.user_jwt(&pki.app, &user2, now(), json!({}));
    assert_eq!(raw_connect(&s.addr(), &u2, &user2), "PONG");
    assert_eq!(
        raw_connect(&s.addr(), &ujwt, &user),
        "-ERR 'Authorization Violation'"
    );
}

/// A Canopy leaf presenting a `.creds` file joins a hub in operator mode (Canopy, then
/// Debian's nats-server when installed) and traffic flows both ways.
#[tokio::test]
async fn creds_leaf_joins_operator_hub() {
    let pki = Pki::new();
    let app_jwt = pki.account_jwt(
        &pki.app,
        "APP",
        json!({"limits": {"leaf": 1, "conn": -1, "subs": -1, "payload": -1}}),
    );
    let leaf_user = KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let creds_path = dir.path().join("leaf.creds");
    let creds_text = creds(
        &pki.user_jwt(&pki.app, &leaf_user, now() - 10, json!({})),
        &leaf_user,
    )
    .replace('\n', "\r\n");
    std::fs::write(&creds_path, creds_text).unwrap();
    let client_user = KeyPair::new_user();
    let client_creds = creds(
        &pki.user_jwt(&pki.app, &client_user, now() - 10, json!({})),
        &client_user,
    );
    let mut impls = vec![canopy_testkit::Impl::Canopy];
    if nats_server_bin().is_some() {
        impls.push(canopy_testkit::Impl::NatsServer);
    }
    for kind in impls {
        let leaf_port = free_fixed_port();
        let hub_conf = format!(
            "listen: 127.0.0.1:-1\n{}leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n",
            pki.memory_conf(&app_jwt)
        );
        let hub = ServerProcess::start(kind, &hub_conf, &[]).unwrap();
        let leaf_conf = format!(
            "listen: 127.0.0.1:-1\nleafnodes {{ reconnect: \"100ms\"\n remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\", credentials: \"{}\" }} ] }}\n",
            creds_path.display()
        );
        let leaf = ServerProcess::canopy(&leaf_conf).unwrap();
        let hub_nc = connect_creds(&hub.url(), &client_creds).await;
        let leaf_nc = async_nats::connect(leaf.url()).await.unwrap();
        roundtrip(&leaf_nc, &hub_nc, "to.hub").await;
        roundtrip(&hub_nc, &leaf_nc, "to.leaf").await;
        if kind == canopy_testkit::Impl::Canopy {
            assert!(
                hub.log().contains(&format!(
                    "Leafnode connection created for account: {}",
                    pki.app.public_key()
                )),
                "{}",
                hub.log()
            );
            // The account allows one leaf: a second leaf with the same creds is refused.
            let leaf2 = ServerProcess::canopy(&leaf_conf).unwrap();
            assert_eventually!(
                Duration::from_secs(5),
                hub.log().contains("leaf connection limit (1) reached"),
                "second leaf not refused:\n{}",
                hub.log()
            );
            drop(leaf2);
            // Interop the other way: Debian's nats-server as the leaf, with the creds.
            if nats_server_bin().is_some() {
                drop(leaf);
                // (The CRLF file above is Canopy's test; give Go a plain LF copy.)
                let lf_path = dir.path().join("leaf-lf.creds");
                let lf = std::fs::read_to_string(&creds_path)
                    .unwrap()
                    .replace("\r\n", "\n");
                std::fs::write(&lf_path, lf).unwrap();
                let go_conf = leaf_conf
                    .replace("reconnect: \"100ms\"", "reconnect: 1")
                    .replace(&*creds_path.to_string_lossy(), &lf_path.to_string_lossy());
                let go_leaf = ServerProcess::nats_server(&go_conf).unwrap();
                assert_eventually!(
                    Duration::from_secs(10),
                    hub.log().matches("Leafnode connection created").count() >= 2,
                    "Go leaf did not join:\n{}\n{}",
                    hub.log(),
                    go_leaf.log()
                );
                let go_nc = async_nats::connect(go_leaf.url()).await.unwrap();
                roundtrip(&go_nc, &hub_nc, "from.go.leaf").await;
                roundtrip(&hub_nc, &go_nc, "to.go.leaf").await;
                continue;
            }
        }
        drop(leaf);
        drop(hub);
    }
}

/// A malformed `.creds` file is logged with its path and the connect retried: fixing the
/// file lets the leaf join without a restart.
#[tokio::test]
async fn malformed_creds_is_retried() {
    let pki = Pki::new();
    let app_jwt = pki.account_jwt(&pki.app, "APP", json!({}));
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\n{}leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n",
        pki.memory_conf(&app_jwt)
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.creds");
    std::fs::write(&path, "not a creds file\n").unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ reconnect: \"100ms\"\n remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\", credentials: \"{}\" }} ] }}\n",
        path.display()
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        leaf.log().contains("malformed") && leaf.log().contains("broken.creds"),
        "{}",
        leaf.log()
    );
    let u = KeyPair::new_user();
    std::fs::write(
        &path,
        creds(&pki.user_jwt(&pki.app, &u, now() - 10, json!({})), &u),
    )
    .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        hub.log().contains("Leafnode connection created"),
        "leaf did not join after the fix:\n{}",
        leaf.log()
    );
}

/// Canopy extension: outside operator mode, a `.creds` seed authenticates against a hub
/// `nkey` user (the nonce signature is checked; the JWT is ignored).
#[tokio::test]
async fn creds_seed_matches_hub_nkey_user() {
    let pki = Pki::new();
    let user = KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leaf.creds");
    std::fs::write(
        &path,
        creds(&pki.user_jwt(&pki.app, &user, now(), json!({})), &user),
    )
    .unwrap();
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\naccounts {{ HUB: {{ users: [ {{ nkey: {} }}, {{ user: c, password: p }} ] }} }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n",
        user.public_key()
    ))
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\", credentials: \"{}\" }} ] }}\n",
        path.display()
    ))
    .unwrap();
    let hub_nc = async_nats::ConnectOptions::with_user_and_password("c".into(), "p".into())
        .connect(hub.url())
        .await
        .unwrap();
    let leaf_nc = async_nats::connect(leaf.url()).await.unwrap();
    roundtrip(&leaf_nc, &hub_nc, "seed.works").await;
    assert!(hub
        .log()
        .contains("Leafnode connection created for account: HUB"));
}

/// Leaf remotes: token in the URL (`nats-leaf://token@host`) and an nkey seed; wrong
/// ones are refused.
#[tokio::test]
async fn leaf_remote_token_and_nkey() {
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nauthorization {{ token: s3cr3t }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"
    ))
    .unwrap();
    let bad = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ reconnect: \"100ms\", remotes: [ {{ url: \"nats-leaf://wrong@127.0.0.1:{leaf_port}\" }} ] }}\n"
    ))
    .unwrap();
    let good = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://s3cr3t@127.0.0.1:{leaf_port}\" }} ] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        hub.log().matches("Leafnode connection created").count() == 1
            && hub.log().contains("rejected: authorization violation"),
        "{}",
        hub.log()
    );
    drop((bad, good));

    let kp = KeyPair::new_user();
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\naccounts {{ A: {{}} }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\", authorization {{ nkey: {}, account: A }} }}\n",
        kp.public_key()
    ))
    .unwrap();
    let other = KeyPair::new_user();
    let _bad = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ reconnect: \"100ms\", remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\", nkey: {} }} ] }}\n",
        other.seed().unwrap()
    ))
    .unwrap();
    let _good = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\", seed: {} }} ] }}\n",
        kp.seed().unwrap()
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        hub.log()
            .matches("Leafnode connection created for account: A")
            .count()
            == 1
            && hub.log().contains("rejected: authorization violation"),
        "{}",
        hub.log()
    );
}

/// Routes: `user:pass@` in the route URL against `cluster.authorization`; a wrong
/// password is refused, the right one forms the route.
#[tokio::test]
async fn route_user_password() {
    let p1 = free_fixed_port();
    let p2 = free_fixed_port();
    let p3 = free_fixed_port();
    let conf = |port: u16, peer: u16, pass: &str| {
        format!(
            "listen: 127.0.0.1:-1\ncluster {{ name: c, listen: \"127.0.0.1:{port}\", authorization {{ user: ruser, password: rpass }}, routes: [ \"nats-route://ruser:{pass}@127.0.0.1:{peer}\" ] }}\n"
        )
    };
    let a = ServerProcess::canopy(&conf(p1, p2, "rpass")).unwrap();
    let b = ServerProcess::canopy(&conf(p2, p1, "rpass")).unwrap();
    let c = ServerProcess::canopy(&conf(p3, p1, "wrong")).unwrap();
    let na = async_nats::connect(a.url()).await.unwrap();
    let nb = async_nats::connect(b.url()).await.unwrap();
    roundtrip(&na, &nb, "over.route").await;
    assert_eventually!(
        Duration::from_secs(5),
        a.log()
            .contains("rejected: authorization violation for user \"ruser\""),
        "{}",
        a.log()
    );
    drop(c);
}

/// Account JWT exports/imports map onto the import agent: a public stream export, and a
/// private one reachable only with an activation token.
#[tokio::test]
async fn jwt_exports_and_imports() {
    let pki = Pki::new();
    let imp = KeyPair::new_account();
    let outsider = KeyPair::new_account();
    let activation = encode(
        &json!({"iat": now() - 10, "iss": pki.app.public_key(), "sub": imp.public_key(),
                "nats": {"type": "activation", "subject": "private.>", "kind": "stream"}}),
        &pki.app,
    );
    let app_jwt = pki.account_jwt(
        &pki.app,
        "APP",
        json!({"exports": [
            {"subject": "events.>", "type": "stream"},
            {"subject": "private.>", "type": "stream", "token_req": true}]}),
    );
    let imp_jwt = pki.account_jwt(
        &imp,
        "IMP",
        json!({"imports": [
            {"subject": "events.>", "account": pki.app.public_key(), "type": "stream"},
            {"subject": "private.>", "account": pki.app.public_key(), "type": "stream",
             "token": activation}]}),
    );
    let out_jwt = pki.account_jwt(
        &outsider,
        "OUT",
        json!({"imports": [
            {"subject": "private.>", "account": pki.app.public_key(), "type": "stream"}]}),
    );
    let conf = format!(
        "listen: 127.0.0.1:-1\noperator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n {}: \"{}\"\n {}: \"{}\"\n {}: \"{}\"\n {}: \"{}\"\n}}\n",
        pki.operator_jwt(),
        pki.sys.public_key(),
        pki.sys.public_key(),
        pki.account_jwt(&pki.sys, "SYS", json!({})),
        pki.app.public_key(),
        app_jwt,
        imp.public_key(),
        imp_jwt,
        outsider.public_key(),
        out_jwt
    );
    let s = ServerProcess::canopy(&conf).unwrap();
    let user_of = |acc: &KeyPair| {
        let u = KeyPair::new_user();
        creds(&pki.user_jwt(acc, &u, now() - 10, json!({})), &u)
    };
    let publisher = connect_creds(&s.url(), &user_of(&pki.app)).await;
    let importer = connect_creds(&s.url(), &user_of(&imp)).await;
    let out = connect_creds(&s.url(), &user_of(&outsider)).await;
    let mut sub_imp = importer.subscribe(">").await.unwrap();
    let mut sub_out = out.subscribe(">").await.unwrap();
    // Make sure the server has processed both SUBs (flush only drains the socket).
    sync(&importer).await;
    sync(&out).await;
    publisher.publish("events.a", "1".into()).await.unwrap();
    publisher.publish("private.b", "2".into()).await.unwrap();
    publisher.flush().await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub_imp.next()).await {
        if m.subject.starts_with("_INBOX.") {
            continue;
        }
        got.push(m.subject.to_string());
        if got.len() == 2 {
            break;
        }
    }
    got.sort();
    assert_eq!(got, vec!["events.a", "private.b"]);
    // The outsider has no activation: nothing but its own sync message arrives.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub_out.next()).await {
        assert!(m.subject.starts_with("_INBOX."), "leaked {}", m.subject);
    }
}

/// Operator mode in a cluster: an account that no server had created when the route
/// formed (its JWT is resolved when its first user connects) still gets RS+ and RMSG
/// across the route, both ways (issue 11, item 2). Interop: the same with nats-server as
/// the peer.
#[tokio::test]
async fn operator_mode_cluster_runtime_account() {
    let pki = Pki::new();
    let app_jwt = pki.account_jwt(&pki.app, "APP", json!({}));
    let user = KeyPair::new_user();
    let user_creds = creds(&pki.user_jwt(&pki.app, &user, now() - 5, json!({})), &user);
    let mut kinds = vec![false];
    if nats_server_bin().is_some() {
        kinds.push(true);
    }
    for go_peer in kinds {
        let (p1, p2) = (free_fixed_port(), free_fixed_port());
        let conf = |port: u16, peer: u16| {
            format!(
                "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n{}cluster {{ name: op, listen: \"127.0.0.1:{port}\", routes: [\"nats-route://127.0.0.1:{peer}\"] }}\n",
                pki.memory_conf(&app_jwt)
            )
        };
        let a = ServerProcess::canopy(&conf(p1, p2)).unwrap();
        let b = if go_peer {
            ServerProcess::nats_server(&conf(p2, p1)).unwrap()
        } else {
            ServerProcess::canopy(&conf(p2, p1)).unwrap()
        };
        assert_eventually!(
            Duration::from_secs(10),
            a.monitor("/routez")
                .map(|v| v["num_routes"] == 1)
                .unwrap_or(false),
            "route did not form: {}",
            a.log()
        );
        // The account exists nowhere yet: the first client on `a` creates it there
        // and subscribes; `b` meets the account first in an RS+.
        let na = connect_creds(&a.url(), &user_creds).await;
        let mut sub_a = na.subscribe("to.a").await.unwrap();
        na.flush().await.unwrap();
        sync(&na).await;
        let nb = connect_creds(&b.url(), &user_creds).await;
        // b -> a
        let mut got = false;
        for _ in 0..50 {
            nb.publish("to.a", "x".into()).await.unwrap();
            nb.flush().await.unwrap();
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), sub_a.next()).await
            {
                got = true;
                break;
            }
        }
        assert!(got, "b -> a (go peer: {go_peer}): {}", a.log());
        // a -> b
        roundtrip(&na, &nb, "to.b").await;
    }
}

/// A version 1 JWT as nsc 0.x wrote them: `"alg":"ed25519"`, the claim type at the top
/// level, no `nats.version`, and the signature over the payload segment alone.
fn encode_v1(claims: &Value, signer: &KeyPair) -> String {
    let h = b64(br#"{"typ":"jwt","alg":"ed25519"}"#);
    let p = b64(&serde_json::to_vec(claims).unwrap());
    let sig = signer.sign(p.as_bytes()).unwrap();
    format!("{h}.{p}.{}", b64(&sig))
}

/// Old (v1) operator and account JWTs are accepted, as nats-server accepts them; a
/// current user JWT under them connects and exchanges messages. A v1 token signed the
/// v2 way (over header.payload) is refused.
#[tokio::test]
async fn v1_operator_and_account_jwts() {
    let pki = Pki::new();
    let opk = pki.op.public_key();
    let op_jwt = encode_v1(
        &json!({"jti": "op1", "iat": now() - 10, "iss": opk, "sub": opk, "name": "OLDOP",
                "type": "operator", "nats": {}}),
        &pki.op,
    );
    let acc_v1 = |acc: &KeyPair, name: &str| {
        encode_v1(
            &json!({"jti": format!("a-{name}"), "iat": now() - 5, "iss": opk,
                    "sub": acc.public_key(), "name": name, "type": "account",
                    "nats": {"limits": {"subs": -1, "conn": -1, "leaf": -1, "imports": -1,
                                        "exports": -1, "data": -1, "payload": -1,
                                        "wildcards": true}}}),
            &pki.op,
        )
    };
    let conf = format!(
        "listen: 127.0.0.1:-1\noperator: \"{op_jwt}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
        pki.sys.public_key(),
        pki.app.public_key(),
        acc_v1(&pki.app, "APP"),
        pki.sys.public_key(),
        acc_v1(&pki.sys, "SYS"),
    );
    let user = KeyPair::new_user();
    let ujwt = pki.user_jwt(&pki.app, &user, now() - 10, json!({}));
    let mut kinds = vec![canopy_testkit::Impl::Canopy];
    if nats_server_bin().is_some() {
        kinds.push(canopy_testkit::Impl::NatsServer);
    }
    for kind in kinds {
        let s = ServerProcess::start(kind, &conf, &[]).unwrap();
        let a = connect_creds(&s.url(), &creds(&ujwt, &user)).await;
        let b = connect_creds(&s.url(), &creds(&ujwt, &user)).await;
        roundtrip(&a, &b, "old.jwts").await;
    }
    // The v1 header with a signature over header.payload does not verify.
    let h = b64(br#"{"typ":"jwt","alg":"ed25519"}"#);
    let p = b64(&serde_json::to_vec(
        &json!({"jti": "op2", "iat": now() - 10, "iss": opk, "sub": opk, "type": "operator"}),
    )
    .unwrap());
    let sig = pki.op.sign(format!("{h}.{p}").as_bytes()).unwrap();
    let bad = format!("{h}.{p}.{}", b64(&sig));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.conf");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:-1\noperator: \"{bad}\"\nresolver: MEMORY\n"),
    )
    .unwrap();
    let out = std::process::Command::new(canopy_testkit::canopy_bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("signature does not verify"), "{err}");
}

/// Mappings in an account JWT (`nsc add mapping`) apply to the account's publishes, as in
/// nats-server: a plain mapping with a wildcard, and a weighted split whose weights add up
/// to 100 (absent weight: 100).
#[tokio::test]
async fn jwt_account_mappings() {
    let pki = Pki::new();
    let app_jwt = pki.account_jwt(
        &pki.app,
        "APP",
        json!({"mappings": {
            "orders.*": [{"subject": "orders.{{wildcard(1)}}.eu"}],
            "split": [{"subject": "split.a", "weight": 50}, {"subject": "split.b", "weight": 50}],
        }}),
    );
    let conf = format!("listen: 127.0.0.1:-1\n{}", pki.memory_conf(&app_jwt));
    let s = ServerProcess::canopy(&conf).unwrap();
    let user = KeyPair::new_user();
    let ujwt = pki.user_jwt(&pki.app, &user, now() - 10, json!({}));
    let nc = connect_creds(&s.url(), &creds(&ujwt, &user)).await;
    let mut eu = nc.subscribe("orders.*.eu").await.unwrap();
    let mut split = nc.subscribe("split.*").await.unwrap();
    sync(&nc).await;
    nc.publish("orders.42", "o".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), eu.next())
        .await
        .expect("mapped message")
        .unwrap();
    assert_eq!(m.subject.as_str(), "orders.42.eu");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        nc.publish("split", "s".into()).await.unwrap();
    }
    nc.flush().await.unwrap();
    for _ in 0..200 {
        let m = tokio::time::timeout(Duration::from_secs(5), split.next())
            .await
            .expect("split message")
            .unwrap();
        seen.insert(m.subject.to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "both destinations of the split get messages: {seen:?}"
    );
}
